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

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, _state: &S) -> Result<Self, Self::Rejection> {
        // Refuse on the declared length first, so an oversized upload is
        // never read at all; the streaming limit below catches liars and
        // chunked bodies.
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY).await.map_err(|_| too_large())?;
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
