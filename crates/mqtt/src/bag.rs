//! Property bags: the `k=v&k=v` tail of telemetry and cloud-to-device topics.
//!
//! Each key and value is percent-encoded on its own; `+` is a literal `+`
//! (never form decoding); Node encodes `$` as `%24`; a bare `key` is a null
//! value and `key=` an empty string. Keys starting `$.` are IoT Hub system
//! properties ([`SystemProperties`]); every other key is an application
//! property ([`AppProperties`]).
//!
//! Decoding is lenient: empty pairs and empty keys are skipped, a malformed
//! escape is kept literally, bytes that are not UTF-8 become U+FFFD, and a
//! repeated key keeps its last value. Unknown `$.` keys are application
//! properties.
//!
//! Encoding ([`format_bag`]) escapes everything but `A-Z a-z 0-9 - . _ ~`
//! (Python's `quote(s, safe="")`), which both the Node SDK
//! (`decodeURIComponent` on each side of a `k=v` split on `&` and `=`) and the
//! Python SDK (`unquote`, same split, topic split on `/`) read back exactly:
//! no raw `&`, `=` or `/` can reach them.

use std::borrow::Cow;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::pct::{decode_lossy, push_quoted};

/// A property bag as it appears in a topic: raw and undecoded, borrowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PropertyBag<'a>(&'a str);

impl<'a> PropertyBag<'a> {
    /// Wraps the raw text after `.../messages/events/`.
    pub fn new(raw: &'a str) -> Self {
        Self(raw)
    }

    /// The raw, still encoded text.
    pub fn as_raw(&self) -> &'a str {
        self.0
    }

    /// True when the bag holds no text at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Decoded `(key, value)` pairs in topic order; `None` is a bare key (null).
    /// Empty pairs and empty keys are skipped.
    pub fn pairs(&self) -> impl Iterator<Item = (Cow<'a, str>, Option<Cow<'a, str>>)> + 'a {
        self.0.split('&').filter_map(|pair| {
            let (key, value) = match pair.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (pair, None),
            };
            (!key.is_empty()).then(|| (decode_lossy(key), value.map(decode_lossy)))
        })
    }

    /// Splits the bag into system and application properties.
    pub fn parse(&self) -> MessageProperties {
        let mut out = MessageProperties::default();
        for (key, value) in self.pairs() {
            match out.system.slot_mut(&key) {
                // A bare system key carries nothing: ignored.
                Some(slot) => {
                    if let Some(v) = value {
                        *slot = Some(v.into_owned());
                    }
                }
                None => out.application.insert(key.into_owned(), value.map(Cow::into_owned)),
            }
        }
        out
    }
}

/// A message's properties, as carried by a property bag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageProperties {
    /// The `$.` keys.
    pub system: SystemProperties,
    /// Everything else.
    pub application: AppProperties,
}

/// IoT Hub system properties carried in a property bag.
///
/// Serialized names follow what `az iot hub monitor-events --properties all`
/// prints under `properties.system`: the AMQP message-property names in
/// snake case (`message_id`, `correlation_id`, `user_id`, `to`,
/// `absolute_expiry_time`, `content_type`, `content_encoding`; the CLI lists
/// uamqp's `Message.properties` attributes). The three with no AMQP property
/// use IoT Hub's system-property names (`iothub-interface-id`, `dt-subject`,
/// `iothub-outputname`), which the CLI shows among the annotations. Absent
/// properties are omitted. Values are kept as the device sent them (decoded),
/// e.g. `$.exp` stays an ISO 8601 string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SystemProperties {
    /// `$.mid`
    #[serde(rename = "message_id", skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// `$.cid`
    #[serde(rename = "correlation_id", skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// `$.uid`
    #[serde(rename = "user_id", skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// `$.to`
    #[serde(rename = "to", skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `$.exp`: absolute expiry time, ISO 8601.
    #[serde(rename = "absolute_expiry_time", skip_serializing_if = "Option::is_none")]
    pub absolute_expiry_time: Option<String>,
    /// `$.ct`, e.g. `application/json`.
    #[serde(rename = "content_type", skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `$.ce`, e.g. `utf-8`.
    #[serde(rename = "content_encoding", skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// `$.ifid`: Plug and Play interface id (preview).
    #[serde(rename = "iothub-interface-id", skip_serializing_if = "Option::is_none")]
    pub interface_id: Option<String>,
    /// `$.sub`: Plug and Play component name.
    #[serde(rename = "dt-subject", skip_serializing_if = "Option::is_none")]
    pub component_name: Option<String>,
    /// `$.on`: module output name.
    #[serde(rename = "iothub-outputname", skip_serializing_if = "Option::is_none")]
    pub output_name: Option<String>,
}

