//! IoT Hub's operation throttles as rate limits, without a clock.
//!
//! A [`Gcra`] (the generic cell rate algorithm, a token bucket kept as one
//! "theoretical arrival time") decides whether an operation fits a
//! [`Quota`] at an instant the caller passes in, as a [`Duration`] since
//! any fixed origin; [`Quotas`] are the limits of one hub, from a tier and
//! unit count ([`Tier::quotas`]) with per-class overrides; [`Keyed`] keeps
//! one bucket per key (a device) and forgets buckets that are full again.
//! Reading the clock, locking and counting are the server's business.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::time::Duration;

/// A rate: `count` operations per `period`, of which a whole period's worth
/// may come at once (the bucket holds `count` tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    count: u32,
    period: Duration,
}

impl Quota {
    /// `count` per `period`; `None` when either is zero (no such rate).
    pub fn new(count: u32, period: Duration) -> Option<Self> {
        (count > 0 && !period.is_zero()).then_some(Self { count, period })
    }

    /// `count` per second (at least one).
    pub fn per_second(count: u32) -> Self {
        Self { count: count.max(1), period: Duration::from_secs(1) }
    }

    /// `count` per minute (at least one).
    pub fn per_minute(count: u32) -> Self {
        Self { count: count.max(1), period: Duration::from_secs(60) }
    }

    /// Operations per period.
    pub fn count(self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(self) -> Duration {
        self.period
    }

    /// Time one operation costs: the period over the count.
    fn interval(self) -> Duration {
        self.period / self.count
    }

    /// How far ahead of `now` the bucket may be booked and still admit: a
    /// full bucket is `count` operations, so `count - 1` intervals ahead.
    fn tolerance(self) -> Duration {
        self.interval() * (self.count - 1)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period.as_secs() {
            1 => write!(f, "{}/s", self.count),
            60 => write!(f, "{}/min", self.count),
            _ => write!(f, "{}/{}ms", self.count, self.period.as_millis()),
        }
    }
}

impl FromStr for Quota {
    type Err = String;

    /// `N/s` or `N/min` (also `N/sec`, `N/m`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, unit) = s.split_once('/').ok_or_else(|| format!("`{s}`: expected N/s or N/min"))?;
        let count: u32 = n.trim().parse().map_err(|_| format!("`{s}`: {n} is not a whole number"))?;
        let period = match unit.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            other => return Err(format!("`{s}`: unknown unit {other} (s or min)")),
        };
        Self::new(count, period).ok_or_else(|| format!("`{s}`: the count must be at least 1"))
    }
}

/// One bucket: the instant at which it would be full again if nothing more
/// came (its theoretical arrival time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gcra {
    tat: Duration,
}

impl Gcra {
    /// Admits `cost` operations at `now` if the bucket holds them, or says
    /// how long until it would (and takes nothing). A cost larger than the
    /// whole bucket is admitted once the bucket is full, so no single
    /// operation is refused forever.
    pub fn admit(&mut self, quota: Quota, now: Duration, cost: u32) -> Result<(), Duration> {
        let tat = self.tat.max(now);
        let booked = tat - now;
        let tolerance = quota.tolerance();
        let need = quota.interval() * cost.clamp(1, quota.count).saturating_sub(1);
        // Fits if what is booked ahead plus this cost stays in the bucket.
        match (booked + need).checked_sub(tolerance) {
            Some(over) if !over.is_zero() => Err(over),
            _ => {
                self.tat = tat + quota.interval() * cost.max(1);
                Ok(())
            }
        }
    }

    /// Books `cost` operations whatever the bucket holds and returns how
    /// long the caller must wait before carrying them out: pacing instead
    /// of refusing (MQTT telemetry, whose PUBACK waits that long).
    pub fn reserve(&mut self, quota: Quota, now: Duration, cost: u32) -> Duration {
        let tat = self.tat.max(now);
        let wait = (tat - now).saturating_sub(quota.tolerance());
        self.tat = tat + quota.interval() * cost.max(1);
        wait
    }

