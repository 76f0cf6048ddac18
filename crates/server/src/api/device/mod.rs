//! The device HTTPS API, as the SDKs' `Http` transports call it:
//! telemetry (`POST /devices/{id}/messages/events`) and the cloud-to-device
//! receive/complete/reject/abandon on `…/messages/deviceBound`.
//!
//! Every route here takes a token that acts for the device in the path —
//! its own key, or a policy with DeviceConnect — checked by its first
//! extractor ([`DeviceCall`](super::auth::DeviceCall)) before anything else
//! of the request is read. The service routes (`super::c2d::send` shares a path
//! with the receive) keep refusing device tokens.

mod messages;
mod telemetry;

pub(super) use messages::{abandon, receive, settle};
pub(super) use telemetry::send_event;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use ferrohub_core::HubError;

use super::error::ApiError;

/// `{id}` and `{lockToken}` of the settle routes.
pub(super) struct LockPath {
    device_id: String,
    lock_token: String,
}

impl<S: Send + Sync> FromRequestParts<S> for LockPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((device_id, lock_token)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError(HubError::invalid(format!("Invalid path: {e}"))))?;
        Ok(Self { device_id, lock_token })
    }
}
