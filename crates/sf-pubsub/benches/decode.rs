//! Decoding `OrderProvisionRequested__e` payloads: the compiled typed path against
//! apache-avro's generic `Value` path. Bar (issue 4): >= 1,000,000 events/s on one core.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sf_pubsub::{GenericRecord, OrderProvisionRequested, Record, WriterSchema};

fn payloads(schema: &WriterSchema) -> Vec<Vec<u8>> {
    (0..1024)
        .map(|i: i64| {
            OrderProvisionRequested {
                created_date: 1_700_000_000_000 + i * 977,
                created_by_id: "005xx000001X83aAAC".into(),
                order_id: format!("801xx00000{i:08}"),
                customer_number: format!("CUST-{:06}", i * 31),
                account_id: (i % 3 != 0).then(|| format!("001xx00000{i:08}")),
            }
            .encode(schema)
            .unwrap()
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let schema = WriterSchema::parse("bench", OrderProvisionRequested::SCHEMA_JSON).unwrap();
    let payloads = payloads(&schema);
    let mut group = c.benchmark_group("order_provision_requested");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("typed", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(OrderProvisionRequested::decode(&schema, black_box(&payloads[i])).unwrap())
        })
    });
    group.bench_function("generic_apache_avro", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(GenericRecord::decode(&schema, black_box(&payloads[i])).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
