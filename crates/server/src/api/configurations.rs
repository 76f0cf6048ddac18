//! `/configurations`: automatic device configurations (ServiceConnect, as
//! the tutorial's back end uses the `service` policy).

use std::collections::HashMap;

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::admitted::{Admitted, ConfigurationOps};
use super::auth::{Own, Service, ServiceConnect};
use super::body::JsonBody;
use super::error::ApiResult;
use super::watch::{snapshots, ticks, Snapshot};
use super::{if_match, json, IdPath};
use ferrohub_core::precondition::IfMatch;

pub(super) async fn get(
    Service { hub: state, .. }: Service<ServiceConnect>,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    json(&state.engine.get(&id)?)
}

pub(super) async fn list(
    Service { hub: state, .. }: Service<ServiceConnect>,
    _: Admitted<ConfigurationOps>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let top = query.get("top").and_then(|t| t.parse::<i64>().ok());
    json(&state.engine.list(top))
}

/// Without If-Match this creates (409 if the id exists); with it, updates.
pub(super) async fn put(
    Service { hub: state, .. }: Service<ServiceConnect>,
    _: Admitted<ConfigurationOps>,
    headers: HeaderMap,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    let cond = if_match(&headers)?;
    json(&state.engine.put(&id, &body, &cond).await?)
}

pub(super) async fn delete(
    Service { hub: state, .. }: Service<ServiceConnect>,
    _: Admitted<ConfigurationOps>,
    headers: HeaderMap,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let cond = match if_match(&headers)? {
        IfMatch::Absent => IfMatch::Any,
        c => c,
    };
    state.engine.delete(&id, &cond).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn test_queries(
    Service { hub: state, .. }: Service<ServiceConnect>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    json(&state.engine.test_queries(&body)?)
}

/// `GET /configurations/{id}/watch`: the configuration with its metrics as
/// server-sent events (a ferrohub addition; see [`super::watch`]).
pub(super) async fn watch(
    Own { hub: state, .. }: Own<ServiceConnect>,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
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
