//! The IoT Hub service REST API: same paths, verbs, JSON and errors as
//! Azure, with the `api-version`s IoT Hub has served ([`auth::API_VERSIONS`]).
//!
//! A request flows: TLS (axum-server) → router → the handler's first
//! extractor ([`auth`]: `Service<P>`, `Own<P>` or `DeviceCall`) checks the
//! SAS token, the permission the route needs and its scope, then the path's
//! escapes and the `api-version` → only then are the query and the body
//! read ([`body::JsonBody`], size-limited) → the [`Hub`] core.
//! Any failure is a [`HubError`] rendered by [`error::ApiError`]. This
//! module knows HTTP and the hub, nothing of the other transports.

mod admitted;
mod auth;
mod body;
mod c2d;
mod configurations;
mod device;
mod devices;
pub mod error;
mod events;
mod feedback;
mod firmware;
mod methods;
mod metrics;
mod paths;
mod policies;
pub(crate) mod properties;
mod query;
mod rollouts;
mod stats;
mod twins;
pub(crate) mod watch;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::header::{CONTENT_TYPE, IF_MATCH};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use ferrohub_core::{ErrorCode, HubError};

use ferrohub_core::precondition::IfMatch;

use crate::hub::Hub;
use error::{ApiError, ApiResult};

/// Shared handler state: the hub core.
pub type State = Arc<Hub>;

/// The service API and the device HTTPS API. Literal path segments match
/// ignoring case (see [`paths`]): requests are rewritten to the route
/// table's spelling before routing.
pub fn router(state: State) -> Router {
    let (routes, table) = routes().finish();
    let http_metrics = state.http_metrics.clone();
    let routes = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(http_metrics, crate::metrics::track))
        .with_state(state);
    let canonical = tower::ServiceBuilder::new()
        .map_request(move |req: axum::extract::Request| table.rewrite(req))
        .service(routes);
    Router::new().fallback_service(canonical)
}

/// Every route, recorded in the table the path rewrite matches against.
fn routes() -> Routes {
    Routes::default()
        .route("/devices", get(devices::list).post(devices::bulk))
        // The Node service SDK lists with a trailing slash.
        .route("/devices/", get(devices::list).post(devices::bulk))
        .route("/devices/{id}", get(devices::get).put(devices::put).delete(devices::delete))
        .route("/devices/query", post(query::query))
        // POST is the service's send; the rest act as the device.
        .route("/devices/{id}/messages/deviceBound", post(c2d::send).get(device::receive))
        .route("/devices/{id}/messages/deviceBound/{lockToken}", delete(device::settle))
        .route("/devices/{id}/messages/deviceBound/{lockToken}/abandon", post(device::abandon))
        .route("/devices/{id}/messages/events", post(device::send_event))
        .route("/devices/{id}/commands", delete(feedback::purge))
        .route("/messages/serviceBound/feedback", get(feedback::receive))
        .route("/messages/serviceBound/feedback/{lock_token}", delete(feedback::complete))
        .route("/messages/serviceBound/feedback/{lock_token}/abandon", post(feedback::abandon))
        .route("/configurations", get(configurations::list))
        .route("/configurations/testQueries", post(configurations::test_queries))
        .route(
            "/configurations/{id}",
            get(configurations::get).put(configurations::put).delete(configurations::delete),
        )
        .route("/configurations/{id}/watch", get(configurations::watch))
        .route("/twins/{id}", get(twins::get).patch(twins::patch).put(twins::replace))
        .route("/twins/{id}/methods", post(methods::invoke))
        .route("/events", get(events::stream))
        .route("/firmware/{sha}", get(firmware::download))
        .route("/firmware-images", get(firmware::list).post(firmware::upload))
        .route("/firmware-images/{sha}", get(firmware::show).delete(firmware::delete))
        .route("/firmware-key", get(firmware::public_key))
        .route("/firmware-rollouts", get(rollouts::list).post(rollouts::create))
        .route("/firmware-rollouts/{id}", get(rollouts::get).delete(rollouts::delete))
        .route("/firmware-rollouts/{id}/watch", get(rollouts::watch))
        .route("/firmware-rollouts/{id}/{action}", post(rollouts::act))
        .route("/statistics/devices", get(stats::devices))
        .route("/statistics/service", get(stats::service))
        .route("/metrics", get(metrics::scrape))
        .route("/ferrohub/policies", get(policies::list))
        .route("/ferrohub/policies/{name}/renewKey", post(policies::renew_key))
}

