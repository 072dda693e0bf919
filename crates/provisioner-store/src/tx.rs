//! The one transaction API of the store: every write is written once, as SQL plus bindings
//! over [`Tx`], and runs on either backend.
//!
//! - **SQLite**: the unit runs on the writer ([`crate::sqlite_writer`]) inside the batch
//!   transaction, in its own savepoint. The [`Tx`] methods of that backend are synchronous
//!   underneath (rusqlite), so the unit's future is driven to completion right there; a unit
//!   must therefore await nothing but its [`Tx`].
//! - **PostgreSQL**: the unit is one transaction on a pooled connection; a unit of one fenced
//!   job update and its audit records, or of one record, is one statement when a cached chain
//!   head is free ([`SqlStore::unit_in_one_statement`]).
//!
//! Audit records a unit adds with [`Tx::audit`] are sealed on a chain head and inserted at
//! the end of the unit, inside the same transaction: the state change and its audit record
//! commit together or not at all. The chain is sealed by one function for both backends
//! ([`seal_into`]). SQLite has one chain, kept by its writer. PostgreSQL has
//! [`POSTGRES_AUDIT_CHAINS`]: a unit takes a free one (this process's head of it and its
//! advisory lock, both held until the commit), so no record is ever sealed on one that might
//! still roll back, and concurrent units of every instance commit side by side instead of
//! queueing for one head; the `audit_log (chain, seq)` primary key turns a head moved by
//! another process into a re-read and a new seal.

use std::time::Duration;

use async_trait::async_trait;
use audit::{Anchor, ChainHead, NewAuditRecord, SealedRecord};
use futures::future::BoxFuture;
use sqlx::any::AnyRow;
use sqlx::{Row as _, ValueRef as _};

use crate::error::{Error, Result};
use crate::sql::{Backend, SqlStore};
use crate::sqlite_writer;

/// A statement parameter, typed even when NULL (PostgreSQL needs the type of a NULL).
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    Int(i64),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

impl Arg {
    pub(crate) fn text(v: impl Into<String>) -> Arg {
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

/// One column value of a result row. No column of the schema is a float; one that appears
/// (an expression) reads as its text.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// A result row of either driver, owned, so rows decode in one place.
#[derive(Clone, Debug, Default)]
pub(crate) struct Row {
    names: Vec<String>,
    values: Vec<Value>,
}

impl Row {
    fn get(&self, name: &'static str, what: &'static str) -> Result<&Value> {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(|i| self.values.get(i))
            .ok_or_else(|| Error::Corrupt {
                what,
                reason: format!("column {name} is missing"),
            })
    }

    fn mismatch(name: &'static str, what: &'static str, wanted: &str) -> Error {
        Error::Corrupt {
            what,
            reason: format!("column {name} is not {wanted}"),
        }
    }

    /// An integer column (NULL = `None`).
    pub(crate) fn int(&self, name: &'static str, what: &'static str) -> Result<Option<i64>> {
        match self.get(name, what)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            _ => Err(Self::mismatch(name, what, "an integer")),
        }
    }

    /// A text column (NULL = `None`).
    pub(crate) fn text(&self, name: &'static str, what: &'static str) -> Result<Option<String>> {
        match self.get(name, what)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            _ => Err(Self::mismatch(name, what, "text")),
        }
    }

    /// A blob column (NULL = `None`).
    pub(crate) fn blob(&self, name: &'static str, what: &'static str) -> Result<Option<Vec<u8>>> {
        match self.get(name, what)? {
            Value::Null => Ok(None),
            Value::Blob(v) => Ok(Some(v.clone())),
            _ => Err(Self::mismatch(name, what, "a blob")),
        }
    }

    /// A column that must not be NULL.
    pub(crate) fn required<T>(
        value: Option<T>,
        name: &'static str,
        what: &'static str,
    ) -> Result<T> {
        value.ok_or_else(|| Error::Corrupt {
            what,
            reason: format!("column {name} is NULL"),
        })
    }

    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        let stmt = row.as_ref();
        let n = stmt.column_count();
        let mut out = Row {
            names: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
        };
        for i in 0..n {
            out.names.push(stmt.column_name(i)?.to_owned());
            out.values.push(match row.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                rusqlite::types::ValueRef::Real(v) => Value::Text(v.to_string()),
                rusqlite::types::ValueRef::Text(t) => {
                    Value::Text(String::from_utf8_lossy(t).into_owned())
                }
                rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            });
        }
        Ok(out)
    }

    pub(crate) fn from_any(row: &AnyRow) -> std::result::Result<Row, sqlx::Error> {
        use sqlx::any::AnyTypeInfoKind as K;
        let n = row.columns().len();
        let mut out = Row {
            names: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
        };
        for (i, column) in row.columns().iter().enumerate() {
            out.names.push(sqlx::Column::name(column).to_owned());
            let raw = row.try_get_raw(i)?;
            let value = if raw.is_null() {
                Value::Null
            } else {
                match raw.type_info().kind() {
                    K::Bool => Value::Int(i64::from(row.try_get::<bool, _>(i)?)),
                    K::SmallInt | K::Integer | K::BigInt => Value::Int(row.try_get(i)?),
                    K::Real | K::Double => Value::Text(row.try_get::<f64, _>(i)?.to_string()),
                    K::Text => Value::Text(row.try_get(i)?),
                    K::Blob => Value::Blob(row.try_get(i)?),
                    K::Null => Value::Null,
                }
            };
            out.values.push(value);
        }
        Ok(out)
    }
}

