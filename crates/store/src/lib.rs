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
#[derive(Debug, thiserror::Error)]
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
    /// The backend failed (IO, corruption, a bug).
    #[error("store backend error: {0}")]
    Backend(String),
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

    /// Replaces a device if its stored revision is `record.revision`; the
    /// stored revision becomes `record.revision + 1`.
    async fn update_device(&self, record: &DeviceRecord) -> StoreResult<()>;

    /// Deletes a device, if `expected_revision` is `None` or matches.
    async fn delete_device(&self, device_id: &str, expected_revision: Option<i64>) -> StoreResult<()>;

    /// Counts for the statistics endpoint.
    async fn device_counts(&self) -> StoreResult<DeviceCounts>;
}

pub(crate) fn status_text(status: DeviceStatus) -> &'static str {
    match status {
        DeviceStatus::Enabled => "enabled",
        DeviceStatus::Disabled => "disabled",
    }
}