/// A router that remembers its route patterns.
#[derive(Default)]
struct Routes {
    router: Router<State>,
    table: paths::RouteTable,
}

impl Routes {
    fn route(mut self, path: &'static str, handler: MethodRouter<State>) -> Self {
        self.table.add(path);
        self.router = self.router.route(path, handler);
        self
    }

    fn finish(self) -> (Router<State>, paths::RouteTable) {
        (self.router, self.table)
    }
}

async fn not_found() -> ApiError {
    ApiError(HubError::new(ErrorCode::IotHubNotFound, "The requested resource does not exist"))
}

async fn method_not_allowed() -> ApiError {
    ApiError(HubError::new(ErrorCode::InvalidOperation, "The HTTP method is not supported on this resource"))
}

/// A JSON response with the content type the Node SDK needs to parse it.
pub(crate) fn json_response(body: &serde_json::Value) -> Response {
    let mut r = body.to_string().into_response();
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

/// Serialises `value` as a JSON response.
pub(crate) fn json<T: serde::Serialize>(value: &T) -> ApiResult<Response> {
    let v = serde_json::to_value(value).map_err(|e| ApiError(HubError::internal(e.to_string())))?;
    Ok(json_response(&v))
}

/// The `{id}` path segment, percent-decoded once, with Azure's error when it
/// cannot be decoded.
pub(crate) struct IdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError(HubError::invalid(format!("Invalid id in the path: {e}"))))?;
        Ok(Self(id))
    }
}

/// Reads `If-Match`: absent, `*`, or an etag with or without quotes.
pub(crate) fn if_match(headers: &HeaderMap) -> ApiResult<IfMatch> {
    let Some(raw) = headers.get(IF_MATCH) else { return Ok(IfMatch::Absent) };
    let text = raw
        .to_str()
        .map_err(|_| ApiError(HubError::invalid("The If-Match header is not valid text")))?
        .trim();
    let inner = match (text.strip_prefix('"'), text.strip_suffix('"')) {
        (Some(_), Some(_)) if text.len() >= 2 => &text[1..text.len() - 1],
        (None, None) => text,
        _ => return Err(ApiError(HubError::invalid("The If-Match header has unbalanced quotes"))),
    };
    if inner.is_empty() || inner.contains('"') {
        return Err(ApiError(HubError::invalid("The If-Match header is not a valid etag")));
    }
    Ok(if inner == "*" { IfMatch::Any } else { IfMatch::Etag(inner.to_owned()) })
}

/// A header's value as text, if present and valid.
pub(crate) fn header_text(headers: &HeaderMap, name: axum::http::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(IF_MATCH, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn if_match_accepts_quoted_unquoted_and_star() {
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), IfMatch::Absent);
        assert_eq!(if_match(&headers("*")).unwrap(), IfMatch::Any);
        assert_eq!(if_match(&headers("\"*\"")).unwrap(), IfMatch::Any);
        assert_eq!(if_match(&headers("\"MQ==\"")).unwrap(), IfMatch::Etag("MQ==".into()));
        assert_eq!(if_match(&headers("MQ==")).unwrap(), IfMatch::Etag("MQ==".into()));
        for bad in ["\"MQ==", "MQ==\"", "\"\"", "\"", "a\"b"] {
            assert_eq!(if_match(&headers(bad)).unwrap_err().0.code, ErrorCode::ArgumentInvalid, "{bad}");
        }
    }
}
