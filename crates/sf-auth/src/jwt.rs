//! The OAuth 2.0 JWT bearer flow and its single-flight token cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::{AccessToken, Error, Result, TokenSource};

/// `SF_LOGIN_URL`'s default.
pub const DEFAULT_LOGIN_URL: &str = "https://login.salesforce.com";

/// How long an assertion is valid: Salesforce asks for "within 3 minutes".
pub const DEFAULT_ASSERTION_LIFETIME: Duration = Duration::from_secs(180);

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// What [`JwtBearer`] needs: the `SF_LOGIN_URL`, `SF_AUDIENCE`, `SF_CLIENT_ID`, `SF_USERNAME`
/// and `SF_PRIVATE_KEY` settings.
#[derive(Clone)]
pub struct JwtBearerConfig {
    /// Token endpoint base, e.g. `https://login.salesforce.com` or a My Domain URL.
    pub login_url: String,
    /// The JWT `aud`; `None` means the login URL.
    pub audience: Option<String>,
    /// The connected app's consumer key (JWT `iss`).
    pub client_id: String,
    /// The integration user's username (JWT `sub`).
    pub username: String,
    /// The RSA private key, PEM (PKCS#1 or PKCS#8).
    pub private_key_pem: SecretString,
    /// `exp` = now + this; defaults to [`DEFAULT_ASSERTION_LIFETIME`].
    pub assertion_lifetime: Duration,
    /// Timeout of one token request, connect included.
    pub request_timeout: Duration,
}

impl JwtBearerConfig {
    /// A configuration with the default audience (the login URL), a 3-minute assertion lifetime
    /// and a 30-second request timeout.
    pub fn new(
        login_url: impl Into<String>,
        client_id: impl Into<String>,
        username: impl Into<String>,
        private_key_pem: SecretString,
    ) -> Self {
        Self {
            login_url: login_url.into(),
            audience: None,
            client_id: client_id.into(),
            username: username.into(),
            private_key_pem,
            assertion_lifetime: DEFAULT_ASSERTION_LIFETIME,
            request_timeout: Duration::from_secs(30),
        }
    }

    /// A configuration from the provisioner's variable names, looked up with `lookup` (for a
    /// program, `|name| std::env::var(name).ok()`; this crate reads no environment itself):
    /// `SF_LOGIN_URL`, `SF_CLIENT_ID`, `SF_USERNAME`, the key as `SF_PRIVATE_KEY` (PEM text) or
    /// `SF_PRIVATE_KEY_FILE` (a PEM file, read now), and the optional `SF_AUDIENCE`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the variable that is missing or empty, or the key file
    /// that cannot be read.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let required = |name: &'static str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(Error::InvalidConfig {
                    field: name,
                    reason: "not set".into(),
                })
        };
        let (login_url, client_id, username) = (
            required("SF_LOGIN_URL")?,
            required("SF_CLIENT_ID")?,
            required("SF_USERNAME")?,
        );
        let key = match (lookup("SF_PRIVATE_KEY"), lookup("SF_PRIVATE_KEY_FILE")) {
            (Some(pem), _) if !pem.trim().is_empty() => SecretString::from(pem),
            (_, Some(path)) if !path.trim().is_empty() => std::fs::read_to_string(&path)
                .map(SecretString::from)
                .map_err(|e| Error::InvalidConfig {
                    field: "SF_PRIVATE_KEY_FILE",
                    reason: format!("{path}: {e}"),
                })?,
            _ => {
                return Err(Error::InvalidConfig {
                    field: "SF_PRIVATE_KEY",
                    reason: "not set (nor SF_PRIVATE_KEY_FILE)".into(),
                });
            }
        };
        let mut config = Self::new(login_url, client_id, username, key);
        config.audience = lookup("SF_AUDIENCE").filter(|a| !a.trim().is_empty());
        Ok(config)
    }

    /// The `aud` the assertion carries: [`JwtBearerConfig::audience`] or the login URL.
    pub fn effective_audience(&self) -> &str {
        self.audience
            .as_deref()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| self.login_url.trim_end_matches('/'))
    }
}

