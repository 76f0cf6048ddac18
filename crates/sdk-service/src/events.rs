//! Device-to-cloud telemetry as the hub streams it from `GET /events`:
//! `text/event-stream`, one JSON event per `data:` line, a blank line after
//! each event (the framing is parsed by [`crate::sse`]).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::sse::SseStream;
use crate::{Error, Result};

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
    sse: SseStream,
}

impl EventStream {
    pub(crate) fn new(sse: SseStream) -> Self {
        Self { sse }
    }

    /// The next event; `None` when the hub closed the stream. Cancel-safe:
    /// dropping the future (e.g. in `tokio::time::timeout`) loses nothing
    /// that was already parsed.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        let message = match self.sse.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let data = message.data;
        Some(
            serde_json::from_str::<Event>(&data)
                .map_err(|e| Error::Decode(format!("event is not the expected JSON ({e}): {data}"))),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
