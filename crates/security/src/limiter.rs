//! Per-key rate limiting: governor's keyed GCRA with bounded memory.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;

use crate::{Error, Rate, Result};

/// How many checks pass between two opportunistic [`KeyedRateLimiter::prune`] runs.
pub const PRUNE_EVERY_CHECKS: u64 = 4_096;

/// A refused check: the key may try again after this long.
///
/// Use [`RetryAfter::header_secs`] for an HTTP `Retry-After` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, rounded up and at least 1, as `Retry-After` wants.
    pub fn header_secs(&self) -> u64 {
        let secs = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        secs.max(1)
    }
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited, retry after {}s", self.header_secs())
    }
}

/// A rate limiter holding one GCRA state per key (customer number, IP address, ...).
///
/// Keys that have been idle long enough to be indistinguishable from new ones are evicted by
/// [`prune`](Self::prune), which also runs by itself every [`PRUNE_EVERY_CHECKS`] checks and
/// from the task of [`spawn_pruner`](Self::spawn_pruner), so memory stays proportional to the
/// keys that are actually being limited, not to every key ever seen.
///
/// The clock is a type parameter so tests can drive time with
/// [`governor::clock::FakeRelativeClock`].
pub struct KeyedRateLimiter<K, C = DefaultClock>
where
    K: Hash + Eq + Clone,
    C: Clock,
{
    inner: governor::RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    rate: Rate,
    checks: AtomicU64,
}

impl<K> KeyedRateLimiter<K>
where
    K: Hash + Eq + Clone,
{
    /// A limiter allowing `rate` per key, on the real monotonic clock.
    pub fn new(rate: Rate) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }

    /// Waits until `key` may proceed, then takes its cell: for work that should be **delayed**
    /// rather than refused (per-customer provisioning).
    pub async fn until_ready(&self, key: &K) {
        while let Some(wait) = self.delay_for(key) {
            tokio::time::sleep(wait).await;
        }
    }
}

impl<K, C> KeyedRateLimiter<K, C>
where
    K: Hash + Eq + Clone,
    C: Clock,
{
    /// A limiter allowing `rate` per key, on `clock`.
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        let inner =
            governor::RateLimiter::new(rate.quota(), DefaultKeyedStateStore::default(), clock);
        Self {
            inner,
            rate,
            checks: AtomicU64::new(0),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one cell for `key` if it conforms; otherwise says how long until it would.
    ///
    /// # Errors
    /// [`RetryAfter`] when the key is over its rate; nothing was consumed.
    pub fn check(&self, key: &K) -> Result<(), RetryAfter> {
        self.maybe_prune();
        self.inner
            .check_key(key)
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.inner.clock().now())))
    }

    /// `None`: `key` may go now and its cell is taken. `Some(wait)`: nothing was taken; try
    /// again after `wait`. The building block of [`until_ready`](KeyedRateLimiter::until_ready)
    /// for callers that schedule their own retries.
    pub fn delay_for(&self, key: &K) -> Option<Duration> {
        match self.check(key) {
            Ok(()) => None,
            // A zero wait would spin: GCRA said "not yet", so ask for at least a nanosecond.
            Err(RetryAfter(wait)) => Some(wait.max(Duration::from_nanos(1))),
        }
    }

    /// Evicts keys whose state is indistinguishable from a fresh key and releases the memory.
    /// Returns how many keys were evicted.
    pub fn prune(&self) -> usize {
        let before = self.inner.len();
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
        before.saturating_sub(self.inner.len())
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// `true` when no key is held.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    fn maybe_prune(&self) {
        let n = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(PRUNE_EVERY_CHECKS) {
            self.prune();
        }
    }
}

impl<K, C> KeyedRateLimiter<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    /// Spawns a task that prunes every `every` for as long as the limiter is alive.
    ///
    /// # Errors
    /// [`Error::NoRuntime`] outside a Tokio runtime.
    pub fn spawn_pruner(self: &Arc<Self>, every: Duration) -> Result<tokio::task::JoinHandle<()>> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            component: "rate limiter pruner",
        })?;
        let weak: Weak<Self> = Arc::downgrade(self);
        Ok(handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else { break };
                let evicted = limiter.prune();
                tracing::trace!(
                    evicted,
                    remaining = limiter.len(),
                    "pruned rate limiter keys"
                );
            }
        }))
    }
}

