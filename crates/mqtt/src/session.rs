//! One device's MQTT session after CONNECT, as a state machine without IO.
//!
//! The hub's connection loop reads packets, feeds them to [`Session::handle`]
//! together with the hub's pushes and the time, and carries out the
//! [`Action`]s that come back in order. Everything the protocol decides —
//! what a PUBLISH is, which packets are violations, subscriptions, packet
//! ids and the window of cloud-to-device messages in flight, the keep-alive
//! and token deadlines, whether the device's will message is published —
//! is decided here, so it can be tested without a socket, a store or a
//! clock: time only ever comes in as an argument.
//!
//! The will: a CONNECT's will on the device's own telemetry topic (with or
//! without a property bag) is kept, with its bag parsed as a PUBLISH's
//! would be and `iothub-MessageType=Will` added, as IoT Hub marks it. A
//! will on any other topic is ignored: IoT Hub forwards only a will on the
//! telemetry topic and has no other place to send one, and refusing the
//! CONNECT would lock out devices whose MQTT library always sets a will.
//! [`Session::end`] says whether it is published, from how the connection
//! ended ([`Ending`]).

mod c2d;
#[cfg(test)]
mod tests;

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::bag::{MessageProperties, PropertyBag};
use crate::frame::MAX_MESSAGE_BYTES;
use crate::topic::{self, Inbound, Subscription, SubscriptionSet};
use crate::v4::{
    ConnAck, ConnectReturnCode, LastWill, Packet, PubAck, Publish, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::QoS;

pub use c2d::{C2dMessage, C2D_WINDOW};

/// IoT Hub's cap on the server-side keep-alive timeout.
pub const MAX_KEEP_ALIVE: Duration = Duration::from_secs(1767);

/// What the hub knows about a session when its CONNECT is accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The authenticated device: every topic must name it.
    pub device_id: String,
    /// The CONNECT's keep-alive in seconds; 0 turns the deadline off.
    pub keep_alive_secs: u16,
    /// How long the device's token stays valid from now; `None` for
    /// credentials that do not expire (X.509).
    pub token_lifetime: Option<Duration>,
    /// Subscriptions restored from a persistent session (empty otherwise).
    pub subscriptions: SubscriptionSet,
    /// Whether a stored session was restored (the CONNACK flag).
    pub session_present: bool,
    /// The CONNECT's will message, if it had one.
    pub will: Option<LastWill>,
}

/// Something that happened to the session.
#[derive(Debug)]
pub enum Input {
    /// A packet from the device.
    Packet(Packet),
    /// The hub pushes a desired-properties notification.
    Desired { version: i64, body: Bytes },
    /// The hub pushes a direct method call.
    Method { name: String, rid: String, payload: Bytes },
    /// New cloud-to-device messages are queued for the device.
    C2dAvailable,
    /// The answer to [`Action::FetchC2d`]: messages now locked to this
    /// connection (possibly none).
    C2dFetched(Vec<C2dMessage>),
    /// The answer to [`Action::TwinGet`] or [`Action::ReportedPatch`]:
    /// status, the new reported `$version` (for a patch) and the body.
    TwinResult { rid: String, status: u16, version: Option<i64>, body: Bytes },
    /// The hub wants the connection closed (takeover, disable, delete,
    /// slow consumer). Why is told at the end ([`Ending::Kicked`]).
    Kicked,
    /// Time passed: check the deadlines (see [`Session::next_deadline`]).
    Tick,
}

/// What the connection loop must do, in the order given.
#[derive(Debug)]
pub enum Action {
    /// Write this packet to the device.
    Write(Packet),
    /// Hand a telemetry message to the hub (a PUBLISH, or the will from
    /// [`Session::end`]). `payload` may share the read buffer's memory.
    Telemetry { properties: MessageProperties, payload: Bytes },
    /// Read the twin, then answer with [`Input::TwinResult`].
    TwinGet { rid: String },
    /// Apply a reported patch (the raw body), then answer with
    /// [`Input::TwinResult`].
    ReportedPatch { rid: String, payload: Bytes },
    /// A direct method's reply from the device.
    MethodResponse { rid: String, status: i32, payload: Bytes },
    /// The subscriptions are now this set: store them (persistent
    /// sessions) and tell whoever routes pushes.
    StoreSubscriptions(SubscriptionSet),
    /// Lock up to `max` more queued messages to this connection, then
    /// answer with [`Input::C2dFetched`].
    FetchC2d { max: usize },
    /// The device acknowledged the message with this queue sequence number.
    CompleteC2d { seq: i64 },
    /// Close the connection; nothing after this is acted on.
    Close(Close),
}

