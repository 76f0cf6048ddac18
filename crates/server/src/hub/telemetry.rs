//! Device-to-cloud telemetry: a bounded in-memory buffer plus live fan-out.
//!
//! Decision: telemetry is not persisted yet (a durable stream comes later).
//! The buffer keeps the most recent events within a count and a byte budget
//! so `GET /events?last=N` can replay recent history; readers that fall
//! behind the live channel skip ahead rather than hold memory.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferrohub_core::message::render_body;
use ferrohub_core::time::Timestamp;
use ferrohub_mqtt::bag::MessageProperties;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

/// Most events kept for replay.
const MAX_EVENTS: usize = 10_000;
/// Most payload bytes kept for replay.
const MAX_BYTES: usize = 64 * 1024 * 1024;
/// How far a live reader may fall behind before it skips (pointers to
/// shared events; a burst of a few seconds at tens of thousands per second).
const LIVE_BACKLOG: usize = 65_536;

/// One telemetry message as the hub received it.
#[derive(Debug)]
pub struct TelemetryEvent {
    /// The sending device.
    pub device_id: String,
    /// When the hub accepted it.
    pub enqueued_time: Timestamp,
    /// System properties (`message-id`, `content-type`, ...).
    pub system_properties: Map<String, Value>,
    /// Application properties.
    pub properties: Map<String, Value>,
    /// The payload.
    pub body: Bytes,
}

impl TelemetryEvent {
    /// A device's message as every transport hands it over: its system
    /// and application properties (one mapping per transport feeds these),
    /// stamped with the hub's receipt time and the sending device.
    pub fn from_device(device_id: &str, props: MessageProperties, body: Bytes, now: Timestamp) -> Self {
        let mut system = match serde_json::to_value(&props.system) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        system.insert("iothub-connection-device-id".into(), Value::String(device_id.to_owned()));
        let properties = match serde_json::to_value(&props.application) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        Self {
            device_id: device_id.to_owned(),
            enqueued_time: now,
            system_properties: system,
            properties,
            body,
        }
    }

    /// The JSON form `GET /events` sends.
    pub fn to_json(&self) -> Value {
        let (body, encoding) = render_body(&self.body);
        json!({
            "deviceId": self.device_id,
            "enqueuedTimeUtc": self.enqueued_time.to_iso(),
            "systemProperties": self.system_properties,
            "properties": self.properties,
            "body": body,
            "bodyEncoding": encoding,
        })
    }
}

/// The hub's telemetry buffer.
pub struct Telemetry {
    recent: Mutex<(VecDeque<Arc<TelemetryEvent>>, usize)>,
    live: broadcast::Sender<Arc<TelemetryEvent>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self { recent: Mutex::new((VecDeque::new(), 0)), live: broadcast::channel(LIVE_BACKLOG).0 }
    }
}

impl Telemetry {
    /// Accepts an event: keeps it for replay and hands it to live readers.
    pub fn push(&self, event: TelemetryEvent) {
        let event = Arc::new(event);
        {
            let mut guard = crate::sync::or_stop(self.recent.lock(), "telemetry buffer");
            let (events, bytes) = &mut *guard;
            *bytes += event.body.len();
            events.push_back(event.clone());
            while events.len() > MAX_EVENTS || *bytes > MAX_BYTES {
                if let Some(old) = events.pop_front() {
                    *bytes -= old.body.len();
                }
            }
        }
        // No live reader is fine.
        let _ = self.live.send(event);
    }

    /// Up to `last` recent events (of one device, if given), oldest first,
    /// and a live subscription that continues right after them.
    pub fn subscribe(
        &self,
        device_id: Option<&str>,
        last: usize,
    ) -> (Vec<Arc<TelemetryEvent>>, broadcast::Receiver<Arc<TelemetryEvent>>) {
        let guard = crate::sync::or_stop(self.recent.lock(), "telemetry buffer");
        // Subscribing under the lock means no event falls between the
        // replay and the live stream.
        let live = self.live.subscribe();
        let mut replay: Vec<_> = guard
            .0
            .iter()
            .rev()
            .filter(|e| device_id.is_none_or(|d| e.device_id == d))
            .take(last)
            .cloned()
            .collect();
        replay.reverse();
        (replay, live)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(device: &str, n: usize) -> TelemetryEvent {
        TelemetryEvent {
            device_id: device.into(),
            enqueued_time: Timestamp::from_unix_nanos(0),
            system_properties: Map::new(),
            properties: Map::new(),
            body: Bytes::from(vec![b'x'; n]),
        }
    }

    #[tokio::test]
    async fn replays_the_last_n_of_a_device_then_continues_live() {
        let t = Telemetry::default();
        for i in 0..5 {
            t.push(event(if i % 2 == 0 { "a" } else { "b" }, i));
        }
        let (replay, mut live) = t.subscribe(Some("a"), 2);
        assert_eq!(replay.iter().map(|e| e.body.len()).collect::<Vec<_>>(), [2, 4]);
        t.push(event("a", 9));
        assert_eq!(live.recv().await.unwrap().body.len(), 9);
    }

    #[test]
    fn the_buffer_is_bounded() {
        let t = Telemetry::default();
        for _ in 0..MAX_EVENTS + 10 {
            t.push(event("a", 1));
        }
        assert_eq!(t.subscribe(None, usize::MAX).0.len(), MAX_EVENTS);
    }
}
