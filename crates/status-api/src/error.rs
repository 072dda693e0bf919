//! The crate's one error type.

/// Errors of the status API, classified by what the caller should do.
///
/// Requests never produce an [`Error`]: every request gets an HTTP answer. These are the errors
/// of building the API ([`crate::StatusApiBuilder::build`], reconfigure) and of running its
/// server ([`crate::serve`], a runtime failure of the process).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `PORTAL_API_TOKEN` is empty, which would let an empty bearer token in. Reconfigure.
    #[error("PORTAL_API_TOKEN is empty: set a long random token for the portal to present")]
    EmptyToken,

    /// The TLS certificate chain or private key (`PROVISIONER_TLS_CERT_FILE`,
    /// `PROVISIONER_TLS_KEY_FILE`) is unusable: not PEM, no certificate, no private key, or a
    /// key that does not match the certificate. The message never contains key material.
    /// Reconfigure.
    #[error("TLS {what}: {reason}")]
    Tls {
        /// Which input: `certificate` or `private key` (or `configuration` for the pair).
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// The HTTP server stopped with an I/O error (accepting connections failed). A runtime
    /// failure: the process should exit non-zero and be restarted.
    #[error("status api server failed: {source}")]
    Serve {
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// `true` when the operator must change the configuration to fix this error.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::EmptyToken | Self::Tls { .. })
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