impl SystemProperties {
    /// The field a bag key names, if it is a system property.
    fn slot_mut(&mut self, key: &str) -> Option<&mut Option<String>> {
        Some(match key {
            "$.mid" => &mut self.message_id,
            "$.cid" => &mut self.correlation_id,
            "$.uid" => &mut self.user_id,
            "$.to" => &mut self.to,
            "$.exp" => &mut self.absolute_expiry_time,
            "$.ct" => &mut self.content_type,
            "$.ce" => &mut self.content_encoding,
            "$.ifid" => &mut self.interface_id,
            "$.sub" => &mut self.component_name,
            "$.on" => &mut self.output_name,
            _ => return None,
        })
    }

    /// Bag keys and values in the order [`format_bag`] writes them (the order
    /// of the reference's cloud-to-device list, then the rest).
    fn entries(&self) -> [(&'static str, Option<&str>); 10] {
        [
            ("$.mid", self.message_id.as_deref()),
            ("$.to", self.to.as_deref()),
            ("$.cid", self.correlation_id.as_deref()),
            ("$.uid", self.user_id.as_deref()),
            ("$.ct", self.content_type.as_deref()),
            ("$.ce", self.content_encoding.as_deref()),
            ("$.exp", self.absolute_expiry_time.as_deref()),
            ("$.ifid", self.interface_id.as_deref()),
            ("$.sub", self.component_name.as_deref()),
            ("$.on", self.output_name.as_deref()),
        ]
    }

    /// True when no system property is set.
    pub fn is_empty(&self) -> bool {
        self.entries().iter().all(|(_, v)| v.is_none())
    }

    /// The set properties under IoT Hub's hyphenated system-property names,
    /// as message routing and the Event Hubs SDKs' `system_properties` spell
    /// them (`message-id`, `correlation-id`, `user-id`, `to`,
    /// `absolute-expiry-time`, `content-type`, `content-encoding`,
    /// `iothub-interface-id`, `dt-subject`, `iothub-outputname`), for a
    /// consumer that wants those rather than the CLI's (serde) names.
    pub fn hub_names(&self) -> impl Iterator<Item = (&'static str, &str)> {
        const NAMES: [&str; 10] = [
            "message-id",
            "to",
            "correlation-id",
            "user-id",
            "content-type",
            "content-encoding",
            "absolute-expiry-time",
            "iothub-interface-id",
            "dt-subject",
            "iothub-outputname",
        ];
        NAMES.into_iter().zip(self.entries()).filter_map(|(name, (_, value))| Some((name, value?)))
    }
}

/// Application properties in insertion order, keys unique (a repeated key
/// replaces the earlier value in place). A `None` value is a null (a bare
/// key in a bag). Serializes as a JSON object of strings and nulls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppProperties(Vec<(String, Option<String>)>);

impl AppProperties {
    /// No properties.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Sets `key`, replacing an existing value in place.
    pub fn insert(&mut self, key: impl Into<String>, value: Option<String>) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key, value)),
        }
    }

    /// `Some(None)` for a null value, `None` when the key is absent.
    pub fn get(&self, key: &str) -> Option<Option<&str>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_deref())
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Option<String>> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    /// Properties in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// Number of properties.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>> FromIterator<(K, Option<String>)> for AppProperties {
    fn from_iter<I: IntoIterator<Item = (K, Option<String>)>>(iter: I) -> Self {
        let mut props = Self::new();
        for (k, v) in iter {
            props.insert(k, v);
        }
        props
    }
}

