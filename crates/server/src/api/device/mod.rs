//! The device HTTPS API, as the SDKs' `Http` transports call it:
//! telemetry (`POST /devices/{id}/messages/events`) and the cloud-to-device
//! receive/complete/reject/abandon on `…/messages/deviceBound`.
//!
//! Every route here takes a token that acts for the device in the path —
//! its own key, or a policy with DeviceConnect — and it is checked before
//! any body is read. The service routes (`super::c2d::send` shares a path
//! with the receive) keep refusing device tokens.

mod messages;
mod telemetry;

pub(super) use messages::{abandon, receive, settle};
pub(super) use telemetry::send_event;

use axum::extract::{FromRequestParts, Path};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use ferrohub_core::HubError;

use super::error::{ApiError, ApiResult};
use crate::hub::Hub;

/// Checks that the request's token acts for `device_id`, and notes the
/// device's activity.
async fn authenticate(hub: &Hub, headers: &HeaderMap, device_id: &str) -> ApiResult<()> {
    let token = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    hub.authenticate_device(token, Some(device_id)).await?;
    // Every authenticated device call is activity, as an MQTT packet is.
    hub.activity.seen(device_id);
    Ok(())
}

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
