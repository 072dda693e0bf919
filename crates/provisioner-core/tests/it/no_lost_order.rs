//! Issue 14: no approved Order is lost. Refused and failed jobs are reopened by a new event,
//! the reconcile sweep and an operator; approval is re-checked before each WHMCS write; one id
//! form; a write-back after WHMCS accepted never marks the Order failed; the sweep reaches
//! every orphan. The real sandboxes, the real Pub/Sub subscriber and a real store.

use std::time::Duration;

use provisioner_core::EngineHandle;
use provisioner_store::{JobSource, JobState, Reopen, Store};
use sandbox::whmcs::Fault;

use crate::stack::{self, Db, SeededOrder, Stack};

const LIMIT: Duration = Duration::from_secs(60);

/// Starts the workers and the subscriber (from the earliest retained event).
fn start(stack: &Stack) -> EngineHandle {
    let mut handle = stack.engine.start();
    stack.engine.spawn_subscriber(
        &mut handle,
        stack.pubsub_client.clone().expect("built with Pub/Sub"),
        stack::fast_subscriber(),
    );
    handle
}

/// Sets an Order's status as a Salesforce user would (LastModifiedDate moves on). A future
/// LastModifiedDate keeps the start-up reconcile sweep away unless a test wants it.
fn set_status(stack: &Stack, order_id: &str, status: &str, sweepable: bool) {
    let mut order = stack.sf.order(order_id).unwrap();
    order.status = status.to_owned();
    order.last_modified = if sweepable {
        chrono::Utc::now() - chrono::Duration::hours(1)
    } else {
        chrono::Utc::now() + chrono::Duration::hours(1)
    };
    stack.sf.insert_order(order);
}