impl<K: Into<String>> FromIterator<(K, String)> for AppProperties {
    fn from_iter<I: IntoIterator<Item = (K, String)>>(iter: I) -> Self {
        iter.into_iter().map(|(k, v)| (k, Some(v))).collect()
    }
}

impl Serialize for AppProperties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for AppProperties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PropsVisitor;
        impl<'de> Visitor<'de> for PropsVisitor {
            type Value = AppProperties;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string or null values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AppProperties, A::Error> {
                let mut props = AppProperties::new();
                while let Some((k, v)) = map.next_entry::<String, Option<String>>()? {
                    props.insert(k, v);
                }
                Ok(props)
            }
        }
        deserializer.deserialize_map(PropsVisitor)
    }
}

/// Parses a raw bag; shorthand for `PropertyBag::new(raw).parse()`.
pub fn parse_bag(raw: &str) -> MessageProperties {
    PropertyBag::new(raw).parse()
}

/// Writes a property bag: the set system properties (in the order `$.mid`,
/// `$.to`, `$.cid`, `$.uid`, `$.ct`, `$.ce`, `$.exp`, `$.ifid`, `$.sub`,
/// `$.on`), then the application properties in order. Keys and values are
/// percent-encoded (`$.mid` → `%24.mid`); a null value is a bare key, an
/// empty one `key=`. For cloud-to-device delivery set `to` to
/// `/devices/{id}/messages/deviceBound`.
pub fn format_bag(system: &SystemProperties, app: &AppProperties) -> String {
    let mut out = String::new();
    let sep = |out: &mut String| {
        if !out.is_empty() {
            out.push('&');
        }
    };
    for (key, value) in system.entries() {
        if let Some(value) = value {
            sep(&mut out);
            push_quoted(&mut out, key);
            out.push('=');
            push_quoted(&mut out, value);
        }
    }
    for (key, value) in app.iter() {
        sep(&mut out);
        push_quoted(&mut out, key);
        if let Some(value) = value {
            out.push('=');
            push_quoted(&mut out, value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn node_telemetry_bag() {
        // querystring.stringify for system properties, encodeURIComponent for the rest.
        let p = parse_bag("%24.mid=m1&%24.cid=c%2F1&%24.uid=u&%24.to=%2Fx&%24.exp=2030-01-01T00%3A00%3A00.000Z&temp%20c=21.5&a%2Bb=x+y");
        assert_eq!(p.system.message_id, s("m1"));
        assert_eq!(p.system.correlation_id, s("c/1"));
        assert_eq!(p.system.user_id, s("u"));
        assert_eq!(p.system.to, s("/x"));
        assert_eq!(p.system.absolute_expiry_time, s("2030-01-01T00:00:00.000Z"));
        assert_eq!(p.application.get("temp c"), Some(Some("21.5")));
        assert_eq!(p.application.get("a+b"), Some(Some("x+y")), "plus is literal");
        assert_eq!(p.application.len(), 2);
    }

    #[test]
    fn python_telemetry_bag() {
        let p = parse_bag(
            "%24.on=out&%24.mid=id&%24.ct=application%2Fjson&%24.ce=utf-8&%24.ifid=urn%3Ax&%24.sub=comp&k=v",
        );
        assert_eq!(p.system.output_name, s("out"));
        assert_eq!(p.system.content_type, s("application/json"));
        assert_eq!(p.system.content_encoding, s("utf-8"));
        assert_eq!(p.system.interface_id, s("urn:x"));
        assert_eq!(p.system.component_name, s("comp"));
        assert_eq!(p.application.iter().collect::<Vec<_>>(), vec![("k", Some("v"))]);
    }

    #[test]
    fn raw_dollar_keys_null_and_empty() {
        let p = parse_bag("$.mid=raw&$.ct=&bare&empty=&&=novalue&$.unknown=1&dup=1&dup=2");
        assert_eq!(p.system.message_id, s("raw"));
        assert_eq!(p.system.content_type, s(""));
        assert_eq!(p.application.get("bare"), Some(None));
        assert_eq!(p.application.get("empty"), Some(Some("")));
        assert_eq!(p.application.get("$.unknown"), Some(Some("1")));
        assert_eq!(p.application.get("dup"), Some(Some("2")));
        assert_eq!(p.application.get(""), None);
        let keys: Vec<_> = p.application.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["bare", "empty", "$.unknown", "dup"]);
        // A bare system key is ignored; values may hold '='.
        let p = parse_bag("$.mid&a=b=c&bad=%zz%ff");
        assert_eq!(p.system.message_id, None);
        assert_eq!(p.application.get("a"), Some(Some("b=c")));
        assert_eq!(p.application.get("bad"), Some(Some("%zz\u{FFFD}")));
        assert_eq!(parse_bag(""), MessageProperties::default());
    }

    #[test]
    fn c2d_bag_for_the_sdks() {
        let system = SystemProperties {
            message_id: s("m 1"),
            to: s("/devices/d$1/messages/deviceBound"),
            correlation_id: s("c&=/"),
            user_id: s("u"),
            content_type: s("application/json"),
            content_encoding: s("utf-8"),
            absolute_expiry_time: s("2030-01-01T00:00:00Z"),
            ..Default::default()
        };
        let app: AppProperties = [("k+1", s("v/1")), ("null", None), ("empty", s(""))].into_iter().collect();
        let bag = format_bag(&system, &app);
        assert_eq!(
            bag,
            "%24.mid=m%201&%24.to=%2Fdevices%2Fd%241%2Fmessages%2FdeviceBound&%24.cid=c%26%3D%2F&%24.uid=u\
             &%24.ct=application%2Fjson&%24.ce=utf-8&%24.exp=2030-01-01T00%3A00%3A00Z&k%2B1=v%2F1&null&empty="
        );
        assert!(!bag.contains('/') && !bag.contains('+'));
        let back = parse_bag(&bag);
        assert_eq!(back.system, system);
        assert_eq!(back.application, app);
    }

    #[test]
    fn round_trip() {
        let tricky = ["", "a", "a b", "ä€😀", "%", "%25", "+", "&=&", "a/b?c#d", "$.x", "'()*:@!,"];
        for k in tricky.iter().filter(|k| !k.is_empty() && !k.starts_with("$.")) {
            for v in tricky {
                let system =
                    SystemProperties { message_id: s(v), component_name: s(k), ..Default::default() };
                let app: AppProperties = [(*k, s(v)), ("n", None)].into_iter().collect();
                let back = parse_bag(&format_bag(&system, &app));
                assert_eq!(back.system, system, "{k:?}={v:?}");
                assert_eq!(back.application, app, "{k:?}={v:?}");
            }
        }
        assert_eq!(format_bag(&SystemProperties::default(), &AppProperties::new()), "");
    }

    #[test]
    fn serializes_like_az_monitor_events() {
        let p = parse_bag("%24.mid=1&%24.ct=application%2Fjson&%24.sub=c&x=1&y");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "system": {"message_id": "1", "content_type": "application/json", "dt-subject": "c"},
                "application": {"x": "1", "y": null}
            })
        );
        let back: MessageProperties = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
        let hub: Vec<_> = p.system.hub_names().collect();
        assert_eq!(hub, [("message-id", "1"), ("content-type", "application/json"), ("dt-subject", "c")]);
        let from_strings: AppProperties = [("k", "v".to_owned())].into_iter().collect();
        assert_eq!(from_strings.get("k"), Some(Some("v")));
        assert!(SystemProperties::default().is_empty());
        assert!(!p.system.is_empty());
    }

    #[test]
    fn app_properties_edit() {
        let mut a = AppProperties::new();
        a.insert("x", s("1"));
        a.insert("mqtt-retain", s("true"));
        a.insert("x", s("2"));
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![("x", Some("2")), ("mqtt-retain", Some("true"))]);
        assert_eq!(a.remove("x"), Some(s("2")));
        assert_eq!(a.remove("x"), None);
        assert_eq!(a.len(), 1);
        assert!(!a.is_empty());
    }
}
