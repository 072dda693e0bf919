//! The rows the store keeps, as typed values.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

macro_rules! str_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $v:ident = $s:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vdoc])* $v,)* }

        impl $name {
            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }

            pub(crate) fn parse(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok($name::$v),)*
                    _ => Err(Error::Corrupt {
                        what: stringify!($name),
                        reason: format!("unknown value `{s}`"),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(
    /// Where a job is in its life.
    JobState {
        /// Waiting to be claimed (possibly not before `next_attempt_at`).
        Pending = "pending",
        /// Claimed by a worker holding a lease.
        Running = "running",
        /// Provisioned and written back.
        Done = "done",
        /// Ended by a permanent error.
        Failed = "failed",
        /// The event was refused (order not approved, customer mismatch); nothing was written.
        Refused = "refused",
    }
);

impl JobState {
    /// Whether the job will not run again.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Refused)
    }
}

str_enum!(
    /// The recovery point of a job: the last step known to be complete. A restarted job
    /// resumes after it.
    Step {
        /// Nothing done yet.
        Received = "received",
        /// The Order was fetched and checked.
        Checked = "checked",
        /// The Order was marked `Provisioning` in Salesforce.
        MarkedProvisioning = "marked_provisioning",
        /// An AddOrder was sent whose outcome is unknown (timeout): look it up before anything else.
        OrderUnknown = "order_unknown",
        /// The WHMCS order exists (`whmcs_order_id` is set).
        WhmcsOrdered = "whmcs_ordered",
        /// An AcceptOrder was sent whose outcome is unknown: look it up before retrying.
        AcceptUnknown = "accept_unknown",
        /// The WHMCS order was accepted and its services set up.
        Accepted = "accepted",
        /// The final status was written to Salesforce.
        Done = "done",
    }
);

str_enum!(
    /// What a job looks like from outside: the state the status API reports to the portal and
    /// the operator's `jobs list --state` filters on. [`JobView::of`] is the one mapping from
    /// [`JobState`] and [`Step`]; the store's job filter expresses the same mapping in SQL.
    JobView {
        /// An Order the portal placed through the order intake, not approved yet: no job
        /// exists until its event arrives, so no job row is ever in this view (the status API
        /// answers it from the intake's ledger).
        PendingReview = "pending_review",
        /// Stored, not tried yet: pending at [`Step::Received`] with no attempt made.
        Received = "received",
        /// Running, or pending after a first attempt or step (waiting for a retry).
        Provisioning = "provisioning",
        /// Provisioned in WHMCS and written back to Salesforce ([`JobState::Done`]).
        Provisioned = "provisioned",
        /// Ended by a permanent error ([`JobState::Failed`]).
        Failed = "failed",
        /// The event was refused ([`JobState::Refused`]).
        Refused = "refused",
    }
);

impl JobView {
    /// Every view a job row can be in, in life order ([`JobView::PendingReview`] comes before
    /// them, and has no job).
    pub const ALL: [JobView; 5] = [
        JobView::Received,
        JobView::Provisioning,
        JobView::Provisioned,
        JobView::Failed,
        JobView::Refused,
    ];

    /// The view of `job`: final states map one to one; a pending job that has not been tried
    /// yet is `received`; anything else (running, retrying, past its first step) is
    /// `provisioning`.
    pub fn of(job: &Job) -> Self {
        match job.state {
            JobState::Done => JobView::Provisioned,
            JobState::Failed => JobView::Failed,
            JobState::Refused => JobView::Refused,
            JobState::Pending if job.step == Step::Received && job.attempts == 0 => {
                JobView::Received
            }
            JobState::Pending | JobState::Running => JobView::Provisioning,
        }
    }

    /// The view named `name` (`received`, `provisioning`, ...), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        JobView::parse(name).ok()
    }

    /// The same mapping as [`JobView::of`], as a SQL condition on the `jobs` columns (no
    /// parameters; the names are fixed tokens).
    pub(crate) fn sql_condition(self) -> &'static str {
        match self {
            JobView::PendingReview => "(1 = 0)",
            JobView::Received => "(state = 'pending' AND step = 'received' AND attempts = 0)",
            JobView::Provisioning => {
                "(state = 'running' OR (state = 'pending' \
                 AND NOT (step = 'received' AND attempts = 0)))"
            }
            JobView::Provisioned => "(state = 'done')",
            JobView::Failed => "(state = 'failed')",
            JobView::Refused => "(state = 'refused')",
        }
    }
}