/// What a store operation runs its statements through, inside one transaction.
#[async_trait]
pub(crate) trait Tx: Send {
    /// Executes `sql` with `$n` bound to `args[n - 1]`; returns the number of rows changed.
    async fn exec(&mut self, op: &'static str, sql: &str, args: &[Arg]) -> Result<u64>;

    /// Runs `sql` and returns its rows.
    async fn query(&mut self, op: &'static str, sql: &str, args: &[Arg]) -> Result<Vec<Row>>;

    /// Adds an audit record, sealed and inserted at the end of this unit, in its transaction.
    fn audit(&mut self, record: NewAuditRecord);

    /// The first row of `sql`, if any.
    async fn query_opt(
        &mut self,
        op: &'static str,
        sql: &str,
        args: &[Arg],
    ) -> Result<Option<Row>> {
        Ok(self.query(op, sql, args).await?.into_iter().next())
    }
}

/// The SQLite side: the writer's connection, inside the batch transaction.
struct SqliteTx<'c> {
    conn: &'c mut rusqlite::Connection,
    audit: Vec<NewAuditRecord>,
}

#[async_trait]
impl Tx for SqliteTx<'_> {
    async fn exec(&mut self, op: &'static str, sql: &str, args: &[Arg]) -> Result<u64> {
        let refs: Vec<&dyn rusqlite::ToSql> =
            args.iter().map(|a| a as &dyn rusqlite::ToSql).collect();
        sqlite_writer::exec(self.conn, sql, &refs)
            .map(|n| n as u64)
            .map_err(|source| Error::Sqlite { op, source })
    }

    async fn query(&mut self, op: &'static str, sql: &str, args: &[Arg]) -> Result<Vec<Row>> {
        let refs: Vec<&dyn rusqlite::ToSql> =
            args.iter().map(|a| a as &dyn rusqlite::ToSql).collect();
        sqlite_writer::query_all(self.conn, sql, &refs, Row::from_sqlite)
            .map_err(|source| Error::Sqlite { op, source })
    }

    fn audit(&mut self, record: NewAuditRecord) {
        self.audit.push(record);
    }
}

/// The sqlx side (PostgreSQL, and SQLite before its writer runs): one transaction on a
/// pooled connection.
struct SqlxTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    audit: Vec<NewAuditRecord>,
}

/// Rolls `tx` back now. Its error is not the caller's: the unit already failed, and a
/// connection that cannot roll back is closed by the pool, which ends the transaction.
async fn roll_back(tx: sqlx::Transaction<'static, sqlx::Any>) {
    if tx.rollback().await.is_err() {
        tracing::debug!("a failed unit did not roll back; the pool tests its connection");
    }
}

/// `sql` with `args` bound, for sqlx.
pub(crate) fn sqlx_query<'q>(
    sql: &'q str,
    args: &[Arg],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut query = sqlx::query(sql);
    for arg in args {
        query = match arg.clone() {
            Arg::Int(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
            Arg::Blob(v) => query.bind(v),
        };
    }
    query
}

#[async_trait]
impl Tx for SqlxTx {
    async fn exec(&mut self, op: &'static str, sql: &str, args: &[Arg]) -> Result<u64> {
        Ok(sqlx_query(sql, args)
            .execute(&mut *self.tx)
            .await
            .map_err(Error::db(op))?
            .rows_affected())
    }

    async fn query(&mut self, op: &'static str, sql: &str, args: &[Arg]) -> Result<Vec<Row>> {
        let rows = sqlx_query(sql, args)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(Error::db(op))?;
        rows.iter()
            .map(|r| Row::from_any(r).map_err(Error::db(op)))
            .collect()
    }

    fn audit(&mut self, record: NewAuditRecord) {
        self.audit.push(record);
    }
}

/// Reads outside any transaction, on the reader pool: the same functions that read inside a
/// unit (the chain head, the anchor) read here too. It refuses writes.
pub(crate) struct Reads<'p> {
    pool: &'p sqlx::AnyPool,
}

fn read_only(op: &'static str) -> Error {
    Error::Corrupt {
        what: "store use",
        reason: format!("{op}: a write on the read-only connection (a bug)"),
    }
}

#[async_trait]
impl Tx for Reads<'_> {
    async fn exec(&mut self, op: &'static str, _sql: &str, _args: &[Arg]) -> Result<u64> {
        Err(read_only(op))
    }

    async fn query(&mut self, op: &'static str, sql: &str, args: &[Arg]) -> Result<Vec<Row>> {
        let rows = sqlx_query(sql, args)
            .fetch_all(self.pool)
            .await
            .map_err(Error::db(op))?;
        rows.iter()
            .map(|r| Row::from_any(r).map_err(Error::db(op)))
            .collect()
    }

    fn audit(&mut self, _record: NewAuditRecord) {
        // Never sealed: `exec` refuses, so no unit on this connection gets that far.
    }
}

/// A unit of work: a store operation's statements, given the transaction to run them in.
pub(crate) trait Work<R>:
    for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<R>> + Send + 'static
{
}

impl<R, F> Work<R> for F where
    F: for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<R>> + Send + 'static
{
}

/// A chain's anchor: row `id` = chain + 1 (row 1 is chain 0's, as before there were chains).
pub(crate) const SQL_ANCHOR: &str = "SELECT anchor FROM audit_anchor WHERE id = $1 + 1";
/// A chain's last record.
pub(crate) const SQL_LAST_RECORD: &str =
    "SELECT record FROM audit_log WHERE chain = $1 ORDER BY seq DESC LIMIT 1";
