//! [`SqlStore`]: the [`Store`] on SQLite or PostgreSQL through sqlx's `Any` driver, with one
//! SQL text for both where the dialects agree.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use field_crypto::{FieldContext, KeyId, Keyring, MasterKey, StoredKeyring};
use parking_lot::RwLock;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};

use crate::error::{Error, Result};
use crate::lock::ProcessLock;
use crate::sqlite_writer::{self, FromSqlite, SqliteWriter};
use crate::types::{
    Checkpoint, DeadLetter, DeadLetterState, InboxEvent, IngestOutcome, Job, JobCounts, JobSource,
    JobState, NewDeadLetter, NewJob, Step, StepUpdate, from_ms, ms,
};
use crate::{DEAD_LETTER_PAYLOAD_KIND, Store};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

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
    /// Connections to PostgreSQL (readers on SQLite; SQLite has one writer connection).
    pub max_connections: u32,
    /// How long to wait for a connection or a SQLite lock.
    pub acquire_timeout: Duration,
    /// Apply migrations on open (`provisioner run` does; `provisioner migrate` does it alone).
    pub migrate: bool,
    /// SQLite: hold the one-process lock (the service). Short operator commands open without
    /// it, so they work next to a running service; writes then wait on SQLite's busy timeout.
    pub exclusive: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            migrate: true,
            exclusive: true,
        }
    }
}

/// Holds the subscriber leadership while alive (see [`Store::try_lead`]).
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
    keyring: RwLock<Arc<Keyring>>,
    master: Arc<MasterKey>,
    audit_key: audit::AuditKey,
    /// PostgreSQL: the audit chain head as this process last wrote or read it (`None`: read it
    /// first). Appends are serialised by this mutex; the `audit_log.seq` primary key catches a
    /// head that another process moved (the append then re-reads the head and seals again).
    /// On SQLite the writer thread keeps the head instead.
    pub(crate) audit_head: tokio::sync::Mutex<Option<audit::ChainHead>>,
    /// Records waiting to be appended (group commit: whoever holds `audit_head` next writes
    /// every waiting record in one statement).
    pub(crate) audit_queue: crate::audit_log::AuditQueue,
    /// When a claim next looks for expired leases first (Unix ms).
    next_expired_scan: AtomicI64,
    /// The claim statements (pending, expired) for this backend.
    claim_sql: [Arc<str>; 2],
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

const JOB_COLS: &str = "seq, order_id, customer_number, account_id, event_id, source, state, step, \
    whmcs_order_id, service_ids, attempts, next_attempt_at, lease_owner, lease_until, last_error, \
    created_at, updated_at";

const DL_COLS: &str = "id, topic, event_id, replay_id, order_id, reason, payload, attempts, state, created_at, updated_at";

fn col<'r, T>(row: &'r AnyRow, name: &'static str, what: &'static str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(name).map_err(|e| Error::Corrupt {
        what,
        reason: format!("column {name}: {e}"),
    })
}

/// A result row of either driver (sqlx on PostgreSQL and for reads, rusqlite on the SQLite
/// writer), so rows decode in one place.
trait Columns {
    fn int(&self, name: &'static str, what: &'static str) -> Result<Option<i64>>;
    fn text(&self, name: &'static str, what: &'static str) -> Result<Option<String>>;
}

impl Columns for AnyRow {
    fn int(&self, name: &'static str, what: &'static str) -> Result<Option<i64>> {
        col(self, name, what)
    }

    fn text(&self, name: &'static str, what: &'static str) -> Result<Option<String>> {
        col(self, name, what)
    }
}

impl Columns for rusqlite::Row<'_> {
    fn int(&self, name: &'static str, what: &'static str) -> Result<Option<i64>> {
        self.get(name).map_err(|e| Error::Corrupt {
            what,
            reason: format!("column {name}: {e}"),
        })
    }

    fn text(&self, name: &'static str, what: &'static str) -> Result<Option<String>> {
        self.get(name).map_err(|e| Error::Corrupt {
            what,
            reason: format!("column {name}: {e}"),
        })
    }
}

fn required<T>(value: Option<T>, name: &'static str, what: &'static str) -> Result<T> {
    value.ok_or_else(|| Error::Corrupt {
        what,
        reason: format!("column {name} is NULL"),
    })
}

