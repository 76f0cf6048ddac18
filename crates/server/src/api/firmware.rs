//! Firmware images: managed with service credentials at
//! `/firmware-images`, downloaded by devices with their own SAS token at
//! `/firmware/{sha256}` (with `Range`, so downloads resume). Devices may
//! also read the signing key (`/firmware-key`) with that token.

use std::collections::HashMap;

use axum::body::{Body, BodyDataStream};
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, ETAG, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrohub_core::sas::{Permission, SasToken};
use ferrohub_core::{ErrorCode, HubError};
use futures_util::StreamExt as _;
use tower::ServiceExt as _;

use super::auth::{Own, ServiceConnect};
use super::error::{ApiError, ApiResult};
use super::{header_text, json, State};
use crate::hub::firmware::{check_sha256, not_found};

/// Seconds a client refused for want of an upload slot is told to wait.
const UPLOAD_RETRY_AFTER_SECS: u32 = 5;

/// How much of a refused upload's body is still read, and for how long.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and drops what remains of a refused upload's body, in the
/// background and within [`DRAIN_BYTES`] and [`DRAIN_TIME`]. A client that
/// does not wait for `100 Continue` writes its whole body before it reads,
/// and a connection closed on unread data is reset, so without this it
/// would see a broken pipe instead of the refusal.
fn drain(mut body: BodyDataStream) {
    tokio::spawn(async move {
        let read = async {
            let mut n = 0;
            while let Some(Ok(chunk)) = body.next().await {
                n += chunk.len();
                if n > DRAIN_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, read).await;
    });
}

/// `GET /firmware/{sha256}`: the image bytes, with `Range` (206/416) and an
/// `ETag` of the image's hash.
pub(super) async fn download(
    AxState(state): AxState<State>,
    Path(sha): Path<String>,
    req: Request<Body>,
) -> ApiResult<Response> {
    state.authenticate_device(header_text(req.headers(), AUTHORIZATION), None).await?;
    check_sha256(&sha)?;
    if state.firmware.get(&sha)?.is_none() {
        return Err(not_found(&sha).into());
    }
    let mut response = tower_http::services::ServeFile::new(state.firmware.blob(&sha))
        .oneshot(req)
        .await
        .map_err(|e| ApiError(HubError::internal(e.to_string())))?
        .map(Body::new);
    if let Ok(v) = HeaderValue::from_str(&format!("\"{sha}\"")) {
        response.headers_mut().insert(ETAG, v);
    }
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(response)
}

/// `POST /firmware-images?version=V[&deviceType=T]`: the body is the image.
/// Refusals (see `FirmwareStore::upload`): 413 over the per-image limit,
/// 403 IotHubQuotaExceeded over the store's quota, 507 when the disk would
/// keep less than the reserve free, 503 with `Retry-After` when every
/// upload slot is taken.
pub(super) async fn upload(
    Own { hub: state, .. }: Own<ServiceConnect>,
    Query(query): Query<HashMap<String, String>>,
    req: Request<Body>,
) -> ApiResult<Response> {
    let version = query.get("version").ok_or_else(|| HubError::invalid("The query needs version=..."))?;
    let device_type = query.get("deviceType").map(String::as_str).unwrap_or("");
    // A malformed Content-Length never gets here (hyper refuses it); an
    // absent one (chunked) leaves the limits to be checked while writing.
    let declared = header_text(req.headers(), CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body().into_data_stream();
    let stored = state.firmware.upload(version, device_type, declared, &mut body).await;
    if stored.is_err() {
        drain(body);
    }
    match stored {
        Ok(image) => json(&image),
        // Every upload slot is taken: worth a retry once one frees up.
        Err(e) if e.code == ErrorCode::ServiceUnavailable => {
            let mut r = ApiError(e).into_response();
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(UPLOAD_RETRY_AFTER_SECS));
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn list(Own { hub: state, .. }: Own<ServiceConnect>) -> ApiResult<Response> {
    json(&state.firmware.list()?)
}

pub(super) async fn show(
    Own { hub: state, .. }: Own<ServiceConnect>,
    Path(sha): Path<String>,
) -> ApiResult<Response> {
    check_sha256(&sha)?;
    json(&state.firmware.get(&sha)?.ok_or_else(|| not_found(&sha))?)
}

/// Refused while a configuration's content names the image (by hash).
pub(super) async fn delete(
    Own { hub: state, .. }: Own<ServiceConnect>,
    Path(sha): Path<String>,
) -> ApiResult<Response> {
    check_sha256(&sha)?;
    if let Some(config) = state.engine.list(None).into_iter().find(|c| c.content_mentions(&sha)) {
        return Err(HubError::new(
            ErrorCode::InvalidOperation,
            format!("Firmware image {sha} is referenced by configuration {}", config.id),
        )
        .into());
    }
    if let Some(id) = state.rollouts.references(&sha).await {
        return Err(HubError::new(
            ErrorCode::InvalidOperation,
            format!("Firmware image {sha} is referenced by rollout {id}"),
        )
        .into());
    }
    state.firmware.delete(&sha)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /firmware-key`: the public key devices verify manifests with.
/// Service tokens need ServiceConnect or RegistryRead; a device may read it
/// too, with the token it downloads with (its own key, or a DeviceConnect
/// policy token naming it), so an agent can pin the key on first use.
pub(super) async fn public_key(AxState(state): AxState<State>, headers: HeaderMap) -> ApiResult<Response> {
    let device_token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| SasToken::parse(h).ok())
        .is_some_and(|t| t.device_identity().is_some());
    if device_token {
        state.authenticate_device(header_text(&headers, AUTHORIZATION), None).await?;
    } else {
        let needed = [Permission::ServiceConnect, Permission::RegistryRead];
        state.auth.authorize_service(header_text(&headers, AUTHORIZATION), &needed, &["/firmware-key"])?;
    }
    let mut r = state.firmware.public_key_pem()?.into_response();
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-pem-file"));
    Ok(r)
}
