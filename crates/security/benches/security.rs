//! Hot-path costs: the allowlist check and the rate-limit check run on every status request,
//! the monitor on every refused one.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use security::{
    Alert, AlertSink, IpAllowlist, KeyedRateLimiter, Rate, SecurityMonitor, Thresholds,
};

struct NullSink;

#[async_trait]
impl AlertSink for NullSink {
    async fn send(&self, alert: Alert) {
        black_box(alert);
    }
}

fn allowlist(c: &mut Criterion) {
    let list = IpAllowlist::parse(
        "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,2001:db8::/32,fd00::/8,\
         203.0.113.0/24,198.51.100.0/24,192.0.2.0/24",
    )
    .unwrap();
    let miss: IpAddr = "8.8.8.8".parse().unwrap();
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    c.bench_function("allowlist/allows miss (10 nets)", |b| {
        b.iter(|| list.allows(black_box(miss)))
    });
    c.bench_function("allowlist/allows mapped hit", |b| {
        b.iter(|| list.allows(black_box(mapped)))
    });
}

fn limiter(c: &mut Criterion) {
    let limiter = KeyedRateLimiter::new(Rate::parse("1000000/second").unwrap());
    let keys: Vec<String> = (0..10_000).map(|i| format!("C-{i:06}")).collect();
    let mut i = 0usize;
    c.bench_function("limiter/check (10k keys)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.check(&keys[i]).is_ok())
        })
    });
}

fn monitor(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let monitor = SecurityMonitor::new(Arc::new(NullSink), Thresholds::default());
    let mut n = 0u32;
    c.bench_function("monitor/auth_failed (many ips)", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let ip = IpAddr::from((n % 50_000).to_be_bytes());
            rt.block_on(monitor.auth_failed(ip))
        })
    });
}

criterion_group!(benches, allowlist, limiter, monitor);
criterion_main!(benches);
