//! Shared setup: a sandbox and a client configured to match it.

use sandbox::salesforce::{SalesforceConfig, SalesforceSandbox, test_keys};
use secrecy::SecretString;
use sf_auth::JwtBearerConfig;

pub(crate) const USERNAME: &str = "integration@example.com";

pub(crate) async fn sandbox() -> SalesforceSandbox {
    SalesforceSandbox::start(SalesforceConfig::default())
        .await
        .unwrap()
}

/// A client config the sandbox accepts: its login URL (= default audience), client id, user
/// and the trusted test key.
pub(crate) fn good_config(sf: &SalesforceSandbox) -> JwtBearerConfig {
    JwtBearerConfig::new(
        sf.base_url(),
        sf.config().client_id.clone(),
        USERNAME,
        SecretString::from(test_keys::PRIVATE_KEY_PEM),
    )
}

/// The base64 lines of a PEM key: what would show if the key leaked.
pub(crate) fn pem_body_lines(pem: &str) -> Vec<&str> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .collect()
}
