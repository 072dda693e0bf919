//! Jobs: the idempotency ledger. Claims under leases, recovery points, and the end of a job,
//! each a unit of the one transaction API, with its audit records in the same transaction.

use std::sync::atomic::Ordering;
use std::time::Duration;

use audit::NewAuditRecord;
use chrono::{DateTime, Utc};

use crate::dead_letters;
use crate::error::{Error, Result};
use crate::sql::SqlStore;
use crate::sql::{Backend, NowSource};
use crate::tx::{Arg, FencedUpdate, OneStatement, Row, Tx};
use crate::types::{
    Intent, Job, JobCounts, JobEnd, JobFilter, JobSource, JobState, NewJob, RateTake, Reopen,
    Reschedule, SharedRate, Step, StepUpdate, from_ms, ms,
};

pub(crate) const JOB_COLS: &str = "seq, order_id, customer_number, account_id, event_id, source, \
    state, step, whmcs_order_id, service_ids, attempts, next_attempt_at, lease_owner, \
    lease_until, last_error, created_at, updated_at, reopened_by, reopened_at, writeback_since, \
    stuck_alerted_at, claim_epoch, intent_sent_at, intent_timeout_ms";

pub(crate) fn job_from_row(row: &Row) -> Result<Job> {
    const W: &str = "job";
    let int = |name| Row::required(row.int(name, W)?, name, W);
    let text = |name| Row::required(row.text(name, W)?, name, W);
    let opt_time = |name| row.int(name, W)?.map(|v| from_ms(W, v)).transpose();
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
        reopened_by: row
            .text("reopened_by", W)?
            .map(|s| JobSource::parse(&s))
            .transpose()?,
        reopened_at: opt_time("reopened_at")?,
        writeback_since: opt_time("writeback_since")?,
        stuck_alerted_at: opt_time("stuck_alerted_at")?,
        claim_epoch: int("claim_epoch")?,
        intent: match (
            opt_time("intent_sent_at")?,
            row.int("intent_timeout_ms", W)?,
        ) {
            (Some(sent_at), Some(timeout)) => Some(Intent {
                sent_at,
                timeout: Duration::from_millis(u64::try_from(timeout).unwrap_or(0)),
            }),
            _ => None,
        },
    })
}

/// A new pending job. Its `turn` (claims walk the due jobs by turn, see [`claim_sql`]) is one
/// past its customer's last pending job (turns grow with arrival within a customer), and never
/// below the round the queue is at (the lowest turn of a pending job): a customer's hundred
/// Orders queued at once take a hundred rounds, one per round, while another customer's
/// single Order arriving meanwhile joins the current round.
pub(crate) const SQL_INSERT_JOB: &str = "INSERT INTO jobs (order_id, customer_number, account_id, \
     event_id, source, state, step, attempts, next_attempt_at, created_at, updated_at, turn) \
     VALUES ($1, $2, $3, $4, $5, 'pending', 'received', 0, $6, $6, $6, \
         (SELECT CASE WHEN t.mine > t.cur THEN t.mine ELSE t.cur END FROM (SELECT \
             COALESCE((SELECT l.turn + 1 FROM jobs l WHERE l.customer_number = $2 \
                 AND l.state = 'pending' ORDER BY l.seq DESC LIMIT 1), 0) AS mine, \
             COALESCE((SELECT p.turn FROM jobs p WHERE p.state = 'pending' \
                 ORDER BY p.turn LIMIT 1), 0) AS cur) AS t)) \
     ON CONFLICT (order_id) DO NOTHING";

pub(crate) fn job_args(job: &NewJob, now: DateTime<Utc>) -> Vec<Arg> {
    vec![
        Arg::text(job.order_id.as_str()),
        Arg::text(job.customer_number.as_str()),
        Arg::Text(job.account_id.clone()),
        Arg::Text(job.event_id.clone()),
        Arg::text(job.source.as_str()),
        Arg::Int(ms(now)),
    ]
}

/// The database's clock, in milliseconds since the epoch, as SQL: PostgreSQL's own (the
/// statement's start), so instances whose clocks disagree still agree on when a lease ends and
/// when an intent was stored; on SQLite (one process, on this machine) the caller's `now`,
/// bound as parameter `now_param` (and under [`crate::StoreClock::Caller`] on every backend).
pub(crate) fn now_sql(source: NowSource, now_param: &str) -> String {
    match source {
        NowSource::Caller => now_param.to_owned(),
        NowSource::Postgres => {
            "CAST(FLOOR(EXTRACT(EPOCH FROM statement_timestamp()) * 1000) AS BIGINT)".to_owned()
        }
    }
}

/// The state test of a claim's fence (`order_id = .. AND lease_owner = .. AND` this), written
/// so that no index can serve it: the job is found by `order_id` (unique), whatever the
/// planner's statistics say. PostgreSQL, on statistics taken while few jobs ran (a fresh or a
/// quiet table), planned `state = 'running'` as an index scan of every running job
/// (`jobs_turns`, `jobs_one_running_per_customer`) filtered by `order_id`: a write per step
/// that grows with the jobs claimed, by every instance.
macro_rules! fence_running {
    () => {
        "(state || '') = 'running'"
    };
}

/// [`fence_running!`] as a constant, for statements built with `format!`.
pub(crate) const FENCE_RUNNING: &str = fence_running!();

/// Renews a lease for `$1` milliseconds from the database's now (`$4` on SQLite).
pub(crate) fn renew_sql(source: NowSource) -> String {
    format!(
        "UPDATE jobs SET lease_until = {now} + $1 \
         WHERE order_id = $2 AND lease_owner = $3 AND {FENCE_RUNNING}",
        now = now_sql(source, "$4")
    )
}

/// Stores a recovery point; `$7` > 0 makes it an intent with that client timeout (ms), sent
/// now by the database's clock (`$4` on SQLite); any other point clears the intent.
pub(crate) fn advance_sql(source: NowSource) -> String {
    format!(
        "UPDATE jobs SET step = $1, whmcs_order_id = COALESCE($2, whmcs_order_id), \
         service_ids = COALESCE($3, service_ids), updated_at = $4, \
         intent_sent_at = CASE WHEN $7 > 0 THEN {now} ELSE NULL END, \
         intent_timeout_ms = CASE WHEN $7 > 0 THEN $7 ELSE NULL END \
         WHERE order_id = $5 AND lease_owner = $6 AND {FENCE_RUNNING}",
        now = now_sql(source, "$4")
    )
}

const SQL_RESCHEDULE: &str = concat!(
    "UPDATE jobs SET state = 'pending', lease_owner = NULL, \
     lease_until = NULL, next_attempt_at = $1, last_error = COALESCE($2, last_error), \
     attempts = attempts + $3, updated_at = $4, step = COALESCE($7, step), \
     writeback_since = CASE WHEN $7 = 'accepted' THEN COALESCE(writeback_since, $4) \
         ELSE writeback_since END, \
     stuck_alerted_at = CASE WHEN $8 = 1 THEN $4 ELSE stuck_alerted_at END \
     WHERE order_id = $5 AND lease_owner = $6 AND ",
    fence_running!()
);

