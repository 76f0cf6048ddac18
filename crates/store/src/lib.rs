//! Durable storage for ferrohub, behind the [`Store`] trait.
//!
//! The service layer above only sees the trait, so the SQLite backend here
//! and a PostgreSQL backend later are interchangeable. Concurrency control is
//! optimistic: every device row carries a `revision`, and a write names the
//! revision it was computed from; a mismatch is [`StoreError::Conflict`] and
//! the caller recomputes. That keeps read-modify-write rules (etags, twin
//! merges) in the pure core and works the same on every backend.

mod c2d;
mod migrations;
mod sqlite;

use async_trait::async_trait;
use ferrohub_core::c2d::{AfterSettle, FeedbackRecord, Settlement};
use ferrohub_core::identity::{Device, DeviceStatus};
use ferrohub_core::twin::TwinState;
use serde::{Deserialize, Serialize};

pub use c2d::{LockedC2d, NewC2d, Settled};
pub use sqlite::SqliteStore;

/// One device: its identity and its twin, stored together so that an identity
/// change and the twin's copy of it commit atomically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The identity.
    pub device: Device,
    /// The twin.
    pub twin: TwinState,
    /// Store-assigned; +1 on every write. Not an etag: never shown to clients.
    pub revision: i64,
}

/// Device counts for `GET /statistics/devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceCounts {
    /// All devices.
    pub total: u64,
    /// Devices with status enabled.
    pub enabled: u64,
    /// Devices with status disabled.
    pub disabled: u64,
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The device does not exist.
    #[error("device not found")]
    NotFound,
    /// A create named a device that exists.
    #[error("device already exists")]
    AlreadyExists,
    /// The row changed since it was read; re-read and retry.
    #[error("concurrent modification")]
    Conflict,
    /// A create would exceed a count limit (e.g. 100 configurations).
    #[error("limit reached")]
    LimitReached,
    /// The device's cloud-to-device queue is at its limit.
    #[error("cloud-to-device queue full")]
    QueueFull,
    /// The disk holding the store is full: nothing was written, and the same
    /// write may succeed once space returns.
    #[error("no space left for the store")]
    Full,
    /// The backend failed (IO, corruption, a bug).
    #[error("store backend error: {0}")]
    Backend(String),
}

