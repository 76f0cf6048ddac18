//! The hub's one clock read, so the core stays free of it.

use ferrohub_core::time::Timestamp;

/// Now, as a core timestamp.
pub(crate) fn now() -> Timestamp {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default();
    Timestamp::from_unix_nanos(nanos)
}

/// Now, in whole Unix seconds (SAS expiry checks).
pub(crate) fn unix_seconds() -> i64 {
    now().unix_seconds()
}
