//! `GET /events`: live device-to-cloud telemetry as server-sent events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State as AxState};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferrohub_core::sas::Permission;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::error::ApiResult;
use super::{authorize, State};

/// Most events a `last=` replay returns.
const MAX_REPLAY: usize = 10_000;

pub(super) async fn stream(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    let device = query.get("deviceId").cloned().filter(|d| !d.is_empty());
    let last = query.get("last").and_then(|n| n.parse::<usize>().ok()).unwrap_or(0).min(MAX_REPLAY);
    let (replay, mut live) = state.telemetry.subscribe(device.as_deref(), last);
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    // The feeding task ends when the client goes away (the receiver drops).
    tokio::spawn(async move {
        for e in replay {
            if tx.send(e.to_json().to_string()).await.is_err() {
                return;
            }
        }
        loop {
            match live.recv().await {
                Ok(e) if device.as_deref().is_none_or(|d| e.device_id == d) => {
                    if tx.send(e.to_json().to_string()).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // A reader that fell behind skips what it missed.
                Err(RecvError::Lagged(n)) => tracing::warn!(skipped = n, "events reader fell behind"),
                Err(RecvError::Closed) => return,
            }
        }
    });
    let events = ReceiverStream::new(rx).map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}