/// A stored configuration: its JSON document (the caller's type) and the
/// store's revision for optimistic concurrency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConfiguration {
    /// The configuration id.
    pub id: String,
    /// The configuration, serialised by the caller.
    pub document: String,
    /// +1 on every write.
    pub revision: i64,
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything the hub persists. Each method returns only after its write is
/// durably committed.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The device with this id, if any.
    async fn get_device(&self, device_id: &str) -> StoreResult<Option<DeviceRecord>>;

    /// Up to `limit` identities, ordered by device id.
    async fn list_devices(&self, limit: usize) -> StoreResult<Vec<Device>>;

    /// Stores a new device (its `revision` is ignored and set to 1).
    async fn create_device(&self, record: &DeviceRecord) -> StoreResult<()>;

    /// Stores many new devices in one transaction (revisions set to 1): all
    /// of them, or none when any id exists ([`StoreError::AlreadyExists`]).
    /// For bulk loading (the benchmark seeder); callers keep batches to a
    /// few thousand rows.
    async fn create_devices_bulk(&self, records: &[DeviceRecord]) -> StoreResult<()>;

    /// Replaces a device if its stored revision is `record.revision`; the
    /// stored revision becomes `record.revision + 1`.
    async fn update_device(&self, record: &DeviceRecord) -> StoreResult<()>;

    /// Deletes a device, if `expected_revision` is `None` or matches.
    async fn delete_device(&self, device_id: &str, expected_revision: Option<i64>) -> StoreResult<()>;

    /// Counts for the statistics endpoint.
    async fn device_counts(&self) -> StoreResult<DeviceCounts>;

    /// Marks every device disconnected (at start: connections do not
    /// outlive the hub process).
    async fn disconnect_all(&self) -> StoreResult<()>;

    /// The subscriptions of a device's persistent MQTT session, if it has one.
    async fn load_session(&self, device_id: &str) -> StoreResult<Option<u8>>;

    /// Stores (or replaces) a device's persistent MQTT session.
    async fn save_session(&self, device_id: &str, subscriptions: u8) -> StoreResult<()>;

    /// Forgets a device's persistent MQTT session.
    async fn delete_session(&self, device_id: &str) -> StoreResult<()>;

    // The cloud-to-device queue. One queue per device serves every
    // transport; a message is locked to one receiver at a time. Callers pass
    // `now_ms` (Unix milliseconds): the store reads no clock for these
    // rules. Every write first expires the device's messages whose time to
    // live has passed (writing their Expired feedback), so expired messages
    // never count, lock or settle.

    /// Appends a message to a device's queue unless it already holds
    /// `max_depth` unexpired ones, locked or not ([`StoreError::QueueFull`]);
    /// [`StoreError::NotFound`] when the device does not exist. The device's
    /// generation id is stored with it for the feedback. Returns its `seq`.
    async fn enqueue_c2d_message(
        &self,
        device_id: &str,
        message: NewC2d,
        max_depth: usize,
        now_ms: i64,
    ) -> StoreResult<i64>;

    /// A receive (HTTPS; AMQP later): locks the oldest available message
    /// for `ferrohub_core::c2d::LOCK_DURATION_MS` under `lock_token` (a
    /// fresh UUID from the caller). `None` when nothing is available. A lock
    /// that runs out makes the message available again with its delivery
    /// count unchanged, and its token stops working.
    async fn receive_c2d(
        &self,
        device_id: &str,
        lock_token: &str,
        now_ms: i64,
    ) -> StoreResult<Option<LockedC2d>>;

    /// Settles the message a receive lock holds: complete, reject or
    /// abandon (the rule is `ferrohub_core::c2d::settle`; an abandon counts
    /// a delivery and the one reaching `max_delivery_count` dead-letters).
    /// Writes the feedback the message's ack mode asks for in the same
    /// transaction. [`Settled::LockLost`] (nothing changed) when the token
    /// holds no message of this device: unknown, run out, already settled,
    /// a connection's token, or the message expired.
    async fn settle_c2d(
        &self,
        device_id: &str,
        lock_token: &str,
        settlement: Settlement,
        max_delivery_count: u32,
        now_ms: i64,
    ) -> StoreResult<Settled<AfterSettle>>;

    /// MQTT: locks up to `limit` available messages, oldest first, to the
    /// connection `connection_token` (one token per connection, chosen by
    /// the caller), with no end: they stay locked until completed or
    /// released. Messages the connection already holds are not returned
    /// again.
    async fn lock_c2d_for_connection(
        &self,
        device_id: &str,
        connection_token: &str,
        limit: usize,
        now_ms: i64,
    ) -> StoreResult<Vec<LockedC2d>>;

    /// MQTT PUBACK: completes message `seq` held by the connection (with
    /// Success feedback when asked for). [`Settled::LockLost`] (nothing
    /// changed) when the connection does not hold it (or it expired).
    async fn complete_c2d_for_connection(
        &self,
        device_id: &str,
        connection_token: &str,
        seq: i64,
        now_ms: i64,
    ) -> StoreResult<Settled<()>>;

    /// MQTT connection end: every message the connection still holds goes
    /// back to the queue, counting a delivery each (an implicit abandon:
    /// `ferrohub_core::c2d::release_unacknowledged`); one reaching
    /// `max_delivery_count` is dead-lettered with its feedback. Returns how
    /// many messages were released.
    async fn release_c2d_connection(
        &self,
        device_id: &str,
        connection_token: &str,
        max_delivery_count: u32,
        now_ms: i64,
    ) -> StoreResult<usize>;

    /// At start: connections do not outlive the hub process, so every
    /// connection lock is dropped, without counting a delivery (the hub
    /// stopped, not the device). Receive locks keep their end. Returns how
    /// many messages were unlocked.
    async fn release_all_c2d_connection_locks(&self) -> StoreResult<usize>;

    /// Deletes every message of a device's queue, locked or not, writing
    /// Purged feedback where the ack mode asks for it (already expired ones
    /// get Expired). Returns how many were purged (`totalMessagesPurged`);
    /// [`StoreError::NotFound`] when the device does not exist.
    async fn purge_c2d(&self, device_id: &str, now_ms: i64) -> StoreResult<usize>;

    /// The periodic sweep: expires every device's messages past their time
    /// to live (Expired feedback dated at the expiry) and drops feedback
    /// past `ferrohub_core::c2d::FEEDBACK_TTL_MS` that no reader holds.
    /// Returns how many messages expired.
    async fn expire_c2d(&self, now_ms: i64) -> StoreResult<usize>;

    /// The service's feedback receive: runs the sweep of
    /// [`Store::expire_c2d`], then locks up to `max` available feedback
    /// records, oldest first, for `ferrohub_core::c2d::FEEDBACK_LOCK_DURATION_MS`
    /// under `lock_token` (a fresh UUID from the caller). Empty when there is
    /// nothing (the route answers 204). Feedback outlives its device.
    async fn receive_feedback(
        &self,
        lock_token: &str,
        max: usize,
        now_ms: i64,
    ) -> StoreResult<Vec<FeedbackRecord>>;

    /// Deletes the feedback batch `lock_token` holds; returns how many
    /// records. [`Settled::LockLost`] (nothing changed) when it holds none.
    async fn complete_feedback(&self, lock_token: &str, now_ms: i64) -> StoreResult<Settled<usize>>;

    /// Puts the feedback batch `lock_token` holds back, counting a delivery
    /// per record (a record reaching
    /// `ferrohub_core::c2d::FEEDBACK_MAX_DELIVERY_COUNT` is dropped);
    /// returns how many records. [`Settled::LockLost`] (nothing changed)
    /// when it holds none.
    async fn abandon_feedback(&self, lock_token: &str, now_ms: i64) -> StoreResult<Settled<usize>>;

    /// Every device record (for full evaluations and queries).
    async fn all_devices(&self) -> StoreResult<Vec<DeviceRecord>>;

    /// Up to `limit` device records with ids after `after` (from the first
    /// when `None`), ordered by device id: reads every record page by page,
    /// in bounded memory.
    async fn devices_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<DeviceRecord>>;

    /// All configurations, ordered by id.
    async fn list_configurations(&self) -> StoreResult<Vec<StoredConfiguration>>;

    /// One configuration.
    async fn get_configuration(&self, id: &str) -> StoreResult<Option<StoredConfiguration>>;

    /// Stores a new configuration unless the id exists
    /// ([`StoreError::AlreadyExists`]) or `max` already exist
    /// ([`StoreError::LimitReached`]).
    async fn create_configuration(&self, id: &str, document: String, max: usize) -> StoreResult<()>;

    /// Replaces a configuration if its revision is `expected_revision`.
    async fn update_configuration(
        &self,
        id: &str,
        document: String,
        expected_revision: i64,
    ) -> StoreResult<()>;

    /// Deletes a configuration.
    async fn delete_configuration(&self, id: &str) -> StoreResult<()>;
}

pub(crate) fn status_text(status: DeviceStatus) -> &'static str {
    match status {
        DeviceStatus::Enabled => "enabled",
        DeviceStatus::Disabled => "disabled",
    }
}
