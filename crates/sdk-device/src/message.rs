//! Telemetry messages (device to cloud) and cloud-to-device messages, and
//! their system properties in the topic's property bag.

use std::collections::BTreeMap;

use ferrohub_mqtt::device as topic;

/// IoT Hub's limit on a device-to-cloud message: body plus properties.
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024;

/// A telemetry message to send with
/// [`DeviceClient::send_telemetry`](crate::DeviceClient::send_telemetry).
///
/// System properties travel in the topic's property bag as `$.mid`,
/// `$.cid`, `$.uid`, `$.ct`, `$.ce`, `$.exp` and `$.sub`; application
/// properties as plain `key=value` pairs.
///
/// ```
/// use ferrohub_device_client::Message;
///
/// let msg = Message::new(br#"{"temperature":21.5}"#.to_vec())
///     .with_property("alert", "false")
///     .with_message_id("m-1")
///     .json();
/// assert_eq!(msg.content_type.as_deref(), Some("application/json"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The payload, sent as is.
    pub body: Vec<u8>,
    /// Application properties.
    pub properties: BTreeMap<String, String>,
    /// `$.mid`: the message id.
    pub message_id: Option<String>,
    /// `$.cid`: the correlation id.
    pub correlation_id: Option<String>,
    /// `$.uid`: the user id.
    pub user_id: Option<String>,
    /// `$.ct`: the body's content type, e.g. `application/json` (needed for
    /// routing queries on the body).
    pub content_type: Option<String>,
    /// `$.ce`: the body's content encoding, e.g. `utf-8`.
    pub content_encoding: Option<String>,
    /// `$.exp`: absolute expiry time, ISO 8601.
    pub expiry_time_utc: Option<String>,
    /// `$.sub`: the IoT Plug and Play component name.
    pub component_name: Option<String>,
}

impl Message {
    /// A message with this body and no properties.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self { body: body.into(), ..Self::default() }
    }

    /// Adds (or replaces) an application property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Sets the message id.
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Marks the body as UTF-8 JSON (`$.ct=application/json`, `$.ce=utf-8`).
    pub fn json(mut self) -> Self {
        self.content_type = Some("application/json".into());
        self.content_encoding = Some("utf-8".into());
        self
    }

    /// The topic's property bag: system properties first, then application
    /// properties in key order.
    pub(crate) fn property_bag(&self) -> String {
        let system = [
            ("$.mid", &self.message_id),
            ("$.cid", &self.correlation_id),
            ("$.uid", &self.user_id),
            ("$.ct", &self.content_type),
            ("$.ce", &self.content_encoding),
            ("$.exp", &self.expiry_time_utc),
            ("$.sub", &self.component_name),
        ];
        let system = system.into_iter().filter_map(|(k, v)| v.as_deref().map(|v| (k, v)));
        let app = self.properties.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        topic::encode_bag(system.chain(app))
    }
}

/// A cloud-to-device message, as delivered by
/// [`C2dMessages::recv`](crate::C2dMessages::recv). It has been
/// acknowledged (completed) when the application received it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct C2dMessage {
    /// The payload.
    pub body: Vec<u8>,
    /// Application properties (the sender's `iothub-app-*` headers). A
    /// property sent without a value has an empty value here.
    pub properties: BTreeMap<String, String>,
    /// `$.mid`: the message id.
    pub message_id: Option<String>,
    /// `$.cid`: the correlation id.
    pub correlation_id: Option<String>,
    /// `$.uid`: the user id.
    pub user_id: Option<String>,
    /// `$.to`: the destination, `/devices/{id}/messages/deviceBound`.
    pub to: Option<String>,
    /// `$.ct`: the content type.
    pub content_type: Option<String>,
    /// `$.ce`: the content encoding.
    pub content_encoding: Option<String>,
    /// `$.exp`: the absolute expiry time, ISO 8601.
    pub expiry_time_utc: Option<String>,
    /// `iothub-ack`: the feedback the sender asked for (`none`, `positive`,
    /// `negative`, `full`).
    pub ack: Option<String>,
}

impl C2dMessage {
    /// Builds a message from the topic's (still encoded) property bag.
    pub(crate) fn from_bag(bag: &str, body: Vec<u8>) -> Self {
        let mut msg = Self { body, ..Self::default() };
        for (key, value) in topic::decode_bag(bag) {
            let slot = match key.as_str() {
                "$.mid" => &mut msg.message_id,
                "$.cid" => &mut msg.correlation_id,
                "$.uid" => &mut msg.user_id,
                "$.to" => &mut msg.to,
                "$.ct" => &mut msg.content_type,
                "$.ce" => &mut msg.content_encoding,
                "$.exp" => &mut msg.expiry_time_utc,
                "iothub-ack" => &mut msg.ack,
                _ => {
                    msg.properties.insert(key, value.unwrap_or_default());
                    continue;
                }
            };
            *slot = value;
        }
        msg
    }

    /// The body as UTF-8 text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_bags_carry_system_then_app_properties() {
        let msg = Message::new("x")
            .with_property("b", "2 3")
            .with_property("a", "1")
            .with_message_id("m/1")
            .with_correlation_id("c")
            .json();
        assert_eq!(
            msg.property_bag(),
            "%24.mid=m%2F1&%24.cid=c&%24.ct=application%2Fjson&%24.ce=utf-8&a=1&b=2%203"
        );
        assert_eq!(Message::new("x").property_bag(), "");
        let all = Message {
            user_id: Some("u".into()),
            expiry_time_utc: Some("2030-01-01T00:00:00Z".into()),
            component_name: Some("thermostat1".into()),
            ..Message::default()
        };
        assert_eq!(all.property_bag(), "%24.uid=u&%24.exp=2030-01-01T00%3A00%3A00Z&%24.sub=thermostat1");
    }

    #[test]
    fn c2d_bags_split_into_system_and_app_properties() {
        let bag = "%24.mid=42&%24.to=%2Fdevices%2Fd1%2Fmessages%2FdeviceBound&%24.cid=&iothub-ack=full\
                   &%24.ct=text%2Fplain&%24.ce=utf-8&%24.exp=2030-01-01T00%3A00%3A00Z&%24.uid=me\
                   &color=red%20and%20blue&bare&plus=a+b";
        let msg = C2dMessage::from_bag(bag, b"hello".to_vec());
        assert_eq!(msg.body_text(), "hello");
        assert_eq!(msg.message_id.as_deref(), Some("42"));
        assert_eq!(msg.to.as_deref(), Some("/devices/d1/messages/deviceBound"));
        assert_eq!(msg.correlation_id.as_deref(), Some(""));
        assert_eq!(msg.ack.as_deref(), Some("full"));
        assert_eq!(msg.content_type.as_deref(), Some("text/plain"));
        assert_eq!(msg.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(msg.expiry_time_utc.as_deref(), Some("2030-01-01T00:00:00Z"));
        assert_eq!(msg.user_id.as_deref(), Some("me"));
        let props: Vec<_> = msg.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(props, [("bare", ""), ("color", "red and blue"), ("plus", "a+b")]);
    }

    #[test]
    fn raw_dollar_keys_are_recognised_too() {
        let msg = C2dMessage::from_bag("$.mid=7&k=v", Vec::new());
        assert_eq!(msg.message_id.as_deref(), Some("7"));
        assert_eq!(msg.properties.get("k").map(String::as_str), Some("v"));
    }
}
