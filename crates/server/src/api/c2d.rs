//! `POST /devices/{id}/messages/deviceBound`: send a cloud-to-device
//! message. (Azure's SDKs send these over AMQP; ferrohub takes them over
//! HTTPS, with the same properties as `iothub-*` headers.)

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrohub_core::message::{c2d_expiry, CloudToDeviceMessage, MAX_C2D_BODY};
use ferrohub_core::HubError;

use super::auth::{Service, ServiceConnect};
use super::error::{ApiError, ApiResult};
use super::IdPath;

fn header(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| HubError::invalid(format!("{name} is not valid text")).into())
        })
        .transpose()
}

pub(super) async fn send(
    Service { hub: state, .. }: Service<ServiceConnect>,
    IdPath(id): IdPath,
    req: Request<Body>,
) -> ApiResult<Response> {
    let headers = req.headers().clone();
    let body = super::body::read_limited(&headers, req.into_body(), MAX_C2D_BODY)
        .await
        .map_err(|e| e.into_api(format!("A cloud-to-device message is at most {MAX_C2D_BODY} bytes")))?;
    let now = crate::clock::now();
    let props = super::properties::from_headers(&headers)?;
    let system = props.system;
    let message = CloudToDeviceMessage {
        message_id: system.message_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        correlation_id: system.correlation_id,
        user_id: system.user_id,
        content_type: system.content_type.or(header(&headers, "content-type")?),
        content_encoding: system.content_encoding,
        expiry: c2d_expiry(system.absolute_expiry_time.as_deref(), now)?,
        enqueued_time: now,
        properties: props
            .application
            .iter()
            .map(|(k, v)| (k.to_owned(), v.unwrap_or_default().to_owned()))
            .collect(),
        body: body.to_vec(),
    };
    let ack = ferrohub_core::c2d::AckMode::parse(header(&headers, "iothub-ack")?.as_deref())?;
    state.c2d.send(&id, &message, ack).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
