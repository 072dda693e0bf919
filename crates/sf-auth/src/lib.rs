#![doc = include_str!("../README.md")]

mod error;
mod jwt;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

pub use error::{Error, Result};
pub use jwt::{DEFAULT_ASSERTION_LIFETIME, DEFAULT_LOGIN_URL, JwtBearer, JwtBearerConfig};

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

/// Metric: token requests sent to the token endpoint (each is a fresh JWT bearer exchange).
pub const TOKEN_REQUESTS_TOTAL: &str = "salesforce_token_requests_total";

/// Where Salesforce clients get their access token.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait TokenSource: Send + Sync {
    /// A valid token: the cached one, or a freshly minted one (one request even when many tasks
    /// ask at once).
    async fn token(&self) -> Result<AccessToken>;

    /// Tells the source that Salesforce rejected `stale` (401 `INVALID_SESSION_ID`,
    /// `UNAUTHENTICATED`); the next [`TokenSource::token`] mints a new one unless a newer
    /// generation is already cached.
    fn invalidate(&self, stale: &AccessToken);
}

/// A [`TokenSource`] that always hands out the same token (generation 1) and ignores
/// invalidation: for tools given a session id by hand, and for tests.
#[derive(Clone, Debug)]
pub struct StaticToken {
    token: AccessToken,
}

impl StaticToken {
    /// A source for `token` at `instance_url` (scheme + host) in org `org_id`.
    pub fn new(
        token: SecretString,
        instance_url: impl Into<String>,
        org_id: impl Into<String>,
    ) -> Self {
        let instance_url = instance_url.into().trim_end_matches('/').to_owned();
        Self {
            token: AccessToken {
                token,
                instance_url,
                org_id: org_id.into(),
                generation: 1,
            },
        }
    }
}

#[async_trait]
impl TokenSource for StaticToken {
    async fn token(&self) -> Result<AccessToken> {
        Ok(self.token.clone())
    }

    fn invalidate(&self, _stale: &AccessToken) {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn static_token_hands_out_its_token_and_hides_it_from_debug() {
        let source = StaticToken::new(
            SecretString::from("00Dxx!sessionsecret"),
            "https://example.my.salesforce.com/",
            "00D000000000001AAA",
        );
        let token = source.token().await.unwrap();
        assert_eq!(token.secret(), "00Dxx!sessionsecret");
        assert_eq!(token.instance_url, "https://example.my.salesforce.com");
        source.invalidate(&token);
        assert_eq!(source.token().await.unwrap().generation, 1);
        let debug = format!("{source:?} {token:?}");
        assert!(!debug.contains("sessionsecret"), "{debug}");
        assert!(debug.contains("00D000000000001AAA"));
    }
}
