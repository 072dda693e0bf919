//! Audit benchmarks: append to the in-memory and JSONL logs, and verification of N records.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use audit::{
    Action, Actor, Anchor, AuditKey, AuditLog, ChainHead, DetailKey, JsonlAuditLog, JsonlOptions,
    MemoryAuditLog, NewAuditRecord, Outcome, verify, verify_records,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn key() -> AuditKey {
    AuditKey::from_bytes(&[0x42; 32]).unwrap()
}

fn record() -> NewAuditRecord {
    NewAuditRecord::new(Actor::ENGINE, Action::STEP_SUCCEEDED, Outcome::Success)
        .order_id("801xx000003DIsYAAW")
        .unwrap()
        .customer_number("C-1001")
        .unwrap()
        .detail(DetailKey::Step, "accept_order")
        .unwrap()
        .detail(DetailKey::Attempt, "1")
        .unwrap()
        .detail(DetailKey::ServiceIds, "101,102")
        .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn append(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("audit_append");
    g.throughput(Throughput::Elements(1));

    g.bench_function("memory", |b| {
        let log = MemoryAuditLog::new(key());
        b.to_async(&rt)
            .iter(|| async { black_box(log.append(record()).await.unwrap()) });
    });

    g.bench_function("seal_only", |b| {
        let k = key();
        let mut head = ChainHead::GENESIS;
        b.iter(|| {
            let r = head.seal(&k, record()).unwrap();
            head = ChainHead::after(&r);
            black_box(r)
        });
    });

    for (name, sync) in [("jsonl_no_fsync", false), ("jsonl_fsync", true)] {
        g.bench_function(name, |b| {
            let dir = tempfile::tempdir().unwrap();
            let options = JsonlOptions {
                sync_each_append: sync,
                ..JsonlOptions::default()
            };
            let log = rt
                .block_on(JsonlAuditLog::open_with(
                    dir.path().join("a.jsonl"),
                    key(),
                    options,
                ))
                .unwrap();
            b.to_async(&rt)
                .iter(|| async { black_box(log.append(record()).await.unwrap()) });
        });
    }
    g.finish();
}

fn verify_n(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("audit_verify");
    for n in [1_000u64, 10_000] {
        g.throughput(Throughput::Elements(n));
        let mem = MemoryAuditLog::new(key());
        rt.block_on(async {
            for _ in 0..n {
                mem.append(record()).await.unwrap();
            }
        });
        let (_, records) = mem.snapshot().unwrap();
        g.bench_with_input(BenchmarkId::new("records", n), &records, |b, rs| {
            let k = key();
            b.iter(|| black_box(verify_records(&k, &Anchor::GENESIS, rs).unwrap()));
        });
        g.bench_with_input(BenchmarkId::new("memory_log", n), &mem, |b, log| {
            let k = key();
            b.to_async(&rt)
                .iter(|| async { black_box(verify(log, &k).await.unwrap()) });
        });

        let dir = tempfile::tempdir().unwrap();
        let options = JsonlOptions {
            sync_each_append: false,
            ..JsonlOptions::default()
        };
        let jsonl = rt
            .block_on(JsonlAuditLog::open_with(
                dir.path().join("v.jsonl"),
                key(),
                options,
            ))
            .unwrap();
        rt.block_on(async {
            for _ in 0..n {
                jsonl.append(record()).await.unwrap();
            }
        });
        g.bench_with_input(BenchmarkId::new("jsonl_log", n), &jsonl, |b, log| {
            let k = key();
            b.to_async(&rt)
                .iter(|| async { black_box(verify(log, &k).await.unwrap()) });
        });
    }
    g.finish();
}

criterion_group!(benches, append, verify_n);
criterion_main!(benches);
