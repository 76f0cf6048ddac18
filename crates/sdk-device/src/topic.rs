//! IoT Hub's device-side MQTT topics: building what the device publishes
//! and subscribes to, classifying what the hub publishes, and property bags.
//!
//! Device ids are percent-encoded in topics the way the Python SDK does it
//! (everything but `A-Z a-z 0-9 - . _ ~`), so ids holding `+`, `#` or `/`
//! still make valid topic names and filters; the hub decodes them. Bag keys
//! and values use the same encoding (so `$.mid` goes out as `%24.mid`, as
//! the Node SDK sends it). Decoding turns `%XX` into bytes and leaves `+`
//! alone: bags are not form-encoded.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Characters escaped in ids, bag keys and bag values.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Twin responses (GET and reported PATCH).
pub(crate) const TWIN_RESPONSES: &str = "$iothub/twin/res/#";
/// Desired-property notifications.
pub(crate) const DESIRED_PATCHES: &str = "$iothub/twin/PATCH/properties/desired/#";
/// Direct-method requests.
pub(crate) const METHOD_REQUESTS: &str = "$iothub/methods/POST/#";

const TWIN_RES_PREFIX: &str = "$iothub/twin/res/";
const DESIRED_PREFIX: &str = "$iothub/twin/PATCH/properties/desired/";
const METHOD_PREFIX: &str = "$iothub/methods/POST/";
const C2D_MARKER: &str = "/messages/devicebound/";

/// Percent-encodes an id, bag key or bag value.
pub(crate) fn encode(text: &str) -> String {
    utf8_percent_encode(text, ESCAPED).to_string()
}

/// Percent-decodes `%XX` sequences; `+` stays `+`; invalid UTF-8 is
/// replaced rather than refused.
pub(crate) fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// `devices/{d}/messages/devicebound/#`.
pub(crate) fn c2d_filter(device_id: &str) -> String {
    format!("devices/{}/messages/devicebound/#", encode(device_id))
}

/// `devices/{d}/messages/events/{bag}` (the bag may be empty).
pub(crate) fn telemetry(device_id: &str, bag: &str) -> String {
    format!("devices/{}/messages/events/{bag}", encode(device_id))
}

/// `$iothub/twin/GET/?$rid={rid}`.
pub(crate) fn twin_get(rid: &str) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
pub(crate) fn twin_patch_reported(rid: &str) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// `$iothub/methods/res/{status}/?$rid={rid}` (`rid` echoed as received).
pub(crate) fn method_response(status: i32, rid: &str) -> String {
    format!("$iothub/methods/res/{status}/?$rid={rid}")
}

/// What a topic the hub published on means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound<'a> {
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
/// topics are [`Inbound::Unknown`].
pub(crate) fn classify(topic: &str) -> Inbound<'_> {
    if let Some(rest) = topic.strip_prefix(TWIN_RES_PREFIX) {
        let (status, query) = rest.split_once('/').unwrap_or((rest, ""));
        let Ok(status) = status.parse::<u16>() else { return Inbound::Unknown };
        let query = query.strip_prefix('?').unwrap_or(query);
        let Some(rid) = query_param(query, "$rid") else { return Inbound::Unknown };
        let version = query_param(query, "$version").and_then(|v| v.parse().ok());
        return Inbound::TwinResponse { status, rid, version };
    }
    if let Some(rest) = topic.strip_prefix(DESIRED_PREFIX) {
        let query = rest.strip_prefix('?').unwrap_or(rest);
        let version = query_param(query, "$version").and_then(|v| v.parse().ok());
        return Inbound::DesiredPatch { version };
    }
    if let Some(rest) = topic.strip_prefix(METHOD_PREFIX) {
        let Some((name, query)) = rest.rsplit_once("/?") else { return Inbound::Unknown };
        let Some(rid) = query_param(query, "$rid") else { return Inbound::Unknown };
        if name.is_empty() {
            return Inbound::Unknown;
        }
        return Inbound::MethodRequest { name, rid };
    }
    if let Some(rest) = topic.strip_prefix("devices/") {
        if let Some((_device, bag)) = rest.split_once(C2D_MARKER) {
            return Inbound::CloudToDevice { bag };
        }
    }
    Inbound::Unknown
}

