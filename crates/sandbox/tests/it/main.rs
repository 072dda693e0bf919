//! Integration tests of the sandboxes over their HTTP APIs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sandbox::salesforce::SalesforceSandbox;
use serde_json::{Value, json};
use test_support::keys;

mod identity;
mod scale;
mod stats;
mod whmcs_concurrency;

/// Logs in as `sub` with an RS256 assertion for audience `aud`, signed by the test key; the
/// token response (asserted to be a 200).
pub(crate) async fn login(
    sf: &SalesforceSandbox,
    http: &reqwest::Client,
    sub: &str,
    aud: &str,
) -> Value {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 180;
    let claims = json!({
        "iss": sf.config().client_id,
        "sub": sub,
        "aud": aud,
        "exp": exp,
    });
    let key = EncodingKey::from_rsa_pem(keys::PRIVATE_KEY_PEM.as_bytes()).unwrap();
    let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap();
    let response = http
        .post(format!("{}/services/oauth2/token", sf.base_url()))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The access token of the org's first user, for the sandbox's own address as audience.
pub(crate) async fn token(sf: &SalesforceSandbox, http: &reqwest::Client) -> String {
    let user = sf.config().usernames[0].clone();
    let answer = login(sf, http, &user, &sf.base_url()).await;
    answer["access_token"].as_str().unwrap().to_owned()
}
