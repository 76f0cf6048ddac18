//! Live views of one object as server-sent events: the generic part of
//! `GET /configurations/{id}/watch` (and of any later `.../watch` route).
//!
//! The stream (`text/event-stream`) carries two kinds of events:
//!
//! ```text
//! event: snapshot
//! data: {"id":"c1", ... the same JSON a GET of the object returns ...}
//!
//! event: deleted
//! data: {}
//! ```
//!
//! - The current snapshot is sent at once, then again whenever the object
//!   changed, never more than once per [`MIN_GAP`] (changes in between are
//!   folded into the next one) and never twice with the same JSON.
//! - `deleted` is sent when the object is gone; a final snapshot (e.g. a
//!   finished rollout) is sent as `snapshot`. The stream ends after either.
//! - `: ` comment lines keep idle connections alive every 15 s.
//!
//! A route hands [`snapshots`] a stream of change ticks (see [`ticks`]) and a render function; the task feeding the response ends
//! when the client goes away.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tokio_stream::{Stream, StreamExt};

/// The shortest time between two renders: a busy fleet changes counts many
/// times a second, a person watching needs a few frames a second.
pub(crate) const MIN_GAP: Duration = Duration::from_millis(200);

/// Keep-alive comments on an idle stream (proxies drop silent connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a render function returns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Snapshot {
    /// The current state; more may follow.
    Live(Value),
    /// The last state there will be: sent, then the stream ends.
    Final(Value),
    /// The object no longer exists: `deleted` is sent and the stream ends.
    Gone,
}

/// A stream of "something may have changed" notifications.
pub(crate) type Ticks = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// Ticks from a watch channel: one per change after this call (a reader
/// that falls behind sees one tick for many changes).
pub(crate) fn ticks<T: Clone + Send + Sync + 'static>(rx: watch::Receiver<T>) -> Ticks {
    Box::pin(WatchStream::from_changes(rx).map(|_| ()))
}

/// One event on the wire.
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Snapshot(String),
    Deleted,
}

/// The SSE response: renders now, then after ticks, as the module doc says.
/// Subscribe to the ticks *before* calling this so no change is missed.
pub(crate) fn snapshots<F>(signal: Ticks, render: F) -> Response
where
    F: Fn() -> Snapshot + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Frame>(8);
    tokio::spawn(feed(signal, render, MIN_GAP, tx));
    let events = ReceiverStream::new(rx).map(|frame| {
        Ok::<_, Infallible>(match frame {
            Frame::Snapshot(json) => Event::default().event("snapshot").data(json),
            // Data is required: SSE clients drop events without any.
            Frame::Deleted => Event::default().event("deleted").data("{}"),
        })
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// Renders and sends frames until the object is gone or final, the ticks
/// end, or the client disconnects (the receiver drops).
async fn feed<F>(mut signal: Ticks, render: F, gap: Duration, tx: mpsc::Sender<Frame>)
where
    F: Fn() -> Snapshot,
{
    let mut last_sent: Option<String> = None;
    loop {
        let rendered_at = Instant::now();
        let (json, done) = match render() {
            Snapshot::Live(v) => (v.to_string(), false),
            Snapshot::Final(v) => (v.to_string(), true),
            Snapshot::Gone => {
                let _ = tx.send(Frame::Deleted).await;
                return;
            }
        };
        if last_sent.as_deref() != Some(json.as_str()) {
            if tx.send(Frame::Snapshot(json.clone())).await.is_err() {
                return;
            }
            last_sent = Some(json);
        }
        if done {
            return;
        }
        tokio::select! {
            tick = signal.next() => if tick.is_none() { return },
            () = tx.closed() => return,
        }
        // Fold the changes of the next `gap` into one render.
        tokio::select! {
            () = tokio::time::sleep_until(rendered_at + gap) => {}
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;

    /// A render function over a shared, test-controlled state.
    fn source(initial: Snapshot) -> (Arc<Mutex<Snapshot>>, impl Fn() -> Snapshot + Send + 'static) {
        let state = Arc::new(Mutex::new(initial));
        let reader = state.clone();
        (state, move || reader.lock().unwrap().clone())
    }

    async fn next(rx: &mut mpsc::Receiver<Frame>) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap()
    }

    #[tokio::test]
    async fn bursts_are_coalesced_and_unchanged_renders_are_not_sent() {
        let (state, render) = source(Snapshot::Live(json!({"n": 0})));
        let (tick_tx, tick_rx) = mpsc::channel::<()>(64);
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(feed(Box::pin(ReceiverStream::new(tick_rx)), render, Duration::from_millis(50), tx));
        assert_eq!(next(&mut rx).await, Some(Frame::Snapshot(r#"{"n":0}"#.into())));
        // A burst within one gap: only its end result goes out.
        for n in 1..=5 {
            *state.lock().unwrap() = Snapshot::Live(json!({ "n": n }));
            tick_tx.try_send(()).unwrap();
        }
        assert_eq!(next(&mut rx).await, Some(Frame::Snapshot(r#"{"n":5}"#.into())));
        // Ticks without a change send nothing; the next frame is `deleted`.
        tick_tx.try_send(()).unwrap();
        tick_tx.try_send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        *state.lock().unwrap() = Snapshot::Gone;
        tick_tx.try_send(()).unwrap();
        assert_eq!(next(&mut rx).await, Some(Frame::Deleted));
        assert_eq!(next(&mut rx).await, None, "the stream ends after deleted");
    }

    #[tokio::test]
    async fn a_final_snapshot_ends_the_stream_and_so_do_ended_ticks() {
        let (_state, render) = source(Snapshot::Final(json!({"done": true})));
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(feed(Box::pin(tokio_stream::pending()), render, MIN_GAP, tx));
        assert_eq!(next(&mut rx).await, Some(Frame::Snapshot(r#"{"done":true}"#.into())));
        assert_eq!(next(&mut rx).await, None);

        let (_state, render) = source(Snapshot::Live(json!(1)));
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(feed(Box::pin(tokio_stream::empty()), render, MIN_GAP, tx));
        assert_eq!(next(&mut rx).await, Some(Frame::Snapshot("1".into())));
        assert_eq!(next(&mut rx).await, None);
    }
}
