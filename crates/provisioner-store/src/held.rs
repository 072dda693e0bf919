//! Connections kept between statements that answered in full (the PostgreSQL hot path).
//!
//! sqlx tests every connection given back to its pool with a ping (a `Sync` message and its
//! `ReadyForQuery`: a round trip to the server, and a wake-up of the server's backend) before
//! any other caller may have it. The store's hot statements — a claim, a batch of fenced
//! writes, a lone statement — each run alone, outside any transaction, and either answer in
//! full or fail. A connection whose statement answered in full is idle, in no transaction, with
//! nothing left to read, so it is kept here for the next such statement instead of going back
//! through the pool and its ping. A connection whose statement failed, or whose caller was
//! cancelled mid-statement, goes back to the pool, which tests it as before — except one the
//! database refused: before the error returns, the connection waits for the server to say it is
//! ready again (a ping), and is then kept like any other. The server sends the error before it
//! ends the statement's implicit transaction; without that wait, the caller's next statement,
//! on another connection, could still find the failed one's locks (an audit chain's among
//! them) held, and take this process's own chain for another instance's.
//!
//! At most `keep` connections wait here, so the pool keeps the rest of its connections for
//! transactions and reads; they count against the pool's `max_connections` like any other.

use std::sync::Mutex;

use sqlx::any::{AnyQueryResult, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Connection};

use crate::tx::{Arg, sqlx_query};

/// Connections of `pool` kept between statements.
pub(crate) struct Held {
    pool: AnyPool,
    idle: Mutex<Vec<PoolConnection<Any>>>,
    keep: usize,
}