fn job_from_row(row: &impl Columns) -> Result<Job> {
    const W: &str = "job";
    let int = |name| required(row.int(name, W)?, name, W);
    let text = |name| required(row.text(name, W)?, name, W);
    Ok(Job {
        seq: int("seq")?,
        order_id: text("order_id")?,
        customer_number: text("customer_number")?,
        account_id: row.text("account_id", W)?,
        event_id: row.text("event_id", W)?,
        source: JobSource::parse(&text("source")?)?,
        state: JobState::parse(&text("state")?)?,
        step: Step::parse(&text("step")?)?,
        whmcs_order_id: row.text("whmcs_order_id", W)?,
        service_ids: row
            .text("service_ids", W)?
            .filter(|s| !s.is_empty())
            .map(|s| s.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        attempts: u32::try_from(int("attempts")?).unwrap_or(u32::MAX),
        next_attempt_at: from_ms(W, int("next_attempt_at")?)?,
        lease_owner: row.text("lease_owner", W)?,
        lease_until: row
            .int("lease_until", W)?
            .map(|v| from_ms(W, v))
            .transpose()?,
        last_error: row.text("last_error", W)?,
        created_at: from_ms(W, int("created_at")?)?,
        updated_at: from_ms(W, int("updated_at")?)?,
    })
}

fn dead_letter_from_row(row: &AnyRow) -> Result<DeadLetter> {
    const W: &str = "dead letter";
    let payload: Option<String> = col(row, "payload", W)?;
    let attempts: i64 = col(row, "attempts", W)?;
    Ok(DeadLetter {
        id: col(row, "id", W)?,
        topic: col(row, "topic", W)?,
        event_id: col(row, "event_id", W)?,
        replay_id: col(row, "replay_id", W)?,
        order_id: col(row, "order_id", W)?,
        reason: col(row, "reason", W)?,
        has_payload: payload.is_some(),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        state: DeadLetterState::parse(&col::<String>(row, "state", W)?)?,
        created_at: from_ms(W, col(row, "created_at", W)?)?,
        updated_at: from_ms(W, col(row, "updated_at", W)?)?,
    })
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

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl SqlStore {
    /// Opens (creating when missing) the database at `url`, applies migrations when asked, and
    /// loads the keyring — creating it on first use — with `master`.
    pub async fn open(url: &str, master: &MasterKey, options: StoreOptions) -> Result<Self> {
        // The master key is kept to persist a rotated keyring; it never leaves this crate.
        let master = Arc::new(master.clone());
        sqlx::any::install_default_drivers();
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
                    .max_connections(options.max_connections.max(2))
                    .test_before_acquire(false)
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(opts)
                    .await
                    .map_err(Error::db("connecting to PostgreSQL"))?;
                (Backend::Postgres, pool.clone(), pool, None, None)
            }
        };
        if options.migrate {
            let migrator = match backend {
                Backend::Sqlite => &SQLITE_MIGRATIONS,
                Backend::Postgres => &POSTGRES_MIGRATIONS,
            };
            migrator.run(&writer).await?;
        }
        let keyring = Self::load_or_create_keyring(&writer, &master).await?;
        let audit_key = audit::AuditKey::from_bytes(
            secrecy::ExposeSecret::expose_secret(&keyring.derive_mac_key("audit-chain")).as_slice(),
        )
        .map_err(|e| Error::Corrupt {
            what: "audit key",
            reason: e.to_string(),
        })?;
        let sqlite = sqlite_path
            .map(|path| SqliteWriter::start(&path, SQLITE_BUSY_TIMEOUT, audit_key.clone()))
            .transpose()?;
        let lock_clause = match backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        Ok(SqlStore {
            backend,
            writer,
            reader,
            keyring: RwLock::new(Arc::new(keyring)),
            master,
            audit_key,
            audit_head: tokio::sync::Mutex::new(None),
            audit_queue: crate::audit_log::AuditQueue::default(),
            next_expired_scan: AtomicI64::new(0),
            claim_sql: [
                claim_sql(ClaimKind::Pending, lock_clause).into(),
                claim_sql(ClaimKind::Expired, lock_clause).into(),
            ],
            sqlite,
            _lock: lock,
        })
    }
}

