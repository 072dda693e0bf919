//! Time, as the engine sees it: one [`Clock`] port for wall-clock time and monotonic time, so
//! a test or a simulation can run the real engine on a clock it controls (a skewed instance, a
//! paused worker, hours of backoff in milliseconds).

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// The engine's clock.
pub trait Clock: Send + Sync + fmt::Debug {
    /// This instance's wall-clock time (recorded times, retry times). Lease expiry and the
    /// settle point of an unknown outcome are judged by the database's clock, not this one.
    fn now(&self) -> DateTime<Utc>;

    /// Monotonic time since a fixed, arbitrary origin (how long a lease is known to hold).
    fn monotonic(&self) -> Duration;
}

/// The system clock: [`Utc::now`] and [`Instant`].
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A system clock whose monotonic origin is now.
    pub fn new() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A number in `[0, 1)` derived from `key` and `n`, the same on every run: the jitter of a
/// retry delay. Spread across Orders like a random draw, yet a rerun (or a simulation seed)
/// makes the same choices.
pub(crate) fn jitter(key: &str, n: u32) -> f64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: stable within a build, which is all a rerun needs.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    n.hash(&mut hasher);
    // The top 53 bits as a fraction.
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_a_fraction_and_repeats() {
        let a = jitter("801000000000001AAA", 3);
        assert!((0.0..1.0).contains(&a));
        assert_eq!(a, jitter("801000000000001AAA", 3));
        assert_ne!(a, jitter("801000000000001AAA", 4));
        assert_ne!(a, jitter("801000000000002AAA", 3));
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = SystemClock::new();
        let a = clock.monotonic();
        let b = clock.monotonic();
        assert!(b >= a);
    }
}
