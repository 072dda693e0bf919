//! [`SqlStore`]: the [`crate::Store`] on SQLite or PostgreSQL: opening it (migrations, the
//! keyring, the SQLite writer), backups and subscriber leadership. The operations live
//! by concern in `jobs`, `intake`, `dead_letters`, `keys` and `audit_log`, each written once
//! over the transaction API of `tx`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use field_crypto::{Keyring, MasterKey};
use parking_lot::RwLock;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

use crate::error::{Error, Result};
use crate::jobs::{ClaimKind, advance_sql, claim_sql, rated_claim_sql, renew_sql};
use crate::lock::ProcessLock;
use crate::sqlite_writer::SqliteWriter;
use crate::tx::{Arg, Row};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The job statements that differ by backend (they read the database's clock).
pub(crate) struct JobSql {
    /// The claim statements (pending, expired).
    pub(crate) claim: [Arc<str>; 2],
    /// The same claims taking a slot of the customer's shared rate with them (PostgreSQL
    /// only: SQLite has no data-modifying CTEs).
    pub(crate) claim_rated: Option<[Arc<str>; 2]>,
    /// Lease renewal.
    pub(crate) renew: Arc<str>,
    /// Recording a recovery point (and an intent).
    pub(crate) advance: Arc<str>,
}

/// Where the store reads "now" in its job statements (see [`StoreClock`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NowSource {
    /// The caller's `now`, bound as a parameter.
    Caller,
    /// PostgreSQL's `statement_timestamp()`.
    Postgres,
}

/// Which database a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file (one process).
    Sqlite,
    /// A PostgreSQL server (several instances).
    Postgres,
}

/// Tuning of a [`SqlStore`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Connections to PostgreSQL (readers on SQLite; SQLite has one writer connection). On
    /// PostgreSQL the batches of fenced job writes use one more, of their own, and up to half
    /// of these wait between lone statements (a claim, a write) instead of going back to the
    /// pool, which would test each with a round trip (at least 2 in all).
    pub max_connections: u32,
    /// How long to wait for a connection or a SQLite lock.
    pub acquire_timeout: Duration,
    /// Apply migrations on open (`provisioner run` does; `provisioner migrate` does it alone).
    pub migrate: bool,
    /// SQLite: hold the one-process lock (the service). Short operator commands open without
    /// it, so they work next to a running service; writes then wait on SQLite's busy timeout.
    pub exclusive: bool,
    /// Whose clock judges lease expiry, due times and intent times.
    pub clock: StoreClock,
}

/// Whose clock the store judges lease expiry, due jobs and intent times by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreClock {
    /// The database's: PostgreSQL's own clock, so instances whose clocks disagree agree on
    /// when a lease ends; on SQLite (one process, this machine) the `now` the caller passes.
    /// What a service uses.
    #[default]
    Database,
    /// The `now` the caller passes, on every backend: for tests and simulations that run the
    /// store on a clock of their own. Never for instances sharing a PostgreSQL database.
    Caller,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            migrate: true,
            exclusive: true,
            clock: StoreClock::Database,
        }
    }
}

/// Holds the subscriber leadership while alive (see [`crate::Store::try_lead`]).
pub struct Leadership {
    conn: Option<AnyConnection>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("session_lock", &self.conn.is_some())
            .finish()
    }
}

impl Leadership {
    /// Leadership that needs no lock (a single SQLite process, or tests).
    pub fn local() -> Self {
        Leadership { conn: None }
    }

    /// Whether it is still held: the PostgreSQL session holding the advisory lock is alive.
    pub async fn is_held(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(conn) => conn.ping().await.is_ok(),
        }
    }
}

