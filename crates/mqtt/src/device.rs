//! The device's side of IoT Hub's MQTT topics — what a device publishes
//! and how it reads what the hub publishes — beside the hub's side in
//! [`crate::topic`], with the same encoding ([`crate::pct`]) and the same
//! property bags ([`crate::bag`]). Used by the Rust device client.
//!
//! Device ids are percent-encoded in the topics a device writes (everything
//! but `A-Z a-z 0-9 - . _ ~`), as the Python SDK does, so ids holding `+`,
//! `#` or `/` still make valid topic names and filters; the hub decodes
//! them. Bag keys and values use the same encoding (so `$.mid` goes out as
//! `%24.mid`, as the Node SDK sends it). Decoding turns `%XX` into bytes
//! and leaves `+` alone: bags are not form-encoded.

use crate::bag::PropertyBag;
use crate::pct::{decode_lossy, push_quoted, quote};

const TWIN_RES_PREFIX: &str = "$iothub/twin/res/";
const DESIRED_PREFIX: &str = "$iothub/twin/PATCH/properties/desired/";
const METHOD_PREFIX: &str = "$iothub/methods/POST/";
const C2D_MARKER: &str = "/messages/devicebound/";

/// Percent-encodes an id, bag key or bag value.
pub fn encode(text: &str) -> String {
    quote(text).into_owned()
}

/// `devices/{d}/messages/events/{bag}` (the bag may be empty).
pub fn telemetry(device_id: &str, bag: &str) -> String {
    format!("devices/{}/messages/events/{bag}", quote(device_id))
}

/// `$iothub/twin/GET/?$rid={rid}`.
pub fn twin_get(rid: &str) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
pub fn twin_patch_reported(rid: &str) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// `$iothub/methods/res/{status}/?$rid={rid}` (`rid` echoed as received).
pub fn method_response(status: i32, rid: &str) -> String {
    format!("$iothub/methods/res/{status}/?$rid={rid}")
}

/// What a topic the hub published on means to the device.
#[derive(Debug, PartialEq, Eq)]
pub enum HubPublish<'a> {
    /// `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`.
    TwinResponse {
        /// The status.
        status: u16,
        /// The request id, as received.
        rid: &'a str,
        /// The new reported `$version` of a PATCH response.
        version: Option<i64>,
    },
    /// `$iothub/twin/PATCH/properties/desired/?$version={v}`.
    DesiredPatch {
        /// The version from the topic, if it carries one.
        version: Option<i64>,
    },
    /// `$iothub/methods/POST/{name}/?$rid={rid}`.
    MethodRequest {
        /// The method name.
        name: &'a str,
        /// The request id, to echo byte for byte.
        rid: &'a str,
    },
    /// `devices/{d}/messages/devicebound/{bag}`.
    CloudToDevice {
        /// The raw (still encoded) property bag.
        bag: &'a str,
    },
    /// Anything else.
    Unknown,
}

/// Classifies a topic the hub published on. Never fails: malformed
/// topics are [`HubPublish::Unknown`].
pub fn classify(topic: &str) -> HubPublish<'_> {
    if let Some(rest) = topic.strip_prefix(TWIN_RES_PREFIX) {
        let (status, query) = rest.split_once('/').unwrap_or((rest, ""));
        let Ok(status) = status.parse::<u16>() else { return HubPublish::Unknown };
        let query = query.strip_prefix('?').unwrap_or(query);
        let Some(rid) = query_param(query, "$rid") else { return HubPublish::Unknown };
        let version = query_param(query, "$version").and_then(|v| v.parse().ok());
        return HubPublish::TwinResponse { status, rid, version };
    }
    if let Some(rest) = topic.strip_prefix(DESIRED_PREFIX) {
        let query = rest.strip_prefix('?').unwrap_or(rest);
        let version = query_param(query, "$version").and_then(|v| v.parse().ok());
        return HubPublish::DesiredPatch { version };
    }
    if let Some(rest) = topic.strip_prefix(METHOD_PREFIX) {
        let Some((name, query)) = rest.rsplit_once("/?") else { return HubPublish::Unknown };
        let Some(rid) = query_param(query, "$rid") else { return HubPublish::Unknown };
        if name.is_empty() {
            return HubPublish::Unknown;
        }
        return HubPublish::MethodRequest { name, rid };
    }
    if let Some(rest) = topic.strip_prefix("devices/") {
        if let Some((_device, bag)) = rest.split_once(C2D_MARKER) {
            return HubPublish::CloudToDevice { bag };
        }
    }
    HubPublish::Unknown
}

/// The raw value of `name` in a `k=v&k=v` query (first occurrence).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| match pair.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        _ => None,
    })
}

/// Encodes `key=value` pairs as a property bag, each side percent-encoded.
pub fn encode_bag<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut bag = String::new();
    for (key, value) in pairs {
        if !bag.is_empty() {
            bag.push('&');
        }
        push_quoted(&mut bag, key);
        bag.push('=');
        push_quoted(&mut bag, value);
    }
    bag
}

