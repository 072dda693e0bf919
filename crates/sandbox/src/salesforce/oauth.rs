//! The OAuth 2.0 JWT bearer token endpoint: checks an assertion like Salesforce does.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// Salesforce's `grant_type` for the flow.
pub(crate) const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// An OAuth error answer: HTTP 400 `{"error": .., "error_description": ..}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub(crate) error: &'static str,
    pub(crate) description: &'static str,
}

const fn oauth_error(error: &'static str, description: &'static str) -> OAuthError {
    OAuthError { error, description }
}

pub(crate) const UNSUPPORTED_GRANT: OAuthError =
    oauth_error("unsupported_grant_type", "grant type not supported");
pub(crate) const INVALID_ASSERTION: OAuthError = oauth_error("invalid_grant", "invalid assertion");
pub(crate) const INVALID_CLIENT: OAuthError =
    oauth_error("invalid_client_id", "client identifier invalid");
pub(crate) const BAD_AUDIENCE: OAuthError = oauth_error("invalid_grant", "audience is invalid");
pub(crate) const EXPIRED: OAuthError = oauth_error("invalid_grant", "expired authorization code");
pub(crate) const NOT_APPROVED: OAuthError =
    oauth_error("invalid_grant", "user hasn't approved this consumer");

/// What the endpoint checks an assertion against.
pub(crate) struct Expectation<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) usernames: &'a [String],
    pub(crate) audiences: &'a [String],
    /// `None`: no key is trusted, every signature is refused.
    pub(crate) key: Option<&'a DecodingKey>,
    pub(crate) leeway_secs: u64,
    pub(crate) now_secs: u64,
}

/// Checks an assertion in Salesforce's order (app by `iss`, signature with the app's
/// certificate, `aud`, `exp`, user by `sub`/`prn`); returns the username.
pub(crate) fn verify(assertion: &str, expect: &Expectation<'_>) -> Result<String, OAuthError> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| INVALID_ASSERTION)?;
    if header.alg != Algorithm::RS256 {
        return Err(INVALID_ASSERTION);
    }
    let claims = unverified_claims(assertion).ok_or(INVALID_ASSERTION)?;
    if claims.get("iss").and_then(Value::as_str) != Some(expect.client_id) {
        return Err(INVALID_CLIENT);
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let key = expect.key.ok_or(INVALID_ASSERTION)?;
    jsonwebtoken::decode::<Value>(assertion, key, &validation).map_err(|_| INVALID_ASSERTION)?;
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => audience_accepted(aud, expect.audiences),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| audience_accepted(aud, expect.audiences)),
        _ => false,
    };
    if !audience_ok {
        return Err(BAD_AUDIENCE);
    }
    // Salesforce reads `exp` as seconds and does not enforce the 3-minute upper bound.
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
        .ok_or(INVALID_ASSERTION)?;
    if exp.saturating_add(expect.leeway_secs) <= expect.now_secs {
        return Err(EXPIRED);
    }
    // `prn` wins over `sub` when both are present.
    let user = claims
        .get("prn")
        .or_else(|| claims.get("sub"))
        .and_then(Value::as_str)
        .ok_or(NOT_APPROVED)?;
    if !expect.usernames.iter().any(|u| u == user) {
        return Err(NOT_APPROVED);
    }
    Ok(user.to_owned())
}

fn audience_accepted(aud: &str, audiences: &[String]) -> bool {
    let aud = aud.trim_end_matches('/');
    audiences.iter().any(|a| a.trim_end_matches('/') == aud)
}

/// The claims of a JWT before its signature is checked (to find the app by `iss`).
pub(crate) fn unverified_claims(assertion: &str) -> Option<Value> {
    let mut parts = assertion.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}
