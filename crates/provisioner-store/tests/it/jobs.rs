//! Claiming, leases, fencing, per-customer order.

use std::sync::Arc;
use std::time::Duration;

use audit::AuditLog as _;
use chrono::{Duration as ChronoDuration, Utc};
use provisioner_store::{
    Error, IngestOutcome, JobEnd, JobSource, JobState, NewDeadLetter, Reopen, Reschedule, Step,
    StepUpdate, Store,
};

use crate::support::{both_backends, event};

const LEASE: Duration = Duration::from_secs(30);

/// The end of a job, without a dead letter.
fn end(state: JobState, error: Option<String>) -> JobEnd {
    JobEnd {
        state,
        error,
        dead_letter: None,
    }
}

fn retry(
    next_attempt_at: chrono::DateTime<Utc>,
    error: Option<String>,
    count_attempt: bool,
) -> Reschedule {
    Reschedule::at(next_attempt_at, error, count_attempt)
}

/// The Orders of the open dead letters, sorted.
async fn open_letters(store: &provisioner_store::SqlStore) -> Vec<String> {
    let letters = store
        .dead_letters(Some(provisioner_store::DeadLetterState::Open), 10)
        .await
        .unwrap();
    let mut ids: Vec<String> = letters.into_iter().filter_map(|l| l.order_id).collect();
    ids.sort();
    ids
}

fn reopen_by(by: JobSource) -> Reopen {
    Reopen {
        by,
        customer_number: None,
        account_id: None,
        event_id: None,
    }
}

