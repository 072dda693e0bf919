//! PostgreSQL: the fenced writes of several jobs, with their audit records, as one statement.
//!
//! On its own, each fenced job write that carries audit records (a step, a reschedule, a
//! finish) is one statement ([`SqlStore::unit_in_one_statement`]): one round trip, one
//! commit and one flush of the write-ahead log per write, several per Order. Under load many
//! jobs write at the same moment, so a write first joins a queue. A *flusher* (at most
//! [`MAX_FLUSHERS`] at a time) takes what is queued, up to [`MAX_BATCH`] writes, and sends it
//! as one statement on an audit chain that no other unit of this process holds and whose head
//! it has cached (none free: each write runs on its own):
//!
//! 1. every job's row is locked under its fence (the job running under the claim token);
//! 2. then the chain's advisory lock is *tried* (never waited for, so no deadlock with a
//!    session that holds the chain and waits for a row);
//! 3. the records, sealed here one after another on the chain head this process cached, are
//!    inserted; a record whose place another process took (the head moved) inserts nothing;
//! 4. each job's row is updated.
//!
//! The writes and the records go as two JSON arrays, so the statement's text depends only on
//! which kinds of write the batch holds (their `UPDATE` texts and argument types), not on how
//! many or in what order: one prepared statement per set of kinds, and a plan of the same
//! size for one write as for eight ([`batch_sql`]). A batch of parts per write (a fence, an
//! insert and an update each) spent a fifth of the server's CPU setting up its plan's nodes
//! at every execution.
//!
//! The statement is all or nothing. If a fence fails, the chain is held elsewhere, its head
//! moved or a row was not updated, the statement raises an error, PostgreSQL rolls all of it
//! back, and every write of the batch runs on its own instead, exactly as it would have
//! without the batch (and meets the same fence, chain or head there). An outcome that is not
//! known (the connection was lost) is every write's error, as it would be for one write.
//!
//! A batch of one write costs what the write costs alone; a write never waits for others to
//! join on a timer. Before it takes a batch, a flusher lets the tasks that are ready run
//! (`yield_now`, until the queue stops growing, [`GATHER_ROUNDS`] times at most): jobs whose
//! answers just came in and are about to write join this batch instead of the next one. That
//! costs a turn of the runtime's queue, not a wait on a clock, and it made the batches larger
//! (4-5 writes per statement to 6-7 on one instance) and the server's CPU per Order smaller.
//! The flusher is a task of its own, not a caller's future: a caller that stops waiting (a
//! cancelled job) cannot strand the writes of the others or lose a chain head. It holds a
//! chain only for one statement, so a unit waiting for that chain is not kept out while
//! writes keep coming.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use audit::{ChainHead, NewAuditRecord};
use sqlx::AnyPool;
use tokio::sync::{OwnedMutexGuard, oneshot};

use crate::error::Error;
use crate::held::Held;
use crate::sql::SqlStore;
use crate::tx::{
    Arg, Heads, chain_arg, chain_lock_key, chain_preference, count_serialized,
    mark_chain_elsewhere, seal_args,
};

/// At most this many flushers write at a time (per process), each on a connection of its
/// own. One gave the most Orders per second on two cores (5,000 Orders, one instance): 573-631
/// against 554-586 with two and 492-521 with four; the fewer statements, the larger each
/// batch.
pub(crate) const MAX_FLUSHERS: u32 = 1;

/// At most this many writes go in one statement. The statement's text does not depend on
/// the number; eight was often reached once the flusher gathered the ready writes
/// ([`GATHER_ROUNDS`]).
pub(crate) const MAX_BATCH: usize = 16;

/// How many times at most a flusher lets the ready tasks run before it takes its batch (it
/// stops as soon as a turn queued nothing new).
pub(crate) const GATHER_ROUNDS: usize = 3;

