//! The exactly-once workflow engine: an approved Order's event in, one WHMCS order out, the
//! outcome written back to the Order.
//!
//! One Order end to end, against the loopback emulators of the `sandbox` crate, with the real
//! Salesforce and WHMCS clients and a SQLite store:
//!
//! ```
//! use std::sync::Arc;
//!
//! use provisioner_core::intake::{EventFields, IntakeItem};
//! use provisioner_core::{EngineBuilder, EngineConfig, JobOutcome};
//! use provisioner_store::{SqlStore, StoreOptions};
//! use sandbox::salesforce::{KeyPair, SalesforceConfig, SalesforceSandbox};
//! use sandbox::seed::{Plan, seed};
//! use sandbox::whmcs::WhmcsSandbox;
//! use secrecy::SecretString;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Salesforce with one Approved Order, WHMCS with its customer's client and the product
//! // (custom field 12 holds the Salesforce Order Id: WHMCS_ORDER_REF_FIELD_ID).
//! // The connected app trusts a fresh key pair.
//! let keys = KeyPair::generate()?;
//! let sf = SalesforceSandbox::start(SalesforceConfig::trusting(keys.public_key_pem())).await?;
//! let whmcs = WhmcsSandbox::start().await?;
//! let plan = Plan {
//!     customers: 1,
//!     orders_per_customer: 1,
//!     quantity: 1,
//!     billing_cycle: "monthly".into(),
//!     config_options: None,
//!     status: "Approved".into(),
//!     order_ref_field_id: 12,
//!     products: 1,
//! };
//! let event = seed(&sf, &whmcs, &plan).events.remove(0);
//!
//! // The ports: the real clients, a store that is also the audit chain, alerts to the log.
//! let tokens = Arc::new(sf_auth::JwtBearer::new(sf_auth::JwtBearerConfig::new(
//!     sf.base_url(),
//!     sf.config().client_id.clone(),
//!     sf.config().usernames[0].clone(),
//!     keys.private_key_pem().clone(),
//! ))?);
//! let dir = tempfile::tempdir()?;
//! let key = "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o="; // FIELD_ENCRYPTION_KEY
//! let master = field_crypto::MasterKey::from_config(key)?;
//! let url = format!("sqlite://{}/provisioner.db", dir.path().display());
//! let store = Arc::new(SqlStore::open(&url, &master, StoreOptions::default()).await?);
//! let orders = Arc::new(sf_rest::RestOrderApi::new(tokens, sf_rest::RestConfig::default())?);
//! let whmcs_api = Arc::new(whmcs_client::HttpWhmcsClient::new(whmcs_client::WhmcsConfig::new(
//!     whmcs.api_url(),
//!     SecretString::from(whmcs.config().identifier.clone()),
//!     SecretString::from(whmcs.config().secret.clone()),
//! ))?);
//! let alerts = Arc::new(security::SecurityMonitor::new(
//!     Arc::new(security::LogSink),
//!     security::Thresholds::default(),
//! ));
//! let config = EngineConfig {
//!     order_ref_fields: Some(12.into()),
//!     ..EngineConfig::default()
//! };
//! let (tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
//! let running = EngineBuilder::new(orders, whmcs_api, store.clone(), store.clone(), alerts)
//!     .config(config)
//!     .outcomes(tx)
//!     .start();
//!
//! // What the subscriber hands over for a decoded event: stored (inbox, job, checkpoint and
//! // its audit record in one transaction), then claimed and worked by a worker.
//! running
//!     .engine
//!     .intake_batch(vec![IntakeItem::Event {
//!         event_id: "event-1".into(),
//!         replay_id: vec![0, 0, 0, 1],
//!         payload: Vec::new(),
//!         decoded: Ok(EventFields {
//!             order_id: event.order_id.clone(),
//!             customer_number: event.customer_number.clone(),
//!             account_id: event.account_id.clone(),
//!         }),
//!     }])
//!     .await?;
//! // Outcomes arrive as jobs settle; a transient error would come first as `Retrying`.
//! let (order_id, outcome) = loop {
//!     let (order_id, outcome) = outcomes.recv().await.ok_or("the engine stopped")?;
//!     if !matches!(outcome, JobOutcome::Retrying { .. }) {
//!         break (order_id, outcome);
//!     }
//! };
//! assert!(matches!(outcome, JobOutcome::Provisioned { .. }), "{outcome:?}");
//! let order = sf.order(&order_id).ok_or("no such Order")?;
//! assert_eq!(order.status, "Activated"); // with WHMCS_Order_Id__c and the service ids
//! assert_eq!(whmcs.orders().len(), 1);
//! running.handle.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! It talks only through ports: [`sf_rest::OrderApi`], [`whmcs_client::WhmcsApi`],
//! [`provisioner_store::Store`], [`audit::AuditLog`] and the [`Alerts`] port (implemented here
//! for [`security::SecurityMonitor`]). It does no I/O of its own: no sockets, files, SQL or
//! HTTP, only tasks and timers. The one concrete type it takes besides the ports is the
//! in-memory per-customer limiter, [`security::KeyedRateLimiter`].
//!
//! - [`JobRunner`] runs one claimed job through its steps (fetch and check the Order, mark it
//!   Provisioning, AddOrder, AcceptOrder, write back), storing a recovery point after every
//!   step and an intent before every non-idempotent WHMCS call, so a resumed job looks an
//!   unknown outcome up before it ever repeats the call.
//! - [`intake`] turns subscription items into inbox rows, dead letters and checkpoints.
//! - [`Engine`] runs the workers (renewing each claimed job's lease while it runs), the
//!   reconcile sweep and key rotation, and shuts down gracefully.
//! - [`EngineBuilder`] is the one place an engine is wired from its ports and configuration
//!   (the service, the demo, the benches and the tests).
//! - [`EngineConfig::default`] and [`DEFAULT_PROVISION_RATE`] are the defaults of the engine's
//!   settings; the binary's configuration takes its defaults from them.
//! - [`subscriber`] holds the Pub/Sub subscription (one instance at a time) and resumes from the
//!   stored checkpoint; when Salesforce rejects that position it runs a reconcile sweep.

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

#[cfg(test)]
mod tests;
