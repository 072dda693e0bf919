//! Rates such as `30/hour`: the syntax of `CUSTOMER_PROVISION_RATE` and `CUSTOMER_STATUS_RATE`.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::Quota;

use crate::{Error, Result};

/// The period a [`Rate`] counts over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (24 hours).
    Day,
}

impl Period {
    /// The length of the period.
    pub const fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
        })
    }

    /// The unit as written in configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }
}

/// `N` events per period, with a burst of `N`: `N/second`, `N/minute`, `N/hour` or `N/day`.
///
/// The GCRA behind it lets `N` events through at once, then one more every `period / N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    count: NonZeroU32,
    period: Period,
}

impl Rate {
    /// `count` events per `period`.
    pub const fn new(count: NonZeroU32, period: Period) -> Self {
        Self { count, period }
    }

    /// Events allowed per period, which is also the burst.
    pub const fn count(&self) -> NonZeroU32 {
        self.count
    }

    /// The period.
    pub const fn period(&self) -> Period {
        self.period
    }

    /// Time for one event's worth of capacity to come back: `period / count`.
    pub fn replenish_interval(&self) -> Duration {
        self.period.duration() / self.count.get()
    }

    /// The governor quota: burst `count`, one cell back every `period / count`.
    pub fn quota(&self) -> Quota {
        // `period / count` is at least 1 ns for any u32 count and a period of one second or more,
        // so `with_period` cannot refuse it; fall back to a per-nanosecond quota to stay total.
        let per = self.replenish_interval().max(Duration::from_nanos(1));
        Quota::with_period(per)
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(self.count)
    }

    /// Parses `N/unit`; see the type docs.
    ///
    /// # Errors
    /// [`Error::InvalidRate`] saying what is wrong (missing `/`, not a number, zero, unknown unit).
    pub fn parse(input: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidRate {
            input: input.to_owned(),
            reason,
        };
        let (count, unit) = input
            .split_once('/')
            .ok_or_else(|| invalid("expected `N/second`, `N/minute`, `N/hour` or `N/day`"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| invalid("the count must be a whole number"))?;
        let count =
            NonZeroU32::new(count).ok_or_else(|| invalid("the count must be at least 1"))?;
        let period = match unit.trim().to_ascii_lowercase().as_str() {
            "second" => Period::Second,
            "minute" => Period::Minute,
            "hour" => Period::Hour,
            "day" => Period::Day,
            _ => {
                return Err(invalid(
                    "the unit must be `second`, `minute`, `hour` or `day`",
                ));
            }
        };
        Ok(Self { count, period })
    }
}

impl FromStr for Rate {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.period.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn check_ok(input: &str, count: u32, period: Period, display: &str) {
        let rate = Rate::parse(input).unwrap();
        assert_eq!(rate.count().get(), count, "{input}");
        assert_eq!(rate.period(), period, "{input}");
        assert_eq!(rate.to_string(), display);
        assert_eq!(Rate::parse(display).unwrap(), rate);
    }

    fn check_err(input: &str, reason_part: &str) {
        let err = Rate::parse(input).unwrap_err();
        assert!(err.is_config());
        let msg = err.to_string();
        assert!(msg.contains(reason_part), "{input}: {msg}");
        assert!(msg.contains(&format!("`{input}`")), "{input}: {msg}");
    }

    #[test]
    fn parses_the_documented_forms() {
        check_ok("30/hour", 30, Period::Hour, "30/hour");
        check_ok("60/minute", 60, Period::Minute, "60/minute");
        check_ok("5/second", 5, Period::Second, "5/second");
        check_ok("1000/day", 1000, Period::Day, "1000/day");
        check_ok(" 7 / Minute ", 7, Period::Minute, "7/minute");
    }

    #[test]
    fn rejects_bad_rates_with_a_reason() {
        check_err("0/hour", "at least 1");
        check_err("30/fortnight", "unit");
        check_err("30/hours", "unit");
        check_err("30", "expected");
        check_err("abc/hour", "whole number");
        check_err("-1/hour", "whole number");
        check_err("", "expected");
    }

    #[test]
    fn quota_has_burst_n_and_replenishes_evenly() {
        let rate = Rate::parse("30/hour").unwrap();
        let quota = rate.quota();
        assert_eq!(quota.burst_size().get(), 30);
        assert_eq!(quota.replenish_interval(), Duration::from_secs(120));
        let fast = Rate::parse("4000000000/second").unwrap().quota();
        assert_eq!(fast.burst_size().get(), 4_000_000_000);
        assert!(fast.replenish_interval() > Duration::ZERO);
    }
}