/// The counter of statements that committed a batch of fenced writes.
pub const BATCH_STATEMENTS: &str = "provisioner_store_batch_statements_total";
/// The counter of fenced writes committed in those statements.
pub const BATCHED_WRITES: &str = "provisioner_store_batched_writes_total";

/// What the statement raises when a fence failed (some job is not running under its token).
const REFUSED_FENCE: &str = "batch refused: a fence failed";
/// ... when another session holds the chain's advisory lock.
const REFUSED_HELD: &str = "batch refused: chain held elsewhere";
/// ... when another process appended to the chain since this one cached its head.
const REFUSED_MOVED: &str = "batch refused: head moved";
/// ... when a row locked under its fence was not updated.
const REFUSED_NOT_UPDATED: &str = "batch refused: a row not updated";

/// One fenced write: `sql` is an `UPDATE jobs ... WHERE <fence>` on `args` (`$1..`), the
/// fence being the job `order_id` running under the claim token `owner`; `records` (at least
/// one) are its audit records.
pub(crate) struct Unit {
    /// What the write is, for its errors.
    pub(crate) op: &'static str,
    pub(crate) sql: String,
    pub(crate) args: Vec<Arg>,
    pub(crate) order_id: String,
    pub(crate) owner: String,
    pub(crate) records: Vec<NewAuditRecord>,
}

/// How a write sent through the queue ended.
#[derive(Debug)]
pub(crate) enum Batched {
    /// Committed, with its records.
    Written,
    /// Nothing of it was written: run it on its own.
    Alone,
    /// Its outcome is not known (the statement was sent, no answer came back).
    Failed(Error),
}

/// The queue of writes waiting for a flusher.
pub(crate) struct Batcher {
    /// The flushers' connections (PostgreSQL), kept between batches.
    held: Option<Held>,
    queue: std::sync::Mutex<Queue>,
    statements: AtomicU64,
    written: AtomicU64,
    refused: AtomicU64,
}

/// How the fenced writes of this process went to PostgreSQL together
/// ([`SqlStore::batch_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Statements that committed a batch.
    pub statements: u64,
    /// Writes committed in those statements.
    pub written: u64,
    /// Statements the database refused as a whole (a fence failed, the chain was held
    /// elsewhere or had moved): their writes then ran one by one.
    pub refused: u64,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    flushers: usize,
}

struct Waiting {
    unit: Unit,
    reply: oneshot::Sender<Batched>,
}

