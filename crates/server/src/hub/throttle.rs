//! The hub's throttles: `ferrohub_core::throttle`'s buckets behind a lock,
//! fed the process's monotonic clock, with a counter per class of how many
//! operations were refused (or, for paced MQTT telemetry, delayed).
//!
//! Every check of a class goes through here, called from the one hub
//! function each operation passes (see ARCHITECTURE.md); a class without a
//! limit costs one array read and takes no lock, so an unlimited hub (the
//! default) runs as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use ferrohub_core::daily_quota::Metered;
use ferrohub_core::throttle::{Class, Gcra, Keyed, Quota, Quotas};
use ferrohub_core::{HubError, HubResult};

use super::daily_meter::{DailyMeter, DailyStat, PERSIST_EVERY};

/// One hub's throttles.
pub struct Throttles {
    quotas: Quotas,
    /// Where this process's instants count from.
    origin: Instant,
    /// One bucket per class, hub-wide.
    hub: Mutex<[Gcra; Class::ALL.len()]>,
    /// Per-device telemetry buckets.
    devices: Mutex<Keyed<String>>,
    throttled: [AtomicU64; Class::ALL.len()],
    /// The daily message quota (none by default).
    daily: DailyMeter,
    /// Operations refused because the day's quota was used.
    over_quota: AtomicU64,
}

impl Default for Throttles {
    fn default() -> Self {
        Self::new(Quotas::default())
    }
}

/// One class's limit and how often it bit, as `/statistics/service` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleStat {
    /// The class.
    pub class: Class,
    /// Its limit; `None` = unlimited.
    pub limit: Option<Quota>,
    /// Operations refused (or, for MQTT telemetry, delayed) so far.
    pub throttled: u64,
}

fn index(class: Class) -> usize {
    Class::ALL.iter().position(|c| *c == class).unwrap_or(0)
}

