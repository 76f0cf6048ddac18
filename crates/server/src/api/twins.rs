//! `/twins/{id}`: device twins.

use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use super::auth::{Service, ServiceConnect};
use super::body::JsonBody;
use super::error::ApiResult;
use super::{if_match, json_response, IdPath};

pub(super) async fn get(
    Service { hub: state, .. }: Service<ServiceConnect>,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    Ok(json_response(&state.registry.get_twin(&id).await?))
}

pub(super) async fn patch(
    Service { hub: state, .. }: Service<ServiceConnect>,
    headers: HeaderMap,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    let cond = if_match(&headers)?;
    Ok(json_response(&state.registry.patch_twin(&id, &body, &cond).await?))
}

pub(super) async fn replace(
    Service { hub: state, .. }: Service<ServiceConnect>,
    headers: HeaderMap,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    let cond = if_match(&headers)?;
    Ok(json_response(&state.registry.replace_twin(&id, &body, &cond).await?))
}
