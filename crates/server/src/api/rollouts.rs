//! `/firmware-rollouts`: staged firmware rollouts (ServiceConnect; a
//! ferrohub addition).

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State as AxState};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferrohub_core::sas::Permission;
use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::body::JsonBody;
use super::error::ApiResult;
use super::{authorize, json, State};

pub(super) async fn list(AxState(state): AxState<State>, headers: HeaderMap) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    json(&state.rollouts.list().await)
}

pub(super) async fn create(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    json(&state.rollouts.create(&body).await?)
}

/// `GET /firmware-rollouts/{id}[?members=false]`: with its members (each
/// device's phase, attempts and reason) unless told otherwise.
pub(super) async fn get(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    let members = query.get("members").is_none_or(|m| m != "false");
    json(&state.rollouts.get(&id, members).await?)
}

/// `POST /firmware-rollouts/{id}/pause|resume|cancel|rollback`.
pub(super) async fn act(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    json(&state.rollouts.act(&id, &action).await?)
}

/// `GET /firmware-rollouts/{id}/watch`: server-sent events, one `snapshot`
/// event (the rollout without members) now and after every change, until
/// the rollout is final (succeeded, cancelled, rolled back) or the client
/// leaves. Changes are coalesced to at most one event per 200 ms.
pub(super) async fn watch(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &[Permission::ServiceConnect])?;
    let first = state.rollouts.get(&id, false).await?;
    let mut changes = state.rollouts.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(4);
    tokio::spawn(async move {
        let mut last = first;
        if tx.send(last.to_string()).await.is_err() {
            return;
        }
        loop {
            if state.rollouts.state(&id).await.is_none_or(ferrohub_core::rollout::RolloutState::is_final) {
                return;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            changes.mark_unchanged();
            let Ok(now) = state.rollouts.get(&id, false).await else { return };
            if now != last {
                if tx.send(now.to_string()).await.is_err() {
                    return;
                }
                last = now;
            }
        }
    });
    let events = ReceiverStream::new(rx)
        .map(|data| Ok::<_, Infallible>(Event::default().event("snapshot").data(data)));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}
