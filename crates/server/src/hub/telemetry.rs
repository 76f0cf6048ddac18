//! Device-to-cloud telemetry: admission against the telemetry throttles,
//! a bounded in-memory buffer, and live fan-out.
//!
//! Decision: telemetry is not persisted yet (a durable stream comes later).
//! The buffer keeps recent events within a count and a byte budget so
//! `GET /events?last=N` can replay recent history; readers that fall
//! behind the live channel skip ahead rather than hold memory.
//!
//! The buffer is fair (docs/decisions.md, "Telemetry buffer fairness"):
//! when it is over a budget, the oldest event of the device holding the
//! most (events, or bytes for the byte budget) goes, so a device that
//! floods evicts only its own history while any other device holds less.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferrohub_core::daily_quota::Metered;
use ferrohub_core::message::render_body;
use ferrohub_core::time::Timestamp;
use ferrohub_core::HubResult;
use ferrohub_mqtt::bag::MessageProperties;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::throttle::Throttles;

/// Most events kept for replay.
pub const MAX_EVENTS: usize = 10_000;
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

/// One device's buffered events, oldest first, with their arrival numbers.
#[derive(Default)]
struct DeviceEvents {
    events: VecDeque<(u64, Arc<TelemetryEvent>)>,
    bytes: usize,
}

/// The replay buffer: events per device, and each device's share indexed
/// so the largest is found at once.
#[derive(Default)]
struct Buffer {
    next: u64,
    devices: HashMap<Arc<str>, DeviceEvents>,
    by_count: BTreeSet<(usize, Arc<str>)>,
    by_bytes: BTreeSet<(usize, Arc<str>)>,
    events: usize,
    bytes: usize,
}

impl Buffer {
    /// Runs `change` on a device's events, keeping the indexes and totals
    /// right; a device left with nothing is forgotten.
    fn change(&mut self, id: &Arc<str>, change: impl FnOnce(&mut DeviceEvents)) {
        let d = self.devices.entry(id.clone()).or_default();
        let (count, bytes) = (d.events.len(), d.bytes);
        self.by_count.remove(&(count, id.clone()));
        self.by_bytes.remove(&(bytes, id.clone()));
        change(d);
        let (new_count, new_bytes) = (d.events.len(), d.bytes);
        self.events = self.events + new_count - count;
        self.bytes = self.bytes + new_bytes - bytes;
        if new_count == 0 {
            self.devices.remove(id);
        } else {
            self.by_count.insert((new_count, id.clone()));
            self.by_bytes.insert((new_bytes, id.clone()));
        }
    }

    fn push(&mut self, event: Arc<TelemetryEvent>, max_events: usize, max_bytes: usize) {
        let id: Arc<str> = match self.devices.get_key_value(event.device_id.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(event.device_id.as_str()),
        };
        let seq = self.next;
        self.next += 1;
        self.change(&id, |d| {
            d.bytes += event.body.len();
            d.events.push_back((seq, event));
        });
        loop {
            let largest = if self.events > max_events {
                self.by_count.last()
            } else if self.bytes > max_bytes {
                self.by_bytes.last()
            } else {
                break;
            };
            let Some((_, victim)) = largest.cloned() else { break };
            self.change(&victim, |d| {
                if let Some((_, old)) = d.events.pop_front() {
                    d.bytes -= old.body.len();
                }
            });
        }
    }

    /// The last `last` events (of one device, if given), oldest first.
    fn recent(&self, device_id: Option<&str>, last: usize) -> Vec<Arc<TelemetryEvent>> {
        let mut picked: Vec<(u64, Arc<TelemetryEvent>)> = match device_id {
            Some(id) => self
                .devices
                .get(id)
                .map(|d| d.events.iter().rev().take(last).cloned().collect())
                .unwrap_or_default(),
            None => self.devices.values().flat_map(|d| d.events.iter().cloned()).collect(),
        };
        picked.sort_unstable_by_key(|(seq, _)| *seq);
        let skip = picked.len().saturating_sub(last);
        picked.into_iter().skip(skip).map(|(_, e)| e).collect()
    }
}