impl Batcher {
    /// A queue whose flushers write on `pool` (none: every write runs on its own).
    pub(crate) fn new(pool: Option<AnyPool>) -> Batcher {
        Batcher {
            // A flusher's connection waits for the next flusher, not for the pool's ping.
            held: pool.map(|pool| Held::new(pool, MAX_FLUSHERS as usize)),
            queue: std::sync::Mutex::default(),
            statements: AtomicU64::new(0),
            written: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Nothing panics while the lock is held; a poisoned queue is still consistent.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next writes for a flusher, or `None` (and one flusher fewer) when none wait.
    fn take(&self) -> Option<Vec<Waiting>> {
        let mut queue = self.queue();
        if queue.waiting.is_empty() {
            queue.flushers = queue.flushers.saturating_sub(1);
            return None;
        }
        let n = queue.waiting.len().min(MAX_BATCH);
        Some(queue.waiting.drain(..n).collect())
    }
}

fn answer_all(batch: Vec<Waiting>, answer: impl Fn() -> Batched) {
    for w in batch {
        // A caller that stopped waiting needs no answer.
        let _ = w.reply.send(answer());
    }
}

impl SqlStore {
    /// PostgreSQL: how this process's fenced writes (steps, reschedules, finishes with their
    /// audit records) went to the database together, several jobs' writes per statement. All
    /// zero on SQLite, whose writer commits its writes in batches of its own.
    pub fn batch_counts(&self) -> BatchCounts {
        use std::sync::atomic::Ordering::Relaxed;
        BatchCounts {
            statements: self.batcher.statements.load(Relaxed),
            written: self.batcher.written.load(Relaxed),
            refused: self.batcher.refused.load(Relaxed),
        }
    }

    /// PostgreSQL: sends `unit` with whatever other fenced writes are waiting, as one
    /// statement (see the module documentation).
    pub(crate) async fn write_batched(&self, unit: Unit) -> Batched {
        if self.batcher.held.is_none() {
            return Batched::Alone;
        }
        let op = unit.op;
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.batcher.queue();
            queue.waiting.push(Waiting { unit, reply });
            let start = queue.flushers < MAX_FLUSHERS as usize;
            if start {
                queue.flushers += 1;
            }
            start
        };
        if start {
            let flusher = Flusher {
                batcher: Arc::clone(&self.batcher),
                key: self.audit_key().clone(),
                heads: Arc::clone(&self.audit_heads),
                marks: Arc::clone(&self.chain_elsewhere_until),
                clock: self.chain_clock,
                offset: self.chain_scan_offset,
                serialized: Arc::clone(&self.serialized_micros),
                finished: false,
            };
            tokio::spawn(flusher.run());
        }
        answer
            .await
            .unwrap_or_else(|_| Batched::Failed(lost(op, "the batch's flusher stopped".to_owned())))
    }
}

/// The error of a write whose outcome is not known.
fn lost(op: &'static str, why: String) -> Error {
    Error::Database {
        op,
        source: sqlx::Error::Io(std::io::Error::other(why)),
    }
}

/// Writes batches until none wait, each on a chain free at the time.
struct Flusher {
    batcher: Arc<Batcher>,
    key: audit::AuditKey,
    heads: Heads,
    marks: Arc<Vec<AtomicU64>>,
    clock: Instant,
    offset: u32,
    serialized: Arc<AtomicU64>,
    /// Whether `run` ended by finding the queue empty (and so is no longer counted).
    finished: bool,
}

impl Drop for Flusher {
    /// A flusher dropped before it finished (a panic, a runtime shutting down) gives every
    /// waiting write back to run on its own, and stops being counted, so that no write waits
    /// for a flusher that is gone.
    fn drop(&mut self) {
        if !self.finished {
            let waiting = {
                let mut queue = self.batcher.queue();
                queue.flushers = queue.flushers.saturating_sub(1);
                std::mem::take(&mut queue.waiting)
            };
            answer_all(waiting, || Batched::Alone);
        }
    }
}

impl Flusher {
    async fn run(mut self) {
        loop {
            // Let every job that is ready run first: those about to write join this batch.
            // Until the queue stops growing, a few times at most.
            let mut queued = self.batcher.queue().waiting.len();
            for _ in 0..GATHER_ROUNDS {
                tokio::task::yield_now().await;
                let now = self.batcher.queue().waiting.len();
                if now == queued || now >= MAX_BATCH {
                    break;
                }
                queued = now;
            }
            let Some(batch) = self.batcher.take() else {
                break;
            };
            match self.free_cached_chain() {
                Some((chain, head)) => self.flush(chain, head, batch).await,
                // Every head is held or unknown: each write takes its chain on its own.
                None => answer_all(batch, || Batched::Alone),
            }
        }
        self.finished = true;
    }

    /// A chain that no unit of this process holds and whose head this process has cached,
    /// held until the guard drops.
    fn free_cached_chain(&self) -> Option<(u32, OwnedMutexGuard<Option<ChainHead>>)> {
        chain_preference(&self.marks, self.clock, self.offset).find_map(|chain| {
            let slot = self.heads.get(usize::try_from(chain).ok()?)?;
            let head = Arc::clone(slot).try_lock_owned().ok()?;
            head.is_some().then_some((chain, head))
        })
    }

