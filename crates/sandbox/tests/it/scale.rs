//! Large orgs: the lookups the provisioner makes per Order go through indexes, not scans.
//!
//! Not timed: with a scan per lookup this test takes minutes instead of seconds in a debug
//! build, which is the smoke signal; the assertions check the answers.

use sandbox::salesforce::{
    SalesforceConfig, SalesforceSandbox, SfOrder, SfOrderItem, salesforce_id,
};
use sandbox::whmcs::{Client, Product, Service, WhmcsSandbox};
use serde_json::{Value, json};
use test_support::keys;

use crate::token;

const ORDERS: u64 = 20_000;
const CLIENTS: u64 = 20_000;

fn order_query(id: &str) -> String {
    format!(
        "SELECT Id, OrderNumber, Status, AccountId, Customer_Number__c, WHMCS_Client_Id__c, \
         WHMCS_Order_Id__c, Portal_Request_Id__c, (SELECT Id, Quantity, WHMCS_Product_Id__c, Billing_Cycle__c, \
         Config_Options__c FROM OrderItems) FROM Order WHERE Id = '{id}'"
    )
}

#[tokio::test]
async fn salesforce_lookups_stay_indexed_with_20k_orders() {
    let sf = SalesforceSandbox::start(SalesforceConfig::trusting(keys::PUBLIC_KEY_PEM))
        .await
        .unwrap();
    let orders = (1..=ORDERS).map(|n| {
        let mut order = SfOrder::new(salesforce_id("801", n), "Approved");
        order.whmcs_client_id = json!(n.to_string());
        order
    });
    // Items of every Order, inserted after all Orders, two per Order.
    let items = (1..=2 * ORDERS).map(|k| SfOrderItem {
        id: salesforce_id("802", k),
        order_id: salesforce_id("801", k.div_ceil(2)),
        quantity: 1.0,
        whmcs_product_id: json!("1"),
        billing_cycle: Some("monthly".to_owned()),
        config_options: None,
    });
    sf.insert_orders(orders, items);
    sf.set_patch_log_limit(100);

    let http = reqwest::Client::new();
    let bearer = token(&sf, &http).await;
    let url = format!("{}/services/data/v62.0/query", sf.base_url());
    for k in 0..1_000u64 {
        let n = (k * 7_919) % ORDERS + 1;
        let id = salesforce_id("801", n);
        // Half by the 15-character form.
        let asked = if k % 2 == 0 { &id[..] } else { &id[..15] };
        let answer: Value = http
            .get(&url)
            .bearer_auth(&bearer)
            .query(&[("q", order_query(asked))])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["totalSize"], 1, "{asked}");
        let record = &answer["records"][0];
        assert_eq!(record["Id"], id);
        assert_eq!(record["WHMCS_Client_Id__c"], n.to_string());
        let items: Vec<&str> = record["OrderItems"]["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["Id"].as_str().unwrap())
            .collect();
        assert_eq!(
            items,
            [salesforce_id("802", 2 * n - 1), salesforce_id("802", 2 * n)]
        );
    }
    for k in 0..500u64 {
        let n = (k * 104_729) % ORDERS + 1;
        let id = salesforce_id("801", n);
        let status = http
            .patch(format!(
                "{}/services/data/v62.0/sobjects/Order/{}",
                sf.base_url(),
                &id[..15]
            ))
            .bearer_auth(&bearer)
            .json(&json!({"Status": "Activated", "WHMCS_Order_Id__c": n.to_string()}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 204);
        let stored = sf.order(&id).unwrap();
        assert_eq!(stored.status, "Activated");
        assert_eq!(stored.whmcs_order_id, Some(n.to_string()));
    }
    let patches = sf.patches();
    assert_eq!(patches.len(), 100, "the log keeps the most recent 100");
    let last = salesforce_id("801", (499 * 104_729) % ORDERS + 1);
    assert_eq!(patches[99].order_id, last[..15]);
}

async fn whmcs_call(
    whmcs: &WhmcsSandbox,
    http: &reqwest::Client,
    params: &[(&str, String)],
) -> Value {
    let mut form: Vec<(&str, String)> = vec![
        ("identifier", whmcs.config().identifier.clone()),
        ("secret", whmcs.config().secret.clone()),
        ("responsetype", "json".to_owned()),
    ];
    form.extend(params.iter().cloned());
    http.post(whmcs.api_url())
        .form(&form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn whmcs_lookups_stay_indexed_with_20k_clients() {
    let whmcs = WhmcsSandbox::start().await.unwrap();
    let pid = whmcs.seed_product(Product::new("VPS S"));
    for n in 1..=CLIENTS {
        whmcs.seed_client(Client::active(
            &format!("C{n}"),
            &format!("c{n}@example.com"),
        ));
    }
    // One seeded service per client, in an order that spreads a client's services apart.
    for n in 1..=CLIENTS {
        whmcs.seed_service(Service::new(n, pid));
    }
    whmcs.set_record_requests(false);
    let http = reqwest::Client::new();
    for k in 0..300u64 {
        let client = (k * 7_919) % CLIENTS + 1;
        let details = whmcs_call(
            &whmcs,
            &http,
            &[
                ("action", "GetClientsDetails".to_owned()),
                ("email", format!("C{client}@Example.com")),
            ],
        )
        .await;
        assert_eq!(details["client"]["id"], client);
        let added = whmcs_call(
            &whmcs,
            &http,
            &[
                ("action", "AddOrder".to_owned()),
                ("clientid", client.to_string()),
                ("paymentmethod", "banktransfer".to_owned()),
                ("pid[0]", pid.to_string()),
                ("noinvoice", "1".to_owned()),
            ],
        )
        .await;
        assert_eq!(added["result"], "success", "{added}");
        let order_id = added["orderid"].as_str().unwrap().to_owned();
        let accepted = whmcs_call(
            &whmcs,
            &http,
            &[
                ("action", "AcceptOrder".to_owned()),
                ("orderid", order_id.clone()),
                ("autosetup", "1".to_owned()),
            ],
        )
        .await;
        assert_eq!(accepted["result"], "success");
        let orders = whmcs_call(
            &whmcs,
            &http,
            &[("action", "GetOrders".to_owned()), ("id", order_id.clone())],
        )
        .await;
        assert_eq!(orders["totalresults"], 1);
        assert_eq!(orders["orders"]["order"][0]["userid"], client);
        assert_eq!(orders["orders"]["order"][0]["status"], "Active");
        let products = whmcs_call(
            &whmcs,
            &http,
            &[
                ("action", "GetClientsProducts".to_owned()),
                ("clientid", client.to_string()),
                ("pid", pid.to_string()),
            ],
        )
        .await;
        let listed: Vec<u64> = products["products"]["product"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_u64().unwrap())
            .collect();
        // The seeded service (id = client id) first, then the one of each new order.
        assert_eq!(listed.first(), Some(&client));
        assert!(listed.len() >= 2);
        assert!(listed.windows(2).all(|w| w[0] < w[1]), "by id");
        let by_service = whmcs_call(
            &whmcs,
            &http,
            &[
                ("action", "GetClientsProducts".to_owned()),
                ("serviceid", listed[listed.len() - 1].to_string()),
            ],
        )
        .await;
        assert_eq!(by_service["totalresults"], "1");
        assert_eq!(by_service["products"]["product"][0]["clientid"], client);
        assert_eq!(by_service["products"]["product"][0]["status"], "Active");
    }
    assert!(whmcs.requests().is_empty(), "recording was off");
    let dup = whmcs_call(
        &whmcs,
        &http,
        &[
            ("action", "AddClient".to_owned()),
            ("skipvalidation", "1".to_owned()),
            ("firstname", "Again".to_owned()),
            ("email", format!("C{CLIENTS}@EXAMPLE.COM")),
        ],
    )
    .await;
    assert_eq!(
        dup["message"],
        "A user already exists with that email address"
    );
}
