//! Cloud-to-device messages: one durable queue per device, whichever
//! transport the device reads it over, and the service's feedback queue.
//!
//! A message is locked to one receiver at a time: an HTTPS receive locks
//! it for a minute under a fresh token; an MQTT connection locks what it
//! has in flight under the connection's token until PUBACK, and releases
//! the rest when it ends (counted as a delivery). The rules are
//! `ferrohub_core::c2d`'s; the store applies them atomically, feedback
//! included. Transports never reach the store.

use std::sync::Arc;
use std::time::Duration;

use ferrohub_core::c2d::{
    AckMode, AfterSettle, FeedbackRecord, Settlement, DEFAULT_MAX_DELIVERY_COUNT, FEEDBACK_BATCH_MAX,
};
use ferrohub_core::message::{CloudToDeviceMessage, MAX_C2D_QUEUE};
use ferrohub_core::{HubError, HubResult};
use ferrohub_mqtt::topic::Subscription;
use ferrohub_store::{LockedC2d, NewC2d, Settled, Store};

use super::presence::{Outbound, Presence};
use super::store_error::{store_error, Entity};
use super::throttle::Throttles;
use crate::clock;
use ferrohub_core::daily_quota::Metered;
use ferrohub_core::throttle::Class;

/// How often expired messages are swept into their feedback.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// A message locked to its receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    /// Its sequence number (`iothub-sequencenumber`).
    pub seq: i64,
    /// The token that settles it.
    pub lock_token: String,
    /// Deliveries counted before this one.
    pub delivery_count: u32,
    /// The sender's `iothub-ack`.
    pub ack: AckMode,
    /// The message.
    pub message: CloudToDeviceMessage,
}

/// A batch of feedback records locked to the service reader.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackBatch {
    /// Completes or abandons the batch.
    pub lock_token: String,
    /// The records, oldest first.
    pub records: Vec<FeedbackRecord>,
}

/// The cloud-to-device queues of the hub.
pub struct CloudToDevice {
    store: Arc<dyn Store>,
    presence: Arc<Presence>,
    /// The cloud-to-device send throttle.
    throttles: Arc<Throttles>,
}

fn now_ms() -> i64 {
    clock::now().unix_millis()
}