impl SqlStore {
    async fn load_or_create_keyring(pool: &AnyPool, master: &MasterKey) -> Result<Keyring> {
        if let Some(stored) = Self::read_keyring(pool).await? {
            return Ok(Keyring::open(master, &stored)?);
        }
        let fresh = Keyring::create(master, Utc::now())?;
        let json = serde_json::to_string(&fresh.to_stored()).map_err(|e| Error::Corrupt {
            what: "keyring",
            reason: e.to_string(),
        })?;
        // Two instances starting at once: the first insert wins, the other reads it back.
        sqlx::query(
            "INSERT INTO keyring (id, stored, updated_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(json)
        .bind(ms(Utc::now()))
        .execute(pool)
        .await
        .map_err(Error::db("storing the new keyring"))?;
        let stored = Self::read_keyring(pool)
            .await?
            .ok_or_else(|| Error::Corrupt {
                what: "keyring",
                reason: "missing right after it was stored".to_owned(),
            })?;
        Ok(Keyring::open(master, &stored)?)
    }

    async fn read_keyring<'e, E>(executor: E) -> Result<Option<StoredKeyring>>
    where
        E: Executor<'e, Database = sqlx::Any>,
    {
        let row = sqlx::query("SELECT stored FROM keyring WHERE id = 1")
            .fetch_optional(executor)
            .await
            .map_err(Error::db("reading the keyring"))?;
        row.map(|row| {
            let json: String = col(&row, "stored", "keyring")?;
            serde_json::from_str(&json).map_err(|e| Error::Corrupt {
                what: "keyring",
                reason: e.to_string(),
            })
        })
        .transpose()
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

    /// Re-reads the keyring from the database (another instance may have rotated it).
    pub async fn reload_keyring(&self) -> Result<()> {
        if let Some(stored) = Self::read_keyring(&self.reader).await? {
            let ring = Keyring::open(&self.master, &stored)?;
            *self.keyring.write() = Arc::new(ring);
        }
        Ok(())
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

    /// How a read-then-write transaction on the sqlx pool begins: on SQLite it takes the write
    /// lock up front (waiting on the busy timeout), where a deferred transaction could fail to
    /// upgrade its read after the writer thread committed.
    pub(crate) fn begin_write(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }

    /// Runs one writing statement (the SQLite writer thread, or the PostgreSQL pool); returns
    /// the number of rows it changed.
    async fn write(&self, op: &'static str, sql: &'static str, args: Vec<Arg>) -> Result<u64> {
        match &self.sqlite {
            Some(writer) => {
                writer
                    .call(op, move |st| sqlite_exec(&st.conn, op, sql, &args))
                    .await
            }
            None => {
                let done = sqlx_query(sql, args)
                    .execute(&self.writer)
                    .await
                    .map_err(Error::db(op))?;
                Ok(done.rows_affected())
            }
        }
    }

    /// [`SqlStore::write`] of a statement fenced by the job's lease: no row changed means
    /// another worker holds the job now.
    async fn fenced(
        &self,
        op: &'static str,
        order_id: &str,
        owner: &str,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<()> {
        if self.write(op, sql, args).await? == 1 {
            Ok(())
        } else {
            Err(Error::LeaseLost {
                order_id: order_id.to_owned(),
                owner: owner.to_owned(),
            })
        }
    }

    fn encrypt_payload(&self, id: &str, payload: &[u8]) -> Result<String> {
        let ctx = FieldContext::new(DEAD_LETTER_PAYLOAD_KIND, id)?;
        Ok(self.keyring().encrypt(&ctx, payload)?)
    }
}

/// A statement parameter, typed even when NULL (PostgreSQL needs the type of a NULL).
#[derive(Clone, Debug)]
enum Arg {
    Int(i64),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

impl Arg {
    fn text(v: impl Into<String>) -> Arg {
        Arg::Text(Some(v.into()))
    }
}

impl rusqlite::ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Arg::Int(v) => v.to_sql(),
            Arg::Text(v) => v.to_sql(),
            Arg::Blob(v) => v.to_sql(),
        }
    }
}

/// How often a claim looks for expired leases before pending jobs.
const EXPIRED_SCAN_EVERY_MS: i64 = 500;

#[derive(Clone, Copy)]
#[repr(usize)]
enum ClaimKind {
    /// The oldest due pending job whose customer has nothing running or waiting before it.
    Pending = 0,
    /// A running job whose lease expired (its worker died or stalled).
    Expired = 1,
}

/// The claim statement of `kind`: `UPDATE ... WHERE order_id = (SELECT ... LIMIT 1)
/// RETURNING`, so a claim is a single statement. `$1` owner, `$2` lease end, `$3` now (ms).
fn claim_sql(kind: ClaimKind, lock_clause: &str) -> String {
    let candidate = match kind {
        ClaimKind::Pending => {
            "j.state = 'pending' AND j.next_attempt_at <= $3 \
             AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.customer_number = j.customer_number \
                 AND e.seq < j.seq AND e.state IN ('pending', 'running')) \
             AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.customer_number = j.customer_number \
                 AND r.state = 'running')"
        }
        ClaimKind::Expired => "j.state = 'running' AND j.lease_until < $3",
    };
    format!(
        "UPDATE jobs SET state = 'running', lease_owner = $1, lease_until = $2, updated_at = $3 \
         WHERE order_id = (SELECT j.order_id FROM jobs j WHERE {candidate} \
             ORDER BY j.next_attempt_at, j.seq LIMIT 1{lock_clause}) \
           AND (state = 'pending' OR (state = 'running' AND lease_until < $3)) \
         RETURNING {JOB_COLS}"
    )
}

impl SqlStore {
    /// Claims one job of `kind` in one statement.
    async fn claim_kind(
        &self,
        kind: ClaimKind,
        owner: &str,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Option<Job>> {
        let sql = &self.claim_sql[kind as usize];
        let until = now_ms.saturating_add(lease_ms(lease));
        if let Some(writer) = &self.sqlite {
            let (sql, owner) = (Arc::clone(sql), owner.to_owned());
            return writer
                .call("claiming a job", move |st| {
                    let claimed = sqlite_writer::query_opt(
                        &st.conn,
                        &sql,
                        &[&owner, &until, &now_ms],
                        |row| job_from_row(row),
                    );
                    match claimed {
                        // Another worker got a job of this customer running first.
                        Err(Error::Sqlite { source, .. })
                            if sqlite_writer::is_unique_violation(&source) =>
                        {
                            Ok(None)
                        }
                        other => other,
                    }
                })
                .await;
        }
        let claimed = match sqlx::query(sql)
            .bind(owner)
            .bind(until)
            .bind(now_ms)
            .fetch_optional(&self.writer)
            .await
        {
            Ok(row) => row,
            // Another worker got a job of this customer running first: nothing to claim now.
            Err(e) if is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(Error::db("claiming a job")(e)),
        };
        claimed.map(|row| job_from_row(&row)).transpose()
    }
}

const SQL_INSERT_JOB: &str = "INSERT INTO jobs (order_id, customer_number, account_id, event_id, \
     source, state, step, attempts, next_attempt_at, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, 'pending', 'received', 0, $6, $6, $6) \
     ON CONFLICT (order_id) DO NOTHING";

const SQL_INSERT_INBOX: &str = "INSERT INTO inbox (event_id, topic, replay_id, order_id, outcome, \
     received_at) VALUES ($1, $2, $3, $4, 'enqueued', $5) ON CONFLICT (event_id) DO NOTHING";

const SQL_INBOX_DUPLICATE_ORDER: &str =
    "UPDATE inbox SET outcome = 'duplicate_order' WHERE event_id = $1";

const SQL_UPSERT_CHECKPOINT: &str = "INSERT INTO checkpoints (topic, replay_id, updated_at) \
     VALUES ($1, $2, $3) ON CONFLICT (topic) DO UPDATE SET replay_id = excluded.replay_id, \
     updated_at = excluded.updated_at";

const SQL_INSERT_DEAD_LETTER: &str = "INSERT INTO dead_letters (id, topic, event_id, replay_id, \
     order_id, reason, payload, attempts, state, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'open', $9, $9)";

fn job_args(job: &NewJob, now: DateTime<Utc>) -> Vec<Arg> {
    vec![
        Arg::text(job.order_id.as_str()),
        Arg::text(job.customer_number.as_str()),
        Arg::Text(job.account_id.clone()),
        Arg::Text(job.event_id.clone()),
        Arg::text(job.source.as_str()),
        Arg::Int(ms(now)),
    ]
}

fn event_job(event: &InboxEvent) -> NewJob {
    NewJob {
        order_id: event.order_id.clone(),
        customer_number: event.customer_number.clone(),
        account_id: event.account_id.clone(),
        event_id: Some(event.event_id.clone()),
        source: JobSource::Event,
    }
}

fn inbox_args(event: &InboxEvent, now: DateTime<Utc>) -> Vec<Arg> {
    vec![
        Arg::text(event.event_id.as_str()),
        Arg::text(event.topic.as_str()),
        Arg::Blob(Some(event.replay_id.clone())),
        Arg::text(event.order_id.as_str()),
        Arg::Int(ms(now)),
    ]
}

fn checkpoint_args(cp: &Checkpoint, now: DateTime<Utc>) -> Vec<Arg> {
    vec![
        Arg::text(cp.topic.as_str()),
        Arg::Blob(Some(cp.replay_id.clone())),
        Arg::Int(ms(now)),
    ]
}

/// The checkpoint each topic of a batch moves to: its last event's replay id.
fn batch_checkpoints(events: &[InboxEvent]) -> Vec<Checkpoint> {
    let mut last: Vec<Checkpoint> = Vec::new();
    for event in events {
        match last.iter_mut().find(|cp| cp.topic == event.topic) {
            Some(cp) => cp.replay_id.clone_from(&event.replay_id),
            None => last.push(Checkpoint {
                topic: event.topic.clone(),
                replay_id: event.replay_id.clone(),
            }),
        }
    }
    last
}

/// `sql` with `args` bound, for sqlx.
fn sqlx_query(
    sql: &'static str,
    args: Vec<Arg>,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments<'static>> {
    let mut query = sqlx::query(sql);
    for arg in args {
        query = match arg {
            Arg::Int(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
            Arg::Blob(v) => query.bind(v),
        };
    }
    query
}

/// Executes `sql` with `args` inside an open sqlx transaction; returns the rows changed.
async fn tx_exec(
    tx: &mut AnyConnection,
    op: &'static str,
    sql: &'static str,
    args: Vec<Arg>,
) -> Result<u64> {
    Ok(sqlx_query(sql, args)
        .execute(tx)
        .await
        .map_err(Error::db(op))?
        .rows_affected())
}

/// Executes `sql` with `args` on the SQLite writer's connection; returns the rows changed.
fn sqlite_exec(
    conn: &rusqlite::Connection,
    op: &'static str,
    sql: &'static str,
    args: &[Arg],
) -> Result<u64> {
    let refs: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a as &dyn rusqlite::ToSql).collect();
    sqlite_writer::exec(conn, sql, &refs)
        .map(|n| n as u64)
        .map_err(|e| Error::from_sqlite(op, e))
}

/// Stores one event, statement by statement, for either driver (`|op, sql, args| call` runs
/// one statement and evaluates to the rows it changed): the inbox row first (its primary key
/// recognises a duplicate event), then the job unless the order has one, so the common case is
/// two statements per event.
macro_rules! ingest_one {
    ($event:expr, $now:expr, |$op:ident, $sql:ident, $args:ident| $call:expr) => {{
        let (event, now): (&InboxEvent, DateTime<Utc>) = ($event, $now);
        let stored: u64 = {
            let ($op, $sql, $args) = ("ingest: inbox", SQL_INSERT_INBOX, inbox_args(event, now));
            $call
        };
        let created: u64 = if stored == 1 {
            let ($op, $sql, $args) = (
                "ingest: job",
                SQL_INSERT_JOB,
                job_args(&event_job(event), now),
            );
            $call
        } else {
            0
        };
        if stored != 1 {
            IngestOutcome::DuplicateEvent
        } else if created == 1 {
            IngestOutcome::Enqueued
        } else {
            let ($op, $sql, $args) = (
                "ingest: inbox outcome",
                SQL_INBOX_DUPLICATE_ORDER,
                vec![Arg::text(event.event_id.as_str())],
            );
            $call;
            IngestOutcome::DuplicateOrder
        }
    }};
}

const SQL_RENEW: &str = "UPDATE jobs SET lease_until = $1 \
     WHERE order_id = $2 AND lease_owner = $3 AND state = 'running'";

const SQL_ADVANCE: &str = "UPDATE jobs SET step = $1, whmcs_order_id = COALESCE($2, whmcs_order_id), \
     service_ids = COALESCE($3, service_ids), updated_at = $4 \
     WHERE order_id = $5 AND lease_owner = $6 AND state = 'running'";

const SQL_RESCHEDULE: &str = "UPDATE jobs SET state = 'pending', lease_owner = NULL, \
     lease_until = NULL, next_attempt_at = $1, last_error = COALESCE($2, last_error), \
     attempts = attempts + $3, updated_at = $4 \
     WHERE order_id = $5 AND lease_owner = $6 AND state = 'running'";

const SQL_FINISH: &str = "UPDATE jobs SET state = $1, lease_owner = NULL, lease_until = NULL, \
     last_error = $2, step = CASE WHEN $1 = 'done' THEN 'done' ELSE step END, \
     attempts = attempts + 1, updated_at = $3 \
     WHERE order_id = $4 AND lease_owner = $5 AND state = 'running'";

const SQL_RELEASE: &str = "UPDATE jobs SET state = 'pending', lease_owner = NULL, \
     lease_until = NULL, updated_at = $1 \
     WHERE order_id = $2 AND lease_owner = $3 AND state = 'running'";

const SQL_REQUEUE_FAILED: &str = "UPDATE jobs SET state = 'pending', attempts = 0, \
     next_attempt_at = $1, last_error = NULL, updated_at = $1 \
     WHERE order_id = $2 AND state = 'failed'";

const SQL_TAKE_OVER_LEASES: &str = "UPDATE jobs SET state = 'pending', lease_owner = NULL, \
     lease_until = NULL, updated_at = $1 WHERE state = 'running'";

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(Error::db("ping"))?;
        Ok(())
    }

    async fn ingest_event(&self, event: &InboxEvent, now: DateTime<Utc>) -> Result<IngestOutcome> {
        let mut outcomes = self.ingest_events(std::slice::from_ref(event), now).await?;
        outcomes.pop().ok_or(Error::Corrupt {
            what: "ingest",
            reason: "no outcome for the event".to_owned(),
        })
    }

    async fn ingest_events(
        &self,
        events: &[InboxEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<IngestOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // The checkpoint of every topic in the batch moves to its last event (one topic in
        // practice), in the same transaction as the events it passes.
        let checkpoints = batch_checkpoints(events);
        if let Some(writer) = &self.sqlite {
            let events = events.to_vec();
            return writer
                .call("ingest", move |st| {
                    let mut outcomes = Vec::with_capacity(events.len());
                    for event in &events {
                        outcomes.push(ingest_one!(event, now, |op, sql, args| {
                            sqlite_exec(&st.conn, op, sql, &args)?
                        }));
                    }
                    for cp in &checkpoints {
                        sqlite_exec(
                            &st.conn,
                            "ingest: checkpoint",
                            SQL_UPSERT_CHECKPOINT,
                            &checkpoint_args(cp, now),
                        )?;
                    }
                    Ok(outcomes)
                })
                .await;
        }
        let mut tx = self
            .writer
            .begin()
            .await
            .map_err(Error::db("begin ingest"))?;
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            outcomes.push(ingest_one!(event, now, |op, sql, args| {
                tx_exec(&mut tx, op, sql, args).await?
            }));
        }
        for cp in &checkpoints {
            tx_exec(
                &mut tx,
                "ingest: checkpoint",
                SQL_UPSERT_CHECKPOINT,
                checkpoint_args(cp, now),
            )
            .await?;
        }
        tx.commit().await.map_err(Error::db("commit ingest"))?;
        Ok(outcomes)
    }

    async fn dead_letter(
        &self,
        letter: NewDeadLetter,
        checkpoint: Option<Checkpoint>,
        now: DateTime<Utc>,
    ) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let payload = letter
            .payload
            .as_deref()
            .map(|p| self.encrypt_payload(&id, p))
            .transpose()?;
        let args = vec![
            Arg::text(id.as_str()),
            Arg::Text(letter.topic),
            Arg::Text(letter.event_id),
            Arg::Blob(letter.replay_id),
            Arg::Text(letter.order_id),
            Arg::Text(Some(letter.reason)),
            Arg::Text(payload),
            Arg::Int(i64::from(letter.attempts)),
            Arg::Int(ms(now)),
        ];
        let checkpoint = checkpoint.map(|cp| checkpoint_args(&cp, now));
        if let Some(writer) = &self.sqlite {
            writer
                .call("dead letter", move |st| {
                    sqlite_exec(
                        &st.conn,
                        "storing a dead letter",
                        SQL_INSERT_DEAD_LETTER,
                        &args,
                    )?;
                    if let Some(cp) = &checkpoint {
                        sqlite_exec(
                            &st.conn,
                            "dead letter: checkpoint",
                            SQL_UPSERT_CHECKPOINT,
                            cp,
                        )?;
                    }
                    Ok::<_, Error>(())
                })
                .await?;
            return Ok(id);
        }
        let mut tx = self
            .writer
            .begin()
            .await
            .map_err(Error::db("begin dead letter"))?;
        tx_exec(
            &mut tx,
            "storing a dead letter",
            SQL_INSERT_DEAD_LETTER,
            args,
        )
        .await?;
        if let Some(cp) = checkpoint {
            tx_exec(
                &mut tx,
                "dead letter: checkpoint",
                SQL_UPSERT_CHECKPOINT,
                cp,
            )
            .await?;
        }
        tx.commit().await.map_err(Error::db("commit dead letter"))?;
        Ok(id)
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint, now: DateTime<Utc>) -> Result<()> {
        self.write(
            "saving a checkpoint",
            SQL_UPSERT_CHECKPOINT,
            checkpoint_args(checkpoint, now),
        )
        .await
        .map(|_| ())
    }

