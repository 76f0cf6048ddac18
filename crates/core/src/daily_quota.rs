//! IoT Hub's daily message quota, without a clock.
//!
//! Every IoT Hub tier allows a number of messages per UTC day (8,000 on the
//! free tier; 400,000, 6,000,000 or 300,000,000 per unit on S1, S2, S3).
//! What counts as a message is metered in chunks: device-to-cloud and
//! cloud-to-device messages and direct-method requests and responses in
//! the tier's message size (0.5 KB on the free tier, 4 KB on the others),
//! twin reads, twin updates and query results in 0.5 KB chunks. Registry
//! operations, connects and keep-alives are not metered. Once the day's
//! quota is used, metered operations are refused with 403
//! IotHubQuotaExceeded until midnight UTC.
//!
//! [`DailyUsage`] is the day's count; the caller passes the day (days since
//! the Unix epoch, UTC) in, and keeps the count across restarts.

use crate::throttle::Tier;

/// Bytes per metered chunk of twin reads, updates and query results, on
/// every tier.
pub const TWIN_CHUNK: usize = 512;

/// Seconds in a UTC day.
pub const DAY_SECONDS: i64 = 86_400;

/// What an operation is metered as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metered {
    /// A device-to-cloud or cloud-to-device message, a direct-method
    /// request or response: chunks of the tier's message size.
    Message,
    /// A twin read or update, a query's result: 0.5 KB chunks.
    Twin,
}

/// One hub's daily allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyQuota {
    /// Messages per UTC day.
    pub messages: u64,
    /// Bytes per metered message ([`Metered::Message`]).
    pub message_chunk: usize,
}

impl DailyQuota {
    /// IoT Hub's quota for `tier` with `units` units (a free hub has one);
    /// `None` for an unlimited hub.
    pub fn for_tier(tier: Tier, units: u32) -> Option<Self> {
        let u = u64::from(units.max(1));
        let (messages, message_chunk) = match tier {
            Tier::Unlimited => return None,
            Tier::Free => (8_000, 512),
            Tier::S1 => (400_000 * u, 4096),
            Tier::S2 => (6_000_000 * u, 4096),
            Tier::S3 => (300_000_000 * u, 4096),
        };
        Some(Self { messages, message_chunk })
    }

    /// How many messages an operation of `bytes` bytes counts for: whole
    /// chunks, at least one (an empty message is still a message).
    pub fn cost(&self, kind: Metered, bytes: usize) -> u64 {
        let chunk = match kind {
            Metered::Message => self.message_chunk,
            Metered::Twin => TWIN_CHUNK,
        };
        u64::try_from(bytes.div_ceil(chunk.max(1)).max(1)).unwrap_or(u64::MAX)
    }
}

/// The quota was used up for the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// The day's allowance.
    pub limit: u64,
    /// Messages counted today (the refused operation not among them).
    pub used: u64,
    /// Unix seconds of the next midnight UTC, when the count starts again.
    pub resets_at: i64,
}

/// Messages counted on one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DailyUsage {
    day: i64,
    used: u64,
}

impl DailyUsage {
    /// The count `used` on `day` (as stored).
    pub fn new(day: i64, used: u64) -> Self {
        Self { day, used }
    }

    /// The UTC day of a Unix time in seconds.
    pub fn day_of(unix_seconds: i64) -> i64 {
        unix_seconds.div_euclid(DAY_SECONDS)
    }

    /// The day this count is for.
    pub fn day(&self) -> i64 {
        self.day
    }

    /// Messages counted on `day` (zero on any later day).
    pub fn used(&self, day: i64) -> u64 {
        if day == self.day {
            self.used
        } else {
            0
        }
    }

    fn roll(&mut self, day: i64) {
        // A clock set back keeps the later day's count rather than
        // granting a fresh allowance.
        if day > self.day {
            *self = Self { day, used: 0 };
        }
    }

    /// Counts `cost` messages on `day` if they fit in the day's `limit`,
    /// else refuses them and counts nothing.
    pub fn admit(&mut self, limit: u64, day: i64, cost: u64) -> Result<(), Exhausted> {
        self.roll(day);
        match self.used.checked_add(cost) {
            Some(total) if total <= limit => {
                self.used = total;
                Ok(())
            }
            _ => Err(Exhausted { limit, used: self.used, resets_at: (self.day.max(day) + 1) * DAY_SECONDS }),
        }
    }

    /// Counts `cost` messages on `day` whatever the limit: what was already
    /// carried out (a method's response) is counted, not refused.
    pub fn charge(&mut self, day: i64, cost: u64) {
        self.roll(day);
        self.used = self.used.saturating_add(cost);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tiers_have_iot_hubs_allowances() {
        assert_eq!(DailyQuota::for_tier(Tier::Unlimited, 3), None);
        let free = DailyQuota::for_tier(Tier::Free, 5).unwrap();
        assert_eq!((free.messages, free.message_chunk), (8_000, 512));
        assert_eq!(DailyQuota::for_tier(Tier::S1, 2).unwrap().messages, 800_000);
        assert_eq!(DailyQuota::for_tier(Tier::S2, 1).unwrap().messages, 6_000_000);
        assert_eq!(DailyQuota::for_tier(Tier::S3, 10).unwrap().messages, 3_000_000_000);
    }

    #[test]
    fn messages_are_metered_in_whole_chunks() {
        let s1 = DailyQuota::for_tier(Tier::S1, 1).unwrap();
        assert_eq!(s1.cost(Metered::Message, 0), 1);
        assert_eq!(s1.cost(Metered::Message, 4096), 1);
        assert_eq!(s1.cost(Metered::Message, 4097), 2);
        assert_eq!(s1.cost(Metered::Twin, 4096), 8);
        assert_eq!(s1.cost(Metered::Twin, 513), 2);
        let free = DailyQuota::for_tier(Tier::Free, 1).unwrap();
        assert_eq!(free.cost(Metered::Message, 4096), 8);
    }

    #[test]
    fn the_quota_refuses_past_the_limit_and_counts_nothing_refused() {
        let mut u = DailyUsage::default();
        let day = 20_000;
        u.admit(10, day, 6).unwrap();
        let e = u.admit(10, day, 5).unwrap_err();
        assert_eq!(e, Exhausted { limit: 10, used: 6, resets_at: 20_001 * DAY_SECONDS });
        u.admit(10, day, 4).unwrap();
        assert_eq!(u.used(day), 10);
        assert!(u.admit(10, day, 1).is_err());
    }

    #[test]
    fn a_new_day_starts_from_zero_and_a_clock_set_back_does_not() {
        let mut u = DailyUsage::new(20_000, 10);
        assert!(u.admit(10, 20_000, 1).is_err());
        // The clock went back a day: still exhausted.
        assert!(u.admit(10, 19_999, 1).is_err());
        assert_eq!(u.day(), 20_000);
        u.admit(10, 20_001, 1).unwrap();
        assert_eq!((u.day(), u.used(20_001)), (20_001, 1));
        assert_eq!(u.used(20_002), 0);
    }

    #[test]
    fn charges_count_past_the_limit() {
        let mut u = DailyUsage::new(5, 9);
        u.charge(5, 3);
        assert_eq!(u.used(5), 12);
        assert!(u.admit(10, 5, 1).is_err());
    }

    #[test]
    fn days_are_utc_days() {
        assert_eq!(DailyUsage::day_of(0), 0);
        assert_eq!(DailyUsage::day_of(DAY_SECONDS - 1), 0);
        assert_eq!(DailyUsage::day_of(DAY_SECONDS), 1);
        assert_eq!(DailyUsage::day_of(-1), -1);
    }
}
