//! "Commit then drop": WHMCS applied the change but the caller never heard. The client must
//! call it an unknown outcome, and the external-ref lookup must find what was created.

use sandbox::whmcs::Fault;
use whmcs_client::{AcceptOrderRequest, CustomFields, ErrorClass, NewOrder, OrderLine, WhmcsApi};

use crate::support::{REF_FIELD, client_for, world};

#[tokio::test]
async fn add_order_dropped_after_commit_is_unknown_and_found_by_ref() {
    let w = world().await;
    let whmcs = client_for(&w.sandbox);
    let sf_order = "801Qy00000DropMeAAA";
    let mut line = OrderLine::new(w.vps, "monthly");
    line.custom_fields = CustomFields::new().with(REF_FIELD, sf_order);
    let order = NewOrder::new(w.client_id, vec![line]);

    // before: no earlier attempt
    assert!(
        whmcs
            .find_service_by_custom_field(w.client_id, REF_FIELD, sf_order)
            .await
            .unwrap()
            .is_none()
    );

    w.sandbox
        .inject_fault("AddOrder", Fault::CommitThenDrop, Some(1));
    let err = whmcs.add_order(&order).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::UnknownOutcome, "{err}");
    assert!(!err.is_retryable());

    // the order exists although the caller got no answer
    let orders = w.sandbox.orders();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].status, "Pending");

    // reconcile: the earlier attempt is found by its external ref, so no second AddOrder
    let found = whmcs
        .find_service_by_custom_field(w.client_id, REF_FIELD, sf_order)
        .await
        .unwrap()
        .expect("the committed order's service");
    assert_eq!(found.order_id, orders[0].id);
    assert_eq!(found.status, "Pending");
    assert_eq!(w.sandbox.requests_for("AddOrder").len(), 1);

    // and the flow goes on from there
    whmcs
        .accept_order(&AcceptOrderRequest::provision(found.order_id, false))
        .await
        .unwrap();
    assert_eq!(w.sandbox.order(found.order_id).unwrap().status, "Active");
}

#[tokio::test]
async fn accept_order_dropped_after_commit_is_unknown_then_reconciled() {
    let w = world().await;
    let whmcs = client_for(&w.sandbox);
    let mut line = OrderLine::new(w.vps, "monthly");
    line.custom_fields = CustomFields::new().with(REF_FIELD, "801Y");
    let placed = whmcs
        .add_order(&NewOrder::new(w.client_id, vec![line]))
        .await
        .unwrap();

    w.sandbox
        .inject_fault("acceptorder", Fault::CommitThenDrop, Some(1));
    let accept = AcceptOrderRequest::provision(placed.order_id, false);
    let err = whmcs.accept_order(&accept).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::UnknownOutcome, "{err}");
    assert_eq!(w.sandbox.order(placed.order_id).unwrap().status, "Active");

    // a blind retry says "not pending"; GetOrders shows it Active, so it counts as done
    let err = whmcs.accept_order(&accept).await.unwrap_err();
    assert!(err.is_order_not_pending());
    let order = whmcs.get_order(placed.order_id).await.unwrap().unwrap();
    assert!(order.is_active());
    assert_eq!(order.service_ids(), placed.service_ids);
}

#[tokio::test]
async fn a_dropped_read_is_transient() {
    let w = world().await;
    let whmcs = client_for(&w.sandbox);
    w.sandbox
        .inject_fault("GetClientsDetails", Fault::CommitThenDrop, None);
    let err = whmcs.get_client_details(w.client_id).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    w.sandbox.clear_faults();
    assert!(whmcs.get_client_details(w.client_id).await.is_ok());
}

/// The window the settle rule closes: an AddOrder held past the client's timeout commits
/// *after* the client gave up, so a lookup made at once finds nothing, and one made later finds
/// the order.
#[tokio::test]
async fn add_order_committed_after_the_client_gave_up_is_found_only_later() {
    let w = world().await;
    let mut config = crate::support::config_for(&w.sandbox);
    config.read_timeout = std::time::Duration::from_millis(300);
    let whmcs = whmcs_client::HttpWhmcsClient::new(config).unwrap();
    let sf_order = "801Qy00000SlowAddAAA";
    let mut line = OrderLine::new(w.vps, "monthly");
    line.custom_fields = CustomFields::new().with(REF_FIELD, sf_order);
    w.sandbox.inject_fault(
        "AddOrder",
        Fault::HoldThenCommit(std::time::Duration::from_secs(3)),
        Some(1),
    );
    let err = whmcs
        .add_order(&NewOrder::new(w.client_id, vec![line]))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::UnknownOutcome, "{err}");
    // Looked up at once: not committed yet.
    assert!(
        whmcs
            .find_service_by_custom_field(w.client_id, REF_FIELD, sf_order)
            .await
            .unwrap()
            .is_none()
    );
    assert!(w.sandbox.orders().is_empty());
    // It commits all the same.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while w.sandbox.orders().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never committed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let found = whmcs
        .find_service_by_custom_field(w.client_id, REF_FIELD, sf_order)
        .await
        .unwrap()
        .expect("found once committed");
    assert_eq!(found.order_id, w.sandbox.orders()[0].id);
}

/// A caller that records its intent before a write bounds the write by a deadline taken
/// before that record: one already past when the call starts is not sent at all (an unknown
/// outcome, and nothing reaches WHMCS), and one sooner than the configured timeout ends the
/// wait then.
#[tokio::test]
async fn a_write_is_never_out_past_the_callers_deadline() {
    let w = world().await;
    let whmcs = client_for(&w.sandbox);
    let mut line = OrderLine::new(w.vps, "monthly");
    line.custom_fields = CustomFields::new().with(REF_FIELD, "801Qy00000LateOneAAA");
    let mut order = NewOrder::new(w.client_id, vec![line]);
    order.deadline = Some(tokio::time::Instant::now());
    let err = whmcs.add_order(&order).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::UnknownOutcome, "{err}");
    assert!(w.sandbox.requests_for("AddOrder").is_empty());
    assert!(w.sandbox.orders().is_empty());

    order.deadline = None;
    let placed = whmcs.add_order(&order).await.unwrap();
    // AcceptOrder held at WHMCS for longer than the client's own timeout (20 s here).
    w.sandbox.inject_fault(
        "AcceptOrder",
        Fault::Latency(std::time::Duration::from_secs(60)),
        Some(1),
    );
    let mut request = AcceptOrderRequest::provision(placed.order_id, false);
    request.deadline = Some(tokio::time::Instant::now() + std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = whmcs.accept_order(&request).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::UnknownOutcome, "{err}");
    assert_eq!(w.sandbox.requests_for("AcceptOrder").len(), 1);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "given up at the caller's deadline, not after the configured timeout: {:?}",
        started.elapsed()
    );
}
