//! The error type of this crate, classified by what the caller should do.

/// Why no token could be had.
///
/// [`Error::is_retryable`] says whether trying again later can help (network trouble, 5xx);
/// everything else needs an operator to fix the configuration or the connected app.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable (empty field, bad URL).
    #[error("invalid salesforce auth configuration: {field}: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The private key is not an RSA private key in PEM form.
    #[error(
        "the salesforce private key is not a usable rsa pem key ({reason}): set SF_PRIVATE_KEY or SF_PRIVATE_KEY_FILE to the PEM key whose certificate is uploaded to the connected app"
    )]
    InvalidPrivateKey {
        /// The parser's complaint (never the key).
        reason: String,
    },

    /// `invalid_grant` / `user hasn't approved this consumer`: the user is not pre-authorised
    /// for the connected app, does not exist on this login host, or never approved the app.
    #[error(
        "salesforce refused user {username}: user hasn't approved this consumer: pre-authorise the user on the connected app (\"Admin approved users are pre-authorized\" plus the user's profile or permission set), and check that SF_USERNAME exists on the org behind SF_LOGIN_URL"
    )]
    UserNotApproved {
        /// The `sub` the assertion named.
        username: String,
    },

    /// `invalid_grant` / `audience is invalid`: the `aud` claim is not what the org expects.
    #[error(
        "salesforce refused the assertion audience {audience:?}: audience is invalid: set SF_AUDIENCE to https://login.salesforce.com, https://test.salesforce.com or the org's My Domain URL"
    )]
    AudienceInvalid {
        /// The `aud` the assertion carried.
        audience: String,
    },

    /// `invalid_grant` / `invalid assertion`: the signature does not verify with the
    /// certificate uploaded to the connected app, or the JWT is malformed.
    #[error(
        "salesforce refused the assertion: invalid assertion: the private key does not match the certificate uploaded to the connected app (\"Use digital signatures\")"
    )]
    InvalidAssertion,

    /// `invalid_grant` / `expired authorization code`: the assertion's `exp` had already passed
    /// when Salesforce read it.
    #[error(
        "salesforce refused the assertion: expired authorization code: the assertion's exp is in the past; check this host's clock (NTP)"
    )]
    AssertionExpired,

    /// `invalid_client_id`: the `iss` claim names no connected app.
    #[error(
        "salesforce does not know client id {client_id:?}: client identifier invalid: set SF_CLIENT_ID to the connected app's consumer key"
    )]
    InvalidClientId {
        /// The `iss` the assertion carried.
        client_id: String,
    },

    /// `invalid_app_access`: an access policy keeps this user out of the app.
    #[error(
        "salesforce refused user {username} access to the connected app: {description}: grant the user access to the app"
    )]
    AppAccessDenied {
        /// The `sub` the assertion named.
        username: String,
        /// Salesforce's `error_description`.
        description: String,
    },

    /// Any other refusal from the token endpoint (4xx with an OAuth error body or none).
    #[error("salesforce token endpoint refused the request: http {status}: {error}: {description}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// OAuth `error` code, or empty.
        error: String,
        /// OAuth `error_description`, or empty.
        description: String,
    },

    /// Network failure, timeout, or a 5xx / 429 from the token endpoint: retry later.
    #[error("salesforce token endpoint unavailable: {reason}")]
    Unavailable {
        /// HTTP status when there was one.
        status: Option<u16>,
        /// What happened (never a secret).
        reason: String,
    },

    /// A 200 answer that is not a usable token response.
    #[error("salesforce token endpoint gave an unusable answer: {reason}")]
    InvalidResponse {
        /// What is missing or malformed (never the token).
        reason: String,
    },

    /// Signing the assertion failed.
    #[error("could not sign the jwt assertion: {reason}")]
    Signing {
        /// The signer's complaint (never the key).
        reason: String,
    },
}

impl Error {
    /// Whether trying again later can succeed without anybody changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Whether an operator must change configuration (key, client id, user, audience, clock).
    pub fn needs_reconfiguration(&self) -> bool {
        !matches!(
            self,
            Error::Unavailable { .. } | Error::InvalidResponse { .. } | Error::Rejected { .. }
        )
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retryable() {
        let unavailable = Error::Unavailable {
            status: Some(503),
            reason: "http 503".into(),
        };
        assert!(unavailable.is_retryable());
        assert!(!unavailable.needs_reconfiguration());
        for permanent in [
            Error::InvalidAssertion,
            Error::AssertionExpired,
            Error::UserNotApproved {
                username: "u".into(),
            },
        ] {
            assert!(!permanent.is_retryable(), "{permanent}");
            assert!(permanent.needs_reconfiguration(), "{permanent}");
        }
    }

    #[test]
    fn user_not_approved_tells_the_operator_to_pre_authorise() {
        let text = Error::UserNotApproved {
            username: "integration@example.com".into(),
        }
        .to_string();
        assert!(
            text.contains("pre-authorise the user on the connected app"),
            "{text}"
        );
        assert!(
            text.contains("user hasn't approved this consumer"),
            "{text}"
        );
    }
}
