//! `GET /events`: live device-to-cloud telemetry as server-sent events.
//!
//! The events are framed here rather than one by one through axum's `Sse`:
//! under load a reader is one task among thousands of connection tasks, so
//! each turn it gets must move many events. A turn takes every event waiting
//! (up to [`BATCH`]) and writes them as one chunk of `data:` frames.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Query;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::auth::{Own, ServiceConnect};
use super::error::ApiResult;
use crate::hub::telemetry::TelemetryEvent;

/// Most events a `last=` replay returns.
const MAX_REPLAY: usize = 10_000;
/// Most events written in one chunk.
const BATCH: usize = 4096;
/// A comment line this often keeps idle connections (and proxies) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Appends one event as an SSE frame (`data: <json>` and a blank line; the
/// JSON has no newlines).
fn frame(out: &mut Vec<u8>, event: &TelemetryEvent) {
    out.extend_from_slice(b"data: ");
    // Serialising a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &event.to_json());
    out.extend_from_slice(b"\n\n");
}

pub(super) async fn stream(
    Own { hub: state, .. }: Own<ServiceConnect>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let device = query.get("deviceId").cloned().filter(|d| !d.is_empty());
    let last = query.get("last").and_then(|n| n.parse::<usize>().ok()).unwrap_or(0).min(MAX_REPLAY);
    let (replay, mut live) = state.telemetry.subscribe(device.as_deref(), last);
    let wanted = move |e: &Arc<TelemetryEvent>| device.as_deref().is_none_or(|d| e.device_id == d);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    // The feeding task ends when the client goes away (the receiver drops).
    tokio::spawn(async move {
        let mut chunk = Vec::new();
        for e in &replay {
            frame(&mut chunk, e);
        }
        if !chunk.is_empty() && tx.send(Bytes::from(std::mem::take(&mut chunk))).await.is_err() {
            return;
        }
        loop {
            let first = tokio::select! {
                r = live.recv() => r,
                () = tokio::time::sleep(KEEP_ALIVE) => {
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(received) = next.take() {
                match received {
                    Ok(e) if wanted(&e) => frame(&mut chunk, &e),
                    Ok(_) => {}
                    // A reader that fell behind skips what it missed.
                    Err(RecvError::Lagged(n)) => tracing::warn!(skipped = n, "events reader fell behind"),
                    Err(RecvError::Closed) => return,
                }
                taken += 1;
                if taken < BATCH {
                    next = match live.try_recv() {
                        Ok(e) => Some(Ok(e)),
                        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                        Err(TryRecvError::Empty) => None,
                    };
                }
            }
            if !chunk.is_empty() && tx.send(Bytes::from(std::mem::take(&mut chunk))).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}
