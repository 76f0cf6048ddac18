//! Reconnect delays: exponential backoff with jitter.

use std::time::Duration;

/// Exponential backoff with jitter for reconnect attempts.
///
/// Attempt `n` (0 for the first retry) waits `min(max, initial × 2ⁿ)`,
/// reduced by up to `jitter` of itself at random, so that many devices cut
/// off together (a hub restart) do not all come back in the same instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// The fraction of each delay that is random, 0.0 to 1.0: the delay is
    /// uniformly distributed in `[(1 - jitter) × d, d]`.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 1 s doubling to 60 s, half of it random.
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), max: Duration::from_secs(60), jitter: 0.5 }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based), given `random`
    /// uniformly distributed in `[0, 1)`. Pure: the caller supplies the
    /// randomness.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let max = self.max.as_secs_f64();
        let base = (self.initial.as_secs_f64() * 2f64.powi(attempt.min(64) as i32)).min(max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let random = if random.is_finite() { random.clamp(0.0, 1.0) } else { 0.0 };
        let secs = base * (1.0 - jitter * random);
        Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(self.max)
    }

    /// [`Self::delay`] with a random number from the thread's generator.
    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn doubles_up_to_the_cap_without_jitter() {
        let b = Backoff { jitter: 0.0, ..Backoff::default() };
        let delays: Vec<f64> = (0..9).map(|n| secs(b.delay(n, 0.7))).collect();
        assert_eq!(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]);
        assert_eq!(b.delay(u32::MAX, 0.3), Duration::from_secs(60));
    }

    #[test]
    fn jitter_shortens_within_its_fraction() {
        let b = Backoff::default();
        assert_eq!(secs(b.delay(2, 0.0)), 4.0);
        assert_eq!(secs(b.delay(2, 0.5)), 3.0);
        assert!((secs(b.delay(2, 0.999_999)) - 2.0).abs() < 1e-4);
        for n in 0..20 {
            for r in [0.0, 0.1, 0.5, 0.9, 0.99] {
                let d = secs(b.delay(n, r));
                let full = (2f64.powi(n as i32)).min(60.0);
                assert!(d <= full && d >= full / 2.0, "attempt {n} random {r}: {d}");
            }
        }
    }

    #[test]
    fn odd_inputs_are_clamped() {
        let b = Backoff { jitter: 7.0, ..Backoff::default() };
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(500));
        assert_eq!(b.delay(0, f64::NAN), Duration::from_secs(1));
        assert_eq!(b.delay(0, -3.0), Duration::from_secs(1));
        let zero = Backoff { initial: Duration::ZERO, ..Backoff::default() };
        assert_eq!(zero.delay(10, 0.2), Duration::ZERO);
        let r = Backoff::default().delay_random(3);
        assert!(r <= Duration::from_secs(8) && r >= Duration::from_secs(4));
    }
}
