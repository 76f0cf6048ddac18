//! `/configurations`: automatic device configurations (ServiceConnect, as
//! the tutorial's back end uses the `service` policy).

use std::collections::HashMap;

use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrohub_core::sas::Permission;
use serde_json::Value;

use super::body::JsonBody;
use super::error::ApiResult;
use super::{authorize, if_match, json, IdPath, State};
use crate::registry::IfMatch;

pub(super) async fn get(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    json(&state.engine.get(&id)?)
}

pub(super) async fn list(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    let top = query.get("top").and_then(|t| t.parse::<i64>().ok());
    json(&state.engine.list(top))
}

/// Without If-Match this creates (409 if the id exists); with it, updates.
pub(super) async fn put(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    let cond = if_match(&headers)?;
    json(&state.engine.put(&id, &body, &cond).await?)
}

pub(super) async fn delete(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    let cond = match if_match(&headers)? {
        IfMatch::Absent => IfMatch::Any,
        c => c,
    };
    state.engine.delete(&id, &cond).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn test_queries(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    json(&state.engine.test_queries(&body)?)
}
