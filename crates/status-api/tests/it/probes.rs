//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use test_support::prometheus::parse as parse_exposition;

use crate::support::{OWNER, Server, TestStore, builder, parts};

/// The process-wide recorder (one per test binary; tests only look for their own series).
fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().unwrap();
            status_api::describe_metrics();
            handle
        })
        .clone()
}

#[tokio::test]
async fn healthz_is_live() {
    let db = TestStore::open().await;
    let server = Server::start(builder(db.dyn_store()).build().unwrap()).await;
    let (status, body) = parts(server.get("/healthz").await).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
}

#[tokio::test]
async fn readyz_follows_the_store_and_the_subscriber() {
    let db = TestStore::open().await;
    let connected = Arc::new(AtomicBool::new(false));
    let flag = connected.clone();
    let state = builder(db.dyn_store())
        .subscriber_ready(move || flag.load(Ordering::SeqCst))
        .build()
        .unwrap();
    let server = Server::start(state).await;

    let (status, body) = parts(server.get("/readyz").await).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        r#"{"status":"not_ready","store":"ok","subscriber":"disconnected"}"#
    );
    connected.store(true, Ordering::SeqCst);
    let (status, body) = parts(server.get("/readyz").await).await;
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"status":"ready","store":"ok","subscriber":"ok"}"#);
}

#[tokio::test]
async fn readyz_is_503_when_the_store_does_not_answer() {
    let mut store = provisioner_store::MockStore::new();
    store.expect_ping().returning(|| {
        Err(provisioner_store::Error::Io {
            op: "ping".to_owned(),
            source: std::io::Error::other("down"),
        })
    });
    let server = Server::start(builder(Arc::new(store)).build().unwrap()).await;
    let (status, body) = parts(server.get("/readyz").await).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        r#"{"status":"not_ready","store":"unreachable","subscriber":"ok"}"#
    );
}

#[tokio::test]
async fn metrics_without_a_recorder_is_not_found() {
    let db = TestStore::open().await;
    let server = Server::start(builder(db.dyn_store()).build().unwrap()).await;
    assert_eq!(server.get("/metrics").await.status(), 404);
}

#[tokio::test]
async fn metrics_is_prometheus_text_and_counts_requests() {
    let db = TestStore::open().await;
    db.provisioned("801000000000001AAA", OWNER).await;
    let state = builder(db.dyn_store()).metrics(recorder()).build().unwrap();
    let server = Server::start(state).await;
    assert_eq!(
        server.lookup("801000000000001AAA", OWNER).await.status(),
        200
    );
    assert_eq!(
        server.lookup("801000000000002AAA", OWNER).await.status(),
        404
    );
    assert_eq!(server.get("/healthz").await.status(), 200);

    let response = server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        status_api::PROMETHEUS_CONTENT_TYPE
    );
    let text = response.text().await.unwrap();
    let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let value = |name: &str, labels: &[&str]| -> f64 {
        samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|l| s.has_label(l)))
            .map(|s| s.value)
            .sum()
    };
    let status_route = r#"route="/v1/orders/{orderId}/status""#;
    assert!(value(status_api::REQUESTS_TOTAL, &[status_route, r#"code="200""#]) >= 1.0);
    assert!(value(status_api::REQUESTS_TOTAL, &[status_route, r#"code="404""#]) >= 1.0);
    assert!(
        value(
            status_api::REQUESTS_TOTAL,
            &[r#"route="/healthz""#, r#"code="200""#]
        ) >= 1.0
    );
    assert!(value(status_api::LOOKUPS_TOTAL, &[r#"result="found""#]) >= 1.0);
    assert!(value(status_api::LOOKUPS_TOTAL, &[r#"result="not_found""#]) >= 1.0);
    let duration_count = format!("{}_count", status_api::REQUEST_DURATION_SECONDS);
    assert!(value(&duration_count, &[status_route]) >= 2.0);
    assert!(text.contains(&format!("# HELP {} ", status_api::REQUESTS_TOTAL)));
    // Concrete order ids never become label values.
    assert!(!text.contains("801000000000001AAA"));
}

#[test]
fn the_exposition_checker_rejects_what_is_not_prometheus_text() {
    assert!(parse_exposition("# HELP a b\na 1\nb{x=\"1\",y=\"2\"} 2.5\nc +Inf\n").is_ok());
    for bad in [
        "a",
        "a b",
        "1a 1",
        "a{x=1} 1",
        "a{x=\"1\" 1",
        "a 1 2 3",
        "{x=\"1\"} 1",
    ] {
        assert!(parse_exposition(bad).is_err(), "{bad}");
    }
}