/// Sealed records after a unit's first, 1 to [`RECORDS_PER_INSERT`] in one statement (the
/// unit holds the chain by then, so none can conflict); `order_id` repeats each record's Order
/// Id (or NULL), and `job` is the `seq` of that Order's job (NULL when it has none yet), so
/// that an Order's records are found by index (`Store::audit_for_order`).
const SQL_INSERT_RECORDS: [&str; RECORDS_PER_INSERT] = [
    "INSERT INTO audit_log (chain, seq, at, record, order_id, job) VALUES \
     ($5, $1, $2, $3, $4, (SELECT seq FROM jobs WHERE order_id = $4))",
    "INSERT INTO audit_log (chain, seq, at, record, order_id, job) VALUES \
     ($5, $1, $2, $3, $4, (SELECT seq FROM jobs WHERE order_id = $4)), \
     ($10, $6, $7, $8, $9, (SELECT seq FROM jobs WHERE order_id = $9))",
    "INSERT INTO audit_log (chain, seq, at, record, order_id, job) VALUES \
     ($5, $1, $2, $3, $4, (SELECT seq FROM jobs WHERE order_id = $4)), \
     ($10, $6, $7, $8, $9, (SELECT seq FROM jobs WHERE order_id = $9)), \
     ($15, $11, $12, $13, $14, (SELECT seq FROM jobs WHERE order_id = $14))",
    "INSERT INTO audit_log (chain, seq, at, record, order_id, job) VALUES \
     ($5, $1, $2, $3, $4, (SELECT seq FROM jobs WHERE order_id = $4)), \
     ($10, $6, $7, $8, $9, (SELECT seq FROM jobs WHERE order_id = $9)), \
     ($15, $11, $12, $13, $14, (SELECT seq FROM jobs WHERE order_id = $14)), \
     ($20, $16, $17, $18, $19, (SELECT seq FROM jobs WHERE order_id = $19))",
];
/// At most this many records per insert: 5 parameters each, within the SQLite writer's 24
/// parameter names.
const RECORDS_PER_INSERT: usize = 4;
/// The first record of a unit: a `seq` another process took meanwhile inserts nothing (no
/// error, which on PostgreSQL would abort the whole transaction). The conflict has no target
/// because the key differs: `(chain, seq)` on PostgreSQL, `seq` alone (the rowid) on SQLite,
/// whose one chain is 0; `audit_log` has no other unique key on either.
pub(crate) const SQL_INSERT_FIRST_RECORD: &str = "INSERT INTO audit_log (chain, seq, at, record, order_id, job) \
     VALUES ($5, $1, $2, $3, $4, (SELECT seq FROM jobs WHERE order_id = $4)) \
     ON CONFLICT DO NOTHING";

/// PostgreSQL's one-statement units and batches: the `INSERT ... SELECT` of one audit record
/// from the parameters numbered `chain`, `seq`, `at`, `record` and `order_id` (the caller adds
/// its `FROM`); `job` is read from `jobs` as in the inserts above.
pub(crate) fn audit_select(
    chain: usize,
    seq: usize,
    at: usize,
    record: usize,
    order_id: usize,
) -> String {
    format!(
        "INSERT INTO audit_log (chain, seq, at, record, order_id, job) \
         SELECT ${chain}, ${seq}, ${at}, ${record}, ${order_id}, \
         (SELECT seq FROM jobs WHERE order_id = ${order_id})"
    )
}

/// PostgreSQL: [`SQL_INSERT_FIRST_RECORD`] that also takes the chain's advisory lock (`$6`),
/// and inserts nothing when another session holds it: a unit probes a free chain and appends
/// to it in one round trip instead of two. `held` tells a chain held elsewhere from a head
/// another process moved (`inserted` is 0 for both). `lock` calls a volatile function, so
/// PostgreSQL evaluates it once and never inlines it (no `MATERIALIZED`, which needs 12+).
const SQL_INSERT_FIRST_RECORD_IF_LOCKED: &str = "WITH lock AS \
     (SELECT pg_try_advisory_xact_lock($6) AS held), \
     ins AS (INSERT INTO audit_log (chain, seq, at, record, order_id, job) \
     SELECT $5, $1, $2, $3, $4, (SELECT seq FROM jobs WHERE order_id = $4) \
     FROM lock WHERE lock.held \
     ON CONFLICT (chain, seq) DO NOTHING RETURNING seq) \
     SELECT (SELECT held FROM lock) AS held, (SELECT COUNT(*) FROM ins) AS inserted";
/// A fenced update of a job row for [`SqlStore::unit_in_one_statement`]: `sql` is an
/// `UPDATE jobs ... WHERE <fence>` on `args` (`$1..`) that ends with its `WHERE` clause, the
/// fence being the job `order_id` running under the claim token `owner`.
pub(crate) struct FencedUpdate<'a> {
    pub(crate) sql: &'a str,
    pub(crate) args: &'a [Arg],
    pub(crate) order_id: &'a str,
    pub(crate) owner: &'a str,
}

/// How [`SqlStore::unit_in_one_statement`] ended.
#[derive(Debug)]
pub(crate) enum OneStatement {
    /// The update (if any) and the records committed, as sealed here.
    Written(Vec<SealedRecord>),
    /// No running job under that owner: another worker holds it now. Nothing was written.
    Fenced,
    /// Nothing was written, and the unit is to run as a transaction: no chain with a cached
    /// head was free, another process had moved the head, or the database refused the
    /// statement (the transaction's error tells which part it refused).
    AsTransaction,
}

/// The statement of [`SqlStore::unit_in_one_statement`]. With an update of `args`
/// parameters (`$1..=$args`), the fence's order id and owner follow; then the chain's lock
/// key, and five parameters per record in the order of [`SQL_INSERT_FIRST_RECORD`]
/// (`seq, at, record, order_id, chain`). It answers `fenced` (1 without an update), `held`,
/// `inserted` (the first record) and `updated` (1 without an update).
pub(crate) fn one_statement_sql(update: Option<(&str, usize)>, records: usize) -> String {
    let args = update.map_or(0, |(_, n)| n + 2);
    let lock = args + 1;
    let insert = |k: usize, from: &str| {
        let b = lock + 5 * k;
        format!(
            "{} FROM {from}",
            audit_select(b + 5, b + 1, b + 2, b + 3, b + 4)
        )
    };
    let mut ctes = Vec::with_capacity(records + 3);
    if let Some((_, n)) = update {
        ctes.push(format!(
            "fence AS (SELECT 1 AS one FROM jobs WHERE order_id = ${} \
             AND lease_owner = ${} AND {} FOR NO KEY UPDATE)",
            n + 1,
            n + 2,
            crate::jobs::FENCE_RUNNING
        ));
    }
    let fence = if update.is_some() { " FROM fence" } else { "" };
    ctes.push(format!(
        "lock AS (SELECT pg_try_advisory_xact_lock(${lock}) AS held{fence})"
    ));
    ctes.push(format!(
        "first AS ({} WHERE lock.held ON CONFLICT (chain, seq) DO NOTHING RETURNING seq)",
        insert(0, "lock")
    ));
    ctes.extend((1..records).map(|k| format!("rec{k} AS ({})", insert(k, "first"))));
    let answer = match update {
        Some((update, _)) => {
            ctes.push(format!(
                "upd AS ({update} AND EXISTS (SELECT 1 FROM first) RETURNING 1)"
            ));
            "(SELECT COUNT(*) FROM fence) AS fenced, \
             COALESCE((SELECT held FROM lock), FALSE) AS held, \
             (SELECT COUNT(*) FROM first) AS inserted, (SELECT COUNT(*) FROM upd) AS updated"
        }
        None => {
            "1 AS fenced, (SELECT held FROM lock) AS held, \
             (SELECT COUNT(*) FROM first) AS inserted, 1 AS updated"
        }
    };
    format!("WITH {} SELECT {answer}", ctes.join(", "))
}

