//! ferrohub's pure core: the IoT Hub domain without IO.
//!
//! - [`error`]: Azure error codes and their HTTP statuses.
//! - [`c2d`]: cloud-to-device delivery rules: locks, settlements,
//!   dead-lettering, feedback.
//! - [`identity`]: device identities and the registry's rules.
//! - [`twin`]: twin documents, patch semantics, versions, metadata, limits.
//! - [`configuration`]: automatic device configurations and which one writes
//!   which desired property.
//! - [`rollout`]: staged firmware rollouts: waves, thresholds, per-device
//!   results.
//! - [`precondition`]: `If-Match` etag preconditions.
//! - [`sas`]: shared access signature tokens, policies and permissions.
//! - [`connection_string`]: IoT Hub connection strings.
//! - [`throttle`]: IoT Hub's operation throttles as rate limits (time passed in).
//! - [`time`]: timestamps in IoT Hub's text form.
//! - [`fuzz`]: the fuzz targets' entry points (also replayed by `cargo test`).

pub mod c2d;
pub mod configuration;
pub mod connection_string;
pub mod daily_quota;
pub mod error;
pub mod escape;
pub mod firmware;
pub mod fuzz;
pub mod identity;
pub mod message;
pub mod precondition;
pub mod rollout;
pub mod sas;
pub mod throttle;
pub mod time;
pub mod twin;

pub use error::{ErrorCode, HubError, HubResult};