const SQL_FINISH: &str = concat!(
    "UPDATE jobs SET state = $1, lease_owner = NULL, lease_until = NULL, \
     last_error = $2, step = CASE WHEN $1 = 'done' THEN 'done' ELSE step END, \
     attempts = attempts + 1, updated_at = $3 \
     WHERE order_id = $4 AND lease_owner = $5 AND ",
    fence_running!()
);

const SQL_RELEASE: &str = concat!(
    "UPDATE jobs SET state = 'pending', lease_owner = NULL, \
     lease_until = NULL, updated_at = $1 \
     WHERE order_id = $2 AND lease_owner = $3 AND ",
    fence_running!()
);

/// Reopens a refused or failed job. A job that had not got past its checks (`checked`) runs
/// them again against the Order as it is now; later recovery points are kept, so an AddOrder
/// already made is looked up, never repeated.
const SQL_REOPEN: &str = "UPDATE jobs SET state = 'pending', attempts = 0, \
     next_attempt_at = $1, last_error = NULL, updated_at = $1, reopened_at = $1, \
     reopened_by = $2, customer_number = COALESCE($3, customer_number), \
     account_id = COALESCE($4, account_id), event_id = COALESCE($5, event_id), \
     step = CASE WHEN step = 'checked' THEN 'received' ELSE step END \
     WHERE order_id = $6 AND state IN ('refused', 'failed')";

const SQL_RETRY_DEAD_LETTERS: &str = "UPDATE dead_letters SET state = 'retried', updated_at = $1 \
     WHERE order_id = $2 AND state = 'open'";

/// A reopened job that is refused (its Order is not approved now: a stale or repeated event
/// reopened a failed job) has not got past the failure its dead letters report: the letters
/// its reopening marked retried (at the same instant, `reopened_at`) are open again, so the
/// failure stays in the operator's queue.
const SQL_REOPEN_LETTERS: &str = "UPDATE dead_letters SET state = 'open', updated_at = $1 \
     WHERE order_id = $2 AND state = 'retried' \
     AND updated_at = (SELECT reopened_at FROM jobs WHERE order_id = $2)";

/// Reopens the refused or failed job of `order_id` inside `tx`; `true` when there was one.
pub(crate) async fn reopen(
    tx: &mut dyn Tx,
    order_id: &str,
    how: &Reopen,
    now: DateTime<Utc>,
) -> Result<bool> {
    let args = [
        Arg::Int(ms(now)),
        Arg::text(how.by.as_str()),
        Arg::Text(how.customer_number.clone()),
        Arg::Text(how.account_id.clone()),
        Arg::Text(how.event_id.clone()),
        Arg::text(order_id),
    ];
    if tx.exec("reopening a job", SQL_REOPEN, &args).await? != 1 {
        return Ok(false);
    }
    tx.exec(
        "reopening a job: dead letters",
        SQL_RETRY_DEAD_LETTERS,
        &[Arg::Int(ms(now)), Arg::text(order_id)],
    )
    .await?;
    Ok(true)
}

const SQL_TAKE_OVER_LEASES: &str = "UPDATE jobs SET state = 'pending', lease_owner = NULL, \
     lease_until = NULL, updated_at = $1 WHERE state = 'running'";

/// How often a claim looks for expired leases before pending jobs.
const EXPIRED_SCAN_EVERY_MS: i64 = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum ClaimKind {
    /// A customer's first due pending job (arrival order), for a customer with nothing
    /// running, taking customers in turns (the lowest turn of a due job first). An earlier job that
    /// waits for its retry time (backoff, the settle point, the customer's rate) does not hold
    /// the customer's later jobs back.
    Pending = 0,
    /// A running job whose lease expired (its worker died or stalled).
    Expired = 1,
}

/// How many due jobs the SQLite claim walks in turn order before it goes customer by customer.
const CLAIM_WALK: u32 = 64;

/// SQLite: `column` of customer `customer`'s first due pending job (arrival order), as a
/// scalar subquery: one probe of `jobs_pending_customer`. `{now}` is left for the caller.
fn first_due_sqlite(column: &str, customer: &str) -> String {
    format!(
        "(SELECT e.{column} FROM jobs e INDEXED BY jobs_pending_customer \
         WHERE e.customer_number = {customer} AND e.state = 'pending' \
         AND e.next_attempt_at <= {{now}} ORDER BY e.seq LIMIT 1)"
    )
}

/// SQLite: the due pending jobs as `alias` in turn order (`jobs_turns`), the first
/// [`CLAIM_WALK`] of them, selecting `columns`. `{now}` is left for the caller.
fn due_walk_sqlite(alias: &str, columns: &str) -> String {
    format!(
        "SELECT {columns} FROM jobs {alias} INDEXED BY jobs_turns \
         WHERE {alias}.state = 'pending' AND {alias}.next_attempt_at <= {{now}} \
         ORDER BY {alias}.turn, {alias}.next_attempt_at, {alias}.seq LIMIT {CLAIM_WALK}"
    )
}

/// SQLite: the first due pending job (arrival order) of each customer with a pending job
/// and nothing running, the lowest turn first, as `SELECT <order_id>`. The customers are
/// enumerated from `jobs_pending_customer` one seek each (the next customer number after the
/// last), so the statement reads one entry per queued customer, whatever the queues' lengths.
/// The claim's fallback when the running customers' queues fill the front of the turn order.
fn claim_by_customer_sqlite() -> String {
    format!(
        "WITH RECURSIVE cust(c) AS (\
             SELECT (SELECT MIN(f.customer_number) FROM jobs f INDEXED BY jobs_pending_customer \
                 WHERE f.state = 'pending') \
             UNION ALL \
             SELECT (SELECT MIN(f.customer_number) FROM jobs f INDEXED BY jobs_pending_customer \
                 WHERE f.state = 'pending' AND f.customer_number > cust.c) \
             FROM cust WHERE cust.c IS NOT NULL) \
         SELECT h.order_id FROM cust, jobs h \
         WHERE cust.c IS NOT NULL AND cust.c NOT IN (SELECT r.customer_number FROM jobs r \
             WHERE r.state = 'running') \
         AND h.seq = {first} \
         ORDER BY h.turn, h.next_attempt_at, h.seq LIMIT 1",
        first = first_due_sqlite("seq", "cust.c"),
    )
}