    /// Whether the bucket is full again at `now` (it then holds nothing
    /// worth keeping: a fresh bucket behaves the same).
    pub fn is_idle(&self, now: Duration) -> bool {
        self.tat <= now
    }
}

/// One bucket per key, created full on first use. Buckets that are full
/// again are dropped when the map has doubled since the last sweep, so the
/// map holds the keys active within about one period, not every key seen.
#[derive(Debug)]
pub struct Keyed<K> {
    buckets: HashMap<K, Gcra>,
    sweep_at: usize,
}

impl<K> Default for Keyed<K> {
    fn default() -> Self {
        Self { buckets: HashMap::new(), sweep_at: 1024 }
    }
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    /// `key`'s bucket (a full one if it had none), for callers that try a
    /// copy first and store it back only if every other check passes.
    pub fn bucket(&mut self, key: &K, now: Duration) -> &mut Gcra {
        if self.buckets.len() >= self.sweep_at {
            self.buckets.retain(|_, b| !b.is_idle(now));
            self.sweep_at = (self.buckets.len() * 2).max(1024);
        }
        self.buckets.entry(key.clone()).or_default()
    }

    /// [`Gcra::admit`] on `key`'s bucket.
    pub fn admit(&mut self, key: &K, quota: Quota, now: Duration, cost: u32) -> Result<(), Duration> {
        self.bucket(key, now).admit(quota, now, cost)
    }

    /// [`Gcra::reserve`] on `key`'s bucket.
    pub fn reserve(&mut self, key: &K, quota: Quota, now: Duration, cost: u32) -> Duration {
        self.bucket(key, now).reserve(quota, now, cost)
    }

    /// Buckets held (for tests and stats).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The operation classes IoT Hub throttles, each with its own bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Device-to-cloud sends, all devices together.
    DeviceToCloud,
    /// Device-to-cloud sends of one device (a ferrohub addition: IoT Hub
    /// only meters the hub as a whole).
    DeviceToCloudPerDevice,
    /// Twin reads (service GET, device GET).
    TwinRead,
    /// Twin updates (service PATCH/PUT, device reported patches).
    TwinUpdate,
    /// Identity registry operations (create, get, list, update, delete, bulk).
    Registry,
    /// Queries.
    Query,
    /// Direct methods, metered in 4 KB steps of payload.
    Method,
    /// Cloud-to-device sends.
    CloudToDevice,
    /// Cloud-to-device receives of HTTPS devices.
    CloudToDeviceReceive,
    /// Configuration operations (create, update, list, delete).
    Configuration,
    /// New device connections.
    Connect,
}

impl Class {
    /// Every class, in a fixed order.
    pub const ALL: [Class; 11] = [
        Class::DeviceToCloud,
        Class::DeviceToCloudPerDevice,
        Class::TwinRead,
        Class::TwinUpdate,
        Class::Registry,
        Class::Query,
        Class::Method,
        Class::CloudToDevice,
        Class::CloudToDeviceReceive,
        Class::Configuration,
        Class::Connect,
    ];

    /// The name used in flags (`--throttle twin-read=10/s`) and stats.
    pub fn name(self) -> &'static str {
        match self {
            Self::DeviceToCloud => "d2c",
            Self::DeviceToCloudPerDevice => "d2c-device",
            Self::TwinRead => "twin-read",
            Self::TwinUpdate => "twin-update",
            Self::Registry => "registry",
            Self::Query => "query",
            Self::Method => "method",
            Self::CloudToDevice => "c2d",
            Self::CloudToDeviceReceive => "c2d-receive",
            Self::Configuration => "configuration",
            Self::Connect => "connect",
        }
    }

    fn index(self) -> usize {
        // ALL lists every variant once.
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

impl FromStr for Class {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|c| c.name()).collect();
            format!("unknown throttle `{s}` (one of {})", names.join(", "))
        })
    }
}

/// Bytes of direct-method payload one metered call step covers.
pub const METHOD_STEP: usize = 4096;

/// What a direct method call costs in [`Class::Method`] steps: its request
/// payload in 4 KB steps, at least one (a 0–4 KB call costs one step).
pub fn method_cost(payload_len: usize) -> u32 {
    u32::try_from(payload_len.div_ceil(METHOD_STEP).max(1)).unwrap_or(u32::MAX)
}

