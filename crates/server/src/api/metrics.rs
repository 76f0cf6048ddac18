//! `GET /metrics`: the hub for Prometheus.
//!
//! A scrape config carries HTTP basic auth, not a SAS token, so the route
//! takes either: basic auth with a shared access policy's name as the user
//! and one of its keys as the password, or a SAS token, as every service
//! route does; either way the policy needs ServiceConnect. A client that
//! asks for OpenMetrics (Prometheus does) gets it; any other gets
//! Prometheus's older text format, which `promtool check metrics` reads.

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ferrohub_core::sas::Permission;
use ferrohub_core::HubError;
use subtle::ConstantTimeEq as _;

use super::auth::{authorize_service, ServiceConnect};
use super::error::{ApiError, ApiResult};
use super::State;
use crate::metrics::Snapshot;

/// Whether a basic-auth header names a policy with ServiceConnect and
/// carries one of its keys. `None`: not basic auth at all.
fn basic_auth(hub: &State, header: &str) -> Option<bool> {
    let encoded = header.strip_prefix("Basic ")?;
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return Some(false);
    };
    let Ok(text) = String::from_utf8(decoded) else { return Some(false) };
    let Some((name, key)) = text.split_once(':') else { return Some(false) };
    let policies = hub.auth.policies();
    let ok = policies.iter().find(|p| p.key_name == name).is_some_and(|p| {
        let matches = |k: &str| bool::from(k.as_bytes().ct_eq(key.as_bytes()));
        p.rights.contains(Permission::ServiceConnect) && (matches(&p.primary_key) | matches(&p.secondary_key))
    });
    Some(ok)
}

/// 401 with the challenge a Prometheus (or a browser) answers with basic auth.
fn refused() -> Response {
    let mut res = ApiError::from(HubError::unauthorized(
        "GET /metrics needs basic auth with a policy name and key, or a SAS token, with ServiceConnect",
    ))
    .into_response();
    res.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"ferrohub\""));
    res
}

pub(super) async fn scrape(axum::extract::State(hub): axum::extract::State<State>, parts: Parts) -> Response {
    let header = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let allowed = match header.and_then(|h| basic_auth(&hub, h)) {
        Some(ok) => ok,
        None => authorize_service::<ServiceConnect>(&parts, &hub).is_ok(),
    };
    if !allowed {
        return refused();
    }
    let openmetrics = parts
        .headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    match render(&hub, openmetrics).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

/// The scrape in OpenMetrics (what Prometheus asks for) or, for any other
/// client, Prometheus's older text format.
async fn render(hub: &State, openmetrics: bool) -> ApiResult<Response> {
    let counts = hub.registry.device_counts().await?;
    let snapshot = Snapshot {
        connected_devices: hub.presence.connected_count() as u64,
        devices_total: counts.total,
        devices_enabled: counts.enabled,
        configurations: hub.engine.list(None).len() as u64,
        telemetry_accepted: hub.telemetry.accepted(),
        throttled: hub.throttles.stats().into_iter().map(|t| (t.class.name(), t.throttled)).collect(),
        daily_quota: hub.throttles.daily().map(|(s, refused)| (s.limit, s.used, refused)),
    };
    let text = crate::metrics::encode(snapshot, &hub.http_metrics)
        .map_err(|e| HubError::internal(format!("encoding the metrics: {e}")))?;
    let (text, content_type) = if openmetrics {
        (text, "application/openmetrics-text; version=1.0.0; charset=utf-8")
    } else {
        (crate::metrics::to_prometheus_text(&text), "text/plain; version=0.0.4; charset=utf-8")
    };
    let mut res = text.into_response();
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(res)
}
