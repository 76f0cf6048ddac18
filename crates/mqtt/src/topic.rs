//! Topics a device may publish and subscribe to, and the topics the hub
//! publishes to it.
//!
//! Only the authenticated device's own topics are accepted; anything else is
//! a [`TopicError`] and IoT Hub closes the connection (it does not answer a
//! bad SUBSCRIBE with SUBACK 0x80; Azure's middleware relies on that). A
//! device id inside a topic may be raw (Node, .NET, C) or percent-encoded
//! (Python): both are compared with the authenticated id.
//!
//! In `$iothub/...` topics the parameters after `?` are `k=v` pairs; keys are
//! compared decoded (so `%24rid` is `$rid`), and the `$rid` value is kept raw
//! so that it is echoed byte-for-byte.

use std::fmt::Write as _;

use rumqttc::mqttbytes::v4::SubscribeReasonCode;
use rumqttc::mqttbytes::QoS;

use crate::bag::PropertyBag;
use crate::pct::{decode_lossy, names_device, quote};

/// What a device's PUBLISH is, by its topic. Borrows from the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// `devices/{d}/messages/events/{bag}`: telemetry. The bag may be empty,
    /// and the topic may end at `events` with no slash.
    Telemetry(PropertyBag<'a>),
    /// `$iothub/twin/GET/?$rid={rid}`: read the twin (the body is ignored).
    TwinGet {
        /// Request id, raw.
        rid: &'a str,
    },
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`: the body is a
    /// reported-properties patch.
    TwinPatchReported {
        /// Request id, raw.
        rid: &'a str,
    },
    /// `$iothub/methods/res/{status}/?$rid={rid}`: a direct method's reply;
    /// the body is the payload (JSON or empty).
    MethodResponse {
        /// Status chosen by the device.
        status: i32,
        /// Request id the hub sent, raw.
        rid: &'a str,
    },
}

/// A subscription a device may hold. Requested QoS is granted up to 1
/// ([`granted_qos`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Subscription {
    /// `devices/{d}/messages/devicebound/#`
    C2d = 1,
    /// `$iothub/twin/res/#`
    TwinResponses = 2,
    /// `$iothub/twin/PATCH/properties/desired/#`
    DesiredPatches = 4,
    /// `$iothub/methods/POST/#`
    Methods = 8,
}

impl Subscription {
    /// All four, in a stable order.
    pub const ALL: [Subscription; 4] = [Self::C2d, Self::TwinResponses, Self::DesiredPatches, Self::Methods];

    /// The filter a device subscribes with ([`parse_filter`] is the
    /// inverse). The id is percent-encoded, so ids holding `+`, `#` or `/`
    /// still make a valid filter; the hub accepts it raw or encoded.
    pub fn filter(self, device_id: &str) -> String {
        match self {
            Self::C2d => format!("devices/{}{C2D_FILTER_SUFFIX}", quote(device_id)),
            Self::TwinResponses => TWIN_RESPONSES.to_owned(),
            Self::DesiredPatches => DESIRED_PATCHES.to_owned(),
            Self::Methods => METHOD_REQUESTS.to_owned(),
        }
    }
}

/// The filter for twin responses.
pub const TWIN_RESPONSES: &str = "$iothub/twin/res/#";
/// The filter for desired-property notifications.
pub const DESIRED_PATCHES: &str = "$iothub/twin/PATCH/properties/desired/#";
/// The filter for direct-method requests.
pub const METHOD_REQUESTS: &str = "$iothub/methods/POST/#";
/// What follows the device segment in the C2D filter.
const C2D_FILTER_SUFFIX: &str = "/messages/devicebound/#";

/// A set of [`Subscription`]s in one byte, e.g. for a session record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SubscriptionSet(u8);

impl SubscriptionSet {
    /// The empty set.
    pub const EMPTY: Self = Self(0);

    /// Adds `s`; true if it was not there yet.
    pub fn insert(&mut self, s: Subscription) -> bool {
        let had = self.contains(s);
        self.0 |= s as u8;
        !had
    }

    /// Removes `s`; true if it was there.
    pub fn remove(&mut self, s: Subscription) -> bool {
        let had = self.contains(s);
        self.0 &= !(s as u8);
        had
    }

    /// True when `s` is in the set.
    pub fn contains(self, s: Subscription) -> bool {
        self.0 & s as u8 != 0
    }

    /// True when the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members, in [`Subscription::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Subscription> {
        Subscription::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// The set as a byte, for storage.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// A set from [`bits`](Self::bits); unknown bits are dropped.
    pub fn from_bits(bits: u8) -> Self {
        Self(bits & 0x0F)
    }
}

