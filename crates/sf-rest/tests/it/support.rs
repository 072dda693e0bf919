//! Shared setup: a sandbox with a seeded org and a client wired to it.

use std::sync::Arc;
use std::time::Duration;

use sandbox::salesforce::{
    SalesforceConfig, SalesforceSandbox, SfAccount, SfOrder, SfOrderItem, salesforce_id,
};
use secrecy::SecretString;
use serde_json::json;
use sf_auth::{JwtBearer, JwtBearerConfig};
use sf_rest::{RestConfig, RestOrderApi, RetryPolicy};

/// The root password inside the seeded order's `Config_Options__c`.
pub(crate) const ROOT_PASSWORD: &str = "s3cr3t-r00t-pw!";

pub(crate) struct World {
    pub(crate) sf: SalesforceSandbox,
    pub(crate) tokens: Arc<JwtBearer>,
    pub(crate) api: Arc<RestOrderApi>,
    pub(crate) order_id: String,
}

pub(crate) fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

pub(crate) async fn world() -> World {
    world_with(SalesforceConfig::trusting(
        test_support::keys::PUBLIC_KEY_PEM,
    ))
    .await
}

pub(crate) async fn world_with(config: SalesforceConfig) -> World {
    let sf = SalesforceSandbox::start(config).await.unwrap();
    let order_id = seed(&sf);
    let tokens = Arc::new(
        JwtBearer::new(JwtBearerConfig::new(
            sf.base_url(),
            sf.config().client_id.clone(),
            "integration@example.com",
            SecretString::from(test_support::keys::PRIVATE_KEY_PEM),
        ))
        .unwrap(),
    );
    let api = Arc::new(
        RestOrderApi::new(
            tokens.clone(),
            RestConfig {
                retry: fast_retry(),
                ..RestConfig::default()
            },
        )
        .unwrap(),
    );
    World {
        sf,
        tokens,
        api,
        order_id,
    }
}

/// One Account and one approved Order with two items: quantity 2 (product id as Text) and
/// quantity 1 (product id as Number, config options with a root password).
fn seed(sf: &SalesforceSandbox) -> String {
    let account_id = salesforce_id("001", 7);
    sf.insert_account(SfAccount {
        id: account_id.clone(),
        name: "Acme".into(),
        customer_number: Some("C-1001".into()),
        whmcs_client_id: json!(12.0),
    });
    let order_id = salesforce_id("801", 4242);
    let mut order = SfOrder::new(order_id.clone(), "Approved");
    order.order_number = "00000123".into();
    order.account_id = Some(account_id);
    order.customer_number = Some("C-1001".into());
    order.whmcs_client_id = json!(12.0);
    sf.insert_order(order);
    sf.insert_order_item(SfOrderItem {
        id: salesforce_id("802", 1),
        order_id: order_id.clone(),
        quantity: 2.0,
        whmcs_product_id: json!("5"),
        billing_cycle: Some("monthly".into()),
        config_options: None,
    });
    sf.insert_order_item(SfOrderItem {
        id: salesforce_id("802", 2),
        order_id: order_id.clone(),
        quantity: 1.0,
        whmcs_product_id: json!(6.0),
        billing_cycle: Some("annually".into()),
        config_options: Some(json!({ "12": ROOT_PASSWORD, "13": 2 }).to_string()),
    });
    order_id
}
