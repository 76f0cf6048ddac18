//! Cloud-to-device messages for HTTPS devices: receive locks the oldest
//! message for a minute under a fresh token (sent as the ETag); complete,
//! reject and abandon settle by that token. The queue rules are the hub's
//! (`crate::hub::c2d`), shared with MQTT devices.

use axum::extract::RawQuery;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrohub_core::c2d::Settlement;
use ferrohub_core::precondition::IfMatch;
use ferrohub_core::HubError;

use super::LockPath;
use crate::api::auth::DeviceCall;
use crate::api::error::ApiResult;
use crate::api::if_match;
use crate::api::properties::APP_PREFIX;
use crate::hub::c2d::Locked;

/// `GET /devices/{id}/messages/deviceBound`: 204 when nothing waits.
pub(crate) async fn receive(DeviceCall { hub, device_id: id }: DeviceCall) -> ApiResult<Response> {
    match hub.c2d.receive(&id).await? {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(locked) => Ok(message_response(&id, locked)),
    }
}

/// The message as the SDKs' `toMessage` reads it: the body, the lock
/// token as a quoted ETag (they strip the first and last character), and
/// the properties as `iothub-*` headers.
fn message_response(device_id: &str, locked: Locked) -> Response {
    let m = locked.message;
    let mut headers = HeaderMap::new();
    let mut put = |name: &str, value: &str| match (HeaderName::try_from(name), HeaderValue::from_str(value)) {
        (Ok(n), Ok(v)) => {
            headers.insert(n, v);
        }
        // A property that cannot be a header (a control character, a key
        // with a space) is left out rather than fail the whole receive.
        _ => tracing::warn!(device_id, name, "cloud-to-device property not representable as a header"),
    };
    put("etag", &format!("\"{}\"", locked.lock_token));
    put("iothub-messageid", &m.message_id);
    put("iothub-to", &format!("/devices/{device_id}/messages/deviceBound"));
    put("iothub-ack", locked.ack.as_str());
    put("iothub-expiry", &m.expiry.to_iso());
    put("iothub-enqueuedtime", &m.enqueued_time.to_iso());
    put("iothub-sequencenumber", &locked.seq.to_string());
    put("iothub-deliverycount", &locked.delivery_count.to_string());
    if let Some(v) = &m.correlation_id {
        put("iothub-correlationid", v);
    }
    if let Some(v) = &m.user_id {
        put("iothub-userid", v);
    }
    if let Some(v) = &m.content_type {
        put("iothub-contenttype", v);
        put("content-type", v);
    }
    if let Some(v) = &m.content_encoding {
        put("iothub-contentencoding", v);
        put("content-encoding", v);
    }
    for (k, v) in &m.properties {
        put(&format!("{APP_PREFIX}{k}"), v);
    }
    (StatusCode::OK, headers, m.body).into_response()
}

/// The SDK sends the lock token again in `If-Match`; when present it must
/// name the same lock (or be `*`), else the lock is as good as lost.
fn check_if_match(headers: &HeaderMap, lock_token: &str) -> ApiResult<()> {
    match if_match(headers)? {
        IfMatch::Etag(t) if t != lock_token => Err(HubError::lock_lost(&t).into()),
        _ => Ok(()),
    }
}

/// `reject` in the query (the Node SDK writes a bare `&reject`; `reject=true`
/// is read the same; `reject=false` completes).
fn wants_reject(query: Option<&str>) -> bool {
    query.unwrap_or("").split('&').any(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        key.eq_ignore_ascii_case("reject") && !value.eq_ignore_ascii_case("false")
    })
}

/// `DELETE /devices/{id}/messages/deviceBound/{lockToken}[?reject]`.
pub(crate) async fn settle(
    DeviceCall { hub, .. }: DeviceCall,
    path: LockPath,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_if_match(&headers, &path.lock_token)?;
    let how = if wants_reject(query.as_deref()) { Settlement::Reject } else { Settlement::Complete };
    hub.c2d.settle(&path.device_id, &path.lock_token, how).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /devices/{id}/messages/deviceBound/{lockToken}/abandon`.
pub(crate) async fn abandon(
    DeviceCall { hub, .. }: DeviceCall,
    path: LockPath,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_if_match(&headers, &path.lock_token)?;
    hub.c2d.settle(&path.device_id, &path.lock_token, Settlement::Abandon).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reject_is_read_from_the_query() {
        assert!(wants_reject(Some("api-version=2021-04-12&reject")));
        assert!(wants_reject(Some("reject=true&api-version=1")));
        assert!(wants_reject(Some("Reject")));
        assert!(!wants_reject(Some("api-version=1&reject=false")));
        assert!(!wants_reject(Some("api-version=1")));
        assert!(!wants_reject(None));
        assert!(!wants_reject(Some("rejected")));
    }

    #[test]
    fn if_match_must_name_the_path_token() {
        let mut h = HeaderMap::new();
        assert!(check_if_match(&h, "t1").is_ok());
        h.insert("if-match", HeaderValue::from_static("t1"));
        assert!(check_if_match(&h, "t1").is_ok());
        h.insert("if-match", HeaderValue::from_static("\"t1\""));
        assert!(check_if_match(&h, "t1").is_ok());
        h.insert("if-match", HeaderValue::from_static("*"));
        assert!(check_if_match(&h, "t1").is_ok());
        h.insert("if-match", HeaderValue::from_static("t2"));
        let e = check_if_match(&h, "t1").unwrap_err();
        assert_eq!(e.0.code, ferrohub_core::ErrorCode::DeviceMessageLockLost);
    }
}