    /// Writes `batch` as one statement on `chain` (its cached `head` held) and answers every
    /// write.
    async fn flush(
        &self,
        chain: u32,
        mut head: OwnedMutexGuard<Option<ChainHead>>,
        batch: Vec<Waiting>,
    ) {
        let Some(cached) = *head else {
            drop(head);
            answer_all(batch, || Batched::Alone);
            return;
        };
        // The statement's text depends only on which kinds of write the batch holds (their
        // update texts and argument types), never on how many of each or in what order: one
        // prepared statement per set of kinds, and a plan whose size does not grow with the
        // batch.
        let Some(form) = BatchForm::of(batch.iter().map(|w| (w.unit.sql.as_str(), &w.unit.args)))
        else {
            // An argument the form cannot carry: each write runs on its own.
            drop(head);
            answer_all(batch, || Batched::Alone);
            return;
        };
        let Some(sql) = batch_sql(&form.kinds) else {
            // An update whose text cannot be rewritten: each write runs on its own.
            drop(head);
            answer_all(batch, || Batched::Alone);
            return;
        };
        let mut record_args =
            Vec::with_capacity(batch.iter().map(|w| 5 * w.unit.records.len()).sum());
        let records = batch.iter().flat_map(|w| w.unit.records.iter());
        let sealed = seal_args(&self.key, chain, cached, records, &mut record_args);
        let (Ok((next, _)), Some(held)) = (sealed, &self.batcher.held) else {
            // Each write meets this again on its own, with its error (a batcher without
            // connections starts no flusher: `write_batched` answers `Alone` first).
            drop(head);
            answer_all(batch, || Batched::Alone);
            return;
        };
        let writes = batch.iter().zip(&form.groups).map(|(w, &group)| {
            (
                group,
                w.unit.order_id.as_str(),
                w.unit.owner.as_str(),
                w.unit.args.as_slice(),
            )
        });
        let args = match batch_args(
            writes,
            chain_lock_key(chain),
            chain_arg(chain),
            &record_args,
        ) {
            Some(args) => args,
            None => {
                drop(head);
                answer_all(batch, || Batched::Alone);
                return;
            }
        };
        use std::sync::atomic::Ordering::Relaxed;
        // Unknown until the statement answers.
        *head = None;
        let started = Instant::now();
        match held.fetch_all(&sql, &args).await {
            Ok(_) => {
                *head = Some(next);
                let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
                self.batcher.statements.fetch_add(1, Relaxed);
                self.batcher.written.fetch_add(n, Relaxed);
                metrics::counter!(BATCH_STATEMENTS).increment(1);
                metrics::counter!(BATCHED_WRITES).increment(n);
                drop(head);
                answer_all(batch, || Batched::Written);
            }
            Err(sqlx::Error::Database(e)) => {
                // Rolled back as a whole: nothing of the batch was written.
                self.batcher.refused.fetch_add(1, Relaxed);
                let message = e.message();
                if message.contains(REFUSED_HELD) {
                    *head = Some(cached);
                    mark_chain_elsewhere(&self.marks, self.clock, chain);
                    count_serialized(&self.serialized, started.elapsed());
                } else if message.contains(REFUSED_MOVED) {
                    // The head is read again by the next unit on this chain.
                    mark_chain_elsewhere(&self.marks, self.clock, chain);
                    count_serialized(&self.serialized, started.elapsed());
                } else if message.contains(REFUSED_FENCE) || message.contains(REFUSED_NOT_UPDATED) {
                    *head = Some(cached);
                }
                // Anything else (a deadlock, say): the head is read again.
                // The chain is free before any write runs on its own, so each can take it.
                drop(head);
                answer_all(batch, || Batched::Alone);
            }
            Err(e) => {
                drop(head);
                let why = e.to_string();
                for w in batch {
                    let _ = w.reply.send(Batched::Failed(lost(w.unit.op, why.clone())));
                }
            }
        }
    }
}

/// The most arguments an update of a batch may take (`advance` takes 7, a reschedule 8).
const MAX_ARGS: usize = 12;

/// How an argument is carried: `'i'` a 64-bit integer, `'t'` text (which may be null); a blob
/// is not.
fn arg_type(arg: &Arg) -> Option<u8> {
    match arg {
        Arg::Int(_) => Some(b'i'),
        Arg::Text(_) => Some(b't'),
        Arg::Blob(_) => None,
    }
}

/// One kind of write in a batch: its `UPDATE jobs ... WHERE <fence>` (parameters from `$1`)
/// and the type of each parameter (`'i'` a 64-bit integer, `'t'` text, which may be null).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Kind<'a> {
    pub(crate) update: &'a str,
    pub(crate) types: Vec<u8>,
}