/// The IoT Hub tiers ferrohub can mimic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tier {
    /// No throttles at all.
    #[default]
    Unlimited,
    /// F1: S1's throttles, one unit.
    Free,
    /// S1 (and B1).
    S1,
    /// S2 (and B2).
    S2,
    /// S3 (and B3).
    S3,
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "unlimited" | "none" => Ok(Self::Unlimited),
            "free" | "f1" => Ok(Self::Free),
            "s1" | "b1" => Ok(Self::S1),
            "s2" | "b2" => Ok(Self::S2),
            "s3" | "b3" => Ok(Self::S3),
            _ => Err(format!("unknown tier `{s}` (unlimited, free, s1, s2, s3)")),
        }
    }
}

impl Tier {
    /// IoT Hub's throttles for this tier with `units` units (Microsoft's
    /// "IoT Hub quotas and throttling" table; a free hub has one unit).
    /// Per-minute limits stay per minute, so a whole minute's worth may
    /// come at once, as on IoT Hub, where the limits are applied "in minute
    /// ranges". There is no per-device telemetry limit in any tier.
    pub fn quotas(self, units: u32) -> Quotas {
        let u = match self {
            Self::Free => 1,
            _ => units.max(1),
        };
        let mut q = Quotas::default();
        let sec = Quota::per_second;
        let min = Quota::per_minute;
        let set = |q: &mut Quotas, c, v| q.set(c, Some(v));
        match self {
            Self::Unlimited => {}
            Self::Free | Self::S1 => {
                set(&mut q, Class::Registry, min(100 * u));
                set(&mut q, Class::Connect, sec((12 * u).max(100)));
                set(&mut q, Class::DeviceToCloud, sec((12 * u).max(100)));
                set(&mut q, Class::CloudToDevice, min(100 * u));
                set(&mut q, Class::CloudToDeviceReceive, min(1000 * u));
                set(&mut q, Class::Configuration, min(20 * u));
                // 160 KB/s/unit in 4 KB steps.
                set(&mut q, Class::Method, sec(40 * u));
                set(&mut q, Class::Query, min(20 * u));
                set(&mut q, Class::TwinRead, sec(100));
                set(&mut q, Class::TwinUpdate, sec(50));
            }
            Self::S2 => {
                set(&mut q, Class::Registry, min(100 * u));
                set(&mut q, Class::Connect, sec(120 * u));
                set(&mut q, Class::DeviceToCloud, sec(120 * u));
                set(&mut q, Class::CloudToDevice, min(100 * u));
                set(&mut q, Class::CloudToDeviceReceive, min(1000 * u));
                set(&mut q, Class::Configuration, min(20 * u));
                // 480 KB/s/unit.
                set(&mut q, Class::Method, sec(120 * u));
                set(&mut q, Class::Query, min(20 * u));
                set(&mut q, Class::TwinRead, sec((10 * u).max(100)));
                set(&mut q, Class::TwinUpdate, sec((5 * u).max(50)));
            }
            Self::S3 => {
                set(&mut q, Class::Registry, min(5000 * u));
                set(&mut q, Class::Connect, sec(6000 * u));
                set(&mut q, Class::DeviceToCloud, sec(6000 * u));
                set(&mut q, Class::CloudToDevice, min(5000 * u));
                set(&mut q, Class::CloudToDeviceReceive, min(50_000 * u));
                set(&mut q, Class::Configuration, min(20 * u));
                // 24 MB/s/unit.
                set(&mut q, Class::Method, sec(6000 * u));
                set(&mut q, Class::Query, min(1000 * u));
                set(&mut q, Class::TwinRead, sec(500 * u));
                set(&mut q, Class::TwinUpdate, sec(250 * u));
            }
        }
        q
    }
}

/// The limit of each class; `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quotas {
    limits: [Option<Quota>; Class::ALL.len()],
}

impl Quotas {
    /// The limit of `class`.
    pub fn get(&self, class: Class) -> Option<Quota> {
        self.limits[class.index()]
    }

