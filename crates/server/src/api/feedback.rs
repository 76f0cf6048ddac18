//! The service's side of cloud-to-device delivery over HTTPS: the feedback
//! queue (`/messages/serviceBound/feedback`) and the purge of a device's
//! queue (`DELETE /devices/{id}/commands`), as PyPI `azure-iot-hub`'s
//! protocol layer calls them. The rules are the hub's
//! ([`CloudToDevice`](crate::hub::c2d::CloudToDevice)); this module only
//! maps them onto HTTP.

use axum::extract::Path;
use axum::http::header::{CONTENT_TYPE, ETAG};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrohub_core::HubError;
use serde_json::json;

use super::auth::{Service, ServiceConnect};
use super::error::{ApiError, ApiResult};
use super::IdPath;
use crate::hub::c2d::FeedbackBatch;

/// The content type IoT Hub gives a feedback message (the C2D guide's
/// feedback properties); the body is the JSON array of records.
pub(crate) const FEEDBACK_CONTENT_TYPE: &str =
    "application/vnd.microsoft.iothub.feedback.json; charset=utf-8";

/// `GET /messages/serviceBound/feedback`: 204 when nothing is waiting,
/// else the locked batch.
pub(super) async fn receive(Service { hub: state, .. }: Service<ServiceConnect>) -> ApiResult<Response> {
    match state.c2d.receive_feedback().await? {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(batch) => batch_response(&batch),
    }
}

/// A batch on the wire: the records as the body, the lock token as a
/// quoted `ETag`, the way the device route hands out a message's lock
/// (clients strip the quotes and send the token back in the path).
fn batch_response(batch: &FeedbackBatch) -> ApiResult<Response> {
    let body =
        serde_json::to_string(&batch.records).map_err(|e| ApiError(HubError::internal(e.to_string())))?;
    let etag = HeaderValue::from_str(&format!("\"{}\"", batch.lock_token))
        .map_err(|e| ApiError(HubError::internal(e.to_string())))?;
    let mut r = body.into_response();
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(FEEDBACK_CONTENT_TYPE));
    r.headers_mut().insert(ETAG, etag);
    Ok(r)
}

/// `DELETE /messages/serviceBound/feedback/{lockToken}`: 204, or 412
/// DeviceMessageLockLost when the token holds no batch.
pub(super) async fn complete(
    Service { hub: state, .. }: Service<ServiceConnect>,
    Path(lock_token): Path<String>,
) -> ApiResult<Response> {
    state.c2d.settle_feedback(&lock_token, false).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /messages/serviceBound/feedback/{lockToken}/abandon`: the batch
/// goes back for the next receive; 204, or 412 as for complete.
pub(super) async fn abandon(
    Service { hub: state, .. }: Service<ServiceConnect>,
    Path(lock_token): Path<String>,
) -> ApiResult<Response> {
    state.c2d.settle_feedback(&lock_token, true).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /devices/{id}/commands`: empties the device's queue and says how
/// many messages went (`PurgeMessageQueueResult`; ferrohub has no modules,
/// so no `moduleId`).
pub(super) async fn purge(
    Service { hub: state, .. }: Service<ServiceConnect>,
    IdPath(id): IdPath,
) -> ApiResult<Response> {
    let purged = state.c2d.purge(&id).await?;
    Ok(super::json_response(&json!({ "totalMessagesPurged": purged, "deviceId": id })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferrohub_core::c2d::{FeedbackRecord, FeedbackStatus};
    use ferrohub_core::time::Timestamp;

    #[tokio::test]
    async fn a_batch_carries_its_records_and_its_quoted_lock_token() {
        let at = Timestamp::from_unix_millis(1_438_100_688_789);
        let batch = FeedbackBatch {
            lock_token: "tok-1".into(),
            records: vec![FeedbackRecord::new(FeedbackStatus::Purged, "m1", "d", "g", at)],
        };
        let r = batch_response(&batch).unwrap();
        assert_eq!(r.headers()[ETAG], "\"tok-1\"");
        assert_eq!(r.headers()[CONTENT_TYPE], FEEDBACK_CONTENT_TYPE);
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body, serde_json::to_value(&batch.records).unwrap());
        assert_eq!(body[0]["statusCode"], "Purged");
    }
}
