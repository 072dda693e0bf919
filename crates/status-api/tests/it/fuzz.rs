//! Random paths and header values: the server never panics and never answers 5xx.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::support::{OWNER, Server, TOKEN, TestStore, builder};

/// Percent-encodes every byte that is not unreserved, so any byte string is a valid segment.
fn encode(segment: &[u8]) -> String {
    segment
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn segment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        "[A-Za-z0-9]{15,18}".prop_map(String::into_bytes),
        Just(b"801000000000001AAA".to_vec()),
    ]
}

/// Bytes a header value may hold (visible ASCII, space, tab, obs-text), or a valid value.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')];
    prop_oneof![
        proptest::collection::vec(byte, 0..80),
        Just(OWNER.as_bytes().to_vec()),
        Just(format!("Bearer {TOKEN}").into_bytes()),
    ]
}

fn path(shape: u8, segment: &str) -> String {
    // Half the requests aim at the status route, the rest at near misses.
    match shape % 8 {
        0..=3 => format!("/v1/orders/{segment}/status"),
        4 => format!("/v1/orders/{segment}"),
        5 => format!("/{segment}"),
        6 => format!("/v1/{segment}/{segment}/status"),
        _ => format!("/healthz/{segment}"),
    }
}

const CASES: u32 = 512;

#[test]
fn random_requests_never_panic_or_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (db, server) = runtime.block_on(async {
        let db = TestStore::open().await;
        db.provisioned("801000000000001AAA", OWNER).await;
        let server = Server::start(builder(db.dyn_store()).build().unwrap()).await;
        (db, server)
    });

    let strategy = (
        any::<u8>(),
        segment(),
        header_value(),
        header_value(),
        any::<bool>(),
    );
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &strategy,
            |(shape, segment, customer, authorization, right_token)| {
                let url = server.url(&path(shape, &encode(&segment)));
                let mut request = server.client.get(&url);
                if let Ok(value) = reqwest::header::HeaderValue::from_bytes(&customer) {
                    request = request.header("X-Customer-Number", value);
                }
                if right_token {
                    request = request.bearer_auth(TOKEN);
                } else if let Ok(value) = reqwest::header::HeaderValue::from_bytes(&authorization) {
                    request = request.header("Authorization", value);
                }
                let status = runtime.block_on(async { request.send().await.unwrap().status() });
                prop_assert!(!status.is_server_error(), "{url}: {status}");
                *seen.lock().unwrap().entry(status.as_u16()).or_default() += 1;
                Ok(())
            },
        )
        .unwrap();

    // Every case was sent, and they reached both the guards and the route table.
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.values().sum::<u32>(), CASES, "{seen:?}");
    assert!(
        seen.contains_key(&401) && seen.contains_key(&404),
        "{seen:?}"
    );

    // Still serving afterwards.
    let status = runtime.block_on(async { server.get("/healthz").await.status() });
    assert_eq!(status, 200);
    drop(server);
    drop(db);
}