impl FromIterator<Subscription> for SubscriptionSet {
    fn from_iter<I: IntoIterator<Item = Subscription>>(iter: I) -> Self {
        let mut set = Self::EMPTY;
        for s in iter {
            set.insert(s);
        }
        set
    }
}

/// Why a topic or filter was refused (close the connection), or a hub-side
/// topic could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic names a device other than the authenticated one.
    #[error("topic names another device")]
    OtherDevice,
    /// Not a topic (or filter) a device may use.
    #[error("topic not allowed")]
    NotAllowed,
    /// A topic name (PUBLISH or will) holding `#` or `+`, which only
    /// filters may hold (MQTT 3.1.1 §3.3.2).
    #[error("wildcard in a topic name")]
    Wildcard,
    /// An `$iothub` request without a `$rid` parameter.
    #[error("missing $rid")]
    MissingRid,
    /// A `$rid` that cannot be echoed in a topic (`#`, `+` or NUL), or, for
    /// [`method_request`], one that is not made of `A-Z a-z 0-9 - . _ ~`.
    #[error("invalid $rid")]
    InvalidRid,
    /// A method response whose status is not an integer.
    #[error("invalid status")]
    InvalidStatus,
    /// A method name that cannot be put in a topic (empty, or holding `/`,
    /// `?`, `#`, `+`, `&` or a control character).
    #[error("invalid method name")]
    InvalidMethodName,
}

/// Classifies a device's PUBLISH (or will) topic. `device_id` is the
/// authenticated id.
pub fn parse_publish<'a>(topic: &'a str, device_id: &str) -> Result<Inbound<'a>, TopicError> {
    if topic.contains('\0') {
        return Err(TopicError::NotAllowed);
    }
    // Anywhere, the property bag and `$rid` included: the SDKs
    // percent-encode both characters there (`%2B`, `%23`).
    if topic.contains(['#', '+']) {
        return Err(TopicError::Wildcard);
    }
    if let Some(rest) = topic.strip_prefix("devices/") {
        let (segment, rest) = rest.split_once('/').ok_or(TopicError::NotAllowed)?;
        let bag = match rest.strip_prefix("messages/events") {
            Some("") => "",
            Some(tail) => tail.strip_prefix('/').ok_or(TopicError::NotAllowed)?,
            None => return Err(TopicError::NotAllowed),
        };
        if !names_device(segment, device_id) {
            return Err(TopicError::OtherDevice);
        }
        // Node's module outputs end the bag with a '/'.
        let bag = bag.strip_suffix('/').unwrap_or(bag);
        return Ok(Inbound::Telemetry(PropertyBag::new(bag)));
    }

    let (path, query) = topic.split_once('?').ok_or(TopicError::NotAllowed)?;
    let path = path.strip_suffix('/').unwrap_or(path);
    if path == "$iothub/twin/GET" {
        return Ok(Inbound::TwinGet { rid: rid(query)? });
    }
    if path == "$iothub/twin/PATCH/properties/reported" {
        return Ok(Inbound::TwinPatchReported { rid: rid(query)? });
    }
    if let Some(status) = path.strip_prefix("$iothub/methods/res/") {
        let status = status.parse().map_err(|_| TopicError::InvalidStatus)?;
        return Ok(Inbound::MethodResponse { status, rid: rid(query)? });
    }
    Err(TopicError::NotAllowed)
}

/// The raw `$rid` value of a query string (first occurrence).
fn rid(query: &str) -> Result<&str, TopicError> {
    let value = query
        .split('&')
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (decode_lossy(k) == "$rid").then_some(v)
        })
        .ok_or(TopicError::MissingRid)?;
    if value.contains(['#', '+', '\0']) {
        return Err(TopicError::InvalidRid);
    }
    Ok(value)
}

/// Classifies a SUBSCRIBE (or UNSUBSCRIBE) filter. Exactly the four filters
/// IoT Hub allows a device are accepted; no other wildcard use.
pub fn parse_filter(filter: &str, device_id: &str) -> Result<Subscription, TopicError> {
    match filter {
        TWIN_RESPONSES => return Ok(Subscription::TwinResponses),
        DESIRED_PATCHES => return Ok(Subscription::DesiredPatches),
        METHOD_REQUESTS => return Ok(Subscription::Methods),
        _ => {}
    }
    let segment = filter
        .strip_prefix("devices/")
        .and_then(|rest| rest.strip_suffix(C2D_FILTER_SUFFIX))
        .filter(|segment| !segment.contains(['/', '+', '#']))
        .ok_or(TopicError::NotAllowed)?;
    if names_device(segment, device_id) {
        Ok(Subscription::C2d)
    } else {
        Err(TopicError::OtherDevice)
    }
}

