//! The counters a benchmark polls from outside: `GET /sandbox/stats` of the Salesforce sandbox
//! (activations, publish-to-activation latency) and of the WHMCS sandbox (orders per ref).

use sandbox::salesforce::{SalesforceConfig, SalesforceSandbox, SfOrder, salesforce_id};
use sandbox::whmcs::{Client, Product, WhmcsSandbox};
use serde_json::{Value, json};
use test_support::keys;

use crate::token;

async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn salesforce_stats_count_transitions_to_activated_and_their_latency() {
    let sf = SalesforceSandbox::start(SalesforceConfig::trusting(keys::PUBLIC_KEY_PEM))
        .await
        .unwrap();
    let ids: Vec<String> = (1..=3).map(|n| salesforce_id("801", n)).collect();
    for id in &ids {
        sf.insert_order(SfOrder::new(id.clone(), "Approved"));
    }
    // Noted by the 15-character id, PATCHed by the 18-character one, and the other way round.
    sf.note_published(&ids[0][..15]);
    sf.note_published(&ids[1]);
    let http = reqwest::Client::new();
    let bearer = token(&sf, &http).await;
    let patch = |id: &str, status: &str| {
        http.patch(format!(
            "{}/services/data/v62.0/sobjects/Order/{id}",
            sf.base_url()
        ))
        .bearer_auth(&bearer)
        .json(&json!({ "Status": status }))
        .send()
    };
    let stats_url = format!("{}/sandbox/stats", sf.base_url());
    let before = get_json(&http, &stats_url).await;
    assert_eq!(before["activated"], 0);
    assert_eq!(before["published"], 2);

    assert_eq!(patch(&ids[0], "Activated").await.unwrap().status(), 204);
    // Activated -> Activated is no second activation; a refused PATCH and another status are
    // none at all.
    assert_eq!(patch(&ids[0], "Activated").await.unwrap().status(), 204);
    assert_eq!(patch(&ids[2], "Bogus").await.unwrap().status(), 400);
    assert_eq!(patch(&ids[2], "Draft").await.unwrap().status(), 204);
    assert_eq!(
        patch(&ids[1][..15], "Activated").await.unwrap().status(),
        204
    );

    let quick = get_json(&http, &stats_url).await;
    assert_eq!(quick["activated"], 2, "{quick}");
    assert_eq!(quick["latencies"], 2, "{quick}");
    assert_eq!(
        quick["p99Ms"],
        Value::Null,
        "percentiles only when asked for"
    );
    let full = get_json(&http, &format!("{stats_url}?latencies=true")).await;
    let p50 = full["p50Ms"].as_f64().unwrap();
    let p99 = full["p99Ms"].as_f64().unwrap();
    assert!(p50 >= 0.0 && p50 <= p99, "{full}");
    assert_eq!(
        full["maxMs"].as_f64(),
        Some(p99),
        "two samples: p99 is the max"
    );
    assert_eq!(sf.activation_stats(false).activated, 2);
}

/// `base64(serialize([field => value]))`.
fn ref_field(field: u64, value: &str) -> String {
    use base64::Engine as _;
    let php = format!("a:1:{{i:{field};s:{}:\"{value}\";}}", value.len());
    base64::engine::general_purpose::STANDARD.encode(php)
}

#[tokio::test]
async fn whmcs_stats_count_orders_per_ref() {
    let whmcs = WhmcsSandbox::start().await.unwrap();
    let client = whmcs.seed_client(Client::active("Ada", "ada@example.com"));
    let pid = whmcs.seed_product(Product::new("VPS S").with_custom_field(7, "SF Order", false));
    let http = reqwest::Client::new();
    let add_order = |value: Option<&str>| {
        let mut form = vec![
            ("action", "AddOrder".to_owned()),
            ("identifier", whmcs.config().identifier.clone()),
            ("secret", whmcs.config().secret.clone()),
            ("responsetype", "json".to_owned()),
            ("clientid", client.to_string()),
            ("paymentmethod", "banktransfer".to_owned()),
            ("pid[0]", pid.to_string()),
            ("billingcycle[0]", "monthly".to_owned()),
        ];
        if let Some(value) = value {
            form.push(("customfields[0]", ref_field(7, value)));
        }
        http.post(whmcs.api_url()).form(&form).send()
    };
    for value in [Some("801A"), Some("801B"), Some("801A"), Some("801A"), None] {
        let answer: Value = add_order(value).await.unwrap().json().await.unwrap();
        assert_eq!(answer["result"], "success", "{answer}");
    }
    let stats = get_json(&http, &format!("{}/sandbox/stats", whmcs.base_url())).await;
    assert_eq!(
        stats,
        json!({"orders": 5, "refs": 2, "duplicates": 2, "withoutRef": 1, "accepted": 0})
    );
}