    async fn load_checkpoint(&self, topic: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT replay_id FROM checkpoints WHERE topic = $1")
            .bind(topic)
            .fetch_optional(&self.reader)
            .await
            .map_err(Error::db("loading a checkpoint"))?;
        row.map(|r| col(&r, "replay_id", "checkpoint")).transpose()
    }

    async fn enqueue(&self, job: NewJob, now: DateTime<Utc>) -> Result<bool> {
        let created = self
            .write("enqueueing a job", SQL_INSERT_JOB, job_args(&job, now))
            .await?;
        Ok(created == 1)
    }

    async fn claim(&self, owner: &str, now: DateTime<Utc>, lease: Duration) -> Result<Option<Job>> {
        let now_ms = ms(now);
        // Expired leases first now and then (they block their customer's queue), otherwise
        // only when nothing is pending: each kind is one index-ordered statement, where a
        // single query with an OR between them sorts every pending job (milliseconds each
        // claim with a backlog of tens of thousands).
        let due = self.next_expired_scan.load(Ordering::Relaxed) <= now_ms;
        if due {
            self.next_expired_scan.store(
                now_ms.saturating_add(EXPIRED_SCAN_EVERY_MS),
                Ordering::Relaxed,
            );
            if let Some(job) = self
                .claim_kind(ClaimKind::Expired, owner, now_ms, lease)
                .await?
            {
                return Ok(Some(job));
            }
        }
        if let Some(job) = self
            .claim_kind(ClaimKind::Pending, owner, now_ms, lease)
            .await?
        {
            return Ok(Some(job));
        }
        if due {
            return Ok(None);
        }
        self.claim_kind(ClaimKind::Expired, owner, now_ms, lease)
            .await
    }