impl Throttles {
    /// Throttles with these limits, every bucket full.
    pub fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            origin: Instant::now(),
            hub: Mutex::new([Gcra::default(); Class::ALL.len()]),
            devices: Mutex::default(),
            throttled: Default::default(),
            daily: DailyMeter::default(),
            over_quota: AtomicU64::new(0),
        }
    }

    /// These throttles with a daily message quota.
    pub fn with_daily(mut self, daily: DailyMeter) -> Self {
        self.daily = daily;
        self
    }

    /// Counts an operation of `bytes` bytes against the daily quota, or
    /// refuses it (403 IotHubQuotaExceeded) once the day's quota is used.
    pub fn meter(&self, kind: Metered, bytes: usize) -> HubResult<()> {
        self.daily.admit(kind, bytes).inspect_err(|_| {
            self.over_quota.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Counts a batch of messages (an HTTPS telemetry batch) against the
    /// daily quota whole: all of them, or none with 403.
    pub fn meter_batch(&self, kind: Metered, sizes: impl Iterator<Item = usize>) -> HubResult<()> {
        self.daily.admit_batch(kind, sizes).inspect_err(|_| {
            self.over_quota.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Counts an operation whose size `f` gives (a serialized twin, say)
    /// against the daily quota; `f` runs only when the hub has one.
    pub fn meter_with(&self, kind: Metered, f: impl FnOnce() -> usize) -> HubResult<()> {
        if self.daily.is_metered() {
            self.meter(kind, f())
        } else {
            Ok(())
        }
    }

    /// Counts what an admitted operation turned out to cost beyond its
    /// first chunk (a twin read, a query's results).
    pub fn meter_rest(&self, kind: Metered, f: impl FnOnce() -> usize) {
        if self.daily.is_metered() {
            self.daily.charge_rest(kind, f());
        }
    }

    /// Counts a whole operation that was carried out (a method's response).
    pub fn meter_done(&self, kind: Metered, bytes: usize) {
        self.daily.charge(kind, bytes);
    }

    /// The daily quota and today's count, and how many operations it
    /// refused; `None` without a quota.
    pub fn daily(&self) -> Option<(DailyStat, u64)> {
        self.daily.stat().map(|s| (s, self.over_quota.load(Ordering::Relaxed)))
    }

    /// Writes the daily count if it changed.
    pub fn persist_daily(&self) {
        if let Err(e) = self.daily.persist() {
            tracing::warn!(%e, "writing the daily message count failed");
        }
    }

    /// Writes the daily count every few seconds while the throttles live.
    pub fn spawn_daily_persister(this: Weak<Self>) {
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(PERSIST_EVERY);
            loop {
                timer.tick().await;
                let Some(throttles) = this.upgrade() else { return };
                throttles.persist_daily();
            }
        });
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn count(&self, class: Class) {
        self.throttled[index(class)].fetch_add(1, Ordering::Relaxed);
    }

    /// Admits `cost` operations of a hub-wide class now, or refuses them
    /// with 429 ThrottlingException and the wait until they would fit.
    pub fn check(&self, class: Class, cost: u32) -> HubResult<()> {
        let Some(quota) = self.quotas.get(class) else { return Ok(()) };
        let now = self.now();
        // Each section is one bucket update.
        let result =
            crate::sync::consistent(self.hub.lock(), "throttles")[index(class)].admit(quota, now, cost);
        result.map_err(|wait| {
            self.count(class);
            HubError::throttled(class.name(), wait)
        })
    }

    /// Admits `count` telemetry messages of `device_id` (an HTTPS send or
    /// batch) against both the device's and the hub's rate, taking from
    /// neither unless both hold them.
    pub fn admit_telemetry(&self, device_id: &str, count: u32) -> HubResult<()> {
        let device_quota = self.quotas.get(Class::DeviceToCloudPerDevice);
        let hub_quota = self.quotas.get(Class::DeviceToCloud);
        if device_quota.is_none() && hub_quota.is_none() {
            return Ok(());
        }
        let now = self.now();
        let key = device_id.to_owned();
        // Lock order: devices, then the hub's buckets.
        let mut devices = crate::sync::consistent(self.devices.lock(), "device throttles");
        let mut hub = crate::sync::consistent(self.hub.lock(), "throttles");
        let mut device_bucket = device_quota.map(|_| *devices.bucket(&key, now));
        let mut hub_bucket = hub[index(Class::DeviceToCloud)];
        let refused = |class: Class, wait| {
            self.count(class);
            Err(HubError::throttled(class.name(), wait))
        };
        if let (Some(q), Some(b)) = (device_quota, device_bucket.as_mut()) {
            if let Err(wait) = b.admit(q, now, count) {
                return refused(Class::DeviceToCloudPerDevice, wait);
            }
        }
        if let Some(q) = hub_quota {
            if let Err(wait) = hub_bucket.admit(q, now, count) {
                return refused(Class::DeviceToCloud, wait);
            }
        }
        if let Some(b) = device_bucket {
            *devices.bucket(&key, now) = b;
        }
        hub[index(Class::DeviceToCloud)] = hub_bucket;
        Ok(())
    }

    /// Books one telemetry message of `device_id` against both rates and
    /// says how long to hold it (and its PUBACK) before accepting it: MQTT
    /// telemetry is paced, never refused. A delayed message is counted
    /// under the class that delayed it most.
    pub fn pace_telemetry(&self, device_id: &str) -> Duration {
        let device_quota = self.quotas.get(Class::DeviceToCloudPerDevice);
        let hub_quota = self.quotas.get(Class::DeviceToCloud);
        if device_quota.is_none() && hub_quota.is_none() {
            return Duration::ZERO;
        }
        let now = self.now();
        let device_wait = device_quota.map_or(Duration::ZERO, |q| {
            crate::sync::consistent(self.devices.lock(), "device throttles").reserve(
                &device_id.to_owned(),
                q,
                now,
                1,
            )
        });
        // The hub's slot is booked for when the device's own allows it, so
        // a device held by its own rate does not also take hub slots early.
        let hub_wait = hub_quota.map_or(Duration::ZERO, |q| {
            crate::sync::consistent(self.hub.lock(), "throttles")[index(Class::DeviceToCloud)].reserve(
                q,
                now + device_wait,
                1,
            ) + device_wait
        });
        let wait = device_wait.max(hub_wait);
        if !wait.is_zero() {
            self.count(if hub_wait > device_wait {
                Class::DeviceToCloud
            } else {
                Class::DeviceToCloudPerDevice
            });
        }
        wait
    }

    /// Every class's limit and refusal count, in [`Class::ALL`]'s order.
    pub fn stats(&self) -> Vec<ThrottleStat> {
        Class::ALL
            .into_iter()
            .map(|class| ThrottleStat {
                class,
                limit: self.quotas.get(class),
                throttled: self.throttled[index(class)].load(Ordering::Relaxed),
            })
            .collect()
    }

    /// How many operations of `class` were throttled so far.
    pub fn throttled(&self, class: Class) -> u64 {
        self.throttled[index(class)].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferrohub_core::ErrorCode;

    fn quotas(specs: &[&str]) -> Quotas {
        let mut q = Quotas::default();
        for s in specs {
            q.apply_override(s).unwrap();
        }
        q
    }

    #[test]
    fn unlimited_classes_never_refuse_or_count() {
        let t = Throttles::default();
        for _ in 0..10_000 {
            t.check(Class::TwinRead, 1).unwrap();
            t.admit_telemetry("d", 1).unwrap();
            assert_eq!(t.pace_telemetry("d"), Duration::ZERO);
        }
        assert!(t.stats().iter().all(|s| s.throttled == 0 && s.limit.is_none()));
    }

    #[test]
    fn a_refusal_is_429_with_a_retry_after_and_is_counted() {
        let t = Throttles::new(quotas(&["twin-read=1/min"]));
        t.check(Class::TwinRead, 1).unwrap();
        let e = t.check(Class::TwinRead, 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::ThrottlingException);
        assert!(e.retry_after_secs().unwrap() > 50, "{e:?}");
        assert_eq!(t.throttled(Class::TwinRead), 1);
        // Other classes have their own buckets.
        t.check(Class::TwinUpdate, 1).unwrap();
    }

    #[test]
    fn telemetry_takes_from_neither_bucket_unless_both_hold_it() {
        let t = Throttles::new(quotas(&["d2c-device=2/min", "d2c=3/min"]));
        t.admit_telemetry("a", 2).unwrap();
        // a's own bucket is empty: refused, and the hub keeps its last token.
        assert!(t.admit_telemetry("a", 1).is_err());
        assert_eq!(t.throttled(Class::DeviceToCloudPerDevice), 1);
        // b fits its own bucket but the hub holds only one.
        let e = t.admit_telemetry("b", 2).unwrap_err();
        assert!(e.message.contains("d2c"), "{e:?}");
        assert_eq!(t.throttled(Class::DeviceToCloud), 1);
        // So b's bucket is untouched and one message still fits both.
        t.admit_telemetry("b", 1).unwrap();
        assert!(t.admit_telemetry("c", 1).is_err());
    }

    #[test]
    fn mqtt_telemetry_is_paced_and_the_delays_are_counted() {
        let t = Throttles::new(quotas(&["d2c-device=2/min"]));
        assert_eq!(t.pace_telemetry("a"), Duration::ZERO);
        assert_eq!(t.pace_telemetry("a"), Duration::ZERO);
        let wait = t.pace_telemetry("a");
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
        assert_eq!(t.pace_telemetry("b"), Duration::ZERO, "each device has its own rate");
        assert_eq!(t.throttled(Class::DeviceToCloudPerDevice), 1);
    }
}
