#![doc = include_str!("../README.md")]

mod alerts;
mod audit_log;
mod batch;
mod dead_letters;
mod error;
mod held;
mod intake;
mod jobs;
mod keys;
mod lock;
mod order_requests;
mod port;
mod rates;
mod sql;
mod sqlite_writer;
mod tx;
mod types;

use std::time::Duration;

use async_trait::async_trait;
use audit::NewAuditRecord;
use chrono::{DateTime, Utc};

pub use audit_log::{AuditChain, AuditSummary, ChainSummary, VerifyFailure};
pub use batch::{BATCH_STATEMENTS, BATCHED_WRITES, BatchCounts};
pub use error::{Error, Result};
pub use sql::{
    Backend, Leadership, MigrationStatus, SqlStore, StoreClock, StoreOptions, migration_status,
};
pub use tx::{POSTGRES_AUDIT_CHAINS, SERIALIZED_SECONDS};
pub use types::{
    Checkpoint, DeadLetter, DeadLetterState, InboxEvent, IngestOutcome, Intent, Job, JobCounts,
    JobEnd, JobFilter, JobSource, JobState, JobView, NewAlert, NewDeadLetter, NewJob,
    OrderRequestAnswer, OrderRequestKey, OrderRequestStart, QueuedAlert, RateTake, Reopen,
    Reschedule, SharedRate, Step, StepUpdate,
};

/// Field kind under which dead-letter payloads are encrypted.
pub const DEAD_LETTER_PAYLOAD_KIND: &str = "dead_letter_payload";