    async fn renew_lease(&self, order_id: &str, owner: &str, until: DateTime<Utc>) -> Result<()> {
        let args = vec![Arg::Int(ms(until)), Arg::text(order_id), Arg::text(owner)];
        self.fenced("renewing a lease", order_id, owner, SQL_RENEW, args)
            .await
    }

    async fn advance(
        &self,
        order_id: &str,
        owner: &str,
        step: Step,
        update: StepUpdate,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let args = vec![
            Arg::text(step.as_str()),
            Arg::Text(update.whmcs_order_id),
            Arg::Text(update.service_ids.map(|ids| ids.join(","))),
            Arg::Int(ms(now)),
            Arg::text(order_id),
            Arg::text(owner),
        ];
        self.fenced("recording a step", order_id, owner, SQL_ADVANCE, args)
            .await
    }

    async fn reschedule(
        &self,
        order_id: &str,
        owner: &str,
        next_attempt_at: DateTime<Utc>,
        error: Option<String>,
        count_attempt: bool,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let args = vec![
            Arg::Int(ms(next_attempt_at)),
            Arg::Text(error),
            Arg::Int(i64::from(count_attempt)),
            Arg::Int(ms(now)),
            Arg::text(order_id),
            Arg::text(owner),
        ];
        self.fenced("rescheduling a job", order_id, owner, SQL_RESCHEDULE, args)
            .await
    }

