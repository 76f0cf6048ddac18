//! `POST /twins/{id}/methods`: direct method invocation.

use std::time::Duration;

use axum::response::Response;
use ferrohub_core::HubError;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Service, ServiceConnect};
use super::body::JsonBody;
use super::error::ApiResult;
use super::{json_response, IdPath};
use crate::hub::methods::{CONNECT_TIMEOUT_RANGE, RESPONSE_TIMEOUT_RANGE};

/// Azure's `CloudToDeviceMethod`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct MethodRequest {
    method_name: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    response_timeout_in_seconds: Option<u64>,
    #[serde(default)]
    connect_timeout_in_seconds: Option<u64>,
}

fn bounded(name: &str, value: Option<u64>, default: u64, (lo, hi): (u64, u64)) -> Result<Duration, HubError> {
    let v = value.unwrap_or(default);
    if (lo..=hi).contains(&v) {
        Ok(Duration::from_secs(v))
    } else {
        Err(HubError::invalid(format!("{name} must be between {lo} and {hi} seconds")))
    }
}

pub(super) async fn invoke(
    Service { hub: state, .. }: Service<ServiceConnect>,
    IdPath(id): IdPath,
    JsonBody(req): JsonBody<MethodRequest>,
) -> ApiResult<Response> {
    if req.method_name.is_empty() || req.method_name.len() > 128 || req.method_name.contains('/') {
        return Err(HubError::invalid("methodName must be 1 to 128 characters without '/'").into());
    }
    let response_timeout =
        bounded("responseTimeoutInSeconds", req.response_timeout_in_seconds, 30, RESPONSE_TIMEOUT_RANGE)?;
    let connect_timeout =
        bounded("connectTimeoutInSeconds", req.connect_timeout_in_seconds, 0, CONNECT_TIMEOUT_RANGE)?;
    // A device that does not exist is not merely offline.
    state.registry.get_device(&id).await?;
    let reply = state
        .methods
        .invoke(
            state.registry.presence(),
            &id,
            &req.method_name,
            &req.payload,
            response_timeout,
            connect_timeout,
        )
        .await?;
    Ok(json_response(&json!({ "status": reply.status, "payload": reply.payload })))
}
