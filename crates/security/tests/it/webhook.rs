//! Alerts delivered to a real loopback webhook.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use expect_test::expect;
use security::{
    AlertSink, IntegrityCheck, SecurityMonitor, Subject, Thresholds, WebhookConfig, WebhookSink,
};
use serde_json::Value;

use crate::support::{DeadWebhook, Receiver};

fn fast_retries() -> WebhookConfig {
    WebhookConfig {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..WebhookConfig::default()
    }
}

#[tokio::test]
async fn alert_arrives_with_the_contract_shape_and_header() {
    let mut receiver = Receiver::start(0).await;
    let sink = Arc::new(WebhookSink::new(&receiver.url, fast_retries()).unwrap());
    let monitor = SecurityMonitor::new(sink.clone(), Thresholds::default());

    let raised = monitor
        .order_refused("801xx000003DIoZAAW", "C-000123")
        .await
        .expect("threshold 1 raises at once");
    let got = receiver.next().await;

    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    let json: Value = serde_json::from_str(&got.body).unwrap();
    let keys: BTreeSet<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "alert",
            "severity",
            "at",
            "count",
            "windowSeconds",
            "details"
        ])
    );
    let at = json["at"].as_str().unwrap();
    let parsed = chrono::DateTime::parse_from_rfc3339(at).unwrap();
    assert_eq!(parsed, raised.at);
    // Everything but the timestamp, exactly.
    let body = got.body.replace(at, "<at>");
    expect![[r#"{"alert":"unapproved_order_event","severity":"high","at":"<at>","count":1,"windowSeconds":3600,"details":{"order_id":"801xx000003DIoZAAW","customer_number":"C-000123"}}"#]]
        .assert_eq(&body);
    assert_eq!(got.body, raised.to_json());
}

#[tokio::test]
async fn receiver_failing_twice_still_gets_the_alert() {
    let mut receiver = Receiver::start(2).await;
    let sink = Arc::new(WebhookSink::new(&receiver.url, fast_retries()).unwrap());
    let monitor = SecurityMonitor::new(sink.clone(), Thresholds::default());

    monitor
        .integrity_failure(IntegrityCheck::AuditMac, Some("k-7"))
        .await
        .unwrap();
    let got = receiver.next().await;
    let json: Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(json["alert"], "integrity_failure");
    assert_eq!(json["details"]["key_id"], "k-7");
    assert_eq!(json["details"]["check"], "audit_mac");
    assert_eq!(receiver.attempts(), 3);

    drop(monitor);
    let sink = Arc::into_inner(sink).unwrap();
    let stats = sink.shutdown(Duration::from_secs(30)).await;
    assert_eq!(stats.delivered, 1);
    assert_eq!(stats.retries, 2);
    assert_eq!(stats.failed, 0);
}

#[tokio::test]
async fn duplicates_are_sent_once() {
    let mut receiver = Receiver::start(0).await;
    let sink = Arc::new(WebhookSink::new(&receiver.url, fast_retries()).unwrap());
    let monitor = SecurityMonitor::new(sink.clone(), Thresholds::default());

    assert!(
        monitor
            .order_refused("801000000000001AAA", "C-1")
            .await
            .is_some()
    );
    for i in 2..=5 {
        let order = format!("80100000000000{i}AAA");
        assert!(monitor.order_refused(&order, "C-1").await.is_none());
    }
    assert!(
        monitor
            .order_refused("801000000000009AAA", "C-2")
            .await
            .is_some()
    );
    // Deliveries run side by side, so the two may arrive in either order.
    let mut got = Vec::new();
    for _ in 0..2 {
        let body: Value = serde_json::from_str(&receiver.next().await.body).unwrap();
        got.push((
            body["details"]["customer_number"].clone(),
            body["count"].clone(),
        ));
    }
    got.sort_by_key(|(c, _)| c.to_string());
    assert_eq!(
        got,
        [("C-1".into(), 1.into()), ("C-2".into(), 1.into())] as [(Value, Value); 2]
    );
    // The dedup windows are still open: nothing to summarise yet.
    assert_eq!(monitor.flush().await, 0);

    drop(monitor);
    let stats = Arc::into_inner(sink)
        .unwrap()
        .shutdown(Duration::from_secs(30))
        .await;
    assert_eq!(stats.delivered, 2);
    assert_eq!(receiver.attempts(), 2);
}

#[tokio::test]
async fn flood_with_a_dead_webhook_does_not_block_and_drops_the_oldest() {
    let dead = DeadWebhook::start().await;
    let config = WebhookConfig {
        capacity: 16,
        request_timeout: Duration::from_secs(600),
        ..WebhookConfig::default()
    };
    let sink = Arc::new(WebhookSink::new(&dead.url, config).unwrap());
    let thresholds = Thresholds {
        dedup_window: Duration::ZERO,
        ..Thresholds::default()
    };
    let monitor = SecurityMonitor::new(sink.clone(), thresholds);

    // Hang guard only: a blocking `send` would never finish this loop.
    tokio::time::timeout(Duration::from_secs(120), async {
        for i in 0..10_000u32 {
            if i % 2 == 0 {
                let ip = std::net::IpAddr::from(i.to_be_bytes());
                monitor.rate_limited(Subject::ip(ip)).await;
                sink.send(provisioning_alert(i)).await;
            } else {
                assert!(
                    monitor
                        .integrity_failure(IntegrityCheck::FieldDecrypt, None)
                        .await
                        .is_some()
                );
            }
        }
    })
    .await
    .expect("sending alerts blocked");
    let stats = sink.stats();
    // Every alert was stored; the outbox kept its newest 16.
    assert_eq!(stats.queued, 10_000, "{stats:?}");
    assert_eq!(stats.dropped, 10_000 - 16, "{stats:?}");
    assert_eq!(sink.waiting().await, Some(16));
    assert_eq!(stats.delivered, 0);

    drop(monitor);
    let stats = Arc::into_inner(sink)
        .unwrap()
        .shutdown(Duration::from_millis(50))
        .await;
    assert_eq!(stats.delivered, 0);
}

/// A webhook that hangs on one alert does not hold the others back: deliveries run side by
/// side, each on its own schedule.
#[tokio::test]
async fn a_hanging_delivery_does_not_hold_the_others_back() {
    let mut receiver = Receiver::start(0).await;
    let target = receiver.url.clone();
    let forwarded = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let (target, forwarded) = (target.clone(), forwarded.clone());
            async move {
                if body.contains("C-hang") {
                    std::future::pending::<()>().await;
                }
                let _ = forwarded.post(target).body(body).send().await;
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = WebhookConfig {
        request_timeout: Duration::from_secs(600),
        ..fast_retries()
    };
    let sink = WebhookSink::new(&url, config).unwrap();
    let hang = Subject::customer("C-hang");
    sink.send(security::Alert::new(
        security::AlertKind::RepeatedProvisioningFailure,
        hang.clone(),
        3,
        Duration::from_secs(3600),
        hang.details(),
    ))
    .await;
    for i in 0..5 {
        sink.send(provisioning_alert(i)).await;
    }
    let mut got = BTreeSet::new();
    for _ in 0..5 {
        let body: Value = serde_json::from_str(&receiver.next().await.body).unwrap();
        got.insert(
            body["details"]["customer_number"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(got, (0..5).map(|i| format!("C-{i}")).collect());
    // The receiver sees each body before the webhook's 200 reaches the sink: wait for the five
    // answers to be taken in, then only the hanging one is left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sink.stats().delivered < 5 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", sink.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        sink.waiting().await,
        Some(1),
        "only the hanging one is left"
    );
}

fn provisioning_alert(i: u32) -> security::Alert {
    let subject = Subject::customer(format!("C-{i}"));
    security::Alert::new(
        security::AlertKind::RepeatedProvisioningFailure,
        subject.clone(),
        3,
        Duration::from_secs(3600),
        subject.details(),
    )
}

#[tokio::test]
async fn pii_cannot_reach_the_webhook() {
    let mut receiver = Receiver::start(0).await;
    let sink = Arc::new(WebhookSink::new(&receiver.url, fast_retries()).unwrap());
    let monitor = SecurityMonitor::new(sink, Thresholds::default());
    monitor
        .order_refused("801000000000001AAA", "jane.doe@example.com")
        .await
        .unwrap();
    let got = receiver.next().await;
    assert!(!got.body.contains("jane"), "{}", got.body);
    assert!(
        got.body.contains(r#""customer_number":"[redacted]""#),
        "{}",
        got.body
    );
}

/// A webhook that answers with a redirect does not get the alert sent on to the new location;
/// the alert is kept and tried again at the configured URL.
#[tokio::test]
async fn a_redirect_is_not_followed_and_the_alert_is_kept() {
    let receiver = Receiver::start(0).await;
    let target = receiver.url.clone();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let target = target.clone();
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, target)],
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sink = Arc::new(WebhookSink::new(&url, fast_retries()).unwrap());
    let monitor = SecurityMonitor::new(sink.clone(), Thresholds::default());
    monitor
        .order_refused("801000000000001AAA", "C-1")
        .await
        .unwrap();
    // Hang guard only: the sink retries every few milliseconds.
    tokio::time::timeout(Duration::from_secs(60), async {
        while hits.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the alert is tried again");
    assert_eq!(receiver.attempts(), 0, "the redirect's target got nothing");
    assert_eq!(sink.waiting().await, Some(1), "the alert is kept");
    assert!(sink.stats().retries >= 2);
}