    async fn finish(
        &self,
        order_id: &str,
        owner: &str,
        state: JobState,
        error: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let args = vec![
            Arg::text(state.as_str()),
            Arg::Text(error),
            Arg::Int(ms(now)),
            Arg::text(order_id),
            Arg::text(owner),
        ];
        self.fenced("finishing a job", order_id, owner, SQL_FINISH, args)
            .await
    }

    async fn release(&self, order_id: &str, owner: &str, now: DateTime<Utc>) -> Result<()> {
        let args = vec![Arg::Int(ms(now)), Arg::text(order_id), Arg::text(owner)];
        self.fenced("releasing a job", order_id, owner, SQL_RELEASE, args)
            .await
    }

    async fn requeue_failed(&self, order_id: &str, now: DateTime<Utc>) -> Result<bool> {
        let args = vec![Arg::Int(ms(now)), Arg::text(order_id)];
        let changed = self
            .write("requeueing a failed job", SQL_REQUEUE_FAILED, args)
            .await?;
        Ok(changed == 1)
    }

    async fn take_over_leases(&self, now: DateTime<Utc>) -> Result<u64> {
        self.write(
            "taking over leases",
            SQL_TAKE_OVER_LEASES,
            vec![Arg::Int(ms(now))],
        )
        .await
    }

