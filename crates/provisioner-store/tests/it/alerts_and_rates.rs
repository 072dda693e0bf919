//! The alert outbox and the shared rate limits, on both backends and across two instances.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use provisioner_store::{
    Backend, JobEnd, JobState, NewAlert, RateTake, Reschedule, SharedRate, SqlStore, Step,
    StepUpdate, Store,
};

use crate::support::{both_backends, event};

fn alert(n: u32) -> NewAlert {
    NewAlert {
        kind: "auth_failure_burst".into(),
        body: format!(r#"{{"alert":"auth_failure_burst","count":{n}}}"#),
    }
}

fn raised() -> audit::NewAuditRecord {
    audit::NewAuditRecord::new(
        audit::Actor::SECURITY,
        audit::Action::ALERT_RAISED,
        audit::Outcome::Success,
    )
    .detail(audit::DetailKey::Alert, "auth_failure_burst")
    .unwrap()
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_796_000_000_000).unwrap()
}

const HOLD: Duration = Duration::from_secs(60);

const LEASE: Duration = Duration::from_secs(30);

/// Claims with a slot of `rate` taken with the claim (on PostgreSQL; SQLite leaves it to the
/// caller), finishing each job: A1 and B1 get their customers' one slot each, A2 finds A's
/// used and is refused (still claimed: the caller reschedules it), and a job past its start
/// is claimed without asking. `at` is the time the claims pass (`None`: the database's own
/// clock, so a wait is read within a second of the exact one).
async fn rated_claims(store: &SqlStore, at: Option<chrono::DateTime<Utc>>) {
    let rate = SharedRate {
        interval: Duration::from_secs(1_800),
        burst: 1,
    };
    let now = at.unwrap_or_else(Utc::now);
    let scope = "customer_provision";
    let pg = store.backend() == Backend::Postgres;
    let (a1, a2, b1, d1) = (
        "801000000000001AAA",
        "801000000000002AAA",
        "801000000000003AAA",
        "801000000000004AAA",
    );
    store
        .ingest_events(
            &[event(1, a1, "A"), event(2, a2, "A"), event(3, b1, "B")],
            now,
        )
        .await
        .unwrap();
    let mut takes = Vec::new();
    while let Some((job, take)) = store
        .claim_rated("w", now, LEASE, scope, rate)
        .await
        .unwrap()
    {
        takes.push((job.order_id.clone(), take));
        let token = job.lease_owner.clone().unwrap();
        let done = JobEnd {
            state: JobState::Done,
            error: None,
            dead_letter: None,
        };
        store
            .finish(&job.order_id, &token, done, vec![], now)
            .await
            .unwrap();
    }
    let ids: Vec<&str> = takes.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, [a1, b1, a2]);
    if pg {
        assert_eq!((takes[0].1, takes[1].1), (RateTake::Taken, RateTake::Taken));
        let RateTake::Refused(wait) = takes[2].1 else {
            panic!("{takes:?}")
        };
        assert!(
            wait <= rate.interval && wait >= rate.interval - Duration::from_secs(1),
            "{wait:?}"
        );
        // The refusal took nothing: A's next slot is still the same distance away.
        let again = store
            .take_rate_slot(scope, "A", rate, now)
            .await
            .unwrap()
            .unwrap();
        assert!(again <= rate.interval && again >= rate.interval - Duration::from_secs(1));
    } else {
        assert!(
            takes.iter().all(|(_, t)| *t == RateTake::Undecided),
            "{takes:?}"
        );
        assert_eq!(
            store.take_rate_slot(scope, "A", rate, now).await.unwrap(),
            None
        );
    }
    // D1 is claimed plainly, gets past its start and waits for a retry: claimed again, it is
    // not asked for a slot, and D's slot is still free.
    store
        .ingest_events(&[event(4, d1, "D")], now)
        .await
        .unwrap();
    let job = store.claim("w", now, LEASE).await.unwrap().unwrap();
    let token = job.lease_owner.clone().unwrap();
    store
        .advance(
            d1,
            &token,
            Step::Checked,
            StepUpdate::default(),
            vec![],
            now,
        )
        .await
        .unwrap();
    store
        .reschedule(d1, &token, Reschedule::at(now, None, false), vec![], now)
        .await
        .unwrap();
    let (again, take) = store
        .claim_rated("w", now, LEASE, scope, rate)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.order_id.as_str(), again.step, take),
        (d1, Step::Checked, RateTake::Undecided)
    );
    assert_eq!(
        store.take_rate_slot(scope, "D", rate, now).await.unwrap(),
        None
    );
}