/// The SQL store.
pub struct SqlStore {
    backend: Backend,
    writer: AnyPool,
    reader: AnyPool,
    pub(crate) keyring: RwLock<Arc<Keyring>>,
    pub(crate) master: Arc<MasterKey>,
    audit_key: audit::AuditKey,
    /// PostgreSQL: each audit chain's head as this process last committed or read it (`None`:
    /// read it first). Held from sealing until the commit; the `audit_log (chain, seq)`
    /// primary key catches a head that another process moved (the unit then re-reads the head
    /// and seals again). On SQLite the writer keeps the one chain's head instead.
    pub(crate) audit_heads: crate::tx::Heads,
    /// The chain the next unit that finds every chain taken waits for.
    pub(crate) next_waited_chain: std::sync::atomic::AtomicU32,
    /// PostgreSQL: per chain, until when (ms after `chain_clock`) this process tries it only
    /// after the others, because another session (another instance) was found holding it.
    /// Instances so settle on chains of their own instead of each trying every chain another
    /// one holds, a round trip each.
    pub(crate) chain_elsewhere_until: Arc<Vec<std::sync::atomic::AtomicU64>>,
    /// The time base of `chain_elsewhere_until`.
    pub(crate) chain_clock: std::time::Instant,
    /// Where this process starts trying audit chains after chain 0 (random, in
    /// `1..POSTGRES_AUDIT_CHAINS`; see `tx::scan_order`).
    pub(crate) chain_scan_offset: u32,
    /// Time units spent waiting for an audit chain or sealing again after another process
    /// moved its head (µs).
    pub(crate) serialized_micros: Arc<std::sync::atomic::AtomicU64>,
    /// When a claim next looks for expired leases first (Unix ms).
    pub(crate) next_expired_scan: AtomicI64,
    /// PostgreSQL: fenced job writes waiting to go to the database together
    /// ([`crate::batch`]).
    pub(crate) batcher: Arc<crate::batch::Batcher>,
    /// PostgreSQL: writer connections kept between lone statements (a claim, a unit in one
    /// statement), so they skip the pool's ping ([`crate::held`]). None kept on SQLite.
    pub(crate) held: crate::held::Held,
    /// The job statements that read the database's clock, built for this backend.
    pub(crate) job_sql: JobSql,
    /// Where those statements read "now".
    pub(crate) now_source: NowSource,
    /// SQLite: the thread that runs every write of the running store (declared before the
    /// process lock, so it has finished when the lock is released).
    pub(crate) sqlite: Option<SqliteWriter>,
    _lock: Option<ProcessLock>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

enum Target {
    Sqlite(PathBuf),
    Postgres(String),
}

fn parse_url(url: &str) -> Result<Target> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split(['?', '#']).next().unwrap_or_default();
        if path.is_empty() {
            return Err(Error::UnsupportedUrl {
                scheme: "sqlite:// without a path".to_owned(),
            });
        }
        return Ok(Target::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres(url.to_owned()));
    }
    let scheme = url.split(':').next().unwrap_or_default();
    Err(Error::UnsupportedUrl {
        scheme: scheme.chars().take(20).collect(),
    })
}

/// Where the database's schema stands against this build's migrations (see
/// [`migration_status`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Migrations of this build the database has applied.
    pub applied: usize,
    /// Migrations of this build it has not (`<version>_<description>`), oldest first.
    pub pending: Vec<String>,
}

