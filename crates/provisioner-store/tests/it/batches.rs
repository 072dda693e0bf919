//! PostgreSQL: the fenced writes of several jobs go to the database as one statement, and a
//! batch the database refuses (a fence, a chain held elsewhere) leaves every write to run on
//! its own with the outcome it would have had alone.
//!
//! On a current-thread runtime, writes started together (`join_all`) are all queued before
//! the flusher task first runs: which writes share a statement is decided, not raced.

use std::time::Duration;

use audit::{Action, Actor, AuditLog as _, NewAuditRecord, Outcome};
use chrono::Utc;
use provisioner_store::{
    BatchCounts, Error, JobEnd, JobState, Reschedule, SqlStore, Step, StepUpdate, Store,
};
use sqlx::Connection as _;

use crate::support::{TestDb, event};

const LEASE: Duration = Duration::from_secs(30);

fn step_record(order_id: &str) -> NewAuditRecord {
    NewAuditRecord::new(Actor::ENGINE, Action::STEP_SUCCEEDED, Outcome::Success)
        .order_id(order_id.to_owned())
        .unwrap()
}

/// `n` jobs of `n` customers, each claimed: their order ids and claim tokens.
async fn claimed_jobs(store: &SqlStore, n: u32) -> Vec<(String, String)> {
    let now = Utc::now();
    for i in 0..n {
        let order = format!("801{i:015}");
        store
            .ingest_event(&event(i, &order, &format!("C{i}")), now)
            .await
            .unwrap();
    }
    let mut jobs = Vec::new();
    for i in 0..n {
        let job = store
            .claim(&format!("w{i}"), now, LEASE)
            .await
            .unwrap()
            .unwrap();
        jobs.push((job.order_id, job.lease_owner.unwrap()));
    }
    jobs
}

async fn advance(store: &SqlStore, order_id: &str, owner: &str) -> provisioner_store::Result<()> {
    store
        .advance(
            order_id,
            owner,
            Step::Checked,
            StepUpdate::default(),
            vec![step_record(order_id)],
            Utc::now(),
        )
        .await
}

/// Advances every job in `jobs` at once.
async fn advance_all(
    store: &SqlStore,
    jobs: &[(String, String)],
) -> Vec<provisioner_store::Result<()>> {
    futures::future::join_all(jobs.iter().map(|(o, w)| advance(store, o, w))).await
}

/// What `store` counted since `before`.
fn since(store: &SqlStore, before: BatchCounts) -> BatchCounts {
    let now = store.batch_counts();
    BatchCounts {
        statements: now.statements - before.statements,
        written: now.written - before.written,
        refused: now.refused - before.refused,
    }
}

/// Advances every job in `jobs` at once again, after one refused batch since `counts`: each
/// write commits, all in one statement.
async fn all_in_one_statement_again(
    store: &SqlStore,
    jobs: &[(String, String)],
    counts: BatchCounts,
) {
    for result in advance_all(store, jobs).await {
        result.unwrap();
    }
    let written = u64::try_from(jobs.len()).unwrap();
    assert_eq!(since(store, counts), counted(1, written, 1));
}

fn counted(statements: u64, written: u64, refused: u64) -> BatchCounts {
    BatchCounts {
        statements,
        written,
        refused,
    }
}

/// The number of audit records, after checking every chain.
async fn records(store: &SqlStore) -> u64 {
    store.verify_audit().await.unwrap().records()
}

#[tokio::test(flavor = "current_thread")]
async fn steps_of_eight_jobs_at_once_commit_as_one_statement() {
    let db = TestDb::postgres().await;
    let store = db.open().await;
    let jobs = claimed_jobs(&store, 9).await;
    // One write first, so that this process has chain 0's head cached.
    advance(&store, &jobs[0].0, &jobs[0].1).await.unwrap();
    let counts = store.batch_counts();
    let before = records(&store).await;

    for result in advance_all(&store, &jobs[1..]).await {
        result.unwrap();
    }
    assert_eq!(since(&store, counts), counted(1, 8, 0));
    for (order_id, _) in &jobs {
        let job = store.job(order_id).await.unwrap().unwrap();
        assert_eq!(job.step, Step::Checked, "{order_id}");
    }
    // Eight records more, every chain unbroken, one step record per Order in chain 0.
    assert_eq!(records(&store).await, before + 8);
    let chain0 = store.audit_chain(0).read_range(1, 100).await.unwrap();
    for (order_id, _) in &jobs[1..] {
        let mine = chain0
            .iter()
            .filter(|r| {
                r.record.action == Action::STEP_SUCCEEDED
                    && r.record.order_id.as_ref().map(|o| o.as_str()) == Some(order_id.as_str())
            })
            .count();
        assert_eq!(mine, 1, "{order_id}");
    }
    drop(store);
    db.cleanup().await;
}