/// Why the session closes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// The device sent DISCONNECT.
    Disconnect,
    /// The hub kicked the connection.
    Kicked,
    /// Nothing arrived within 1.5 × the client's keep-alive.
    KeepAlive,
    /// The device's token expired.
    TokenExpired,
    /// The device broke the protocol (or IoT Hub's rules on top of it).
    Violation(String),
}

/// How a connection ended, as the IO loop saw it: what [`Session::end`]
/// decides the will on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The session closed itself ([`Action::Close`]), a DISCONNECT included.
    Closed(Close),
    /// The hub kicked the connection, for this reason.
    Kicked(Kick),
    /// The network connection ended without DISCONNECT in any other way:
    /// end of stream, a read or write error, a write the device did not
    /// take in time, bytes that are not MQTT, a hub failure while carrying
    /// out an action.
    Lost,
}

/// Why the hub kicked a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The device was disabled or deleted: it may no longer send anything.
    Revoked,
    /// Anything else: a newer connection of the device took over, or the
    /// hub closed a slow consumer.
    Other,
}

/// A will kept for publishing.
#[derive(Debug, Clone)]
struct Will {
    properties: MessageProperties,
    payload: Bytes,
}

/// The session's state. See the module docs.
#[derive(Debug)]
pub struct Session {
    device_id: String,
    session_present: bool,
    keep_alive: Option<Duration>,
    keep_alive_deadline: Option<Instant>,
    token_deadline: Option<Instant>,
    subscriptions: SubscriptionSet,
    c2d: c2d::Window,
    closed: bool,
    will: Option<Will>,
}

