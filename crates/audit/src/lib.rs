#![doc = include_str!("../README.md")]

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
