//! The store as an audit log: one chain under concurrency, purge with anchor, tampering found.

use std::sync::Arc;

use audit::{Action, Actor, AuditLog, DetailKey, NewAuditRecord, Outcome};
use chrono::{Duration, Utc};
use sqlx::Connection;

use crate::support::both_backends;

fn record(i: u32) -> NewAuditRecord {
    NewAuditRecord::new(Actor::ENGINE, Action::STEP_SUCCEEDED, Outcome::Success)
        .order_id(format!("801{i:015}"))
        .unwrap()
        .detail(DetailKey::Attempt, i.to_string())
        .unwrap()
}

both_backends! {
    async fn concurrent_appends_form_one_verifiable_chain(db: &TestDb) {
        let store = Arc::new(db.open().await);
        let mut tasks = Vec::new();
        for t in 0..16u32 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                for i in 0..20u32 {
                    store.append(record(t * 100 + i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let summary = audit::verify(&*store, store.audit_key()).await.unwrap();
        assert_eq!(summary.records, 320);
        assert_eq!((summary.first_seq, summary.last_seq), (Some(1), Some(320)));
        assert_eq!(store.head().await.unwrap().seq, 320);
    }

    async fn two_stores_appending_to_one_database_never_fork_the_chain(db: &TestDb) {
        // Each store keeps the chain head in memory; the other one's appends make it stale,
        // and the `seq` key must turn that into a re-read, not a fork or a gap.
        let a = Arc::new(db.open().await);
        let b = Arc::new(db.open_shared().await);
        let mut tasks = Vec::new();
        for t in 0..8u32 {
            let store = if t % 2 == 0 { Arc::clone(&a) } else { Arc::clone(&b) };
            tasks.push(tokio::spawn(async move {
                for i in 0..15u32 {
                    store.append(record(t * 100 + i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // One more from each, after the other one moved the head.
        a.append(record(900)).await.unwrap();
        b.append(record(901)).await.unwrap();
        a.append(record(902)).await.unwrap();
        let summary = audit::verify(&*a, a.audit_key()).await.unwrap();
        assert_eq!(summary.records, 123);
        assert_eq!((summary.first_seq, summary.last_seq), (Some(1), Some(123)));
    }

    async fn a_batch_of_concurrent_appends_returns_each_its_own_record(db: &TestDb) {
        let store = Arc::new(db.open().await);
        let appends = (0..64u32).map(|i| {
            let store = Arc::clone(&store);
            async move { (i, store.append(record(i)).await.unwrap()) }
        });
        let sealed = futures::future::join_all(appends).await;
        let mut seqs: Vec<u64> = sealed.iter().map(|(_, s)| s.record.seq).collect();
        for (i, s) in &sealed {
            assert_eq!(s.record.details.get(DetailKey::Attempt), Some(i.to_string().as_str()));
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=64).collect::<Vec<u64>>());
        let stored = store.read_range(1, 100).await.unwrap();
        for (_, s) in &sealed {
            assert_eq!(&stored[usize::try_from(s.record.seq - 1).unwrap()], s);
        }
        assert_eq!(audit::verify(&*store, store.audit_key()).await.unwrap().records, 64);
    }

    async fn purge_keeps_an_anchor_and_the_rest_verifies(db: &TestDb) {
        let store = db.open().await;
        let old = Utc::now() - Duration::days(3000);
        for i in 0..5 {
            store.append(record(i).at(old)).await.unwrap();
        }
        for i in 5..8 {
            store.append(record(i)).await.unwrap();
        }
        let policy = audit::RetentionPolicy::default();
        let report = store.purge(policy.cutoff(Utc::now()), Actor::RETENTION).await.unwrap();
        assert_eq!(report.removed, 5);
        assert_eq!(report.anchor.seq, 5);
        let summary = audit::verify(&store, store.audit_key()).await.unwrap();
        // 3 kept + the purge record.
        assert_eq!(summary.records, 4);
        assert_eq!(summary.first_seq, Some(6));
        // Appending after a purge continues the chain; reopening keeps it.
        store.append(record(9)).await.unwrap();
        drop(store);
        let store = db.open().await;
        assert_eq!(audit::verify(&store, store.audit_key()).await.unwrap().records, 5);
    }

    async fn editing_or_deleting_rows_is_detected(db: &TestDb) {
        let store = db.open().await;
        for i in 0..6 {
            store.append(record(i)).await.unwrap();
        }
        sqlx::any::install_default_drivers();
        let mut raw = sqlx::AnyConnection::connect(&db.url()).await.unwrap();
        // Someone with database access but no key changes an outcome.
        let row = sqlx::query("SELECT record FROM audit_log WHERE seq = 3")
            .fetch_one(&mut raw).await.unwrap();
        let json: String = sqlx::Row::get(&row, "record");
        let forged = json.replace("\"success\"", "\"failed\"");
        assert_ne!(forged, json);
        sqlx::query("UPDATE audit_log SET record = $1 WHERE seq = 3")
            .bind(&forged).execute(&mut raw).await.unwrap();
        let err = audit::verify(&store, store.audit_key()).await.unwrap_err();
        assert!(matches!(err, audit::Error::Tampered { seq: 3, .. }), "{err}");
        // Put it back, then delete a row.
        sqlx::query("UPDATE audit_log SET record = $1 WHERE seq = 3")
            .bind(&json).execute(&mut raw).await.unwrap();
        audit::verify(&store, store.audit_key()).await.unwrap();
        sqlx::query("DELETE FROM audit_log WHERE seq = 4").execute(&mut raw).await.unwrap();
        let err = audit::verify(&store, store.audit_key()).await.unwrap_err();
        assert!(matches!(err, audit::Error::Tampered { seq: 4, .. }), "{err}");
        raw.close().await.unwrap();
    }
}
