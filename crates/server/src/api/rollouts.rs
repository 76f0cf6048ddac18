//! `/firmware-rollouts`: staged firmware rollouts (ServiceConnect; a
//! ferrohub addition).

use std::collections::HashMap;

use axum::extract::{Path, Query};
use axum::response::{IntoResponse as _, Response};
use serde_json::Value;

use super::auth::{Own, ServiceConnect};
use super::body::JsonBody;
use super::error::ApiResult;
use super::json;
use super::watch::{snapshots, ticks, Snapshot};

pub(super) async fn list(Own { hub: state, .. }: Own<ServiceConnect>) -> ApiResult<Response> {
    json(&state.rollouts.list().await)
}

pub(super) async fn create(
    Own { hub: state, .. }: Own<ServiceConnect>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    json(&state.rollouts.create(&body).await?)
}

/// `GET /firmware-rollouts/{id}[?members=false]`: with its members (each
/// device's phase, attempts and reason) unless told otherwise.
pub(super) async fn get(
    Own { hub: state, .. }: Own<ServiceConnect>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let members = query.get("members").is_none_or(|m| m != "false");
    json(&state.rollouts.get(&id, members).await?)
}

/// `DELETE /firmware-rollouts/{id}`: 204 once it and its configurations
/// are gone.
pub(super) async fn delete(
    Own { hub: state, .. }: Own<ServiceConnect>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    state.rollouts.delete(&id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

/// `POST /firmware-rollouts/{id}/pause|resume|cancel|rollback`.
pub(super) async fn act(
    Own { hub: state, .. }: Own<ServiceConnect>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    json(&state.rollouts.act(&id, &action).await?)
}

/// `GET /firmware-rollouts/{id}/watch`: the rollout without its members
/// as server-sent events (see [`super::watch`]), until it is final
/// (succeeded, cancelled, rolled back).
pub(super) async fn watch(
    Own { hub: state, .. }: Own<ServiceConnect>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    // Subscribe first, so a change between the check and the stream counts.
    let changes = ticks(state.rollouts.subscribe());
    if state.rollouts.summary(&id).is_none() {
        return Err(crate::hub::rollouts::not_found(&id).into());
    }
    let rollouts = state.rollouts.clone();
    Ok(snapshots(changes, move || match rollouts.summary(&id) {
        None => Snapshot::Gone,
        Some(v) if v["state"].as_str().is_some_and(is_final) => Snapshot::Final(v),
        Some(v) => Snapshot::Live(v),
    }))
}

fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "cancelled" | "rolledBack")
}
