//! `/devices`: the identity registry.

use std::collections::HashMap;

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrohub_core::identity::DeviceRequest;

use super::admitted::{Admitted, RegistryOps};
use super::auth::{RegistryRead, RegistryWrite, Service};
use super::body::JsonBody;
use super::error::ApiResult;
use super::{if_match, json, IdPath};
use crate::hub::bulk::{self, ExportImportDevice};
use ferrohub_core::precondition::IfMatch;

pub(super) async fn list(
    Service { hub: state, .. }: Service<RegistryRead>,
    _: Admitted<RegistryOps>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    // Azure treats a missing or out-of-range `top` as 1000.
    let top = query.get("top").and_then(|t| t.parse::<i64>().ok());
    json(&state.registry.list_devices(top).await?)
}

pub(super) async fn get(
    Service { hub: state, .. }: Service<RegistryRead>,
    _: Admitted<RegistryOps>,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    json(&state.registry.get_device(&id).await?)
}

/// Without If-Match this creates (Azure answers 200, not 201); with it, updates.
pub(super) async fn put(
    Service { hub: state, .. }: Service<RegistryWrite>,
    _: Admitted<RegistryOps>,
    headers: HeaderMap,
    IdPath(id): IdPath,
    JsonBody(req): JsonBody<DeviceRequest>,
) -> ApiResult<Response> {
    let device = match if_match(&headers)? {
        IfMatch::Absent => state.registry.create_device(&id, req, None).await?,
        cond => state.registry.update_device(&id, req, &cond).await?,
    };
    json(&device)
}

pub(super) async fn delete(
    Service { hub: state, .. }: Service<RegistryWrite>,
    _: Admitted<RegistryOps>,
    headers: HeaderMap,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    // Every SDK sends If-Match on delete; a bare DELETE means "whatever it is".
    let cond = match if_match(&headers)? {
        IfMatch::Absent => IfMatch::Any,
        c => c,
    };
    state.registry.delete_device(&id, &cond).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Bulk create/update/delete. Azure answers 400 with the result body when an
/// entry failed.
pub(super) async fn bulk(
    Service { hub: state, .. }: Service<RegistryWrite>,
    _: Admitted<RegistryOps>,
    JsonBody(items): JsonBody<Vec<ExportImportDevice>>,
) -> ApiResult<Response> {
    let result = bulk::apply(&state.registry, items).await?;
    let mut response = json(&result)?;
    if !result.is_successful {
        *response.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(response)
}
