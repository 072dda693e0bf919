//! The status API's path and headers: any request line and `Authorization` /
//! `X-Customer-Number` values get an answer below 500, never a panic.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use provisioner_store::MockStore;
use secrecy::SecretString;
use security::IpAllowlist;
use status_api::StatusApiState;
use tower::ServiceExt as _;

const TOKEN: &str = "fuzz-portal-token-0123456789abcdef";

fn setup() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static SETUP: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut store = MockStore::new();
        store.expect_job().returning(|_| Ok(None));
        store.expect_ping().returning(|| Ok(()));
        let allowlist = IpAllowlist::parse("127.0.0.1/32").unwrap_or_else(|e| panic!("{e}"));
        let state = StatusApiState::builder(Arc::new(store), SecretString::from(TOKEN))
            .allowlist(allowlist)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let router = status_api::router(state);
        (runtime, router)
    })
}

fuzz_target!(|data: &[u8]| {
    // path \0 customer number \0 authorization (a missing part is left out).
    let mut parts = data.splitn(3, |b| *b == 0);
    let path = parts.next().unwrap_or_default();
    let customer = parts.next();
    let authorization = parts.next();
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let mut builder = Request::get(path);
    if let Some(value) = customer.and_then(|v| HeaderValue::from_bytes(v).ok()) {
        builder = builder.header("X-Customer-Number", value);
    }
    if let Some(value) = authorization.and_then(|v| HeaderValue::from_bytes(v).ok()) {
        builder = builder.header("Authorization", value);
    }
    let Ok(mut request) = builder.body(Body::empty()) else {
        return;
    };
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
    let (runtime, router) = setup();
    let response = runtime
        .block_on(router.clone().oneshot(request))
        .unwrap_or_else(|never| match never {});
    assert!(
        !response.status().is_server_error(),
        "{path:?}: {}",
        response.status()
    );
});