impl Session {
    /// A session whose CONNECT was accepted at `now`. The returned actions
    /// are the CONNACK and, for a restored session subscribed to C2D, the
    /// first fetch of queued messages.
    pub fn accept(accepted: Accepted, now: Instant) -> (Self, Vec<Action>) {
        let keep_alive = (accepted.keep_alive_secs > 0)
            .then(|| Duration::from_millis(u64::from(accepted.keep_alive_secs) * 1500).min(MAX_KEEP_ALIVE));
        let will = accepted.will.and_then(|w| keep_will(w, &accepted.device_id));
        let mut session = Self {
            device_id: accepted.device_id,
            session_present: accepted.session_present,
            keep_alive,
            keep_alive_deadline: keep_alive.map(|k| now + k),
            token_deadline: accepted.token_lifetime.map(|t| now + t),
            subscriptions: accepted.subscriptions,
            c2d: c2d::Window::default(),
            closed: false,
            will,
        };
        let mut out = vec![Action::Write(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            session.session_present,
        )))];
        session.fetch_c2d(&mut out);
        (session, out)
    }

    /// The device.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The current subscriptions.
    pub fn subscriptions(&self) -> SubscriptionSet {
        self.subscriptions
    }

    /// Whether the session has closed itself.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a will is kept for publishing (false when the CONNECT had
    /// none, when it was ignored for its topic, and after [`end`](Self::end)).
    pub fn has_will(&self) -> bool {
        self.will.is_some()
    }

    /// The connection ended: returns the will's [`Action::Telemetry`] when
    /// it is to be published, at most once per session.
    ///
    /// Per MQTT 3.1.1 §3.1.2.5 it is published whenever the connection ends
    /// without DISCONNECT — network failure, keep-alive expiry, a protocol
    /// violation, the server closing it (a slow consumer, a hub failure) —
    /// and also on token expiry and on a takeover by a newer connection of
    /// the device: the device did not say goodbye, and its credential was
    /// valid when it gave the will. It is not published after DISCONNECT,
    /// nor when the device was disabled or deleted ([`Kick::Revoked`]): the
    /// hub no longer accepts messages from that identity.
    pub fn end(&mut self, ending: Ending) -> Option<Action> {
        self.closed = true;
        let will = self.will.take()?;
        let fires = match ending {
            Ending::Closed(Close::Disconnect) | Ending::Kicked(Kick::Revoked) => false,
            Ending::Closed(_) | Ending::Kicked(Kick::Other) | Ending::Lost => true,
        };
        fires.then_some(Action::Telemetry { properties: will.properties, payload: will.payload })
    }

    /// The earliest moment [`Input::Tick`] can close the session; `None`
    /// when no deadline is set. The IO loop sleeps until then.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.token_deadline, self.keep_alive_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes arrived at `now`, a whole packet or not: the device is alive.
    /// (A large PUBLISH trickling in must not time out half-way.)
    pub fn bytes_received(&mut self, now: Instant) {
        if let Some(k) = self.keep_alive {
            self.keep_alive_deadline = Some(now + k);
        }
    }

    /// Handles one input at `now`; returns what to do, in order. After a
    /// [`Action::Close`] every input is ignored.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        match input {
            Input::Packet(p) => {
                self.bytes_received(now);
                self.on_packet(p, &mut out);
            }
            Input::Desired { version, body } => {
                let publish = Publish::from_bytes(topic::desired_patch(version), QoS::AtMostOnce, body);
                out.push(Action::Write(Packet::Publish(publish)));
            }
            Input::Method { name, rid, payload } => match topic::method_request(&name, &rid) {
                Ok(t) => {
                    out.push(Action::Write(Packet::Publish(Publish::from_bytes(t, QoS::AtMostOnce, payload))))
                }
                Err(e) => out.push(Action::Close(Close::Violation(e.to_string()))),
            },
            Input::C2dAvailable => self.fetch_c2d(&mut out),
            Input::C2dFetched(messages) => {
                self.c2d.fetched();
                for m in messages {
                    let topic = topic::c2d(&self.device_id, &m.bag);
                    let pkid = self.c2d.send(m.seq);
                    let mut publish = Publish::from_bytes(topic, QoS::AtLeastOnce, m.body);
                    publish.pkid = pkid;
                    out.push(Action::Write(Packet::Publish(publish)));
                }
            }
            Input::TwinResult { rid, status, version, body } => {
                // Answered even without a `$iothub/twin/res/#` subscription:
                // the Python SDK GETs the twin after every reconnect without one.
                let topic = topic::twin_response(status, &rid, version);
                out.push(Action::Write(Packet::Publish(Publish::from_bytes(topic, QoS::AtMostOnce, body))));
            }
            Input::Kicked => out.push(Action::Close(Close::Kicked)),
            Input::Tick => {
                // The token first: of two passed deadlines it is the one that
                // says more.
                if self.token_deadline.is_some_and(|d| now >= d) {
                    out.push(Action::Close(Close::TokenExpired));
                } else if self.keep_alive_deadline.is_some_and(|d| now >= d) {
                    out.push(Action::Close(Close::KeepAlive));
                }
            }
        }
        if out.iter().any(|a| matches!(a, Action::Close(_))) {
            self.closed = true;
        }
        out
    }

    fn on_packet(&mut self, packet: Packet, out: &mut Vec<Action>) {
        match packet {
            Packet::Publish(p) => self.on_publish(p, out),
            Packet::PubAck(ack) => {
                // An id not in flight (a duplicate, or a device confused
                // about what it got) is ignored, as MQTT allows.
                if let Some(seq) = self.c2d.acked(ack.pkid) {
                    out.push(Action::CompleteC2d { seq });
                    self.fetch_c2d(out);
                }
            }
            Packet::Subscribe(s) => self.on_subscribe(s, out),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u, out),
            Packet::PingReq => out.push(Action::Write(Packet::PingResp)),
            Packet::Disconnect => {
                // Discarded on receipt (§3.14.4): whatever happens to the
                // connection next, it is not published.
                self.will = None;
                out.push(Action::Close(Close::Disconnect));
            }
            Packet::Connect(_) => out.push(violation("second CONNECT")),
            other => out.push(violation(format!("unexpected {other:?}"))),
        }
    }

    fn on_publish(&mut self, p: Publish, out: &mut Vec<Action>) {
        if p.qos == QoS::ExactlyOnce {
            return out.push(violation("QoS 2 publish"));
        }
        let inbound = match topic::parse_publish(&p.topic, &self.device_id) {
            Ok(i) => i,
            Err(e) => return out.push(violation(format!("publish to {}: {e}", p.topic))),
        };
        out.push(match inbound {
            Inbound::Telemetry(bag) => {
                // The SDKs allow payloads of up to 256 KiB with properties
                // on top, so the cap is on the payload.
                if p.payload.len() > MAX_MESSAGE_BYTES {
                    return out.push(violation("telemetry message over 256 KB"));
                }
                Action::Telemetry {
                    properties: telemetry_properties(bag, p.retain),
                    payload: p.payload.clone(),
                }
            }
            Inbound::TwinGet { rid } => Action::TwinGet { rid: rid.to_owned() },
            Inbound::TwinPatchReported { rid } => {
                Action::ReportedPatch { rid: rid.to_owned(), payload: p.payload.clone() }
            }
            Inbound::MethodResponse { status, rid } => {
                Action::MethodResponse { rid: rid.to_owned(), status, payload: p.payload.clone() }
            }
        });
        // Acknowledged after the hub's answer: the IO loop carries out the
        // actions in order.
        if p.qos == QoS::AtLeastOnce {
            out.push(Action::Write(Packet::PubAck(PubAck::new(p.pkid))));
        }
    }

    fn on_subscribe(&mut self, s: Subscribe, out: &mut Vec<Action>) {
        let mut next = self.subscriptions;
        let mut codes = Vec::with_capacity(s.filters.len());
        // All filters are checked before anything changes: one bad filter
        // closes the connection and stores nothing.
        for f in &s.filters {
            match topic::parse_filter(&f.path, &self.device_id) {
                Ok(sub) => next.insert(sub),
                Err(e) => return out.push(violation(format!("subscribe to {}: {e}", f.path))),
            };
            codes.push(topic::granted_qos(f.qos));
        }
        let before = std::mem::replace(&mut self.subscriptions, next);
        out.push(Action::StoreSubscriptions(next));
        out.push(Action::Write(Packet::SubAck(SubAck::new(s.pkid, codes))));
        if !before.contains(Subscription::C2d) {
            self.fetch_c2d(out);
        }
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe, out: &mut Vec<Action>) {
        // `read_packet` refuses it already; a session fed by other means
        // must not answer it either (MQTT 3.1.1 §3.10.3).
        if u.topics.is_empty() {
            return out.push(violation("unsubscribe without topic filters"));
        }
        let mut next = self.subscriptions;
        for t in &u.topics {
            match topic::parse_filter(t, &self.device_id) {
                Ok(sub) => next.remove(sub),
                Err(e) => return out.push(violation(format!("unsubscribe {t}: {e}"))),
            };
        }
        self.subscriptions = next;
        out.push(Action::StoreSubscriptions(next));
        out.push(Action::Write(Packet::UnsubAck(UnsubAck::new(u.pkid))));
    }

    /// Asks for as many messages as the window has room for — only while
    /// the device listens for them.
    fn fetch_c2d(&mut self, out: &mut Vec<Action>) {
        if !self.subscriptions.contains(Subscription::C2d) {
            return;
        }
        if let Some(max) = self.c2d.request() {
            out.push(Action::FetchC2d { max });
        }
    }
}

/// A telemetry message's properties: the bag, and `mqtt-retain` for a
/// retained one (IoT Hub does not retain, it forwards the flag).
fn telemetry_properties(bag: PropertyBag<'_>, retain: bool) -> MessageProperties {
    let mut properties = bag.parse();
    if retain {
        properties.application.insert("mqtt-retain", Some("true".into()));
    }
    properties
}

/// The will to keep, if its topic is the device's telemetry topic. The
/// pre-CONNECT cap keeps its payload far below the telemetry size limit.
fn keep_will(will: LastWill, device_id: &str) -> Option<Will> {
    let Ok(Inbound::Telemetry(bag)) = topic::parse_publish(&will.topic, device_id) else {
        return None;
    };
    let mut properties = telemetry_properties(bag, will.retain);
    properties.application.insert("iothub-MessageType", Some("Will".into()));
    // Copied: the payload is a view into the CONNECT's read buffer.
    Some(Will { properties, payload: Bytes::copy_from_slice(&will.message) })
}

fn violation(what: impl Into<String>) -> Action {
    Action::Close(Close::Violation(what.into()))
}