/// Which jobs [`crate::Store::list_jobs`] returns: all conditions hold; ordered by `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in this view ([`JobView::of`]).
    pub view: Option<JobView>,
    /// Only jobs of this customer number.
    pub customer_number: Option<String>,
    /// Only jobs after this `seq` (0: from the first), for paging.
    pub after_seq: i64,
    /// At most this many.
    pub limit: u32,
}

impl Default for JobFilter {
    /// Every job, the first 100.
    fn default() -> Self {
        JobFilter {
            view: None,
            customer_number: None,
            after_seq: 0,
            limit: 100,
        }
    }
}

str_enum!(
    /// What created a job.
    JobSource {
        /// A platform event.
        Event = "event",
        /// The reconcile sweep (an approved Order without a job).
        Reconcile = "reconcile",
        /// An operator command (dead-letter retry).
        Operator = "operator",
    }
);

str_enum!(
    /// Life of a dead letter.
    DeadLetterState {
        /// Waiting for an operator.
        Open = "open",
        /// Re-enqueued by an operator.
        Retried = "retried",
        /// Dismissed by an operator.
        Discarded = "discarded",
    }
);

/// A job: one per Salesforce Order (the idempotency ledger).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Arrival order (per-customer order follows it).
    pub seq: i64,
    /// Salesforce Order Id.
    pub order_id: String,
    /// Customer number from the event (or the Order, for reconcile jobs).
    pub customer_number: String,
    /// Salesforce Account Id, when known.
    pub account_id: Option<String>,
    /// Event id that created it, for event jobs.
    pub event_id: Option<String>,
    /// What created it.
    pub source: JobSource,
    /// Life state.
    pub state: JobState,
    /// Recovery point.
    pub step: Step,
    /// WHMCS order id once known.
    pub whmcs_order_id: Option<String>,
    /// WHMCS service ids once known.
    pub service_ids: Vec<String>,
    /// Attempts made so far (retries count; lease takeovers do not).
    pub attempts: u32,
    /// Not to be claimed before this time.
    pub next_attempt_at: DateTime<Utc>,
    /// The lease token of the claim holding it, while running: `<owner>:<claim epoch>`. Every
    /// fenced write of the claim passes this token as its `owner`.
    pub lease_owner: Option<String>,
    /// Lease expiry, while running.
    pub lease_until: Option<DateTime<Utc>>,
    /// Last error (sanitised: no PII, no secrets).
    pub last_error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// What last reopened it after it was refused or failed, if anything did.
    pub reopened_by: Option<JobSource>,
    /// When it was last reopened (its retry budget's age counts from then).
    pub reopened_at: Option<DateTime<Utc>>,
    /// Since when the write-back to Salesforce has been failing after WHMCS accepted.
    pub writeback_since: Option<DateTime<Utc>>,
    /// When `writeback_stuck` was raised for it (once per Order).
    pub stuck_alerted_at: Option<DateTime<Utc>>,
    /// How many times it was claimed; the current claim's token (`lease_owner`) is
    /// `<owner>:<claim_epoch>`.
    pub claim_epoch: i64,
    /// The WHMCS call that may be in flight, at the unknown-outcome recovery points.
    pub intent: Option<Intent>,
}

impl Job {
    /// For a job just returned by [`crate::Store::claim`]: when it was claimed, by the
    /// database's clock (the claim sets `updated_at`). Anything this claim does happens
    /// after it.
    pub fn claimed_at(&self) -> DateTime<Utc> {
        self.updated_at
    }

