#![doc = include_str!("../README.md")]

mod alert;
mod allowlist;
mod dedup;
mod detect;
mod error;
mod limiter;
mod monitor;
mod rate;
mod sink;

pub use alert::{
    Alert, AlertKind, DetailKey, DetailValue, Details, Id, IntegrityCheck, Severity, Subject,
    chain_position,
};
pub use allowlist::IpAllowlist;
pub use dedup::Deduplicator;
pub use detect::{DetectorConfig, MAX_TRACKED_KEYS, Thresholds, WindowCounter};
pub use error::{Error, Result};
pub use limiter::{KeyedRateLimiter, PRUNE_EVERY_CHECKS, RetryAfter};
pub use monitor::SecurityMonitor;
pub use rate::{Period, Rate};
#[cfg(any(test, feature = "mock"))]
pub use sink::MockAlertSink;
pub use sink::{
    AlertOutbox, AlertSink, LogSink, MemoryOutbox, OutboxError, Outgoing, WebhookConfig,
    WebhookSink, WebhookStats, sink_for,
};

/// Re-exported so callers can name the clock of a [`KeyedRateLimiter`] in tests.
pub use governor::clock::{DefaultClock, FakeRelativeClock};
