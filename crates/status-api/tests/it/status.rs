//! `GET /v1/orders/{orderId}/status`: the 200 body, and 404s that do not tell orders apart.

use expect_test::expect;
use status_api::{OrderStatus, OrderStatusBody};

use crate::support::{OTHER, OWNER, Server, TestStore, builder, eager_monitor, parts};

const ORDER: &str = "801000000000001AAA";

#[tokio::test]
async fn the_owner_gets_the_exact_status_body() {
    let db = TestStore::open().await;
    db.provisioned(ORDER, OWNER).await;
    let server = Server::start(builder(db.dyn_store()).build().unwrap()).await;

    let response = server.lookup(ORDER, OWNER).await;
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(
        response.headers()["cache-control"].to_str().unwrap(),
        "no-store"
    );
    let (status, body) = parts(response).await;
    assert_eq!(status, 200);
    expect![[r#"{"orderId":"801000000000001AAA","status":"provisioned","whmcsOrderId":"4711","serviceIds":["101","102"],"updatedAt":"2026-11-29T00:05:00.000Z","error":null}"#]]
        .assert_eq(&body);
}

#[tokio::test]
async fn each_stage_is_reported_with_every_key_present() {
    let db = TestStore::open().await;
    let received = "801000000000002AAA";
    let running = "801000000000003AAA";
    let failed = "801000000000004AAA";
    // Seeded so that each claim takes the job just enqueued (claims take the oldest first).
    db.failed(failed, "C-3", "whmcs: product 9 is not orderable")
        .await;
    db.received(running, "C-2").await;
    db.claim(running, crate::support::at(1)).await;
    db.received(received, "C-1").await;
    let server = Server::start(builder(db.dyn_store()).build().unwrap()).await;

    let mut seen = Vec::new();
    for (order, customer) in [(received, "C-1"), (running, "C-2"), (failed, "C-3")] {
        let (status, body) = parts(server.lookup(order, customer).await).await;
        assert_eq!(status, 200, "{order}");
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "error",
                "orderId",
                "serviceIds",
                "status",
                "updatedAt",
                "whmcsOrderId"
            ]
        );
        seen.push(serde_json::from_str::<OrderStatusBody>(&body).unwrap());
    }
    assert_eq!(
        seen.iter().map(|b| b.status).collect::<Vec<_>>(),
        [
            OrderStatus::Received,
            OrderStatus::Provisioning,
            OrderStatus::Failed
        ]
    );
    assert_eq!(seen[0].error, None);
    assert_eq!(seen[1].error, None);
    assert_eq!(
        seen[2].error.as_deref(),
        Some("whmcs: product 9 is not orderable")
    );
    assert_eq!(seen[2].updated_at, crate::support::at(60));
}

#[tokio::test]
async fn another_customers_order_and_an_unknown_id_look_the_same() {
    let db = TestStore::open().await;
    db.provisioned(ORDER, OWNER).await;
    let (monitor, alerts) = eager_monitor();
    let server = Server::start(builder(db.dyn_store()).monitor(monitor).build().unwrap()).await;

    let foreign = server.lookup(ORDER, OTHER).await;
    let foreign_headers = header_names(&foreign);
    let foreign = foreign.bytes().await.unwrap();
    let unknown = server.lookup("801000000000009ZZZ", OTHER).await;
    assert_eq!(unknown.status(), 404);
    let unknown_headers = header_names(&unknown);
    let unknown = unknown.bytes().await.unwrap();
    let malformed = server.lookup("not-an-order-id", OTHER).await;
    assert_eq!(malformed.status(), 404);
    let malformed = malformed.bytes().await.unwrap();

    assert_eq!(&foreign[..], br#"{"error":"not_found"}"#);
    assert_eq!(foreign, unknown);
    assert_eq!(foreign, malformed);
    assert_eq!(foreign_headers, unknown_headers);
    // Every 404 was counted against the asking customer, with its address.
    let alerts = alerts.alerts();
    assert!(!alerts.is_empty());
    assert!(
        alerts
            .iter()
            .all(|a| a.kind == security::AlertKind::StatusEnumeration)
    );
    let json = alerts[0].to_json();
    assert!(json.contains(OTHER), "{json}");
    assert!(json.contains("127.0.0.1"), "{json}");
    // The owner still sees it.
    assert_eq!(server.lookup(ORDER, OWNER).await.status(), 200);
}

#[tokio::test]
async fn a_15_character_id_finds_the_order_by_its_18_character_form() {
    let db = TestStore::open().await;
    db.provisioned("a0D30000001n7PiEAI", OWNER).await;
    let server = Server::start(builder(db.dyn_store()).build().unwrap()).await;
    let (status, body) = parts(server.lookup("a0D30000001n7Pi", OWNER).await).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with(r#"{"orderId":"a0D30000001n7PiEAI","#),
        "{body}"
    );
    // Salesforce ids are case-sensitive: another case is another id.
    assert_eq!(server.lookup("A0D30000001N7PI", OWNER).await.status(), 404);
}

#[tokio::test]
async fn a_missing_or_malformed_customer_number_is_a_bad_request() {
    let db = TestStore::open().await;
    db.provisioned(ORDER, OWNER).await;
    let server = Server::start(builder(db.dyn_store()).build().unwrap()).await;
    let token = Some(crate::support::TOKEN);
    for customer in [None, Some(""), Some("jane.doe@example.com"), Some("C 1")] {
        let (status, body) = parts(server.status(ORDER, customer, token).await).await;
        assert_eq!(status, 400, "{customer:?}");
        assert_eq!(body, r#"{"error":"invalid_customer_number"}"#);
    }
}

#[tokio::test]
async fn a_failing_store_is_unavailable_without_details() {
    let mut store = provisioner_store::MockStore::new();
    store.expect_job().returning(|_| {
        Err(provisioner_store::Error::Corrupt {
            what: "job",
            reason: "secret-ish detail".to_owned(),
        })
    });
    let server = Server::start(builder(std::sync::Arc::new(store)).build().unwrap()).await;
    let (status, body) = parts(server.lookup(ORDER, OWNER).await).await;
    assert_eq!(status, 503);
    assert_eq!(body, r#"{"error":"unavailable"}"#);
}

fn header_names(response: &reqwest::Response) -> Vec<(String, String)> {
    let mut headers: Vec<_> = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    headers
}