impl std::fmt::Debug for JwtBearerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtBearerConfig")
            .field("login_url", &self.login_url)
            .field("audience", &self.audience)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("private_key_pem", &"[REDACTED]")
            .field("assertion_lifetime", &self.assertion_lifetime)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// The claims Salesforce reads.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
}

/// The token endpoint's success answer; other keys (`scope`, `token_type`, `signature`,
/// `issued_at`) are ignored.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    instance_url: String,
    id: String,
}

/// The token endpoint's error answer.
#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A [`TokenSource`] using the OAuth 2.0 JWT bearer flow, with a single-flight cache.
///
/// The cached token is used until [`TokenSource::invalidate`] is called with it (the flow has
/// no refresh token and no `expires_in`). Concurrent callers that find no valid token wait for
/// one request instead of sending their own. A failed mint is shared with the callers that
/// waited for it, and not cached: the next caller tries again. The source itself does not retry; [`Error::is_retryable`] tells callers when to.
pub struct JwtBearer {
    config: JwtBearerConfig,
    token_url: String,
    key: EncodingKey,
    http: reqwest::Client,
    clock: Clock,
    cached: Mutex<Option<AccessToken>>,
    refresh: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    requests: AtomicU64,
    /// Mint attempts finished so far, and the error of the last one if it failed: callers
    /// that waited for a flight that failed share its error instead of each sending a request.
    finished: Mutex<(u64, Option<Error>)>,
}

