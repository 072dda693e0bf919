//! Issue 15, the settle rule: an AddOrder or AcceptOrder that WHMCS commits after the client
//! gave up is never sent a second time. The sandbox holds the call past the client's timeout
//! and then commits it; the job looks the call up, waits until the call's sent time + its
//! timeout + `WHMCS_SETTLE`, looks again, and finds it.

use std::time::Duration;

use provisioner_store::{JobState, Store};
use sandbox::whmcs::Fault;

use crate::stack::{self, Db, Stack};

const LIMIT: Duration = Duration::from_secs(60);

/// One Order, enqueued by the sweep, with a settle margin that leaves seconds between the
/// held call's commit and the earliest repeat.
async fn one_order(db: Db) -> Stack {
    let stack = stack::build_tuned(db, 1, 1, false, |c| {
        c.whmcs_settle = Duration::from_secs(3);
    })
    .await;
    assert_eq!(stack.engine.reconcile_once().await.unwrap(), 1);
    stack
}

async fn run_to_done(stack: &Stack) {
    let handle = stack.engine.start();
    let order_id = &stack.orders[0].order_id;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let job = stack.store.job(order_id).await.unwrap().unwrap();
        if matches!(
            job.state,
            JobState::Done | JobState::Failed | JobState::Refused
        ) {
            assert_eq!(job.state, JobState::Done, "{job:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never done: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.shutdown().await;
}

/// The job waited for the settle point (an `outcome_settling` record) instead of repeating.
async fn waited_to_settle(stack: &Stack) -> bool {
    let order_id = &stack.orders[0].order_id;
    stack
        .store
        .audit_for_order(order_id, 100)
        .await
        .unwrap()
        .iter()
        .any(|r| r.record.details.get(audit::DetailKey::ErrorCode) == Some("outcome_settling"))
}

/// `action` held `hold` (longer than its client timeout) once, then committed: the Order is
/// provisioned with `action` sent exactly once, and the job waited for the settle point.
async fn held_once_is_sent_once(db: Db, action: &str, hold: Duration) {
    let stack = one_order(db).await;
    stack
        .whmcs
        .inject_fault(action, Fault::HoldThenCommit(hold), Some(1));
    run_to_done(&stack).await;
    assert_eq!(
        stack.whmcs.requests_for(action).len(),
        1,
        "{action} sent once"
    );
    assert!(
        waited_to_settle(&stack).await,
        "the job waited for the settle point"
    );
    stack.check_invariants().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_order_committed_after_the_client_timed_out_is_not_sent_again() {
    // Held 2 s (the client gives up after 1 s), then committed: the settle point is 1 s + 3 s
    // after it was sent, two seconds after the commit.
    held_once_is_sent_once(Db::Sqlite, "AddOrder", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_order_committed_after_the_client_timed_out_is_not_sent_again() {
    // The server module runs 3 s (the client gives up after 2 s); the order stays Pending
    // meanwhile, which must not read as "never accepted".
    held_once_is_sent_once(Db::Sqlite, "AcceptOrder", Duration::from_secs(3)).await;
}

/// The same on PostgreSQL, where the intent's sent time and the claim time come from the
/// database's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_order_committed_late_is_not_sent_again_on_postgres() {
    held_once_is_sent_once(Db::Postgres, "AddOrder", Duration::from_secs(2)).await;
}

/// A lookup that misses before the settle point is not the end: once the point has passed and
/// the call is still not there, it is sent again (the first one really was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_order_that_never_committed_is_sent_again_after_the_settle_point() {
    let stack = one_order(Db::Sqlite).await;
    // A 500 page: WHMCS may or may not have committed (here it did not).
    stack
        .whmcs
        .inject_fault("AddOrder", Fault::Html500, Some(1));
    let started = std::time::Instant::now();
    run_to_done(&stack).await;
    assert_eq!(stack.whmcs.requests_for("AddOrder").len(), 2);
    // Not before sent + 1 s timeout + 3 s settle.
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(waited_to_settle(&stack).await);
    stack.check_invariants().await;
    stack.cleanup().await;
}
