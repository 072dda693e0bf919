//! Salesforce OAuth 2.0 JWT bearer authentication.
//!
//! [`TokenSource`] is the port every Salesforce client (REST, Pub/Sub) asks for an access token.

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

/// An access token with what a client needs to call the org.
#[derive(Clone)]
pub struct AccessToken {
    /// The bearer token (session id). Never printed.
    pub token: SecretString,
    /// `instance_url` from the token response, scheme + host, no trailing slash.
    pub instance_url: String,
    /// The 18-character org id, parsed from the token response's `id` URL.
    pub org_id: String,
    /// A number that grows each time a new token is minted; lets callers invalidate precisely.
    pub generation: u64,
}

impl AccessToken {
    /// The bearer token text, for an `Authorization` header or `accesstoken` metadata.
    pub fn secret(&self) -> &str {
        self.token.expose_secret()
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"[REDACTED]")
            .field("instance_url", &self.instance_url)
            .field("org_id", &self.org_id)
            .field("generation", &self.generation)
            .finish()
    }
}

/// Errors from obtaining a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Placeholder until the JWT bearer implementation lands.
    #[error("token endpoint failed: {0}")]
    Other(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where Salesforce clients get their access token.
#[async_trait]
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait TokenSource: Send + Sync {
    /// A valid token: the cached one, or a freshly minted one (one request even when many tasks
    /// ask at once).
    async fn token(&self) -> Result<AccessToken>;

    /// Tells the source that Salesforce rejected `stale` (401 `INVALID_SESSION_ID`,
    /// `UNAUTHENTICATED`); the next [`TokenSource::token`] mints a new one unless a newer
    /// generation is already cached.
    fn invalidate(&self, stale: &AccessToken);
}