/// The claim statement of `kind`: `UPDATE ... WHERE order_id = (SELECT ... LIMIT 1)
/// RETURNING`, so a claim is a single statement. `$1` owner, `$2` lease length (ms); due
/// times and expiry are judged by the database's clock (`$3` on SQLite, see [`now_sql`]), and
/// the claimed job's `updated_at` is that clock's claim time ([`Job::claimed_at`]).
/// The claimed job's `lease_owner` is the claim's token, `<owner>:<epoch>`: every fenced write
/// of that claim passes it.
pub(crate) fn claim_sql(kind: ClaimKind, backend: Backend, source: NowSource) -> String {
    let now = now_sql(source, "$3");
    // The job to claim, as `SELECT <order_id> FROM jobs j WHERE ... LIMIT 1`.
    let pick = match (kind, backend) {
        // Customers take turns: the walk goes by turn (see `SQL_INSERT_JOB`), then due time.
        // SQLite has one writer, so no two claims ever race: the walk over the due jobs stops
        // at the first one whose customer has nothing running, and the claim takes that
        // customer's first due pending job (a probe of `jobs_pending_customer`, evaluated for
        // that one row). The walk passes only over running customers' jobs. A walk that
        // wanted each candidate to be its customer's first due job would also pass over every
        // queued job of each customer whose first due job was rescheduled (a later
        // `next_attempt_at`): thousands of rows per claim under faults.
        //
        // The walk is cut after `CLAIM_WALK` due jobs. Past that, the running customers' queues
        // fill the front of the walk (few customers with long queues, each with a job
        // running or waiting between two attempts of a call): the claim then goes customer by
        // customer instead (`claim_by_customer_sqlite`), one probe each, so it costs the
        // number of queued customers, never the length of their queues. Uncut, a claim that
        // found nothing walked every pending job (milliseconds with a backlog, on the one
        // writer, after every job that ends). The cut walk is a subquery in FROM, which
        // SQLite runs as a co-routine walking `jobs_turns` in its ORDER BY order, so the outer
        // `LIMIT 1` takes the first in turn order without sorting again (the plan test pins
        // the co-routine and the index; the turn test checks the order of the claims).
        (ClaimKind::Pending, Backend::Sqlite) => format!(
            "SELECT COALESCE((SELECT {first} FROM ({walk}) j \
             WHERE j.customer_number NOT IN (SELECT r.customer_number FROM jobs r \
                 WHERE r.state = 'running') \
             LIMIT 1), \
             CASE WHEN (SELECT COUNT(*) FROM ({count})) = {CLAIM_WALK} \
             THEN ({by_customer}) END)",
            first = first_due_sqlite("order_id", "j.customer_number"),
            walk = due_walk_sqlite("w", "w.customer_number"),
            count = due_walk_sqlite("g", "1"),
            by_customer = claim_by_customer_sqlite(),
        ),
        // On PostgreSQL instances claim at once: the row the walk locks (SKIP LOCKED) must be
        // the row it claims, or two claims would meet on one customer's first job and one of
        // them would come back empty. The customers with a running job are read once per
        // statement (a hashed set, not a probe per candidate), and each candidate must be its
        // customer's first due pending job (a probe of `jobs_pending_customer`). Both are
        // subqueries the planner cannot turn into joins, so the plan is the index walk below
        // even when the table's statistics are stale (a fresh or fast-growing table): with an
        // anti-join, PostgreSQL picked plans that compared every pending job with every
        // other, milliseconds per claim.
        (ClaimKind::Pending, Backend::Postgres) => "SELECT j.order_id FROM jobs j \
             WHERE j.state = 'pending' AND j.next_attempt_at <= {now} \
             AND j.customer_number NOT IN (SELECT r.customer_number FROM jobs r \
                 WHERE r.state = 'running') \
             AND j.seq = (SELECT e.seq FROM jobs e WHERE e.customer_number = j.customer_number \
                 AND e.state = 'pending' AND e.next_attempt_at <= {now} \
                 ORDER BY e.seq LIMIT 1) \
             ORDER BY j.turn, j.next_attempt_at, j.seq LIMIT 1 FOR UPDATE SKIP LOCKED"
            .to_owned(),
        // An expired claim may be this owner's own (a run whose settling failed); the new
        // claim's epoch fences the earlier one out, and the engine gives a job that still
        // runs in its own process straight back.
        (ClaimKind::Expired, backend) => format!(
            "SELECT j.order_id FROM jobs j WHERE j.state = 'running' AND j.lease_until < {{now}} \
             ORDER BY j.next_attempt_at, j.seq LIMIT 1{}",
            match backend {
                Backend::Sqlite => "",
                Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            }
        ),
    };
    let pick = pick.replace("{now}", &now);
    // PostgreSQL commits a claim without waiting for its write-ahead log to reach the disk
    // (`synchronous_commit` off for the claim's own transaction only; `set_config(.., true)`
    // ends with it). A claim lost to a server crash is a job still to claim; nothing depends
    // on a claim being durable until the job's first fenced write, and that write's commit
    // (synchronous) flushes the log up to itself, so the claim before it too. The calls that
    // must not repeat (AddOrder, AcceptOrder) each come after such a write (their intent);
    // what a job may do on a bare claim (reads, the Order's PATCHes) is harmless to repeat.
    // One flush fewer per Order: see ARCHITECTURE.md, "Claims commit without a flush".
    let unflushed = match backend {
        Backend::Postgres => " AND set_config('synchronous_commit', 'off', true) = 'off'",
        Backend::Sqlite => "",
    };
    // Every claim gets the next epoch, and the lease owner token names it: `<owner>:<epoch>`.
    // Fenced writes compare the token, so a write of an earlier claim (a paused worker that
    // woke up after a takeover) never passes, whoever made it.
    format!(
        "UPDATE jobs SET state = 'running', claim_epoch = claim_epoch + 1, \
             lease_owner = $1 || ':' || CAST(claim_epoch + 1 AS TEXT), \
             lease_until = {now} + $2, updated_at = {now} \
         WHERE order_id = ({pick}) \
           AND (state = 'pending' OR (state = 'running' AND lease_until < {now})){unflushed} \
         RETURNING {JOB_COLS}"
    )
}

