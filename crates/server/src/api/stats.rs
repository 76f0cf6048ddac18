//! `/statistics`: registry and service statistics.

use axum::response::Response;
use serde_json::json;

use super::auth::{RegistryRead, Service, ServiceOrRegistryRead};
use super::error::ApiResult;
use super::json_response;

pub(super) async fn devices(Service { hub: state, .. }: Service<RegistryRead>) -> ApiResult<Response> {
    let c = state.registry.device_counts().await?;
    Ok(json_response(&json!({
        "totalDeviceCount": c.total,
        "enabledDeviceCount": c.enabled,
        "disabledDeviceCount": c.disabled,
    })))
}

/// Decision: the sources name no permission for this; ServiceConnect or
/// RegistryRead both suffice here.
pub(super) async fn service(
    Service { hub: state, .. }: Service<ServiceOrRegistryRead>,
) -> ApiResult<Response> {
    // The live connections of this node, whatever their transport (one
    // node today; several nodes will sum theirs).
    // `throttles` is a ferrohub addition (SDKs read only the count): each
    // class's limit and how many operations it refused or delayed.
    let throttles: serde_json::Map<String, serde_json::Value> = state
        .throttles
        .stats()
        .into_iter()
        .map(|t| {
            let limit = t.limit.map(|q| q.to_string());
            (t.class.name().to_owned(), json!({ "limit": limit, "throttled": t.throttled }))
        })
        .collect();
    // Also a ferrohub addition: the daily message quota, when there is one.
    let daily = state
        .throttles
        .daily()
        .map(|(s, refused)| json!({ "limit": s.limit, "used": s.used, "refused": refused }));
    Ok(json_response(&json!({
        "connectedDeviceCount": state.presence.connected_count(),
        "throttles": throttles,
        "dailyQuota": daily,
    })))
}
