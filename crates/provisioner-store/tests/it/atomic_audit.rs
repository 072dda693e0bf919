//! A write and its audit record commit together or not at all: with the audit table refusing
//! inserts (a trigger), no job write, dead letter, enqueue or intake commits either.

use audit::{Action, Actor, AuditLog, DetailKey, NewAuditRecord, Outcome};
use chrono::Utc;
use provisioner_store::{
    Error, JobEnd, JobSource, JobState, NewDeadLetter, NewJob, Reschedule, Step, StepUpdate, Store,
};
use sqlx::{Connection, Executor};

use crate::support::{TestDb, both_backends, event};

const LEASE: std::time::Duration = std::time::Duration::from_secs(30);

fn step_record(order: &str, step: Step) -> NewAuditRecord {
    NewAuditRecord::new(Actor::WORKER, Action::STEP_SUCCEEDED, Outcome::Success)
        .order_id(order)
        .unwrap()
        .detail(DetailKey::Step, step.as_str())
        .unwrap()
}

/// Makes every insert into `audit_log` fail (`on`), or stops doing so.
async fn refuse_audit(db: &TestDb, on: bool) {
    let mut conn = sqlx::AnyConnection::connect(&db.url()).await.unwrap();
    let sql = match (db, on) {
        (TestDb::Sqlite(_), true) => {
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log \
             BEGIN SELECT RAISE(ABORT, 'injected audit failure'); END"
        }
        (TestDb::Sqlite(_), false) => "DROP TRIGGER refuse_audit",
        (TestDb::Postgres { .. }, true) => {
            "CREATE FUNCTION refuse_audit() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION 'injected audit failure'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log \
             FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
        }
        (TestDb::Postgres { .. }, false) => "DROP TRIGGER refuse_audit ON audit_log",
    };
    conn.execute(sql).await.unwrap();
    conn.close().await.unwrap();
}

/// How many advisory locks any session holds in the test's database, and how many sessions
/// sit in a failed transaction there, counted from another thread while the caller's blocks:
/// nothing the caller's runtime would run later (a connection going back to its pool, say)
/// runs while it looks.
fn locks_and_failed_transactions(url: String) -> (i64, i64) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
            let locks: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            let failed: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND state = 'idle in transaction (aborted)'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            conn.close().await.unwrap();
            (locks, failed)
        })
    })
    .join()
    .unwrap()
}

/// PostgreSQL: a unit whose audit insert fails has rolled back by the time its error returns,
/// so the audit chain it held is free for this process's next unit. (A dropped transaction
/// only queues its rollback until the pool takes the connection back, later, on the runtime:
/// the next unit found the process's own chain "held elsewhere" and moved off it.) The
/// runtime has one thread, blocked while another counts: the pool cannot roll back meanwhile.
#[test]
fn a_failed_unit_holds_no_lock_once_its_error_returns_on_postgres() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = TestDb::postgres().await;
        let store = db.open().await;
        let now = Utc::now();
        store
            .ingest_event(&event(1, "801000000000001AAA", "A"), now)
            .await
            .unwrap();
        let head = store.head().await.unwrap();
        refuse_audit(&db, true).await;

        let r = store
            .ingest_event(&event(2, "801000000000002AAA", "B"), now)
            .await;
        assert!(is_audit_error(&r), "{r:?}");
        assert_eq!(locks_and_failed_transactions(db.url()), (0, 0));

        let r = store
            .enqueue(
                NewJob {
                    order_id: "801000000000003AAA".into(),
                    customer_number: "C".into(),
                    account_id: None,
                    event_id: None,
                    source: JobSource::Reconcile,
                },
                vec![step_record("801000000000003AAA", Step::Received)],
                now,
            )
            .await;
        assert!(is_audit_error(&r), "{r:?}");
        assert_eq!(locks_and_failed_transactions(db.url()), (0, 0));

        // So the next record goes on chain 0, the chain a lone process keeps to.
        refuse_audit(&db, false).await;
        store
            .ingest_event(&event(2, "801000000000002AAA", "B"), now)
            .await
            .unwrap();
        let last = store.read_range(head.seq + 1, 10).await.unwrap();
        assert_eq!(last.len(), 1, "the record went to another chain");
        drop(store);
        db.cleanup().await;
    });
}

fn is_audit_error(r: &Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(r, Err(Error::Audit(_)))
}

