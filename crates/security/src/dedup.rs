//! Alert deduplication: one alert per kind and subject per window, counts aggregated.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::{Alert, AlertKind, Subject};

#[derive(Debug)]
struct Entry {
    opened: Instant,
    suppressed: u64,
    last: Alert,
}

/// Lets the first alert of a kind about a subject through, holds back the ones that follow within
/// `window` and adds their counts to the next alert that goes out, so no event goes uncounted.
///
/// Held-back counts leave either with the next alert after the window or through
/// [`flush`](Self::flush), which sends one summary alert per subject whose window has ended.
#[derive(Debug)]
pub struct Deduplicator {
    window: Duration,
    entries: HashMap<(AlertKind, Subject), Entry>,
}

impl Deduplicator {
    /// A deduplicator with the given window; a zero window lets everything through.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            entries: HashMap::new(),
        }
    }

    /// The alert to send now, or `None` when it duplicates one sent within the window.
    pub fn offer(&mut self, alert: Alert, now: Instant) -> Option<Alert> {
        let key = (alert.kind, alert.subject.clone());
        match self.entries.get_mut(&key) {
            Some(entry) if now.saturating_duration_since(entry.opened) < self.window => {
                entry.suppressed += alert.count;
                entry.last = alert;
                None
            }
            Some(entry) => {
                let mut out = alert;
                out.count += entry.suppressed;
                *entry = Entry {
                    opened: now,
                    suppressed: 0,
                    last: out.clone(),
                };
                Some(out)
            }
            None => {
                self.entries.insert(
                    key,
                    Entry {
                        opened: now,
                        suppressed: 0,
                        last: alert.clone(),
                    },
                );
                Some(alert)
            }
        }
    }

    /// Ends every window that is over at `now`: returns one alert per subject that had
    /// duplicates held back (its count is theirs), and forgets the subject.
    pub fn flush(&mut self, now: Instant) -> Vec<Alert> {
        let window = self.window;
        let mut out = Vec::new();
        self.entries.retain(|_, entry| {
            if now.saturating_duration_since(entry.opened) < window {
                return true;
            }
            if entry.suppressed > 0 {
                let mut alert = entry.last.clone();
                alert.count = entry.suppressed;
                alert.at = crate::alert::now_millis();
                out.push(alert);
            }
            false
        });
        self.entries.shrink_to_fit();
        out
    }

    /// Subjects with an open window.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` when no window is open.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::Details;

    const S: Duration = Duration::from_secs(1);

    fn alert(kind: AlertKind, customer: &str, count: u64) -> Alert {
        Alert::new(
            kind,
            Subject::customer(customer),
            count,
            60 * S,
            Details::new().customer_number(customer),
        )
    }

    #[test]
    fn duplicates_within_window_are_held_and_counted() {
        let mut d = Deduplicator::new(60 * S);
        let t0 = Instant::now();
        let k = AlertKind::RepeatedProvisioningFailure;
        assert_eq!(d.offer(alert(k, "C-1", 3), t0).unwrap().count, 3);
        assert!(d.offer(alert(k, "C-1", 3), t0 + S).is_none());
        assert!(d.offer(alert(k, "C-1", 3), t0 + 59 * S).is_none());
        // Another subject or another kind is not a duplicate.
        assert!(d.offer(alert(k, "C-2", 3), t0 + S).is_some());
        assert!(
            d.offer(alert(AlertKind::UnapprovedOrderEvent, "C-1", 1), t0 + S)
                .is_some()
        );
        // After the window, the next alert carries the held-back counts.
        assert_eq!(d.offer(alert(k, "C-1", 3), t0 + 60 * S).unwrap().count, 9);
        assert!(d.offer(alert(k, "C-1", 3), t0 + 61 * S).is_none());
    }

    #[test]
    fn flush_sends_held_back_counts_once() {
        let mut d = Deduplicator::new(60 * S);
        let t0 = Instant::now();
        let k = AlertKind::StatusEnumeration;
        d.offer(alert(k, "C-1", 20), t0).unwrap();
        assert!(d.offer(alert(k, "C-1", 20), t0 + S).is_none());
        assert!(d.offer(alert(k, "C-1", 20), t0 + 2 * S).is_none());
        d.offer(alert(k, "C-2", 20), t0).unwrap();
        assert!(d.flush(t0 + 59 * S).is_empty());
        let flushed = d.flush(t0 + 60 * S);
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0].count, 40);
        assert_eq!(flushed[0].subject, Subject::customer("C-1"));
        assert!(d.is_empty());
        assert!(d.flush(t0 + 600 * S).is_empty());
        // A fresh window afterwards.
        assert_eq!(d.offer(alert(k, "C-1", 20), t0 + 61 * S).unwrap().count, 20);
    }

    #[test]
    fn zero_window_lets_everything_through() {
        let mut d = Deduplicator::new(Duration::ZERO);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(
                d.offer(alert(AlertKind::RateLimitAbuse, "C-1", 1), t0)
                    .is_some()
            );
        }
    }
}
