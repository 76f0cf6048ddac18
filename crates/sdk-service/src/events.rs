//! Device-to-cloud telemetry as the hub streams it from `GET /events`:
//! `text/event-stream`, one JSON event per `data:` line, a blank line after
//! each event.
//!
//! The Server-Sent Events framing is parsed here on the raw byte stream:
//! lines end in `\n`, `\r\n` or `\r`; `data:` lines of one event are joined
//! with `\n`; comment lines (`:` keep-alives) and the `event:`, `id:` and
//! `retry:` fields are ignored.

use std::collections::VecDeque;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The largest event (all its `data:` lines) accepted from the hub. The hub
/// refuses telemetry over 256 KiB; base64 and properties stay well below this.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// One telemetry message a device sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The device that sent it.
    pub device_id: String,
    /// When the hub accepted it (ISO 8601).
    #[serde(default)]
    pub enqueued_time_utc: String,
    /// System properties (`message-id`, `content-type`, ...), as the hub
    /// names them.
    #[serde(default)]
    pub system_properties: Map<String, Value>,
    /// Application properties.
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// The body: text when `body_encoding` is `utf-8`, base64 when `base64`.
    #[serde(default)]
    pub body: String,
    /// `utf-8` or `base64`.
    #[serde(default = "utf8")]
    pub body_encoding: String,
}

fn utf8() -> String {
    "utf-8".to_owned()
}

impl Event {
    /// The body's bytes (decoding base64 when the hub encoded it).
    pub fn body_bytes(&self) -> Result<Vec<u8>> {
        if self.body_encoding.eq_ignore_ascii_case("base64") {
            base64::engine::general_purpose::STANDARD
                .decode(self.body.as_bytes())
                .map_err(|e| Error::Decode(format!("event body is not base64: {e}")))
        } else {
            Ok(self.body.clone().into_bytes())
        }
    }

    /// The body as text, if it is UTF-8.
    pub fn body_text(&self) -> Option<String> {
        String::from_utf8(self.body_bytes().ok()?).ok()
    }
}

/// A live stream of [`Event`]s (from [`ServiceClient::events`]).
///
/// [`ServiceClient::events`]: crate::ServiceClient::events
#[derive(Debug)]
pub struct EventStream {
    response: Option<reqwest::Response>,
    parser: SseParser,
    ready: VecDeque<String>,
}

impl EventStream {
    pub(crate) fn new(response: reqwest::Response) -> Self {
        Self { response: Some(response), parser: SseParser::default(), ready: VecDeque::new() }
    }

    /// The next event; `None` when the hub closed the stream. Cancel-safe:
    /// dropping the future (e.g. in `tokio::time::timeout`) loses nothing
    /// that was already parsed.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(data) = self.ready.pop_front() {
                return Some(
                    serde_json::from_str::<Event>(&data)
                        .map_err(|e| Error::Decode(format!("event is not the expected JSON ({e}): {data}"))),
                );
            }
            let response = self.response.as_mut()?;
            match response.chunk().await {
                Ok(Some(bytes)) => match self.parser.feed(&bytes) {
                    Ok(events) => self.ready.extend(events),
                    Err(e) => {
                        self.response = None;
                        return Some(Err(e));
                    }
                },
                Ok(None) => {
                    self.response = None;
                    self.ready.extend(self.parser.finish());
                    if self.ready.is_empty() {
                        return None;
                    }
                }
                Err(source) => {
                    let url = response.url().to_string();
                    self.response = None;
                    return Some(Err(Error::Transport { url, source }));
                }
            }
        }
    }
}

/// Incremental Server-Sent Events parser: bytes in, `data` payloads out.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The previous byte was `\r` (so a following `\n` ends nothing).
    after_cr: bool,
    /// `data:` lines of the current event, joined with `\n`.
    data: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event they completed.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(data) = self.end_line(&line)? {
                        done.push(data);
                    }
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() + self.data.as_ref().map_or(0, String::len) >= MAX_EVENT_BYTES {
                        return Err(Error::Decode(format!(
                            "an event is larger than {MAX_EVENT_BYTES} bytes"
                        )));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(done)
    }

    /// End of stream: an event without its closing blank line is dropped, as
    /// the SSE rules say.
    pub(crate) fn finish(&mut self) -> Vec<String> {
        self.line.clear();
        self.data = None;
        Vec::new()
    }

    fn end_line(&mut self, line: &[u8]) -> Result<Option<String>> {
        if line.is_empty() {
            return Ok(self.data.take());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            let value = std::str::from_utf8(value)
                .map_err(|_| Error::Decode("an event's data is not UTF-8".to_owned()))?;
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut p = SseParser::default();
        chunks.iter().flat_map(|c| p.feed(c).unwrap()).collect()
    }

    #[test]
    fn one_event_per_data_line_and_blank_line() {
        let got = parse_all(&[b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n"]);
        assert_eq!(got, ["{\"a\":1}", "{\"b\":2}"]);
    }

    #[test]
    fn events_split_across_chunks_anywhere() {
        let text = b"data: {\"deviceId\":\"d1\"}\r\n\r\n: keep-alive\n\ndata:x\n\n";
        for cut in 0..text.len() {
            let got = parse_all(&[&text[..cut], &text[cut..]]);
            assert_eq!(got, ["{\"deviceId\":\"d1\"}", "x"], "cut at {cut}");
        }
    }

    #[test]
    fn comments_other_fields_and_multiline_data() {
        let got = parse_all(&[b": hello\nevent: telemetry\nid: 7\ndata: line1\ndata: line2\nretry: 5\n\n"]);
        assert_eq!(got, ["line1\nline2"]);
        // A blank line with no data dispatches nothing.
        assert!(parse_all(&[b"\n\n: ping\n\n"]).is_empty());
    }

    #[test]
    fn an_unterminated_event_is_dropped_and_oversize_is_an_error() {
        let mut p = SseParser::default();
        assert!(p.feed(b"data: partial").unwrap().is_empty());
        assert!(p.finish().is_empty());
        let mut p = SseParser::default();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(p.feed(b"data: ").is_ok());
        assert!(p.feed(&big).is_err());
    }

    #[test]
    fn events_decode_text_and_base64_bodies() {
        let e: Event = serde_json::from_str(
            r#"{"deviceId":"d1","enqueuedTimeUtc":"2024-01-01T00:00:00Z","systemProperties":{"message-id":"m"},
                "properties":{"k":"v"},"body":"aGk=","bodyEncoding":"base64"}"#,
        )
        .unwrap();
        assert_eq!(e.body_bytes().unwrap(), b"hi");
        assert_eq!(e.body_text().as_deref(), Some("hi"));
        let e: Event = serde_json::from_str(r#"{"deviceId":"d1","body":"{\"t\":1}"}"#).unwrap();
        assert_eq!(e.body_encoding, "utf-8");
        assert_eq!(e.body_text().as_deref(), Some("{\"t\":1}"));
    }
}