/// Waits until `pred` holds for the Order's job.
async fn wait_job(
    stack: &Stack,
    order_id: &str,
    what: &str,
    pred: impl Fn(&provisioner_store::Job) -> bool,
) -> provisioner_store::Job {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let job = stack.store.job(order_id).await.unwrap();
        if let Some(job) = job.filter(|j| pred(j)) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{order_id}: never {what}: {:?}",
            stack.store.job(order_id).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the engine raised `alert`: a job raises its alert after its end committed,
/// so a test that saw the end may look before the alert is out.
async fn wait_alert(stack: &Stack, alert: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !stack.alerts.all().iter().any(|a| a == alert) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never raised {alert}: {:?}",
            stack.alerts.all()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_state(stack: &Stack, order_id: &str, state: JobState) -> provisioner_store::Job {
    wait_job(stack, order_id, state.as_str(), |j| j.state == state).await
}

/// The WHMCS orders whose services carry `order_id` as their external ref.
fn whmcs_orders_of(stack: &Stack, order_id: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = stack
        .whmcs
        .services()
        .iter()
        .filter(|s| s.custom_fields.get(&stack::REF_FIELD).map(String::as_str) == Some(order_id))
        .map(|s| s.order_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Exactly one WHMCS order for the Order, Active, and the Order Activated with its id.
fn provisioned_once(stack: &Stack, order_id: &str) {
    let ids = whmcs_orders_of(stack, order_id);
    assert_eq!(ids.len(), 1, "{order_id}: WHMCS orders {ids:?}");
    assert_eq!(stack.whmcs.order(ids[0]).unwrap().status, "Active");
    let order = stack.sf.order(order_id).unwrap();
    assert_eq!(order.status, "Activated", "{order_id}");
    assert_eq!(order.whmcs_order_id, Some(ids[0].to_string()));
}

/// PATCHes received for the Order so far.
fn patches_of(stack: &Stack, order_id: &str) -> Vec<serde_json::Value> {
    stack
        .sf
        .patches()
        .into_iter()
        .filter(|p| p.order_id == order_id)
        .map(|p| p.body)
        .collect()
}

/// The WHMCS client id of a seeded Order.
fn client_of(stack: &Stack, o: &SeededOrder) -> u64 {
    let order = stack.sf.order(&o.order_id).unwrap();
    order.whmcs_client_id.as_str().unwrap().parse().unwrap()
}

/// Seeded Orders start out of the start-up sweep's reach (a future LastModifiedDate).
async fn stack_of(db: Db, customers: usize, per_customer: usize) -> Stack {
    let stack = stack::build_on(db, customers, per_customer, true).await;
    for o in &stack.orders {
        let status = stack.sf.order(&o.order_id).unwrap().status;
        set_status(&stack, &o.order_id, &status, false);
    }
    stack
}

/// Done-when 1: an event for a Draft Order is refused with no WHMCS call and no write to the
/// Order; once Approved, (a) a new event and (b) a sweep without an event each provision it
/// exactly once.
async fn refused_then_approved(db: Db) {
    let stack = stack_of(db, 2, 1).await;
    let (a, b) = (&stack.orders[0], &stack.orders[1]);
    for o in [a, b] {
        set_status(&stack, &o.order_id, "Draft", false);
        stack.publish(o);
    }
    let handle = start(&stack);
    for o in [a, b] {
        let job = wait_state(&stack, &o.order_id, JobState::Refused).await;
        assert_eq!(job.last_error.as_deref(), Some("not_approved"));
    }
    assert!(stack.whmcs.orders().is_empty(), "no WHMCS call");
    assert!(stack.whmcs.requests_for("GetClientsDetails").is_empty());
    for o in [a, b] {
        assert!(
            patches_of(&stack, &o.order_id).is_empty(),
            "no write to the Order"
        );
        assert_eq!(stack.sf.order(&o.order_id).unwrap().status, "Draft");
    }

    // (a) The Order is approved and the Flow publishes again.
    set_status(&stack, &a.order_id, "Approved", false);
    stack.publish(a);
    let job = wait_state(&stack, &a.order_id, JobState::Done).await;
    assert_eq!(job.reopened_by, Some(JobSource::Event));
    provisioned_once(&stack, &a.order_id);

    // (b) Approved with no event: the sweep finds it.
    set_status(&stack, &b.order_id, "Approved", true);
    assert_eq!(stack.engine.reconcile_once().await.unwrap(), 1);
    let job = wait_state(&stack, &b.order_id, JobState::Done).await;
    assert_eq!(job.reopened_by, Some(JobSource::Reconcile));
    provisioned_once(&stack, &b.order_id);
    // A second sweep finds nothing to do.
    assert_eq!(stack.engine.reconcile_once().await.unwrap(), 0);

    handle.shutdown().await;
    assert_eq!(stack.whmcs.orders().len(), 2);
    let records = audit::AuditLog::read_range(stack.store.as_ref(), 1, 10_000)
        .await
        .unwrap();
    let reopened = records
        .iter()
        .filter(|r| r.record.action.as_str() == "job_reopened")
        .count();
    assert_eq!(reopened, 2, "each reopening is audited");
    // No fault was injected: every AddOrder reply (serviceids beside the legacy productids)
    // was read as a success, never as an unknown outcome to retry.
    assert_eq!(audit_count(&stack, "step_failed").await, 0);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_order_approved_later_is_provisioned_once() {
    refused_then_approved(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_order_approved_later_is_provisioned_once_on_postgres() {
    refused_then_approved(Db::Postgres).await;
}

/// Done-when 2: a job fails for good (inactive WHMCS client); the client is made Active and
/// (a) the Order set back to Approved with a new event, or (b) an operator retries it (`dlq
/// retry`: the Order still says Provisioning Failed) → provisioned exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_order_is_provisioned_once_after_the_cause_is_fixed() {
    let stack = stack_of(Db::Sqlite, 2, 1).await;
    let (a, b) = (&stack.orders[0], &stack.orders[1]);
    for o in [a, b] {
        stack
            .whmcs
            .set_client_status(client_of(&stack, o), "Inactive");
        stack.publish(o);
    }
    let handle = start(&stack);
    for o in [a, b] {
        wait_state(&stack, &o.order_id, JobState::Failed).await;
        assert_eq!(
            stack.sf.order(&o.order_id).unwrap().status,
            "Provisioning Failed"
        );
    }
    assert!(stack.whmcs.orders().is_empty());

    // (a) Fixed, re-approved, published again.
    stack
        .whmcs
        .set_client_status(client_of(&stack, a), "Active");
    set_status(&stack, &a.order_id, "Approved", false);
    stack.publish(a);
    wait_state(&stack, &a.order_id, JobState::Done).await;
    provisioned_once(&stack, &a.order_id);

    // (b) Fixed, and the operator retries the dead letter (what `dlq retry` does).
    stack
        .whmcs
        .set_client_status(client_of(&stack, b), "Active");
    let reopen = Reopen {
        by: JobSource::Operator,
        customer_number: None,
        account_id: None,
        event_id: None,
    };
    assert!(
        stack
            .store
            .reopen(&b.order_id, reopen, vec![], chrono::Utc::now())
            .await
            .unwrap()
    );
    wait_state(&stack, &b.order_id, JobState::Done).await;
    provisioned_once(&stack, &b.order_id);
    handle.shutdown().await;
    let open = stack
        .store
        .dead_letters(Some(provisioner_store::DeadLetterState::Open), 10)
        .await
        .unwrap();
    assert!(
        open.is_empty(),
        "reopening retried the dead letters: {open:?}"
    );
    stack.cleanup().await;
}

/// A withdrawal that lands after the job's check and before its PATCH to the provisioning
/// status (the PATCH is held at the sandbox's door while the Order is set back to Draft): the
/// sandbox's validation rule refuses the PATCH, the job reads the Order again and is refused
/// `approval_withdrawn`. The withdrawal stands, and no WHMCS order is ever added.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_withdrawal_between_the_check_and_the_provisioning_patch_is_kept() {
    let stack = stack_of(Db::Sqlite, 1, 1).await;
    let a = &stack.orders[0];
    stack.sf.pause(sandbox::salesforce::Route::Patch);
    stack.publish(a);
    let handle = start(&stack);
    stack
        .sf
        .wait_until_waiting(sandbox::salesforce::Route::Patch, 1)
        .await;
    set_status(&stack, &a.order_id, "Draft", false);
    stack.sf.resume(sandbox::salesforce::Route::Patch);
    let job = wait_state(&stack, &a.order_id, JobState::Refused).await;
    assert_eq!(job.last_error.as_deref(), Some("approval_withdrawn"));
    assert_eq!(stack.sf.order(&a.order_id).unwrap().status, "Draft");
    let codes: Vec<u16> = stack
        .sf
        .patches()
        .into_iter()
        .filter(|p| p.order_id == a.order_id)
        .map(|p| p.status)
        .collect();
    assert_eq!(
        codes,
        [400],
        "only the refused PATCH to the provisioning status"
    );
    assert!(stack.whmcs.orders().is_empty(), "no WHMCS order was added");
    wait_alert(&stack, &format!("approval_withdrawn:{}", a.order_id)).await;
    handle.shutdown().await;
    stack.cleanup().await;
}

/// Done-when 4: approval withdrawn while AddOrder keeps failing → no WHMCS order ever
/// committed, nothing written to the Order after the change, an alert names it; the same
/// between AddOrder and AcceptOrder → no AcceptOrder, the alert names the Pending WHMCS order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_withdrawn_approval_stops_the_job_before_its_next_whmcs_write() {
    let stack = stack_of(Db::Sqlite, 2, 1).await;
    let (a, b) = (&stack.orders[0], &stack.orders[1]);
    stack.whmcs.inject_fault("AddOrder", Fault::Html500, None);
    stack.publish(a);
    let handle = start(&stack);
    wait_job(&stack, &a.order_id, "retrying AddOrder", |j| {
        j.attempts >= 2 && j.state == JobState::Pending
    })
    .await;
    set_status(&stack, &a.order_id, "Draft", false);
    let patches_before = patches_of(&stack, &a.order_id).len();
    let job = wait_state(&stack, &a.order_id, JobState::Refused).await;
    assert_eq!(job.last_error.as_deref(), Some("approval_withdrawn"));
    stack.whmcs.clear_faults();
    assert!(whmcs_orders_of(&stack, &a.order_id).is_empty());
    assert!(
        stack.whmcs.orders().is_empty(),
        "no WHMCS order was ever committed"
    );
    assert_eq!(
        patches_of(&stack, &a.order_id).len(),
        patches_before,
        "nothing written to the Order after the change"
    );
    assert_eq!(stack.sf.order(&a.order_id).unwrap().status, "Draft");
    wait_alert(&stack, &format!("approval_withdrawn:{}", a.order_id)).await;

    // Between AddOrder and AcceptOrder.
    stack
        .whmcs
        .inject_fault("AcceptOrder", Fault::Html500, None);
    stack.publish(b);
    let job = wait_job(&stack, &b.order_id, "retrying AcceptOrder", |j| {
        j.attempts >= 2 && j.state == JobState::Pending && j.whmcs_order_id.is_some()
    })
    .await;
    let whmcs_id: u64 = job.whmcs_order_id.unwrap().parse().unwrap();
    set_status(&stack, &b.order_id, "Draft", false);
    let patches_before = patches_of(&stack, &b.order_id).len();
    wait_state(&stack, &b.order_id, JobState::Refused).await;
    stack.whmcs.clear_faults();
    assert_eq!(whmcs_orders_of(&stack, &b.order_id), [whmcs_id]);
    assert_eq!(
        stack.whmcs.order(whmcs_id).unwrap().status,
        "Pending",
        "no AcceptOrder went through"
    );
    assert_eq!(patches_of(&stack, &b.order_id).len(), patches_before);
    wait_alert(
        &stack,
        &format!("approval_withdrawn:{}:{whmcs_id}", b.order_id),
    )
    .await;

    // Approved again later: the Pending order is found and accepted, never ordered twice.
    set_status(&stack, &b.order_id, "Approved", false);
    stack.publish(b);
    wait_state(&stack, &b.order_id, JobState::Done).await;
    provisioned_once(&stack, &b.order_id);
    assert_eq!(whmcs_orders_of(&stack, &b.order_id), [whmcs_id]);
    handle.shutdown().await;
    stack.cleanup().await;
}

/// Done-when 5: events with the 15- and the 18-character id of one Order → one job, one
/// WHMCS order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_15_and_18_character_ids_of_an_order_reach_one_job() {
    let stack = stack_of(Db::Sqlite, 1, 1).await;
    let o = &stack.orders[0];
    let short = SeededOrder {
        order_id: o.order_id[..15].to_owned(),
        ..o.clone()
    };
    stack.publish(&short);
    stack.publish(o);
    let handle = start(&stack);
    wait_state(&stack, &o.order_id, JobState::Done).await;
    // Both events are stored.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while audit_count(&stack, "event_received").await + audit_count(&stack, "event_duplicate").await
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "second event never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.shutdown().await;
    let jobs = stack.store.jobs(0, 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        jobs[0].order_id, o.order_id,
        "stored in the 18-character form"
    );
    assert!(stack.store.job(&short.order_id).await.unwrap().is_none());
    provisioned_once(&stack, &o.order_id);
    stack.cleanup().await;
}

async fn audit_count(stack: &Stack, action: &str) -> usize {
    audit::AuditLog::read_range(stack.store.as_ref(), 1, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.record.action.as_str() == action)
        .count()
}

/// Done-when 6: the PATCH to Activated fails with a permanent-looking error after
/// AcceptOrder → the Order never gets the failed status, the write-back retries until it
/// succeeds, and `writeback_stuck` is raised once after the configured time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_write_back_after_accept_never_fails_the_order() {
    let stack = stack::build_tuned(Db::Sqlite, 1, 1, true, |c| {
        c.writeback_stuck_after = Duration::from_millis(300);
        // Far fewer attempts than the failures to come: the budget does not apply here.
        c.retry.max_attempts = 3;
    })
    .await;
    let o = &stack.orders[0];
    set_status(&stack, &o.order_id, "Approved", false);
    // A validation rule refuses Status = Activated (400 FIELD_CUSTOM_VALIDATION_EXCEPTION).
    stack.sf.reject_status_updates_to(Some("Activated"));
    stack.publish(o);
    let handle = start(&stack);
    let stuck = format!("writeback_stuck:{}", o.order_id);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !stack.alerts.all().iter().any(|a| a.starts_with(&stuck)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            stack.alerts.all()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still failing after the alert: more attempts, no second alert.
    let job = wait_job(&stack, &o.order_id, "retried after the alert", |j| {
        j.stuck_alerted_at.is_some() && j.attempts >= 5
    })
    .await;
    assert_eq!(job.step, provisioner_store::Step::Accepted);
    assert_eq!(job.state, JobState::Pending);
    stack.sf.reject_status_updates_to(None);
    wait_state(&stack, &o.order_id, JobState::Done).await;
    handle.shutdown().await;

    provisioned_once(&stack, &o.order_id);
    let statuses: Vec<String> = patches_of(&stack, &o.order_id)
        .iter()
        .filter_map(|p| p["Status"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !statuses.iter().any(|s| s == "Provisioning Failed"),
        "{statuses:?}"
    );
    let alerts = stack.alerts.all();
    assert_eq!(
        alerts.iter().filter(|a| a.starts_with(&stuck)).count(),
        1,
        "{alerts:?}"
    );
    assert!(!alerts.iter().any(|a| a.starts_with("provisioning_failed")));
    stack.cleanup().await;
}

/// An Order this provisioner left in the provisioning status whose job is gone (a backup
/// restored to before the job, with no event to replay: the sweep had enqueued it) is found
/// by the sweep and provisioned once; its job resumes it as the provisioner's own work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provisioning_order_whose_job_was_lost_is_found_by_the_sweep() {
    let stack = stack_of(Db::Sqlite, 1, 1).await;
    let a = &stack.orders[0];
    set_status(&stack, &a.order_id, "Provisioning", true);
    // Before the workers start (their start-up sweep would find it too).
    assert_eq!(stack.engine.reconcile_once().await.unwrap(), 1);
    let handle = stack.engine.start();
    let job = wait_state(&stack, &a.order_id, JobState::Done).await;
    assert_eq!(job.source, JobSource::Reconcile);
    provisioned_once(&stack, &a.order_id);
    assert_eq!(stack.engine.reconcile_once().await.unwrap(), 0);
    handle.shutdown().await;
    stack.cleanup().await;
}

/// Done-when 7: 2,500 approved Orders that all have jobs, and one orphan approved last → one
/// sweep enqueues the orphan (Salesforce answers in batches of 2,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_sweep_reaches_an_orphan_behind_2500_orders_with_jobs() {
    let stack = stack::build_on(Db::Sqlite, 1, 2501, false).await;
    let now = chrono::Utc::now();
    let (orphan, rest) = stack.orders.split_last().unwrap();
    for (i, o) in rest.iter().enumerate() {
        let mut order = stack.sf.order(&o.order_id).unwrap();
        order.last_modified =
            now - chrono::Duration::hours(2) + chrono::Duration::seconds(i as i64);
        stack.sf.insert_order(order);
        let job = provisioner_store::NewJob {
            order_id: o.order_id.clone(),
            customer_number: o.customer.clone(),
            account_id: None,
            event_id: Some(format!("evt-{i}")),
            source: JobSource::Event,
        };
        assert!(stack.store.enqueue(job, vec![], now).await.unwrap());
    }
    let mut order = stack.sf.order(&orphan.order_id).unwrap();
    order.last_modified = now - chrono::Duration::minutes(5);
    stack.sf.insert_order(order);

    assert_eq!(stack.engine.reconcile_once().await.unwrap(), 1);
    let job = stack.store.job(&orphan.order_id).await.unwrap().unwrap();
    assert_eq!(job.source, JobSource::Reconcile);
    assert_eq!(stack.store.job_counts().await.unwrap().pending, 2501);
    stack.cleanup().await;
}
