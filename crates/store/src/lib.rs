//! Durable storage for ferrohub, behind the [`Store`] trait.
//!
//! The service layer above only sees the trait, so the SQLite backend here
//! and a PostgreSQL backend later are interchangeable. Concurrency control is
//! optimistic: every device row carries a `revision`, and a write names the
//! revision it was computed from; a mismatch is [`StoreError::Conflict`] and
//! the caller recomputes. That keeps read-modify-write rules (etags, twin
//! merges) in the pure core and works the same on every backend.

mod migrations;
mod sqlite;

use async_trait::async_trait;
use ferrohub_core::identity::{Device, DeviceStatus};
use ferrohub_core::twin::TwinState;
use serde::{Deserialize, Serialize};

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
    /// The backend failed (IO, corruption, a bug).
    #[error("store backend error: {0}")]
    Backend(String),
}

/// A queued cloud-to-device message as stored. The message itself is
/// opaque JSON to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredC2d {
    /// Position in the device's queue (increasing).
    pub seq: i64,
    /// When it expires (Unix seconds).
    pub expiry_unix: i64,
    /// How often it was sent without being completed.
    pub delivery_count: i64,
    /// The message, serialised by the caller.
    pub message: String,
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

    /// Appends a cloud-to-device message unless the device already has
    /// `max_depth` unexpired ones ([`StoreError::QueueFull`]); expired ones
    /// are dropped first. Returns the new message's `seq`.
    async fn enqueue_c2d(
        &self,
        device_id: &str,
        expiry_unix: i64,
        message: String,
        max_depth: usize,
        now_unix: i64,
    ) -> StoreResult<i64>;

    /// Up to `limit` unexpired messages with `seq > after`, oldest first.
    async fn pending_c2d(
        &self,
        device_id: &str,
        after: i64,
        now_unix: i64,
        limit: usize,
    ) -> StoreResult<Vec<StoredC2d>>;

    /// Counts a delivery attempt.
    async fn mark_c2d_delivered(&self, device_id: &str, seq: i64) -> StoreResult<()>;

    /// Removes a message the device acknowledged.
    async fn complete_c2d(&self, device_id: &str, seq: i64) -> StoreResult<()>;

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
