//! The one mapping from store failures to Azure's errors.
//!
//! The store knows rows, not what they mean; the caller names the entity
//! an operation was about, so "not found" says which kind of thing is
//! missing.

use ferrohub_core::{configuration, ErrorCode, HubError};
use ferrohub_store::StoreError;

/// What a failed store operation was about.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Entity<'a> {
    /// A device (its identity, twin, session or queue).
    Device(&'a str),
    /// An automatic device configuration.
    Configuration(&'a str),
    /// Something not tied to one id (counts, listings).
    Hub,
}

/// Azure's error for a store failure. Backend failures are logged here and
/// answered with a generic 500, so no internal detail reaches a client.
pub(crate) fn store_error(e: StoreError, about: Entity<'_>) -> HubError {
    match (e, about) {
        (StoreError::NotFound, Entity::Configuration(id)) => configuration::not_found(id),
        (StoreError::NotFound, Entity::Device(id)) => HubError::device_not_found(id),
        (StoreError::NotFound, Entity::Hub) => {
            HubError::new(ErrorCode::IotHubNotFound, "The requested resource does not exist")
        }
        (StoreError::AlreadyExists, Entity::Configuration(id)) => configuration::already_exists(id),
        (StoreError::AlreadyExists, Entity::Device(_) | Entity::Hub) => HubError::new(
            ErrorCode::DeviceAlreadyExists,
            format!("A device with ID '{id}' is already registered", id = id_of(about)),
        ),
        (StoreError::Conflict, _) => HubError::precondition_failed(),
        (StoreError::LimitReached, Entity::Configuration(_)) => {
            configuration::check_count(configuration::MAX_CONFIGURATIONS)
                .err()
                .unwrap_or_else(|| HubError::new(ErrorCode::IotHubQuotaExceeded, "Too many configurations"))
        }
        (StoreError::LimitReached, _) => {
            HubError::new(ErrorCode::IotHubQuotaExceeded, "A limit of this hub is reached")
        }
        (StoreError::QueueFull, about) => HubError::new(
            ErrorCode::DeviceMaximumQueueDepthExceeded,
            format!("The cloud-to-device queue of device {} is full", id_of(about)),
        ),
        (StoreError::Full, _) => {
            tracing::error!("store: the disk is full; writes are refused until space returns");
            HubError::new(
                ErrorCode::ServiceUnavailable,
                "The hub's storage is full; the operation was not made. Retry once space is freed",
            )
        }
        (StoreError::Backend(detail), _) => {
            tracing::error!(%detail, "store failure");
            HubError::internal("The hub could not complete the operation")
        }
    }
}

fn id_of(about: Entity<'_>) -> &str {
    match about {
        Entity::Device(id) | Entity::Configuration(id) => id,
        Entity::Hub => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_missing_kind() {
        let d = store_error(StoreError::NotFound, Entity::Device("d1"));
        assert_eq!(d.code, ErrorCode::DeviceNotFound);
        let c = store_error(StoreError::NotFound, Entity::Configuration("c1"));
        assert_eq!(c.code, ErrorCode::ConfigurationNotFound);
        let q = store_error(StoreError::QueueFull, Entity::Device("d1"));
        assert_eq!(q.code, ErrorCode::DeviceMaximumQueueDepthExceeded);
        let b = store_error(StoreError::Backend("disk on fire".into()), Entity::Hub);
        assert_eq!(b.code.http_status(), 500);
        assert!(!b.message.contains("disk"), "no internal detail reaches a client");
        // A full disk is worth a retry, so it is not an internal error.
        let f = store_error(StoreError::Full, Entity::Device("d1"));
        assert_eq!((f.code, f.code.http_status()), (ErrorCode::ServiceUnavailable, 503));
    }
}