/// The raw value of `name` in a `k=v&k=v` query (first occurrence).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| match pair.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        _ => None,
    })
}

/// Encodes `key=value` pairs as a property bag, each side percent-encoded.
pub(crate) fn encode_bag<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut bag = String::new();
    for (key, value) in pairs {
        if !bag.is_empty() {
            bag.push('&');
        }
        bag.push_str(&encode(key));
        bag.push('=');
        bag.push_str(&encode(value));
    }
    bag
}

/// Decodes a property bag into `(key, value)` pairs in order. A bare `key`
/// (a null value) decodes to `None`, `key=` to an empty string; empty
/// elements (`a=1&&b=2`, a trailing `/` or `&`) are skipped.
pub(crate) fn decode_bag(bag: &str) -> Vec<(String, Option<String>)> {
    let bag = bag.strip_suffix('/').unwrap_or(bag);
    bag.split('&')
        .filter(|element| !element.is_empty())
        .map(|element| match element.split_once('=') {
            Some((k, v)) => (decode(k), Some(decode(v))),
            None => (decode(element), None),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_encoded_in_topics() {
        assert_eq!(telemetry("d1", ""), "devices/d1/messages/events/");
        assert_eq!(telemetry("a+b#c/d e", "k=v"), "devices/a%2Bb%23c%2Fd%20e/messages/events/k=v");
        assert_eq!(c2d_filter("dev-1.x_y~z"), "devices/dev-1.x_y~z/messages/devicebound/#");
        assert_eq!(c2d_filter("a$b"), "devices/a%24b/messages/devicebound/#");
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
            Inbound::TwinResponse { status: 200, rid: "12", version: None }
        );
        assert_eq!(
            classify("$iothub/twin/res/204/?$rid=13&$version=5"),
            Inbound::TwinResponse { status: 204, rid: "13", version: Some(5) }
        );
        assert_eq!(
            classify("$iothub/twin/res/204/?$version=6&$rid=14"),
            Inbound::TwinResponse { status: 204, rid: "14", version: Some(6) }
        );
        assert_eq!(classify("$iothub/twin/res/abc/?$rid=1"), Inbound::Unknown);
        assert_eq!(classify("$iothub/twin/res/200/"), Inbound::Unknown);
    }

    #[test]
    fn desired_patches_and_methods_parse() {
        assert_eq!(
            classify("$iothub/twin/PATCH/properties/desired/?$version=42"),
            Inbound::DesiredPatch { version: Some(42) }
        );
        assert_eq!(
            classify("$iothub/twin/PATCH/properties/desired/"),
            Inbound::DesiredPatch { version: None }
        );
        assert_eq!(
            classify("$iothub/methods/POST/reboot/?$rid=1f"),
            Inbound::MethodRequest { name: "reboot", rid: "1f" }
        );
        assert_eq!(
            classify("$iothub/methods/POST/a/b/?$rid=2"),
            Inbound::MethodRequest { name: "a/b", rid: "2" }
        );
        assert_eq!(classify("$iothub/methods/POST//?$rid=2"), Inbound::Unknown);
        assert_eq!(classify("$iothub/methods/POST/x"), Inbound::Unknown);
    }

    #[test]
    fn c2d_topics_parse_whatever_the_id_form() {
        assert_eq!(
            classify("devices/d1/messages/devicebound/%24.mid=1&k=v"),
            Inbound::CloudToDevice { bag: "%24.mid=1&k=v" }
        );
        assert_eq!(classify("devices/a%2Bb/messages/devicebound/"), Inbound::CloudToDevice { bag: "" });
        assert_eq!(classify("devices/d1/messages/events/"), Inbound::Unknown);
        assert_eq!(classify("elsewhere"), Inbound::Unknown);
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
