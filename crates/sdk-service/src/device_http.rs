//! The device side of the HTTPS API — telemetry and cloud-to-device
//! receive/complete/reject/abandon — as a device (its own key, or a policy
//! with DeviceConnect) calls it. For tools and tests that act as a device
//! without MQTT; it lives here because it shares the service client's HTTP
//! stack, TLS trust and error parsing.

use std::collections::BTreeMap;

use ferrohub_core::connection_string::ConnectionString;
use reqwest::header::{HeaderMap, AUTHORIZATION, IF_MATCH};
use reqwest::{Method, StatusCode};

use crate::{
    encode, error_code_header, token_expiry, ClientOptions, Error, Result, API_VERSION, DEFAULT_TIMEOUT,
};

/// A cloud-to-device message as an HTTPS receive hands it out (locked).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedC2d {
    /// Settles the message (the response's ETag, unquoted).
    pub lock_token: String,
    /// The body.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// `iothub-*` system headers, by name without the prefix
    /// (`messageid`, `sequencenumber`, `deliverycount`, ...).
    pub system_properties: BTreeMap<String, String>,
    /// Application properties (`iothub-app-*`).
    pub properties: BTreeMap<String, String>,
}

/// How to settle a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done with it (`DELETE …/{lockToken}`).
    Complete,
    /// Dead-letter it (`DELETE …/{lockToken}?reject`).
    Reject,
    /// Put it back, counting a delivery (`POST …/{lockToken}/abandon`).
    Abandon,
}

/// A device's HTTPS client.
#[derive(Debug, Clone)]
pub struct DeviceHttpClient {
    http: reqwest::Client,
    base_url: String,
    credentials: ConnectionString,
    device_id: String,
}

impl DeviceHttpClient {
    /// A client from a device connection string, or from a hub policy
    /// string plus the device to act for (the policy needs DeviceConnect).
    pub fn new(connection_string: &str, device_id: Option<&str>, options: ClientOptions) -> Result<Self> {
        let mut cs: ConnectionString = connection_string
            .parse()
            .map_err(|e| Error::Config(format!("invalid connection string: {e}")))?;
        let device_id = match (&cs.device_id, device_id) {
            (Some(id), None) => id.clone(),
            (Some(id), Some(other)) if id == other => id.clone(),
            (Some(id), Some(other)) => {
                return Err(Error::Config(format!("the connection string is device {id}'s, not {other}'s")))
            }
            (None, Some(id)) => id.to_owned(),
            (None, None) => return Err(Error::Config("a hub connection string needs a device id".into())),
        };
        // A policy token is scoped to the device it acts for.
        cs.device_id = Some(device_id.clone());
        let timeout = Some(options.timeout.unwrap_or(DEFAULT_TIMEOUT));
        let http = crate::http_client(
            &options,
            concat!("ferrohub-device-http/", env!("CARGO_PKG_VERSION")),
            timeout,
        )?;
        let base_url = crate::base_url(&cs, &options);
        Ok(Self { http, base_url, credentials: cs, device_id })
    }

    /// The device acted for.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    fn request(&self, method: Method, path: &str, query: &str) -> Result<reqwest::RequestBuilder> {
        let token = self.credentials.sas_token(token_expiry()).map_err(|e| Error::Config(e.to_string()))?;
        let url = format!("{}{path}?api-version={API_VERSION}{query}", self.base_url);
        Ok(self.http.request(method, url).header(AUTHORIZATION, token))
    }

    async fn send(
        &self,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>)> {
        let transport = |source| Error::Transport { url: format!("{}{path}", self.base_url), source };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let code = error_code_header(&response);
            let text = response.text().await.map_err(transport)?;
            return Err(Error::from_response_parts(status.as_u16(), code.as_deref(), &text));
        }
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(transport)?.to_vec();
        Ok((status, headers, body))
    }

    fn messages_path(&self) -> String {
        format!("/devices/{}/messages/deviceBound", encode(&self.device_id))
    }

    /// The oldest waiting message, locked for a minute; `None` when the
    /// queue is empty.
    pub async fn receive(&self) -> Result<Option<ReceivedC2d>> {
        let path = self.messages_path();
        let (status, headers, body) = self.send(&path, self.request(Method::GET, &path, "")?).await?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let text = |v: &reqwest::header::HeaderValue| v.to_str().unwrap_or_default().to_owned();
        let lock_token = headers
            .get("etag")
            .map(text)
            .map(|t| t.trim_matches('"').to_owned())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Decode("a received message has no ETag (lock token)".into()))?;
        let mut system_properties = BTreeMap::new();
        let mut properties = BTreeMap::new();
        for (name, value) in &headers {
            if let Some(key) = name.as_str().strip_prefix("iothub-app-") {
                properties.insert(key.to_owned(), text(value));
            } else if let Some(key) = name.as_str().strip_prefix("iothub-") {
                system_properties.insert(key.to_owned(), text(value));
            }
        }
        Ok(Some(ReceivedC2d { lock_token, body, system_properties, properties }))
    }

    /// Completes, rejects or abandons the message `lock_token` holds;
    /// 412 `DeviceMessageLockLost` when it holds none.
    pub async fn settle(&self, lock_token: &str, how: Settle) -> Result<()> {
        let base = format!("{}/{}", self.messages_path(), encode(lock_token));
        let (method, path, query) = match how {
            Settle::Complete => (Method::DELETE, base, ""),
            Settle::Reject => (Method::DELETE, base, "&reject"),
            Settle::Abandon => (Method::POST, format!("{base}/abandon"), ""),
        };
        let request = self.request(method, &path, query)?.header(IF_MATCH, format!("\"{lock_token}\""));
        self.send(&path, request).await.map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn client(cs: &str, device: Option<&str>) -> Result<DeviceHttpClient> {
        DeviceHttpClient::new(cs, device, ClientOptions { port: Some(8443), ..Default::default() })
    }

    #[test]
    fn the_device_comes_from_the_string_or_the_argument() {
        let device = format!("HostName=h;DeviceId=d1;SharedAccessKey={KEY}");
        let c = client(&device, None).unwrap();
        assert_eq!(c.device_id(), "d1");
        assert_eq!(c.base_url, "https://h:8443");
        assert!(client(&device, Some("d1")).is_ok());
        assert!(matches!(client(&device, Some("d2")), Err(Error::Config(_))));
        let policy = format!("HostName=h;SharedAccessKeyName=device;SharedAccessKey={KEY}");
        let c = client(&policy, Some("d3")).unwrap();
        // A policy's token is scoped to the device it acts for.
        assert_eq!(c.credentials.resource_uri(), "h/devices/d3");
        assert!(matches!(client(&policy, None), Err(Error::Config(_))));
    }
}
