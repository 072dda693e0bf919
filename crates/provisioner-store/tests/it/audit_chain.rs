//! The store as an audit log: unbroken chains under concurrency (one on SQLite, a free one per
//! writer on PostgreSQL), purge with anchor, tampering found in any chain.

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

/// Every chain of `store`: its records' sequence numbers must run 1..=n without a gap, and
/// together they hold `total` records; returns how many chains hold records.
async fn chains_are_unbroken(store: &provisioner_store::SqlStore, total: u64) -> usize {
    let summary = store.verify_audit().await.unwrap();
    assert_eq!(summary.records(), total);
    let mut used = 0;
    for c in &summary.chains {
        if c.summary.records > 0 {
            used += 1;
            assert_eq!(
                (c.summary.first_seq, c.summary.last_seq),
                (Some(1), Some(c.summary.records)),
                "chain {}",
                c.chain
            );
        }
    }
    if store.backend() == provisioner_store::Backend::Sqlite {
        assert_eq!(used, 1, "SQLite keeps one chain");
    }
    used
}

both_backends! {
    async fn concurrent_appends_form_verifiable_chains(db: &TestDb) {
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
        chains_are_unbroken(&store, 320).await;
        if store.backend() == provisioner_store::Backend::Sqlite {
            assert_eq!(store.head().await.unwrap().seq, 320);
        }
    }

    async fn two_stores_appending_to_one_database_never_fork_a_chain(db: &TestDb) {
        // Each store keeps the chain heads in memory; the other one's appends make them stale,
        // and the `(chain, seq)` key must turn that into a re-read, not a fork or a gap.
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
        // One more from each, after the other one moved the heads.
        a.append(record(900)).await.unwrap();
        b.append(record(901)).await.unwrap();
        a.append(record(902)).await.unwrap();
        chains_are_unbroken(&a, 123).await;
        chains_are_unbroken(&b, 123).await;
    }

    async fn a_batch_of_concurrent_appends_returns_each_its_own_record(db: &TestDb) {
        let store = Arc::new(db.open().await);
        let appends = (0..64u32).map(|i| {
            let store = Arc::clone(&store);
            async move { (i, store.append(record(i)).await.unwrap()) }
        });
        let sealed = futures::future::join_all(appends).await;
        for (i, s) in &sealed {
            assert_eq!(s.record.details.get(DetailKey::Attempt), Some(i.to_string().as_str()));
        }
        // Each sealed record is stored as returned, in some chain at its sequence number.
        let mut stored = Vec::new();
        for chain in store.audit_chains().await.unwrap() {
            stored.extend(chain.read_range(1, 100).await.unwrap());
        }
        assert_eq!(stored.len(), 64);
        for (_, s) in &sealed {
            assert!(stored.contains(s), "{s:?} is not stored as returned");
        }
        chains_are_unbroken(&store, 64).await;
    }

    async fn an_append_to_a_named_chain_leaves_the_others_unbroken(db: &TestDb) {
        let store = db.open().await;
        store.append(record(1)).await.unwrap();
        if store.backend() == provisioner_store::Backend::Sqlite {
            // SQLite keeps one chain: another is refused, by name, and nothing is written.
            let err = store.audit_chain(3).append(record(2)).await.unwrap_err().to_string();
            assert!(err.contains("chain 3: SQLite keeps one audit chain"), "{err}");
            let err = store
                .audit_chain(3)
                .purge(Utc::now(), Actor::RETENTION)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("chain 3: SQLite keeps one audit chain"), "{err}");
            store.append(record(3)).await.unwrap();
            assert_eq!(chains_are_unbroken(&store, 2).await, 1);
            assert_eq!(store.head().await.unwrap().seq, 2);
            return;
        }
        let other = store.audit_chain(3).append(record(2)).await.unwrap();
        assert_eq!(other.record.seq, 1, "chain 3 starts at 1");
        store.append(record(3)).await.unwrap();
        store.audit_chain(3).append(record(4)).await.unwrap();
        let summary = store.verify_audit().await.unwrap();
        let chains: Vec<(u32, u64)> =
            summary.chains.iter().map(|c| (c.chain, c.summary.records)).collect();
        assert_eq!(chains, vec![(0, 2), (3, 2)]);
        assert_eq!(store.head().await.unwrap().seq, 2, "chain 0 went on from its own head");
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
        let summary = store.verify_audit().await.unwrap();
        // 3 kept + the purge record, in chain 0 (one writer at a time takes the first chain).
        assert_eq!(summary.records(), 4);
        assert_eq!(summary.chains[0].summary.first_seq, Some(6));
        // Appending after a purge continues the chain; reopening keeps it.
        store.append(record(9)).await.unwrap();
        drop(store);
        let store = db.open().await;
        assert_eq!(store.verify_audit().await.unwrap().records(), 5);
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
        let err = store.verify_audit().await.unwrap_err();
        assert!(matches!(err.error, audit::Error::Tampered { seq: 3, .. }), "{err}");
        assert_eq!(err.chain, Some(0));
        // Put it back, then delete a row.
        sqlx::query("UPDATE audit_log SET record = $1 WHERE seq = 3")
            .bind(&json).execute(&mut raw).await.unwrap();
        store.verify_audit().await.unwrap();
        sqlx::query("DELETE FROM audit_log WHERE seq = 4").execute(&mut raw).await.unwrap();
        let err = store.verify_audit().await.unwrap_err();
        assert!(matches!(err.error, audit::Error::Tampered { seq: 4, .. }), "{err}");
        raw.close().await.unwrap();
    }
}