/// Reads, without writing anything or creating a missing database, which of this build's
/// migrations the database at `url` has applied (for pre-flight checks; `provisioner migrate`
/// applies them).
///
/// # Errors
/// [`Error::UnsupportedUrl`], [`Error::Io`] when a SQLite file does not exist, and the
/// database's error when it cannot be opened or read.
pub async fn migration_status(url: &str) -> Result<MigrationStatus> {
    sqlx::any::install_default_drivers();
    let (conn_url, migrator) = match parse_url(url)? {
        Target::Sqlite(path) => {
            if !path.is_file() {
                return Err(Error::Io {
                    op: format!("opening {}", path.display()),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            (
                format!("sqlite://{}?mode=ro", path.display()),
                &SQLITE_MIGRATIONS,
            )
        }
        Target::Postgres(url) => (url, &POSTGRES_MIGRATIONS),
    };
    let mut conn = AnyConnection::connect(&conn_url)
        .await
        .map_err(Error::db("connecting to the database"))?;
    let applied: Vec<i64> =
        match sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut conn)
            .await
        {
            Ok(versions) => versions,
            // No migration table: nothing applied yet.
            Err(sqlx::Error::Database(_)) => Vec::new(),
            Err(e) => return Err(Error::db("reading the applied migrations")(e)),
        };
    let _ = conn.close().await;
    let mut status = MigrationStatus {
        applied: 0,
        pending: Vec::new(),
    };
    for migration in migrator.iter() {
        if applied.contains(&migration.version) {
            status.applied += 1;
        } else {
            status
                .pending
                .push(format!("{}_{}", migration.version, migration.description));
        }
    }
    Ok(status)
}

/// A stable 63-bit advisory lock key for a name (FNV-1a).
fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

/// How many writer connections the lone statements keep between them ([`crate::held`]): half
/// the pool on PostgreSQL, so transactions and reads keep the other half; none on SQLite,
/// whose sqlx writer pool has one connection (its hot writes go through the writer).
fn held_connections(backend: Backend, options: &StoreOptions) -> usize {
    match backend {
        Backend::Postgres => (postgres_pool_size(options) / 2) as usize,
        Backend::Sqlite => 0,
    }
}

/// The PostgreSQL pool's size: `max_connections`, at least 2.
fn postgres_pool_size(options: &StoreOptions) -> u32 {
    options.max_connections.max(2)
}

/// How long a SQLite write waits for a lock held by another connection (an operator command).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn sqlite_pragmas(
    conn: &mut AnyConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> futures::future::BoxFuture<'_, std::result::Result<(), sqlx::Error>> {
    Box::pin(async move {
        conn.execute(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
        )
        .await?;
        Ok(())
    })
}

/// Settings of every PostgreSQL connection of the store. No bitmap scans: every statement of
/// the store reads a few rows through an index, in index order where it has an `ORDER BY ...
/// LIMIT`; until a fresh or fast-growing `jobs` table has statistics (autovacuum analyzes it a
/// minute or more later), PostgreSQL takes it for a few rows and prefers a bitmap scan of
/// every due job plus a sort to the ordered walk of the claim that stops at the first
/// claimable job: 10-20 ms a claim instead of well under one.
///
/// Generic plans: every statement of the store is planned once per connection, not at each
/// execution. The fenced writes of several jobs go as one statement of many parts
/// ([`crate::batch`]), whose planning cost more than running it (300-700 µs) when PostgreSQL
/// kept planning it anew for the parameters; none of the store's statements has a parameter
/// whose value would change the best plan (times come from the database's clock or compare
/// to an indexed column, ids are unique). A server too old for the setting (before
/// PostgreSQL 12) keeps its default.
fn postgres_settings(
    conn: &mut AnyConnection,
    _meta: sqlx::pool::PoolConnectionMetadata,
) -> futures::future::BoxFuture<'_, std::result::Result<(), sqlx::Error>> {
    Box::pin(async move {
        conn.execute("SET enable_bitmapscan = off").await?;
        match conn
            .execute("SET plan_cache_mode = force_generic_plan")
            .await
        {
            Ok(_) | Err(sqlx::Error::Database(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    })
}

impl SqlStore {
    /// Opens (creating when missing) the database at `url`, applies migrations when asked, and
    /// loads the keyring — creating it on first use — with `master`.
    pub async fn open(url: &str, master: &MasterKey, options: StoreOptions) -> Result<Self> {
        // The master key is kept to persist a rotated keyring; it never leaves this crate.
        let master = Arc::new(master.clone());
        sqlx::any::install_default_drivers();
        let mut batch_pool = None;
        let (backend, writer, reader, lock, sqlite_path) = match parse_url(url)? {
            Target::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                        op: format!("creating directory {}", dir.display()),
                        source,
                    })?;
                }
                let lock = if options.exclusive {
                    Some(ProcessLock::acquire(&path)?)
                } else {
                    None
                };
                let conn_url = format!("sqlite://{}?mode=rwc", path.display());
                let opts: AnyConnectOptions = conn_url
                    .parse()
                    .map_err(Error::db("parsing the SQLite URL"))?;
                // No ping before each acquire: on SQLite every statement is a round trip to the
                // connection's worker thread, and a file does not go away like a socket.
                let writer = AnyPoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .acquire_timeout(options.acquire_timeout)
                    .after_connect(sqlite_pragmas)
                    .connect_with(opts.clone())
                    .await
                    .map_err(Error::db("opening the SQLite database"))?;
                let reader = AnyPoolOptions::new()
                    .max_connections(options.max_connections.clamp(1, 8))
                    .test_before_acquire(false)
                    .acquire_timeout(options.acquire_timeout)
                    .after_connect(sqlite_pragmas)
                    .connect_with(opts)
                    .await
                    .map_err(Error::db("opening the SQLite database"))?;
                (Backend::Sqlite, writer, reader, lock, Some(path))
            }
            Target::Postgres(url) => {
                let opts: AnyConnectOptions = url
                    .parse()
                    .map_err(Error::db("parsing the PostgreSQL URL"))?;
                // No ping before each acquire (it doubles the round trips of every statement): a
                // connection broken by a server restart fails its next statement instead, which
                // every caller already treats as a retryable store error, and is then dropped.
                let pool = AnyPoolOptions::new()
                    .max_connections(postgres_pool_size(&options))
                    .test_before_acquire(false)
                    .acquire_timeout(options.acquire_timeout)
                    .after_connect(postgres_settings)
                    .connect_with(opts.clone())
                    .await
                    .map_err(Error::db("connecting to PostgreSQL"))?;
                // The batches of fenced writes have a connection of their own per flusher,
                // opened when first needed: their statements (a text per mix of writes) are
                // prepared and planned there only, not on every pooled connection.
                batch_pool = Some(
                    AnyPoolOptions::new()
                        .max_connections(crate::batch::MAX_FLUSHERS)
                        .test_before_acquire(false)
                        .acquire_timeout(options.acquire_timeout)
                        .after_connect(postgres_settings)
                        .connect_lazy_with(opts),
                );
                (Backend::Postgres, pool.clone(), pool, None, None)
            }
        };
        let now_source = match (backend, options.clock) {
            (Backend::Postgres, StoreClock::Database) => NowSource::Postgres,
            _ => NowSource::Caller,
        };
        if options.migrate {
            let migrator = match backend {
                Backend::Sqlite => &SQLITE_MIGRATIONS,
                Backend::Postgres => &POSTGRES_MIGRATIONS,
            };
            migrator.run(&writer).await?;
        }
        let keyring = crate::keys::load_or_create(&writer, backend, &master).await?;
        let audit_key = audit::AuditKey::from_bytes(
            secrecy::ExposeSecret::expose_secret(&keyring.derive_mac_key("audit-chain")).as_slice(),
        )
        .map_err(|e| Error::Corrupt {
            what: "audit key",
            reason: e.to_string(),
        })?;
        if backend == Backend::Postgres {
            // The series exists from the start (0 until a write ever waits).
            metrics::gauge!(crate::tx::SERIALIZED_SECONDS).set(0.0);
        }
        let sqlite = sqlite_path
            .map(|path| SqliteWriter::start(&path, SQLITE_BUSY_TIMEOUT, audit_key.clone()))
            .transpose()?;
        // SQLite has one audit chain (its writer keeps it); PostgreSQL several.
        let chains = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => crate::tx::POSTGRES_AUDIT_CHAINS,
        };
        let held = crate::held::Held::new(writer.clone(), held_connections(backend, &options));
        Ok(SqlStore {
            backend,
            writer,
            reader,
            keyring: RwLock::new(Arc::new(keyring)),
            master,
            audit_key,
            audit_heads: Arc::new(
                (0..chains)
                    .map(|_| Arc::new(tokio::sync::Mutex::new(None)))
                    .collect(),
            ),
            next_waited_chain: std::sync::atomic::AtomicU32::new(0),
            chain_elsewhere_until: Arc::new(
                (0..chains)
                    .map(|_| std::sync::atomic::AtomicU64::new(0))
                    .collect(),
            ),
            chain_clock: std::time::Instant::now(),
            chain_scan_offset: {
                use std::hash::{BuildHasher as _, Hasher as _};
                // A random number without a dependency: a fresh `RandomState` is seeded anew.
                let random = std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish();
                let others = u64::from(crate::tx::POSTGRES_AUDIT_CHAINS.saturating_sub(1)).max(1);
                u32::try_from(1 + random % others).unwrap_or(1)
            },
            serialized_micros: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            next_expired_scan: AtomicI64::new(0),
            batcher: Arc::new(crate::batch::Batcher::new(batch_pool)),
            held,
            job_sql: JobSql {
                claim: [
                    claim_sql(ClaimKind::Pending, backend, now_source).into(),
                    claim_sql(ClaimKind::Expired, backend, now_source).into(),
                ],
                claim_rated: (backend == Backend::Postgres).then(|| {
                    [
                        rated_claim_sql(ClaimKind::Pending, backend, now_source).into(),
                        rated_claim_sql(ClaimKind::Expired, backend, now_source).into(),
                    ]
                }),
                renew: renew_sql(now_source).into(),
                advance: advance_sql(now_source).into(),
            },
            now_source,
            sqlite,
            _lock: lock,
        })
    }

    pub(crate) fn writer(&self) -> &AnyPool {
        &self.writer
    }

    pub(crate) fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The current keyring (shared; rotation swaps in a new one).
    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read())
    }

    /// The audit chain key (derived from the keyring's MAC root).
    pub fn audit_key(&self) -> &audit::AuditKey {
        &self.audit_key
    }

    /// How long this process's writes have spent at a point every instance of the database
    /// shares: waiting for an audit chain (all of them taken) or sealing again because another
    /// process had moved a chain's head. PostgreSQL only (SQLite's single writer is that
    /// point by design, and is not counted). The binary exports it as
    /// `provisioner_store_serialized_seconds`.
    pub fn serialized_time(&self) -> std::time::Duration {
        std::time::Duration::from_micros(
            self.serialized_micros
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Writes a consistent copy of the SQLite database at `url` to `path` with `VACUUM INTO`,
    /// without taking the process lock, so it works while the service runs (SQLite readers do
    /// not block the writer in WAL mode). PostgreSQL is backed up with `pg_dump` instead.
    pub async fn backup_sqlite(url: &str, path: &std::path::Path) -> Result<()> {
        let Target::Sqlite(db) = parse_url(url)? else {
            return Err(Error::UnsupportedUrl {
                scheme: "backup of postgres (use pg_dump)".to_owned(),
            });
        };
        if !db.exists() {
            return Err(Error::Io {
                op: format!("database {} does not exist", db.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        if path.exists() {
            return Err(Error::Io {
                op: format!("backup target {} already exists", path.display()),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        sqlx::any::install_default_drivers();
        let opts: AnyConnectOptions = format!("sqlite://{}?mode=ro", db.display())
            .parse()
            .map_err(Error::db("parsing the SQLite URL"))?;
        let mut conn = AnyConnection::connect_with(&opts)
            .await
            .map_err(Error::db("opening the database for backup"))?;
        conn.execute("PRAGMA busy_timeout = 10000")
            .await
            .map_err(Error::db("backup: busy timeout"))?;
        sqlx::query("VACUUM INTO $1")
            .bind(path.display().to_string())
            .execute(&mut conn)
            .await
            .map_err(Error::db("writing the backup"))?;
        let _ = conn.close().await;
        Ok(())
    }

    /// Writes a consistent copy of this store's SQLite database to `path` (`VACUUM INTO`).
    /// PostgreSQL is backed up with `pg_dump` instead.
    pub async fn backup_to(&self, path: &std::path::Path) -> Result<()> {
        if self.backend != Backend::Sqlite {
            return Err(Error::UnsupportedUrl {
                scheme: "backup of postgres (use pg_dump)".to_owned(),
            });
        }
        if path.exists() {
            return Err(Error::Io {
                op: format!("backup target {} already exists", path.display()),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        sqlx::query("VACUUM INTO $1")
            .bind(path.display().to_string())
            .execute(&self.writer)
            .await
            .map_err(Error::db("writing the backup"))?;
        Ok(())
    }
}

impl SqlStore {
    pub(crate) async fn lead(&self, name: &str) -> Result<Option<Leadership>> {
        match self.backend {
            Backend::Sqlite => Ok(Some(Leadership::local())),
            Backend::Postgres => {
                let mut conn = self
                    .writer
                    .acquire()
                    .await
                    .map_err(Error::db("leadership: acquire"))?
                    .detach();
                let row = crate::tx::sqlx_query(
                    "SELECT pg_try_advisory_lock($1) AS held",
                    &[Arg::Int(lock_key(name))],
                )
                .fetch_one(&mut conn)
                .await
                .map_err(Error::db("leadership: advisory lock"))?;
                let held = Row::from_any(&row)
                    .map_err(Error::db("leadership: advisory lock"))?
                    .int("held", "advisory lock")?
                    == Some(1);
                if held {
                    Ok(Some(Leadership { conn: Some(conn) }))
                } else {
                    let _ = conn.close().await;
                    Ok(None)
                }
            }
        }
    }
}
