//! Messages between devices and the cloud: cloud-to-device messages as the
//! hub queues them, and device-to-cloud telemetry events as back ends read
//! them.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::Timestamp;

/// Largest cloud-to-device message body (64 KB, Azure's limit).
pub const MAX_C2D_BODY: usize = 64 * 1024;
/// Most cloud-to-device messages queued per device (Azure's limit).
pub const MAX_C2D_QUEUE: usize = 50;
/// Default time to live of a cloud-to-device message.
pub const DEFAULT_C2D_TTL_SECS: i64 = 3600;
/// Longest time to live of a cloud-to-device message (two days).
pub const MAX_C2D_TTL_SECS: i64 = 2 * 24 * 3600;
/// Largest device-to-cloud message (256 KB including properties).
pub const MAX_TELEMETRY: usize = 256 * 1024;

fn ser_b64<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
}

/// A queued cloud-to-device message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudToDeviceMessage {
    /// `$.mid` on the wire.
    pub message_id: String,
    /// `$.cid`.
    pub correlation_id: Option<String>,
    /// `$.uid`.
    pub user_id: Option<String>,
    /// `$.ct`.
    pub content_type: Option<String>,
    /// `$.ce`.
    pub content_encoding: Option<String>,
    /// `$.exp`: the message is dropped after this.
    pub expiry: Timestamp,
    /// When the hub accepted it.
    pub enqueued_time: Timestamp,
    /// Application properties.
    pub properties: BTreeMap<String, String>,
    /// The payload (base64 in storage).
    #[serde(serialize_with = "ser_b64", deserialize_with = "de_b64")]
    pub body: Vec<u8>,
}

/// The body of a telemetry event as back ends read it: text when it is
/// UTF-8, else base64.
pub fn render_body(body: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(body) {
        Ok(text) => (text.to_owned(), "utf-8"),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), "base64"),
    }
}

/// Parses an absolute expiry and bounds it: absent means the default TTL,
/// later than the longest TTL is cut to it, and an expiry already passed is
/// an error.
pub fn c2d_expiry(requested: Option<&str>, now: Timestamp) -> crate::HubResult<Timestamp> {
    let now_s = now.unix_seconds();
    let max = Timestamp::from_unix_nanos(i128::from(now_s + MAX_C2D_TTL_SECS) * 1_000_000_000);
    match requested {
        None => Ok(Timestamp::from_unix_nanos(i128::from(now_s + DEFAULT_C2D_TTL_SECS) * 1_000_000_000)),
        Some(text) => {
            let t = Timestamp::parse(text).ok_or_else(|| {
                crate::HubError::invalid(format!("iothub-expiry '{text}' is not an ISO 8601 time"))
            })?;
            if t <= now {
                Err(crate::HubError::invalid("iothub-expiry is in the past"))
            } else {
                Ok(t.min(max))
            }
        }
    }
}

/// Application properties as a JSON-ready map.
pub type Properties = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn c2d_messages_round_trip_with_binary_bodies() {
        let now = Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
        let m = CloudToDeviceMessage {
            message_id: "m1".into(),
            correlation_id: None,
            user_id: None,
            content_type: Some("application/json".into()),
            content_encoding: None,
            expiry: c2d_expiry(None, now).unwrap(),
            enqueued_time: now,
            properties: [("k".to_owned(), "v".to_owned())].into(),
            body: vec![0, 159, 146, 150],
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<CloudToDeviceMessage>(&text).unwrap(), m);
        assert_eq!(m.expiry.unix_seconds() - now.unix_seconds(), DEFAULT_C2D_TTL_SECS);
    }

    #[test]
    fn expiry_is_bounded() {
        let now = Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
        let far = c2d_expiry(Some("2099-01-01T00:00:00Z"), now).unwrap();
        assert_eq!(far.unix_seconds() - now.unix_seconds(), MAX_C2D_TTL_SECS);
        assert!(c2d_expiry(Some("2000-01-01T00:00:00Z"), now).is_err());
        assert!(c2d_expiry(Some("tomorrow"), now).is_err());
    }

    #[test]
    fn bodies_render_as_text_or_base64() {
        assert_eq!(render_body(b"{\"t\":1}"), ("{\"t\":1}".to_owned(), "utf-8"));
        assert_eq!(render_body(&[0xff]).1, "base64");
    }
}
