//! Tamper-evident audit log: typed records without PII, chained by HMAC-SHA256 so that anyone
//! who can write the storage but lacks the audit key cannot rewrite history unnoticed.
//!
//! ```
//! use audit::{Action, Actor, AuditKey, AuditLog, DetailKey, MemoryAuditLog, NewAuditRecord, Outcome};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> audit::Result<()> {
//! // The binary derives these bytes from the master key (field-crypto); never a constant.
//! let key = AuditKey::derive(&[0x5a; 32])?;
//! let log = MemoryAuditLog::new(key.clone());
//!
//! log.append(
//!     NewAuditRecord::new(Actor::SUBSCRIBER, Action::EVENT_RECEIVED, Outcome::Success)
//!         .order_id("801xx000003DIsYAAW")?
//!         .customer_number("C-1001")?
//!         .detail(DetailKey::EventId, "7f9c1e2a-0b7e-4a8e-9d2c-1f0e5b6a7c8d")?,
//! )
//! .await?;
//! let second = log
//!     .append(
//!         NewAuditRecord::new(Actor::ENGINE, Action::STEP_SUCCEEDED, Outcome::Success)
//!             .order_id("801xx000003DIsYAAW")?
//!             .detail(DetailKey::Step, "add_order")?
//!             .detail(DetailKey::WhmcsOrderId, "4711")?,
//!     )
//!     .await?;
//! assert_eq!(second.record.seq, 2);
//!
//! let summary = audit::verify(&log, &key).await?;
//! assert_eq!((summary.records, summary.first_seq, summary.last_seq), (2, Some(1), Some(2)));
//!
//! // Free text does not fit: ids and codes only.
//! assert!(NewAuditRecord::new(Actor::ENGINE, Action::ORDER_REFUSED, Outcome::Refused)
//!     .customer_number("Jane Doe")
//!     .is_err());
//! # Ok(())
//! # }
//! ```
//!
//! # Pieces
//!
//! - [`record`]: [`NewAuditRecord`] (what callers append), [`AuditRecord`], [`SealedRecord`]
//!   (record + MAC, as stored), and the types that keep PII out (see the module docs for the
//!   rule).
//! - [`canonical`]: the frozen byte encoding the MAC covers.
//! - [`chain`]: `mac = HMAC-SHA256(audit key, prev_mac || canonical(record))`, genesis
//!   `prev_mac` = 32 zero bytes, sequence numbers from 1; [`ChainHead::seal`], [`Verifier`],
//!   [`verify_records`], [`Anchor`], [`purge_record`] — pure, for every storage backend.
//! - [`AuditLog`]: the async port (append, read range, head, anchor, purge), with
//!   [`MemoryAuditLog`] and [`JsonlAuditLog`]; the database implementation lives in
//!   provisioner-store. [`verify()`] checks a whole log through the port.
//! - [`RetentionPolicy`]: `AUDIT_LOG_RETENTION_DAYS` (default 2555, at least 1).
//! - [`AuditKey`]: the secret HMAC key; its `Debug`/`Display` show only a fingerprint.

pub mod canonical;
pub mod chain;
mod error;
pub mod jsonl;
mod key;
mod log;
mod memory;
pub mod record;
mod retention;

pub use canonical::{CANONICAL_MAGIC, canonical_bytes};
pub use chain::{
    Anchor, ChainHead, Tamper, Verifier, VerifySummary, compute_mac, purge_record, seal,
    verify_records,
};
pub use error::{Error, ErrorClass, Result};
pub use jsonl::{JsonlAuditLog, JsonlOptions, TornTail};
pub use key::{AuditKey, Mac};
#[cfg(feature = "mock")]
pub use log::MockAuditLog;
pub use log::{AuditLog, PurgeReport, VERIFY_PAGE, verify, verify_after};
pub use memory::MemoryAuditLog;
pub use record::{
    Action, Actor, AuditRecord, DetailKey, Details, NewAuditRecord, Outcome, SealedRecord,
    SubjectId,
};
pub use retention::{DEFAULT_RETENTION_DAYS, MAX_RETENTION_DAYS, RetentionPolicy};