/// This process's cached head of each audit chain (see `SqlStore::audit_heads`).
pub(crate) type Heads = std::sync::Arc<Vec<std::sync::Arc<tokio::sync::Mutex<Option<ChainHead>>>>>;

/// The audit chains in the order a unit tries them: in [`scan_order`] from `offset`, first
/// those `marks` does not show another session holding in the last [`CHAIN_ELSEWHERE_FOR`]
/// (see [`mark_chain_elsewhere`]), then those.
pub(crate) fn chain_preference(
    marks: &[std::sync::atomic::AtomicU64],
    clock: std::time::Instant,
    offset: u32,
) -> impl Iterator<Item = u32> + Send + '_ {
    use std::sync::atomic::Ordering::Relaxed;
    let now = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    let count = u32::try_from(marks.len()).unwrap_or(1).max(1);
    [false, true]
        .into_iter()
        .flat_map(move |recently_elsewhere| {
            scan_order(count, offset).filter(move |&chain| {
                let marked = usize::try_from(chain).ok().and_then(|i| marks.get(i));
                marked.is_some_and(|m| m.load(Relaxed) > now) == recently_elsewhere
            })
        })
}

/// Adds `spent` to `total` (µs spent waiting for an audit chain or sealing again) and
/// publishes it as [`SERIALIZED_SECONDS`].
pub(crate) fn count_serialized(total: &std::sync::atomic::AtomicU64, spent: Duration) {
    if !spent.is_zero() {
        let micros = u64::try_from(spent.as_micros()).unwrap_or(u64::MAX);
        let sum = total
            .fetch_add(micros, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(micros);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(SERIALIZED_SECONDS).set(sum as f64 / 1e6);
    }
}

/// Marks `chain` in `marks` (per chain, ms after `clock`) as found held or moved by another
/// session: this process tries it after the others for [`CHAIN_ELSEWHERE_FOR`].
pub(crate) fn mark_chain_elsewhere(
    marks: &[std::sync::atomic::AtomicU64],
    clock: std::time::Instant,
    chain: u32,
) {
    let now = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    let until =
        now.saturating_add(u64::try_from(CHAIN_ELSEWHERE_FOR.as_millis()).unwrap_or(u64::MAX));
    if let Some(m) = usize::try_from(chain).ok().and_then(|i| marks.get(i)) {
        m.store(until, std::sync::atomic::Ordering::Relaxed);
    }
}

/// PostgreSQL: whether this transaction holds (or now takes) a chain's advisory lock.
const SQL_TRY_CHAIN_LOCK: &str = "SELECT pg_try_advisory_xact_lock($1) AS held";

/// The first of the PostgreSQL advisory lock keys of the audit chains: chain `c` is
/// `AUDIT_LOCK_KEY + c`, held by the one transaction appending to it (and by a purge of it).
pub(crate) const AUDIT_LOCK_KEY: i64 = 0x7070_6175_6469_7431; // "ppaudit1"

/// How long a process tries an audit chain only after the others once it found another
/// session (another instance) holding it.
pub(crate) const CHAIN_ELSEWHERE_FOR: Duration = Duration::from_secs(60);

/// The order in which a process tries the `count` audit chains: chain 0 first (so a single
/// writer keeps to chain 0), then the others from this process's own `offset` (in
/// `1..count`), so instances that keep away from each other's chains end up on different
/// ones instead of all moving to the same next chain.
pub(crate) fn scan_order(count: u32, offset: u32) -> impl Iterator<Item = u32> {
    let others = count.saturating_sub(1);
    std::iter::once(0)
        .chain((0..others).map(move |j| 1 + (offset.saturating_sub(1).saturating_add(j)) % others))
}

/// How many audit chains a PostgreSQL store appends to. Each is an independent hash chain
/// with its own head, lock and anchor; a unit takes whichever is free, so concurrent units
/// (of this process or of other instances) commit side by side instead of one after another.
/// SQLite has one chain: its single writer serialises every write anyway.
pub const POSTGRES_AUDIT_CHAINS: u32 = 32;

/// Gauge (only grows): seconds this process's writes spent at a point every instance of a
/// PostgreSQL database shares (see [`SqlStore::serialized_time`]).
pub const SERIALIZED_SECONDS: &str = "provisioner_store_serialized_seconds";

/// The advisory lock key of `chain`.
pub(crate) fn chain_lock_key(chain: u32) -> i64 {
    AUDIT_LOCK_KEY.wrapping_add(i64::from(chain))
}

/// How often one unit re-reads the head after another process took its place.
const APPEND_ATTEMPTS: usize = 16;

fn audit_error(e: impl Into<audit::Error>) -> Error {
    Error::Audit(Box::new(e.into()))
}

/// A store error while taking an audit chain, as an audit failure.
fn audit_backend(e: Error) -> Error {
    match e {
        Error::Audit(_) => e,
        other => audit_error(audit::Error::Backend {
            op: "audit: taking a chain",
            source: Box::new(other),
        }),
    }
}

/// This process's cached head of one audit chain, held while a unit appends to it.
type HeadGuard<'a> = tokio::sync::MutexGuard<'a, Option<ChainHead>>;

fn json_error(op: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
    move |e| {
        audit_error(audit::Error::Backend {
            op,
            source: Box::new(e),
        })
    }
}

/// The sealed record in the `record` column of `row`.
pub(crate) fn decode_record(row: &Row) -> Result<SealedRecord> {
    let json = Row::required(
        row.text("record", "audit record")?,
        "record",
        "audit record",
    )?;
    serde_json::from_str(&json).map_err(json_error("audit: decoding a record"))
}

/// `chain` as a statement argument.
pub(crate) fn chain_arg(chain: u32) -> Arg {
    Arg::Int(i64::from(chain))
}

/// The retention anchor of `chain` (genesis when nothing was ever purged).
pub(crate) async fn read_anchor(tx: &mut dyn Tx, chain: u32) -> Result<Anchor> {
    match tx
        .query_opt("audit: reading the anchor", SQL_ANCHOR, &[chain_arg(chain)])
        .await?
    {
        None => Ok(Anchor::GENESIS),
        Some(row) => {
            let json = Row::required(
                row.text("anchor", "audit anchor")?,
                "anchor",
                "audit anchor",
            )?;
            serde_json::from_str(&json).map_err(json_error("audit: decoding the anchor"))
        }
    }
}

/// The head of `chain` as stored: after its last record, or its anchor's.
pub(crate) async fn read_head(tx: &mut dyn Tx, chain: u32) -> Result<ChainHead> {
    match tx
        .query_opt(
            "audit: reading the head",
            SQL_LAST_RECORD,
            &[chain_arg(chain)],
        )
        .await?
    {
        Some(row) => Ok(ChainHead::after(&decode_record(&row)?)),
        None => Ok(read_anchor(tx, chain).await?.head()),
    }
}

fn record_args(chain: u32, sealed: &SealedRecord) -> Result<Vec<Arg>> {
    let json = serde_json::to_string(sealed).map_err(json_error("audit: encoding"))?;
    let seq = i64::try_from(sealed.record.seq).map_err(|_| {
        audit_error(audit::Error::Backend {
            op: "audit: seq",
            source: "sequence number out of range".into(),
        })
    })?;
    Ok(vec![
        Arg::Int(seq),
        Arg::Int(sealed.record.at.timestamp_micros()),
        Arg::Text(Some(json)),
        Arg::Text(
            sealed
                .record
                .order_id
                .as_ref()
                .map(|id| id.as_str().to_owned()),
        ),
        chain_arg(chain),
    ])
}

/// Seals `records` in turn on `head` of `chain` and appends their statement arguments
/// ([`record_args`]) to `args`; returns the head after the last and the sealed records.
pub(crate) fn seal_args<'r>(
    key: &audit::AuditKey,
    chain: u32,
    mut head: ChainHead,
    records: impl IntoIterator<Item = &'r NewAuditRecord>,
    args: &mut Vec<Arg>,
) -> Result<(ChainHead, Vec<SealedRecord>)> {
    let mut sealed = Vec::new();
    for record in records {
        let s = head.seal(key, record.clone()).map_err(audit_error)?;
        args.extend(record_args(chain, &s)?);
        head = ChainHead::after(&s);
        sealed.push(s);
    }
    Ok((head, sealed))
}