    /// Sets (or, with `None`, lifts) the limit of `class`.
    pub fn set(&mut self, class: Class, quota: Option<Quota>) {
        self.limits[class.index()] = quota;
    }

    /// Applies an override `class=N/s`, `class=N/min` or `class=unlimited`.
    pub fn apply_override(&mut self, spec: &str) -> Result<(), String> {
        let (class, value) = spec
            .split_once('=')
            .ok_or_else(|| format!("`{spec}`: expected CLASS=N/s, CLASS=N/min or CLASS=unlimited"))?;
        let class: Class = class.trim().parse()?;
        let quota = match value.trim() {
            "unlimited" | "none" => None,
            v => Some(v.parse()?),
        };
        self.set(class, quota);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_admits_a_periods_worth_then_refuses_until_one_interval_passes() {
        let q = Quota::per_second(4); // one every 250 ms, four at once
        let mut b = Gcra::default();
        let t0 = Duration::from_secs(100);
        for _ in 0..4 {
            b.admit(q, t0, 1).unwrap();
        }
        assert_eq!(b.admit(q, t0, 1), Err(ms(250)));
        // A refusal takes nothing: the same answer a little later, minus the wait.
        assert_eq!(b.admit(q, t0 + ms(100), 1), Err(ms(150)));
        b.admit(q, t0 + ms(250), 1).unwrap();
        assert_eq!(b.admit(q, t0 + ms(250), 1), Err(ms(250)));
        // After a whole period of quiet the bucket is full again.
        let later = t0 + Duration::from_secs(2);
        assert!(b.is_idle(later));
        for _ in 0..4 {
            b.admit(q, later, 1).unwrap();
        }
        assert!(b.admit(q, later, 1).is_err());
    }

    #[test]
    fn per_minute_quotas_refill_one_operation_at_a_time() {
        let q = Quota::per_minute(100); // one every 600 ms
        let mut b = Gcra::default();
        let t0 = Duration::ZERO;
        for _ in 0..100 {
            b.admit(q, t0, 1).unwrap();
        }
        assert_eq!(b.admit(q, t0, 1), Err(ms(600)));
        b.admit(q, ms(600), 1).unwrap();
        assert!(b.admit(q, ms(600), 1).is_err());
    }

    #[test]
    fn a_cost_takes_that_many_tokens_and_an_oversized_one_waits_for_a_full_bucket() {
        let q = Quota::per_second(10); // 100 ms each
        let mut b = Gcra::default();
        b.admit(q, Duration::ZERO, 6).unwrap();
        // Four left: a cost of five waits for one more token.
        assert_eq!(b.admit(q, Duration::ZERO, 5), Err(ms(100)));
        b.admit(q, Duration::ZERO, 4).unwrap();
        assert!(b.admit(q, Duration::ZERO, 1).is_err());
        // Larger than the bucket: admitted once it is full, then pays it all.
        let mut big = Gcra::default();
        big.admit(q, Duration::ZERO, 25).unwrap();
        assert_eq!(big.admit(q, Duration::ZERO, 1), Err(Duration::from_millis(1600)));
    }

    #[test]
    fn reserving_paces_instead_of_refusing() {
        let q = Quota::per_second(2); // 500 ms each, two at once
        let mut b = Gcra::default();
        let t0 = Duration::from_secs(5);
        assert_eq!(b.reserve(q, t0, 1), Duration::ZERO);
        assert_eq!(b.reserve(q, t0, 1), Duration::ZERO);
        assert_eq!(b.reserve(q, t0, 1), ms(500));
        assert_eq!(b.reserve(q, t0, 1), ms(1000));
        // Each booked slot is the one after the last: the rate holds.
        assert_eq!(b.reserve(q, t0 + ms(1000), 1), ms(500));
        // And admission sees the booking.
        assert!(b.admit(q, t0 + ms(1000), 1).is_err());
    }

    #[test]
    fn keyed_buckets_are_independent_and_idle_ones_are_swept() {
        let q = Quota::per_second(1);
        let mut k: Keyed<String> = Keyed::default();
        let t0 = Duration::ZERO;
        k.admit(&"a".to_owned(), q, t0, 1).unwrap();
        assert!(k.admit(&"a".to_owned(), q, t0, 1).is_err());
        k.admit(&"b".to_owned(), q, t0, 1).unwrap();
        for i in 0..2000 {
            k.admit(&format!("d{i}"), q, t0, 1).unwrap();
        }
        // 2002 keys all booked at t0; once a second has passed they are idle
        // and the next sweep drops them.
        let later = Duration::from_secs(2);
        for i in 0..2000 {
            k.admit(&format!("e{i}"), q, later, 1).unwrap();
        }
        assert!(k.len() < 2002 + 2000, "idle buckets were swept: {}", k.len());
        // A swept key starts full.
        k.admit(&"a".to_owned(), q, later, 1).unwrap();
    }

    #[test]
    fn tiers_carry_iot_hubs_table() {
        let s1 = Tier::S1.quotas(2);
        assert_eq!(s1.get(Class::Registry), Some(Quota::per_minute(200)));
        assert_eq!(s1.get(Class::DeviceToCloud), Some(Quota::per_second(100)), "max(100/s, 12/s/unit)");
        assert_eq!(Tier::S1.quotas(9).get(Class::DeviceToCloud), Some(Quota::per_second(108)));
        assert_eq!(s1.get(Class::TwinRead), Some(Quota::per_second(100)));
        assert_eq!(s1.get(Class::TwinUpdate), Some(Quota::per_second(50)));
        assert_eq!(s1.get(Class::Query), Some(Quota::per_minute(40)));
        assert_eq!(s1.get(Class::Method), Some(Quota::per_second(80)));
        assert_eq!(s1.get(Class::DeviceToCloudPerDevice), None);
        assert_eq!(Tier::Free.quotas(5), Tier::S1.quotas(1), "a free hub has one unit");
        let s2 = Tier::S2.quotas(20);
        assert_eq!(s2.get(Class::TwinRead), Some(Quota::per_second(200)));
        assert_eq!(s2.get(Class::Connect), Some(Quota::per_second(2400)));
        let s3 = Tier::S3.quotas(1);
        assert_eq!(s3.get(Class::Registry), Some(Quota::per_minute(5000)));
        assert_eq!(s3.get(Class::TwinUpdate), Some(Quota::per_second(250)));
        assert_eq!(s3.get(Class::CloudToDeviceReceive), Some(Quota::per_minute(50_000)));
        assert_eq!(s3.get(Class::Configuration), Some(Quota::per_minute(20)));
        assert_eq!(s1.get(Class::CloudToDeviceReceive), Some(Quota::per_minute(2000)));
        assert_eq!(Tier::Unlimited.quotas(3), Quotas::default());
    }

    #[test]
    fn overrides_and_names_parse() {
        let mut q = Tier::S1.quotas(1);
        q.apply_override("twin-read=2/s").unwrap();
        q.apply_override("registry=unlimited").unwrap();
        q.apply_override("d2c-device=30/min").unwrap();
        assert_eq!(q.get(Class::TwinRead), Some(Quota::per_second(2)));
        assert_eq!(q.get(Class::Registry), None);
        assert_eq!(q.get(Class::DeviceToCloudPerDevice), Some(Quota::per_minute(30)));
        for bad in ["twin-read", "twin-read=0/s", "twin-read=2/h", "nope=1/s", "twin-read=x/s"] {
            assert!(q.apply_override(bad).is_err(), "{bad}");
        }
        for c in Class::ALL {
            assert_eq!(c.name().parse::<Class>().unwrap(), c);
        }
        assert_eq!("S2".parse::<Tier>().unwrap(), Tier::S2);
        assert_eq!(Quota::per_minute(20).to_string(), "20/min");
    }

    #[test]
    fn methods_cost_4_kb_steps() {
        assert_eq!(method_cost(0), 1);
        assert_eq!(method_cost(4096), 1);
        assert_eq!(method_cost(4097), 2);
        assert_eq!(method_cost(160 * 1024), 40);
    }
}
