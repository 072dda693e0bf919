//! What the operator's `jobs list` / `jobs show` read: jobs filtered in SQL by view, customer
//! and position (the SQL agreeing with `JobView::of`), and one Order's audit records by the
//! indexed `order_id` column, including records written before that column existed.

use std::time::Duration;

use audit::{Action, Actor, AuditLog, DetailKey, NewAuditRecord, Outcome};
use chrono::Utc;
use provisioner_store::{
    JobEnd, JobFilter, JobState, JobView, Reschedule, SqlStore, Step, StepUpdate, Store,
    StoreOptions,
};
use sqlx::Connection as _;

use crate::support::{both_backends, event, master};

const LEASE: Duration = Duration::from_secs(30);

fn order(n: u32) -> String {
    format!("80100000000000{n}AAA")
}

fn end(state: JobState) -> JobEnd {
    JobEnd {
        state,
        error: (state != JobState::Done).then(|| format!("{state} on purpose")),
        dead_letter: None,
    }
}

/// Claims the one claimable job, which must be `order`.
async fn claim(store: &SqlStore, order: &str) {
    let job = store.claim("w1", Utc::now(), LEASE).await.unwrap().unwrap();
    assert_eq!(job.order_id, order);
}

async fn ingest(store: &SqlStore, n: u32, customer: &str) {
    store
        .ingest_event(&event(n, &order(n), customer), Utc::now())
        .await
        .unwrap();
}

/// Eight jobs, each event ingested and acted on before the next, so each claim finds only the
/// newest job: one in every view, `provisioning` three times (waiting for a retry, running,
/// released after a step without an attempt); customer `A` has three. Returns each Order's
/// view.
async fn one_job_per_view(store: &SqlStore) -> Vec<(String, JobView)> {
    let now = Utc::now();
    ingest(store, 1, "A").await;
    claim(store, &order(1)).await;
    store
        .finish(&order(1), "w1:1", end(JobState::Done), vec![], now)
        .await
        .unwrap();
    ingest(store, 2, "B").await;
    claim(store, &order(2)).await;
    store
        .finish(&order(2), "w1:1", end(JobState::Failed), vec![], now)
        .await
        .unwrap();
    ingest(store, 3, "C").await;
    claim(store, &order(3)).await;
    store
        .finish(&order(3), "w1:1", end(JobState::Refused), vec![], now)
        .await
        .unwrap();
    // Waiting for a retry: pending, one attempt counted.
    ingest(store, 4, "D").await;
    claim(store, &order(4)).await;
    let retry = Reschedule::at(
        now + chrono::Duration::seconds(600),
        Some("whmcs: 503".into()),
        true,
    );
    store
        .reschedule(&order(4), "w1:1", retry, vec![], now)
        .await
        .unwrap();
    // Running; A's next Order waits behind it, untried.
    ingest(store, 5, "A").await;
    claim(store, &order(5)).await;
    // Released after a step (graceful shutdown): pending, no attempt, but past `received`.
    ingest(store, 6, "E").await;
    claim(store, &order(6)).await;
    store
        .advance(
            &order(6),
            "w1:1",
            Step::Checked,
            StepUpdate::default(),
            vec![],
            now,
        )
        .await
        .unwrap();
    store.release(&order(6), "w1:1", now).await.unwrap();
    ingest(store, 7, "A").await;
    ingest(store, 8, "F").await;
    use JobView::*;
    [
        Provisioned,
        Failed,
        Refused,
        Provisioning,
        Provisioning,
        Provisioning,
        Received,
        Received,
    ]
    .into_iter()
    .zip(1..)
    .map(|(view, n)| (order(n), view))
    .collect()
}

fn filter(view: Option<JobView>, customer: Option<&str>) -> JobFilter {
    JobFilter {
        view,
        customer_number: customer.map(str::to_owned),
        ..JobFilter::default()
    }
}

fn ids(jobs: &[provisioner_store::Job]) -> Vec<&str> {
    jobs.iter().map(|j| j.order_id.as_str()).collect()
}

