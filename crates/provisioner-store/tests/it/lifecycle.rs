//! Opening: URLs, the one-process rule on SQLite, leadership on PostgreSQL, backup.

use provisioner_store::{Error, SqlStore, Store, StoreOptions};

use crate::support::{TestDb, master};

#[tokio::test]
async fn a_second_process_on_the_same_sqlite_file_is_refused() {
    let db = TestDb::sqlite();
    let first = db.open().await;
    let err = SqlStore::open(&db.url(), &master(), StoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InUse { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("in use by another provisioner process")
    );
    drop(first);
    // Once the first is gone, the file opens again.
    let again = db.open().await;
    again.ping().await.unwrap();
}

#[tokio::test]
async fn unsupported_urls_are_named() {
    for url in ["mysql://x/y", "sqlite://", "provisioner.db"] {
        let err = SqlStore::open(url, &master(), StoreOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::UnsupportedUrl { .. }), "{url}: {err}");
    }
}

#[tokio::test]
async fn sqlite_creates_missing_directories_and_backs_up() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/dir/p.db", dir.path().display());
    let store = SqlStore::open(&url, &master(), StoreOptions::default())
        .await
        .unwrap();
    store
        .ingest_event(
            &crate::support::event(1, "801000000000001AAA", "C"),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let backup = dir.path().join("backup.db");
    store.backup_to(&backup).await.unwrap();
    assert!(store.backup_to(&backup).await.is_err(), "never overwrites");
    // The standalone backup works while the store is open (no process lock needed).
    let second = dir.path().join("backup2.db");
    SqlStore::backup_sqlite(&url, &second).await.unwrap();
    assert!(second.exists());
    drop(store);
    let restored = SqlStore::open(
        &format!("sqlite://{}", backup.display()),
        &master(),
        StoreOptions::default(),
    )
    .await
    .unwrap();
    assert!(restored.job("801000000000001AAA").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leadership_moves_when_the_holder_goes() {
    let db = TestDb::postgres().await;
    let a = db.open().await;
    let b = db.open().await;
    let mut held = a
        .try_lead("subscriber")
        .await
        .unwrap()
        .expect("first takes it");
    assert!(held.is_held().await);
    assert!(b.try_lead("subscriber").await.unwrap().is_none());
    // Another name is independent.
    assert!(b.try_lead("other").await.unwrap().is_some());
    drop(held);
    // The session closes asynchronously; b gets it within a few tries.
    let mut got = None;
    for _ in 0..100 {
        if let Some(l) = b.try_lead("subscriber").await.unwrap() {
            got = Some(l);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(got.is_some(), "leadership did not move to b");
    drop((a, b, got));
    db.cleanup().await;
}

/// `migration_status` reads how far the schema is without touching it: nothing applied on an
/// empty database, everything after `open` migrated it; a missing SQLite file is an error and
/// stays missing. On both backends.
#[tokio::test]
async fn migration_status_reads_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.db");
    let err = provisioner_store::migration_status(&format!("sqlite://{}", missing.display()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(!missing.exists(), "the check created the file");

    for db in [TestDb::sqlite(), TestDb::postgres().await] {
        if db.url().starts_with("sqlite://") {
            // An empty database file.
            let path = db.url().trim_start_matches("sqlite://").to_owned();
            std::fs::File::create(&path).unwrap();
        }
        let before = provisioner_store::migration_status(&db.url())
            .await
            .unwrap();
        assert_eq!(before.applied, 0, "{before:?}");
        assert!(!before.pending.is_empty());
        let store = db.open().await;
        drop(store);
        let after = provisioner_store::migration_status(&db.url())
            .await
            .unwrap();
        assert_eq!(after.pending, Vec::<String>::new());
        assert_eq!(after.applied, before.pending.len());
        db.cleanup().await;
    }
}

/// On the database's own machine a provisioner can reach PostgreSQL through the server's Unix
/// socket (`postgres://user@localhost/db?host=<socket directory>`, as README says): the store
/// opens, migrates and answers there. The directory is `PG_SOCKET_DIR_TEST`, by default
/// Debian's `/var/run/postgresql`.
#[tokio::test]
async fn postgres_opens_over_the_servers_unix_socket() {
    let dir =
        std::env::var("PG_SOCKET_DIR_TEST").unwrap_or_else(|_| "/var/run/postgresql".to_owned());
    assert!(
        std::path::Path::new(&dir).join(".s.PGSQL.5432").exists(),
        "no PostgreSQL socket for port 5432 in {dir} (set PG_SOCKET_DIR_TEST)"
    );
    let db = test_support::pg::PgTempDb::create().await;
    let url = format!("postgres://postgres@localhost/{}?host={dir}", db.name());
    let store = SqlStore::open(&url, &master(), StoreOptions::default())
        .await
        .unwrap();
    store.ping().await.unwrap();
    let status = provisioner_store::migration_status(&url).await.unwrap();
    assert_eq!(status.pending, Vec::<String>::new(), "{status:?}");
    assert!(status.applied > 0, "{status:?}");
    drop(store);
    db.close().await;
}
