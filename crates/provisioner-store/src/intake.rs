//! The inbox and the replay checkpoints: events are stored, their jobs created, the checkpoint
//! moved and each event audited, in one transaction.

use audit::{Action, Actor, DetailKey, NewAuditRecord, Outcome};
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::jobs::{self, SQL_INSERT_JOB, job_args};
use crate::sql::{Backend, SqlStore};
use crate::tx::{Arg, Row, Tx};
use crate::types::{Checkpoint, InboxEvent, IngestOutcome, JobSource, NewJob, Reopen, ms};

const SQL_INSERT_INBOX: &str = "INSERT INTO inbox (event_id, topic, replay_id, order_id, outcome, \
     received_at) VALUES ($1, $2, $3, $4, 'enqueued', $5) ON CONFLICT (event_id) DO NOTHING";

/// PostgreSQL: [`SQL_INSERT_INBOX`] and, when the event was new, [`SQL_INSERT_JOB`] as one
/// statement (data-modifying CTEs; SQLite has none and runs the two). `$1`-`$5` are
/// [`inbox_args`], `$6`-`$8` the job's customer number, account id and source; the row tells
/// whether the event was stored and whether its job was created.
const SQL_INSERT_INBOX_AND_JOB: &str = "WITH i AS (INSERT INTO inbox (event_id, topic, \
     replay_id, order_id, outcome, received_at) VALUES ($1, $2, $3, $4, 'enqueued', $5) \
     ON CONFLICT (event_id) DO NOTHING RETURNING event_id), \
     j AS (INSERT INTO jobs (order_id, customer_number, account_id, event_id, source, state, \
         step, attempts, next_attempt_at, created_at, updated_at, turn) \
         SELECT $4, $6, $7, i.event_id, $8, 'pending', 'received', 0, $5, $5, $5, \
         (SELECT CASE WHEN t.mine > t.cur THEN t.mine ELSE t.cur END FROM (SELECT \
             COALESCE((SELECT l.turn + 1 FROM jobs l WHERE l.customer_number = $6 \
                 AND l.state = 'pending' ORDER BY l.seq DESC LIMIT 1), 0) AS mine, \
             COALESCE((SELECT p.turn FROM jobs p WHERE p.state = 'pending' \
                 ORDER BY p.turn LIMIT 1), 0) AS cur) AS t) \
         FROM i ON CONFLICT (order_id) DO NOTHING RETURNING order_id) \
     SELECT (SELECT COUNT(*) FROM i) AS stored, (SELECT COUNT(*) FROM j) AS created";

/// PostgreSQL: a whole batch of events in one statement, as [`SQL_INSERT_INBOX_AND_JOB`] would
/// store them one after the other. `$1` is a JSON array of the events (`n` their position,
/// `replay_id` in hex), `$2` the time. An event id seen twice in the batch is stored once (its
/// first time); a stored event creates the job of its Order unless the Order has one, or an
/// earlier event of the batch created it. Every statement of a `WITH` reads the table as it
/// was before the statement, so a customer's `k`-th new job of the batch gets the turn its
/// first one gets, plus `k`: the turns one statement per event would have given. A row per
/// event, in batch order: `stored` and `created` (1 or 0).
const SQL_INGEST_BATCH: &str = "WITH v AS (SELECT e.*, \
         MIN(e.n) OVER (PARTITION BY e.event_id) AS first_n \
         FROM jsonb_to_recordset($1::jsonb) AS e(n BIGINT, event_id TEXT, topic TEXT, \
             replay_id TEXT, order_id TEXT, customer_number TEXT, account_id TEXT, \
             source TEXT)), \
     i AS (INSERT INTO inbox (event_id, topic, replay_id, order_id, outcome, received_at) \
         SELECT v.event_id, v.topic, decode(v.replay_id, 'hex'), v.order_id, 'enqueued', $2 \
         FROM v WHERE v.n = v.first_n ORDER BY v.n \
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id), \
     s AS (SELECT v.* FROM v JOIN i ON i.event_id = v.event_id WHERE v.n = v.first_n), \
     nv AS (SELECT DISTINCT ON (s.order_id) s.* FROM s \
         WHERE NOT EXISTS (SELECT 1 FROM jobs x WHERE x.order_id = s.order_id) \
         ORDER BY s.order_id, s.n), \
     r AS (SELECT nv.*, \
         ROW_NUMBER() OVER (PARTITION BY nv.customer_number ORDER BY nv.n) - 1 AS k FROM nv), \
     j AS (INSERT INTO jobs (order_id, customer_number, account_id, event_id, source, state, \
         step, attempts, next_attempt_at, created_at, updated_at, turn) \
         SELECT r.order_id, r.customer_number, r.account_id, r.event_id, r.source, 'pending', \
             'received', 0, $2, $2, $2, \
             GREATEST(COALESCE((SELECT l.turn + 1 FROM jobs l \
                     WHERE l.customer_number = r.customer_number AND l.state = 'pending' \
                     ORDER BY l.seq DESC LIMIT 1), 0), \
                 COALESCE((SELECT p.turn FROM jobs p WHERE p.state = 'pending' \
                     ORDER BY p.turn LIMIT 1), 0)) + r.k \
         FROM r ORDER BY r.n \
         ON CONFLICT (order_id) DO NOTHING RETURNING event_id) \
     SELECT v.n, \
         CASE WHEN s.n IS NOT NULL THEN 1 ELSE 0 END AS stored, \
         CASE WHEN s.n IS NOT NULL AND j.event_id IS NOT NULL THEN 1 ELSE 0 END AS created \
     FROM v LEFT JOIN s ON s.n = v.n LEFT JOIN j ON j.event_id = v.event_id \
     ORDER BY v.n";

