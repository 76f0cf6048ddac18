//! The client's error type and the parsing of the hub's error bodies.

use serde_json::Value;

/// Everything a [`DeviceClient`](crate::DeviceClient) call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client could not be set up: a bad connection string, an unreadable
    /// CA or client certificate file, an invalid option.
    #[error("{0}")]
    Config(String),
    /// The hub refused the MQTT connection with this CONNACK return code.
    /// `5` (not authorized) is what IoT Hub sends for a wrong key, an expired
    /// token, an unknown or disabled device and a certificate mismatch; `4`
    /// (bad user name or password) is treated the same way. Returned by
    /// [`DeviceClient::connect`](crate::DeviceClient::connect) for the first
    /// connection only: later refusals are retried with backoff.
    #[error("the hub refused the connection: {} (CONNACK return code {code})", connack_reason(*.code))]
    ConnectionRefused {
        /// The CONNACK return code (1 to 5).
        code: u8,
    },
    /// The first connection could not be established: DNS, TCP, TLS (an
    /// untrusted or mismatched server certificate) or the WebSocket upgrade.
    #[error("cannot connect to the hub: {0}")]
    Transport(String),
    /// The operation did not complete within
    /// [`DeviceOptions::operation_timeout`](crate::DeviceOptions::operation_timeout)
    /// (the client may have been disconnected all along).
    #[error("the operation timed out")]
    Timeout,
    /// The hub answered a twin request with an error status.
    #[error("{}", hub_message(*.status, *.error_code, .message))]
    Hub {
        /// The status from the response topic (400, 429, 5xx, ...).
        status: u16,
        /// The body's numeric `errorCode` (e.g. 400004), when present.
        error_code: Option<i64>,
        /// The body's `message`, or a generic text.
        message: String,
    },
    /// The client has been closed (or dropped); nothing more can be sent.
    #[error("the client is closed")]
    Disconnected,
    /// The client is between connections and the operation cannot wait for
    /// the next one (a direct-method response).
    #[error("the client is not connected")]
    NotConnected,
    /// A telemetry message over IoT Hub's 256 KiB limit (body plus
    /// properties); it was not sent.
    #[error("the message is {size} bytes with its properties; the limit is {limit}")]
    MessageTooLarge {
        /// Body plus encoded properties, in bytes.
        size: usize,
        /// The limit, 262 144 bytes.
        limit: usize,
    },
    /// The hub sent a response this client cannot understand.
    #[error("unexpected response from the hub: {0}")]
    Decode(String),
}

impl Error {
    /// Whether this is a CONNACK refusal for bad credentials (codes 4 and 5).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Self::ConnectionRefused { code: 4 | 5 })
    }

    /// Builds [`Error::Hub`] from a twin response's status and body
    /// (`{"errorCode":400004,"message":"..."}`; anything else is tolerated).
    pub(crate) fn from_hub_response(status: u16, body: &[u8]) -> Self {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name)).cloned();
        let error_code = field("errorCode").and_then(|c| match c {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        });
        let message = match field("message").or_else(|| field("Message")) {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => format!("the hub answered status {status}"),
        };
        Self::Hub { status, error_code, message }
    }
}

fn hub_message(status: u16, error_code: Option<i64>, message: &str) -> String {
    match error_code {
        Some(code) => format!("{message} (status {status}, errorCode {code})"),
        None => format!("{message} (status {status})"),
    }
}

/// MQTT 3.1.1's names for the CONNACK return codes.
pub(crate) fn connack_reason(code: u8) -> &'static str {
    match code {
        0 => "accepted",
        1 => "unacceptable protocol version",
        2 => "identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hub_errors_read_the_body() {
        let e =
            Error::from_hub_response(400, br#"{"errorCode":400004,"message":"bad json","trackingId":"x"}"#);
        assert_eq!(e, Error::Hub { status: 400, error_code: Some(400004), message: "bad json".into() });
        assert_eq!(e.to_string(), "bad json (status 400, errorCode 400004)");

        let e = Error::from_hub_response(429, b"");
        assert_eq!(
            e,
            Error::Hub { status: 429, error_code: None, message: "the hub answered status 429".into() }
        );
        let e = Error::from_hub_response(500, br#"{"errorCode":"500001","Message":"oops"}"#);
        assert_eq!(e, Error::Hub { status: 500, error_code: Some(500001), message: "oops".into() });
    }

    #[test]
    fn refusals_name_the_code() {
        let e = Error::ConnectionRefused { code: 5 };
        assert!(e.is_unauthorized());
        assert!(e.to_string().contains("not authorized"));
        assert!(!Error::ConnectionRefused { code: 1 }.is_unauthorized());
    }
}