/// The flusher lets the tasks that are ready run before it takes its batch: a write made
/// after the first one started a flusher, while that flusher takes its turns, still goes in
/// the same statement. On this current-thread runtime the test's own task yields once: the
/// first write's task runs, queues its write and spawns the flusher, whose turn comes after
/// this task's; this task then writes.
#[tokio::test(flavor = "current_thread")]
async fn a_write_made_while_the_flusher_lets_ready_tasks_run_joins_its_batch() {
    let db = TestDb::postgres().await;
    let store = std::sync::Arc::new(db.open().await);
    let jobs = claimed_jobs(&store, 3).await;
    advance(&store, &jobs[0].0, &jobs[0].1).await.unwrap();
    // That write's flusher finds the queue empty at its next turn and ends: the next write
    // starts a flusher of its own.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let counts = store.batch_counts();
    let first = {
        let (store, (order, owner)) = (std::sync::Arc::clone(&store), jobs[1].clone());
        tokio::spawn(async move { advance(&store, &order, &owner).await })
    };
    tokio::task::yield_now().await;
    advance(&store, &jobs[2].0, &jobs[2].1).await.unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(since(&store, counts), counted(1, 2, 0));
    drop(store);
    db.cleanup().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_fenced_out_write_fails_alone_and_the_rest_of_its_batch_commits() {
    let db = TestDb::postgres().await;
    let store = db.open().await;
    let jobs = claimed_jobs(&store, 4).await;
    advance(&store, &jobs[0].0, &jobs[0].1).await.unwrap();
    let counts = store.batch_counts();
    let before = records(&store).await;

    // Job 1 under a token that is not its claim's (a worker whose lease was taken over).
    let mut batch = jobs[1..].to_vec();
    batch[0].1 = "w-stale:1".to_owned();
    let results = advance_all(&store, &batch).await;
    assert!(
        matches!(&results[0], Err(Error::LeaseLost { .. })),
        "{:?}",
        results[0]
    );
    results[1].as_ref().unwrap();
    results[2].as_ref().unwrap();
    // The batch was refused as a whole; the two others then committed on their own.
    assert_eq!(since(&store, counts), counted(0, 0, 1));
    assert_eq!(
        store.job(&jobs[1].0).await.unwrap().unwrap().step,
        Step::Received
    );
    assert_eq!(records(&store).await, before + 2);

    // The next writes of the same jobs batch again.
    all_in_one_statement_again(&store, &jobs[1..], counts).await;
    assert_eq!(records(&store).await, before + 5);
    drop(store);
    db.cleanup().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_batch_on_a_chain_held_elsewhere_goes_write_by_write_to_other_chains() {
    let db = TestDb::postgres().await;
    let store = db.open().await;
    let jobs = claimed_jobs(&store, 5).await;
    advance(&store, &jobs[0].0, &jobs[0].1).await.unwrap();
    let in_chain_0 = store.audit_chain(0).read_range(1, 100).await.unwrap().len();
    let counts = store.batch_counts();
    let before = records(&store).await;

    // Another session holds chain 0 (cached here, so the batch tries it first).
    let holder = test_support::pg::ChainZeroHolder::hold(&db.url()).await;
    for result in advance_all(&store, &jobs[1..]).await {
        result.unwrap();
    }
    assert_eq!(since(&store, counts), counted(0, 0, 1));
    holder.release().await.close().await.unwrap();
    sqlx::any::install_default_drivers();
    assert_eq!(
        store.audit_chain(0).read_range(1, 100).await.unwrap().len(),
        in_chain_0,
        "nothing went to the held chain"
    );
    assert_eq!(records(&store).await, before + 4);

    // Chain 0 is now tried last; the next batch goes to a chain the lone writes cached.
    all_in_one_statement_again(&store, &jobs[1..], counts).await;
    assert_eq!(
        store.audit_chain(0).read_range(1, 100).await.unwrap().len(),
        in_chain_0
    );
    assert_eq!(records(&store).await, before + 8);
    drop(store);
    db.cleanup().await;
}

#[tokio::test(flavor = "current_thread")]
async fn steps_retries_and_ends_of_different_jobs_share_one_statement() {
    let db = TestDb::postgres().await;
    let store = db.open().await;
    let jobs = claimed_jobs(&store, 7).await;
    advance(&store, &jobs[0].0, &jobs[0].1).await.unwrap();
    let counts = store.batch_counts();
    let before = records(&store).await;
    let now = Utc::now();
    let later = now + chrono::Duration::seconds(60);

    // Two plain steps, a step with a WHMCS order id, two retries (one with a recovery
    // point) and an end: four kinds of write, queued together, in one statement.
    let step = |i: usize, update: StepUpdate| {
        let (o, w) = jobs[i].clone();
        let store = &store;
        async move {
            store
                .advance(&o, &w, Step::Checked, update, vec![step_record(&o)], now)
                .await
        }
    };
    let retry = |i: usize, step: Option<Step>| {
        let (o, w) = jobs[i].clone();
        let store = &store;
        async move {
            let mut retry = Reschedule::at(later, Some("503 from WHMCS".to_owned()), true);
            retry.step = step;
            store
                .reschedule(&o, &w, retry, vec![step_record(&o)], now)
                .await
        }
    };
    let end = |i: usize| {
        let (o, w) = jobs[i].clone();
        let store = &store;
        async move {
            let end = JobEnd {
                state: JobState::Done,
                error: None,
                dead_letter: None,
            };
            store
                .finish(&o, &w, end, vec![step_record(&o), step_record(&o)], now)
                .await
        }
    };
    let with_order = StepUpdate {
        whmcs_order_id: Some("4711".to_owned()),
        ..StepUpdate::default()
    };
    let (a, b, c, d, e, f) = futures::join!(
        step(1, StepUpdate::default()),
        retry(2, None),
        step(3, with_order),
        end(4),
        retry(5, Some(Step::Checked)),
        step(6, StepUpdate::default()),
    );
    for result in [a, b, c, d, e, f] {
        result.unwrap();
    }
    assert_eq!(since(&store, counts), counted(1, 6, 0));

    let job = |i: usize| {
        let store = &store;
        let o = jobs[i].0.clone();
        async move { store.job(&o).await.unwrap().unwrap() }
    };
    for i in [1, 6] {
        let j = job(i).await;
        assert_eq!((j.state, j.step), (JobState::Running, Step::Checked));
        assert_eq!(j.whmcs_order_id, None);
    }
    let j = job(3).await;
    assert_eq!(j.step, Step::Checked);
    assert_eq!(j.whmcs_order_id.as_deref(), Some("4711"));
    let j = job(2).await;
    assert_eq!((j.state, j.step), (JobState::Pending, Step::Received));
    assert_eq!(j.last_error.as_deref(), Some("503 from WHMCS"));
    assert_eq!(
        j.next_attempt_at.timestamp_millis(),
        later.timestamp_millis()
    );
    assert_eq!(j.attempts, 1);
    let j = job(5).await;
    assert_eq!((j.state, j.step), (JobState::Pending, Step::Checked));
    let j = job(4).await;
    assert_eq!(
        (j.state, j.step, j.lease_owner),
        (JobState::Done, Step::Done, None)
    );
    // Seven records, every chain unbroken.
    assert_eq!(records(&store).await, before + 7);
    drop(store);
    db.cleanup().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_batch_whose_chain_head_another_instance_moved_goes_write_by_write() {
    let db = TestDb::postgres().await;
    let store = db.open().await;
    let other = db.open_shared().await;
    let jobs = claimed_jobs(&store, 4).await;
    // This instance caches chain 0's head; the other then appends to chain 0.
    advance(&store, &jobs[0].0, &jobs[0].1).await.unwrap();
    let in_chain_0 = store.audit_chain(0).read_range(1, 100).await.unwrap().len();
    other
        .audit_chain(0)
        .append(step_record("801999999999999999"))
        .await
        .unwrap();
    let counts = store.batch_counts();
    let before = records(&store).await;

    for result in advance_all(&store, &jobs[1..]).await {
        result.unwrap();
    }
    // Refused as a whole (its first record's place was taken); each write then ran alone.
    let seen = since(&store, counts);
    assert_eq!((seen.statements, seen.refused), (0, 1), "{seen:?}");
    for (order_id, _) in &jobs[1..] {
        assert_eq!(
            store.job(order_id).await.unwrap().unwrap().step,
            Step::Checked
        );
    }
    assert_eq!(records(&store).await, before + 3);
    assert!(store.audit_chain(0).read_range(1, 100).await.unwrap().len() > in_chain_0);
    drop((store, other));
    db.cleanup().await;
}