/// The kinds of write a batch holds, in a canonical order, and each write's kind (an index
/// into `kinds`), in the batch's order.
#[derive(Debug)]
pub(crate) struct BatchForm<'a> {
    pub(crate) kinds: Vec<Kind<'a>>,
    pub(crate) groups: Vec<usize>,
}

impl<'a> BatchForm<'a> {
    /// The form of writes given as (update, arguments); `None` when an update takes more than
    /// [`MAX_ARGS`] parameters or one is a blob, which the statement does not carry.
    pub(crate) fn of(writes: impl Iterator<Item = (&'a str, &'a Vec<Arg>)>) -> Option<Self> {
        let mut each = Vec::new();
        for (update, args) in writes {
            if args.len() > MAX_ARGS {
                return None;
            }
            let types = args.iter().map(arg_type).collect::<Option<Vec<u8>>>()?;
            each.push(Kind { update, types });
        }
        let mut kinds = each.clone();
        kinds.sort();
        kinds.dedup();
        let groups = each
            .iter()
            .map(|k| kinds.binary_search(k).unwrap_or_default())
            .collect();
        Some(BatchForm { kinds, groups })
    }
}

/// `update` (an `UPDATE jobs SET .. WHERE ..` on `$1..`) as one update of every write of kind
/// `group` in the batch's writes `w`: each `$n` becomes that write's column, and the writes
/// are joined by the `WHERE` clause's own `order_id` test.
fn set_update(kind: &Kind<'_>, group: usize) -> Option<String> {
    let at = kind.update.rfind(" WHERE ")?;
    let (set, rest) = kind.update.split_at(at);
    let rest = &rest[" WHERE ".len()..];
    let column = |sql: &str| -> Option<String> {
        let mut out = String::with_capacity(sql.len() + 64);
        let mut tail = sql;
        while let Some(at) = tail.find('$') {
            out.push_str(&tail[..at]);
            tail = &tail[at + 1..];
            let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
            let n: usize = tail[..digits].parse().ok()?;
            let t = *kind.types.get(n.checked_sub(1)?)?;
            out.push_str(&format!("w.w_{}{n}", char::from(t)));
            tail = &tail[digits..];
        }
        out.push_str(tail);
        Some(out)
    };
    Some(format!(
        "{} FROM w WHERE w.w_g = {group} AND {}",
        column(set)?,
        column(rest)?
    ))
}

