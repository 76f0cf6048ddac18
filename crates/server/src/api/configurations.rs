//! `/configurations`: automatic device configurations (ServiceConnect, as
//! the tutorial's back end uses the `service` policy).

use std::collections::HashMap;

use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrohub_core::sas::Permission;
use ferrohub_core::throttle::Class;
use serde_json::Value;

use super::body::JsonBody;
use super::error::ApiResult;
use super::watch::{snapshots, ticks, Snapshot};
use super::{authorize, if_match, json, IdPath, State};
use ferrohub_core::precondition::IfMatch;

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
    state.throttles.check(Class::Configuration, 1)?;
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
    state.throttles.check(Class::Configuration, 1)?;
    let cond = if_match(&headers)?;
    json(&state.engine.put(&id, &body, &cond).await?)
}

pub(super) async fn delete(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    state.throttles.check(Class::Configuration, 1)?;
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

/// `GET /configurations/{id}/watch`: the configuration with its metrics as
/// server-sent events (a ferrohub addition; see [`super::watch`]).
pub(super) async fn watch(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    // Subscribe first, so a change between this check and the first render
    // is not missed; an unknown id is the same 404 as a GET.
    let changes = state.engine.subscribe();
    state.engine.get(&id)?;
    let engine = state.engine.clone();
    let render = move || match engine.get(&id).map(|c| serde_json::to_value(&c)) {
        Ok(Ok(value)) => Snapshot::Live(value),
        Ok(Err(e)) => {
            tracing::warn!(%e, "configuration does not serialise");
            Snapshot::Gone
        }
        Err(_) => Snapshot::Gone,
    };
    Ok(snapshots(ticks(changes), render))
}