/// The JSON array [`SQL_INGEST_BATCH`] reads.
fn batch_json(events: &[InboxEvent]) -> String {
    let rows: Vec<serde_json::Value> = events
        .iter()
        .enumerate()
        .map(|(n, event)| {
            // The job's fields as `event_job` makes them, without its copies.
            serde_json::json!({
                "n": n,
                "event_id": event.event_id,
                "topic": event.topic,
                "replay_id": hex(&event.replay_id),
                "order_id": event.order_id,
                "customer_number": event.customer_number,
                "account_id": event.account_id,
                "source": JobSource::Event.as_str(),
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

const SQL_INBOX_DUPLICATE_ORDER: &str =
    "UPDATE inbox SET outcome = 'duplicate_order' WHERE event_id = $1";

const SQL_INBOX_REOPENED: &str = "UPDATE inbox SET outcome = 'reopened' WHERE event_id = $1";

pub(crate) const SQL_UPSERT_CHECKPOINT: &str = "INSERT INTO checkpoints (topic, replay_id, \
     updated_at) VALUES ($1, $2, $3) ON CONFLICT (topic) DO UPDATE SET \
     replay_id = excluded.replay_id, updated_at = excluded.updated_at";

pub(crate) fn checkpoint_args(cp: &Checkpoint, now: DateTime<Utc>) -> Vec<Arg> {
    vec![
        Arg::text(cp.topic.as_str()),
        Arg::Blob(Some(cp.replay_id.clone())),
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

/// The audit records of a stored event: `event_received` when it created or reopened a job
/// (then also `job_reopened`), else `event_duplicate`.
fn event_records(event: &InboxEvent, outcome: IngestOutcome) -> Result<Vec<NewAuditRecord>> {
    let record = |action| {
        NewAuditRecord::new(Actor::SUBSCRIBER, action, Outcome::Success)
            .order_id(event.order_id.as_str())
            .and_then(|r| r.detail(DetailKey::EventId, event.event_id.as_str()))
            .map_err(|e| Error::Audit(Box::new(e)))
    };
    Ok(match outcome {
        IngestOutcome::Enqueued => vec![record(Action::EVENT_RECEIVED)?],
        IngestOutcome::Reopened => vec![
            record(Action::EVENT_RECEIVED)?,
            record(Action::JOB_REOPENED)?,
        ],
        IngestOutcome::DuplicateEvent | IngestOutcome::DuplicateOrder => {
            vec![record(Action::EVENT_DUPLICATE)?]
        }
    })
}

/// Stores one event inside `tx`: the inbox row first (its primary key recognises a duplicate
/// event), then the job unless the order has one: one statement on PostgreSQL
/// ([`SQL_INSERT_INBOX_AND_JOB`]), two on SQLite.
async fn ingest_one(
    tx: &mut dyn Tx,
    backend: Backend,
    event: &InboxEvent,
    now: DateTime<Utc>,
) -> Result<IngestOutcome> {
    let (stored, created) = match backend {
        Backend::Postgres => {
            let job = event_job(event);
            let mut args = inbox_args(event, now);
            args.extend([
                Arg::text(job.customer_number.as_str()),
                Arg::Text(job.account_id.clone()),
                Arg::text(job.source.as_str()),
            ]);
            let row = tx
                .query_opt("ingest: inbox and job", SQL_INSERT_INBOX_AND_JOB, &args)
                .await?;
            let count = |name| -> Result<bool> {
                Ok(row
                    .as_ref()
                    .map(|r| r.int(name, "ingest"))
                    .transpose()?
                    .flatten()
                    == Some(1))
            };
            (count("stored")?, count("created")?)
        }
        Backend::Sqlite => {
            let stored = tx
                .exec("ingest: inbox", SQL_INSERT_INBOX, &inbox_args(event, now))
                .await?
                == 1;
            let created = stored
                && tx
                    .exec(
                        "ingest: job",
                        SQL_INSERT_JOB,
                        &job_args(&event_job(event), now),
                    )
                    .await?
                    == 1;
            (stored, created)
        }
    };
    existing_order(tx, event, stored, created, now).await
}

/// The outcome of an event the inbox `stored` (or found there already) and whose job it
/// `created` (or not): a new event for an Order that has a job reopens it when it was refused
/// or failed, else is a duplicate of the Order.
async fn existing_order(
    tx: &mut dyn Tx,
    event: &InboxEvent,
    stored: bool,
    created: bool,
    now: DateTime<Utc>,
) -> Result<IngestOutcome> {
    if !stored {
        return Ok(IngestOutcome::DuplicateEvent);
    }
    if created {
        return Ok(IngestOutcome::Enqueued);
    }
    // A new event for an Order whose job was refused or failed re-evaluates it: the job runs
    // again (it checks the Order as it is now).
    let how = Reopen {
        by: JobSource::Event,
        customer_number: Some(event.customer_number.clone()),
        account_id: event.account_id.clone(),
        event_id: Some(event.event_id.clone()),
    };
    let (outcome, sql) = if jobs::reopen(tx, &event.order_id, &how, now).await? {
        (IngestOutcome::Reopened, SQL_INBOX_REOPENED)
    } else {
        (IngestOutcome::DuplicateOrder, SQL_INBOX_DUPLICATE_ORDER)
    };
    tx.exec(
        "ingest: inbox outcome",
        sql,
        &[Arg::text(event.event_id.as_str())],
    )
    .await?;
    Ok(outcome)
}

/// [`SQL_INGEST_BATCH`]: each event's `(stored, created)`, in batch order.
async fn ingest_batch(
    tx: &mut dyn Tx,
    events: &[InboxEvent],
    now: DateTime<Utc>,
) -> Result<Vec<(bool, bool)>> {
    let rows = tx
        .query(
            "ingest: inbox and jobs",
            SQL_INGEST_BATCH,
            &[Arg::Text(Some(batch_json(events))), Arg::Int(ms(now))],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let flag = |name| -> Result<bool> { Ok(row.int(name, "ingest")? == Some(1)) };
            Ok((flag("stored")?, flag("created")?))
        })
        .collect()
}

impl SqlStore {
    pub(crate) async fn ingest(
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
        let events = events.to_vec();
        let backend = self.backend();
        self.transact("ingest", move |tx| {
            Box::pin(async move {
                let mut outcomes = Vec::with_capacity(events.len());
                // PostgreSQL stores a batch of several events in one statement.
                let batched = match backend {
                    Backend::Postgres if events.len() > 1 => {
                        Some(ingest_batch(tx, &events, now).await?)
                    }
                    _ => None,
                };
                for (n, event) in events.iter().enumerate() {
                    let outcome = match &batched {
                        Some(rows) => {
                            let (stored, created) = rows.get(n).copied().ok_or(Error::Corrupt {
                                what: "intake batch",
                                reason: format!("{} rows for {} events", rows.len(), events.len()),
                            })?;
                            existing_order(tx, event, stored, created, now).await?
                        }
                        None => ingest_one(tx, backend, event, now).await?,
                    };
                    event_records(event, outcome)?
                        .into_iter()
                        .for_each(|r| tx.audit(r));
                    outcomes.push(outcome);
                }
                for cp in &checkpoints {
                    tx.exec(
                        "ingest: checkpoint",
                        SQL_UPSERT_CHECKPOINT,
                        &checkpoint_args(cp, now),
                    )
                    .await?;
                }
                Ok(outcomes)
            })
        })
        .await
    }

    pub(crate) async fn store_checkpoint(
        &self,
        checkpoint: &Checkpoint,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.write(
            "saving a checkpoint",
            SQL_UPSERT_CHECKPOINT,
            checkpoint_args(checkpoint, now),
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn read_checkpoint(&self, topic: &str) -> Result<Option<Vec<u8>>> {
        let row = self
            .read_opt(
                "loading a checkpoint",
                "SELECT replay_id FROM checkpoints WHERE topic = $1",
                &[Arg::text(topic)],
            )
            .await?;
        match row {
            Some(row) => Ok(Some(Row::required(
                row.blob("replay_id", "checkpoint")?,
                "replay_id",
                "checkpoint",
            )?)),
            None => Ok(None),
        }
    }
}
