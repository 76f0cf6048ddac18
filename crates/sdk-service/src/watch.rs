//! Live views of one object (ferrohub's `.../watch` routes): a snapshot of
//! the object as its GET returns it, again whenever it changes, and a last
//! `deleted` event when it goes away.

use serde_json::Value;

use crate::sse::SseStream;
use crate::{encode, Error, Result, ServiceClient};

/// One event of a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The object as it is now (the JSON its GET returns).
    Snapshot(Value),
    /// The object was deleted; the stream ends.
    Deleted,
}

/// A live stream of [`WatchEvent`]s (from [`ServiceClient::watch`]).
#[derive(Debug)]
pub struct WatchStream {
    sse: SseStream,
}

impl WatchStream {
    /// The next event; `None` when the hub closed the stream (after
    /// `Deleted`, after a final snapshot, or when the hub stopped).
    /// Cancel-safe, like [`crate::EventStream::next`].
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        loop {
            let message = match self.sse.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            match message.event.as_str() {
                "snapshot" => {
                    return Some(serde_json::from_str(&message.data).map(WatchEvent::Snapshot).map_err(|e| {
                        Error::Decode(format!("a snapshot is not JSON ({e}): {}", message.data))
                    }))
                }
                "deleted" => return Some(Ok(WatchEvent::Deleted)),
                // Event kinds a newer hub may add are skipped.
                _ => continue,
            }
        }
    }
}

impl ServiceClient {
    /// Watches the object at `path`, e.g. `/configurations/c1/watch`
    /// (segments already encoded). The first event is the current snapshot.
    /// The stream has no time limit; errors opening it (404 for an unknown
    /// object) are the usual [`Error::Service`].
    pub async fn watch(&self, path: &str) -> Result<WatchStream> {
        Ok(WatchStream { sse: self.open_sse(path, &[]).await? })
    }

    /// Watches a configuration with its metric results
    /// (`GET /configurations/{id}/watch`).
    pub async fn watch_configuration(&self, configuration_id: &str) -> Result<WatchStream> {
        self.watch(&format!("/configurations/{}/watch", encode(configuration_id))).await
    }

    /// Watches a staged rollout's state and counts, until it is final
    /// (`GET /firmware-rollouts/{id}/watch`).
    pub async fn watch_rollout(&self, id: &str) -> Result<WatchStream> {
        self.watch(&format!("/firmware-rollouts/{}/watch", encode(id))).await
    }
}
