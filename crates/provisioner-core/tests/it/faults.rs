//! Done-when 2 (SQLite) and 4a (PostgreSQL) of issue 6: 500 orders from 50 customers with ~10%
//! injected faults of every kind.

use std::time::Duration;

use provisioner_store::Store;
use sandbox::salesforce::{FaultKind, Route, Trigger};
use sandbox::whmcs::Fault;

use crate::stack::{self, Db, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_orders_with_faults_provision_exactly_once() {
    let stack = stack::build_on(Db::Sqlite, 50, 10, true).await;
    five_hundred_orders_with_faults(&stack).await;
    stack.cleanup().await;
}

/// Done-when 4a: the same run on a fresh PostgreSQL database (dropped at the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_orders_with_faults_provision_exactly_once_on_postgres() {
    let stack = stack::build_on(Db::Postgres, 50, 10, true).await;
    five_hundred_orders_with_faults(&stack).await;
    stack.cleanup().await;
}

async fn five_hundred_orders_with_faults(stack: &Stack) {
    // Approved just now: the start-up reconcile sweep leaves them to their events.
    for o in &stack.orders {
        let mut order = stack.sf.order(&o.order_id).unwrap();
        order.last_modified = chrono::Utc::now() + chrono::Duration::hours(1);
        stack.sf.insert_order(order);
    }
    let faults = stack.sf.faults();
    faults.seed(7);
    for (route, kind) in [
        (Route::Query, FaultKind::Status(503)),
        (Route::Query, FaultKind::DropConnection),
        (Route::Patch, FaultKind::Status(500)),
        (Route::Patch, FaultKind::DropConnection),
        (
            Route::Patch,
            FaultKind::SalesforceError {
                status: 400,
                error_code: "UNABLE_TO_LOCK_ROW".into(),
                message: "unable to obtain exclusive access to this record".into(),
            },
        ),
        (Route::Token, FaultKind::Status(503)),
    ] {
        faults.inject(route, kind, Trigger::Probability(0.03));
    }
    faults.inject(
        Route::Query,
        FaultKind::Latency(Duration::from_millis(2)),
        Trigger::Probability(0.1),
    );
    // Longer than the client's 1 s request timeout: real timeouts.
    faults.inject(
        Route::Query,
        FaultKind::Latency(Duration::from_millis(1500)),
        Trigger::Probability(0.01),
    );

    for (action, fault) in [
        ("AddOrder", Fault::CommitThenDrop),
        ("AddOrder", Fault::Html500),
        ("AcceptOrder", Fault::CommitThenDrop),
        ("AcceptOrder", Fault::Html500),
        ("GetClientsDetails", Fault::Html500),
        ("GetClientsProducts", Fault::Html500),
        ("GetOrders", Fault::Html500),
    ] {
        stack.whmcs.inject_fault_rate(action, fault, 0.05, 11);
    }
    stack.whmcs.inject_fault_rate(
        "AcceptOrder",
        Fault::Latency(Duration::from_millis(3)),
        0.1,
        11,
    );
    // Past the 1 s read timeout: a timed-out read, and an AddOrder whose outcome is unknown.
    for action in ["GetClientsDetails", "AddOrder"] {
        stack.whmcs.inject_fault_rate(
            action,
            Fault::Latency(Duration::from_millis(1500)),
            0.01,
            11,
        );
    }
    // Dropped Pub/Sub streams: the server ends the stream every 10 events.
    let pubsub = stack.pubsub.as_ref().expect("built with Pub/Sub");
    pubsub.faults().end_stream_every(10);

    let mut handle = stack.engine.start();
    let status = stack.engine.spawn_subscriber(
        &mut handle,
        stack.pubsub_client.clone().expect("built with Pub/Sub"),
        stack::fast_subscriber(),
    );
    // Token expiry keeps coming while orders flow.
    let chaos = {
        let sf = &stack.sf;
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                sf.expire_all_tokens();
            }
        }
    };
    let feed = async {
        // The operator approves: one platform event per Order, through the Pub/Sub sandbox.
        for o in &stack.orders {
            stack.publish(o);
        }
        stack.drain_count(500, Duration::from_secs(240)).await;
    };
    let _ = &status;
    tokio::select! {
        () = feed => {}
        () = chaos => unreachable!(),
    }
    handle.shutdown().await;
    stack.whmcs.clear_faults();
    stack.sf.faults().clear_all();

    let counts = stack.store.job_counts().await.unwrap();
    let not_done: Vec<_> = stack
        .store
        .jobs(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.state != provisioner_store::JobState::Done)
        .map(|j| (j.order_id, j.state, j.step, j.attempts, j.last_error))
        .collect();
    assert_eq!(counts.done, 500, "{counts:?}: {not_done:#?}");
    stack.check_invariants().await;
    // The faults really happened.
    assert!(stack.sf.faults().fired(Route::Query) + stack.sf.faults().fired(Route::Patch) > 10);
    assert!(
        stack.sf.token_requests() > 1,
        "tokens were re-minted after expiry"
    );
    assert!(
        stack.whmcs.requests_for("AddOrder").len() > 500,
        "WHMCS faults made AddOrder retry (after a lookup)"
    );
    assert_eq!(status.events(), 500, "every event stored once");
    assert!(
        pubsub.stats().subscribe_calls > 10,
        "streams were dropped and resumed"
    );
}