/// The store port: everything the engine, the status API and the operator commands persist.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Store: Send + Sync {
    /// Whether the database answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// Stores `event` in the inbox and moves its topic's checkpoint to its replay id, in one
    /// transaction; creates the order's job unless one exists. The event's audit record
    /// (`event_received`, or `event_duplicate`) commits in the same transaction.
    async fn ingest_event(&self, event: &InboxEvent, now: DateTime<Utc>) -> Result<IngestOutcome>;

    /// [`Store::ingest_event`] for several events in one transaction (what one Pub/Sub fetch
    /// delivered): each topic's checkpoint moves to its last event in the batch. Outcomes are
    /// in the order of `events`; an error means none of them was stored.
    async fn ingest_events(
        &self,
        events: &[InboxEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<IngestOutcome>>;

    /// Records a dead letter, and (for a bad event) moves the checkpoint past it, with `audit`,
    /// in one transaction. Returns the dead letter's id.
    async fn dead_letter(
        &self,
        letter: NewDeadLetter,
        checkpoint: Option<Checkpoint>,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<String>;

    /// Moves a topic's checkpoint (keepalive `latest_replay_id`).
    async fn save_checkpoint(&self, checkpoint: &Checkpoint, now: DateTime<Utc>) -> Result<()>;

    /// The stored replay id of a topic.
    async fn load_checkpoint(&self, topic: &str) -> Result<Option<Vec<u8>>>;

    /// Creates a job unless the order has one; `true` when created. `audit` is stored with a
    /// created job, in its transaction (and not at all when the order already had one).
    async fn enqueue(
        &self,
        job: NewJob,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Claims the next runnable job for `owner` with a lease of `lease`: the oldest pending job
    /// that is due, whose customer has no other job running or waiting before it; or a running
    /// job whose lease expired.
    ///
    /// Each claim starts a new claim epoch; the returned job's `lease_owner` is the claim's
    /// token (`<owner>:<epoch>`), and the fenced writes below ([`Store::renew_lease`],
    /// [`Store::advance`], [`Store::reschedule`], [`Store::finish`], [`Store::release`]) take
    /// that token as their `owner`: a write of an earlier claim is refused with
    /// [`Error::LeaseLost`], whoever made it (the same owner name included).
    async fn claim(&self, owner: &str, now: DateTime<Utc>, lease: Duration) -> Result<Option<Job>>;

    /// [`Store::claim`], and when the claimed job is at [`Step::Received`] (about to start),
    /// one slot of its customer's `rate` within `scope`, exactly as [`Store::take_rate_slot`]
    /// takes it. PostgreSQL does both in one statement; a store that cannot (SQLite, and this
    /// default) claims and answers [`RateTake::Undecided`], leaving the take to the caller.
    async fn claim_rated(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        scope: &str,
        rate: SharedRate,
    ) -> Result<Option<(Job, RateTake)>> {
        let _ = (scope, rate);
        Ok(self
            .claim(owner, now, lease)
            .await?
            .map(|job| (job, RateTake::Undecided)))
    }

    /// Extends a held lease (`owner`: the claim's token) to `lease` from now, by the database's
    /// clock (PostgreSQL's own; on SQLite, one process, `now`).
    async fn renew_lease(
        &self,
        order_id: &str,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Records a recovery point of a running job (fenced by the lease), with its audit
    /// records, in one transaction: neither commits without the other.
    async fn advance(
        &self,
        order_id: &str,
        owner: &str,
        step: Step,
        update: StepUpdate,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Puts a running job back to pending (fenced by the lease), with its audit records, in
    /// one transaction.
    async fn reschedule(
        &self,
        order_id: &str,
        owner: &str,
        retry: Reschedule,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Ends a running job as done, failed or refused (fenced by the lease), with its dead
    /// letter and audit records, in one transaction. A refused end also opens again the dead
    /// letters the job's last reopening marked retried: the Order is not approved, so the
    /// failure they report stands (a stale event reopened the job).
    async fn finish(
        &self,
        order_id: &str,
        owner: &str,
        end: JobEnd,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Reopens a refused or failed job: pending at once from its recovery point (a job that
    /// had not got past its checks runs them again), attempts reset, with what `how` carries,
    /// its open dead letters marked retried (a refused end of the reopened job opens them
    /// again: see [`Store::finish`]), and `audit`, in one transaction. `false` (and
    /// nothing stored) when the order has no refused or failed job.
    async fn reopen(
        &self,
        order_id: &str,
        how: Reopen,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// How many of `order_id`'s dead letters its job's last reopening marked retried: the
    /// ones a refused end of the reopened job opens again (see [`Store::finish`]). 0 when the
    /// job was never reopened, or its reopening closed no letter (it had been refused, not
    /// failed).
    async fn reopened_letters(&self, order_id: &str) -> Result<u64>;

    /// The state of the job of each of `order_ids` that has one (any order).
    async fn job_states(&self, order_ids: &[String]) -> Result<Vec<(String, JobState)>>;

    /// Gives a running job back (graceful shutdown): pending at once, no attempt counted.
    async fn release(&self, order_id: &str, owner: &str, now: DateTime<Utc>) -> Result<()>;

    /// Makes every running job pending again (a starting SQLite process owns all leases).
    async fn take_over_leases(&self, now: DateTime<Utc>) -> Result<u64>;

    /// One job.
    async fn job(&self, order_id: &str) -> Result<Option<Job>>;

    /// Jobs in arrival order, from `after_seq`, at most `limit`.
    async fn jobs(&self, after_seq: i64, limit: u32) -> Result<Vec<Job>>;

    /// Jobs by state.
    async fn job_counts(&self) -> Result<JobCounts>;

    /// Jobs matching `filter` (view, customer, after a `seq`), in arrival order, at most
    /// `filter.limit`: the operator's `jobs list`.
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>>;

    /// The audit records about one Order (by its stored, 18-character id), oldest first, at
    /// most `limit`: the operator's `jobs show`.
    async fn audit_for_order(&self, order_id: &str, limit: u32)
    -> Result<Vec<audit::SealedRecord>>;

    /// Dead letters, newest first, optionally of one state.
    async fn dead_letters(
        &self,
        state: Option<DeadLetterState>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>>;

    /// One dead letter.
    async fn dead_letter_by_id(&self, id: &str) -> Result<Option<DeadLetter>>;

    /// A dead letter's decrypted payload.
    async fn dead_letter_payload(&self, id: &str) -> Result<Option<field_crypto::Plaintext>>;

    /// Marks a dead letter retried or discarded, with `audit`, in one transaction.
    async fn set_dead_letter_state(
        &self,
        id: &str,
        state: DeadLetterState,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Rotates the data key when the primary is older than `max_age_days`; persists the
    /// keyring and its `key_rotated` audit record (by `actor`) in one transaction. Returns the
    /// new key id when it rotated.
    async fn rotate_keys_if_older_than(
        &self,
        max_age_days: u32,
        actor: audit::Actor,
        now: DateTime<Utc>,
    ) -> Result<Option<field_crypto::KeyId>>;

    /// Re-encrypts every stored ciphertext under the primary key; returns how many moved.
    async fn reencrypt_all(&self) -> Result<u64>;

    /// Tries to become the instance that runs the subscriber (`name` = what is led).
    async fn try_lead(&self, name: &str) -> Result<Option<Leadership>>;

    /// Stores a security alert in the outbox with `audit` (its `alert_raised` record), in one
    /// transaction, due at once. Past `max_waiting` waiting alerts the oldest are dropped;
    /// returns how many were.
    async fn queue_alert(
        &self,
        alert: NewAlert,
        max_waiting: u64,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<u64>;

    /// Takes up to `limit` due alerts, oldest first, for one delivery attempt each: their
    /// attempt count goes up and they are hidden from other takers for `hold` (by the
    /// database's clock; on PostgreSQL rows another instance is taking are skipped). An alert
    /// neither removed nor rescheduled in that time is taken again.
    async fn take_alerts(
        &self,
        limit: u32,
        hold: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<QueuedAlert>>;

    /// Removes an alert from the outbox (delivered, or refused for good).
    async fn remove_alert(&self, id: i64) -> Result<()>;

    /// Makes an alert due again `after` from now, noting why the attempt failed.
    async fn retry_alert(
        &self,
        id: i64,
        after: Duration,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Alerts waiting in the outbox.
    async fn waiting_alerts(&self) -> Result<u64>;

    /// Takes one event's slot of `rate` for `key` within `scope`, from state every instance on
    /// the database shares: `None` when the event may go ahead, otherwise how long until a slot
    /// comes back (nothing is taken then).
    async fn take_rate_slot(
        &self,
        scope: &str,
        key: &str,
        rate: SharedRate,
        now: DateTime<Utc>,
    ) -> Result<Option<Duration>>;

    /// Starts an order intake request in the idempotency ledger, before anything is sent: a
    /// new key is stored with `fingerprint` and held for `hold`; a known key with another
    /// fingerprint is a [`OrderRequestStart::Mismatch`]; an answered one gives its answer; one
    /// held by another attempt gives how long it still is; one whose hold ran out is taken
    /// over. Concurrent calls with one key: exactly one gets `Started`.
    async fn begin_order_request(
        &self,
        key: &OrderRequestKey,
        fingerprint: &str,
        hold: Duration,
        now: DateTime<Utc>,
    ) -> Result<OrderRequestStart>;

    /// Stores the final answer of a started request (a repeat gets it), with `audit` in the
    /// same transaction.
    async fn answer_order_request(
        &self,
        key: &OrderRequestKey,
        answer: OrderRequestAnswer,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Gives a started request up without an answer (its outcome is not known, or it failed
    /// for a passing reason): the next attempt with the same key and body takes it over at
    /// once, and looks the Order up before it creates one.
    async fn release_order_request(
        &self,
        key: &OrderRequestKey,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// The customer whose intake request created Order `order_id` (18 characters), if one
    /// did, and when that request was answered.
    async fn order_request_customer(
        &self,
        order_id: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>>;
}
