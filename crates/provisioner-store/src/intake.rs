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
                for event in &events {
                    let outcome = ingest_one(tx, backend, event, now).await?;
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