both_backends! {
    async fn alerts_wait_until_taken_and_each_attempt_is_counted(db: &TestDb) {
        let store = db.open().await;
        let head = audit::AuditLog::head(&store).await.unwrap().seq;
        for n in 1..=3 {
            assert_eq!(store.queue_alert(alert(n), 100, vec![raised()], t0()).await.unwrap(), 0);
        }
        // Each alert's audit record committed with it.
        let records = audit::AuditLog::read_range(&store, head + 1, 10).await.unwrap();
        assert_eq!(records.len(), 3);
        assert!(records.iter().all(|r| r.record.action == audit::Action::ALERT_RAISED));
        assert_eq!(store.waiting_alerts().await.unwrap(), 3);

        let first = store.take_alerts(2, HOLD, t0()).await.unwrap();
        assert_eq!(first.iter().map(|a| a.body.as_str()).collect::<Vec<_>>(), [
            alert(1).body.as_str(),
            alert(2).body.as_str()
        ]);
        assert!(first.iter().all(|a| a.attempts == 1 && a.kind == "auth_failure_burst"));
        let rest = store.take_alerts(10, HOLD, t0()).await.unwrap();
        assert_eq!(rest.len(), 1, "the taken ones are hidden");
        assert!(store.take_alerts(10, HOLD, t0()).await.unwrap().is_empty());

        // Delivered: gone. Failed: due again after the wait. Forgotten: taken again after the hold.
        store.remove_alert(first[0].id).await.unwrap();
        store.retry_alert(first[1].id, Duration::from_secs(5), "http 500", t0()).await.unwrap();
        let at = |s: i64| t0() + TimeDelta::seconds(s);
        assert!(store.take_alerts(10, HOLD, at(4)).await.unwrap().is_empty());
        let again = store.take_alerts(10, HOLD, at(5)).await.unwrap();
        assert_eq!((again.len(), again[0].id, again[0].attempts), (1, first[1].id, 2));
        let lost = store.take_alerts(10, HOLD, at(60)).await.unwrap();
        assert_eq!((lost.len(), lost[0].id, lost[0].attempts), (1, rest[0].id, 2));
        assert_eq!(store.waiting_alerts().await.unwrap(), 2);
    }

    async fn past_its_bound_the_outbox_drops_the_oldest(db: &TestDb) {
        let store = db.open().await;
        assert_eq!(store.queue_alert(alert(1), 2, vec![], t0()).await.unwrap(), 0);
        assert_eq!(store.queue_alert(alert(2), 2, vec![], t0()).await.unwrap(), 0);
        assert_eq!(store.queue_alert(alert(3), 2, vec![], t0()).await.unwrap(), 1);
        let left = store.take_alerts(10, HOLD, t0()).await.unwrap();
        assert_eq!(left.iter().map(|a| a.body.clone()).collect::<Vec<_>>(), [alert(2).body, alert(3).body]);
    }

    async fn alerts_survive_a_restart(db: &TestDb) {
        let store = db.open().await;
        store.queue_alert(alert(1), 100, vec![], t0()).await.unwrap();
        // Taken by a process that then died without an answer.
        assert_eq!(store.take_alerts(10, HOLD, t0()).await.unwrap().len(), 1);
        drop(store);
        let store = db.open().await;
        assert!(store.take_alerts(10, HOLD, t0()).await.unwrap().is_empty(), "still held");
        let back = store.take_alerts(10, HOLD, t0() + TimeDelta::seconds(60)).await.unwrap();
        assert_eq!((back.len(), back[0].attempts), (1, 2));
    }

    async fn two_instances_never_take_the_same_alert(db: &TestDb) {
        let a = db.open_shared().await;
        let b = db.open_shared().await;
        for n in 0..40 {
            a.queue_alert(alert(n), 1_000, vec![], t0()).await.unwrap();
        }
        let (mut ids, mut taken) = (BTreeSet::new(), 0);
        for _ in 0..10 {
            let (x, y) = tokio::join!(a.take_alerts(3, HOLD, t0()), b.take_alerts(3, HOLD, t0()));
            for got in [x.unwrap(), y.unwrap()] {
                taken += got.len();
                ids.extend(got.into_iter().map(|a| a.id));
            }
        }
        assert_eq!((taken, ids.len()), (40, 40), "each alert taken exactly once");
    }

    async fn a_shared_rate_lets_a_burst_through_then_one_per_interval(db: &TestDb) {
        let store = db.open().await;
        let rate = SharedRate { interval: Duration::from_secs(1_800), burst: 2 };
        let take = |s: i64, key: &'static str| {
            let store = &store;
            async move {
                store
                    .take_rate_slot("customer_provision", key, rate, t0() + TimeDelta::seconds(s))
                    .await
                    .unwrap()
            }
        };
        assert_eq!(take(0, "C-1").await, None);
        assert_eq!(take(0, "C-1").await, None);
        assert_eq!(take(0, "C-1").await, Some(Duration::from_secs(1_800)));
        assert_eq!(take(600, "C-1").await, Some(Duration::from_secs(1_200)), "a refusal takes nothing");
        assert_eq!(take(0, "C-2").await, None, "per customer");
        assert_eq!(take(1_800, "C-1").await, None);
        assert_eq!(take(1_800, "C-1").await, Some(Duration::from_secs(1_800)));
        // Idle for long: the burst is back, never more.
        assert_eq!(take(100_000, "C-1").await, None);
        assert_eq!(take(100_000, "C-1").await, None);
        assert!(take(100_000, "C-1").await.is_some());
    }

    async fn two_instances_share_one_customer_rate(db: &TestDb) {
        let a = db.open_shared().await;
        let b = db.open_shared().await;
        let rate = SharedRate { interval: Duration::from_secs(360), burst: 10 };
        let mut calls = Vec::new();
        for i in 0..40 {
            let store = if i % 2 == 0 { &a } else { &b };
            calls.push(store.take_rate_slot("customer_provision", "C-9", rate, t0()));
        }
        let admitted = futures::future::join_all(calls)
            .await
            .into_iter()
            .filter(|r| r.as_ref().unwrap().is_none())
            .count();
        assert_eq!(admitted, 10, "ten per hour in all, however many instances ask");
    }

    async fn a_claim_takes_its_customers_rate_slot_with_it(db: &TestDb) {
        rated_claims(&db.open().await, Some(t0())).await;
    }

    async fn a_claim_takes_its_customers_rate_slot_with_it_on_the_database_clock(db: &TestDb) {
        rated_claims(&db.open_db_clock().await, None).await;
    }
}