fn new_token() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl CloudToDevice {
    /// The queues over `store`; connection locks left by a previous process
    /// are dropped (connections do not outlive it), and a task sweeps
    /// expired messages into their feedback.
    pub(crate) async fn open(
        store: Arc<dyn Store>,
        presence: Arc<Presence>,
        throttles: Arc<Throttles>,
    ) -> anyhow::Result<Arc<Self>> {
        let released = store
            .release_all_c2d_connection_locks()
            .await
            .map_err(|e| anyhow::anyhow!("releasing cloud-to-device locks: {e}"))?;
        if released > 0 {
            tracing::info!(released, "cloud-to-device messages held by old connections are queued again");
        }
        let this = Arc::new(Self { store, presence, throttles });
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(SWEEP_EVERY);
            loop {
                timer.tick().await;
                let Some(this) = weak.upgrade() else { return };
                if let Err(e) = this.store.expire_c2d(now_ms()).await {
                    tracing::warn!(%e, "cloud-to-device expiry sweep failed");
                }
            }
        });
        Ok(this)
    }

    /// Queues a message for a device (403004 when 50 are already waiting)
    /// and tells its connection, if any.
    pub async fn send(&self, device_id: &str, message: &CloudToDeviceMessage, ack: AckMode) -> HubResult<()> {
        self.throttles.check(Class::CloudToDevice, 1)?;
        self.throttles.meter(Metered::Message, message.body.len())?;
        let text = serde_json::to_string(message).map_err(|e| HubError::internal(e.to_string()))?;
        let new = NewC2d {
            message_id: message.message_id.clone(),
            ack,
            expiry_ms: message.expiry.unix_millis(),
            message: text,
        };
        self.store
            .enqueue_c2d_message(device_id, new, MAX_C2D_QUEUE, now_ms())
            .await
            .map_err(|e| store_error(e, Entity::Device(device_id)))?;
        self.nudge(device_id);
        Ok(())
    }

    /// Tells a device's live connection that messages are waiting.
    fn nudge(&self, device_id: &str) {
        let delivery = self.presence.send(device_id, Subscription::C2d, Outbound::C2dAvailable);
        tracing::debug!(device_id, ?delivery, "cloud-to-device queue nudged");
    }

    /// An HTTPS receive: the oldest available message, locked for a minute.
    pub async fn receive(&self, device_id: &str) -> HubResult<Option<Locked>> {
        self.throttles.check(Class::CloudToDeviceReceive, 1)?;
        let locked = self
            .store
            .receive_c2d(device_id, &new_token(), now_ms())
            .await
            .map_err(|e| store_error(e, Entity::Device(device_id)))?;
        match locked {
            Some(l) => Ok(decode(l)),
            None => Ok(None),
        }
    }

    /// Completes, rejects or abandons the message `lock_token` holds: 412
    /// DeviceMessageLockLost when it holds none (nothing changes then).
    pub async fn settle(&self, device_id: &str, lock_token: &str, settlement: Settlement) -> HubResult<()> {
        let settled = self
            .store
            .settle_c2d(device_id, lock_token, settlement, DEFAULT_MAX_DELIVERY_COUNT, now_ms())
            .await
            .map_err(|e| store_error(e, Entity::Device(device_id)))?;
        match settled {
            Settled::Done(after) => {
                tracing::debug!(device_id, ?settlement, ?after, "cloud-to-device message settled");
                if matches!(after, AfterSettle::Requeued { .. }) {
                    self.nudge(device_id);
                }
                Ok(())
            }
            Settled::LockLost => Err(HubError::lock_lost(lock_token)),
        }
    }

    /// MQTT: up to `limit` more messages locked to the connection.
    pub async fn lock_for_connection(
        &self,
        device_id: &str,
        connection_token: &str,
        limit: usize,
    ) -> HubResult<Vec<Locked>> {
        let locked = self
            .store
            .lock_c2d_for_connection(device_id, connection_token, limit, now_ms())
            .await
            .map_err(|e| store_error(e, Entity::Device(device_id)))?;
        Ok(locked.into_iter().filter_map(decode).collect())
    }

    /// MQTT PUBACK: completes a message the connection holds. False when it
    /// held none (expired meanwhile, or a stray PUBACK).
    pub async fn complete_for_connection(
        &self,
        device_id: &str,
        connection_token: &str,
        seq: i64,
    ) -> HubResult<bool> {
        let settled = self
            .store
            .complete_c2d_for_connection(device_id, connection_token, seq, now_ms())
            .await
            .map_err(|e| store_error(e, Entity::Device(device_id)))?;
        Ok(settled.done().is_some())
    }

    /// A connection ended: what it held goes back to the queue, counted as
    /// a delivery, and a newer connection of the device is told.
    pub async fn release_connection(&self, device_id: &str, connection_token: &str) -> HubResult<usize> {
        let released = self
            .store
            .release_c2d_connection(device_id, connection_token, DEFAULT_MAX_DELIVERY_COUNT, now_ms())
            .await
            .map_err(|e| store_error(e, Entity::Device(device_id)))?;
        if released > 0 {
            self.nudge(device_id);
        }
        Ok(released)
    }

    /// `DELETE /devices/{id}/commands`: empties the queue, returning how
    /// many messages went.
    pub async fn purge(&self, device_id: &str) -> HubResult<usize> {
        self.store.purge_c2d(device_id, now_ms()).await.map_err(|e| store_error(e, Entity::Device(device_id)))
    }

    /// The service's feedback receive: a locked batch, or `None` (204).
    pub async fn receive_feedback(&self) -> HubResult<Option<FeedbackBatch>> {
        let lock_token = new_token();
        let records = self
            .store
            .receive_feedback(&lock_token, FEEDBACK_BATCH_MAX, now_ms())
            .await
            .map_err(|e| store_error(e, Entity::Hub))?;
        Ok((!records.is_empty()).then_some(FeedbackBatch { lock_token, records }))
    }

    /// Completes (`abandon` false) or abandons a feedback batch: 412
    /// DeviceMessageLockLost when the token holds none.
    pub async fn settle_feedback(&self, lock_token: &str, abandon: bool) -> HubResult<()> {
        let now = now_ms();
        let settled = if abandon {
            self.store.abandon_feedback(lock_token, now).await
        } else {
            self.store.complete_feedback(lock_token, now).await
        }
        .map_err(|e| store_error(e, Entity::Hub))?;
        settled.done().map(drop).ok_or_else(|| HubError::lock_lost(lock_token))
    }
}

/// A stored message as transports see it; one that cannot be read (a bug
/// or a damaged row) is logged and skipped rather than block the queue.
fn decode(l: LockedC2d) -> Option<Locked> {
    match serde_json::from_str::<CloudToDeviceMessage>(&l.message) {
        Ok(message) => Some(Locked {
            seq: l.seq,
            lock_token: l.lock_token,
            delivery_count: l.delivery_count,
            ack: l.ack,
            message,
        }),
        Err(e) => {
            tracing::error!(%e, seq = l.seq, "unreadable queued message skipped");
            None
        }
    }
}