impl Held {
    /// Keeps up to `keep` connections of `pool` (0: every statement goes through the pool).
    pub(crate) fn new(pool: AnyPool, keep: usize) -> Held {
        Held {
            pool,
            idle: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<PoolConnection<Any>>> {
        // Nothing panics while the lock is held; a poisoned list is still consistent.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A kept connection, else one from the pool.
    async fn take(&self) -> Result<PoolConnection<Any>, sqlx::Error> {
        let kept = self.idle().pop();
        match kept {
            Some(conn) => Ok(conn),
            None => self.pool.acquire().await,
        }
    }

    /// Keeps `conn`, whose statement answered in full, unless `keep` are kept already (then
    /// it goes back to the pool).
    fn keep(&self, conn: PoolConnection<Any>) {
        let mut idle = self.idle();
        if idle.len() < self.keep {
            idle.push(conn);
        }
    }

    /// Runs `sql` on `args` alone and returns its rows.
    pub(crate) async fn fetch_all(
        &self,
        sql: &str,
        args: &[Arg],
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let mut conn = self.take().await?;
        match sqlx_query(sql, args).fetch_all(&mut *conn).await {
            Ok(rows) => {
                self.keep(conn);
                Ok(rows)
            }
            Err(e) => Err(self.settle(conn, e).await),
        }
    }

    /// Runs `sql` on `args` alone, for a statement without rows.
    pub(crate) async fn execute(
        &self,
        sql: &str,
        args: &[Arg],
    ) -> Result<AnyQueryResult, sqlx::Error> {
        let mut conn = self.take().await?;
        match sqlx_query(sql, args).execute(&mut *conn).await {
            Ok(done) => {
                self.keep(conn);
                Ok(done)
            }
            Err(e) => Err(self.settle(conn, e).await),
        }
    }

    /// After `conn`'s statement failed with `e`: when the database refused it, waits until
    /// the server is ready again (its implicit transaction over, its locks released) and keeps
    /// the connection; any other failure leaves it to the pool. Returns `e`.
    async fn settle(&self, mut conn: PoolConnection<Any>, e: sqlx::Error) -> sqlx::Error {
        if matches!(e, sqlx::Error::Database(_)) && conn.ping().await.is_ok() {
            self.keep(conn);
        }
        e
    }

    /// How many connections are kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.idle().len()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle());
        if tokio::runtime::Handle::try_current().is_err() {
            // Outside a runtime the pool cannot take them back (it spawns a task to test each):
            // close them here instead.
            for conn in idle {
                drop(conn.detach());
            }
        }
        // Inside one, dropping them gives them back to the pool.
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    async fn pool(url: &str, size: u32) -> AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(size)
            .connect(url)
            .await
            .unwrap()
    }

    /// A fresh database, a pool of `size` on it, and a `Held` keeping one of its connections.
    async fn setup(size: u32) -> (test_support::pg::PgTempDb, AnyPool, Held) {
        let db = test_support::pg::PgTempDb::create().await;
        let pool = pool(&db.url(), size).await;
        let held = Held::new(pool.clone(), 1);
        (db, pool, held)
    }

    async fn teardown(db: test_support::pg::PgTempDb, pool: AnyPool, held: Held) {
        drop(held);
        pool.close().await;
        db.close().await;
    }

    async fn backend_pid(held: &Held) -> i64 {
        let rows = held
            .fetch_all("SELECT CAST(pg_backend_pid() AS BIGINT)", &[])
            .await
            .unwrap();
        sqlx::Row::get(&rows[0], 0)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_whose_statement_answered_is_kept_and_used_again() {
        let (db, pool, held) = setup(2).await;
        let first = backend_pid(&held).await;
        assert_eq!(held.kept(), 1);
        // Kept here, not idle in the pool: the pool has no connection to test and hand out.
        assert_eq!((pool.size(), pool.num_idle()), (1, 0));
        assert_eq!(backend_pid(&held).await, first);
        let done = held.execute("SELECT 1", &[]).await.unwrap();
        assert_eq!(done.rows_affected(), 1);
        assert_eq!(backend_pid(&held).await, first);
        teardown(db, pool, held).await;
    }

    /// Advisory locks any session holds in the test's database.
    async fn advisory_locks(pool: &AnyPool) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_statement_has_ended_when_its_error_returns_and_its_connection_is_kept() {
        let (db, pool, held) = setup(3).await;
        let first = backend_pid(&held).await;
        // Takes a lock for its implicit transaction, then fails.
        let refused = "WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock(42) AS x) \
                       SELECT 1 / (SELECT CAST(count(*) - 1 AS INTEGER) FROM l)";
        assert!(matches!(
            held.fetch_all(refused, &[]).await,
            Err(sqlx::Error::Database(_))
        ));
        // The server was ready again before the error returned: the transaction is over and
        // its lock is free for any other session, and the connection is kept.
        assert_eq!(held.kept(), 1);
        assert_eq!(advisory_locks(&pool).await, 0);
        assert_eq!(backend_pid(&held).await, first);
        assert!(matches!(
            held.execute(refused, &[]).await,
            Err(sqlx::Error::Database(_))
        ));
        assert_eq!(held.kept(), 1);
        assert_eq!(advisory_locks(&pool).await, 0);
        assert_eq!(backend_pid(&held).await, first);
        teardown(db, pool, held).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_left_mid_statement_goes_back_to_the_pool() {
        let (db, pool, held) = setup(2).await;
        backend_pid(&held).await;
        assert_eq!(held.kept(), 1);
        // The server sleeps far longer than the caller waits: the caller always leaves first.
        let left = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            held.fetch_all("SELECT pg_sleep(0.5)", &[]),
        )
        .await;
        assert!(
            left.is_err(),
            "the statement answered before the caller left"
        );
        assert_eq!(held.kept(), 0);
        // The next statement gets a connection from the pool (tested there) and keeps it.
        backend_pid(&held).await;
        assert_eq!(held.kept(), 1);
        teardown(db, pool, held).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_more_than_keep_are_kept_and_none_with_keep_zero() {
        let (db, pool, held) = setup(3).await;
        // Two statements at once hold two connections; one is kept when both are done.
        let a = held.take().await.unwrap();
        let b = held.take().await.unwrap();
        held.keep(a);
        held.keep(b);
        assert_eq!(held.kept(), 1);
        backend_pid(&held).await;
        assert_eq!(held.kept(), 1);
        let none = Held::new(pool.clone(), 0);
        backend_pid(&none).await;
        assert_eq!(none.kept(), 0);
        drop(none);
        teardown(db, pool, held).await;
    }

    #[test]
    fn kept_connections_are_closed_when_dropped_outside_a_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (db, pool, held) = runtime.block_on(async {
            let parts = setup(2).await;
            backend_pid(&parts.2).await;
            parts
        });
        assert_eq!(held.kept(), 1);
        // The pool would spawn a task to take it back; with no runtime here that panicked.
        drop(held);
        runtime.block_on(async {
            assert_eq!(pool.size(), 0, "the kept connection left the pool's count");
            pool.close().await;
            db.close().await;
        });
    }
}
