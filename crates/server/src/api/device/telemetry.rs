//! `POST /devices/{id}/messages/events`: one message, or a batch, into the
//! same telemetry stream MQTT devices feed.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ferrohub_core::message::MAX_TELEMETRY;

use crate::api::auth::DeviceCall;
use crate::api::error::ApiResult;
use crate::api::properties::{self, BATCH_CONTENT_TYPE};
use crate::clock;
use crate::hub::telemetry::TelemetryEvent;

fn is_batch(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(BATCH_CONTENT_TYPE))
}

pub(crate) async fn send_event(
    DeviceCall { hub, device_id: id }: DeviceCall,
    req: Request<Body>,
) -> ApiResult<Response> {
    let headers = req.headers().clone();
    // IoT Hub caps a request at 256 KiB, a batch included (as MQTT caps a
    // payload).
    let body = crate::api::body::read_limited(&headers, req.into_body(), MAX_TELEMETRY)
        .await
        .map_err(|e| e.into_api(format!("A device-to-cloud message is at most {MAX_TELEMETRY} bytes")))?;
    // Everything is parsed before anything is pushed: a bad batch sends nothing.
    let messages: Vec<_> = if is_batch(&headers) {
        properties::parse_batch(&body)?.into_iter().map(|(p, b)| (p, Bytes::from(b))).collect()
    } else {
        vec![(properties::from_headers(&headers)?, body)]
    };
    // A batch is admitted whole or refused whole (429 with Retry-After).
    let sizes: Vec<usize> = messages.iter().map(|(_, body)| body.len()).collect();
    hub.telemetry.admit(&id, &sizes)?;
    let now = clock::now();
    for (props, body) in messages {
        hub.telemetry.push(TelemetryEvent::from_device(&id, props, body, now));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
