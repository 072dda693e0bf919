//! Client-side cost of the REST calls the provisioner makes per order, against the loopback
//! sandbox (HTTP/1.1 on 127.0.0.1, token cached): fetch an Order with two items, PATCH it.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sandbox::salesforce::{
    SalesforceConfig, SalesforceSandbox, SfOrder, SfOrderItem, salesforce_id, test_keys,
};
use secrecy::SecretString;
use serde_json::json;
use sf_auth::{JwtBearer, JwtBearerConfig};
use sf_rest::{OrderApi, OrderId, OrderUpdate, RestConfig, RestOrderApi};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (sf, api, order_id) = runtime.block_on(async {
        let sf = SalesforceSandbox::start(SalesforceConfig::default())
            .await
            .unwrap();
        let order_id = salesforce_id("801", 1);
        sf.insert_order(SfOrder::new(order_id.clone(), "Approved"));
        for n in 0..2 {
            sf.insert_order_item(SfOrderItem {
                id: salesforce_id("802", n),
                order_id: order_id.clone(),
                quantity: 2.0,
                whmcs_product_id: json!(5.0),
                billing_cycle: Some("monthly".into()),
                config_options: Some(r#"{"7":"pw"}"#.into()),
            });
        }
        let tokens = Arc::new(
            JwtBearer::new(JwtBearerConfig::new(
                sf.base_url(),
                sf.config().client_id.clone(),
                "integration@example.com",
                SecretString::from(test_keys::PRIVATE_KEY_PEM),
            ))
            .unwrap(),
        );
        let api = RestOrderApi::new(tokens, RestConfig::default()).unwrap();
        api.fetch_order(&order_id).await.unwrap();
        (sf, api, order_id)
    });

    c.bench_function("order_id_parse_18", |b| {
        b.iter(|| OrderId::parse(std::hint::black_box(&order_id)).unwrap())
    });
    c.bench_function("fetch_order_loopback", |b| {
        b.to_async(&runtime)
            .iter(|| async { api.fetch_order(&order_id).await.unwrap() })
    });
    let update = OrderUpdate {
        status: Some("Provisioning".into()),
        ..OrderUpdate::default()
    };
    c.bench_function("update_order_loopback", |b| {
        b.to_async(&runtime)
            .iter(|| async { api.update_order(&order_id, &update).await.unwrap() })
    });
    drop(sf);
}

criterion_group!(benches, bench);
criterion_main!(benches);