both_backends! {
    async fn jobs_are_filtered_in_sql_like_job_view_of(db: &TestDb) {
        let store = db.open().await;
        let expected = one_job_per_view(&store).await;
        for view in JobView::ALL {
            let listed = store.list_jobs(&filter(Some(view), None)).await.unwrap();
            let want: Vec<&str> = expected
                .iter()
                .filter(|(_, v)| *v == view)
                .map(|(id, _)| id.as_str())
                .collect();
            assert_eq!(ids(&listed), want, "view {view}");
            for job in &listed {
                assert_eq!(JobView::of(job), view, "{job:?}");
            }
        }
        let all = store.list_jobs(&JobFilter::default()).await.unwrap();
        assert_eq!(all, store.jobs(0, 100).await.unwrap(), "no filter: every job by seq");
        assert_eq!(all.len(), 8);

        // By customer, alone and with a view.
        let a = store.list_jobs(&filter(None, Some("A"))).await.unwrap();
        assert_eq!(ids(&a), [order(1), order(5), order(7)]);
        let a_received = store
            .list_jobs(&filter(Some(JobView::Received), Some("A")))
            .await
            .unwrap();
        assert_eq!(ids(&a_received), [order(7)]);
        assert!(store.list_jobs(&filter(None, Some("nobody"))).await.unwrap().is_empty());
        // A customer number is a parameter, never SQL.
        assert!(store
            .list_jobs(&filter(None, Some("A' OR '1'='1")))
            .await
            .unwrap()
            .is_empty());

        // Paging by seq.
        let page = |after_seq, limit| JobFilter { after_seq, limit, ..JobFilter::default() };
        let first = store.list_jobs(&page(0, 3)).await.unwrap();
        assert_eq!(ids(&first), ids(&all[..3]));
        let rest = store.list_jobs(&page(first[2].seq, 100)).await.unwrap();
        assert_eq!(ids(&rest), ids(&all[3..]));
        assert!(store.list_jobs(&page(0, 0)).await.unwrap().is_empty());
        let provisioning_after = store
            .list_jobs(&JobFilter {
                view: Some(JobView::Provisioning),
                after_seq: all[3].seq,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(ids(&provisioning_after), [order(5), order(6)]);
    }

    async fn an_orders_audit_records_are_read_oldest_first(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        store.ingest_event(&event(1, &order(1), "A"), now).await.unwrap();
        store.ingest_event(&event(2, &order(2), "B"), now).await.unwrap();
        // A record about no Order in between.
        store
            .append(NewAuditRecord::new(Actor::OPERATOR, Action::KEYS_REENCRYPTED, Outcome::Success))
            .await
            .unwrap();
        claim(&store, &order(1)).await;
        let step = NewAuditRecord::new(Actor::WORKER, Action::STEP_SUCCEEDED, Outcome::Success)
            .order_id(order(1))
            .unwrap()
            .detail(DetailKey::Step, "checked")
            .unwrap();
        store
            .advance(&order(1), "w1:1", Step::Checked, StepUpdate::default(), vec![step], now)
            .await
            .unwrap();
        // A second event for the same Order: a duplicate, audited under the Order too.
        store.ingest_event(&event(3, &order(1), "A"), now).await.unwrap();

        let records = store.audit_for_order(&order(1), 100).await.unwrap();
        let actions: Vec<&str> = records.iter().map(|r| r.record.action.as_str()).collect();
        assert_eq!(actions, ["event_received", "step_succeeded", "event_duplicate"]);
        assert!(records.windows(2).all(|w| w[0].seq() < w[1].seq()), "oldest first");
        assert!(records
            .iter()
            .all(|r| r.record.order_id.as_ref().map(|id| id.as_str()) == Some(order(1).as_str())));
        // The records are the chain's own, MACs included.
        let chain = store.read_range(1, 100).await.unwrap();
        assert!(records.iter().all(|r| chain.contains(r)));

        let first_two = store.audit_for_order(&order(1), 2).await.unwrap();
        assert_eq!(first_two, records[..2]);
        let other = store.audit_for_order(&order(2), 100).await.unwrap();
        assert_eq!(other.len(), 1);
        assert!(store.audit_for_order(&order(9), 100).await.unwrap().is_empty());
        // An operator's store (no process lock) reads the same.
        let shared = db.open_shared().await;
        assert_eq!(shared.audit_for_order(&order(1), 100).await.unwrap(), records);
        audit::verify(&store, store.audit_key()).await.unwrap();
    }

    async fn records_written_before_the_order_column_are_found_after_the_migration(db: &TestDb) {
        // The schema as it was before the `order_id` column: only the first migration.
        let mut conn = db.migrated_before("0002").await;
        let url = db.raw_url();
        // Two old records (sealed with some key: only their stored form matters here).
        let key = audit::AuditKey::from_bytes(&[7; 32]).unwrap();
        let mut head = audit::Anchor::GENESIS.head();
        let mut old = Vec::new();
        for (n, id) in [(1_i64, Some(order(1))), (2, None)] {
            let mut record =
                NewAuditRecord::new(Actor::SUBSCRIBER, Action::EVENT_RECEIVED, Outcome::Success);
            if let Some(id) = id {
                record = record.order_id(id).unwrap();
            }
            let sealed = head.seal(&key, record).unwrap();
            head = audit::ChainHead::after(&sealed);
            sqlx::query("INSERT INTO audit_log (seq, at, record) VALUES ($1, $2, $3)")
                .bind(n)
                .bind(sealed.record.at.timestamp_micros())
                .bind(serde_json::to_string(&sealed).unwrap())
                .execute(&mut conn)
                .await
                .unwrap();
            old.push(sealed);
        }
        conn.close().await.unwrap();

        // Opening the store applies the rest, which fills the column from the records.
        let store = SqlStore::open(&db.url(), &master(), StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(store.audit_for_order(&order(1), 10).await.unwrap(), old[..1]);
        // A record written now is keyed by the Order's new job, and both are found, oldest
        // first.
        store.ingest_event(&event(1, &order(1), "A"), Utc::now()).await.unwrap();
        let both = store.audit_for_order(&order(1), 10).await.unwrap();
        assert_eq!(both.len(), 2, "{both:?}");
        assert_eq!(both[0], old[0]);
        assert_eq!(both[1].record.action.as_str(), "event_received");
        assert_eq!(store.audit_for_order(&order(1), 1).await.unwrap(), old[..1]);
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        let row: (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM audit_log WHERE order_id IS NULL")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(row.0, 1, "the record about no Order keeps a NULL");
        let keyed: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM audit_log WHERE job = (SELECT seq FROM jobs WHERE order_id = $1)",
        )
        .bind(order(1))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(keyed.0, 1, "only the new record is keyed by the job");
        conn.close().await.unwrap();
    }
}