impl std::fmt::Debug for JwtBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtBearer")
            .field("config", &self.config)
            .field("token_url", &self.token_url)
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl JwtBearer {
    /// Checks the configuration, parses the key and builds an HTTP client (rustls).
    pub fn new(config: JwtBearerConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::InvalidConfig {
                field: "http client",
                reason: e.to_string(),
            })?;
        Self::with_http_client(config, http)
    }

    /// Like [`JwtBearer::new`], with a caller-provided HTTP client (its timeouts apply).
    pub fn with_http_client(config: JwtBearerConfig, http: reqwest::Client) -> Result<Self> {
        for (field, value) in [
            ("client_id", &config.client_id),
            ("username", &config.username),
            ("login_url", &config.login_url),
        ] {
            if value.trim().is_empty() {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "must not be empty".into(),
                });
            }
        }
        let base = config.login_url.trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(Error::InvalidConfig {
                field: "login_url",
                reason: "must start with https:// (or http:// for a local sandbox)".into(),
            });
        }
        let token_url = format!("{base}/services/oauth2/token");
        let key = EncodingKey::from_rsa_pem(config.private_key_pem.expose_secret().as_bytes())
            .map_err(|e| Error::InvalidPrivateKey {
                reason: e.to_string(),
            })?;
        Ok(Self {
            config,
            token_url,
            key,
            http,
            clock: Arc::new(SystemTime::now),
            cached: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            finished: Mutex::new((0, None)),
        })
    }

    /// Replaces the clock used for `exp` (for tests that simulate a host whose clock is off).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The configuration this source was built from.
    pub fn config(&self) -> &JwtBearerConfig {
        &self.config
    }

    /// How many token requests this source has sent so far.
    pub fn token_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Builds and signs a fresh assertion (RS256; `iss`, `sub`, `aud`, `exp` in seconds).
    pub fn assertion(&self) -> Result<SecretString> {
        let now = (self.clock)()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::Signing {
                reason: "system clock is before 1970".into(),
            })?;
        let claims = Claims {
            iss: &self.config.client_id,
            sub: &self.config.username,
            aud: self.config.effective_audience(),
            exp: (now + self.config.assertion_lifetime).as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(SecretString::from)
            .map_err(|e| Error::Signing {
                reason: e.to_string(),
            })
    }

    fn cached_token(&self) -> Option<AccessToken> {
        self.cached.lock().clone()
    }

    async fn mint(&self) -> Result<AccessToken> {
        let assertion = self.assertion()?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::TOKEN_REQUESTS_TOTAL).increment(1);
        tracing::debug!(
            url = %self.token_url,
            client_id = %self.config.client_id,
            username = %self.config.username,
            "requesting salesforce access token (jwt bearer)"
        );
        let form = [
            ("grant_type", GRANT_TYPE),
            ("assertion", assertion.expose_secret()),
        ];
        let response = self
            .http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| Error::Unavailable {
                status: None,
                reason: describe_transport(&e),
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| Error::Unavailable {
            status: Some(status.as_u16()),
            reason: describe_transport(&e),
        })?;
        if !status.is_success() {
            let err = self.classify(status.as_u16(), &body);
            tracing::warn!(status = status.as_u16(), error = %err, "salesforce token request failed");
            return Err(err);
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| Error::InvalidResponse {
                reason: format!(
                    "not a token response (json error at line {} column {})",
                    e.line(),
                    e.column()
                ),
            })?;
        if parsed.access_token.expose_secret().is_empty() {
            return Err(Error::InvalidResponse {
                reason: "empty access_token".into(),
            });
        }
        let org_id =
            org_id_from_identity_url(&parsed.id).ok_or_else(|| Error::InvalidResponse {
                reason: format!("cannot read an org id from id url {:?}", parsed.id),
            })?;
        let instance_url = parsed.instance_url.trim_end_matches('/').to_owned();
        if !(instance_url.starts_with("https://") || instance_url.starts_with("http://")) {
            return Err(Error::InvalidResponse {
                reason: format!("instance_url {instance_url:?} is not an http(s) url"),
            });
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(generation, %org_id, %instance_url, "minted salesforce access token");
        Ok(AccessToken {
            token: parsed.access_token,
            instance_url,
            org_id,
            generation,
        })
    }

    fn classify(&self, status: u16, body: &[u8]) -> Error {
        if status >= 500 || status == 429 {
            return Error::Unavailable {
                status: Some(status),
                reason: format!("http {status}"),
            };
        }
        let oauth: OAuthError = serde_json::from_slice(body).unwrap_or_default();
        let description = oauth.error_description.trim().to_ascii_lowercase();
        match oauth.error.as_str() {
            "invalid_grant" if description.contains("hasn't approved this consumer") => {
                Error::UserNotApproved {
                    username: self.config.username.clone(),
                }
            }
            "invalid_grant" if description.contains("audience is invalid") => {
                Error::AudienceInvalid {
                    audience: self.config.effective_audience().to_owned(),
                }
            }
            "invalid_grant" if description.contains("invalid assertion") => Error::InvalidAssertion,
            "invalid_grant" if description.contains("expired authorization code") => {
                Error::AssertionExpired
            }
            "invalid_client_id" => Error::InvalidClientId {
                client_id: self.config.client_id.clone(),
            },
            "invalid_app_access" => Error::AppAccessDenied {
                username: self.config.username.clone(),
                description: oauth.error_description,
            },
            _ => Error::Rejected {
                status,
                error: oauth.error,
                description: oauth.error_description,
            },
        }
    }
}

#[async_trait]
impl TokenSource for JwtBearer {
    async fn token(&self) -> Result<AccessToken> {
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        // Single flight: whoever holds `refresh` mints; the others wait and then find the
        // new token in the cache, or the error of the flight they waited for.
        let flights_before = self.finished.lock().0;
        let _flight = self.refresh.lock().await;
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        {
            let finished = self.finished.lock();
            if finished.0 != flights_before
                && let Some(err) = &finished.1
            {
                return Err(err.clone());
            }
        }
        let minted = self.mint().await;
        let mut finished = self.finished.lock();
        finished.0 += 1;
        match minted {
            Ok(token) => {
                finished.1 = None;
                *self.cached.lock() = Some(token.clone());
                Ok(token)
            }
            Err(err) => {
                finished.1 = Some(err.clone());
                Err(err)
            }
        }
    }

    fn invalidate(&self, stale: &AccessToken) {
        let mut cached = self.cached.lock();
        if cached
            .as_ref()
            .is_some_and(|c| c.generation == stale.generation)
        {
            tracing::debug!(
                generation = stale.generation,
                "salesforce access token invalidated"
            );
            *cached = None;
        }
    }
}

