//! The client's error type and the parsing of IoT Hub error responses.

use serde::Deserialize;

/// Everything a [`ServiceClient`](crate::ServiceClient) call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client could not be set up: a bad connection string, an unreadable
    /// CA file, a TLS configuration problem.
    #[error("{0}")]
    Config(String),
    /// The request never got an HTTP answer (DNS, connection refused, TLS
    /// handshake, timeout).
    #[error("cannot reach the hub at {url}: {source}")]
    Transport {
        /// The URL that was requested (without query).
        url: String,
        /// What went wrong underneath.
        #[source]
        source: reqwest::Error,
    },
    /// The hub answered with an error status.
    #[error("{}", service_message(*.status, .code.as_deref(), .message))]
    Service {
        /// The HTTP status.
        status: u16,
        /// The Azure error code name (`DeviceNotFound`, `PreconditionFailed`,
        /// ...), from the `iothub-errorcode` header or the body.
        code: Option<String>,
        /// The hub's message text.
        message: String,
    },
    /// The hub answered 2xx with a body that is not what the API promises.
    #[error("unexpected response from the hub: {0}")]
    Decode(String),
}

fn service_message(status: u16, code: Option<&str>, message: &str) -> String {
    match code {
        Some(code) => format!("{code}: {message} (HTTP {status})"),
        None => format!("{message} (HTTP {status})"),
    }
}

impl Error {
    /// The HTTP status of a [`Error::Service`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The Azure error code name of a [`Error::Service`] error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Service { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Builds a [`Error::Service`] from an error response: the status, the
    /// `iothub-errorcode` header (if any) and the body text.
    pub fn from_response_parts(status: u16, header_code: Option<&str>, body: &str) -> Self {
        let (body_code, message) = parse_error_body(body);
        let code = header_code.filter(|c| !c.is_empty()).map(str::to_owned).or(body_code);
        let message = if message.is_empty() { default_reason(status).to_owned() } else { message };
        Self::Service { status, code, message }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "Message", alias = "message")]
    message: Option<String>,
}

/// The newer form's `Message`, itself JSON. It carries only the numeric
/// code; the name comes from the `iothub-errorcode` header.
#[derive(Deserialize)]
struct InnerError {
    message: Option<String>,
}

/// Splits an IoT Hub error body into (code name, message text). Understands
/// the legacy `{"Message":"ErrorCode:<Name>;<text>"}` form, the newer form
/// whose `Message` is itself JSON with `errorCode`/`message`, and falls back
/// to the raw body.
fn parse_error_body(body: &str) -> (Option<String>, String) {
    let Ok(ErrorBody { message: Some(message) }) = serde_json::from_str::<ErrorBody>(body) else {
        return (None, body.trim().to_owned());
    };
    if let Some(rest) = message.strip_prefix("ErrorCode:") {
        return match rest.split_once(';') {
            Some((code, text)) => (Some(code.trim().to_owned()), text.trim().to_owned()),
            None => (Some(rest.trim().to_owned()), String::new()),
        };
    }
    if let Ok(inner) = serde_json::from_str::<InnerError>(&message) {
        return (None, inner.message.unwrap_or_default());
    }
    (None, message)
}

fn default_reason(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_body_gives_code_and_text() {
        let e = Error::from_response_parts(
            404,
            None,
            r#"{"Message":"ErrorCode:DeviceNotFound;Device nope not registered","ExceptionMessage":"Tracking ID:1"}"#,
        );
        assert_eq!(e.status(), Some(404));
        assert_eq!(e.code(), Some("DeviceNotFound"));
        assert_eq!(e.to_string(), "DeviceNotFound: Device nope not registered (HTTP 404)");
    }

    #[test]
    fn header_code_wins_and_new_form_message_is_unwrapped() {
        let body = r#"{"Message":"{\"errorCode\":412001,\"message\":\"etag mismatch\"}"}"#;
        let e = Error::from_response_parts(412, Some("PreconditionFailed"), body);
        assert_eq!(e.code(), Some("PreconditionFailed"));
        assert!(e.to_string().contains("etag mismatch"), "{e}");
    }

    #[test]
    fn non_json_and_empty_bodies_still_say_something() {
        let e = Error::from_response_parts(502, None, "bad gateway text");
        assert_eq!(e.code(), None);
        assert_eq!(e.to_string(), "bad gateway text (HTTP 502)");
        let e = Error::from_response_parts(503, None, "");
        assert_eq!(e.to_string(), "Service Unavailable (HTTP 503)");
    }
}
