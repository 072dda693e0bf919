//! Guards at the provisioner's edges: who may call the status API, how often a customer may
//! provision or poll, and what counts as suspicious enough to tell an operator.
//!
//! ```
//! use security::{IpAllowlist, KeyedRateLimiter, Rate};
//!
//! // HTTP_ALLOWED_CIDRS
//! let allow = IpAllowlist::parse("127.0.0.0/8, ::1/128")?;
//! assert!(allow.allows("127.0.0.1".parse()?));
//! assert!(allow.allows("::ffff:127.0.0.1".parse()?)); // IPv4-mapped IPv6 = its IPv4
//! assert!(!allow.allows("192.0.2.10".parse()?));
//!
//! // CUSTOMER_STATUS_RATE, one GCRA state per customer
//! let limiter = KeyedRateLimiter::new(Rate::parse("2/minute")?);
//! let customer = "C-000123".to_owned();
//! assert!(limiter.check(&customer).is_ok());
//! assert!(limiter.check(&customer).is_ok());
//! let retry = limiter.check(&customer).unwrap_err();
//! assert_eq!(retry.header_secs(), 30); // `Retry-After: 30`
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The parts:
//! - [`IpAllowlist`]: CIDR allowlist for IPv4 and IPv6; an empty list denies everything.
//! - [`Rate`] and [`KeyedRateLimiter`]: `N/second|minute|hour|day` rates over governor's keyed
//!   GCRA, refusing with a [`RetryAfter`] or telling the caller how long to delay, with idle keys
//!   evicted so memory stays bounded.
//! - [`SecurityMonitor`]: sliding-window detectors ([`Thresholds`] documents the defaults) for
//!   auth failure bursts, status enumeration, rate-limit abuse, integrity failures, events for
//!   unapproved orders and repeated provisioning failures, whose alerts go through a
//!   [`Deduplicator`] to an [`AlertSink`].
//! - [`Alert`]: the webhook's JSON body (`alert`, `severity`, `at`, `count`, `windowSeconds`,
//!   `details`; the README's Security section shows one). Its [`Details`] only take typed ids and addresses,
//!   and ids that do not look like ids are redacted, so no PII reaches a webhook.
//! - [`WebhookSink`] (`SECURITY_ALERT_WEBHOOK`): alerts kept in an [`AlertOutbox`] (in memory,
//!   or the provisioner's database so they survive restarts) and POSTed by a background task,
//!   several at once, each retried with backoff until the webhook takes it; redirects are never
//!   followed; sending never blocks or fails the caller. [`LogSink`] when no webhook is
//!   configured.
//!
//! This crate reads no environment variables: the binary passes the configured strings in.

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
