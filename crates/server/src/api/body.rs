//! Request bodies: size-limited before they are read, then parsed as JSON,
//! with Azure's errors for each failure (never axum's plain-text rejections).

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_LENGTH;
use ferrohub_core::{ErrorCode, HubError};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body the service API reads. Bulk requests of 100 devices
/// and 32 KB twin sections fit well within it.
pub(crate) const MAX_BODY: usize = 256 * 1024;

/// A JSON body of type `T`.
pub(crate) struct JsonBody<T>(pub T);

fn too_large() -> ApiError {
    ApiError(HubError::new(
        ErrorCode::MessageTooLarge,
        format!("The request body is larger than {MAX_BODY} bytes"),
    ))
}

/// Bodies declared larger than this are refused without reading a byte;
/// smaller oversized ones are read (and thrown away) to the end, so an
/// honest client slightly over a limit gets its 413 instead of a reset
/// connection.
const DRAIN_CAP: usize = 1024 * 1024;

/// Reads a body of at most `limit` bytes. Memory use is bounded by `limit`
/// whatever the client sends.
pub(crate) async fn read_limited(
    headers: &axum::http::HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, TooLarge> {
    use http_body_util::BodyExt as _;
    let declared =
        headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_CAP as u64) {
        return Err(TooLarge);
    }
    let mut body = body;
    let mut kept = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return Err(TooLarge) };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > DRAIN_CAP {
                return Err(TooLarge);
            }
            if seen <= limit {
                kept.extend_from_slice(&data);
            }
        }
    }
    if seen > limit {
        Err(TooLarge)
    } else {
        Ok(kept.freeze())
    }
}

/// A body over its limit.
#[derive(Debug)]
pub(crate) struct TooLarge;

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, _state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = read_limited(&parts.headers, body, MAX_BODY).await.map_err(|_| too_large())?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError(HubError::new(ErrorCode::ArgumentNull, "The request body is empty")));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| ApiError(HubError::format(format!("The request body is not valid: {e}"))))?;
        de.end()
            .map_err(|e| ApiError(HubError::format(format!("The request body is not valid JSON: {e}"))))?;
        Ok(Self(value))
    }
}