/// The org id from an identity URL `https://login.salesforce.com/id/<org id>/<user id>`:
/// the second-to-last path segment, 15 or 18 alphanumerics.
fn org_id_from_identity_url(id: &str) -> Option<String> {
    let path = id.split_once("://").map_or(id, |(_, rest)| rest);
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let _user = segments.next()?;
    let org = segments.next()?;
    let ok = matches!(org.len(), 15 | 18) && org.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then(|| org.to_owned())
}

fn describe_transport(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connect failed"
    } else {
        "request failed"
    };
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn org_id_is_the_second_to_last_segment_of_the_id_url() {
        let check = |url: &str, want: Option<&str>| {
            assert_eq!(org_id_from_identity_url(url).as_deref(), want, "{url}");
        };
        check(
            "https://login.salesforce.com/id/00D5g000004Fj2kEAC/0055g00000A1b2cAAB",
            Some("00D5g000004Fj2kEAC"),
        );
        check(
            "https://test.salesforce.com/id/00D5g000004Fj2k/0055g00000A1b2c/",
            Some("00D5g000004Fj2k"),
        );
        check("https://login.salesforce.com/id/0055g00000A1b2cAAB", None);
        check(
            "https://login.salesforce.com/id/00D-bad/0055g00000A1b2cAAB",
            None,
        );
        check("", None);
    }

    #[test]
    fn audience_defaults_to_the_login_url() {
        let mut config = JwtBearerConfig::new(
            "https://login.salesforce.com/",
            "cid",
            "user@example.com",
            SecretString::from("pem"),
        );
        assert_eq!(config.effective_audience(), "https://login.salesforce.com");
        config.audience = Some("https://test.salesforce.com".into());
        assert_eq!(config.effective_audience(), "https://test.salesforce.com");
    }

    #[test]
    fn a_non_pem_key_is_a_typed_error_that_does_not_echo_the_key() {
        let config = JwtBearerConfig::new(
            "https://login.salesforce.com",
            "cid",
            "user@example.com",
            SecretString::from("not-a-key-sekrit"),
        );
        let err = JwtBearer::new(config).unwrap_err();
        assert!(matches!(err, Error::InvalidPrivateKey { .. }), "{err:?}");
        assert!(!err.to_string().contains("sekrit"));
    }

    #[test]
    fn configuration_from_the_provisioners_variables() {
        let vars = |pairs: &[(&str, &str)]| {
            let map: std::collections::HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            move |name: &str| map.get(name).cloned()
        };
        let base = [
            ("SF_LOGIN_URL", "https://login.example"),
            ("SF_CLIENT_ID", "client"),
            ("SF_USERNAME", "user@example.com"),
        ];
        let mut with_key = base.to_vec();
        with_key.push(("SF_PRIVATE_KEY", "-----PEM-----"));
        with_key.push(("SF_AUDIENCE", "https://aud.example"));
        let config = JwtBearerConfig::from_vars(vars(&with_key)).unwrap();
        assert_eq!(config.client_id, "client");
        assert_eq!(config.private_key_pem.expose_secret(), "-----PEM-----");
        assert_eq!(config.effective_audience(), "https://aud.example");

        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"-----FILE PEM-----").unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let mut with_file = base.to_vec();
        with_file.push(("SF_PRIVATE_KEY_FILE", &path));
        let config = JwtBearerConfig::from_vars(vars(&with_file)).unwrap();
        assert_eq!(config.private_key_pem.expose_secret(), "-----FILE PEM-----");
        assert_eq!(config.effective_audience(), "https://login.example");

        let missing = JwtBearerConfig::from_vars(vars(&base[1..])).unwrap_err();
        assert!(missing.to_string().contains("SF_LOGIN_URL"), "{missing}");
        let no_key = JwtBearerConfig::from_vars(vars(&base)).unwrap_err();
        assert!(no_key.to_string().contains("SF_PRIVATE_KEY"), "{no_key}");
        let mut bad_file = base.to_vec();
        bad_file.push(("SF_PRIVATE_KEY_FILE", "/nonexistent/key.pem"));
        let unreadable = JwtBearerConfig::from_vars(vars(&bad_file)).unwrap_err();
        assert!(
            unreadable.to_string().contains("/nonexistent/key.pem"),
            "{unreadable}"
        );
    }
}