/// The statement of a batch whose writes are of `kinds` ([`BatchForm`]). Its text depends
/// on the kinds only. Parameters: `$1` the writes as a JSON array (per write: `w_g` its kind,
/// `w_order`, `w_owner`, and its update's parameters as `w_i<n>` / `w_t<n>`), `$2` how many,
/// `$3` the chain's lock key, `$4` the chain, `$5` the records as a JSON array (per record:
/// `s` seq, `a` at, `r` the sealed record, `o` its Order Id), `$6` how many. It answers one
/// row, or raises one of the `REFUSED_*` errors, in which case nothing of it was written.
/// `None` when an update is not of the form `UPDATE jobs SET .. WHERE ..` on `$1..$n`.
///
/// 1. `f` locks each write's job under its fence (the job running under the claim token),
///    one probe of the unique `order_id` per write (a lateral subquery, whatever the
///    statistics say);
/// 2. `lock` tries the chain's advisory lock only if every fence held;
/// 3. `r` inserts the records; a record whose `(chain, seq)` another process took first
///    inserts nothing (the head moved);
/// 4. one `UPDATE` per kind updates its writes' rows, only if every record went in.
pub(crate) fn batch_sql(kinds: &[Kind<'_>]) -> Option<String> {
    let width = kinds.iter().map(|k| k.types.len()).max().unwrap_or(0);
    let mut columns = String::from("w_g INTEGER, w_order TEXT, w_owner TEXT");
    for n in 1..=width {
        columns.push_str(&format!(", w_i{n} BIGINT, w_t{n} TEXT"));
    }
    let mut ctes = vec![
        // At most `MAX_BATCH` rows: a constant limit, so the planner expects a handful of
        // writes and joins each to `jobs` by its unique `order_id`.
        format!(
            "w AS (SELECT * FROM json_to_recordset(CAST($1 AS json)) AS x({columns}) \
             LIMIT {MAX_BATCH})"
        ),
        format!(
            "f AS (SELECT l.one FROM w CROSS JOIN LATERAL (SELECT 1 AS one FROM jobs \
             WHERE order_id = w.w_order AND lease_owner = w.w_owner AND {} \
             FOR NO KEY UPDATE) l)",
            crate::jobs::FENCE_RUNNING
        ),
        "lock AS (SELECT pg_try_advisory_xact_lock($3) AS held \
         WHERE (SELECT COUNT(*) FROM f) = $2)"
            .to_owned(),
        "r AS (INSERT INTO audit_log (chain, seq, at, record, order_id, job) \
         SELECT $4, x.s, x.a, x.r, x.o, (SELECT j.seq FROM jobs j WHERE j.order_id = x.o) \
         FROM json_to_recordset(CAST($5 AS json)) AS x(s BIGINT, a BIGINT, r TEXT, o TEXT), \
         lock WHERE lock.held \
         ON CONFLICT (chain, seq) DO NOTHING RETURNING seq)"
            .to_owned(),
    ];
    let mut updated = Vec::with_capacity(kinds.len());
    for (k, kind) in kinds.iter().enumerate() {
        let update = set_update(kind, k)?;
        ctes.push(format!(
            "u{k} AS ({update} AND (SELECT COUNT(*) FROM r) = $6 RETURNING 1)"
        ));
        updated.push(format!("(SELECT COUNT(*) FROM u{k})"));
    }
    if updated.is_empty() {
        updated.push("0".to_owned());
    }
    Some(format!(
        "WITH {} SELECT CAST(CASE \
         WHEN (SELECT COUNT(*) FROM lock) = 0 THEN '{REFUSED_FENCE}' \
         WHEN NOT (SELECT held FROM lock) THEN '{REFUSED_HELD}' \
         WHEN (SELECT COUNT(*) FROM r) <> $6 THEN '{REFUSED_MOVED}' \
         WHEN {} <> $2 THEN '{REFUSED_NOT_UPDATED}' \
         ELSE '1' END AS INTEGER) AS ok",
        ctes.join(", "),
        updated.join(" + "),
    ))
}

/// The parameters of [`batch_sql`]: the writes as (kind, order id, claim token, update
/// arguments), the chain's lock key and chain, and the records' arguments as
/// [`seal_args`] gives them (five per record: seq, at, record, Order Id, chain). `None` when
/// an argument does not fit the form (a blob).
pub(crate) fn batch_args<'w>(
    writes: impl Iterator<Item = (usize, &'w str, &'w str, &'w [Arg])>,
    lock_key: i64,
    chain: Arg,
    record_args: &[Arg],
) -> Option<Vec<Arg>> {
    use serde_json::{Map, Value};
    fn value(arg: &Arg) -> Option<Value> {
        match arg {
            Arg::Int(v) => Some(Value::from(*v)),
            Arg::Text(Some(v)) => Some(Value::from(v.as_str())),
            Arg::Text(None) => Some(Value::Null),
            Arg::Blob(_) => None,
        }
    }
    let mut rows = Vec::new();
    for (group, order_id, owner, args) in writes {
        let mut row = Map::new();
        row.insert("w_g".to_owned(), Value::from(group));
        row.insert("w_order".to_owned(), Value::from(order_id));
        row.insert("w_owner".to_owned(), Value::from(owner));
        for (n, arg) in args.iter().enumerate() {
            let t = char::from(arg_type(arg)?);
            row.insert(format!("w_{t}{}", n + 1), value(arg)?);
        }
        rows.push(Value::Object(row));
    }
    let mut records = Vec::with_capacity(record_args.len() / 5);
    for r in record_args.chunks(5) {
        let [seq, at, record, order_id, _chain] = r else {
            return None;
        };
        let mut row = Map::new();
        row.insert("s".to_owned(), value(seq)?);
        row.insert("a".to_owned(), value(at)?);
        row.insert("r".to_owned(), value(record)?);
        row.insert("o".to_owned(), value(order_id)?);
        records.push(Value::Object(row));
    }
    let count = |n: usize| Arg::Int(i64::try_from(n).unwrap_or(i64::MAX));
    let (writes, recorded) = (count(rows.len()), count(records.len()));
    Some(vec![
        Arg::text(Value::Array(rows).to_string()),
        writes,
        Arg::Int(lock_key),
        chain,
        Arg::text(Value::Array(records).to_string()),
        recorded,
    ])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const ADVANCE: &str =
        "UPDATE jobs SET step = $1, n = COALESCE($2, n) WHERE order_id = $3 AND lease_owner = $4";
    const FINISH: &str = "UPDATE jobs SET state = $1 WHERE order_id = $2 AND lease_owner = $3";

    fn text(v: &str) -> Arg {
        Arg::text(v)
    }

    #[test]
    fn the_text_depends_on_the_kinds_of_write_not_their_number_or_order() {
        let a = vec![text("checked"), Arg::Text(None), text("o1"), text("w:1")];
        let b = vec![text("intent"), Arg::Text(None), text("o2"), text("w:2")];
        let f = vec![text("done"), text("o3"), text("w:3")];
        let one = BatchForm::of([(ADVANCE, &a), (FINISH, &f)].into_iter()).unwrap();
        let other =
            BatchForm::of([(FINISH, &f), (ADVANCE, &a), (ADVANCE, &b)].into_iter()).unwrap();
        assert_eq!(one.kinds, other.kinds);
        assert_eq!(batch_sql(&one.kinds), batch_sql(&other.kinds));
        assert!(batch_sql(&one.kinds).is_some());
        // Each write names its kind by its place among the sorted kinds.
        let advance = one.kinds.iter().position(|k| k.update == ADVANCE).unwrap();
        let finish = one.kinds.iter().position(|k| k.update == FINISH).unwrap();
        assert_eq!(other.groups, vec![finish, advance, advance]);
        // Another argument type is another kind (another text).
        let typed = vec![Arg::Int(1), Arg::Text(None), text("o1"), text("w:1")];
        let third = BatchForm::of([(ADVANCE, &a), (ADVANCE, &typed)].into_iter()).unwrap();
        assert_eq!(third.kinds.len(), 2);
        // A blob is not carried: the writes run on their own.
        let blob = vec![Arg::Blob(Some(vec![1]))];
        assert!(BatchForm::of([(FINISH, &blob)].into_iter()).is_none());
    }

    #[test]
    fn each_kind_updates_its_writes_from_their_columns() {
        let a = vec![text("checked"), Arg::Text(None), text("o1"), text("w:1")];
        let f = vec![Arg::Int(7), text("o3"), text("w:3")];
        let form = BatchForm::of([(ADVANCE, &a), (FINISH, &f)].into_iter()).unwrap();
        let sql = batch_sql(&form.kinds).unwrap();
        let advance = form.kinds.iter().position(|k| k.update == ADVANCE).unwrap();
        let finish = form.kinds.iter().position(|k| k.update == FINISH).unwrap();
        assert!(sql.contains(&format!(
            "u{advance} AS (UPDATE jobs SET step = w.w_t1, n = COALESCE(w.w_t2, n) FROM w \
             WHERE w.w_g = {advance} AND order_id = w.w_t3 AND lease_owner = w.w_t4 \
             AND (SELECT COUNT(*) FROM r) = $6 RETURNING 1)"
        )));
        assert!(sql.contains(&format!(
            "u{finish} AS (UPDATE jobs SET state = w.w_i1 FROM w WHERE w.w_g = {finish} \
             AND order_id = w.w_t2 AND lease_owner = w.w_t3"
        )));
        assert!(sql.contains("w_g INTEGER, w_order TEXT, w_owner TEXT, w_i1 BIGINT, w_t1 TEXT"));
        assert!(sql.contains("w_i4 BIGINT, w_t4 TEXT)"));
        assert!(!sql.contains("w_t5"));
        assert!(sql.contains("(SELECT COUNT(*) FROM u0) + (SELECT COUNT(*) FROM u1) <> $2"));
        assert!(!sql.contains("$7"));
        // An update without a WHERE clause, or a parameter past its arguments: no statement
        // (each write then runs on its own).
        let no_where = Kind {
            update: "UPDATE jobs SET step = $1",
            types: vec![b't'],
        };
        assert!(batch_sql(&[no_where]).is_none());
        let past = Kind {
            update: "UPDATE jobs SET step = $2 WHERE order_id = $1",
            types: vec![b't'],
        };
        assert!(batch_sql(&[past]).is_none());
    }

    #[test]
    fn the_writes_and_records_go_as_json_rows() {
        let a = vec![text("checked"), Arg::Text(None), text("o1"), text("w:1")];
        let records = vec![
            Arg::Int(41),
            Arg::Int(1_700_000_000_000_001),
            text("{\"seq\":41,\"x\":\"\\\"q\\\"\"}"),
            text("801000000000000001"),
            Arg::Int(3),
        ];
        let args = batch_args(
            [(0, "o1", "w:1", a.as_slice())].into_iter(),
            99,
            Arg::Int(3),
            &records,
        )
        .unwrap();
        let [
            Arg::Text(Some(writes)),
            Arg::Int(1),
            Arg::Int(99),
            Arg::Int(3),
            Arg::Text(Some(recs)),
            Arg::Int(1),
        ] = args.as_slice()
        else {
            panic!("unexpected arguments {args:?}");
        };
        let writes: serde_json::Value = serde_json::from_str(writes).unwrap();
        assert_eq!(
            writes,
            serde_json::json!([{"w_g": 0, "w_order": "o1", "w_owner": "w:1",
                "w_t1": "checked", "w_t2": null, "w_t3": "o1", "w_t4": "w:1"}])
        );
        let recs: serde_json::Value = serde_json::from_str(recs).unwrap();
        assert_eq!(
            recs,
            serde_json::json!([{"s": 41, "a": 1_700_000_000_000_001_i64,
                "r": "{\"seq\":41,\"x\":\"\\\"q\\\"\"}", "o": "801000000000000001"}])
        );
        // A blob anywhere: not carried.
        let blob = vec![Arg::Blob(None)];
        assert!(
            batch_args(
                [(0, "o1", "w:1", blob.as_slice())].into_iter(),
                1,
                Arg::Int(0),
                &[]
            )
            .is_none()
        );
    }
}
