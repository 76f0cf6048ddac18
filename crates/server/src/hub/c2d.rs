//! Cloud-to-device messages: one durable queue per device, whichever
//! transport the device reads it over. Transports ask for the next
//! messages and settle them here; they never reach the store.

use std::sync::Arc;

use ferrohub_core::message::{CloudToDeviceMessage, MAX_C2D_QUEUE};
use ferrohub_core::{HubError, HubResult};
use ferrohub_mqtt::topic::Subscription;
use ferrohub_store::Store;

use super::presence::{Outbound, Presence};
use super::store_error::{store_error, Entity};
use crate::clock;

/// A queued message as a transport delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Position in the device's queue.
    pub seq: i64,
    /// How often it was delivered before.
    pub delivery_count: i64,
    /// The message.
    pub message: CloudToDeviceMessage,
}

/// The cloud-to-device queues of the hub.
pub struct CloudToDevice {
    store: Arc<dyn Store>,
    presence: Arc<Presence>,
}

impl CloudToDevice {
    pub(crate) fn new(store: Arc<dyn Store>, presence: Arc<Presence>) -> Self {
        Self { store, presence }
    }

    /// Queues a message for a device (403 when 50 are already waiting) and
    /// tells its connection, if any.
    pub async fn send(&self, device_id: &str, message: &CloudToDeviceMessage) -> HubResult<()> {
        let text = serde_json::to_string(message).map_err(|e| HubError::internal(e.to_string()))?;
        let now = clock::unix_seconds();
        self.store
            .enqueue_c2d(device_id, message.expiry.unix_seconds(), text, MAX_C2D_QUEUE, now)
            .await
            .map_err(|e| store_error(e, Entity::Device(device_id)))?;
        let delivery = self.presence.send(device_id, Subscription::C2d, Outbound::C2dAvailable);
        tracing::debug!(device_id, ?delivery, "cloud-to-device message queued");
        Ok(())
    }

    /// Up to `limit` unexpired messages after `after`, oldest first, each
    /// counted as a delivery. An unreadable stored message is dropped.
    pub async fn next(&self, device_id: &str, after: i64, limit: usize) -> HubResult<Vec<Queued>> {
        let about = Entity::Device(device_id);
        let pending = self
            .store
            .pending_c2d(device_id, after, clock::unix_seconds(), limit)
            .await
            .map_err(|e| store_error(e, about))?;
        let mut out = Vec::with_capacity(pending.len());
        for stored in pending {
            let message: CloudToDeviceMessage = match serde_json::from_str(&stored.message) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(%e, seq = stored.seq, "unreadable queued message dropped");
                    let _ = self.store.complete_c2d(device_id, stored.seq).await;
                    continue;
                }
            };
            self.store.mark_c2d_delivered(device_id, stored.seq).await.map_err(|e| store_error(e, about))?;
            out.push(Queued { seq: stored.seq, delivery_count: stored.delivery_count, message });
        }
        Ok(out)
    }

    /// The device acknowledged a message: it leaves the queue.
    pub async fn complete(&self, device_id: &str, seq: i64) -> HubResult<()> {
        self.store.complete_c2d(device_id, seq).await.map_err(|e| store_error(e, Entity::Device(device_id)))
    }
}
