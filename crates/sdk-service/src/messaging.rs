//! Talking to devices through the hub: direct methods, cloud-to-device
//! messages, and the telemetry stream.

use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::events::EventStream;
use crate::{abbreviate, encode, Error, Result, ServiceClient};

/// The largest cloud-to-device message body the hub accepts.
pub const MAX_C2D_BODY_BYTES: usize = 64 * 1024;

/// Extra time an HTTP request for a direct method gets beyond the method's
/// own connect and response timeouts, so the hub's 404/504 arrives before
/// the client gives up.
const METHOD_HTTP_MARGIN: Duration = Duration::from_secs(30);

/// What a device answered to a direct method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// The payload the device sent back (`null` when it sent none).
    #[serde(default)]
    pub payload: Value,
    /// The status the device chose.
    pub status: i64,
}

/// A cloud-to-device message to send with [`ServiceClient::send_c2d`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct C2dMessage {
    /// The body, at most [`MAX_C2D_BODY_BYTES`].
    pub body: Vec<u8>,
    /// Application properties, in order (sent as `iothub-app-<key>` headers;
    /// HTTP header names are case-insensitive, so keys arrive lower-cased).
    pub properties: Vec<(String, String)>,
    /// `iothub-messageid`.
    pub message_id: Option<String>,
    /// `iothub-correlationid`.
    pub correlation_id: Option<String>,
    /// `iothub-userid`.
    pub user_id: Option<String>,
    /// `iothub-expiry`: absolute expiry time, ISO 8601.
    pub expiry: Option<String>,
    /// `Content-Type` of the body.
    pub content_type: Option<String>,
    /// `iothub-contentencoding` (the body's character encoding, e.g. `utf-8`).
    pub content_encoding: Option<String>,
    /// `iothub-ack` (`none`, `positive`, `negative`, `full`).
    pub ack: Option<String>,
}

impl C2dMessage {
    /// A message with this body and nothing else set.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self { body: body.into(), ..Default::default() }
    }

    /// Adds an application property.
    #[must_use]
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// Sets the message id.
    #[must_use]
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the absolute expiry time (ISO 8601).
    #[must_use]
    pub fn expiry(mut self, iso_time: impl Into<String>) -> Self {
        self.expiry = Some(iso_time.into());
        self
    }

    /// The request headers that carry everything but the body.
    fn headers(&self) -> Result<Vec<(HeaderName, HeaderValue)>> {
        let invalid =
            |what: &str, text: &str| Error::Config(format!("invalid {what} for an HTTP header: {text:?}"));
        let value = |what: &str, text: &str| HeaderValue::from_str(text).map_err(|_| invalid(what, text));
        let mut headers = Vec::new();
        for (key, v) in &self.properties {
            if key.is_empty() {
                return Err(Error::Config("an application property needs a name".to_owned()));
            }
            let name = HeaderName::from_bytes(format!("iothub-app-{key}").as_bytes())
                .map_err(|_| invalid("application property name", key))?;
            headers.push((name, value("application property value", v)?));
        }
        let system = [
            ("iothub-messageid", &self.message_id, "message id"),
            ("iothub-correlationid", &self.correlation_id, "correlation id"),
            ("iothub-userid", &self.user_id, "user id"),
            ("iothub-expiry", &self.expiry, "expiry time"),
            ("iothub-contentencoding", &self.content_encoding, "content encoding"),
            ("iothub-ack", &self.ack, "ack mode"),
        ];
        for (name, field, what) in system {
            if let Some(text) = field {
                headers.push((HeaderName::from_static(name), value(what, text)?));
            }
        }
        if let Some(ct) = &self.content_type {
            headers.push((CONTENT_TYPE, value("content type", ct)?));
        }
        Ok(headers)
    }
}

