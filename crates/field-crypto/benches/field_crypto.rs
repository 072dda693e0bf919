//! Benchmarks: encrypt/decrypt of 64-byte fields, subkey and master-key derivation.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use field_crypto::primitives::{hkdf_sha256, pbkdf2_sha256};
use field_crypto::{FieldContext, Keyring, MasterKey, PBKDF2_MIN_ITERATIONS};

fn fields(c: &mut Criterion) {
    let master =
        MasterKey::from_config("base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=").unwrap();
    let ring = Keyring::create(&master, Utc::now()).unwrap();
    let ctx = FieldContext::new("config_options", "801000000000001AAA").unwrap();
    let value = [0x42u8; 64];
    let text = ring.encrypt(&ctx, &value).unwrap();

    let mut group = c.benchmark_group("field");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encrypt_64B", |b| {
        b.iter(|| ring.encrypt(black_box(&ctx), black_box(&value)).unwrap())
    });
    group.bench_function("decrypt_64B", |b| {
        b.iter(|| ring.decrypt(black_box(&ctx), black_box(&text)).unwrap())
    });
    group.finish();
}

fn derivation(c: &mut Criterion) {
    let mut group = c.benchmark_group("derive");
    group.bench_function("hkdf_sha256_subkey", |b| {
        let mut out = [0u8; 32];
        b.iter(|| {
            hkdf_sha256(
                None,
                black_box(&[7u8; 32]),
                b"portal-provisioner/pf1/field/x",
                &mut out,
            )
        })
    });
    group.sample_size(10);
    group.bench_function("pbkdf2_sha256_600k", |b| {
        let mut out = [0u8; 32];
        b.iter(|| {
            pbkdf2_sha256(
                black_box(b"correct horse battery staple"),
                b"0123456789abcdef",
                PBKDF2_MIN_ITERATIONS,
                &mut out,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, fields, derivation);
criterion_main!(benches);
