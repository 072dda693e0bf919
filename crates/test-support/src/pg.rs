//! A temporary PostgreSQL database: created with a unique name on the local server, dropped
//! at the end (by [`PgTempDb::close`], or on drop if a test panicked before it).
//!
//! `DATABASE_URL_TEST` names the admin database to connect to for `CREATE DATABASE` and
//! `DROP DATABASE`; the default is [`DEFAULT_ADMIN_URL`] (the local server, trust auth).

use sqlx::Connection as _;

/// The admin database when `DATABASE_URL_TEST` is not set.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The admin database's URL: `DATABASE_URL_TEST`, or [`DEFAULT_ADMIN_URL`].
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL_TEST").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// `admin` with its database name replaced by `db`.
fn url_of(admin: &str, db: &str) -> String {
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => format!("{admin}/{db}"),
    }
}

/// Runs one statement on the admin database.
async fn admin_exec(admin: &str, sql: &str) -> Result<(), sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::query(sql).execute(&mut conn).await?;
    conn.close().await
}

/// One database, `pp_test_<uuid>`, that exists until [`PgTempDb::close`] (or drop).
#[derive(Debug)]
pub struct PgTempDb {
    name: String,
    admin: String,
    dropped: bool,
}

impl PgTempDb {
    /// Whether the PostgreSQL server behind [`admin_url`] accepts a connection.
    pub async fn reachable() -> bool {
        match sqlx::PgConnection::connect(&admin_url()).await {
            Ok(conn) => conn.close().await.is_ok(),
            Err(_) => false,
        }
    }

    /// Creates a fresh database; the error says why when the server is unreachable.
    pub async fn try_create() -> Result<PgTempDb, sqlx::Error> {
        let admin = admin_url();
        let name = format!("pp_test_{}", uuid::Uuid::new_v4().simple());
        admin_exec(&admin, &format!("CREATE DATABASE {name}")).await?;
        Ok(PgTempDb {
            name,
            admin,
            dropped: false,
        })
    }

    /// Creates a fresh database, or panics: the tests that call this need PostgreSQL.
    pub async fn create() -> PgTempDb {
        PgTempDb::try_create().await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for these tests (set DATABASE_URL_TEST or start the \
                 local server): {e}"
            )
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL (the admin URL with this database's name), for `DATABASE_URL`.
    pub fn url(&self) -> String {
        url_of(&self.admin, &self.name)
    }

    /// Drops the database, closing whatever connections remain; panics if that fails.
    pub async fn close(mut self) {
        self.dropped = true;
        admin_exec(&self.admin, &self.drop_sql()).await.unwrap();
    }

    fn drop_sql(&self) -> String {
        format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)
    }
}

impl Drop for PgTempDb {
    /// A test that panicked before [`PgTempDb::close`] still leaves no database behind: the
    /// drop runs on a thread of its own (with its own runtime, so it works inside and outside
    /// of one), best effort.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (admin, sql) = (self.admin.clone(), self.drop_sql());
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let _ = rt.block_on(admin_exec(&admin, &sql));
        });
        let _ = dropper.join();
    }
}

/// The PostgreSQL advisory lock key a writer of audit chain 0 holds until its commit
/// ("ppaudit1"; chain `c` is this plus `c`). The store's own constant is private; a test that
/// fails when the two differ is one that holds this lock and expects another chain.
pub const AUDIT_CHAIN_0_LOCK_KEY: i64 = 0x7070_6175_6469_7431;

/// A session that holds audit chain 0's lock in an open transaction, as a busy writer of
/// another instance would until its commit: every append meanwhile goes to another chain,
/// with no reliance on timing.
#[derive(Debug)]
pub struct ChainZeroHolder(sqlx::PgConnection);

impl ChainZeroHolder {
    /// Connects to `url` and takes the lock; panics if that fails.
    pub async fn hold(url: &str) -> ChainZeroHolder {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_CHAIN_0_LOCK_KEY)
            .execute(&mut conn)
            .await
            .unwrap();
        ChainZeroHolder(conn)
    }

    /// Commits, which releases the lock; the session stays open for the caller's further
    /// statements (close it when done). Panics if the commit fails.
    pub async fn release(mut self) -> sqlx::PgConnection {
        sqlx::query("COMMIT").execute(&mut self.0).await.unwrap();
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_the_database() {
        assert_eq!(
            url_of("postgres://u@h:5432/test", "pp_test_x"),
            "postgres://u@h:5432/pp_test_x"
        );
    }
}