    /// When its current run of attempts began: its last reopening, else its creation.
    pub fn attempts_since(&self) -> DateTime<Utc> {
        self.reopened_at.unwrap_or(self.created_at)
    }
}

/// How a refused or failed job is reopened (see [`crate::Store::reopen`]): who reopens it,
/// and the data it continues with (`None` keeps the stored value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reopen {
    /// A new event, the reconcile sweep or an operator.
    pub by: JobSource,
    /// The customer number to continue with (the event's, or the Order's own for a sweep).
    pub customer_number: Option<String>,
    /// The Account id to continue with.
    pub account_id: Option<String>,
    /// The event that reopened it.
    pub event_id: Option<String>,
}

/// A new job (from an event, the reconcile sweep or an operator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    /// Salesforce Order Id.
    pub order_id: String,
    /// Customer number.
    pub customer_number: String,
    /// Salesforce Account Id, when known.
    pub account_id: Option<String>,
    /// Event id, for event jobs.
    pub event_id: Option<String>,
    /// What created it.
    pub source: JobSource,
}

/// A decoded platform event to store in the inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxEvent {
    /// Topic (channel) it came from.
    pub topic: String,
    /// `ConsumerEvent.event.id`: the event's unique id.
    pub event_id: String,
    /// Opaque replay id, verbatim.
    pub replay_id: Vec<u8>,
    /// Salesforce Order Id (`OrderId__c`).
    pub order_id: String,
    /// `CustomerNumber__c`.
    pub customer_number: String,
    /// `AccountId__c`, when present.
    pub account_id: Option<String>,
}

/// What storing an event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestOutcome {
    /// A new job was created.
    Enqueued,
    /// This event id was stored before (redelivery, replay): nothing new.
    DuplicateEvent,
    /// A new event for an order that already has a live or finished job: recorded, no second
    /// job.
    DuplicateOrder,
    /// A new event for an order whose job was refused or failed: the job was reopened.
    Reopened,
}

/// A replay position to store with an event (same transaction) or on a keepalive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Topic.
    pub topic: String,
    /// Opaque replay id, verbatim.
    pub replay_id: Vec<u8>,
}

/// Progress of a running job to record (fenced by the lease).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepUpdate {
    /// WHMCS order id, once known.
    pub whmcs_order_id: Option<String>,
    /// WHMCS service ids, once known.
    pub service_ids: Option<Vec<String>>,
    /// The recovery point is an *intent*: a non-idempotent WHMCS call with this client
    /// timeout is about to be sent. The store records it with its sent time, taken from the
    /// database's clock ([`Job::intent`]). Every other recovery point clears the intent.
    pub intent_timeout: Option<Duration>,
}

/// A non-idempotent WHMCS call that may have been sent (AddOrder at [`Step::OrderUnknown`],
/// AcceptOrder at [`Step::AcceptUnknown`]): when, by the database's clock, and with which
/// client timeout. It may still commit until `sent_at + timeout` plus a settle margin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Intent {
    /// When the intent was stored, just before the call was sent (database clock).
    pub sent_at: DateTime<Utc>,
    /// The client timeout the call was sent with (serialised as `timeout_ms`).
    #[serde(rename = "timeout_ms", serialize_with = "millis")]
    pub timeout: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Intent {
    /// The earliest time a lookup that still finds nothing lets the call be repeated:
    /// `sent_at + timeout + settle`.
    pub fn settle_point(&self, settle: Duration) -> DateTime<Utc> {
        let wait = self.timeout.saturating_add(settle);
        self.sent_at + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
    }
}

/// A running job put back to pending until its next attempt (a retry, or a rate-limit delay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reschedule {
    /// Not to be claimed before this time.
    pub next_attempt_at: DateTime<Utc>,
    /// The error that made it wait (sanitised), if any.
    pub error: Option<String>,
    /// Whether this counts as an attempt (a rate-limit delay does not).
    pub count_attempt: bool,
    /// A new recovery point stored with it (e.g. [`Step::Accepted`] when the write-back
    /// failed; that also starts the job's `writeback_since`).
    pub step: Option<Step>,
    /// Records that `writeback_stuck` was raised for the job.
    pub stuck_alerted: bool,
}

