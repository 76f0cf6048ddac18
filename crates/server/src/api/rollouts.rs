//! `/firmware-rollouts`: staged firmware rollouts (ServiceConnect; a
//! ferrohub addition).

use axum::extract::{Path, State as AxState};
use axum::http::HeaderMap;
use axum::response::Response;
use ferrohub_core::sas::Permission;
use serde_json::Value;

use super::body::JsonBody;
use super::error::ApiResult;
use super::{authorize, json, State};

pub(super) async fn list(AxState(state): AxState<State>, headers: HeaderMap) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    json(&state.rollouts.list().await)
}

pub(super) async fn create(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    json(&state.rollouts.create(&body).await?)
}

pub(super) async fn get(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    json(&state.rollouts.get(&id).await?)
}

/// `POST /firmware-rollouts/{id}/pause|resume|cancel`.
pub(super) async fn act(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    json(&state.rollouts.act(&id, &action).await?)
}
