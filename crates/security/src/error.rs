//! The crate's one error type.
//!
//! Every variant is a configuration problem (the operator must fix a setting) except
//! [`Error::NoRuntime`], a wiring bug, and [`Error::HttpClient`], an environment problem. Alert delivery never produces an error for the
//! caller: failures to deliver are retried in the background and counted.

/// Errors of the security crate, classified by what the caller should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An entry of `HTTP_ALLOWED_CIDRS` is neither a CIDR network nor a bare IP address.
    /// Reconfigure.
    #[error(
        "invalid allowlist entry `{entry}`: expected a CIDR network (10.0.0.0/8) or an IP address"
    )]
    InvalidCidr {
        /// The offending entry, trimmed.
        entry: String,
    },

    /// A rate such as `CUSTOMER_PROVISION_RATE` does not parse. Reconfigure.
    #[error("invalid rate `{input}`: {reason}")]
    InvalidRate {
        /// The text that was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// `SECURITY_ALERT_WEBHOOK` is not a usable `http(s)` URL. Reconfigure. The URL itself is
    /// not echoed, as webhook URLs often embed a token.
    #[error("invalid alert webhook url: {reason}")]
    InvalidWebhook {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The HTTP client for the alert webhook could not be built (TLS setup). Permanent for this
    /// process; report it.
    #[error("could not build the http client for the alert webhook")]
    HttpClient {
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },

    /// A component that spawns a background task was built outside a Tokio runtime. A wiring
    /// bug: build it from inside the runtime.
    #[error("{component} must be created inside a tokio runtime")]
    NoRuntime {
        /// The component that needs the runtime.
        component: &'static str,
    },
}

impl Error {
    /// `true` when the operator must change the configuration to fix this error.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::InvalidCidr { .. } | Self::InvalidRate { .. } | Self::InvalidWebhook { .. }
        )
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
