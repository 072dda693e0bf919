//! Order intake against the sandbox: pricing, the all-or-none create read back by the
//! provisioner's query, duplicates, lost answers, account lookups.

use std::time::Duration;

use chrono::NaiveDate;
use sandbox::pubsub::{PubSubConfig, PubSubSandbox};
use sandbox::salesforce::{FaultKind, Route, SfPricebookEntry, salesforce_id};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sf_rest::{
    Error, ErrorClass, NewOrder, NewOrderItem, OrderApi, OrderIntakeApi, RestConfig, RestOrderApi,
};
use test_support::logs::LogCapture;

use crate::support::{World, fast_retry, world};

/// A config option value that stands for a secret (it would be ciphertext in real use).
const SECRET_OPTION: &str = "enc:v1:not-really-a-root-password";

/// Entries for WHMCS products 5 (10.00) and 6 (20.00) in the sandbox's price book.
fn price_products(w: &World) -> (String, String) {
    (w.sf.seed_product(5, 10.0), w.sf.seed_product(6, 20.0))
}

fn new_order(w: &World, request_id: &str, entries: [&str; 2]) -> NewOrder {
    NewOrder {
        account_id: salesforce_id("001", 7),
        effective_date: NaiveDate::from_ymd_opt(2026, 12, 3).unwrap(),
        status: "Pending Review".into(),
        pricebook_id: w.sf.pricebook_id(),
        request_id: request_id.into(),
        items: vec![
            NewOrderItem {
                pricebook_entry_id: entries[0].into(),
                quantity: 2,
                unit_price: 10.0,
                billing_cycle: "monthly".into(),
                config_options_json: String::new(),
            },
            NewOrderItem {
                pricebook_entry_id: entries[1].into(),
                quantity: 1,
                unit_price: 20.0,
                billing_cycle: "annually".into(),
                config_options_json: json!({ "41": SECRET_OPTION, "42": 7 }).to_string(),
            },
        ],
    }
}

#[tokio::test]
async fn an_order_created_with_two_items_reads_back_as_provisionable() {
    let (capture, _guard) = LogCapture::trace();
    let w = world().await;
    let (e5, e6) = price_products(&w);
    let before = w.sf.order_count();
    let created = w
        .api
        .create_order(&new_order(&w, "C-1001:key-1", [&e5, &e6]))
        .await
        .unwrap();
    assert_eq!(w.sf.order_count(), before + 1);
    assert_eq!(created.id.as_str().len(), 18);
    assert_eq!(created.status, "Pending Review");
    assert_eq!(created.order_number.len(), 8);
    assert!(created.order_number.chars().all(|c| c.is_ascii_digit()));
    assert_eq!(w.sf.requests(Route::Composite), 1);

    let order = w.api.fetch_order(created.id.as_str()).await.unwrap();
    assert_eq!(order.status.as_deref(), Some("Pending Review"));
    assert_eq!(
        order.order_number.as_deref(),
        Some(created.order_number.as_str())
    );
    assert_eq!(order.customer_number.as_deref(), Some("C-1001"));
    assert_eq!(order.whmcs_client_id.as_deref(), Some("12"));
    assert_eq!(order.items.len(), 2);
    assert_eq!(order.items[0].quantity, 2);
    assert_eq!(order.items[0].whmcs_product_id.as_deref(), Some("5"));
    assert_eq!(order.items[0].billing_cycle.as_deref(), Some("monthly"));
    assert!(order.items[0].config_options.is_none());
    assert_eq!(order.items[1].quantity, 1);
    assert_eq!(order.items[1].whmcs_product_id.as_deref(), Some("6"));
    assert_eq!(order.items[1].billing_cycle.as_deref(), Some("annually"));
    let options: Value = serde_json::from_str(
        order.items[1]
            .config_options
            .as_ref()
            .unwrap()
            .expose_secret(),
    )
    .unwrap();
    assert_eq!(options, json!({ "41": SECRET_OPTION, "42": 7 }));

    // Stored as sent, priced from the entries.
    let items = w.sf.order_items(created.id.as_str());
    assert_eq!(items.len(), 2);
    let price = w.sf.order_item_price(&items[1].id).unwrap();
    assert_eq!(
        (price.pricebook_entry_id.as_str(), price.unit_price),
        (e6.as_str(), 20.0)
    );
    let stored = w.sf.order(created.id.as_str()).unwrap();
    assert_eq!(stored.portal_request_id.as_deref(), Some("C-1001:key-1"));
    assert_eq!(stored.pricebook_id, Some(w.sf.pricebook_id()));

    // Found by its request id; approved (status and event, as the Flow does) it is what the
    // provisioner fetches.
    let found = w
        .api
        .find_order_by_request_id("C-1001:key-1")
        .await
        .unwrap();
    assert_eq!(found.as_ref(), Some(&created));
    assert_eq!(
        w.api
            .find_order_by_request_id("C-1001:other")
            .await
            .unwrap(),
        None
    );
    let pubsub = PubSubSandbox::start(PubSubConfig::default()).await.unwrap();
    w.sf.attach_pubsub(pubsub.publisher(), "/event/OrderProvisionRequested__e");
    let event = w.sf.approve(created.id.as_str()).unwrap();
    assert!(!event.event_id.is_empty());
    let approved = w.api.fetch_order(created.id.as_str()).await.unwrap();
    assert_eq!(approved.status.as_deref(), Some("Approved"));
    assert_eq!(approved.items.len(), 2);

    // The create is logged without its body.
    let logs = capture.text();
    assert!(
        logs.contains("composite create of an Order with 2 OrderItems"),
        "{logs}"
    );
    assert!(
        !logs.contains(SECRET_OPTION),
        "the log holds the config options"
    );
}

