//! `/twins/{id}`: device twins.

use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::response::Response;
use ferrohub_core::sas::Permission;
use serde_json::Value;

use super::body::JsonBody;
use super::error::ApiResult;
use super::{authorize, if_match, json_response, IdPath, State};

pub(super) async fn get(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    Ok(json_response(&state.registry.get_twin(&id).await?))
}

pub(super) async fn patch(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    let cond = if_match(&headers)?;
    Ok(json_response(&state.registry.patch_twin(&id, &body, &cond).await?))
}

pub(super) async fn replace(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    let cond = if_match(&headers)?;
    Ok(json_response(&state.registry.replace_twin(&id, &body, &cond).await?))
}