both_backends! {
    async fn one_running_job_per_customer_in_arrival_order(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        // Customer A has two orders, customer B one.
        store.ingest_event(&event(1, "801000000000001AAA", "A"), now).await.unwrap();
        store.ingest_event(&event(2, "801000000000002AAA", "A"), now).await.unwrap();
        store.ingest_event(&event(3, "801000000000003AAA", "B"), now).await.unwrap();

        let first = store.claim("w1", now, LEASE).await.unwrap().unwrap();
        assert_eq!(first.order_id, "801000000000001AAA");
        assert_eq!(first.state, JobState::Running);
        assert_eq!(first.lease_owner.as_deref(), Some("w1:1"));
        // A's second order waits for the first; B's can run.
        let second = store.claim("w2", now, LEASE).await.unwrap().unwrap();
        assert_eq!(second.order_id, "801000000000003AAA");
        assert!(store.claim("w3", now, LEASE).await.unwrap().is_none());

        store.finish(&first.order_id, "w1:1", end(JobState::Done, None), vec![], now).await.unwrap();
        let third = store.claim("w3", now, LEASE).await.unwrap().unwrap();
        assert_eq!(third.order_id, "801000000000002AAA");
        let done = store.job("801000000000001AAA").await.unwrap().unwrap();
        assert_eq!(done.state, JobState::Done);
        assert_eq!(done.step, Step::Done);
        assert_eq!(done.lease_owner, None);
    }

    async fn a_retry_waiting_lets_the_customers_later_orders_run_one_at_a_time(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        store.ingest_event(&event(1, "801000000000001AAA", "A"), now).await.unwrap();
        store.ingest_event(&event(2, "801000000000002AAA", "A"), now).await.unwrap();
        store.ingest_event(&event(3, "801000000000003AAA", "A"), now).await.unwrap();
        let job = store.claim("w1", now, LEASE).await.unwrap().unwrap();
        assert_eq!(job.order_id, "801000000000001AAA");
        // Within the running job's lease (30 s), so nothing is taken over meanwhile.
        let later = now + ChronoDuration::seconds(20);
        store
            .reschedule(&job.order_id, "w1:1", retry(later, Some("whmcs: 503".into()), true), vec![], now)
            .await
            .unwrap();
        // The first order waits for its retry time; the customer's next one runs meanwhile,
        // and only one at a time.
        let second = store.claim("w1", now, LEASE).await.unwrap().unwrap();
        assert_eq!(second.order_id, "801000000000002AAA");
        assert!(store.claim("w2", now, LEASE).await.unwrap().is_none(), "one job per customer");
        assert!(store.claim("w2", later, LEASE).await.unwrap().is_none(), "one job per customer");
        store.finish(&second.order_id, "w1:1", end(JobState::Done, None), vec![], now).await.unwrap();
        // Once its retry time has come, the earlier order goes before the later due one.
        let again = store.claim("w1", later, LEASE).await.unwrap().unwrap();
        assert_eq!(again.order_id, "801000000000001AAA");
        assert_eq!(again.attempts, 1);
        assert_eq!(again.last_error.as_deref(), Some("whmcs: 503"));
        // A rate-limit delay does not count as an attempt.
        store.reschedule(&again.order_id, "w1:2", retry(later, None, false), vec![], later).await.unwrap();
        let again = store.claim("w1", later, LEASE).await.unwrap().unwrap();
        assert_eq!(again.order_id, "801000000000001AAA");
        assert_eq!(again.attempts, 1);
        store.finish(&again.order_id, "w1:3", end(JobState::Done, None), vec![], later).await.unwrap();
        let third = store.claim("w1", later, LEASE).await.unwrap().unwrap();
        assert_eq!(third.order_id, "801000000000003AAA");
    }

    async fn an_expired_lease_is_taken_over_and_the_old_owner_is_fenced(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        store.ingest_event(&event(1, "801000000000001AAA", "A"), now).await.unwrap();
        let job = store.claim("w1", now, LEASE).await.unwrap().unwrap();
        store
            .advance(&job.order_id, "w1:1", Step::WhmcsOrdered,
                StepUpdate { whmcs_order_id: Some("77".into()), ..StepUpdate::default() }, vec![], now)
            .await
            .unwrap();
        // Still leased: nobody else gets it.
        assert!(store.claim("w2", now + ChronoDuration::seconds(29), LEASE).await.unwrap().is_none());
        // Lease expired: w2 takes it over, with the recovery point intact.
        let later = now + ChronoDuration::seconds(31);
        let taken = store.claim("w2", later, LEASE).await.unwrap().unwrap();
        assert_eq!(taken.lease_owner.as_deref(), Some("w2:2"));
        assert_eq!(taken.step, Step::WhmcsOrdered);
        assert_eq!(taken.whmcs_order_id.as_deref(), Some("77"));
        // w1 can no longer write.
        let err = store
            .advance(&job.order_id, "w1:1", Step::Accepted, StepUpdate::default(), vec![], later)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
        assert!(matches!(
            store.finish(&job.order_id, "w1:1", end(JobState::Done, None), vec![], later).await,
            Err(Error::LeaseLost { .. })
        ));
        store
            .advance(&job.order_id, "w2:2", Step::Accepted,
                StepUpdate { service_ids: Some(vec!["5".into(), "6".into()]), ..StepUpdate::default() }, vec![], later)
            .await
            .unwrap();
        let job = store.job(&job.order_id).await.unwrap().unwrap();
        assert_eq!(job.service_ids, vec!["5", "6"]);
        assert_eq!(job.whmcs_order_id.as_deref(), Some("77"));
    }

    async fn release_and_take_over_make_jobs_pending(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        store.ingest_event(&event(1, "801000000000001AAA", "A"), now).await.unwrap();
        store.ingest_event(&event(2, "801000000000002AAA", "B"), now).await.unwrap();
        let a = store.claim("w1", now, LEASE).await.unwrap().unwrap();
        let _b = store.claim("w1", now, LEASE).await.unwrap().unwrap();
        store.release(&a.order_id, "w1:1", now).await.unwrap();
        assert_eq!(store.job(&a.order_id).await.unwrap().unwrap().state, JobState::Pending);
        assert_eq!(store.take_over_leases(now).await.unwrap(), 1);
        let counts = store.job_counts().await.unwrap();
        assert_eq!((counts.pending, counts.running), (2, 0));
    }

    async fn concurrent_workers_claim_each_job_once_in_customer_order(db: &TestDb) {
        let store = Arc::new(db.open().await);
        let now = Utc::now();
        let customers = 20;
        let per_customer = 5;
        let mut n = 0;
        for round in 0..per_customer {
            for c in 0..customers {
                n += 1;
                let order = format!("801{:012}{round:03}", c);
                store.ingest_event(&event(n, &order, &format!("C-{c}")), now).await.unwrap();
            }
        }
        let log = Arc::new(claim_log::Log::default());
        let mut tasks = Vec::new();
        for w in 0..8 {
            let store = Arc::clone(&store);
            let log = Arc::clone(&log);
            tasks.push(tokio::spawn(async move {
                let owner = format!("w{w}");
                let mut idle = 0;
                while idle < 50 {
                    match store.claim(&owner, Utc::now(), LEASE).await.unwrap() {
                        Some(job) => {
                            idle = 0;
                            log.start(&job.customer_number, &job.order_id);
                            tokio::task::yield_now().await;
                            log.end(&job.customer_number);
                            store
                                .finish(&job.order_id, job.lease_owner.as_deref().unwrap(), end(JobState::Done, None), vec![], Utc::now())
                                .await
                                .unwrap();
                        }
                        None => {
                            idle += 1;
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let counts = store.job_counts().await.unwrap();
        assert_eq!(counts.done, u64::from(n));
        let order = log.order();
        assert_eq!(order.values().map(Vec::len).sum::<usize>(), n as usize, "each job once");
        for (customer, orders) in order {
            let mut sorted = orders.clone();
            sorted.sort();
            assert_eq!(orders, sorted, "customer {customer} out of order");
        }
        assert!(!log.overlapped(), "two jobs of one customer ran at once");
    }
}

/// A tiny concurrent log of job starts/ends per customer.
mod claim_log {
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;

    #[derive(Default)]
    struct State {
        started: HashMap<String, Vec<String>>,
        running: HashSet<String>,
        overlapped: bool,
    }

    #[derive(Default)]
    pub(crate) struct Log {
        inner: Mutex<State>,
    }

    impl Log {
        pub(crate) fn start(&self, customer: &str, order: &str) {
            let mut g = self.inner.lock().unwrap();
            g.started
                .entry(customer.to_owned())
                .or_default()
                .push(order.to_owned());
            if !g.running.insert(customer.to_owned()) {
                g.overlapped = true;
            }
        }
        pub(crate) fn end(&self, customer: &str) {
            self.inner.lock().unwrap().running.remove(customer);
        }
        pub(crate) fn order(&self) -> HashMap<String, Vec<String>> {
            self.inner.lock().unwrap().started.clone()
        }
        pub(crate) fn overlapped(&self) -> bool {
            self.inner.lock().unwrap().overlapped
        }
    }
}

both_backends! {
    async fn a_failed_job_can_be_reopened_from_its_recovery_point(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        store.ingest_event(&event(1, "801000000000001AAA", "A"), now).await.unwrap();
        let job = store.claim("w1", now, LEASE).await.unwrap().unwrap();
        store.advance(&job.order_id, "w1:1", Step::WhmcsOrdered,
            StepUpdate { whmcs_order_id: Some("9".into()), ..StepUpdate::default() }, vec![], now).await.unwrap();
        assert!(!store.reopen(&job.order_id, reopen_by(JobSource::Operator), vec![], now).await.unwrap(),
            "a running job is not reopened");
        let letter = NewDeadLetter {
            topic: None, event_id: None, replay_id: None, order_id: Some(job.order_id.clone()),
            reason: "boom".into(), payload: None, attempts: 1,
        };
        let failed = JobEnd { state: JobState::Failed, error: Some("boom".into()), dead_letter: Some(letter) };
        store.finish(&job.order_id, "w1:1", failed, vec![], now).await.unwrap();
        let later = now + ChronoDuration::hours(30);
        assert!(store.reopen(&job.order_id, reopen_by(JobSource::Operator), vec![], later).await.unwrap());
        let again = store.claim("w2", later, LEASE).await.unwrap().unwrap();
        assert_eq!((again.step, again.attempts, again.last_error.clone()), (Step::WhmcsOrdered, 0, None));
        assert_eq!(again.whmcs_order_id.as_deref(), Some("9"), "the WHMCS order is kept, to be looked up");
        assert_eq!((again.reopened_by, again.reopened_at), (Some(JobSource::Operator), Some(
            chrono::DateTime::from_timestamp_millis(later.timestamp_millis()).unwrap())));
        assert_eq!(again.attempts_since(), again.reopened_at.unwrap(), "the retry budget restarts");
        let letters = store.dead_letters(Some(provisioner_store::DeadLetterState::Open), 10).await.unwrap();
        assert!(letters.is_empty(), "its open dead letter is marked retried: {letters:?}");
    }

    async fn a_reopened_failed_job_that_is_refused_keeps_its_dead_letter_open(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        let order = "801000000000001AAA";
        let other = "801000000000002AAA";
        let letter = |order_id: &str| NewDeadLetter {
            topic: None, event_id: None, replay_id: None, order_id: Some(order_id.to_owned()),
            reason: "invalid product".into(), payload: None, attempts: 1,
        };
        let failed = |order_id: &str| JobEnd {
            state: JobState::Failed, error: Some("invalid product".into()),
            dead_letter: Some(letter(order_id)),
        };
        // Two Orders fail, each with a dead letter.
        store.ingest_event(&event(1, order, "A"), now).await.unwrap();
        store.ingest_event(&event(2, other, "B"), now).await.unwrap();
        for _ in 0..2 {
            let job = store.claim("w1", now, LEASE).await.unwrap().unwrap();
            let owner = job.lease_owner.clone().unwrap();
            store.finish(&job.order_id, &owner, failed(&job.order_id), vec![], now).await.unwrap();
        }
        assert_eq!(open_letters(&store).await, [order, other]);

        // An event published before the failure and delivered after it reopens the first
        // job, which marks its letter retried; the job's checks find the Order failed, not
        // approved, and refuse it: the failure is still there, and so is its letter.
        let later = now + ChronoDuration::seconds(5);
        assert_eq!(store.ingest_event(&event(3, order, "A"), later).await.unwrap(), IngestOutcome::Reopened);
        assert_eq!(open_letters(&store).await, [other]);
        // The engine asks how many letters the reopening closed: a refused end opens them again.
        assert_eq!(store.reopened_letters(order).await.unwrap(), 1);
        assert_eq!(store.reopened_letters(other).await.unwrap(), 0, "never reopened");
        let job = store.claim("w1", later, LEASE).await.unwrap().unwrap();
        assert_eq!(job.order_id, order);
        let owner = job.lease_owner.clone().unwrap();
        store.finish(order, &owner, end(JobState::Refused, Some("not_approved".into())), vec![], later)
            .await.unwrap();
        assert_eq!(open_letters(&store).await, [order, other], "the refusal opens its letter again");
        assert_eq!(store.reopened_letters(order).await.unwrap(), 0);
        assert_eq!(store.job(order).await.unwrap().unwrap().state, JobState::Refused);

        // Reopened again and provisioned this time: the letter is retried for good.
        let last = later + ChronoDuration::seconds(5);
        assert!(store.reopen(order, reopen_by(JobSource::Reconcile), vec![], last).await.unwrap());
        let job = store.claim("w1", last, LEASE).await.unwrap().unwrap();
        let owner = job.lease_owner.clone().unwrap();
        store.finish(order, &owner, end(JobState::Done, None), vec![], last).await.unwrap();
        assert_eq!(open_letters(&store).await, [other]);
        // A refusal of a job that was never reopened touches no letter: `other`'s stays open,
        // and a letter an operator marked retried stays so.
        store.ingest_event(&event(4, "801000000000003AAA", "C"), last).await.unwrap();
        let fresh = store.claim("w1", last, LEASE).await.unwrap().unwrap();
        let owner = fresh.lease_owner.clone().unwrap();
        store.finish(&fresh.order_id, &owner, end(JobState::Refused, Some("not_approved".into())), vec![], last)
            .await.unwrap();
        assert_eq!(open_letters(&store).await, [other]);
        // Reopened after that refusal: its reopening closed no letter.
        let fresh_id = fresh.order_id.clone();
        assert!(store.reopen(&fresh_id, reopen_by(JobSource::Event), vec![], last + ChronoDuration::seconds(1)).await.unwrap());
        assert_eq!(store.reopened_letters(&fresh_id).await.unwrap(), 0);
    }

    async fn a_new_event_reopens_a_refused_job_and_it_runs_its_checks_again(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        let order = "801000000000001AAA";
        store.ingest_event(&event(1, order, "A"), now).await.unwrap();
        let job = store.claim("w1", now, LEASE).await.unwrap().unwrap();
        store.advance(order, "w1:1", Step::Checked, StepUpdate::default(), vec![], now).await.unwrap();
        store.finish(order, "w1:1", end(JobState::Refused, Some("not_approved".into())), vec![], now).await.unwrap();
        assert_eq!(job.event_id.as_deref(), Some("evt-1"));

        // The same event again is a duplicate and changes nothing.
        assert_eq!(store.ingest_event(&event(1, order, "A"), now).await.unwrap(), IngestOutcome::DuplicateEvent);
        assert_eq!(store.job(order).await.unwrap().unwrap().state, JobState::Refused);
        // A new event reopens it, with that event's data, back to its checks.
        let head = store.head().await.unwrap();
        let mut second = event(2, order, "B");
        second.account_id = Some("001000000000001AAA".into());
        assert_eq!(store.ingest_event(&second, now).await.unwrap(), IngestOutcome::Reopened);
        let reopened = store.job(order).await.unwrap().unwrap();
        assert_eq!((reopened.state, reopened.step, reopened.attempts), (JobState::Pending, Step::Received, 0));
        assert_eq!(reopened.event_id.as_deref(), Some("evt-2"));
        assert_eq!(reopened.customer_number, "B");
        assert_eq!(reopened.account_id.as_deref(), Some("001000000000001AAA"));
        assert_eq!(reopened.reopened_by, Some(JobSource::Event));
        let records = store.read_range(head.seq + 1, 10).await.unwrap();
        let actions: Vec<&str> = records.iter().map(|r| r.record.action.as_str()).collect();
        assert_eq!(actions, ["event_received", "job_reopened"]);
        assert_eq!(store.job_states(&[order.to_owned(), "801000000000009AAA".to_owned()]).await.unwrap(),
            vec![(order.to_owned(), JobState::Pending)]);

        // A third event while it is live is a duplicate order; so is one after it is done.
        assert_eq!(store.ingest_event(&event(3, order, "B"), now).await.unwrap(), IngestOutcome::DuplicateOrder);
        store.claim("w1", now, LEASE).await.unwrap().unwrap();
        store.finish(order, "w1:2", end(JobState::Done, None), vec![], now).await.unwrap();
        assert_eq!(store.ingest_event(&event(4, order, "B"), now).await.unwrap(), IngestOutcome::DuplicateOrder);
        assert!(!store.reopen(order, reopen_by(JobSource::Reconcile), vec![], now).await.unwrap(),
            "a done job is never reopened");
        assert_eq!(store.job(order).await.unwrap().unwrap().state, JobState::Done);
    }

    async fn a_failing_write_back_is_tracked_from_its_first_failure(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        let order = "801000000000001AAA";
        store.ingest_event(&event(1, order, "A"), now).await.unwrap();
        store.claim("w1", now, LEASE).await.unwrap().unwrap();
        let mut first = retry(now, Some("salesforce: 400".into()), true);
        first.step = Some(Step::Accepted);
        store.reschedule(order, "w1:1", first, vec![], now).await.unwrap();
        let job = store.job(order).await.unwrap().unwrap();
        let since = job.writeback_since.expect("write-back failing since the first failure");
        assert_eq!((job.step, job.stuck_alerted_at), (Step::Accepted, None));

        let later = now + ChronoDuration::minutes(90);
        store.claim("w1", later, LEASE).await.unwrap().unwrap();
        let mut again = retry(later, Some("salesforce: 400".into()), true);
        again.step = Some(Step::Accepted);
        again.stuck_alerted = true;
        store.reschedule(order, "w1:2", again, vec![], later).await.unwrap();
        let job = store.job(order).await.unwrap().unwrap();
        assert_eq!(job.writeback_since, Some(since), "the start is kept");
        assert!(job.stuck_alerted_at.is_some());
    }
}

both_backends! {
    async fn every_claim_has_its_own_token_and_an_earlier_claim_never_passes_the_fence(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        let order = "801000000000001AAA";
        store.ingest_event(&event(1, order, "A"), now).await.unwrap();
        let first = store.claim("w1", now, LEASE).await.unwrap().unwrap();
        assert_eq!((first.claim_epoch, first.lease_owner.as_deref()), (1, Some("w1:1")));
        // The owner name alone no longer passes: the token does.
        let err = store.advance(order, "w1", Step::Checked, StepUpdate::default(), vec![], now).await;
        assert!(matches!(err, Err(Error::LeaseLost { .. })), "{err:?}");
        store.advance(order, "w1:1", Step::Checked, StepUpdate::default(), vec![], now).await.unwrap();

        // The lease expires (the worker paused); the same owner name claims it again, as a
        // stalled run's own process would: a new epoch, and the first claim is fenced out.
        let later = now + ChronoDuration::seconds(31);
        let second = store.claim("w1", later, LEASE).await.unwrap().unwrap();
        assert_eq!((second.claim_epoch, second.lease_owner.as_deref()), (2, Some("w1:2")));
        for result in [
            store.renew_lease(order, "w1:1", LEASE, later).await,
            store.advance(order, "w1:1", Step::WhmcsOrdered, StepUpdate::default(), vec![], later).await,
            store.release(order, "w1:1", later).await,
            store.finish(order, "w1:1", end(JobState::Failed, None), vec![], later).await,
        ] {
            assert!(matches!(result, Err(Error::LeaseLost { .. })), "{result:?}");
        }
        let job = store.job(order).await.unwrap().unwrap();
        assert_eq!((job.state, job.step), (JobState::Running, Step::Checked));
        store.finish(order, "w1:2", end(JobState::Done, None), vec![], later).await.unwrap();
    }
}

both_backends! {
    async fn an_intent_records_its_sent_time_and_timeout_and_any_other_point_clears_it(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        let order = "801000000000001AAA";
        store.ingest_event(&event(1, order, "A"), now).await.unwrap();
        let job = store.claim("w1", now, LEASE).await.unwrap().unwrap();
        assert_eq!(job.intent, None);
        let token = job.lease_owner.unwrap();
        let sent = now + ChronoDuration::seconds(5);
        let intent = StepUpdate {
            intent_timeout: Some(Duration::from_secs(30)),
            ..StepUpdate::default()
        };
        store.advance(order, &token, Step::OrderUnknown, intent, vec![], sent).await.unwrap();
        let job = store.job(order).await.unwrap().unwrap();
        let recorded = job.intent.expect("the intent is stored");
        assert_eq!(recorded.timeout, Duration::from_secs(30));
        assert_eq!(recorded.sent_at.timestamp_millis(), sent.timestamp_millis());
        assert_eq!(
            recorded.settle_point(Duration::from_secs(30)).timestamp_millis(),
            (sent + ChronoDuration::seconds(60)).timestamp_millis()
        );
        // It survives a reschedule and the next claim, which reports it.
        store.reschedule(order, &token, retry(sent, None, true), vec![], sent).await.unwrap();
        let again = store.claim("w1", sent, LEASE).await.unwrap().unwrap();
        assert_eq!(again.intent, Some(recorded));
        assert_eq!(again.claimed_at().timestamp_millis(), sent.timestamp_millis());
        // The next recovery point that is not an intent clears it.
        let token = again.lease_owner.unwrap();
        store.advance(order, &token, Step::WhmcsOrdered, StepUpdate::default(), vec![], sent).await.unwrap();
        assert_eq!(store.job(order).await.unwrap().unwrap().intent, None);
    }
}

/// On PostgreSQL a service's store judges leases, due times and intents by the database's
/// clock: an instance whose clock runs an hour ahead cannot take a live lease over, and one an
/// hour behind still sees an expired lease expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_judges_leases_and_intents_by_its_own_clock() {
    let db = crate::support::TestDb::postgres().await;
    let store = db.open_db_clock().await;
    let order = "801000000000001AAA";
    let real = Utc::now();
    store
        .ingest_event(&event(1, order, "A"), real)
        .await
        .unwrap();
    let short = Duration::from_millis(1500);
    // A worker whose clock is an hour behind claims: the lease ends 1.5 s from the
    // database's now, not from the worker's.
    let behind = real - ChronoDuration::hours(1);
    let job = store.claim("w1", behind, short).await.unwrap().unwrap();
    let claimed = job.claimed_at();
    assert!(
        (claimed - real).num_seconds().abs() < 60,
        "claimed_at {claimed} is the database's time"
    );
    let lease_until = job.lease_until.unwrap();
    assert!(
        (lease_until - claimed).num_milliseconds() == 1500,
        "{lease_until} - {claimed}"
    );
    // A worker an hour ahead sees the lease as expired by its own clock: the claim says no.
    let ahead = real + ChronoDuration::hours(1);
    assert!(store.claim("w2", ahead, short).await.unwrap().is_none());
    // An intent is stamped with the database's time, whatever the caller says.
    let token = job.lease_owner.clone().unwrap();
    let intent = StepUpdate {
        intent_timeout: Some(Duration::from_secs(3)),
        ..StepUpdate::default()
    };
    store
        .advance(order, &token, Step::OrderUnknown, intent, vec![], ahead)
        .await
        .unwrap();
    let sent_at = store
        .job(order)
        .await
        .unwrap()
        .unwrap()
        .intent
        .unwrap()
        .sent_at;
    assert!(
        (sent_at - real).num_seconds().abs() < 60,
        "sent_at {sent_at} is the database's time"
    );
    // Once the database's clock passes the lease end, a worker whose clock is behind takes
    // the job over (polled: the database's clock moves on its own).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let taken = loop {
        if let Some(job) = store.claim("w3", behind, short).await.unwrap() {
            break job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(taken.lease_owner.as_deref(), Some("w3:2"));
    assert!(taken.claimed_at() >= lease_until);
    drop(store);
    db.cleanup().await;
}