/// The SUBACK code for a requested QoS: QoS 2 is granted as 1.
pub fn granted_qos(requested: QoS) -> SubscribeReasonCode {
    SubscribeReasonCode::Success(match requested {
        QoS::AtMostOnce => QoS::AtMostOnce,
        QoS::AtLeastOnce | QoS::ExactlyOnce => QoS::AtLeastOnce,
    })
}

/// `$iothub/twin/res/{status}/?$rid={rid}[&$version={version}]`. `rid` is
/// echoed as received.
pub fn twin_response(status: u16, rid: &str, version: Option<i64>) -> String {
    let mut t = String::with_capacity(40 + rid.len());
    let _ = write!(t, "$iothub/twin/res/{status}/?$rid={rid}");
    if let Some(v) = version {
        let _ = write!(t, "&$version={v}");
    }
    t
}

/// `$iothub/twin/PATCH/properties/desired/?$version={version}`.
pub fn desired_patch(version: i64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

/// `$iothub/methods/POST/{name}/?$rid={rid}`.
///
/// The name goes in raw, as IoT Hub sends it (Node takes the path segment as
/// is, Python percent-decodes it); names that would break the topic are
/// refused. `rid` is chosen by the hub and must be made of unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`), because Node and Python decode it
/// before echoing it back.
pub fn method_request(name: &str, rid: &str) -> Result<String, TopicError> {
    if name.is_empty() || name.contains(['/', '?', '#', '+', '&']) || name.chars().any(char::is_control) {
        return Err(TopicError::InvalidMethodName);
    }
    if rid.is_empty() || !rid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
        return Err(TopicError::InvalidRid);
    }
    Ok(format!("$iothub/methods/POST/{name}/?$rid={rid}"))
}