/// Seals `records` on the head of `chain` (`cached`, or the stored one) and inserts them
/// inside `tx`, which already holds that chain (see [`SqlStore::transact_sealed`]). Returns the
/// sealed records, the new head and how many times another writer had moved the head first;
/// the caller keeps that head only once the transaction has committed. Every failure is
/// [`Error::Audit`].
pub(crate) async fn seal_into(
    tx: &mut dyn Tx,
    chain: u32,
    cached: Option<ChainHead>,
    key: &audit::AuditKey,
    records: &[NewAuditRecord],
) -> Result<Sealed> {
    seal_probing(tx, chain, cached, key, records, None)
        .await?
        .ok_or_else(|| {
            audit_error(audit::Error::Backend {
                op: "audit: append",
                source: "a chain held by this unit was found held elsewhere".into(),
            })
        })
}

/// What [`seal_into`] returns: the sealed records, the chain's new head, and how many times
/// another writer had moved the head first.
pub(crate) type Sealed = (Vec<SealedRecord>, ChainHead, u32);

/// [`seal_into`]; with `probe` (PostgreSQL: the chain's advisory lock key) the unit does not
/// hold the chain yet, and its first insert takes the lock in the same statement. `None` when
/// another session holds the chain: nothing was inserted, and the unit may try another one.
async fn seal_probing(
    tx: &mut dyn Tx,
    chain: u32,
    cached: Option<ChainHead>,
    key: &audit::AuditKey,
    records: &[NewAuditRecord],
    mut probe: Option<i64>,
) -> Result<Option<Sealed>> {
    let as_audit = |e: Error| match e {
        Error::Audit(_) => e,
        other => audit_error(audit::Error::Backend {
            op: "audit: append",
            source: Box::new(other),
        }),
    };
    let mut cached = cached;
    // With no cached head, the head is read under the lock: a chain held elsewhere is not
    // read at all.
    if let (None, Some(lock)) = (cached, probe) {
        if !try_chain_lock(tx, lock).await.map_err(as_audit)? {
            return Ok(None);
        }
        probe = None;
    }
    for attempt in 0..APPEND_ATTEMPTS {
        let mut head = match cached {
            Some(head) => head,
            None => read_head(tx, chain).await.map_err(as_audit)?,
        };
        let Some((first, rest)) = records.split_first() else {
            return Ok(Some((Vec::new(), head, 0)));
        };
        let s = head.seal(key, first.clone()).map_err(audit_error)?;
        let mut args = record_args(chain, &s)?;
        let inserted = match probe.take() {
            Some(lock) => {
                args.push(Arg::Int(lock));
                let row = tx
                    .query_opt("audit: insert", SQL_INSERT_FIRST_RECORD_IF_LOCKED, &args)
                    .await
                    .map_err(as_audit)?;
                let int = |name| count(row.as_ref(), name, "audit: insert");
                // Nothing inserted and the lock not taken: another session holds the
                // chain. Taken, the lock is held until the transaction ends.
                if int("held")? != 1 {
                    return Ok(None);
                }
                u64::try_from(int("inserted")?).unwrap_or(0)
            }
            None => tx
                .exec("audit: insert", SQL_INSERT_FIRST_RECORD, &args)
                .await
                .map_err(as_audit)?,
        };
        if inserted != 0 {
            head = ChainHead::after(&s);
            let mut sealed = Vec::with_capacity(records.len());
            sealed.push(s);
            // The first record is in: this unit holds the next `seq`, and another process can
            // only append after it commits. The rest go in a few rows per statement.
            for record in rest {
                let s = head.seal(key, record.clone()).map_err(audit_error)?;
                head = ChainHead::after(&s);
                sealed.push(s);
            }
            for chunk in sealed[1..].chunks(RECORDS_PER_INSERT) {
                let mut args = Vec::with_capacity(chunk.len() * 5);
                for s in chunk {
                    args.extend(record_args(chain, s)?);
                }
                let sql = SQL_INSERT_RECORDS[chunk.len() - 1];
                let n = tx
                    .exec("audit: insert", sql, &args)
                    .await
                    .map_err(as_audit)?;
                if n != chunk.len() as u64 {
                    return Err(audit_error(audit::Error::Backend {
                        op: "audit: insert",
                        source: format!("{n} of {} records inserted", chunk.len()).into(),
                    }));
                }
            }
            let moved = u32::try_from(attempt).unwrap_or(u32::MAX);
            return Ok(Some((sealed, head, moved)));
        }
        cached = None;
    }
    Err(audit_error(audit::Error::Backend {
        op: "audit: append",
        source: format!(
            "the chain head kept moving under {APPEND_ATTEMPTS} attempts (other writers)"
        )
        .into(),
    }))
}