impl ServiceClient {
    /// Invokes direct method `method_name` on a device
    /// (`POST /twins/{id}/methods`) and returns what the device answered.
    ///
    /// `connect_timeout` is how long the hub waits for the device to come
    /// online (0 = it must be connected now), `response_timeout` how long it
    /// waits for the answer. Errors: 404 `DeviceNotOnline`, 504
    /// `GatewayTimeout`, 404 `DeviceNotFound`.
    pub async fn invoke_method(
        &self,
        device_id: &str,
        method_name: &str,
        payload: &Value,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<MethodResult> {
        let path = format!("/twins/{}/methods", encode(device_id));
        let body = json!({
            "methodName": method_name,
            "payload": payload,
            "responseTimeoutInSeconds": response_timeout.as_secs(),
            "connectTimeoutInSeconds": connect_timeout.as_secs(),
        });
        let request = self
            .request(Method::POST, &path, &[])?
            .timeout(response_timeout + connect_timeout + METHOD_HTTP_MARGIN)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_string());
        let (status, code, text) = self.finish(&path, request).await?;
        if !status.is_success() {
            return Err(Error::from_response_parts(status.as_u16(), code.as_deref(), &text));
        }
        serde_json::from_str(&text)
            .map_err(|e| Error::Decode(format!("method result: {e} in {}", abbreviate(&text))))
    }

    /// Queues a cloud-to-device message for a device
    /// (`POST /devices/{id}/messages/deviceBound`). Errors: 404
    /// `DeviceNotFound`, 403 `DeviceMaximumQueueDepthExceeded` when the
    /// device already has 50 messages waiting.
    pub async fn send_c2d(&self, device_id: &str, message: &C2dMessage) -> Result<()> {
        if message.body.len() > MAX_C2D_BODY_BYTES {
            return Err(Error::Config(format!(
                "a cloud-to-device message body may have at most {MAX_C2D_BODY_BYTES} bytes, this one has {}",
                message.body.len()
            )));
        }
        let path = format!("/devices/{}/messages/deviceBound", encode(device_id));
        let mut request =
            self.request(Method::POST, &path, &[])?.timeout(self.timeout).header(ACCEPT, "application/json");
        for (name, value) in message.headers()? {
            request = request.header(name, value);
        }
        let (status, code, text) = self.finish(&path, request.body(message.body.clone())).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Error::from_response_parts(status.as_u16(), code.as_deref(), &text))
        }
    }

    /// Opens the live telemetry stream (`GET /events`): every message any
    /// device (or only `device_id`) sends from now on, after replaying up to
    /// `last` recent ones. The stream has no time limit; wrap
    /// [`EventStream::next`] in a timeout to stop waiting.
    pub async fn events(&self, device_id: Option<&str>, last: Option<u32>) -> Result<EventStream> {
        let last = last.map(|n| n.to_string());
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(id) = device_id {
            query.push(("deviceId", id));
        }
        if let Some(n) = last.as_deref() {
            query.push(("last", n));
        }
        Ok(EventStream::new(self.open_sse("/events", &query).await?))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn method_results_print_in_azs_order() {
        let r: MethodResult = serde_json::from_str(r#"{"status":200,"payload":{"ok":true}}"#).unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"payload":{"ok":true},"status":200}"#);
        let r: MethodResult = serde_json::from_str(r#"{"status":404}"#).unwrap();
        assert_eq!(r.payload, Value::Null);
    }

    #[test]
    fn c2d_headers_carry_properties_and_system_fields() {
        let m = C2dMessage::new("hi")
            .property("color", "blue")
            .property("Temp", "21 C")
            .message_id("m1")
            .correlation_id("c1")
            .expiry("2030-01-01T00:00:00Z");
        let headers: Vec<(String, String)> = m
            .headers()
            .unwrap()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let expect = [
            ("iothub-app-color", "blue"),
            ("iothub-app-temp", "21 C"),
            ("iothub-messageid", "m1"),
            ("iothub-correlationid", "c1"),
            ("iothub-expiry", "2030-01-01T00:00:00Z"),
        ];
        let expect: Vec<(String, String)> =
            expect.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(headers, expect);
    }

    #[test]
    fn c2d_rejects_what_http_headers_cannot_carry() {
        assert!(C2dMessage::new("x").property("a b", "v").headers().is_err());
        assert!(C2dMessage::new("x").property("", "v").headers().is_err());
        assert!(C2dMessage::new("x").property("k", "line\nbreak").headers().is_err());
        assert!(C2dMessage::new("x").message_id("bad\r\nid").headers().is_err());
    }
}
