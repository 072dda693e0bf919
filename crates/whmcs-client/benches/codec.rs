//! Encoding cost of an AddOrder's array values, and a whole call over loopback.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use sandbox::whmcs::{Client, Product, WhmcsSandbox};
use secrecy::SecretString;
use whmcs_client::encoding::FormBody;
use whmcs_client::{
    ConfigOptionValue, ConfigOptions, CustomFields, HttpWhmcsClient, NewOrder, OrderLine, WhmcsApi,
    WhmcsConfig,
};

fn line(pid: u64) -> OrderLine {
    let mut line = OrderLine::new(pid, "monthly");
    line.custom_fields = CustomFields::new()
        .with(12, "801Qy00000AbCdEIAV")
        .with(13, "web – Zürich");
    line.config_options = ConfigOptions::new()
        .with(
            4,
            ConfigOptionValue::Text(SecretString::from("R00t pw+/=".to_owned())),
        )
        .with(5, ConfigOptionValue::Choice(51))
        .with(
            6,
            ConfigOptionValue::OptionQuantity {
                option_id: 61,
                qty: 2,
            },
        );
    line
}

fn encode(c: &mut Criterion) {
    let lines: Vec<OrderLine> = (1..=3).map(line).collect();
    c.bench_function("encode_3_line_order_arrays", |b| {
        b.iter(|| {
            let mut body = FormBody::new();
            for (i, l) in lines.iter().enumerate() {
                body.push_indexed("pid", i, l.product_id.to_string());
                body.push_indexed("billingcycle", i, l.billing_cycle.clone());
                body.push_indexed("customfields", i, l.custom_fields.encode());
                body.push_indexed("configoptions", i, l.config_options.encode());
            }
            std::hint::black_box(body.to_urlencoded())
        });
    });
}

fn round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (sandbox, client, client_id, pid) = rt.block_on(async {
        let sandbox = WhmcsSandbox::start().await.unwrap();
        let client_id = sandbox.seed_client(Client::active("Ada", "ada@example.com"));
        let pid = sandbox.seed_product(Product::new("VPS"));
        let config = WhmcsConfig::new(
            sandbox.api_url(),
            SecretString::from(sandbox.config().identifier.clone()),
            SecretString::from(sandbox.config().secret.clone()),
        );
        let client = HttpWhmcsClient::new(config).unwrap();
        (sandbox, client, client_id, pid)
    });
    c.bench_function("get_client_details_loopback", |b| {
        b.iter(|| rt.block_on(client.get_client_details(client_id)).unwrap());
    });
    let order = NewOrder::new(client_id, vec![line(pid), line(pid), line(pid)]);
    c.bench_function("add_order_3_lines_loopback", |b| {
        b.iter(|| {
            rt.block_on(client.add_order(&order)).unwrap();
            sandbox.clear_requests();
        });
    });
}

criterion_group!(benches, encode, round_trip);
criterion_main!(benches);
