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
//!    inserted; the first one inserts nothing if another process moved the head;
//! 4. each job's row is updated.
//!
//! The statement is all or nothing. If a fence fails, the chain is held elsewhere, its head
//! moved or a row was not updated, the statement raises an error, PostgreSQL rolls all of it
//! back, and every write of the batch runs on its own instead, exactly as it would have
//! without the batch (and meets the same fence, chain or head there). An outcome that is not
//! known (the connection was lost) is every write's error, as it would be for one write.
//!
//! A batch of one write costs what the write costs alone; a write never waits for others to
//! join (a flusher takes what is queued when it is free). The flusher is a task of its own,
//! not a caller's future: a caller that stops waiting (a cancelled job) cannot strand the
//! writes of the others or lose a chain head. It holds a chain only for one statement, so a
//! unit waiting for that chain is not kept out while writes keep coming.

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
    Arg, Heads, chain_lock_key, chain_preference, count_serialized, mark_chain_elsewhere, seal_args,
};

/// At most this many flushers write at a time (per process), each on a connection of its
/// own. One gave the most Orders per second on two cores (5,000 Orders, one instance): 573-631
/// against 554-586 with two and 492-521 with four; the fewer statements, the larger each
/// batch.
pub(crate) const MAX_FLUSHERS: u32 = 1;