/// The integer (or boolean) column `name` of a statement's answer `row`; 0 when there is no
/// row or the value is NULL.
fn count(row: Option<&Row>, name: &'static str, op: &'static str) -> Result<i64> {
    Ok(row
        .map(|r| r.int(name, op))
        .transpose()?
        .flatten()
        .unwrap_or(0))
}

/// PostgreSQL: takes the chain lock `lock` for the rest of `tx` if no other session holds it.
async fn try_chain_lock(tx: &mut dyn Tx, lock: i64) -> Result<bool> {
    Ok(tx
        .query_opt(
            "audit: taking a chain",
            SQL_TRY_CHAIN_LOCK,
            &[Arg::Int(lock)],
        )
        .await?
        .map(|row| row.int("held", "advisory lock"))
        .transpose()?
        .flatten()
        == Some(1))
}

/// Runs `work` as one transaction directly on `pool`, where no audit record can be sealed
/// (opening the store, before its audit key is known): a unit that adds one fails.
pub(crate) async fn on_pool<R>(
    pool: &sqlx::AnyPool,
    backend: Backend,
    op: &'static str,
    work: impl for<'t> FnOnce(&'t mut dyn Tx) -> BoxFuture<'t, Result<R>>,
) -> Result<R> {
    let begin = match backend {
        // Take the write lock up front: a deferred transaction could fail to upgrade.
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };
    let tx = pool.begin_with(begin).await.map_err(Error::db(op))?;
    let mut tx = SqlxTx {
        tx,
        audit: Vec::new(),
    };
    let result = work(&mut tx).await?;
    if !tx.audit.is_empty() {
        return Err(audit_error(audit::Error::Backend {
            op,
            source: "no audit record can be stored while the store opens".into(),
        }));
    }
    tx.tx.commit().await.map_err(Error::db(op))?;
    Ok(result)
}