/// The hub's telemetry: admission, the replay buffer and the live channel.
pub struct Telemetry {
    throttles: Arc<Throttles>,
    recent: Mutex<Buffer>,
    live: broadcast::Sender<Arc<TelemetryEvent>>,
    /// Messages accepted since start, for `/metrics`.
    accepted: AtomicU64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new(Arc::default())
    }
}

impl Telemetry {
    /// Telemetry admitted against `throttles`' telemetry rates.
    pub fn new(throttles: Arc<Throttles>) -> Self {
        Self {
            throttles,
            recent: Mutex::default(),
            live: broadcast::channel(LIVE_BACKLOG).0,
            accepted: AtomicU64::new(0),
        }
    }

    /// Admits the messages a device sends in one request (HTTPS), of
    /// these body sizes, or refuses them all: 429 ThrottlingException with
    /// a retry-after over the rate, 403 IotHubQuotaExceeded once the day's
    /// quota is used.
    pub fn admit(&self, device_id: &str, sizes: &[usize]) -> HubResult<()> {
        self.throttles.admit_telemetry(device_id, u32::try_from(sizes.len()).unwrap_or(u32::MAX))?;
        self.throttles.meter_batch(Metered::Message, sizes.iter().copied())
    }

    /// How long to hold one MQTT message of `bytes` bytes (and so its
    /// PUBACK) before [`push`](Self::push)ing it: MQTT telemetry over the
    /// rate is paced by back-pressure, never dropped. Refused only once the
    /// day's quota is used (IoT Hub then closes the connection).
    pub fn pace(&self, device_id: &str, bytes: usize) -> HubResult<Duration> {
        self.throttles.meter(Metered::Message, bytes)?;
        Ok(self.throttles.pace_telemetry(device_id))
    }

    /// Accepts an event: keeps it for replay and hands it to live readers.
    pub fn push(&self, event: TelemetryEvent) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let event = Arc::new(event);
        crate::sync::or_stop(self.recent.lock(), "telemetry buffer").push(
            event.clone(),
            MAX_EVENTS,
            MAX_BYTES,
        );
        // No live reader is fine.
        let _ = self.live.send(event);
    }

    /// Messages accepted since the hub started.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
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
        (guard.recent(device_id, last), live)
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

    fn ids(events: &[Arc<TelemetryEvent>]) -> String {
        events.iter().map(|e| e.device_id.as_str()).collect()
    }

    #[test]
    fn a_flooding_device_evicts_only_its_own_events() {
        let mut b = Buffer::default();
        for d in ["q", "r", "n", "q"] {
            b.push(Arc::new(event(d, 1)), 10, usize::MAX);
        }
        for _ in 0..100 {
            b.push(Arc::new(event("n", 1)), 10, usize::MAX);
        }
        // q's two and r's one survive, n keeps the rest, in arrival order.
        assert_eq!(ids(&b.recent(None, usize::MAX)), "qrqnnnnnnn");
        assert_eq!(b.events, 10);
        // With everyone equal, the oldest of a largest device goes.
        for _ in 0..20 {
            b.push(Arc::new(event("r", 1)), 10, usize::MAX);
        }
        let kept = ids(&b.recent(None, usize::MAX));
        assert_eq!((kept.matches('q').count(), kept.len()), (2, 10), "{kept}");
        assert_eq!(ids(&b.recent(Some("q"), 1)), "q");
    }

    #[test]
    fn the_byte_budget_evicts_from_the_device_holding_the_most_bytes() {
        let mut b = Buffer::default();
        b.push(Arc::new(event("small", 10)), usize::MAX, 100);
        for _ in 0..5 {
            b.push(Arc::new(event("big", 40)), usize::MAX, 100);
        }
        assert_eq!(ids(&b.recent(None, usize::MAX)), "smallbigbig");
        assert!(b.bytes <= 100);
        // Totals and indexes agree after evictions.
        assert_eq!(b.bytes, b.devices.values().map(|d| d.bytes).sum::<usize>());
        assert_eq!(b.by_count.len(), b.devices.len());
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
