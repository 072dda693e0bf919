//! Sliding-window counters: the detectors behind [`SecurityMonitor`](crate::SecurityMonitor).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Records between two opportunistic prunes of a [`WindowCounter`].
const PRUNE_EVERY_RECORDS: u64 = 1_024;

/// Most keys a [`WindowCounter`] tracks; past this, after pruning, it starts over.
pub const MAX_TRACKED_KEYS: usize = 100_000;

/// When a detector fires: `threshold` events for one key within `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Events within the window that raise an alert; `0` disables the detector.
    pub threshold: u32,
    /// The sliding window.
    pub window: Duration,
}

impl DetectorConfig {
    /// `threshold` events within `window`.
    pub const fn new(threshold: u32, window: Duration) -> Self {
        Self { threshold, window }
    }

    /// A detector that never fires.
    pub const fn disabled() -> Self {
        Self::new(0, Duration::ZERO)
    }
}

/// Detector settings of a [`SecurityMonitor`](crate::SecurityMonitor).
///
/// | detector | counted per | default |
/// |---|---|---|
/// | `auth_failures` (401 on the status API) | IP address | 10 in 60 s |
/// | `status_not_found` (404 on the status API) | customer | 20 in 60 s |
/// | `rate_limited` (429s, refused checks) | customer or IP | 20 in 300 s |
/// | `integrity_failures` (MAC / decrypt / unwrap) | check | 1 in 300 s |
/// | `refused_orders` (events for unapproved orders) | customer | 1 in 3600 s |
/// | `provisioning_failures` (jobs ended as failed) | customer | 3 in 3600 s |
///
/// Alerts of one kind about one subject are then sent at most once per `dedup_window`
/// (default 300 s), with the counts of the suppressed ones added to the next alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Failed bearer-token checks per IP.
    pub auth_failures: DetectorConfig,
    /// Status lookups answered 404 per customer.
    pub status_not_found: DetectorConfig,
    /// Refused rate-limit checks per key.
    pub rate_limited: DetectorConfig,
    /// Integrity failures per kind of check.
    pub integrity_failures: DetectorConfig,
    /// Events refused because the Order is not approved, per customer.
    pub refused_orders: DetectorConfig,
    /// Jobs ended as failed, per customer.
    pub provisioning_failures: DetectorConfig,
    /// Window within which the same alert about the same subject is sent once.
    pub dedup_window: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            auth_failures: DetectorConfig::new(10, Duration::from_secs(60)),
            status_not_found: DetectorConfig::new(20, Duration::from_secs(60)),
            rate_limited: DetectorConfig::new(20, Duration::from_secs(300)),
            integrity_failures: DetectorConfig::new(1, Duration::from_secs(300)),
            refused_orders: DetectorConfig::new(1, Duration::from_secs(3_600)),
            provisioning_failures: DetectorConfig::new(3, Duration::from_secs(3_600)),
            dedup_window: Duration::from_secs(300),
        }
    }
}

/// Counts events per key over a sliding window and says when a key reaches the threshold.
///
/// Each key keeps at most `threshold` timestamps, keys with no event inside the window are
/// dropped by [`prune`](Self::prune) (which also runs every 1,024 records), and at most
/// [`MAX_TRACKED_KEYS`] keys are held, so memory stays bounded under a flood of distinct keys.
#[derive(Debug)]
pub struct WindowCounter<K> {
    config: DetectorConfig,
    hits: HashMap<K, VecDeque<Instant>>,
    records: u64,
}

impl<K: Hash + Eq> WindowCounter<K> {
    /// An empty counter.
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            hits: HashMap::new(),
            records: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> DetectorConfig {
        self.config
    }

