#![doc = include_str!("../README.md")]

mod alerts;
mod builder;
mod clock;
mod config;
mod engine;
mod error;
pub mod intake;
mod job;
pub mod metrics;
pub mod order_intake;
mod outbox;
mod reason;
mod sanitize;
mod slot;
pub mod subscriber;

pub use alerts::Alerts;
#[cfg(any(test, feature = "mock"))]
pub use alerts::MockAlerts;
pub use builder::{EngineBuilder, RunningEngine};
pub use clock::{Clock, SystemClock};
pub use config::{
    DEFAULT_PROVISION_RATE, DEFAULT_WHMCS_SETTLE, EngineConfig, OrderStatuses, RefFields,
    RetryPolicy,
};
pub use engine::{Engine, EngineHandle};
pub use error::{Error, Result};
pub use job::{JobOutcome, JobRunner, LeaseHealth, PROVISION_RATE_SCOPE, Ports, ProvisionLimit};
pub use outbox::{AuditedSink, DEFAULT_ALERT_OUTBOX_MAX, StoreOutbox, alert_audit_record};
pub use reason::StopReason;
pub use sanitize::{MAX_REASON_CHARS, sanitize_reason};
pub use slot::{CLAIMED_PER_SLOT, pause_outside_slot};

#[cfg(test)]
mod tests;