/// [`claim_sql`] that also takes one slot of the claimed job's customer's shared rate when the
/// job is at `received` (about to start), as [`crate::Store::take_rate_slot`] would (the same
/// GCRA, see `rates.rs`), in the same statement: PostgreSQL only (a data-modifying CTE). After
/// the claim's parameters come the rate's scope, interval and tolerance (ms). The row adds
/// `rate_taken` (NULL: not asked, the job is past its start; 1 taken; 0 refused) and
/// `rate_wait_ms` (after a refusal, until a slot comes back: the rate's row as it stood before
/// the statement, which a refusal leaves as it was).
pub(crate) fn rated_claim_sql(kind: ClaimKind, backend: Backend, source: NowSource) -> String {
    let claim = claim_sql(kind, backend, source);
    let now = now_sql(source, "$3");
    let (scope, interval, tolerance) = match source {
        NowSource::Caller => ("$4", "$5", "$6"),
        NowSource::Postgres => ("$3", "$4", "$5"),
    };
    format!(
        "WITH c AS ({claim}), \
         r AS (INSERT INTO rate_limits (scope, key, tat_ms) \
             SELECT {scope}, c.customer_number, {now} + {interval} FROM c \
             WHERE c.step = 'received' {take}) \
         SELECT c.*, CASE WHEN c.step <> 'received' THEN NULL \
                 WHEN EXISTS (SELECT 1 FROM r) THEN 1 ELSE 0 END AS rate_taken, \
             (SELECT {wait} FROM rate_limits l \
                 WHERE l.scope = {scope} AND l.key = c.customer_number) AS rate_wait_ms \
         FROM c",
        take = crate::rates::gcra_upsert("GREATEST", &now, interval, tolerance),
        wait = crate::rates::gcra_wait("GREATEST", "l.tat_ms", &now, interval, tolerance),
    )
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

/// A claimed job and what its claim decided about the customer's rate: the row of
/// [`claim_sql`] (undecided) or, when `rated`, of [`rated_claim_sql`].
fn claimed_from_row(row: &Row, rated: bool) -> Result<(Job, RateTake)> {
    let job = job_from_row(row)?;
    let taken = if rated {
        row.int("rate_taken", "claim")?
    } else {
        None
    };
    let take = match taken {
        None => RateTake::Undecided,
        Some(1) => RateTake::Taken,
        Some(_) => RateTake::Refused(crate::rates::refused_wait(
            row.int("rate_wait_ms", "claim")?,
        )),
    };
    Ok((job, take))
}

/// Runs a statement fenced by the job's lease in `tx`: no row changed means another worker
/// holds the job now.
async fn fenced(
    tx: &mut dyn Tx,
    op: &'static str,
    lease: (&str, &str),
    sql: &str,
    args: &[Arg],
) -> Result<()> {
    if tx.exec(op, sql, args).await? == 1 {
        Ok(())
    } else {
        Err(Error::LeaseLost {
            order_id: lease.0.to_owned(),
            owner: lease.1.to_owned(),
        })
    }
}

impl SqlStore {
    /// One fenced statement and its audit records as one unit.
    /// `sql` is a constant or a statement built for this store's backend: an `UPDATE jobs`
    /// that ends with its `WHERE` clause, the fence (PostgreSQL extends that clause).
    async fn fenced_write(
        &self,
        op: &'static str,
        order_id: &str,
        owner: &str,
        sql: impl AsRef<str> + Send + 'static,
        args: Vec<Arg>,
        audit: Vec<NewAuditRecord>,
    ) -> Result<()> {
        if audit.is_empty() && self.backend() == Backend::Postgres {
            // One statement and nothing to seal: atomic by itself, no BEGIN and COMMIT.
            let changed = self.one_statement_exec(op, sql.as_ref(), &args).await?;
            return if changed == 1 {
                Ok(())
            } else {
                Err(Error::LeaseLost {
                    order_id: order_id.to_owned(),
                    owner: owner.to_owned(),
                })
            };
        }
        if self.backend() == Backend::Postgres {
            // With the other jobs' writes of the moment, as one statement.
            let unit = crate::batch::Unit {
                op,
                sql: sql.as_ref().to_owned(),
                args: args.clone(),
                order_id: order_id.to_owned(),
                owner: owner.to_owned(),
                records: audit.clone(),
            };
            match self.write_batched(unit).await {
                crate::batch::Batched::Written => return Ok(()),
                crate::batch::Batched::Failed(e) => return Err(e),
                crate::batch::Batched::Alone => {}
            }
            // On its own: the update and its records in one statement, when a cached chain
            // head is free.
            let update = FencedUpdate {
                sql: sql.as_ref(),
                args: &args,
                order_id,
                owner,
            };
            match self.unit_in_one_statement(op, Some(update), &audit).await? {
                OneStatement::Written(_) => return Ok(()),
                OneStatement::Fenced => {
                    return Err(Error::LeaseLost {
                        order_id: order_id.to_owned(),
                        owner: owner.to_owned(),
                    });
                }
                OneStatement::AsTransaction => {}
            }
        }
        let (order_id, owner) = (order_id.to_owned(), owner.to_owned());
        self.transact(op, move |tx| {
            Box::pin(async move {
                fenced(tx, op, (&order_id, &owner), sql.as_ref(), &args).await?;
                audit.into_iter().for_each(|r| tx.audit(r));
                Ok(())
            })
        })
        .await
    }

    pub(crate) async fn enqueue_job(
        &self,
        job: NewJob,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.transact("enqueueing a job", move |tx| {
            Box::pin(async move {
                let created = tx
                    .exec("enqueueing a job", SQL_INSERT_JOB, &job_args(&job, now))
                    .await?
                    == 1;
                if created {
                    audit.into_iter().for_each(|r| tx.audit(r));
                }
                Ok(created)
            })
        })
        .await
    }

    pub(crate) async fn claim_job(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        rate: Option<(&str, SharedRate)>,
    ) -> Result<Option<(Job, RateTake)>> {
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
            if let Some(claimed) = self
                .claim_kind(ClaimKind::Expired, owner, now_ms, lease, rate)
                .await?
            {
                return Ok(Some(claimed));
            }
        }
        if let Some(claimed) = self
            .claim_kind(ClaimKind::Pending, owner, now_ms, lease, rate)
            .await?
        {
            return Ok(Some(claimed));
        }
        if due {
            return Ok(None);
        }
        self.claim_kind(ClaimKind::Expired, owner, now_ms, lease, rate)
            .await
    }

    /// Claims one job of `kind` in one statement, with a slot of `rate` when this backend
    /// takes it in the same statement (else [`RateTake::Undecided`]).
    async fn claim_kind(
        &self,
        kind: ClaimKind,
        owner: &str,
        now_ms: i64,
        lease: Duration,
        rate: Option<(&str, SharedRate)>,
    ) -> Result<Option<(Job, RateTake)>> {
        let mut args = vec![Arg::text(owner), Arg::Int(lease_ms(lease))];
        if self.now_source == NowSource::Caller {
            args.push(Arg::Int(now_ms));
        }
        let (sql, rated) = match (rate, &self.job_sql.claim_rated) {
            (Some((scope, rate)), Some(rated)) => {
                args.extend([
                    Arg::text(scope),
                    Arg::Int(rate.interval_ms()),
                    Arg::Int(rate.tolerance_ms()),
                ]);
                (std::sync::Arc::clone(&rated[kind as usize]), true)
            }
            _ => (
                std::sync::Arc::clone(&self.job_sql.claim[kind as usize]),
                false,
            ),
        };
        let claimed = if self.backend() == Backend::Postgres {
            // One statement is atomic by itself: no BEGIN and COMMIT round trips.
            self.one_statement("claiming a job", &sql, &args)
                .await
                .and_then(|rows| {
                    rows.first()
                        .map(|row| claimed_from_row(row, rated))
                        .transpose()
                })
        } else {
            self.transact("claiming a job", move |tx| {
                Box::pin(async move {
                    let row = tx.query_opt("claiming a job", &sql, &args).await?;
                    row.as_ref()
                        .map(|row| claimed_from_row(row, false))
                        .transpose()
                })
            })
            .await
        };
        match claimed {
            // Another worker got a job of this customer running first: nothing to claim now.
            Err(e) if e.is_unique_violation() => Ok(None),
            other => other,
        }
    }

    pub(crate) async fn renew_job_lease(
        &self,
        order_id: &str,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut args = vec![
            Arg::Int(lease_ms(lease)),
            Arg::text(order_id),
            Arg::text(owner),
        ];
        if self.now_source == NowSource::Caller {
            args.push(Arg::Int(ms(now)));
        }
        let sql = std::sync::Arc::clone(&self.job_sql.renew);
        self.fenced_write("renewing a lease", order_id, owner, sql, args, Vec::new())
            .await
    }

    pub(crate) async fn advance_job(
        &self,
        order_id: &str,
        owner: &str,
        step: Step,
        update: StepUpdate,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let args = vec![
            Arg::text(step.as_str()),
            Arg::Text(update.whmcs_order_id),
            Arg::Text(update.service_ids.map(|ids| ids.join(","))),
            Arg::Int(ms(now)),
            Arg::text(order_id),
            Arg::text(owner),
            Arg::Int(update.intent_timeout.map_or(0, |t| lease_ms(t).max(1))),
        ];
        let sql = std::sync::Arc::clone(&self.job_sql.advance);
        self.fenced_write("recording a step", order_id, owner, sql, args, audit)
            .await
    }

    pub(crate) async fn reschedule_job(
        &self,
        order_id: &str,
        owner: &str,
        retry: Reschedule,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let args = vec![
            Arg::Int(ms(retry.next_attempt_at)),
            Arg::Text(retry.error),
            Arg::Int(i64::from(retry.count_attempt)),
            Arg::Int(ms(now)),
            Arg::text(order_id),
            Arg::text(owner),
            Arg::Text(retry.step.map(|s| s.as_str().to_owned())),
            Arg::Int(i64::from(retry.stuck_alerted)),
        ];
        self.fenced_write(
            "rescheduling a job",
            order_id,
            owner,
            SQL_RESCHEDULE,
            args,
            audit,
        )
        .await
    }

    pub(crate) async fn finish_job(
        &self,
        order_id: &str,
        owner: &str,
        end: JobEnd,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let args = vec![
            Arg::text(end.state.as_str()),
            Arg::Text(end.error),
            Arg::Int(ms(now)),
            Arg::text(order_id),
            Arg::text(owner),
        ];
        // A failed end stores its dead letter with it; a refused end opens again the dead
        // letters its job's last reopening closed ([`SQL_REOPEN_LETTERS`]). Both are rare, so
        // they go on their own, not in a batch.
        let letter = match end.dead_letter {
            Some(letter) => Some(self.dead_letter_args(letter, now)?.1),
            None if end.state == JobState::Refused => None,
            None => {
                return self
                    .fenced_write("finishing a job", order_id, owner, SQL_FINISH, args, audit)
                    .await;
            }
        };
        let (order_id, owner) = (order_id.to_owned(), owner.to_owned());
        self.transact("finishing a job", move |tx| {
            Box::pin(async move {
                fenced(
                    tx,
                    "finishing a job",
                    (&order_id, &owner),
                    SQL_FINISH,
                    &args,
                )
                .await?;
                match letter {
                    Some(letter) => dead_letters::insert(tx, &letter).await?,
                    None => {
                        tx.exec(
                            "finishing a job: dead letters",
                            SQL_REOPEN_LETTERS,
                            &[Arg::Int(ms(now)), Arg::text(order_id.as_str())],
                        )
                        .await?;
                    }
                }
                audit.into_iter().for_each(|r| tx.audit(r));
                Ok(())
            })
        })
        .await
    }

    pub(crate) async fn release_job(
        &self,
        order_id: &str,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let args = vec![Arg::Int(ms(now)), Arg::text(order_id), Arg::text(owner)];
        self.fenced_write(
            "releasing a job",
            order_id,
            owner,
            SQL_RELEASE,
            args,
            Vec::new(),
        )
        .await
    }

    pub(crate) async fn reopen_job(
        &self,
        order_id: &str,
        how: Reopen,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let order_id = order_id.to_owned();
        self.transact("reopening a job", move |tx| {
            Box::pin(async move {
                let reopened = reopen(tx, &order_id, &how, now).await?;
                if reopened {
                    audit.into_iter().for_each(|r| tx.audit(r));
                }
                Ok(reopened)
            })
        })
        .await
    }

    pub(crate) async fn count_reopened_letters(&self, order_id: &str) -> Result<u64> {
        // The letters `SQL_REOPEN_LETTERS` would open again.
        let sql = "SELECT COUNT(*) AS n FROM dead_letters WHERE order_id = $1 \
             AND state = 'retried' \
             AND updated_at = (SELECT reopened_at FROM jobs WHERE order_id = $1)";
        self.read_count(
            "counting reopened dead letters",
            sql,
            &[Arg::text(order_id)],
        )
        .await
    }

    pub(crate) async fn read_job_states(
        &self,
        order_ids: &[String],
    ) -> Result<Vec<(String, JobState)>> {
        // Bounded statements: SQLite caps bound parameters, and a sweep can pass thousands.
        const CHUNK: usize = 500;
        let mut states = Vec::with_capacity(order_ids.len());
        for chunk in order_ids.chunks(CHUNK) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT order_id, state FROM jobs WHERE order_id IN ({})",
                marks.join(", ")
            );
            let args: Vec<Arg> = chunk.iter().map(|id| Arg::text(id.as_str())).collect();
            for row in self.read("reading job states", &sql, &args).await? {
                const W: &str = "job state";
                let id = Row::required(row.text("order_id", W)?, "order_id", W)?;
                let state = JobState::parse(&Row::required(row.text("state", W)?, "state", W)?)?;
                states.push((id, state));
            }
        }
        Ok(states)
    }

    pub(crate) async fn take_over_job_leases(&self, now: DateTime<Utc>) -> Result<u64> {
        self.write(
            "taking over leases",
            SQL_TAKE_OVER_LEASES,
            vec![Arg::Int(ms(now))],
        )
        .await
    }

    pub(crate) async fn read_job(&self, order_id: &str) -> Result<Option<Job>> {
        let sql = format!("SELECT {JOB_COLS} FROM jobs WHERE order_id = $1");
        let row = self
            .read_opt("reading a job", &sql, &[Arg::text(order_id)])
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    pub(crate) async fn read_jobs(&self, after_seq: i64, limit: u32) -> Result<Vec<Job>> {
        let sql = format!("SELECT {JOB_COLS} FROM jobs WHERE seq > $1 ORDER BY seq LIMIT $2");
        let rows = self
            .read(
                "listing jobs",
                &sql,
                &[Arg::Int(after_seq), Arg::Int(i64::from(limit))],
            )
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    pub(crate) async fn count_jobs(&self) -> Result<JobCounts> {
        let rows = self
            .read(
                "counting jobs",
                "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state",
                &[],
            )
            .await?;
        let mut counts = JobCounts::default();
        for row in rows {
            const W: &str = "job count";
            let state = JobState::parse(&Row::required(row.text("state", W)?, "state", W)?)?;
            let n = u64::try_from(Row::required(row.int("n", W)?, "n", W)?).unwrap_or(0);
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
}

/// The statement and arguments of [`SqlStore::read_filtered_jobs`]: every condition of the
/// filter is a `WHERE` clause (the view's is a fixed text, the customer a parameter).
fn filtered_jobs_sql(filter: &JobFilter) -> (String, Vec<Arg>) {
    let mut sql = format!("SELECT {JOB_COLS} FROM jobs WHERE seq > $1");
    let mut args = vec![Arg::Int(filter.after_seq)];
    if let Some(view) = filter.view {
        sql.push_str(" AND ");
        sql.push_str(view.sql_condition());
    }
    if let Some(customer) = &filter.customer_number {
        args.push(Arg::text(customer.as_str()));
        sql.push_str(&format!(" AND customer_number = ${}", args.len()));
    }
    args.push(Arg::Int(i64::from(filter.limit)));
    sql.push_str(&format!(" ORDER BY seq LIMIT ${}", args.len()));
    (sql, args)
}

impl SqlStore {
    /// Jobs matching `filter`, in arrival order (operator reads, on the reader pool).
    pub(crate) async fn read_filtered_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let (sql, args) = filtered_jobs_sql(filter);
        let rows = self.read("listing jobs", &sql, &args).await?;
        rows.iter().map(job_from_row).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A database with the SQLite migrations.
    pub(crate) fn migrated_sqlite() -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            conn.execute_batch(&std::fs::read_to_string(file).unwrap())
                .unwrap();
        }
        conn
    }

    /// The claim's plan on SQLite, whatever the planner would guess without statistics: the
    /// cut walk of the pending jobs in turn order (and its count), the running customers read
    /// once, all from the index alone (no job row read for a job the walk passes over); one
    /// probe of a customer's pending jobs; the fallback's customers enumerated by seeks.
    /// Nothing scans the jobs table, and the one sort is the fallback's, over at most one
    /// job per queued customer.
    #[test]
    fn the_sqlite_claim_walks_indexes_and_sorts_no_queue() {
        let conn = migrated_sqlite();
        let sql = claim_sql(ClaimKind::Pending, Backend::Sqlite, NowSource::Caller);
        let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let args: [(&str, &dyn rusqlite::ToSql); 3] =
            [("$1", &"owner"), ("$2", &60_000_i64), ("$3", &1_000_i64)];
        let details: Vec<String> = plan
            .query_map(&args[..], |row| row.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let text = details.join("\n");
        for expected in [
            "CO-ROUTINE j",
            "SEARCH w USING COVERING INDEX jobs_turns (state=?)",
            "SEARCH g USING COVERING INDEX jobs_turns (state=?)",
            "SEARCH r USING COVERING INDEX jobs_turns (state=?)",
            "SEARCH e USING INDEX jobs_pending_customer (customer_number=?)",
            "SEARCH f USING COVERING INDEX jobs_pending_customer (customer_number>?)",
            "SEARCH h USING INTEGER PRIMARY KEY (rowid=?)",
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
        assert_eq!(text.matches("TEMP B-TREE").count(), 1, "{text}");
        assert!(text.contains("USE TEMP B-TREE FOR ORDER BY"), "{text}");
        // Scans only of the cut walk's rows, the customers and constant rows: no job table.
        for scan in details.iter().filter(|l| l.starts_with("SCAN")) {
            assert!(
                scan == "SCAN CONSTANT ROW"
                    || scan == "SCAN j"
                    || scan == "SCAN cust"
                    || scan.starts_with("SCAN (subquery-"),
                "{scan} in\n{text}"
            );
        }
    }

    /// The new job's turn is read through indexes: the customer's last pending job
    /// (`jobs_pending_customer`) and the lowest pending turn (`jobs_turns`), no scan or sort.
    #[test]
    fn a_new_jobs_turn_is_read_through_indexes() {
        let conn = migrated_sqlite();
        let mut plan = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {SQL_INSERT_JOB}"))
            .unwrap();
        let args: [(&str, &dyn rusqlite::ToSql); 6] = [
            ("$1", &"O"),
            ("$2", &"C"),
            ("$3", &rusqlite::types::Null),
            ("$4", &rusqlite::types::Null),
            ("$5", &"event"),
            ("$6", &0_i64),
        ];
        let text = plan
            .query_map(&args[..], |row| row.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains("USING INDEX jobs_pending_customer (customer_number=?)"),
            "{text}"
        );
        assert!(text.contains("jobs_turns (state=?)"), "{text}");
        assert!(!text.contains("TEMP B-TREE"), "{text}");
        // The only scans are of the one-row VALUES and the one-row pair of turns.
        assert!(
            text.lines()
                .filter(|l| l.starts_with("SCAN"))
                .all(|l| l == "SCAN CONSTANT ROW" || l == "SCAN t"),
            "{text}"
        );
    }

    /// The jobs of `customers` customers, `queued` each, in arrival order customer by
    /// customer: each customer's first job failed once and is due again at 5,000, after its
    /// queued jobs (due at 1,000); the first `running` customers have a job running.
    fn faulty_queue(customers: usize, queued: usize, running: usize) -> rusqlite::Connection {
        let conn = migrated_sqlite();
        for c in 0..customers {
            for n in 0..=queued {
                let (state, due) = match n {
                    0 if c < running => ("running", 1_000),
                    0 => ("pending", 5_000),
                    _ => ("pending", 1_000),
                };
                conn.execute(
                    "INSERT INTO jobs (order_id, customer_number, source, state, step, \
                     next_attempt_at, lease_until, created_at, updated_at) \
                     VALUES (?1, ?2, 'event', ?3, 'received', ?4, 60000, 0, 0)",
                    rusqlite::params![format!("O-{c}-{n}"), format!("C-{c}"), state, due],
                )
                .unwrap();
            }
        }
        conn
    }

    /// Claims once at 10,000: the claimed Order (if any) and the SQLite VM steps the claim
    /// took.
    fn try_claim_once(conn: &rusqlite::Connection) -> (Option<String>, i32) {
        let sql = claim_sql(ClaimKind::Pending, Backend::Sqlite, NowSource::Caller);
        let mut stmt = conn.prepare(&sql).unwrap();
        let args: [(&str, &dyn rusqlite::ToSql); 3] =
            [("$1", &"owner"), ("$2", &60_000_i64), ("$3", &10_000_i64)];
        let mut rows = stmt.query(&args[..]).unwrap();
        let claimed: Option<String> = rows.next().unwrap().map(|row| row.get("order_id").unwrap());
        drop(rows);
        (claimed, stmt.get_status(rusqlite::StatementStatus::VmStep))
    }

    /// Claims once at 10,000: the claimed Order and the SQLite VM steps the claim took.
    fn claim_once(conn: &rusqlite::Connection) -> (String, i32) {
        let (claimed, steps) = try_claim_once(conn);
        (claimed.expect("a job to claim"), steps)
    }

    /// A customer whose first job was rescheduled is claimed at that job (arrival order), and
    /// the claim never walks a queue: 10 running customers' 200 queued jobs each fill the
    /// front of the turn order, so the claim goes customer by customer, and finding the job
    /// takes the same work with 400 queued jobs each, and a few steps per customer more with
    /// 20 more customers waiting behind it. (A walk that wanted each candidate to be its
    /// customer's first due job passed over every other customer's queue too, on every claim:
    /// milliseconds under faults; an uncut walk passed over every running customer's queue.)
    #[test]
    fn a_claim_under_faults_takes_the_first_job_and_walks_no_queue() {
        let (base, base_steps) = claim_once(&faulty_queue(20, 200, 10));
        let (longer, longer_steps) = claim_once(&faulty_queue(20, 400, 10));
        let (more, more_steps) = claim_once(&faulty_queue(40, 200, 10));
        // Customer 10 is the first without a running job; its first job is due again.
        assert_eq!(base, "O-10-0");
        assert_eq!(longer, "O-10-0");
        assert_eq!(more, "O-10-0");
        assert_eq!(
            base_steps, longer_steps,
            "the claim's work grew with the length of the queues"
        );
        // One customer's queue is 200 jobs: walking even one would cost far more.
        let per_customer = (more_steps - base_steps) / 20;
        assert!(
            per_customer > 0 && per_customer < 100,
            "{per_customer} steps per customer ({base_steps} -> {more_steps})"
        );
    }

    /// Every customer with queued jobs has one running (each is waiting between two attempts
    /// of a call, say): nothing can be claimed, and finding that out costs the same whatever
    /// the queues' lengths, a bounded walk and one probe per customer. An uncut walk read
    /// every pending job, on every claim.
    #[test]
    fn a_claim_that_finds_nothing_walks_no_queue() {
        let (none, steps) = try_claim_once(&faulty_queue(20, 200, 20));
        let (still_none, longer_steps) = try_claim_once(&faulty_queue(20, 2_000, 20));
        assert_eq!((none, still_none), (None, None));
        assert_eq!(
            steps, longer_steps,
            "a claim that found nothing walked the running customers' queues"
        );
    }

    /// Customers take turns: A queues three Orders, then B three, then C one; each claimed
    /// job is done before the next claim. Claims go round the customers (A, B, C, A, B, ...),
    /// not through A's queue first, and D, arriving once the first round is over, joins the
    /// round the queue is at rather than going before everyone's later Orders.
    #[test]
    fn customers_take_turns_and_a_late_customer_joins_the_current_round() {
        let conn = migrated_sqlite();
        let queue = |customer: &str, n: usize| {
            for i in 0..n {
                let args: [(&str, &dyn rusqlite::ToSql); 6] = [
                    ("$1", &format!("{customer}{i}")),
                    ("$2", &customer),
                    ("$3", &rusqlite::types::Null),
                    ("$4", &rusqlite::types::Null),
                    ("$5", &"event"),
                    ("$6", &0_i64),
                ];
                conn.execute(SQL_INSERT_JOB, &args[..]).unwrap();
            }
        };
        let claim_and_finish = || {
            let (claimed, _) = claim_once(&conn);
            conn.execute(
                "UPDATE jobs SET state = 'done' WHERE order_id = ?1",
                [&claimed],
            )
            .unwrap();
            claimed
        };
        queue("A", 3);
        queue("B", 3);
        queue("C", 1);
        let first: Vec<String> = (0..4).map(|_| claim_and_finish()).collect();
        assert_eq!(first, ["A0", "B0", "C0", "A1"]);
        queue("D", 1);
        let rest: Vec<String> = (0..4).map(|_| claim_and_finish()).collect();
        assert_eq!(rest, ["B1", "D0", "A2", "B2"]);
    }

    /// A scratch PostgreSQL database with the store's migrations, and a connection to it.
    async fn migrated_postgres() -> (test_support::pg::PgTempDb, sqlx::PgConnection) {
        use sqlx::Connection as _;
        let db = test_support::pg::PgTempDb::create().await;
        let key = field_crypto::MasterKey::from_config(
            "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=",
        )
        .unwrap();
        let store = SqlStore::open(&db.url(), &key, crate::StoreOptions::default())
            .await
            .unwrap();
        drop(store);
        let conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
        (db, conn)
    }

    /// The plan PostgreSQL gives `sql` as a prepared statement (all parameters NULL), as text.
    async fn plan_of_prepared(conn: &mut sqlx::PgConnection, sql: &str) -> String {
        let params = (1..=40).rev().find(|n| sql.contains(&format!("${n}")));
        let nulls = vec!["NULL"; params.unwrap_or(0)].join(", ");
        let rows = sqlx::raw_sql(&format!(
            "PREPARE f AS {sql}; EXPLAIN EXECUTE f({nulls}); DEALLOCATE f;"
        ))
        .fetch_all(conn)
        .await
        .unwrap();
        let plan: Vec<String> = rows
            .iter()
            .map(|r| sqlx::Row::get::<String, _>(r, 0))
            .collect();
        plan.join("\n")
    }

    /// PostgreSQL finds a fenced write's job by its `order_id` whatever its statistics say.
    /// Here they were taken while no job ran, so the planner costs a scan of the running jobs
    /// (`jobs_turns`, `jobs_one_running_per_customer`) as one row. Then 400 jobs run, and the
    /// statements are planned generically, as prepared statements come to be. A plan by state
    /// would walk every running job on every step of every job.
    #[tokio::test]
    async fn postgres_fences_find_the_job_by_its_order_id() {
        use sqlx::Connection as _;
        let (db, mut conn) = migrated_postgres().await;
        sqlx::raw_sql(
            "INSERT INTO jobs (order_id, customer_number, source, state, step, \
                 next_attempt_at, created_at, updated_at) \
             SELECT 'o' || g, 'c' || g, 'event', 'done', 'done', 0, 0, 0 \
             FROM generate_series(1, 20000) g; \
             ANALYZE jobs; \
             UPDATE jobs SET state = 'running', lease_owner = 'w:1' WHERE seq % 50 = 0; \
             SET plan_cache_mode = force_generic_plan;",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let advance = advance_sql(NowSource::Postgres);
        let statements = [
            ("renew", renew_sql(NowSource::Postgres)),
            ("advance", advance.clone()),
            ("reschedule", SQL_RESCHEDULE.to_owned()),
            ("finish", SQL_FINISH.to_owned()),
            ("release", SQL_RELEASE.to_owned()),
            (
                "advance with its record",
                crate::tx::one_statement_sql(Some((&advance, 7)), 1),
            ),
        ];
        for (name, sql) in statements {
            let plan = plan_of_prepared(&mut conn, &sql).await;
            assert!(plan.contains("jobs_order_id_key"), "{name}:\n{plan}");
            for index in ["jobs_turns", "jobs_one_running_per_customer"] {
                assert!(!plan.contains(index), "{name} walks {index}:\n{plan}");
            }
        }
        conn.close().await.unwrap();
        db.close().await;
    }

    /// On PostgreSQL, `jobs_turns` holds the queued (pending) and running jobs only, not the
    /// history: 20,000 finished jobs leave it a fraction of the size of an index of every job
    /// (`jobs_customer`). The claims (both kinds) and the lowest pending turn read when a job
    /// is queued still walk it, with statistics of that history and generic plans.
    #[tokio::test]
    async fn postgres_jobs_turns_holds_only_the_queue_and_the_claims_walk_it() {
        use sqlx::Connection as _;
        let (db, mut conn) = migrated_postgres().await;
        sqlx::raw_sql(
            "INSERT INTO jobs (order_id, customer_number, source, state, step, \
                 next_attempt_at, created_at, updated_at) \
             SELECT 'o' || g, 'c' || (g % 500), 'event', 'done', 'done', 0, 0, 0 \
             FROM generate_series(1, 20000) g; \
             INSERT INTO jobs (order_id, customer_number, source, state, step, \
                 next_attempt_at, created_at, updated_at, turn) \
             SELECT 'p' || g, 'c' || g, 'event', 'pending', 'received', 0, 0, 0, 1 \
             FROM generate_series(1, 20) g; \
             ANALYZE jobs; \
             SET plan_cache_mode = force_generic_plan;",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let size = |index: &'static str| {
            sqlx::query_scalar::<_, i64>("SELECT pg_relation_size(CAST($1 AS regclass))")
                .bind(index)
        };
        let turns = size("jobs_turns").fetch_one(&mut conn).await.unwrap();
        let all = size("jobs_customer").fetch_one(&mut conn).await.unwrap();
        assert!(
            turns * 10 < all,
            "jobs_turns is {turns} bytes, an index of every job {all}"
        );
        let statements = [
            (
                "pending claim",
                claim_sql(ClaimKind::Pending, Backend::Postgres, NowSource::Postgres),
            ),
            (
                "expired claim",
                claim_sql(ClaimKind::Expired, Backend::Postgres, NowSource::Postgres),
            ),
            ("queueing a job", SQL_INSERT_JOB.to_owned()),
        ];
        for (name, sql) in statements {
            let plan = plan_of_prepared(&mut conn, &sql).await;
            assert!(plan.contains("jobs_turns"), "{name}:\n{plan}");
            assert!(!plan.contains("Seq Scan on jobs"), "{name}:\n{plan}");
        }
        conn.close().await.unwrap();
        db.close().await;
    }

    /// A PostgreSQL claim commits without waiting for the log flush: its statement turns
    /// `synchronous_commit` off for its own transaction (seen inside an explicit one), and
    /// for nothing after it: the session, where the fenced writes that must be durable run
    /// next, is synchronous again once the claim's transaction ends, whether the claim ran
    /// alone (its own transaction) or inside one. Both claims, plain and rated, both kinds.
    #[tokio::test]
    async fn postgres_claims_skip_the_flush_and_only_their_own() {
        use sqlx::Connection as _;
        let (db, mut conn) = migrated_postgres().await;
        async fn setting(conn: &mut sqlx::PgConnection) -> String {
            sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(conn)
                .await
                .unwrap()
        }
        /// The order ids `sql` claimed, its parameters those the store binds.
        async fn run_claim(conn: &mut sqlx::PgConnection, sql: &str, rated: bool) -> Vec<String> {
            let mut query = sqlx::query(sql).bind("w").bind(30_000_i64);
            if rated {
                query = query.bind("scope").bind(1_i64).bind(0_i64);
            }
            let rows = query.fetch_all(conn).await.unwrap();
            rows.iter()
                .map(|r| sqlx::Row::get::<String, _>(r, "order_id"))
                .collect()
        }
        let cases = [
            (ClaimKind::Pending, false),
            (ClaimKind::Pending, true),
            (ClaimKind::Expired, false),
            (ClaimKind::Expired, true),
        ];
        for (n, (kind, rated)) in cases.into_iter().enumerate() {
            // One job claimable by `kind`: pending and due, or running on a lapsed lease.
            let (state, lease_until) = match kind {
                ClaimKind::Pending => ("pending", "NULL"),
                ClaimKind::Expired => ("running", "1"),
            };
            let claimable = format!(
                "DELETE FROM jobs; \
                 INSERT INTO jobs (order_id, customer_number, source, state, step, \
                     next_attempt_at, lease_owner, lease_until, created_at, updated_at) \
                 VALUES ('o{n}', 'c{n}', 'event', '{state}', 'received', 0, 'x:1', \
                     {lease_until}, 0, 0)"
            );
            let sql = if rated {
                rated_claim_sql(kind, Backend::Postgres, NowSource::Postgres)
            } else {
                claim_sql(kind, Backend::Postgres, NowSource::Postgres)
            };
            let case = format!("{kind:?} rated={rated}");
            sqlx::raw_sql(&claimable).execute(&mut conn).await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            assert_eq!(
                run_claim(&mut tx, &sql, rated).await,
                [format!("o{n}")],
                "{case}"
            );
            assert_eq!(setting(&mut tx).await, "off", "{case}");
            tx.commit().await.unwrap();
            assert_eq!(setting(&mut conn).await, "on", "{case}");
            // Alone, as the store sends it: the claim is its own transaction.
            sqlx::raw_sql(&claimable).execute(&mut conn).await.unwrap();
            assert_eq!(
                run_claim(&mut conn, &sql, rated).await,
                [format!("o{n}")],
                "{case}"
            );
            assert_eq!(setting(&mut conn).await, "on", "{case}");
        }
        conn.close().await.unwrap();
        db.close().await;
    }
}
