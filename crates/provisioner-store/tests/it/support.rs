//! Test databases: a temporary SQLite file, or a fresh PostgreSQL database.

use field_crypto::MasterKey;
use provisioner_store::{SqlStore, StoreClock, StoreOptions};
use test_support::pg::PgTempDb;

pub(crate) const MASTER: &str = "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=";

pub(crate) fn master() -> MasterKey {
    MasterKey::from_config(MASTER).unwrap()
}

/// A database for one test; call [`TestDb::cleanup`] at the end (drops the PostgreSQL database).
pub(crate) enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres(PgTempDb),
}

impl TestDb {
    pub(crate) fn sqlite() -> Self {
        TestDb::Sqlite(tempfile::tempdir().unwrap())
    }

    pub(crate) async fn postgres() -> Self {
        TestDb::Postgres(PgTempDb::create().await)
    }

    pub(crate) fn url(&self) -> String {
        match self {
            TestDb::Sqlite(dir) => format!("sqlite://{}/provisioner.db", dir.path().display()),
            TestDb::Postgres(db) => db.url(),
        }
    }

    /// The store on the test's clock: every `now` the test passes is the database's (so a test
    /// can move time on by hours). [`TestDb::open_db_clock`] opens it on PostgreSQL's own.
    pub(crate) async fn open(&self) -> SqlStore {
        let options = StoreOptions {
            clock: StoreClock::Caller,
            ..StoreOptions::default()
        };
        SqlStore::open(&self.url(), &master(), options)
            .await
            .unwrap()
    }

    /// The store as a service opens it (the database's clock).
    pub(crate) async fn open_db_clock(&self) -> SqlStore {
        SqlStore::open(&self.url(), &master(), StoreOptions::default())
            .await
            .unwrap()
    }

    /// A second store on the same database, as an operator command opens it next to a
    /// running service (SQLite without the one-process lock; PostgreSQL: another instance).
    pub(crate) async fn open_shared(&self) -> SqlStore {
        let options = StoreOptions {
            exclusive: false,
            clock: StoreClock::Caller,
            ..StoreOptions::default()
        };
        SqlStore::open(&self.url(), &master(), options)
            .await
            .unwrap()
    }

    /// The URL a raw connection opens the database with (a SQLite file it may create).
    pub(crate) fn raw_url(&self) -> String {
        match self {
            TestDb::Sqlite(_) => format!("{}?mode=rwc", self.url()),
            TestDb::Postgres(_) => self.url(),
        }
    }

    /// The schema as an older release left it: the backend's migrations whose file names sort
    /// before `first_left_out`, applied on a fresh database; returns a connection to it.
    pub(crate) async fn migrated_before(&self, first_left_out: &str) -> sqlx::AnyConnection {
        use sqlx::Connection as _;
        let backend = match self {
            TestDb::Sqlite(_) => "sqlite",
            TestDb::Postgres(_) => "postgres",
        };
        let dir = tempfile::tempdir().unwrap();
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend);
        for entry in std::fs::read_dir(&source).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if name.as_str() < first_left_out {
                std::fs::copy(&path, dir.path().join(name)).unwrap();
            }
        }
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.raw_url()).await.unwrap();
        sqlx::migrate::Migrator::new(dir.path())
            .await
            .unwrap()
            .run(&mut conn)
            .await
            .unwrap();
        conn
    }

    pub(crate) async fn cleanup(self) {
        if let TestDb::Postgres(db) = self {
            db.close().await;
        }
    }
}

/// Runs an async test body against SQLite and against PostgreSQL.
macro_rules! both_backends {
    ($(async fn $name:ident($db:ident: &TestDb) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                async fn body($db: &$crate::support::TestDb) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    let db = $crate::support::TestDb::sqlite();
                    body(&db).await;
                    db.cleanup().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    let db = $crate::support::TestDb::postgres().await;
                    body(&db).await;
                    db.cleanup().await;
                }
            }
        )*
    };
}
pub(crate) use both_backends;

pub(crate) fn event(n: u32, order: &str, customer: &str) -> provisioner_store::InboxEvent {
    provisioner_store::InboxEvent {
        topic: "/event/OrderProvisionRequested__e".to_owned(),
        event_id: format!("evt-{n}"),
        replay_id: vec![0, 0, 0, 0, 0, 16, 219, 77, 0, n as u8],
        order_id: order.to_owned(),
        customer_number: customer.to_owned(),
        account_id: None,
    }
}