impl Reschedule {
    /// A retry (or delay) at `next_attempt_at` with no new recovery point.
    pub fn at(next_attempt_at: DateTime<Utc>, error: Option<String>, count_attempt: bool) -> Self {
        Reschedule {
            next_attempt_at,
            error,
            count_attempt,
            step: None,
            stuck_alerted: false,
        }
    }
}

/// How a running job ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEnd {
    /// Done, failed or refused.
    pub state: JobState,
    /// Why (sanitised), for failed and refused jobs.
    pub error: Option<String>,
    /// A dead letter stored in the same transaction (a failed job).
    pub dead_letter: Option<NewDeadLetter>,
}

/// A dead letter to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeadLetter {
    /// Topic, for events.
    pub topic: Option<String>,
    /// Event id, when the event had one.
    pub event_id: Option<String>,
    /// Replay id of the event.
    pub replay_id: Option<Vec<u8>>,
    /// Order id, when known.
    pub order_id: Option<String>,
    /// Why (sanitised, names the missing or bad field).
    pub reason: String,
    /// The raw payload; stored encrypted with field-crypto (kind `dead_letter_payload`).
    pub payload: Option<Vec<u8>>,
    /// Attempts made before it was dead-lettered.
    pub attempts: u32,
}

/// A stored dead letter (payload still encrypted; see [`crate::Store::dead_letter_payload`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Its id (UUID).
    pub id: String,
    /// Topic, for events.
    pub topic: Option<String>,
    /// Event id.
    pub event_id: Option<String>,
    /// Replay id.
    #[serde(skip)]
    pub replay_id: Option<Vec<u8>>,
    /// Order id.
    pub order_id: Option<String>,
    /// Why.
    pub reason: String,
    /// Whether a payload is stored.
    pub has_payload: bool,
    /// Attempts made.
    pub attempts: u32,
    /// Open, retried or discarded.
    pub state: DeadLetterState,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Job counts by state, for metrics and the demo summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JobCounts {
    /// Pending.
    pub pending: u64,
    /// Running.
    pub running: u64,
    /// Done.
    pub done: u64,
    /// Failed.
    pub failed: u64,
    /// Refused.
    pub refused: u64,
}

/// A security alert for the outbox ([`crate::Store::queue_alert`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAlert {
    /// The alert's kind (`auth_failure_burst`, `audit_head`, ...).
    pub kind: String,
    /// The webhook body, JSON. It holds ids and addresses only, never a secret.
    pub body: String,
}

/// An alert taken from the outbox for one delivery attempt ([`crate::Store::take_alerts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedAlert {
    /// The outbox row.
    pub id: i64,
    /// The alert's kind.
    pub kind: String,
    /// The webhook body, JSON.
    pub body: String,
    /// Delivery attempts so far, this one included.
    pub attempts: u32,
}

/// A rate held in the database ([`crate::Store::take_rate_slot`]): `burst` events at once, then
/// one more every `interval` (a GCRA with millisecond resolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedRate {
    /// Time for one event's worth of capacity to come back; at least 1 ms is used.
    pub interval: Duration,
    /// Events let through at once.
    pub burst: u32,
}

/// What a claim decided about the claimed job's customer's shared rate
/// ([`crate::Store::claim_rated`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateTake {
    /// Not decided with the claim: the job is past its start, or this store takes the slot in
    /// a statement of its own ([`crate::Store::take_rate_slot`], for the caller to ask).
    Undecided,
    /// A slot was taken with the claim: the job may start.
    Taken,
    /// No slot was free: one comes back in this long (nothing was taken).
    Refused(Duration),
}

impl SharedRate {
    pub(crate) fn interval_ms(&self) -> i64 {
        i64::try_from(self.interval.as_millis())
            .unwrap_or(i64::MAX / 4)
            .clamp(1, i64::MAX / 4)
    }

