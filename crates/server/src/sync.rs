//! What a poisoned lock means here, decided once.
//!
//! A lock is poisoned when a thread panicked while holding it. Two kinds of
//! state live behind the hub's locks:
//!
//! - State a panic can leave half-written (the twin index and the metric
//!   counts it feeds, the configuration set, rollout summaries): the
//!   in-memory copy may then disagree with the store, and queries, metrics
//!   and rollouts would go silently wrong. [`or_stop`] ends the process
//!   instead — loudly, with the lock's name — so it restarts from the
//!   store, which holds every acknowledged write.
//! - State whose every critical section is one operation on a map or a
//!   cell (presence, pending method calls, a write's notification slot):
//!   nothing can be half-done, so [`consistent`] takes the guard back and
//!   logs the poisoning. Each caller says why its sections qualify.

use std::sync::{LockResult, PoisonError};

/// The guard, or the end of the process when the lock is poisoned.
pub(crate) fn or_stop<G>(result: LockResult<G>, what: &'static str) -> G {
    result.unwrap_or_else(|_: PoisonError<G>| {
        tracing::error!(
            what,
            "a thread panicked while changing this state; stopping so the hub restarts from its store"
        );
        eprintln!("ferrohub: {what} was left inconsistent by a panic; stopping");
        std::process::abort()
    })
}

/// The guard, also of a poisoned lock: for locks whose critical sections
/// cannot leave the data half-changed.
pub(crate) fn consistent<G>(result: LockResult<G>, what: &'static str) -> G {
    result.unwrap_or_else(|p| {
        tracing::warn!(what, "lock poisoned by a panic; its data is whole (single-step updates)");
        p.into_inner()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_consistent_lock_survives_a_panic_with_its_data() {
        let m = Mutex::new(1);
        let _ = std::panic::catch_unwind(|| {
            let _g = m.lock();
            panic!("boom");
        });
        assert!(m.is_poisoned());
        assert_eq!(*consistent(m.lock(), "test"), 1);
    }
}