#[tokio::test]
async fn an_unknown_or_inactive_entry_fails_the_create_and_leaves_no_order() {
    let w = world().await;
    let (e5, e6) = price_products(&w);
    assert!(w.sf.set_pricebook_entry_active(&e6, false));
    let unknown = salesforce_id("01u", 999_999);
    let before = w.sf.order_count();
    for (n, entries) in [[e5.as_str(), e6.as_str()], [e5.as_str(), unknown.as_str()]]
        .into_iter()
        .enumerate()
    {
        let err = w
            .api
            .create_order(&new_order(&w, &format!("C-1001:bad-{n}"), entries))
            .await
            .unwrap_err();
        match &err {
            Error::Api {
                status,
                code,
                message,
                fields,
                ..
            } => {
                assert_eq!((*status, code.as_str()), (400, "FIELD_INTEGRITY_EXCEPTION"));
                assert!(message.starts_with("subrequest refItem1: "), "{message}");
                assert_eq!(fields, &["PricebookEntryId"]);
                assert!(!message.contains(SECRET_OPTION));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert!(!err.to_string().contains(SECRET_OPTION));
    }
    assert_eq!(
        w.sf.order_count(),
        before,
        "all or none: no Order left behind"
    );
    assert_eq!(
        w.sf.requests(Route::Composite),
        2,
        "permanent errors are not retried"
    );
    assert_eq!(
        w.api
            .find_order_by_request_id("C-1001:bad-0")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_second_create_with_the_same_request_id_is_a_duplicate() {
    let w = world().await;
    let (e5, e6) = price_products(&w);
    let order = new_order(&w, "C-1001:key-dup", [&e5, &e6]);
    let first = w.api.create_order(&order).await.unwrap();
    let before = w.sf.order_count();
    let err = w.api.create_order(&order).await.unwrap_err();
    assert!(
        matches!(&err, Error::Duplicate { field, .. } if field == "Portal_Request_Id__c"),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(w.sf.order_count(), before);
    let found = w
        .api
        .find_order_by_request_id("C-1001:key-dup")
        .await
        .unwrap();
    assert_eq!(found, Some(first));
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_resolved_by_the_request_id() {
    let w = world().await;
    let (e5, e6) = price_products(&w);
    let before = w.sf.order_count();
    w.sf.faults()
        .fail_next(Route::Composite, 1, FaultKind::CommitThenDrop);
    let order = new_order(&w, "C-1001:key-lost", [&e5, &e6]);
    let err = w.api.create_order(&order).await.unwrap_err();
    assert!(err.is_unknown_outcome(), "{err:?}");
    assert_eq!(w.sf.requests(Route::Composite), 1, "no blind retry");
    assert_eq!(w.sf.order_count(), before + 1, "the create was committed");
    let found = w
        .api
        .find_order_by_request_id("C-1001:key-lost")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.sf.order_items(found.id.as_str()).len(), 2);
    // Sending it again is safe: the request id makes it a duplicate.
    let again = w.api.create_order(&order).await.unwrap_err();
    assert!(matches!(again, Error::Duplicate { .. }), "{again:?}");
    assert_eq!(w.sf.order_count(), before + 1);
}

#[tokio::test]
async fn a_create_that_times_out_is_an_unknown_outcome() {
    let w = world().await;
    let (e5, e6) = price_products(&w);
    let api = RestOrderApi::new(
        w.tokens.clone(),
        RestConfig {
            request_timeout: Duration::from_millis(300),
            retry: fast_retry(),
            ..RestConfig::default()
        },
    )
    .unwrap();
    // Warm the token so the slow request is the create itself.
    api.account_customer_number(&salesforce_id("001", 7))
        .await
        .unwrap();
    w.sf.faults().fail_next(
        Route::Composite,
        1,
        FaultKind::DelayAnswer(Duration::from_secs(3)),
    );
    let err = api
        .create_order(&new_order(&w, "C-1001:key-slow", [&e5, &e6]))
        .await
        .unwrap_err();
    assert!(err.is_unknown_outcome(), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(w.sf.requests(Route::Composite), 1);
    let found = api
        .find_order_by_request_id("C-1001:key-slow")
        .await
        .unwrap();
    assert!(found.is_some());
}

#[tokio::test]
async fn too_many_items_are_refused_before_any_request() {
    let w = world().await;
    let (e5, e6) = price_products(&w);
    let mut order = new_order(&w, "C-1001:key-big", [&e5, &e6]);
    let item = order.items[0].clone();
    order.items = vec![item; 25];
    let err = w.api.create_order(&order).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
    assert!(err.to_string().contains("24"), "{err}");
    assert_eq!(w.sf.total_requests(), 0);
    order.items.truncate(24);
    let created = w.api.create_order(&order).await.unwrap();
    assert_eq!(w.sf.order_items(created.id.as_str()).len(), 24);
}

#[tokio::test]
async fn account_customer_numbers_are_read_by_validated_id() {
    let w = world().await;
    let account = salesforce_id("001", 7);
    assert_eq!(
        w.api
            .account_customer_number(&account)
            .await
            .unwrap()
            .as_deref(),
        Some("C-1001")
    );
    assert_eq!(
        w.api
            .account_customer_number(&account[..15])
            .await
            .unwrap()
            .as_deref(),
        Some("C-1001")
    );
    assert_eq!(
        w.api
            .account_customer_number(&salesforce_id("001", 8))
            .await
            .unwrap(),
        None
    );
    let queries = w.sf.requests(Route::Query);
    let err = w
        .api
        .account_customer_number("001' OR Id != '")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidId { .. }), "{err:?}");
    assert_eq!(w.sf.requests(Route::Query), queries);
}

#[tokio::test]
async fn pricebook_entries_are_filtered_by_product_book_and_active_flag() {
    let w = world().await;
    let (e5, e6) = price_products(&w);
    let e7 = w.sf.seed_product(7, 70.0);
    assert!(w.sf.set_pricebook_entry_active(&e7, false));
    // Product 5 also has an entry in another price book.
    let other_book = salesforce_id("01s", 2);
    w.sf.insert_pricebook(other_book.clone());
    let product5 =
        w.sf.pricebook_entries()
            .into_iter()
            .find(|e| e.id == e5)
            .unwrap()
            .product_id;
    w.sf.insert_pricebook_entry(SfPricebookEntry {
        id: salesforce_id("01u", 5_000),
        pricebook_id: other_book.clone(),
        product_id: product5,
        unit_price: 1.0,
        is_active: true,
    });

    let mut entries = w
        .api
        .pricebook_entries(&w.sf.pricebook_id(), &[7, 6, 5, 8, 5])
        .await
        .unwrap();
    entries.sort_by_key(|e| e.whmcs_product_id);
    let got: Vec<(u64, &str, f64)> = entries
        .iter()
        .map(|e| (e.whmcs_product_id, e.id.as_str(), e.unit_price))
        .collect();
    assert_eq!(got, vec![(5, e5.as_str(), 10.0), (6, e6.as_str(), 20.0)]);
    let other = w.api.pricebook_entries(&other_book, &[5, 6]).await.unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].unit_price, 1.0);

    let queries = w.sf.requests(Route::Query);
    assert!(
        w.api
            .pricebook_entries(&w.sf.pricebook_id(), &[])
            .await
            .unwrap()
            .is_empty()
    );
    let err = w.api.pricebook_entries("01s'", &[5]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidId { .. }), "{err:?}");
    assert_eq!(w.sf.requests(Route::Query), queries);
}