impl SqlStore {
    /// Runs `work` as one transaction (see the module docs) and returns its result once the
    /// transaction has committed.
    pub(crate) async fn transact<R: Send + 'static>(
        &self,
        op: &'static str,
        work: impl Work<R>,
    ) -> Result<R> {
        self.transact_sealed(op, work).await.map(|(r, _)| r)
    }

    /// [`SqlStore::transact`], also returning the audit records the unit sealed.
    pub(crate) async fn transact_sealed<R: Send + 'static>(
        &self,
        op: &'static str,
        work: impl Work<R>,
    ) -> Result<(R, Vec<SealedRecord>)> {
        self.transact_on(op, None, work).await
    }

    /// [`SqlStore::transact_sealed`]; with `Some(chain)`, the unit holds that audit chain
    /// from its start (a purge of it) and its records are sealed on it, otherwise on whichever
    /// chain is free once the unit's statements have run.
    pub(crate) async fn transact_on<R: Send + 'static>(
        &self,
        op: &'static str,
        chain: Option<u32>,
        work: impl Work<R>,
    ) -> Result<(R, Vec<SealedRecord>)> {
        match &self.sqlite {
            Some(writer) => {
                if let Some(n @ 1..) = chain {
                    // SQLite keeps one chain, 0 (its `audit_log` is keyed by `seq` alone).
                    return Err(audit_error(audit::Error::Backend {
                        op,
                        source: format!(
                            "chain {n}: SQLite keeps one audit chain, chain 0 \
                             (several exist on PostgreSQL only)"
                        )
                        .into(),
                    }));
                }
                writer
                    .call(op, move |st| {
                        let mut tx = SqliteTx {
                            conn: &mut st.conn,
                            audit: Vec::new(),
                        };
                        // Every `Tx` future of this backend is ready at once: nothing waits.
                        let result = futures::executor::block_on(work(&mut tx))?;
                        let records = std::mem::take(&mut tx.audit);
                        if records.is_empty() {
                            return Ok((result, Vec::new()));
                        }
                        // The writer keeps the head of chain 0, SQLite's one chain.
                        let (sealed, head, _) = futures::executor::block_on(seal_into(
                            &mut tx,
                            0,
                            st.audit_head.take(),
                            &st.audit_key,
                            &records,
                        ))?;
                        // A failed batch commit clears it again (the writer re-reads it).
                        st.audit_head = Some(head);
                        Ok((result, sealed))
                    })
                    .await
            }
            None => {
                let tx = self
                    .writer()
                    .begin()
                    .await
                    .map_err(Error::db("beginning a transaction"))?;
                let mut tx = SqlxTx {
                    tx,
                    audit: Vec::new(),
                };
                // A unit that fails rolls back before its error returns, so the locks it
                // took (an audit chain's among them) are free when its caller goes on; a
                // dropped transaction would only queue the rollback for the pool to send
                // later, and this process's next unit would find its own chain "held
                // elsewhere".
                macro_rules! or_roll_back {
                    ($e:expr) => {
                        match $e {
                            Ok(v) => v,
                            Err(e) => {
                                roll_back(tx.tx).await;
                                return Err(e);
                            }
                        }
                    };
                }
                let mut held = match chain {
                    Some(chain) => Some(or_roll_back!(self.wait_for_chain(&mut tx, chain).await)),
                    None => None,
                };
                let result = or_roll_back!(work(&mut tx).await);
                let records = std::mem::take(&mut tx.audit);
                if records.is_empty() {
                    tx.tx.commit().await.map_err(Error::db(op))?;
                    return Ok((result, Vec::new()));
                }
                // The head is held until the commit: nothing is sealed on a record that may
                // roll back.
                let sealing = std::time::Instant::now();
                let (chain, mut head, waited, (sealed, new_head, moved)) = match held.take() {
                    Some((chain, mut head, waited)) => {
                        let cached = head.take();
                        let done = or_roll_back!(
                            seal_into(&mut tx, chain, cached, self.audit_key(), &records).await
                        );
                        (chain, head, waited, done)
                    }
                    None => or_roll_back!(self.take_chain_and_seal(&mut tx, &records).await),
                };
                tx.tx.commit().await.map_err(Error::db(op))?;
                *head = Some(new_head);
                let mut serialized = waited;
                if moved > 0 {
                    // Another process had appended to this chain since this one last did:
                    // this one tries it last for a while, so the two stop sharing it.
                    serialized += sealing.elapsed();
                    self.mark_chain_elsewhere(chain);
                }
                self.count_serialized(serialized);
                Ok((result, sealed))
            }
        }
    }

    /// The audit chains in the order a unit tries them (see [`chain_preference`]).
    pub(crate) fn chain_preference(&self) -> impl Iterator<Item = u32> + Send + '_ {
        chain_preference(
            &self.chain_elsewhere_until,
            self.chain_clock,
            self.chain_scan_offset,
        )
    }

    /// The audit chains a unit may take now, each with this process's head of it held, in
    /// [`SqlStore::chain_preference`]; a head another unit of this process holds is skipped.
    /// Lazy: each chain's head is tried as the iteration reaches it.
    fn free_chains(&self) -> impl Iterator<Item = (u32, HeadGuard<'_>)> + Send + '_ {
        self.chain_preference().filter_map(move |chain| {
            let index = usize::try_from(chain).ok()?;
            let guard = self.audit_heads.get(index)?.try_lock().ok()?;
            Some((chain, guard))
        })
    }

    /// PostgreSQL: seals `records` on a free audit chain, held by `tx` until it ends: the
    /// first whose head this process does not hold and whose advisory lock no other session
    /// holds, trying first the chains no other session was found holding in the last
    /// [`CHAIN_ELSEWHERE_FOR`]. The first insert on a chain takes its lock in the same
    /// statement. Only when all are taken does it wait, for one picked in turn; returns how
    /// long it waited.
    async fn take_chain_and_seal(
        &self,
        tx: &mut SqlxTx,
        records: &[NewAuditRecord],
    ) -> Result<(u32, HeadGuard<'_>, Duration, Sealed)> {
        for (chain, mut guard) in self.free_chains() {
            let cached = guard.take();
            let probe = Some(chain_lock_key(chain));
            match seal_probing(tx, chain, cached, self.audit_key(), records, probe).await? {
                Some(done) => return Ok((chain, guard, Duration::ZERO, done)),
                None => {
                    // Still this process's last known head of the chain.
                    *guard = cached;
                    self.mark_chain_elsewhere(chain);
                }
            }
        }
        let count = u32::try_from(self.audit_heads.len()).unwrap_or(1).max(1);
        let chain = self
            .next_waited_chain
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % count;
        let (chain, mut guard, waited) = self.wait_for_chain(tx, chain).await?;
        let cached = guard.take();
        let done = seal_into(tx, chain, cached, self.audit_key(), records).await?;
        Ok((chain, guard, waited, done))
    }

    /// PostgreSQL: a unit of at most one fenced `update` and its audit `records` (at least
    /// one) as one statement, atomic by itself: one round trip where a transaction takes
    /// three or four (BEGIN, the update, the first insert, COMMIT).
    ///
    /// With an update, the statement locks the job's row under the fence first, then tries the
    /// advisory lock of a chain whose head this process holds and has cached; the first record
    /// goes in only with both, and the update and any further records only after it. The
    /// chain lock is only ever tried, never waited for, after the row lock: no deadlock with
    /// a unit that holds the row and waits for the chain. A chain held elsewhere is left for
    /// the next one; a head another process moved, or no cached head free, hands the unit back
    /// to run as a transaction ([`OneStatement::AsTransaction`]), which reads the head under
    /// the lock.
    pub(crate) async fn unit_in_one_statement(
        &self,
        op: &'static str,
        update: Option<FencedUpdate<'_>>,
        records: &[NewAuditRecord],
    ) -> Result<OneStatement> {
        if records.is_empty() {
            return Ok(OneStatement::AsTransaction);
        }
        let sql = one_statement_sql(
            update.as_ref().map(|u| (u.sql, u.args.len())),
            records.len(),
        );
        for (chain, mut guard) in self.free_chains() {
            let Some(cached) = *guard else {
                continue;
            };
            let mut all = Vec::with_capacity(
                update.as_ref().map_or(0, |u| u.args.len() + 2) + 1 + 5 * records.len(),
            );
            if let Some(u) = &update {
                all.extend_from_slice(u.args);
                all.extend([Arg::text(u.order_id), Arg::text(u.owner)]);
            }
            all.push(Arg::Int(chain_lock_key(chain)));
            let (head, sealed) = seal_args(self.audit_key(), chain, cached, records, &mut all)?;
            // Unknown until the statement answers: a failure leaves the head to be read.
            *guard = None;
            let started = std::time::Instant::now();
            let rows = match self.one_statement(op, &sql, &all).await {
                // The database answered with an error: the statement rolled back as a
                // whole.
                Err(e) if e.is_refused_by_database() => {
                    return Ok(OneStatement::AsTransaction);
                }
                other => other?,
            };
            let int = |name| count(rows.first(), name, op);
            if int("fenced")? == 0 {
                *guard = Some(cached);
                return Ok(OneStatement::Fenced);
            }
            if int("held")? != 1 {
                *guard = Some(cached);
                self.mark_chain_elsewhere(chain);
                continue;
            }
            if int("inserted")? == 0 {
                // Another process appended to this chain since this one last did.
                self.count_serialized(started.elapsed());
                self.mark_chain_elsewhere(chain);
                return Ok(OneStatement::AsTransaction);
            }
            if int("updated")? != 1 {
                return Err(audit_error(audit::Error::Backend {
                    op,
                    source: "the job's row, locked under its lease, was not updated".into(),
                }));
            }
            *guard = Some(head);
            return Ok(OneStatement::Written(sealed));
        }
        Ok(OneStatement::AsTransaction)
    }

    /// Another session was found holding `chain`, or had appended to it: this process tries
    /// it after the others for [`CHAIN_ELSEWHERE_FOR`].
    fn mark_chain_elsewhere(&self, chain: u32) {
        mark_chain_elsewhere(&self.chain_elsewhere_until, self.chain_clock, chain);
    }

    /// PostgreSQL: waits for `chain` (this process's head of it, then its advisory lock).
    async fn wait_for_chain(
        &self,
        tx: &mut SqlxTx,
        chain: u32,
    ) -> Result<(u32, HeadGuard<'_>, Duration)> {
        let started = std::time::Instant::now();
        let slot = usize::try_from(chain)
            .ok()
            .and_then(|i| self.audit_heads.get(i))
            .ok_or_else(|| {
                audit_error(audit::Error::Backend {
                    op: "audit: taking a chain",
                    source: format!("this store has no audit chain {chain}").into(),
                })
            })?;
        let guard = slot.lock().await;
        tx.exec(
            "audit: taking a chain",
            "SELECT pg_advisory_xact_lock($1)",
            &[Arg::Int(chain_lock_key(chain))],
        )
        .await
        .map_err(audit_backend)?;
        Ok((chain, guard, started.elapsed()))
    }

    /// Adds `spent` to the time units spent waiting for an audit chain or sealing again, and
    /// publishes the total as [`SERIALIZED_SECONDS`].
    fn count_serialized(&self, spent: Duration) {
        count_serialized(&self.serialized_micros, spent);
    }

    /// PostgreSQL: one statement on its own (atomic by itself, no BEGIN and COMMIT round
    /// trips), on the writer pool; its rows. For a unit that is one statement and seals no
    /// audit record.
    pub(crate) async fn one_statement(
        &self,
        op: &'static str,
        sql: &str,
        args: &[Arg],
    ) -> Result<Vec<Row>> {
        let rows = self
            .held
            .fetch_all(sql, args)
            .await
            .map_err(Error::db(op))?;
        rows.iter()
            .map(|r| Row::from_any(r).map_err(Error::db(op)))
            .collect()
    }

    /// [`SqlStore::one_statement`] for a statement without rows: how many rows it changed.
    pub(crate) async fn one_statement_exec(
        &self,
        op: &'static str,
        sql: &str,
        args: &[Arg],
    ) -> Result<u64> {
        Ok(self
            .held
            .execute(sql, args)
            .await
            .map_err(Error::db(op))?
            .rows_affected())
    }

    /// Reads on the reader pool, each statement on its own (no transaction).
    pub(crate) fn reads(&self) -> Reads<'_> {
        Reads {
            pool: self.reader(),
        }
    }

    /// Runs one read-only statement on the reader pool.
    pub(crate) async fn read(&self, op: &'static str, sql: &str, args: &[Arg]) -> Result<Vec<Row>> {
        self.reads().query(op, sql, args).await
    }

    /// The first row of a read, if any.
    pub(crate) async fn read_opt(
        &self,
        op: &'static str,
        sql: &str,
        args: &[Arg],
    ) -> Result<Option<Row>> {
        self.reads().query_opt(op, sql, args).await
    }

    /// The count a read selects as its column `n` (0 when it selects no row).
    pub(crate) async fn read_count(
        &self,
        op: &'static str,
        sql: &str,
        args: &[Arg],
    ) -> Result<u64> {
        let n = match self.read_opt(op, sql, args).await? {
            Some(row) => row.int("n", op)?.unwrap_or(0),
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// One statement as its own unit; returns the rows it changed.
    pub(crate) async fn write(
        &self,
        op: &'static str,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<u64> {
        self.transact(op, move |tx| {
            Box::pin(async move { tx.exec(op, sql, &args).await })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_chain_is_tried_once_chain_0_first_then_from_the_offset() {
        for count in [1_u32, 2, 3, 16] {
            for offset in 1..count.max(2) {
                let order: Vec<u32> = super::scan_order(count, offset).collect();
                assert_eq!(order.len(), count as usize, "{count} {offset}");
                assert_eq!(order[0], 0);
                if count > 1 {
                    assert_eq!(order[1], offset, "{count} {offset}");
                }
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..count).collect::<Vec<_>>(), "{count} {offset}");
            }
        }
    }
}
