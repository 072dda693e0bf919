//! The exactly-once workflow engine (DESIGN §1).
//!
//! It talks only through the ports of the crates below it: [`sf_rest::OrderApi`],
//! [`whmcs_client::WhmcsApi`], [`provisioner_store::Store`], [`audit::AuditLog`] and the
//! [`Alerts`] port (implemented by [`security::SecurityMonitor`]). It does no I/O of its own.
//!
//! - [`JobRunner`] runs one claimed job through the steps of DESIGN §1, recording a recovery
//!   point after every step and an intent before every non-idempotent WHMCS call.
//! - [`intake`] turns subscription items into inbox rows, dead letters and checkpoints.
//! - [`Engine`] runs the workers, the reconcile sweep and key rotation, and shuts down
//!   gracefully.
//! - [`EngineBuilder`] is the one place an engine is wired from its ports and configuration
//!   (the service, the demo, the benches and the tests).
//! - [`EngineConfig::default`] and [`DEFAULT_PROVISION_RATE`] are the defaults of DESIGN §5's
//!   engine settings; the binary's configuration takes its defaults from them.

mod alerts;
mod builder;
mod config;
mod engine;
mod error;
pub mod intake;
mod job;
pub mod metrics;
mod reason;
mod sanitize;
pub mod subscriber;

pub use alerts::Alerts;
#[cfg(any(test, feature = "mock"))]
pub use alerts::MockAlerts;
pub use builder::{EngineBuilder, RunningEngine};
pub use config::{DEFAULT_PROVISION_RATE, EngineConfig, OrderStatuses, RetryPolicy};
pub use engine::{Engine, EngineHandle};
pub use error::{Error, Result};
pub use job::{JobOutcome, JobRunner, Ports};
pub use reason::StopReason;
pub use sanitize::{MAX_REASON_CHARS, sanitize_reason};

#[cfg(test)]
mod tests;
