//! Issue 19, throughput under faults: a job whose call failed transiently and waits in the
//! client before sending it again lends its worker slot to another job meanwhile.

use std::sync::Arc;
use std::time::Duration;

use provisioner_store::{JobState, Store};
use sandbox::salesforce::{FaultKind, Route, Trigger};

use crate::stack::{self, Db};

/// One worker slot, two customers' Orders. Whichever job first marks its Order Provisioning
/// (a PATCH, before anything is sent to WHMCS) gets a 503, and its client waits an hour before
/// it sends the PATCH again. The other Order is provisioned meanwhile; with the slot held
/// through the wait, it would not even be claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_to_send_a_call_again_lends_its_worker_slot() {
    let stack = stack::build_on(Db::Sqlite, 2, 1, false).await;
    let rest: Arc<dyn sf_rest::OrderApi> = Arc::new(
        sf_rest::RestOrderApi::new(
            stack::sf_tokens(&stack.sf),
            sf_rest::RestConfig {
                retry: sf_rest::RetryPolicy {
                    max_attempts: 2,
                    initial_backoff: Duration::from_secs(3600),
                    max_backoff: Duration::from_secs(3600),
                },
                ..sf_rest::RestConfig::default()
            },
        )
        .unwrap()
        .with_pause(Arc::new(provisioner_core::pause_outside_slot)),
    );
    let whmcs: Arc<dyn whmcs_client::WhmcsApi> =
        Arc::new(whmcs_client::HttpWhmcsClient::new(stack::whmcs_config(&stack.whmcs)).unwrap());
    let monitor = security::SecurityMonitor::new(
        Arc::new(security::LogSink),
        security::Thresholds::default(),
    );
    let url = format!("sqlite://{}/slots.db", stack.dir.path().display());
    let (store, engine) = stack::engine_tuned(&url, &rest, &whmcs, Arc::new(monitor), |c| {
        c.concurrency = 1;
        c.shutdown_grace = Duration::from_millis(100);
    })
    .await;
    // Both Orders queued by the sweep; only jobs PATCH Orders.
    assert_eq!(engine.reconcile_once().await.unwrap(), 2);
    stack
        .sf
        .faults()
        .inject(Route::Patch, FaultKind::Status(503), Trigger::Next(1));

    let handle = engine.start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (waiting, done) = loop {
        let mut jobs = Vec::new();
        for o in &stack.orders {
            jobs.push(store.job(&o.order_id).await.unwrap().unwrap());
        }
        if let Some(done) = jobs.iter().find(|j| j.state == JobState::Done) {
            // Read the other job again now, after the first was seen done: the two reads above
            // are not one snapshot, and on a loaded machine the first may predate every claim.
            let other = jobs.iter().find(|j| j.order_id != done.order_id).unwrap();
            let waiting = store.job(&other.order_id).await.unwrap().unwrap();
            break (waiting, done.clone());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Order was provisioned while the other waited: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stack.sf.faults().fired(Route::Patch), 1);
    // The waiting job still holds its claim: its customer's turn and its lease are its own.
    assert_eq!(waiting.state, JobState::Running, "{waiting:?}");
    assert!(done.whmcs_order_id.is_some(), "{done:?}");
    assert_eq!(stack.whmcs.orders().len(), 1);
    handle.shutdown().await;
    stack.cleanup().await;
}
