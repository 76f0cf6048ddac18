//! How a [`HubError`] goes on the wire over HTTP.
//!
//! Azure's legacy body, `{"Message":"ErrorCode:<Name>;<text>","ExceptionMessage":"Tracking ID:..."}`
//! plus the `iothub-errorcode` header, because the Node service SDK builds
//! its typed errors (DeviceNotFoundError, InvalidEtagError, ...) only from
//! that form; the other SDKs go by the status, which comes from
//! [`ErrorCode::http_status`](ferrohub_core::ErrorCode::http_status).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrohub_core::HubError;
use serde_json::json;

/// A [`HubError`] that axum can answer with.
#[derive(Debug)]
pub struct ApiError(pub HubError);

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        Self(e)
    }
}

/// Result of a REST handler.
pub type ApiResult<T> = Result<T, ApiError>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let tracking = uuid::Uuid::new_v4().simple().to_string();
        let now = crate::clock::now();
        if status.is_server_error() {
            tracing::error!(code = %e.code, message = %e.message, %tracking, "request failed");
        } else {
            tracing::debug!(code = %e.code, message = %e.message, %tracking, "request refused");
        }
        let body = json!({
            "Message": format!("ErrorCode:{};{}", e.code.name(), e.message),
            "ExceptionMessage": format!("Tracking ID:{tracking}-G:0-TimeStamp:{now}"),
        });
        let mut response = (status, super::json_response(&body)).into_response();
        if let Ok(v) = HeaderValue::from_str(e.code.name()) {
            response.headers_mut().insert("iothub-errorcode", v);
        }
        // A throttle's refusal says when to come back; SDKs retry 429 with
        // their own back-off, and a plain client can wait exactly this.
        if let Some(secs) = e.retry_after_secs() {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
