//! `lastActivityTime`, whichever transport the device used: a device's
//! activity is flushed to its identity at most once a minute, best effort
//! (not acknowledged to anyone), so a busy device costs one store write a
//! minute rather than one per message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::registry::Registry;
use crate::clock;

/// How often a busy device's `lastActivityTime` is written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);

/// Devices remembered before the stale entries are swept: the map only
/// needs the devices active within the last [`FLUSH_EVERY`].
const SWEEP_ABOVE: usize = 65_536;

/// When each recently active device was last written.
pub struct Activity {
    registry: Registry,
    written: Mutex<HashMap<String, Instant>>,
}

impl Activity {
    pub(crate) fn new(registry: Registry) -> Self {
        Self { registry, written: Mutex::default() }
    }

    /// The device's activity was just stored by another write (a connect
    /// records `lastActivityTime` with the connection state).
    pub fn stored(&self, device_id: &str) {
        self.claim(device_id, Instant::now(), true);
    }

    /// The device did something; writes `lastActivityTime` in the
    /// background unless that happened within the last minute.
    pub fn seen(&self, device_id: &str) {
        if !self.claim(device_id, Instant::now(), false) {
            return;
        }
        let (registry, device_id) = (self.registry.clone(), device_id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = registry.touch_activity(&device_id, clock::now()).await {
                tracing::debug!(device_id, %e, "could not record activity");
            }
        });
    }

    /// Records a write at `now` and says whether one is due (`force`: it
    /// already happened).
    fn claim(&self, device_id: &str, now: Instant, force: bool) -> bool {
        // One lookup and one insert (or a sweep) per section: nothing can be
        // left half-done.
        let mut written = crate::sync::consistent(self.written.lock(), "activity");
        if !force && written.get(device_id).is_some_and(|t| now.duration_since(*t) < FLUSH_EVERY) {
            return false;
        }
        if written.len() >= SWEEP_ABOVE {
            written.retain(|_, t| now.duration_since(*t) < FLUSH_EVERY);
        }
        written.insert(device_id.to_owned(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    fn activity() -> (tempfile::TempDir, Activity) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ferrohub_store::SqliteStore::open(&dir.path().join("hub.db")).unwrap());
        let (registry, _) = Registry::new(store, Arc::default());
        (dir, Activity::new(registry))
    }

    #[tokio::test]
    async fn a_device_is_written_at_most_once_a_minute() {
        let (_dir, a) = activity();
        let t0 = Instant::now();
        assert!(a.claim("d", t0, false), "the first sign of life is written");
        assert!(!a.claim("d", t0 + Duration::from_secs(59), false));
        assert!(a.claim("e", t0 + Duration::from_secs(59), false), "per device");
        assert!(a.claim("d", t0 + FLUSH_EVERY, false));
        a.stored("f");
        assert!(!a.claim("f", Instant::now() + Duration::from_secs(1), false), "a connect counts as written");
    }
}