    async fn job(&self, order_id: &str) -> Result<Option<Job>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE order_id = $1"))
            .bind(order_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(Error::db("reading a job"))?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn jobs(&self, after_seq: i64, limit: u32) -> Result<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(Error::db("listing jobs"))?;
        rows.iter().map(job_from_row).collect()
    }

    async fn job_counts(&self) -> Result<JobCounts> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            .fetch_all(&self.reader)
            .await
            .map_err(Error::db("counting jobs"))?;
        let mut counts = JobCounts::default();
        for row in rows {
            let state = JobState::parse(&col::<String>(&row, "state", "job count")?)?;
            let n = u64::try_from(col::<i64>(&row, "n", "job count")?).unwrap_or(0);
            match state {
                JobState::Pending => counts.pending = n,
                JobState::Running => counts.running = n,
                JobState::Done => counts.done = n,
                JobState::Failed => counts.failed = n,
                JobState::Refused => counts.refused = n,
            }
        }
        Ok(counts)
    }

    async fn dead_letters(
        &self,
        state: Option<DeadLetterState>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(&format!(
            "SELECT {DL_COLS} FROM dead_letters WHERE ($1 IS NULL OR state = $1) \
             ORDER BY created_at DESC, id LIMIT $2"
        ))
        .bind(state.map(DeadLetterState::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(Error::db("listing dead letters"))?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    async fn dead_letter_by_id(&self, id: &str) -> Result<Option<DeadLetter>> {
        let row = sqlx::query(&format!("SELECT {DL_COLS} FROM dead_letters WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(Error::db("reading a dead letter"))?;
        row.as_ref().map(dead_letter_from_row).transpose()
    }

    async fn dead_letter_payload(&self, id: &str) -> Result<Option<field_crypto::Plaintext>> {
        let row = sqlx::query("SELECT payload FROM dead_letters WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(Error::db("reading a dead letter"))?;
        let Some(row) = row else {
            return Err(Error::NotFound {
                what: "dead letter",
                id: id.to_owned(),
            });
        };
        let Some(text) = col::<Option<String>>(&row, "payload", "dead letter")? else {
            return Ok(None);
        };
        let ctx = FieldContext::new(DEAD_LETTER_PAYLOAD_KIND, id)?;
        match self.keyring().decrypt(&ctx, &text) {
            Err(field_crypto::Error::UnknownKey { .. }) => {
                // Another instance may have rotated: reload once.
                self.reload_keyring().await?;
                Ok(Some(self.keyring().decrypt(&ctx, &text)?))
            }
            other => Ok(Some(other?)),
        }
    }

    async fn set_dead_letter_state(
        &self,
        id: &str,
        state: DeadLetterState,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let args = vec![Arg::text(state.as_str()), Arg::Int(ms(now)), Arg::text(id)];
        let changed = self
            .write(
                "updating a dead letter",
                "UPDATE dead_letters SET state = $1, updated_at = $2 WHERE id = $3",
                args,
            )
            .await?;
        if changed == 0 {
            return Err(Error::NotFound {
                what: "dead letter",
                id: id.to_owned(),
            });
        }
        Ok(())
    }

    async fn rotate_keys_if_older_than(
        &self,
        max_age_days: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<KeyId>> {
        let mut tx = self
            .writer
            .begin_with(self.begin_write())
            .await
            .map_err(Error::db("begin rotation"))?;
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        };
        let row = sqlx::query(&format!("SELECT stored FROM keyring WHERE id = 1{lock}"))
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db("rotation: reading the keyring"))?
            .ok_or_else(|| Error::Corrupt {
                what: "keyring",
                reason: "missing".to_owned(),
            })?;
        let json: String = col(&row, "stored", "keyring")?;
        let stored: StoredKeyring = serde_json::from_str(&json).map_err(|e| Error::Corrupt {
            what: "keyring",
            reason: e.to_string(),
        })?;
        let mut ring = Keyring::open(&self.master, &stored)?;
        let rotated = ring.rotate_if_older_than(now, max_age_days)?;
        if rotated.is_some() {
            let json = serde_json::to_string(&ring.to_stored()).map_err(|e| Error::Corrupt {
                what: "keyring",
                reason: e.to_string(),
            })?;
            sqlx::query("UPDATE keyring SET stored = $1, updated_at = $2 WHERE id = 1")
                .bind(json)
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .map_err(Error::db("rotation: storing the keyring"))?;
        }
        tx.commit().await.map_err(Error::db("commit rotation"))?;
        *self.keyring.write() = Arc::new(ring);
        Ok(rotated)
    }

    async fn reencrypt_all(&self) -> Result<u64> {
        let ring = self.keyring();
        let rows = sqlx::query("SELECT id, payload FROM dead_letters WHERE payload IS NOT NULL")
            .fetch_all(&self.reader)
            .await
            .map_err(Error::db("re-encryption: listing"))?;
        let mut moved = 0;
        for row in rows {
            let id: String = col(&row, "id", "dead letter")?;
            let text: String = col(&row, "payload", "dead letter")?;
            let ctx = FieldContext::new(DEAD_LETTER_PAYLOAD_KIND, &id)?;
            if let Some(new) = ring.reencrypt(&ctx, &text)? {
                self.write(
                    "re-encryption: update",
                    "UPDATE dead_letters SET payload = $1 WHERE id = $2 AND payload = $3",
                    vec![Arg::text(new), Arg::text(id), Arg::text(text)],
                )
                .await?;
                moved += 1;
            }
        }
        Ok(moved)
    }

    async fn try_lead(&self, name: &str) -> Result<Option<Leadership>> {
        match self.backend {
            Backend::Sqlite => Ok(Some(Leadership::local())),
            Backend::Postgres => {
                let mut conn = self
                    .writer
                    .acquire()
                    .await
                    .map_err(Error::db("leadership: acquire"))?
                    .detach();
                let row = sqlx::query("SELECT pg_try_advisory_lock($1) AS held")
                    .bind(lock_key(name))
                    .fetch_one(&mut conn)
                    .await
                    .map_err(Error::db("leadership: advisory lock"))?;
                let held: bool = col(&row, "held", "advisory lock")?;
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
