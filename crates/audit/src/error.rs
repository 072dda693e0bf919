//! The crate's error type.

use std::path::PathBuf;

use crate::chain::Tamper;
use crate::record::DetailKey;

/// Everything that can go wrong when recording, storing, verifying or purging audit records.
///
/// Messages never contain key bytes or the rejected field values (a rejected value might be the
/// very PII the checks keep out), only field names, sequence numbers, paths and positions.
/// [`Error::class`] says what the caller should do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A record field (actor, action, order id, customer number) was rejected by the validation
    /// that keeps free text and PII out of the log. A bug in the caller.
    #[error("audit record field `{field}` rejected: {reason}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// What is wrong with it (never the value).
        reason: &'static str,
    },
    /// A detail value does not have the shape its key allows. A bug in the caller.
    #[error("audit detail `{key}` rejected: {reason}")]
    InvalidDetail {
        /// The detail key.
        key: DetailKey,
        /// What is wrong with the value (never the value).
        reason: &'static str,
    },
    /// The audit key material is unusable.
    #[error("audit key rejected: {reason}")]
    InvalidKey {
        /// What is wrong with it (never the key).
        reason: &'static str,
    },
    /// `AUDIT_LOG_RETENTION_DAYS` (or a programmatic retention period) is out of range.
    #[error("audit retention of {days} days rejected: {reason}")]
    InvalidRetention {
        /// The rejected number of days.
        days: i64,
        /// Why.
        reason: &'static str,
    },
    /// Verification found the chain broken: `seq` is the first bad sequence number.
    #[error("audit chain broken at seq {seq}: {reason}")]
    Tampered {
        /// The first sequence number that does not verify.
        seq: u64,
        /// Why it does not verify.
        reason: Tamper,
    },
    /// Reading or writing the log file failed.
    #[error("audit log i/o failed ({op}) on {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A stored line (not the last one) cannot be parsed, or the file's structure is wrong.
    #[error("audit log {} is corrupt at line {line}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong (never the line's content).
        reason: String,
    },
    /// The file ends in an incomplete line: the process died while appending. The record on
    /// that line was never acknowledged to its caller.
    #[error(
        "audit log {} ends in a torn line {line} at byte {offset} (crash during append); \
         open with JsonlOptions::repair_torn_tail to cut it off",
        path.display()
    )]
    TornTail {
        /// The file.
        path: PathBuf,
        /// 1-based line number of the torn line.
        line: u64,
        /// Byte offset where the torn line starts (the length the file will be cut to).
        offset: u64,
    },
    /// A storage backend outside this crate (e.g. the provisioner's database) failed.
    #[error("audit storage failed ({op}): {source}")]
    Backend {
        /// What was being done.
        op: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An earlier write failed half-way, so the in-memory head may no longer match storage.
    #[error("audit log is unusable after an earlier failed write; reopen it")]
    Poisoned,
    /// The sequence number space is exhausted (2^64 - 1 records).
    #[error("audit log sequence numbers exhausted")]
    SeqExhausted,
}

/// What the caller should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Transient (I/O): retry with backoff.
    Retry,
    /// Configuration or operator action needed (bad key, bad retention, corrupt/torn file).
    Reconfigure,
    /// A bug in the caller: the same input will fail again.
    Permanent,
    /// The log has been tampered with: raise a security alert, do not "fix" it automatically.
    Tampered,
}

impl Error {
    /// What the caller should do about this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Io { .. } | Error::Backend { .. } | Error::Poisoned => ErrorClass::Retry,
            Error::InvalidKey { .. }
            | Error::InvalidRetention { .. }
            | Error::Corrupt { .. }
            | Error::TornTail { .. }
            | Error::SeqExhausted => ErrorClass::Reconfigure,
            Error::InvalidField { .. } | Error::InvalidDetail { .. } => ErrorClass::Permanent,
            Error::Tampered { .. } => ErrorClass::Tampered,
        }
    }

    pub(crate) fn io(path: &std::path::Path, op: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
