//! The daily message quota of a hub: `ferrohub_core::daily_quota`'s count
//! behind a lock, fed the wall clock's UTC day, kept in the data dir.
//!
//! The count is written to `daily-usage.json` at most every few seconds by
//! a background task and once more when the hub stops, so a restart does
//! not hand out a fresh day's allowance. A crash forgets at most the last
//! few seconds' messages (docs/decisions.md): the quota is an operator's
//! guard against runaway devices, not a bill.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ferrohub_core::daily_quota::{DailyQuota, DailyUsage, Exhausted, Metered};
use ferrohub_core::time::Timestamp;
use ferrohub_core::{ErrorCode, HubError, HubResult};
use serde::{Deserialize, Serialize};

/// The file the day's count is kept in.
pub const USAGE_FILE: &str = "daily-usage.json";

/// How often a changed count is written.
pub const PERSIST_EVERY: Duration = Duration::from_secs(5);

/// The stored form of the count.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// Days since the Unix epoch, UTC.
    day: i64,
    used: u64,
}

/// One hub's daily quota; without one, every call is free and takes no lock.
#[derive(Default)]
pub struct DailyMeter {
    quota: Option<DailyQuota>,
    usage: Mutex<DailyUsage>,
    file: Option<PathBuf>,
    dirty: AtomicBool,
}

/// The day's allowance and what was used of it, as `/statistics/service`
/// shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyStat {
    /// Messages per UTC day.
    pub limit: u64,
    /// Messages counted today.
    pub used: u64,
}

fn today() -> i64 {
    DailyUsage::day_of(crate::clock::unix_seconds())
}

impl DailyMeter {
    /// A meter for `quota` whose count lives in `data_dir` (read back from
    /// an earlier run of the same day). An unreadable file is an error: it
    /// is the hub's own, and starting from zero would grant a new day.
    pub fn open(data_dir: &Path, quota: Option<DailyQuota>) -> anyhow::Result<Self> {
        let file = data_dir.join(USAGE_FILE);
        let usage = match std::fs::read(&file) {
            Ok(bytes) => {
                let s: Stored = serde_json::from_slice(&bytes)
                    .map_err(|e| anyhow::anyhow!("{} is not a daily usage record: {e}", file.display()))?;
                DailyUsage::new(s.day, s.used)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DailyUsage::default(),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", file.display())),
        };
        Ok(Self { quota, usage: Mutex::new(usage), file: Some(file), dirty: AtomicBool::new(false) })
    }

    /// A meter kept in memory only (tests).
    pub fn in_memory(quota: Option<DailyQuota>) -> Self {
        Self { quota, ..Self::default() }
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, DailyUsage> {
        crate::sync::consistent(self.usage.lock(), "daily usage")
    }

    /// Counts an operation of `bytes` bytes against the day's quota, or
    /// refuses it with 403 IotHubQuotaExceeded once the quota is used.
    pub fn admit(&self, kind: Metered, bytes: usize) -> HubResult<()> {
        let Some(quota) = self.quota else { return Ok(()) };
        let cost = quota.cost(kind, bytes);
        self.usage().admit(quota.messages, today(), cost).map_err(exhausted)?;
        self.dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// [`admit`](Self::admit) for several operations at once: all of them
    /// fit, or none is counted.
    pub fn admit_batch(&self, kind: Metered, sizes: impl Iterator<Item = usize>) -> HubResult<()> {
        let Some(quota) = self.quota else { return Ok(()) };
        let cost = sizes.map(|b| quota.cost(kind, b)).fold(0u64, u64::saturating_add);
        self.usage().admit(quota.messages, today(), cost).map_err(exhausted)?;
        self.dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Counts `bytes` more of an operation already admitted (the rest of a
    /// twin read once its size is known, a method's response): what was
    /// carried out is counted, never refused. The first chunk was counted
    /// by [`admit`](Self::admit), so it is not counted again.
    pub fn charge_rest(&self, kind: Metered, bytes: usize) {
        let Some(quota) = self.quota else { return };
        let cost = quota.cost(kind, bytes).saturating_sub(1);
        if cost > 0 {
            self.usage().charge(today(), cost);
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Counts a whole operation already carried out.
    pub fn charge(&self, kind: Metered, bytes: usize) {
        let Some(quota) = self.quota else { return };
        self.usage().charge(today(), quota.cost(kind, bytes));
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Whether operations are metered at all (callers skip measuring sizes
    /// when not).
    pub fn is_metered(&self) -> bool {
        self.quota.is_some()
    }

    /// The allowance and today's count; `None` without a quota.
    pub fn stat(&self) -> Option<DailyStat> {
        let quota = self.quota?;
        Some(DailyStat { limit: quota.messages, used: self.usage().used(today()) })
    }

    /// Writes the count if it changed since the last write.
    pub fn persist(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let usage = *self.usage();
        let stored = Stored { day: usage.day(), used: usage.used(usage.day()) };
        let json = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
        crate::fsutil::write_private(file, &json).inspect_err(|_| self.dirty.store(true, Ordering::Relaxed))
    }
}

fn exhausted(e: Exhausted) -> HubError {
    let resets = Timestamp::from_unix_millis(e.resets_at.saturating_mul(1000)).to_iso();
    HubError::new(
        ErrorCode::IotHubQuotaExceeded,
        format!(
            "Total number of messages on the hub exceeded the allocated quota. Max allowed message count: {}, current message count: {}. Reset time: {resets}",
            e.limit, e.used
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferrohub_core::throttle::Tier;

    fn quota(messages: u64) -> Option<DailyQuota> {
        Some(DailyQuota { messages, message_chunk: 4096 })
    }

    #[test]
    fn without_a_quota_nothing_is_counted() {
        let m = DailyMeter::in_memory(None);
        for _ in 0..1000 {
            m.admit(Metered::Message, 1 << 20).unwrap();
        }
        assert_eq!(m.stat(), None);
        assert!(!m.is_metered());
    }

    #[test]
    fn the_quota_refuses_with_iot_hubs_error_once_used() {
        let m = DailyMeter::in_memory(quota(3));
        m.admit(Metered::Message, 10).unwrap();
        m.admit(Metered::Twin, 600).unwrap();
        let e = m.admit(Metered::Message, 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::IotHubQuotaExceeded);
        assert_eq!(e.code.http_status(), 403);
        assert!(e.message.contains("Max allowed message count: 3"), "{}", e.message);
        assert_eq!(m.stat(), Some(DailyStat { limit: 3, used: 3 }));
    }

    #[test]
    fn the_rest_of_an_admitted_operation_is_charged_past_the_limit() {
        let m = DailyMeter::in_memory(quota(2));
        m.admit(Metered::Twin, 1).unwrap();
        // A 2 KB twin read: four chunks, one already admitted.
        m.charge_rest(Metered::Twin, 2048);
        assert_eq!(m.stat().unwrap().used, 4);
        m.charge(Metered::Message, 5000);
        assert_eq!(m.stat().unwrap().used, 6);
    }

    #[test]
    fn the_count_survives_a_restart_of_the_same_day() {
        let dir = tempfile::tempdir().unwrap();
        let free = DailyQuota::for_tier(Tier::Free, 1);
        let m = DailyMeter::open(dir.path(), free).unwrap();
        m.admit(Metered::Message, 1024).unwrap();
        m.persist().unwrap();
        let again = DailyMeter::open(dir.path(), free).unwrap();
        assert_eq!(again.stat().unwrap().used, 2);
        std::fs::write(dir.path().join(USAGE_FILE), b"{not json").unwrap();
        assert!(DailyMeter::open(dir.path(), free).is_err());
    }
}