/// `devices/{d}/messages/devicebound/{bag}`, with `bag` from
/// [`format_bag`](crate::format_bag).
///
/// The id goes in raw: the pinned Python SDK (2.14.0) recognises a
/// cloud-to-device topic by the substring `devices/{raw id}/messages/devicebound`
/// (its docs say ids are not URL-encoded in topics), and Node matches
/// `devices/.*/messages/devicebound/.*` whatever the id. Azure's id
/// characters include no `/`, `+` or `#`, so a raw id is a valid topic level.
pub fn c2d(device_id: &str, bag: &str) -> String {
    let mut t = String::with_capacity(36 + device_id.len() + bag.len());
    t.push_str("devices/");
    t.push_str(device_id);
    t.push_str("/messages/devicebound/");
    t.push_str(bag);
    t
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pct::quote;

    const SPECIAL_IDS: [&str; 9] = ["dev1", "a$b", "it's", "(x)*", "a:b@c=d", "q?r", "p%20q", "-._!,", "%24"];

    fn telemetry<'a>(topic: &'a str, d: &str) -> &'a str {
        match parse_publish(topic, d).unwrap() {
            Inbound::Telemetry(bag) => bag.as_raw(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn telemetry_forms() {
        assert_eq!(telemetry("devices/d1/messages/events/", "d1"), "");
        assert_eq!(telemetry("devices/d1/messages/events", "d1"), "");
        assert_eq!(telemetry("devices/d1/messages/events/a=1&b", "d1"), "a=1&b");
        assert_eq!(telemetry("devices/d1/messages/events/%24.mid=1&a=2/", "d1"), "%24.mid=1&a=2");
        assert_eq!(telemetry("devices/d1/messages/events/a=x/y", "d1"), "a=x/y");
    }

    #[test]
    fn ids_raw_and_percent_encoded() {
        for id in SPECIAL_IDS {
            let raw = format!("devices/{id}/messages/events/k=v");
            let encoded = format!("devices/{}/messages/events/k=v", quote(id));
            assert_eq!(telemetry(&raw, id), "k=v", "{raw}");
            assert_eq!(telemetry(&encoded, id), "k=v", "{encoded}");
            for filter in [
                format!("devices/{id}/messages/devicebound/#"),
                format!("devices/{}/messages/devicebound/#", quote(id)),
            ] {
                assert_eq!(parse_filter(&filter, id), Ok(Subscription::C2d), "{filter}");
            }
        }
        // Node-style %24 for '$' in an id.
        assert_eq!(telemetry("devices/a%24b/messages/events/", "a$b"), "");
    }

    #[test]
    fn other_devices_and_unknown_topics_are_refused() {
        let d = "d1";
        for (topic, want) in [
            ("devices/d2/messages/events/", TopicError::OtherDevice),
            ("devices/D1/messages/events/", TopicError::OtherDevice),
            ("devices/d%31x/messages/events/", TopicError::OtherDevice),
            ("devices/%ff/messages/events/", TopicError::OtherDevice),
            ("devices/d1/messages/eventsX", TopicError::NotAllowed),
            ("devices/d1/messages/devicebound/", TopicError::NotAllowed),
            ("devices/d1/modules/m/messages/events/", TopicError::NotAllowed),
            ("devices/d1", TopicError::NotAllowed),
            ("devices/", TopicError::NotAllowed),
            ("", TopicError::NotAllowed),
            ("/devices/d1/messages/events/", TopicError::NotAllowed),
            ("$iothub/twin/res/200/?$rid=1", TopicError::NotAllowed),
            ("$iothub/twin/GET/", TopicError::NotAllowed),
            ("$iothub/twin/PATCH/properties/desired/?$rid=1", TopicError::NotAllowed),
            ("$iothub/methods/POST/m/?$rid=1", TopicError::NotAllowed),
            ("$iothub/twin/GET/?$ridx=1", TopicError::MissingRid),
            ("$iothub/twin/GET/?rid=1", TopicError::MissingRid),
            ("$iothub/twin/GET/?$rid", TopicError::MissingRid),
            ("$iothub/twin/GET/?$rid=a#", TopicError::Wildcard),
            ("devices/d1/messages/events/a=+", TopicError::Wildcard),
            ("devices/d1/messages/events/#", TopicError::Wildcard),
            ("devices/+/messages/events/", TopicError::Wildcard),
            ("$iothub/methods/res/200/?$rid=1+2", TopicError::Wildcard),
            ("$iothub/methods/res/abc/?$rid=1", TopicError::InvalidStatus),
            ("$iothub/methods/res//?$rid=1", TopicError::InvalidStatus),
            ("devices/d1/messages/events/\0", TopicError::NotAllowed),
        ] {
            assert_eq!(parse_publish(topic, d), Err(want), "{topic:?}");
        }
    }

    #[test]
    fn twin_requests() {
        assert_eq!(parse_publish("$iothub/twin/GET/?$rid=42", "d"), Ok(Inbound::TwinGet { rid: "42" }));
        assert_eq!(parse_publish("$iothub/twin/GET?$rid=42", "d"), Ok(Inbound::TwinGet { rid: "42" }));
        // Node: raw '$rid' and a UUID; Python: quote()d rid; Node may encode the key.
        let uuid = "5c6e1d2a-58d6-4d02-9a6c-1e4a3b7f0a11";
        let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid={uuid}");
        assert_eq!(parse_publish(&topic, "d"), Ok(Inbound::TwinPatchReported { rid: uuid }));
        assert_eq!(
            parse_publish("$iothub/twin/PATCH/properties/reported/?$version=3&%24rid=a%20b", "d"),
            Ok(Inbound::TwinPatchReported { rid: "a%20b" }),
            "kept raw, other params first"
        );
        assert_eq!(
            parse_publish("$iothub/twin/PATCH/properties/reported/?$rid=7&$version=3", "d"),
            Ok(Inbound::TwinPatchReported { rid: "7" })
        );
        assert_eq!(parse_publish("$iothub/twin/GET/?$rid=", "d"), Ok(Inbound::TwinGet { rid: "" }));
    }

    #[test]
    fn method_responses() {
        assert_eq!(
            parse_publish("$iothub/methods/res/200/?$rid=1f", "d"),
            Ok(Inbound::MethodResponse { status: 200, rid: "1f" })
        );
        assert_eq!(
            parse_publish("$iothub/methods/res/-1/?$rid=x&extra=1", "d"),
            Ok(Inbound::MethodResponse { status: -1, rid: "x" })
        );
    }

    #[test]
    fn filters() {
        let d = "d1";
        assert_eq!(parse_filter("$iothub/twin/res/#", d), Ok(Subscription::TwinResponses));
        assert_eq!(
            parse_filter("$iothub/twin/PATCH/properties/desired/#", d),
            Ok(Subscription::DesiredPatches)
        );
        assert_eq!(parse_filter("$iothub/methods/POST/#", d), Ok(Subscription::Methods));
        assert_eq!(parse_filter("devices/d1/messages/devicebound/#", d), Ok(Subscription::C2d));
        for (filter, want) in [
            ("devices/d2/messages/devicebound/#", TopicError::OtherDevice),
            ("devices/+/messages/devicebound/#", TopicError::NotAllowed),
            ("devices/#", TopicError::NotAllowed),
            ("#", TopicError::NotAllowed),
            ("$iothub/#", TopicError::NotAllowed),
            ("$iothub/twin/res/+", TopicError::NotAllowed),
            ("$iothub/twin/res/200", TopicError::NotAllowed),
            ("$iothub/methods/POST/m", TopicError::NotAllowed),
            ("$iothub/methods/POST/+/#", TopicError::NotAllowed),
            ("devices/d1/messages/devicebound/", TopicError::NotAllowed),
            ("devices/d1/messages/events/#", TopicError::NotAllowed),
            ("devices/d1/modules/m/inputs/#", TopicError::NotAllowed),
            ("devices/d1/x/messages/devicebound/#", TopicError::NotAllowed),
            ("", TopicError::NotAllowed),
        ] {
            assert_eq!(parse_filter(filter, d), Err(want), "{filter}");
        }
    }

    #[test]
    fn grants_at_most_qos_1() {
        assert_eq!(granted_qos(QoS::AtMostOnce), SubscribeReasonCode::Success(QoS::AtMostOnce));
        assert_eq!(granted_qos(QoS::AtLeastOnce), SubscribeReasonCode::Success(QoS::AtLeastOnce));
        assert_eq!(granted_qos(QoS::ExactlyOnce), SubscribeReasonCode::Success(QoS::AtLeastOnce));
    }

    #[test]
    fn subscription_sets() {
        let mut set = SubscriptionSet::EMPTY;
        assert!(set.is_empty());
        assert!(set.insert(Subscription::Methods));
        assert!(!set.insert(Subscription::Methods));
        assert!(set.insert(Subscription::C2d));
        assert_eq!(set.iter().collect::<Vec<_>>(), [Subscription::C2d, Subscription::Methods]);
        assert_eq!(SubscriptionSet::from_bits(set.bits()), set);
        assert_eq!(SubscriptionSet::from_bits(0xFF), Subscription::ALL.into_iter().collect());
        assert!(set.remove(Subscription::C2d));
        assert!(!set.remove(Subscription::C2d));
        assert!(set.contains(Subscription::Methods) && !set.contains(Subscription::C2d));
    }

    #[test]
    fn builders() {
        assert_eq!(twin_response(200, "abc", None), "$iothub/twin/res/200/?$rid=abc");
        assert_eq!(twin_response(204, "a%20b", Some(7)), "$iothub/twin/res/204/?$rid=a%20b&$version=7");
        assert_eq!(desired_patch(12), "$iothub/twin/PATCH/properties/desired/?$version=12");
        assert_eq!(method_request("reboot", "1a").unwrap(), "$iothub/methods/POST/reboot/?$rid=1a");
        assert_eq!(method_request("get status!", "1").unwrap(), "$iothub/methods/POST/get status!/?$rid=1");
        for bad in ["", "a/b", "a?b", "a#", "a+b", "a&b", "a\nb"] {
            assert_eq!(method_request(bad, "1"), Err(TopicError::InvalidMethodName), "{bad:?}");
        }
        for bad in ["", "a b", "a%20", "a&b"] {
            assert_eq!(method_request("m", bad), Err(TopicError::InvalidRid), "{bad:?}");
        }
        assert_eq!(c2d("d1", ""), "devices/d1/messages/devicebound/");
        assert_eq!(c2d("a$b(c)", "k=v"), "devices/a$b(c)/messages/devicebound/k=v");
    }

    #[test]
    fn built_topics_parse_back() {
        // What the hub sends is what a device subscribed to.
        for id in SPECIAL_IDS {
            let topic = c2d(id, "k=v");
            let filter_seg = topic.strip_prefix("devices/").unwrap().split('/').next().unwrap();
            assert!(names_device(filter_seg, id), "{topic}");
        }
        // A twin reply's rid is exactly what the device sent.
        let Inbound::TwinGet { rid } = parse_publish("$iothub/twin/GET/?$rid=r%2F1", "d").unwrap() else {
            panic!()
        };
        assert_eq!(twin_response(200, rid, None), "$iothub/twin/res/200/?$rid=r%2F1");
    }
}