    /// Records one event for `key` at `now`. Returns the number of events in the window when
    /// this one makes it reach the threshold; the key then starts counting afresh, so the next
    /// alert needs another `threshold` events.
    pub fn record(&mut self, key: K, now: Instant) -> Option<u64> {
        let threshold = usize::try_from(self.config.threshold).unwrap_or(usize::MAX);
        if threshold == 0 {
            return None;
        }
        self.records += 1;
        if self.records.is_multiple_of(PRUNE_EVERY_RECORDS) {
            self.prune(now);
        }
        if self.hits.len() >= MAX_TRACKED_KEYS && !self.hits.contains_key(&key) {
            self.prune(now);
            if self.hits.len() >= MAX_TRACKED_KEYS {
                tracing::warn!(
                    keys = self.hits.len(),
                    "detector key table full, starting over"
                );
                self.hits.clear();
            }
        }
        let window = self.config.window;
        let hits = self.hits.entry(key).or_default();
        while hits
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= window)
        {
            hits.pop_front();
        }
        hits.push_back(now);
        if hits.len() >= threshold {
            let count = hits.len() as u64;
            hits.clear();
            Some(count)
        } else {
            None
        }
    }

    /// Events for `key` currently inside the window ending at `now`.
    pub fn count(&self, key: &K, now: Instant) -> usize {
        self.hits.get(key).map_or(0, |hits| {
            hits.iter()
                .filter(|&&t| now.saturating_duration_since(t) < self.config.window)
                .count()
        })
    }

    /// Drops keys with no event inside the window ending at `now`; returns how many.
    pub fn prune(&mut self, now: Instant) -> usize {
        let before = self.hits.len();
        let window = self.config.window;
        self.hits.retain(|_, hits| {
            hits.back()
                .is_some_and(|&t| now.saturating_duration_since(t) < window)
        });
        self.hits.shrink_to_fit();
        before - self.hits.len()
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.hits.len()
    }

    /// `true` when no key is held.
    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn fires_when_threshold_reached_within_window() {
        let mut c = WindowCounter::new(DetectorConfig::new(3, 10 * S));
        let t0 = Instant::now();
        assert_eq!(c.record("a", t0), None);
        assert_eq!(c.record("a", t0 + S), None);
        assert_eq!(c.record("b", t0 + S), None);
        assert_eq!(c.record("a", t0 + 2 * S), Some(3));
        // Starts over after firing.
        assert_eq!(c.count(&"a", t0 + 2 * S), 0);
        assert_eq!(c.record("a", t0 + 3 * S), None);
    }

    #[test]
    fn events_outside_the_window_do_not_count() {
        let mut c = WindowCounter::new(DetectorConfig::new(3, 10 * S));
        let t0 = Instant::now();
        assert_eq!(c.record("a", t0), None);
        assert_eq!(c.record("a", t0 + 5 * S), None);
        // t0 has slid out of the window.
        assert_eq!(c.record("a", t0 + 10 * S), None);
        assert_eq!(c.count(&"a", t0 + 10 * S), 2);
        assert_eq!(c.record("a", t0 + 11 * S), Some(3));
    }

    #[test]
    fn threshold_one_fires_every_time_and_zero_never() {
        let mut one = WindowCounter::new(DetectorConfig::new(1, 10 * S));
        let mut off = WindowCounter::new(DetectorConfig::disabled());
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(one.record("k", t0 + i * S), Some(1));
            assert_eq!(off.record("k", t0 + i * S), None);
        }
        assert!(off.is_empty());
    }

    #[test]
    fn prune_drops_idle_keys() {
        let mut c = WindowCounter::new(DetectorConfig::new(5, 10 * S));
        let t0 = Instant::now();
        for i in 0..100 {
            c.record(i, t0);
        }
        c.record(1_000, t0 + 8 * S);
        assert_eq!(c.prune(t0 + 9 * S), 0);
        assert_eq!(c.prune(t0 + 10 * S), 100);
        assert_eq!(c.len(), 1);
        assert_eq!(c.prune(t0 + 18 * S), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn key_table_stays_bounded() {
        let mut c = WindowCounter::new(DetectorConfig::new(2, 3_600 * S));
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED_KEYS + 10) {
            c.record(i, t0);
        }
        assert!(c.len() <= MAX_TRACKED_KEYS, "{}", c.len());
    }
}
