//! The HTTP-style message property names (`iothub-messageid`,
//! `iothub-app-*`, ...) and the device HTTPS telemetry batch
//! (`application/vnd.microsoft.iothub.json`) that carries them.
//!
//! Lives here rather than in the server so the batch parser, which reads
//! bytes straight from a device, is a pure function the fuzz target and the
//! corpus replay can call; the server maps its error to 400.

use base64::Engine as _;

use crate::bag::MessageProperties;

/// Prefix of application properties.
pub const APP_PREFIX: &str = "iothub-app-";

/// The content type of a batch of messages.
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.json";

/// Maps `(name, value)` pairs — names matched ignoring ASCII case — into
/// system and application properties. Names that are neither (User-Agent,
/// Authorization, ...) are ignored.
pub fn message_properties<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> MessageProperties {
    let mut props = MessageProperties::default();
    for (name, value) in pairs {
        let lower = name.to_ascii_lowercase();
        let system = &mut props.system;
        let slot = match lower.as_str() {
            "iothub-messageid" => &mut system.message_id,
            "iothub-correlationid" => &mut system.correlation_id,
            "iothub-userid" => &mut system.user_id,
            "iothub-to" => &mut system.to,
            "iothub-expiry" => &mut system.absolute_expiry_time,
            "iothub-contenttype" => &mut system.content_type,
            "iothub-contentencoding" => &mut system.content_encoding,
            "iothub-interface-id" => &mut system.interface_id,
            "dt-subject" => &mut system.component_name,
            _ => {
                // The key keeps the case it came with (HTTP/1 header
                // names arrive lower-cased; batch keys as the device wrote them).
                if lower.starts_with(APP_PREFIX) {
                    props.application.insert(&name[APP_PREFIX.len()..], Some(value.to_owned()));
                }
                continue;
            }
        };
        *slot = Some(value.to_owned());
    }
    props
}

/// One entry of a batch.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchEntry {
    body: String,
    #[serde(default)]
    properties: std::collections::BTreeMap<String, String>,
}

/// Why a batch was refused; the text is the 400's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BatchError(String);

/// Parses a batch: a JSON array of `{"body": base64, "properties": {..}}`.
pub fn parse_batch(body: &[u8]) -> Result<Vec<(MessageProperties, Vec<u8>)>, BatchError> {
    let entries: Vec<BatchEntry> = serde_json::from_slice(body)
        .map_err(|e| BatchError(format!("The batch is not a JSON array of {{body, properties}}: {e}")))?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let payload = base64::engine::general_purpose::STANDARD
                .decode(entry.body.as_bytes())
                .map_err(|e| BatchError(format!("Batch entry {i}: the body is not base64: {e}")))?;
            let props = message_properties(entry.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            Ok((props, payload))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn system_and_app_names_ignore_case() {
        let p = message_properties([
            ("IoTHub-MessageId", "m1"),
            ("iothub-correlationid", "c1"),
            ("IOTHUB-USERID", "u1"),
            ("iothub-to", "/devices/d/messages/events"),
            ("iothub-contenttype", "application/json"),
            ("iothub-contentencoding", "utf-8"),
            ("iothub-interface-id", "urn:x"),
            ("dt-subject", "thermostat1"),
            ("iothub-app-temp", "21"),
            ("User-Agent", "sdk"),
        ]);
        assert_eq!(p.system.message_id.as_deref(), Some("m1"));
        assert_eq!(p.system.correlation_id.as_deref(), Some("c1"));
        assert_eq!(p.system.user_id.as_deref(), Some("u1"));
        assert_eq!(p.system.to.as_deref(), Some("/devices/d/messages/events"));
        assert_eq!(p.system.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.system.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(p.system.interface_id.as_deref(), Some("urn:x"));
        assert_eq!(p.system.component_name.as_deref(), Some("thermostat1"));
        assert_eq!(p.application.get("temp"), Some(Some("21")));
        assert_eq!(p.application.len(), 1);
    }

    #[test]
    fn batches_keep_the_prefix_in_their_keys() {
        let body =
            br#"[{"body":"aGk=","properties":{"iothub-app-k":"v","iothub-messageid":"b1"}},{"body":""}]"#;
        let batch = parse_batch(body).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].1, b"hi");
        assert_eq!(batch[0].0.application.get("k"), Some(Some("v")));
        assert_eq!(batch[0].0.system.message_id.as_deref(), Some("b1"));
        assert!(batch[1].1.is_empty());
    }

    #[test]
    fn bad_batches_are_refused() {
        for bad in [&b"{}"[..], b"[{\"body\":\"!!\"}]", b"[{\"body\":1}]", b"not json"] {
            assert!(parse_batch(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
