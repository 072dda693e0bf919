//! The engine's error type, for the operations a caller runs directly (a reconcile sweep, a
//! key rotation); a job's own failures are settled inside the job ([`crate::JobOutcome`]).

/// What went wrong, by the port that failed; each says what to do in its message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed (usually transient: try again).
    #[error("store: {0}")]
    Store(#[from] provisioner_store::Error),
    /// Salesforce failed (see the inner error: credentials, permissions, limits).
    #[error("salesforce: {0}")]
    Salesforce(#[from] sf_rest::Error),
    /// An audit record could not be built; nothing it would record was changed.
    #[error("audit record: {0}")]
    Audit(#[from] audit::Error),
}

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
