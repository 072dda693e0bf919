//! Client-side cost of the REST calls the provisioner makes per order, against the loopback
//! sandbox (HTTP/1.1 on 127.0.0.1, token cached): fetch an Order with two items, PATCH it.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use sf_rest::{OrderApi, OrderId, OrderUpdate};

/// The integration tests' world: the sandbox, an approved Order with two items, a client.
#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let w = runtime.block_on(async {
        let w = support::world().await;
        w.api.fetch_order(&w.order_id).await.unwrap();
        w
    });
    let (api, order_id) = (&w.api, &w.order_id);

    c.bench_function("order_id_parse_18", |b| {
        b.iter(|| OrderId::parse(std::hint::black_box(order_id)).unwrap())
    });
    c.bench_function("fetch_order_loopback", |b| {
        b.to_async(&runtime)
            .iter(|| async { api.fetch_order(order_id).await.unwrap() })
    });
    let update = OrderUpdate {
        status: Some("Provisioning".into()),
        ..OrderUpdate::default()
    };
    c.bench_function("update_order_loopback", |b| {
        b.to_async(&runtime)
            .iter(|| async { api.update_order(order_id, &update).await.unwrap() })
    });
    drop(w);
}

criterion_group!(benches, bench);
criterion_main!(benches);
