//! `POST /devices/query`: the IoT Hub query language over device twins,
//! paged with `x-ms-max-item-count` / `x-ms-continuation`.

use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use base64::Engine as _;
use ferrohub_core::daily_quota::Metered;
use ferrohub_core::HubError;
use serde::Deserialize;
use serde_json::Value;

use super::admitted::{Admitted, Queries};
use super::auth::{Service, ServiceOrRegistryRead};
use super::body::JsonBody;
use super::error::ApiResult;
use super::json_response;

/// Page size when the client names none, and the most it may ask for.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
pub(super) struct QueryBody {
    query: String,
}

/// The continuation token: the offset of the next page, opaque to clients.
fn decode_continuation(headers: &HeaderMap) -> Result<usize, HubError> {
    let Some(v) = headers.get("x-ms-continuation") else { return Ok(0) };
    let text = v.to_str().map_err(|_| HubError::invalid("Invalid x-ms-continuation"))?;
    if text.is_empty() {
        return Ok(0);
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| HubError::invalid("Invalid x-ms-continuation"))
}

pub(super) async fn query(
    Service { hub: state, .. }: Service<ServiceOrRegistryRead>,
    _: Admitted<Queries>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<QueryBody>,
) -> ApiResult<Response> {
    // A query is metered by the size of its page of results (0.5 KB
    // chunks): one chunk before it runs, the rest once it is known.
    state.throttles.meter(Metered::Twin, 0)?;
    let parsed = ferrohub_query::parse_query(&body.query).map_err(|e| HubError::invalid(e.message))?;
    let page = headers
        .get("x-ms-max-item-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_PAGE)
        .min(MAX_PAGE);
    let offset = decode_continuation(&headers)?;
    let result = state.engine.query(&parsed)?;
    let total = result.items.len();
    let end = (offset + page).min(total);
    let items: Vec<Value> = result.items.into_iter().skip(offset).take(end.saturating_sub(offset)).collect();
    let items = Value::Array(items);
    state.throttles.meter_rest(Metered::Twin, || items.to_string().len());
    let mut response = json_response(&items);
    let h = response.headers_mut();
    h.insert("x-ms-item-type", HeaderValue::from_static(result.item_type.as_str()));
    // No continuation header at all on the last page: the Node SDK treats
    // any value, even an empty one, as "more".
    if end < total {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("offset:{end}"));
        if let Ok(v) = HeaderValue::from_str(&token) {
            h.insert("x-ms-continuation", v);
        }
    }
    Ok(response)
}
