//! Publish-to-activation bookkeeping, for benchmarks that watch a provisioner from outside:
//! when each Order's event was published, how many Orders a PATCH moved to
//! [`ACTIVATED_STATUS`], and how long each took from its (last) publish to that PATCH.
//!
//! Small per Order: one `Instant` per published Order until it is activated, then one `u32`
//! (microseconds) per activation.

use std::collections::HashMap;
use std::time::Instant;

/// The `Status` value whose PATCH counts as the Order's activation.
pub const ACTIVATED_STATUS: &str = "Activated";

/// What the sandbox has counted so far: see
/// [`crate::salesforce::SalesforceSandbox::activation_stats`] and `GET /sandbox/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationStats {
    /// Successful PATCHes that moved an Order from another `Status` to [`ACTIVATED_STATUS`].
    pub activated: u64,
    /// Events noted as published (each publish counts, a re-publish too).
    pub published: u64,
    /// Activations of an Order whose publish time was known: the latencies below.
    pub latencies: u64,
    /// Median publish-to-activation latency, milliseconds (nearest rank); `None` without any.
    pub p50_ms: Option<f64>,
    /// 99th percentile, milliseconds (nearest rank).
    pub p99_ms: Option<f64>,
    /// The longest, milliseconds.
    pub max_ms: Option<f64>,
}

/// The bookkeeping itself, keyed by the Order's id as stored.
#[derive(Debug, Default)]
pub(crate) struct Activations {
    /// Orders published and not activated since: when the last event was published.
    pending: HashMap<String, Instant>,
    published: u64,
    activated: u64,
    latencies_us: Vec<u32>,
}

impl Activations {
    /// The event of Order `key` was published at `at`.
    pub(crate) fn published(&mut self, key: &str, at: Instant) {
        self.published += 1;
        self.pending.insert(key.to_owned(), at);
    }

    /// A PATCH moved Order `key` to [`ACTIVATED_STATUS`] at `at`.
    pub(crate) fn activated(&mut self, key: &str, at: Instant) {
        self.activated += 1;
        if let Some(published) = self.pending.remove(key) {
            let micros = at.saturating_duration_since(published).as_micros();
            self.latencies_us
                .push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }

    /// The counts, and with `latencies` the percentiles (a sort of every latency: ask for them
    /// once at the end rather than in a poll loop).
    pub(crate) fn stats(&self, latencies: bool) -> ActivationStats {
        let mut stats = ActivationStats {
            activated: self.activated,
            published: self.published,
            latencies: self.latencies_us.len() as u64,
            ..ActivationStats::default()
        };
        if latencies && !self.latencies_us.is_empty() {
            let mut sorted = self.latencies_us.clone();
            sorted.sort_unstable();
            let rank = |p: f64| {
                // nearest rank: the smallest value with at least p of all at or below it
                #[allow(
                    clippy::cast_precision_loss,
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss
                )]
                let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
                f64::from(sorted[index]) / 1000.0
            };
            stats.p50_ms = Some(rank(0.50));
            stats.p99_ms = Some(rank(0.99));
            stats.max_ms = sorted.last().map(|&m| f64::from(m) / 1000.0);
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn latencies_run_from_the_last_publish_to_the_first_activation_after_it() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = Activations::default();
        for i in 0..100_u64 {
            a.published(&format!("o{i}"), ms(i));
        }
        // o0..o98 take 1 ms each; o99 takes 50 ms
        for i in 0..99_u64 {
            a.activated(&format!("o{i}"), ms(i + 1));
        }
        a.activated("o99", ms(99 + 50));
        // a second activation of o0 (re-approved without a new event) adds no latency
        a.activated("o0", ms(500));
        // an Order activated without a known publish counts, without a latency
        a.activated("never-published", ms(1));
        let stats = a.stats(true);
        assert_eq!(stats.activated, 102);
        assert_eq!(stats.published, 100);
        assert_eq!(stats.latencies, 100);
        assert_eq!(stats.p50_ms, Some(1.0));
        assert_eq!(stats.p99_ms, Some(1.0));
        assert_eq!(stats.max_ms, Some(50.0));
        // without the sort: counts only
        let quick = a.stats(false);
        assert_eq!(quick.activated, 102);
        assert_eq!(quick.p99_ms, None);
    }

    #[test]
    fn no_activations_no_percentiles() {
        let mut a = Activations::default();
        a.published("o1", Instant::now());
        assert_eq!(
            a.stats(true),
            ActivationStats {
                published: 1,
                ..ActivationStats::default()
            }
        );
    }
}