    /// How far ahead of now the GCRA lets the arrival time run: `burst` intervals (at least one).
    pub(crate) fn tolerance_ms(&self) -> i64 {
        self.interval_ms()
            .saturating_mul(i64::from(self.burst.max(1)))
    }
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(what: &'static str, v: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(v).ok_or_else(|| Error::Corrupt {
        what,
        reason: format!("timestamp {v} out of range"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn job(state: JobState, step: Step, attempts: u32) -> Job {
        let at = DateTime::from_timestamp_millis(1_795_000_000_000).unwrap();
        Job {
            seq: 1,
            order_id: "801000000000001AAA".into(),
            customer_number: "C-1".into(),
            account_id: None,
            event_id: None,
            source: JobSource::Event,
            state,
            step,
            whmcs_order_id: None,
            service_ids: vec![],
            attempts,
            next_attempt_at: at,
            lease_owner: None,
            lease_until: None,
            last_error: None,
            created_at: at,
            updated_at: at,
            reopened_by: None,
            reopened_at: None,
            writeback_since: None,
            stuck_alerted_at: None,
            claim_epoch: 0,
            intent: None,
        }
    }

    #[test]
    fn states_map_to_views() {
        use JobState::*;
        let cases = [
            (Pending, Step::Received, 0, JobView::Received),
            (Pending, Step::Received, 1, JobView::Provisioning),
            (Pending, Step::Checked, 0, JobView::Provisioning),
            (Pending, Step::OrderUnknown, 2, JobView::Provisioning),
            (Running, Step::Received, 0, JobView::Provisioning),
            (Running, Step::Accepted, 0, JobView::Provisioning),
            (Done, Step::Done, 0, JobView::Provisioned),
            (Failed, Step::Checked, 3, JobView::Failed),
            (Refused, Step::Received, 0, JobView::Refused),
        ];
        for (state, step, attempts, want) in cases {
            assert_eq!(
                JobView::of(&job(state, step, attempts)),
                want,
                "{state:?} {step:?} {attempts}"
            );
        }
    }

    #[test]
    fn views_are_named_as_on_the_wire() {
        for view in JobView::ALL {
            assert_eq!(JobView::from_name(view.as_str()), Some(view));
            assert_eq!(
                serde_json::to_value(view).unwrap(),
                serde_json::Value::String(view.as_str().to_owned())
            );
        }
        assert_eq!(JobView::from_name("pending"), None);
        assert_eq!(JobView::from_name("Received"), None);
    }
}

/// Which order intake request a ledger row is: the customer and the `Idempotency-Key` they
/// sent (keys of different customers never meet).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OrderRequestKey {
    /// The caller's customer number.
    pub customer_number: String,
    /// The request's `Idempotency-Key`.
    pub idempotency_key: String,
}

impl OrderRequestKey {
    /// The Order's external id (`Portal_Request_Id__c`): `<customer number>:<key>`.
    pub fn external_id(&self) -> String {
        format!("{}:{}", self.customer_number, self.idempotency_key)
    }
}

/// The final answer to an order intake request, kept so that a repeat gets it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRequestAnswer {
    /// HTTP status.
    pub status: u16,
    /// JSON body (ids and codes only, never a submitted value).
    pub body: String,
    /// The 18-character Order Id when one was created.
    pub order_id: Option<String>,
}

/// What [`crate::Store::begin_order_request`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderRequestStart {
    /// The caller now holds the request and must answer or release it. `taken_over`: an
    /// earlier attempt with this key ended without an answer (a crash, a timeout, a release),
    /// so an Order may already exist: look it up by its external id before creating one.
    Started {
        /// Whether an earlier attempt held it before.
        taken_over: bool,
    },
    /// Another attempt holds it; ask again after this.
    InFlight {
        /// How long that attempt's claim still runs.
        retry_after: Duration,
    },
    /// It was answered: this is the answer.
    Answered(OrderRequestAnswer),
    /// The key was used with another body.
    Mismatch,
}
