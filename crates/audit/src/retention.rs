//! `AUDIT_LOG_RETENTION_DAYS`: how long records are kept.

use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};

use crate::error::{Error, Result};
use crate::log::{AuditLog, PurgeReport};
use crate::record::Actor;

/// Default of `AUDIT_LOG_RETENTION_DAYS`: 2555 days, about 7 years.
pub const DEFAULT_RETENTION_DAYS: u32 = 2555;

/// Upper bound accepted for the retention period (about 273 years), so cutoffs stay
/// representable.
pub const MAX_RETENTION_DAYS: u32 = 100_000;

/// How long audit records are kept: a whole number of days, at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    days: u32,
}

impl RetentionPolicy {
    /// A policy of `days` days; rejects 0, negatives and more than [`MAX_RETENTION_DAYS`].
    pub fn from_days(days: i64) -> Result<Self> {
        let invalid = |reason| Error::InvalidRetention { days, reason };
        if days < 1 {
            return Err(invalid(
                "must be at least 1 day (records cannot be kept for zero or negative time)",
            ));
        }
        match u32::try_from(days) {
            Ok(d) if d <= MAX_RETENTION_DAYS => Ok(RetentionPolicy { days: d }),
            _ => Err(invalid("must be at most 100000 days")),
        }
    }

    /// The number of days.
    pub fn days(&self) -> u32 {
        self.days
    }

    /// Records with `at` before this are due for removal at `now`.
    pub fn cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        // At most 100000 days, far inside chrono's range; fall back to "remove nothing".
        TimeDelta::try_days(i64::from(self.days))
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// Purges `log` of records older than [`cutoff(now)`](Self::cutoff), recording the purge as
    /// done by `actor`.
    pub async fn apply<L: AuditLog + ?Sized>(
        &self,
        log: &L,
        now: DateTime<Utc>,
        actor: Actor,
    ) -> Result<PurgeReport> {
        log.purge(self.cutoff(now), actor).await
    }
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            days: DEFAULT_RETENTION_DAYS,
        }
    }
}

impl FromStr for RetentionPolicy {
    type Err = Error;

    /// Parses the value of `AUDIT_LOG_RETENTION_DAYS` (a whole number of days).
    fn from_str(s: &str) -> Result<Self> {
        let days = s
            .trim()
            .parse::<i64>()
            .map_err(|_| Error::InvalidRetention {
                days: 0,
                reason: "not a whole number of days",
            })?;
        RetentionPolicy::from_days(days)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn default_is_2555_days() {
        assert_eq!(RetentionPolicy::default().days(), 2555);
        assert_eq!("2555".parse::<RetentionPolicy>().unwrap().days(), 2555);
    }

    #[test]
    fn rejects_zero_negative_huge_and_garbage() {
        for d in [0, -1, i64::MIN, 100_001, i64::MAX] {
            let err = RetentionPolicy::from_days(d).unwrap_err();
            assert!(
                matches!(err, Error::InvalidRetention { days, .. } if days == d),
                "{d}"
            );
        }
        for s in ["", "seven", "1.5", "0", "-3"] {
            assert!(s.parse::<RetentionPolicy>().is_err(), "{s:?}");
        }
        assert!(
            RetentionPolicy::from_days(0)
                .unwrap_err()
                .to_string()
                .contains("at least 1 day")
        );
    }

    #[test]
    fn cutoff_is_days_before_now() {
        let now: DateTime<Utc> = "2026-03-01T12:00:00Z".parse().unwrap();
        let p = RetentionPolicy::from_days(2).unwrap();
        assert_eq!(
            p.cutoff(now),
            "2026-02-27T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let max = RetentionPolicy::from_days(i64::from(MAX_RETENTION_DAYS)).unwrap();
        assert!(max.cutoff(now) < now);
    }
}
