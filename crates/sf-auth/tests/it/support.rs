//! Shared setup: a sandbox and a client configured to match it.

use sandbox::salesforce::{SalesforceConfig, SalesforceSandbox};
use secrecy::SecretString;
use sf_auth::JwtBearerConfig;

pub(crate) const USERNAME: &str = "integration@example.com";

/// The workspace's fixed test key pairs (`test_support::keys` holds the same files): sf-auth is
/// below test-support in the graph, so its tests read the files themselves.
pub(crate) mod test_keys {
    /// The key the sandbox trusts.
    pub(crate) const PRIVATE_KEY_PEM: &str =
        include_str!("../../../test-support/src/keys/test_key_a.pem");
    /// Its public half.
    pub(crate) const PUBLIC_KEY_PEM: &str =
        include_str!("../../../test-support/src/keys/test_key_a.pub.pem");
    /// A key the sandbox does not trust.
    pub(crate) const OTHER_PRIVATE_KEY_PEM: &str =
        include_str!("../../../test-support/src/keys/test_key_b.pem");
    /// Its public half.
    pub(crate) const OTHER_PUBLIC_KEY_PEM: &str =
        include_str!("../../../test-support/src/keys/test_key_b.pub.pem");
}

pub(crate) async fn sandbox() -> SalesforceSandbox {
    SalesforceSandbox::start(SalesforceConfig::trusting(test_keys::PUBLIC_KEY_PEM))
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