/// PostgreSQL: writers of two instances spread over several chains; an edit, a deletion or a
/// record moved to another chain is found in whichever chain it is, and named.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tampering_is_found_in_every_chain_on_postgres() {
    let db = crate::support::TestDb::postgres().await;
    let a = Arc::new(db.open().await);
    let b = Arc::new(db.open_shared().await);
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let store = if t % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..10u32 {
                store.append(record(t * 100 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Another session holds chain 0's lock (as a writer of another instance would, until its
    // commit): the next append takes another chain instead of waiting. No reliance on timing.
    let holder = test_support::pg::ChainZeroHolder::hold(&db.url()).await;
    let first = b.append(record(990)).await.unwrap();
    let second = b.append(record(991)).await.unwrap();
    holder.release().await.close().await.unwrap();
    sqlx::any::install_default_drivers();
    let in_chain_0 = a.audit_chain(0).read_range(1, 1000).await.unwrap();
    assert!(
        !in_chain_0.contains(&first),
        "sealed on another chain than the held one"
    );
    let used = chains_are_unbroken(&a, 82).await;
    assert!(
        used >= 2,
        "a writer that found chain 0 taken used another one"
    );
    let summary = a.verify_audit().await.unwrap();
    // The chain the two appends went to (the first free one after chain 0: both, since
    // nothing else was writing).
    let mut other = None;
    for c in summary.chains.iter().filter(|c| c.chain > 0) {
        let records = a.audit_chain(c.chain).read_range(1, 1000).await.unwrap();
        if records.contains(&first) && records.contains(&second) {
            other = Some(*c);
        }
    }
    let other = other.expect("both appends in one other chain");
    let chain = i64::from(other.chain);

    let mut raw = sqlx::AnyConnection::connect(&db.url()).await.unwrap();
    let row = sqlx::query("SELECT record FROM audit_log WHERE chain = $1 AND seq = 1")
        .bind(chain)
        .fetch_one(&mut raw)
        .await
        .unwrap();
    let json: String = sqlx::Row::get(&row, "record");
    let forged = json.replace("\"success\"", "\"failed\"");
    let next = summary.chains[0].summary.records + 1;
    let set_record = format!("UPDATE audit_log SET record = $1 WHERE chain = {chain} AND seq = 1");
    // Each tampering (a statement and its text argument), the chain and record verification
    // must name (`None`: not checked), and the statement that undoes it (`None`: the last).
    let steps = [
        // Someone with database access but no key changes an outcome.
        (
            (set_record.clone(), Some(forged)),
            (Some(other.chain), Some(1)),
            Some((set_record, Some(json))),
        ),
        // A record moved into chain 0's next place: a gap in its own chain, a stranger in
        // chain 0.
        (
            (
                format!(
                    "UPDATE audit_log SET chain = 0, seq = {next} WHERE chain = {chain} AND seq = 1"
                ),
                None,
            ),
            (None, None),
            Some((
                format!(
                    "UPDATE audit_log SET chain = {chain}, seq = 1 WHERE chain = 0 AND seq = {next}"
                ),
                None,
            )),
        ),
        // A deleted record of that chain.
        (
            (
                format!("DELETE FROM audit_log WHERE chain = {chain} AND seq = 1"),
                None,
            ),
            (Some(other.chain), None),
            None,
        ),
    ];
    for ((tamper, arg), (named_chain, named_seq), undo) in steps {
        execute(&mut raw, &tamper, arg).await;
        let err = a.verify_audit().await.unwrap_err();
        assert!(
            matches!(err.error, audit::Error::Tampered { seq, .. } if named_seq.is_none_or(|n| n == seq)),
            "{tamper}: {err}"
        );
        if named_chain.is_some() {
            assert_eq!(err.chain, named_chain, "{tamper}");
        }
        if let Some((sql, arg)) = undo {
            execute(&mut raw, &sql, arg).await;
            a.verify_audit().await.unwrap();
        }
    }
    raw.close().await.unwrap();
    drop((a, b));
    db.cleanup().await;
}

/// Runs `sql` with its one text argument, if any.
async fn execute(raw: &mut sqlx::AnyConnection, sql: &str, arg: Option<String>) {
    let query = sqlx::query(sql);
    let query = match arg {
        Some(arg) => query.bind(arg),
        None => query,
    };
    query.execute(raw).await.unwrap();
}

/// A SQLite log written under the `(chain, seq)` key it had up to migration 0013 is carried
/// whole into the table keyed by `seq` alone: the chain verifies, an Order's records read the
/// same, retention purges from it, and appending goes on from its head.
#[tokio::test]
async fn a_sqlite_log_keyed_by_chain_and_seq_migrates_whole() {
    use provisioner_store::{SqlStore, Store as _, StoreClock, StoreOptions};

    let db = crate::support::TestDb::sqlite();
    // The schema as migration 0013 left it.
    let mut conn = db.migrated_before("0014").await;
    assert_eq!(
        key_indexes(&mut conn).await,
        1,
        "the old schema has its (chain, seq) index"
    );
    conn.close().await.unwrap();

    // Records written by the store on that schema: three past retention, three recent, and
    // an Order's event keyed by its job.
    let unmigrated = StoreOptions {
        migrate: false,
        exclusive: false,
        clock: StoreClock::Caller,
        ..StoreOptions::default()
    };
    let store = SqlStore::open(&db.url(), &crate::support::master(), unmigrated)
        .await
        .unwrap();
    let old = Utc::now() - Duration::days(3000);
    for i in 0..3 {
        store.append(record(i).at(old)).await.unwrap();
    }
    for i in 3..6 {
        store.append(record(i)).await.unwrap();
    }
    let order = format!("801{:015}", 4);
    store
        .ingest_event(&crate::support::event(1, &order, "A"), Utc::now())
        .await
        .unwrap();
    let order_records = store.audit_for_order(&order, 100).await.unwrap();
    assert_eq!(order_records.len(), 2, "{order_records:?}");
    assert_eq!(store.verify_audit().await.unwrap().records(), 7);
    drop(store);

    let store = crate::support::TestDb::open(&db).await;
    let mut conn = sqlx::AnyConnection::connect(&db.url()).await.unwrap();
    assert_eq!(key_indexes(&mut conn).await, 0, "seq is the rowid now");
    conn.close().await.unwrap();
    assert_eq!(chains_are_unbroken(&store, 7).await, 1);
    assert_eq!(
        store.audit_for_order(&order, 100).await.unwrap(),
        order_records
    );
    store.append(record(7)).await.unwrap();
    assert_eq!(store.head().await.unwrap().seq, 8);
    let report = store
        .purge(
            audit::RetentionPolicy::default().cutoff(Utc::now()),
            Actor::RETENTION,
        )
        .await
        .unwrap();
    assert_eq!((report.removed, report.anchor.seq), (3, 3));
    let summary = store.verify_audit().await.unwrap();
    assert_eq!(summary.records(), 6, "5 kept, the purge's own record");
    assert_eq!(summary.chains[0].summary.first_seq, Some(4));
    db.cleanup().await;
}

/// How many indexes SQLite keeps for `audit_log`'s primary key (none when it is the rowid).
async fn key_indexes(conn: &mut sqlx::AnyConnection) -> i64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM pragma_index_list('audit_log') WHERE origin = 'pk'")
            .fetch_one(conn)
            .await
            .unwrap();
    n
}