both_backends! {
    async fn a_step_does_not_advance_without_its_audit_record(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        let order = "801000000000001AAA";
        store.ingest_event(&event(1, order, "A"), now).await.unwrap();
        let job = store.claim("w1", now, LEASE).await.unwrap().unwrap();
        let head = store.head().await.unwrap();
        refuse_audit(db, true).await;

        // A recovery point with its record: neither commits.
        let r = store
            .advance(order, "w1:1", Step::Checked, StepUpdate::default(),
                vec![step_record(order, Step::Checked)], now)
            .await;
        assert!(is_audit_error(&r), "{r:?}");
        assert_eq!(store.job(order).await.unwrap().unwrap().step, Step::Received);

        // A retry with its record: the job stays running, no attempt counted.
        let r = store
            .reschedule(order, "w1:1",
                Reschedule::at(now, Some("x".into()), true),
                vec![step_record(order, Step::Checked)], now)
            .await;
        assert!(is_audit_error(&r), "{r:?}");
        let still = store.job(order).await.unwrap().unwrap();
        assert_eq!((still.state, still.attempts, still.last_error), (JobState::Running, 0, None));

        // A failure with its dead letter and records: no end, no dead letter.
        let end = JobEnd {
            state: JobState::Failed,
            error: Some("boom".into()),
            dead_letter: Some(NewDeadLetter {
                topic: None, event_id: None, replay_id: None, order_id: Some(order.into()),
                reason: "boom".into(), payload: None, attempts: 1,
            }),
        };
        let r = store.finish(order, "w1:1", end, vec![step_record(order, Step::Checked)], now).await;
        assert!(is_audit_error(&r), "{r:?}");
        assert_eq!(store.job(order).await.unwrap().unwrap().state, JobState::Running);
        assert!(store.dead_letters(None, 10).await.unwrap().is_empty());

        // An enqueue with its record: no job.
        let new = NewJob {
            order_id: "801000000000002AAA".into(), customer_number: "B".into(),
            account_id: None, event_id: None, source: JobSource::Reconcile,
        };
        let r = store.enqueue(new, vec![step_record("801000000000002AAA", Step::Received)], now).await;
        assert!(is_audit_error(&r), "{r:?}");
        assert!(store.job("801000000000002AAA").await.unwrap().is_none());

        // Intake audits every event: the event, its job and the checkpoint do not commit.
        let r = store.ingest_event(&event(3, "801000000000003AAA", "C"), now).await;
        assert!(is_audit_error(&r), "{r:?}");
        assert!(store.job("801000000000003AAA").await.unwrap().is_none());
        assert_eq!(store.load_checkpoint(&event(3, "801000000000003AAA", "C").topic).await.unwrap(),
            Some(event(1, order, "A").replay_id));

        // An intent carries no record: it is stored.
        store.advance(order, "w1:1", Step::OrderUnknown, StepUpdate::default(), vec![], now)
            .await
            .unwrap();
        assert_eq!(store.head().await.unwrap(), head, "nothing reached the chain");

        // Once records can be stored again, the step commits with its record.
        refuse_audit(db, false).await;
        store
            .advance(order, "w1:1", Step::Checked, StepUpdate::default(),
                vec![step_record(order, Step::Checked)], now)
            .await
            .unwrap();
        assert_eq!(store.job(order).await.unwrap().unwrap().step, Step::Checked);
        let last = store.read_range(head.seq + 1, 10).await.unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].record.details.get(DetailKey::Step), Some("checked"));
        audit::verify(&store, store.audit_key()).await.unwrap();
        drop(job);
    }

    async fn two_instances_steps_commit_once_with_their_records_or_not_at_all(db: &TestDb) {
        // Each store caches its chain heads; on PostgreSQL a step and its records are one
        // statement on a cached head. The other store's appends make that head stale, and a
        // lease taken over fences the step: neither may fork a chain, lose a record, or store
        // the records of a step that did not happen.
        let a = db.open().await;
        let b = db.open_shared().await;
        let now = Utc::now();
        let (first, second) = ("801000000000001AAA", "801000000000002AAA");
        a.ingest_event(&event(1, first, "A"), now).await.unwrap();
        b.ingest_event(&event(2, second, "B"), now).await.unwrap();
        let before = a.verify_audit().await.unwrap().records();
        let one = a.claim("w1", now, LEASE).await.unwrap().unwrap();
        let two = b.claim("w2", now, LEASE).await.unwrap().unwrap();
        assert_eq!((one.order_id.as_str(), two.order_id.as_str()), (first, second));
        let (l1, l2) = (one.lease_owner.unwrap(), two.lease_owner.unwrap());
        let rec = |order: &str, step| vec![step_record(order, step)];
        a.advance(first, &l1, Step::Checked, StepUpdate::default(), rec(first, Step::Checked), now)
            .await
            .unwrap();
        b.advance(second, &l2, Step::Checked, StepUpdate::default(), rec(second, Step::Checked), now)
            .await
            .unwrap();
        // `a`'s head of the chain `b` just appended to is stale now; two records in one step.
        let two_records = [rec(first, Step::WhmcsOrdered), rec(first, Step::WhmcsOrdered)].concat();
        a.advance(first, &l1, Step::WhmcsOrdered, StepUpdate::default(), two_records, now)
            .await
            .unwrap();
        b.finish(second, &l2, JobEnd { state: JobState::Done, error: None, dead_letter: None },
                rec(second, Step::Done), now)
            .await
            .unwrap();

        // The lease runs out; `b` takes the job over. `a`'s writes, records and all, are fenced.
        let later = now + chrono::Duration::seconds(31);
        let taken = b.claim("w3", later, LEASE).await.unwrap().unwrap();
        assert_eq!(taken.order_id, first);
        let fenced = [
            a.advance(first, &l1, Step::Accepted, StepUpdate::default(), rec(first, Step::Accepted), later)
                .await,
            a.reschedule(first, &l1, Reschedule::at(later, Some("x".into()), true),
                    rec(first, Step::Accepted), later)
                .await,
            a.finish(first, &l1, JobEnd { state: JobState::Done, error: None, dead_letter: None },
                    rec(first, Step::Done), later)
                .await,
        ];
        for r in fenced {
            assert!(matches!(r, Err(Error::LeaseLost { .. })), "{r:?}");
        }
        let job = a.job(first).await.unwrap().unwrap();
        assert_eq!((job.state, job.step, job.attempts), (JobState::Running, Step::WhmcsOrdered, 0));
        let l3 = taken.lease_owner.unwrap();
        a.finish(first, &l3, JobEnd { state: JobState::Done, error: None, dead_letter: None },
                rec(first, Step::Done), later)
            .await
            .unwrap();

        // Every chain runs 1..=n, and holds exactly the records of the steps that happened.
        let summary = b.verify_audit().await.unwrap();
        for c in &summary.chains {
            assert_eq!(c.summary.last_seq.unwrap_or(0), c.summary.records, "chain {}", c.chain);
        }
        assert_eq!(summary.records(), before + 6);
        let mut steps = Vec::new();
        for chain in a.audit_chains().await.unwrap() {
            for r in chain.read_range(1, 100).await.unwrap() {
                if let Some(step) = r.record.details.get(DetailKey::Step) {
                    let order = r.record.order_id.as_ref().map(|o| o.as_str().to_owned());
                    steps.push((order.unwrap_or_default(), step.to_owned()));
                }
            }
        }
        steps.sort();
        let want = [
            (first, "checked"), (first, "done"), (first, "whmcs_ordered"), (first, "whmcs_ordered"),
            (second, "checked"), (second, "done"),
        ];
        let want: Vec<(String, String)> =
            want.iter().map(|(o, s)| ((*o).to_owned(), (*s).to_owned())).collect();
        assert_eq!(steps, want);
    }

    async fn intake_audits_each_event_in_its_transaction(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        let order = "801000000000001AAA";
        let events = [event(1, order, "A"), event(1, order, "A"), event(2, order, "A")];
        store.ingest_events(&events, now).await.unwrap();
        let records = store.read_range(1, 10).await.unwrap();
        let actions: Vec<&str> = records.iter().map(|r| r.record.action.as_str()).collect();
        assert_eq!(actions, ["event_received", "event_duplicate", "event_duplicate"]);
        assert!(records.iter().all(|r| r.record.order_id.as_ref().map(|o| o.as_str()) == Some(order)));
        audit::verify(&store, store.audit_key()).await.unwrap();
    }

    async fn a_unit_of_many_records_stores_each_once_in_order(db: &TestDb) {
        // Eleven records in one unit: the first on its own, the rest four rows per insert
        // (4, 4, 2).
        let store = db.open().await;
        let now = Utc::now();
        let orders: Vec<String> = (1..=11).map(|n| format!("8010000000000{n:02}AAA")).collect();
        let events: Vec<_> = orders
            .iter()
            .enumerate()
            .map(|(i, o)| event(u32::try_from(i).unwrap() + 1, o, "A"))
            .collect();
        store.ingest_events(&events, now).await.unwrap();
        let records = store.read_range(1, 20).await.unwrap();
        let seqs: Vec<u64> = records.iter().map(|r| r.record.seq).collect();
        assert_eq!(seqs, (1..=11).collect::<Vec<u64>>());
        let in_order: Vec<String> = records
            .iter()
            .map(|r| r.record.order_id.as_ref().map(|o| o.as_str().to_owned()).unwrap_or_default())
            .collect();
        assert_eq!(in_order, orders);
        assert_eq!(audit::verify(&store, store.audit_key()).await.unwrap().records, 11);
        // And the next unit goes on from the last of them.
        store.ingest_event(&event(12, "801000000000012AAA", "A"), now).await.unwrap();
        assert_eq!(audit::verify(&store, store.audit_key()).await.unwrap().records, 12);
        assert_eq!(store.verify_audit().await.unwrap().records(), 12);
    }
}