/// Decodes a property bag into `(key, value)` pairs in order. A bare `key`
/// (a null value) decodes to `None`, `key=` to an empty string; empty
/// elements (`a=1&&b=2`, a trailing `/` or `&`) are skipped.
pub fn decode_bag(bag: &str) -> Vec<(String, Option<String>)> {
    let bag = bag.strip_suffix('/').unwrap_or(bag);
    PropertyBag::new(bag).pairs().map(|(k, v)| (k.into_owned(), v.map(|v| v.into_owned()))).collect()
}

/// Percent-decodes `%XX` sequences; `+` stays `+`; invalid UTF-8 is
/// replaced rather than refused.
pub fn decode(text: &str) -> String {
    decode_lossy(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::Subscription;

    #[test]
    fn device_ids_are_encoded_in_topics() {
        assert_eq!(telemetry("d1", ""), "devices/d1/messages/events/");
        assert_eq!(telemetry("a+b#c/d e", "k=v"), "devices/a%2Bb%23c%2Fd%20e/messages/events/k=v");
        assert_eq!(Subscription::C2d.filter("dev-1.x_y~z"), "devices/dev-1.x_y~z/messages/devicebound/#");
        assert_eq!(Subscription::C2d.filter("a$b"), "devices/a%24b/messages/devicebound/#");
        // What the device subscribes with, the hub accepts.
        for s in Subscription::ALL {
            assert_eq!(crate::topic::parse_filter(&s.filter("a+b#c/d"), "a+b#c/d"), Ok(s));
        }
    }

    #[test]
    fn request_topics() {
        assert_eq!(twin_get("7"), "$iothub/twin/GET/?$rid=7");
        assert_eq!(twin_patch_reported("8"), "$iothub/twin/PATCH/properties/reported/?$rid=8");
        assert_eq!(method_response(200, "abc-1"), "$iothub/methods/res/200/?$rid=abc-1");
        assert_eq!(method_response(-1, "9"), "$iothub/methods/res/-1/?$rid=9");
    }

    #[test]
    fn twin_responses_parse() {
        assert_eq!(
            classify("$iothub/twin/res/200/?$rid=12"),
            HubPublish::TwinResponse { status: 200, rid: "12", version: None }
        );
        assert_eq!(
            classify("$iothub/twin/res/204/?$rid=13&$version=5"),
            HubPublish::TwinResponse { status: 204, rid: "13", version: Some(5) }
        );
        assert_eq!(
            classify("$iothub/twin/res/204/?$version=6&$rid=14"),
            HubPublish::TwinResponse { status: 204, rid: "14", version: Some(6) }
        );
        assert_eq!(classify("$iothub/twin/res/abc/?$rid=1"), HubPublish::Unknown);
        assert_eq!(classify("$iothub/twin/res/200/"), HubPublish::Unknown);
    }

    #[test]
    fn desired_patches_and_methods_parse() {
        assert_eq!(
            classify("$iothub/twin/PATCH/properties/desired/?$version=42"),
            HubPublish::DesiredPatch { version: Some(42) }
        );
        assert_eq!(
            classify("$iothub/twin/PATCH/properties/desired/"),
            HubPublish::DesiredPatch { version: None }
        );
        assert_eq!(
            classify("$iothub/methods/POST/reboot/?$rid=1f"),
            HubPublish::MethodRequest { name: "reboot", rid: "1f" }
        );
        assert_eq!(
            classify("$iothub/methods/POST/a/b/?$rid=2"),
            HubPublish::MethodRequest { name: "a/b", rid: "2" }
        );
        assert_eq!(classify("$iothub/methods/POST//?$rid=2"), HubPublish::Unknown);
        assert_eq!(classify("$iothub/methods/POST/x"), HubPublish::Unknown);
    }

    #[test]
    fn c2d_topics_parse_whatever_the_id_form() {
        assert_eq!(
            classify("devices/d1/messages/devicebound/%24.mid=1&k=v"),
            HubPublish::CloudToDevice { bag: "%24.mid=1&k=v" }
        );
        assert_eq!(classify("devices/a%2Bb/messages/devicebound/"), HubPublish::CloudToDevice { bag: "" });
        assert_eq!(classify("devices/d1/messages/events/"), HubPublish::Unknown);
        assert_eq!(classify("elsewhere"), HubPublish::Unknown);
    }

    #[test]
    fn bags_round_trip() {
        let bag = encode_bag([("$.mid", "m 1"), ("k&=", "v/+%"), ("empty", "")]);
        assert_eq!(bag, "%24.mid=m%201&k%26%3D=v%2F%2B%25&empty=");
        assert_eq!(
            decode_bag(&bag),
            vec![
                ("$.mid".to_owned(), Some("m 1".to_owned())),
                ("k&=".to_owned(), Some("v/+%".to_owned())),
                ("empty".to_owned(), Some(String::new())),
            ]
        );
        assert_eq!(encode_bag([]), "");
    }

    #[test]
    fn bag_decoding_is_lenient() {
        assert_eq!(
            decode_bag("a=1+2&&bare&$.to=%2Fdevices%2Fd1/"),
            vec![
                ("a".to_owned(), Some("1+2".to_owned())),
                ("bare".to_owned(), None),
                ("$.to".to_owned(), Some("/devices/d1".to_owned())),
            ]
        );
        assert!(decode_bag("").is_empty());
        assert_eq!(decode_bag("x=%ZZ%"), vec![("x".to_owned(), Some("%ZZ%".to_owned()))]);
    }
}
