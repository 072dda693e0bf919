//! Shared fixtures: a sandbox with a client and products, and a client configured for it.

use std::time::Duration;

use sandbox::whmcs::{Client, Product, WhmcsSandbox};
use secrecy::SecretString;
use whmcs_client::{HttpWhmcsClient, WhmcsConfig};

/// Custom field id of the external-ref field on every product.
pub(crate) const REF_FIELD: u64 = 12;
/// Config option ids.
pub(crate) const OPT_ROOT_PW: u64 = 4;
pub(crate) const OPT_RAM: u64 = 5;
pub(crate) const OPT_DISKS: u64 = 6;

pub(crate) struct World {
    pub(crate) sandbox: WhmcsSandbox,
    pub(crate) client_id: u64,
    pub(crate) vps: u64,
    pub(crate) mail: u64,
}

pub(crate) async fn world() -> World {
    let sandbox = WhmcsSandbox::start().await.unwrap();
    let client_id = sandbox.seed_client(Client::active("Ada", "ada@example.com"));
    let vps = sandbox.seed_product(
        Product::new("VPS S")
            .with_custom_field(REF_FIELD, "External Order Ref", true)
            .with_custom_field(13, "Purpose", false)
            .with_config_option(OPT_ROOT_PW, "Root password", "text")
            .with_config_option(OPT_RAM, "RAM", "dropdown")
            .with_config_option(OPT_DISKS, "Extra disks", "quantity"),
    );
    let mail = sandbox.seed_product(Product::new("Mail Pro").with_custom_field(
        REF_FIELD,
        "External Order Ref",
        false,
    ));
    World {
        sandbox,
        client_id,
        vps,
        mail,
    }
}

pub(crate) fn config_for(sandbox: &WhmcsSandbox) -> WhmcsConfig {
    let mut config = WhmcsConfig::new(
        sandbox.api_url(),
        SecretString::from(sandbox.config().identifier.clone()),
        SecretString::from(sandbox.config().secret.clone()),
    );
    config.read_timeout = Duration::from_secs(10);
    config.provisioning_timeout = Duration::from_secs(20);
    config
}

pub(crate) fn client_for(sandbox: &WhmcsSandbox) -> HttpWhmcsClient {
    HttpWhmcsClient::new(config_for(sandbox)).unwrap()
}