impl<K, C> fmt::Debug for KeyedRateLimiter<K, C>
where
    K: Hash + Eq + Clone,
    C: Clock,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("rate", &self.rate)
            .field("keys", &self.inner.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(
        rate: &str,
    ) -> (
        KeyedRateLimiter<String, FakeRelativeClock>,
        FakeRelativeClock,
    ) {
        let clock = FakeRelativeClock::default();
        (
            KeyedRateLimiter::with_clock(Rate::parse(rate).unwrap(), clock.clone()),
            clock,
        )
    }

    #[test]
    fn burst_then_retry_after_then_replenish() {
        let (rl, clock) = limiter("3/minute");
        let k = "C-1".to_owned();
        for _ in 0..3 {
            assert_eq!(rl.check(&k), Ok(()));
        }
        let err = rl.check(&k).unwrap_err();
        assert_eq!(err, RetryAfter(Duration::from_secs(20)));
        assert_eq!(err.header_secs(), 20);
        // Other keys are independent.
        assert_eq!(rl.check(&"C-2".to_owned()), Ok(()));
        clock.advance(Duration::from_secs(19));
        assert_eq!(rl.check(&k).unwrap_err().header_secs(), 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(rl.check(&k), Ok(()));
        assert!(rl.check(&k).is_err());
    }

    #[test]
    fn retry_after_header_rounds_up_and_is_at_least_one() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).header_secs(), 1);
        assert_eq!(RetryAfter(Duration::ZERO).header_secs(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1500)).header_secs(), 2);
        assert_eq!(RetryAfter(Duration::from_secs(7)).header_secs(), 7);
    }

    #[test]
    fn delay_for_delays_instead_of_failing() {
        let (rl, clock) = limiter("2/hour");
        let k = "C-9".to_owned();
        assert_eq!(rl.delay_for(&k), None);
        assert_eq!(rl.delay_for(&k), None);
        assert_eq!(rl.delay_for(&k), Some(Duration::from_secs(1800)));
        // Asking again does not push the wait further out (nothing is consumed).
        assert_eq!(rl.delay_for(&k), Some(Duration::from_secs(1800)));
        clock.advance(Duration::from_secs(1800));
        assert_eq!(rl.delay_for(&k), None);
    }

    #[test]
    fn prune_evicts_idle_keys_and_keeps_busy_ones() {
        let (rl, clock) = limiter("60/minute");
        for i in 0..1_000 {
            rl.check(&format!("ip-{i}")).unwrap();
        }
        let hot = "hot".to_owned();
        for _ in 0..60 {
            rl.check(&hot).unwrap();
        }
        assert_eq!(rl.len(), 1_001);
        // Nothing is idle yet.
        assert_eq!(rl.prune(), 0);
        clock.advance(Duration::from_secs(30));
        assert_eq!(rl.prune(), 1_000);
        assert_eq!(rl.len(), 1);
        // The surviving key keeps its state: half its burst came back, not all of it.
        for _ in 0..30 {
            rl.check(&hot).unwrap();
        }
        assert!(rl.check(&hot).is_err());
        clock.advance(Duration::from_secs(120));
        assert_eq!(rl.prune(), 1);
        assert!(rl.is_empty());
    }

    #[test]
    fn checks_prune_by_themselves() {
        let (rl, clock) = limiter("1/second");
        for i in 0..PRUNE_EVERY_CHECKS - 1 {
            rl.check(&format!("k{i}")).unwrap();
        }
        assert_eq!(rl.len() as u64, PRUNE_EVERY_CHECKS - 1);
        clock.advance(Duration::from_secs(10));
        rl.check(&"last".to_owned()).unwrap();
        assert!(rl.len() <= 1, "{}", rl.len());
    }
}
