//! Server-Sent Events (`text/event-stream`) as the hub sends them from
//! `GET /events` and the `.../watch` routes, parsed on the raw byte stream:
//! lines end in `\n`, `\r\n` or `\r`; `data:` lines of one event are joined
//! with `\n`; `event:` names it (`message` when absent); comment lines (`:`
//! keep-alives) and the `id:` and `retry:` fields are ignored.

use std::collections::VecDeque;

use reqwest::header::ACCEPT;
use reqwest::Method;

use crate::{error_code_header, Error, Result, ServiceClient};

/// The largest event (all its `data:` lines) accepted from the hub. The hub
/// refuses telemetry over 256 KiB; base64 and properties stay well below this.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseMessage {
    /// The `event:` field, `message` when there was none.
    pub(crate) event: String,
    /// The `data:` lines, joined with `\n`.
    pub(crate) data: String,
}

/// An open event stream: the response body, parsed as it arrives.
#[derive(Debug)]
pub(crate) struct SseStream {
    response: Option<reqwest::Response>,
    parser: SseParser,
    ready: VecDeque<SseMessage>,
}

impl SseStream {
    fn new(response: reqwest::Response) -> Self {
        Self { response: Some(response), parser: SseParser::default(), ready: VecDeque::new() }
    }

    /// The next event; `None` once the hub closed the stream. Cancel-safe:
    /// what was already parsed stays queued.
    pub(crate) async fn next(&mut self) -> Option<Result<SseMessage>> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Some(Ok(message));
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

impl ServiceClient {
    /// Opens `GET path` as an event stream (no time limit); a non-2xx answer
    /// is the usual [`Error::Service`].
    pub(crate) async fn open_sse(&self, path: &str, query: &[(&str, &str)]) -> Result<SseStream> {
        let request = self.request(Method::GET, path, query)?.header(ACCEPT, "text/event-stream");
        let url = self.url(path);
        let response = request.send().await.map_err(|source| Error::Transport { url, source })?;
        let status = response.status();
        if !status.is_success() {
            let code = error_code_header(&response);
            let text = error_text(response).await;
            return Err(Error::from_response_parts(status.as_u16(), code.as_deref(), &text));
        }
        Ok(SseStream::new(response))
    }
}

/// The body of an error response (what of it can be read), at most about
/// 64 KiB of it.
async fn error_text(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > 64 * 1024 {
            break;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Incremental Server-Sent Events parser: bytes in, events (name + data) out.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The previous byte was `\r` (so a following `\n` ends nothing).
    after_cr: bool,
    /// `data:` lines of the current event, joined with `\n`.
    data: Option<String>,
    /// The current event's `event:` field.
    event: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns every event they completed.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseMessage>> {
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
    pub(crate) fn finish(&mut self) -> Vec<SseMessage> {
        self.line.clear();
        self.data = None;
        self.event = None;
        Vec::new()
    }

    fn end_line(&mut self, line: &[u8]) -> Result<Option<SseMessage>> {
        if line.is_empty() {
            // An event without data is not dispatched (the SSE rules), and
            // its name does not carry over to the next one.
            let event = self.event.take().unwrap_or_else(|| "message".to_owned());
            return Ok(self.data.take().map(|data| SseMessage { event, data }));
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
        if field == b"event" {
            self.event = Some(String::from_utf8_lossy(value).into_owned());
        } else if field == b"data" {
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
        chunks.iter().flat_map(|c| p.feed(c).unwrap()).map(|m| m.data).collect()
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
    fn event_names_are_kept_per_event() {
        let mut p = SseParser::default();
        let got = p
            .feed(b"event: snapshot\ndata: {}\n\ndata: 1\n\nevent: x\n\nevent: deleted\ndata: {}\n\n")
            .unwrap();
        let names: Vec<&str> = got.iter().map(|m| m.event.as_str()).collect();
        assert_eq!(names, ["snapshot", "message", "deleted"]);
    }
}