/// At most this many writes go in one statement (16 gave no more Orders per second than 8,
/// and more texts to prepare).
pub(crate) const MAX_BATCH: usize = 8;

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
        while let Some(batch) = self.batcher.take() {
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
        mut batch: Vec<Waiting>,
    ) {
        let Some(cached) = *head else {
            drop(head);
            answer_all(batch, || Batched::Alone);
            return;
        };
        // Writes of the same kinds give the same text, so the prepared statement is reused.
        batch.sort_by(|a, b| {
            (a.unit.sql.as_str(), a.unit.records.len())
                .cmp(&(b.unit.sql.as_str(), b.unit.records.len()))
        });
        let shapes: Vec<Shape<'_>> = batch
            .iter()
            .map(|w| Shape {
                update: &w.unit.sql,
                args: w.unit.args.len(),
                records: w.unit.records.len(),
            })
            .collect();
        let sql = batch_sql(&shapes);
        let mut args = Vec::with_capacity(batch.iter().map(|w| w.unit.args.len() + 7).sum());
        for w in &batch {
            args.extend_from_slice(&w.unit.args);
            args.push(Arg::text(w.unit.order_id.as_str()));
            args.push(Arg::text(w.unit.owner.as_str()));
        }
        args.push(Arg::Int(chain_lock_key(chain)));
        let records = batch.iter().flat_map(|w| w.unit.records.iter());
        let sealed = seal_args(&self.key, chain, cached, records, &mut args);
        let (Ok((next, _)), Some(held)) = (sealed, &self.batcher.held) else {
            // Each write meets this again on its own, with its error (a batcher without
            // connections starts no flusher: `write_batched` answers `Alone` first).
            drop(head);
            answer_all(batch, || Batched::Alone);
            return;
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

/// The shape of one write in a batch statement.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape<'a> {
    /// Its `UPDATE jobs ... WHERE <fence>`, parameters from `$1`.
    pub(crate) update: &'a str,
    /// How many parameters `update` takes.
    pub(crate) args: usize,
    /// How many audit records it carries (at least one).
    pub(crate) records: usize,
}

/// `sql` with every parameter `$n` renumbered `$(n + offset)`.
pub(crate) fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(n) = rest[..digits].parse::<usize>() {
            out.push_str(&(n + offset).to_string());
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// The statement of one batch. Parameters: per write, its update's, then its order id and
/// owner; then the chain's lock key; then five per record in the order of the writes
/// (`seq, at, record, order_id, chain`). It answers one row, or raises one of the
/// `REFUSED_*` errors, in which case nothing of it was written.
pub(crate) fn batch_sql(writes: &[Shape<'_>]) -> String {
    let mut ctes = Vec::with_capacity(3 * writes.len() + 2);
    let mut fences = Vec::with_capacity(writes.len());
    let mut updates = Vec::with_capacity(writes.len());
    let mut used = 0;
    for (k, w) in writes.iter().enumerate() {
        let (order_id, owner) = (used + w.args + 1, used + w.args + 2);
        ctes.push(format!(
            "f{k} AS (SELECT 1 AS one FROM jobs WHERE order_id = ${order_id} \
             AND lease_owner = ${owner} AND {} FOR NO KEY UPDATE)",
            crate::jobs::FENCE_RUNNING
        ));
        fences.push(format!("f{k}"));
        updates.push(renumber(w.update, used));
        used += w.args + 2;
    }
    let lock = used + 1;
    ctes.push(format!(
        "lock AS (SELECT pg_try_advisory_xact_lock(${lock}) AS held FROM {})",
        fences.join(", ")
    ));
    let records: usize = writes.iter().map(|w| w.records).sum();
    for r in 0..records.max(1) {
        let b = lock + 5 * r;
        let values = crate::tx::audit_select(b + 5, b + 1, b + 2, b + 3, b + 4);
        ctes.push(if r == 0 {
            format!(
                "r0 AS ({values} FROM lock WHERE lock.held \
                 ON CONFLICT (chain, seq) DO NOTHING RETURNING seq)"
            )
        } else {
            format!("r{r} AS ({values} FROM r0)")
        });
    }
    let mut updated = Vec::with_capacity(writes.len());
    for (k, update) in updates.iter().enumerate() {
        ctes.push(format!(
            "u{k} AS ({update} AND EXISTS (SELECT 1 FROM r0) RETURNING 1)"
        ));
        updated.push(format!("(SELECT COUNT(*) FROM u{k})"));
    }
    format!(
        "WITH {} SELECT CAST(CASE \
         WHEN (SELECT COUNT(*) FROM lock) = 0 THEN '{REFUSED_FENCE}' \
         WHEN NOT (SELECT held FROM lock) THEN '{REFUSED_HELD}' \
         WHEN (SELECT COUNT(*) FROM r0) = 0 THEN '{REFUSED_MOVED}' \
         WHEN {} <> {} THEN '{REFUSED_NOT_UPDATED}' \
         ELSE '1' END AS INTEGER) AS ok",
        ctes.join(", "),
        updated.join(" + "),
        writes.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_past_the_writes_before() {
        assert_eq!(
            renumber("UPDATE jobs SET a = $1, b = $12 WHERE c = $2", 10),
            "UPDATE jobs SET a = $11, b = $22 WHERE c = $12"
        );
        assert_eq!(renumber("no parameters", 3), "no parameters");
        assert_eq!(renumber("a lone $ sign, $x", 3), "a lone $ sign, $x");
        assert_eq!(renumber("ends with $9", 1), "ends with $10");
    }

    #[test]
    fn a_batch_numbers_each_write_then_the_lock_then_the_records() {
        let update = "UPDATE jobs SET step = $1 WHERE order_id = $2 AND lease_owner = $3";
        let sql = batch_sql(&[
            Shape {
                update,
                args: 3,
                records: 1,
            },
            Shape {
                update,
                args: 3,
                records: 2,
            },
        ]);
        // Write 0: $1..$3, fence $4 $5; write 1: $6..$8, fence $9 $10; lock $11.
        assert!(
            sql.contains(
                "f0 AS (SELECT 1 AS one FROM jobs WHERE order_id = $4 AND lease_owner = $5"
            )
        );
        assert!(sql.contains(
            "f1 AS (SELECT 1 AS one FROM jobs WHERE order_id = $9 AND lease_owner = $10"
        ));
        assert!(sql.contains("pg_try_advisory_xact_lock($11) AS held FROM f0, f1"));
        assert!(
            sql.contains(
                "u1 AS (UPDATE jobs SET step = $6 WHERE order_id = $7 AND lease_owner = $8"
            )
        );
        // Three records, five parameters each after the lock: chain is the fifth.
        assert!(sql.contains(
            "SELECT $16, $12, $13, $14, $15, (SELECT seq FROM jobs WHERE order_id = $15) \
             FROM lock WHERE lock.held"
        ));
        assert!(sql.contains(
            "r2 AS (INSERT INTO audit_log (chain, seq, at, record, order_id, job) \
             SELECT $26, $22, $23, $24, $25, (SELECT seq FROM jobs WHERE order_id = $25) FROM r0)"
        ));
        assert!(!sql.contains("$27"));
        assert!(sql.contains("(SELECT COUNT(*) FROM u0) + (SELECT COUNT(*) FROM u1) <> 2"));
    }
}
