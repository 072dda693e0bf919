//! One job, step by step: the state machine of the provisioning steps with a recovery point
//! wherever a resumed job must act differently, and an *intent* recorded before each
//! non-idempotent WHMCS call, so a restarted job looks an unknown outcome up before it ever
//! repeats the call.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit::{Action, Actor, AuditLog, DetailKey, NewAuditRecord, Outcome};
use chrono::{DateTime, Utc};
use provisioner_store::{
    Job, JobEnd, JobSource, JobState, NewDeadLetter, RateTake, Reschedule, Step, StepUpdate, Store,
};
use secrecy::ExposeSecret;
use sf_rest::{OrderApi, OrderUpdate};
use whmcs_client::{
    AcceptOrderRequest, ConfigOptions, CustomFields, NewOrder, OrderLine, WhmcsApi,
};

use crate::alerts::Alerts;
use crate::clock::{Clock, jitter};
use crate::config::EngineConfig;
use crate::reason::StopReason;
use crate::sanitize::sanitize_reason;

/// The ports one job talks through.
#[derive(Clone)]
pub struct Ports {
    /// Salesforce Orders.
    pub orders: Arc<dyn OrderApi>,
    /// WHMCS.
    pub whmcs: Arc<dyn WhmcsApi>,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// The audit chain.
    pub audit: Arc<dyn AuditLog>,
    /// Security / operations alerts.
    pub alerts: Arc<dyn Alerts>,
    /// Time ([`crate::SystemClock`] outside tests and simulations).
    pub clock: Arc<dyn Clock>,
    /// Opens config options the order intake sealed; without it, an Order holding a sealed
    /// option fails as invalid.
    pub opener: Option<Arc<dyn crate::order_intake::OptionOpener>>,
}

/// How running a job ended (for logs, metrics and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Provisioned and written back to Salesforce.
    Provisioned {
        /// WHMCS order id.
        whmcs_order_id: u64,
        /// WHMCS service ids.
        service_ids: Vec<u64>,
    },
    /// The Order was already provisioned (a replay or a restore): recorded as done.
    AlreadyProvisioned,
    /// The event was refused; nothing was written to the Order or WHMCS.
    Refused {
        /// Why (`not_approved`, `customer_mismatch`, ...).
        code: StopReason,
    },
    /// A retryable error; the job runs again at `at`.
    Retrying {
        /// When.
        at: DateTime<Utc>,
        /// Sanitised reason.
        reason: String,
    },
    /// The customer's provisioning rate was exceeded; the job runs again at `at`.
    Delayed {
        /// When.
        at: DateTime<Utc>,
    },
    /// Failed permanently: Order marked failed, dead letter written, alert raised.
    Failed {
        /// Sanitised reason.
        reason: String,
    },
    /// Given back at shutdown, to be resumed by the next claim.
    Released,
    /// Another worker took the job over (this worker's lease expired); nothing more written.
    LeaseLost,
    /// The store failed while settling the job; its lease will expire and it runs again.
    StoreUnavailable,
}

/// Why a step did not complete.
#[derive(Debug)]
enum Stop {
    Retry {
        reason: String,
        code: StopReason,
    },
    Permanent {
        reason: String,
        code: StopReason,
    },
    Refuse {
        code: StopReason,
    },
    /// The Order is in the failed status an earlier run of this job wrote, and that run's end
    /// was never stored (`earlier_failure`): ended failed with its dead letter, no writes.
    FailedEarlier,
    /// The Order left the approved status before a WHMCS write (`approval_withdrawn`).
    Withdrawn {
        whmcs_order_id: Option<u64>,
    },
    /// A WHMCS call of unknown outcome may still commit: wait until `until`, then look again.
    Settling {
        until: DateTime<Utc>,
    },
    AlreadyDone,
    LeaseLost,
    /// The lease's renewals failed or are late: no external call may start; the claim is
    /// given back.
    LeaseLapsed,
    Shutdown,
}

impl From<provisioner_store::Error> for Stop {
    fn from(e: provisioner_store::Error) -> Self {
        crate::metrics::store_failed(&e);
        match e {
            provisioner_store::Error::LeaseLost { .. } => Stop::LeaseLost,
            provisioner_store::Error::Audit(inner) => Stop::Retry {
                reason: format!("audit: {inner}"),
                code: StopReason::AuditError,
            },
            other => Stop::Retry {
                reason: format!("store: {other}"),
                code: StopReason::StoreError,
            },
        }
    }
}

impl From<audit::Error> for Stop {
    fn from(e: audit::Error) -> Self {
        crate::metrics::audit_failed();
        Stop::Retry {
            reason: format!("audit: {e}"),
            code: StopReason::AuditError,
        }
    }
}

fn sf_stop(e: sf_rest::Error) -> Stop {
    match e.class() {
        sf_rest::ErrorClass::Permanent => Stop::Permanent {
            reason: format!("salesforce: {e}"),
            code: StopReason::SalesforcePermanent,
        },
        _ => Stop::Retry {
            reason: format!("salesforce: {e}"),
            code: StopReason::SalesforceRetryable,
        },
    }
}

fn whmcs_stop(e: whmcs_client::Error) -> Stop {
    match e.class() {
        whmcs_client::ErrorClass::Business => Stop::Permanent {
            reason: format!("whmcs: {e}"),
            code: StopReason::WhmcsBusiness,
        },
        whmcs_client::ErrorClass::UnknownOutcome => Stop::Retry {
            reason: format!("whmcs: {e}"),
            code: StopReason::WhmcsUnknownOutcome,
        },
        whmcs_client::ErrorClass::Configuration => Stop::Retry {
            reason: format!("whmcs: {e}"),
            code: StopReason::WhmcsConfiguration,
        },
        _ => Stop::Retry {
            reason: format!("whmcs: {e}"),
            code: StopReason::WhmcsTransient,
        },
    }
}

fn permanent(code: StopReason, reason: impl Into<String>) -> Stop {
    Stop::Permanent {
        reason: reason.into(),
        code,
    }
}

/// Parses a WHMCS id that Salesforce may hold as text (`"12"`) or a number (`"12.0"`).
fn parse_id(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let f: f64 = s.parse().ok()?;
    (f.fract() == 0.0 && (1.0..9.0e15).contains(&f)).then_some(f as u64)
}

/// Whether the Order already names its WHMCS order (it was provisioned).
fn has_whmcs_order(order: &sf_rest::Order) -> bool {
    order
        .whmcs_order_id
        .as_deref()
        .is_some_and(|id| !id.trim().is_empty())
}

/// Whether the Order belongs to the job's customer.
fn same_customer(order: &sf_rest::Order, job: &Job) -> bool {
    order.customer_number.as_deref().map(str::trim) == Some(job.customer_number.trim())
}

/// The claim's token, which every fenced store write of this run passes: the `lease_owner` the
/// claim returned (`<owner>:<claim epoch>`).
fn token(job: &Job) -> &str {
    job.lease_owner.as_deref().unwrap_or_default()
}

/// How long a claim's lease is known to hold, as its renewals report it. A run starts no
/// external call (a WHMCS write, a PATCH) once the lease may have lapsed: the last renewal that
/// went through was *sent* more than two thirds of a lease ago, or a renewal found the claim
/// taken over. The lease end itself is stored by the database, so this only errs on the side of
/// stopping early (a stalled or paused worker stops before its next call and gives the job
/// back).
#[derive(Debug)]
pub struct LeaseHealth {
    lease: Duration,
    clock: Arc<dyn Clock>,
    /// Until when (monotonic) an external call may start, from the last renewal sent and
    /// confirmed.
    valid_until: std::sync::Mutex<Duration>,
    lost: std::sync::atomic::AtomicBool,
}

impl LeaseHealth {
    /// A lease of `lease` claimed (sent) at `claimed_at`, a [`Clock::monotonic`] time of
    /// `clock`.
    pub fn new(lease: Duration, clock: Arc<dyn Clock>, claimed_at: Duration) -> Self {
        LeaseHealth {
            lease,
            clock,
            valid_until: std::sync::Mutex::new(claimed_at.saturating_add(Self::usable(lease))),
            lost: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The part of a lease a run may use: two thirds (renewals come every third).
    fn usable(lease: Duration) -> Duration {
        lease.saturating_sub(lease / 3)
    }

    /// A renewal sent at `sent_at` (a [`Clock::monotonic`] time) went through.
    pub fn renewed(&self, sent_at: Duration) {
        if let Ok(mut until) = self.valid_until.lock() {
            *until = (*until).max(sent_at.saturating_add(Self::usable(self.lease)));
        }
    }

    /// A renewal found the claim taken over.
    pub fn lost(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Until when (on the runtime's clock) the lease is known to hold: no external write may
    /// go out after it ([`sf_rest::OrderUpdate::deadline`]). Now, when the lease may have lapsed
    /// already. A check of [`Self::is_live`] before a call does not bound when the call goes
    /// out: a pause of the process after the check would send it late, past a takeover.
    pub fn deadline(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        if self.lost.load(std::sync::atomic::Ordering::SeqCst) {
            return now;
        }
        let left = self
            .valid_until
            .lock()
            .map(|until| until.saturating_sub(self.clock.monotonic()))
            .unwrap_or_default();
        now + left
    }

    /// Whether an external call may start now.
    pub fn is_live(&self) -> bool {
        !self.lost.load(std::sync::atomic::Ordering::SeqCst)
            && self
                .valid_until
                .lock()
                .map(|until| self.clock.monotonic() < *until)
                .unwrap_or(false)
    }
}

/// What a job learns as it goes.
#[derive(Default)]
struct Progress {
    order: Option<sf_rest::Order>,
    client_id: Option<u64>,
    whmcs_order_id: Option<u64>,
    service_ids: Vec<u64>,
    /// This run stored an intent: the one the claim reported (if any) is no longer the last.
    stored_intent: bool,
    /// This run stored the AcceptOrder intent: from here on an AcceptOrder may have been sent.
    accept_intent: bool,
    /// The `accepted` record of this run, stored with the job's next write (its end, or a
    /// write-back retry) rather than on its own.
    accepted: Option<NewAuditRecord>,
    /// A recovery point reached in this run but not stored yet: it goes with the job's next
    /// write (see [`Pending`]).
    pending: Option<Pending>,
}

/// With `WHMCS_ORDER_REF_FIELD_ID` set, a recovery point that only saves repeating idempotent
/// work (`marked_provisioning`, `whmcs_ordered`) is not stored on its own: it goes with the
/// job's next write. When the run goes well that is the intent stored right before the next
/// non-idempotent WHMCS call; otherwise it is written ahead of the job's reschedule or end. A
/// run that dies before that resumes from the point stored last, which is safe: from `checked`
/// the PATCH is sent again (idempotent); an AddOrder whose ids were not stored yet is found by
/// its external ref, as after a lost answer. `checked` itself is stored at once: the PATCH
/// after it is decided against the claim's current token (a fenced write).
struct Pending {
    step: Step,
    update: StepUpdate,
    audit: Vec<NewAuditRecord>,
}

/// `update` and `audit` together with the `pending` point they follow: its records first, its
/// WHMCS ids unless `update` has newer ones, and `update`'s intent.
fn carry(
    pending: Option<Pending>,
    update: StepUpdate,
    audit: Vec<NewAuditRecord>,
) -> (StepUpdate, Vec<NewAuditRecord>) {
    let Some(pending) = pending else {
        return (update, audit);
    };
    let mut records = pending.audit;
    records.extend(audit);
    let update = StepUpdate {
        whmcs_order_id: update.whmcs_order_id.or(pending.update.whmcs_order_id),
        service_ids: update.service_ids.or(pending.update.service_ids),
        intent_timeout: update.intent_timeout,
    };
    (update, records)
}

/// Where a per-customer rate is held: the provisioning rate (`CUSTOMER_PROVISION_RATE`) and
/// the order intake's (`CUSTOMER_ORDER_RATE`).
#[derive(Clone, Debug)]
pub enum ProvisionLimit {
    /// In this process: right for one instance (SQLite).
    Process(Arc<security::KeyedRateLimiter<String>>),
    /// In the store, one state per customer that every instance on the database draws from
    /// (PostgreSQL): N instances together still let each customer through at the rate.
    Shared(provisioner_store::SharedRate),
}

impl ProvisionLimit {
    /// A limit of `rate` in this process.
    pub fn process(rate: security::Rate) -> Self {
        Self::Process(Arc::new(security::KeyedRateLimiter::new(rate)))
    }

    /// A limit of `rate` held in the store.
    pub fn shared(rate: security::Rate) -> Self {
        Self::Shared(provisioner_store::SharedRate {
            interval: rate.replenish_interval(),
            burst: rate.count().get(),
        })
    }

    /// Takes one slot of `customer`'s rate (within `scope` when the store holds it): `None`
    /// when the event may go ahead, else how long until a slot comes back (nothing taken).
    ///
    /// # Errors
    /// The store's error when it holds the rate and cannot be asked.
    pub async fn take(
        &self,
        store: &dyn provisioner_store::Store,
        scope: &str,
        customer: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Duration>, provisioner_store::Error> {
        match self {
            Self::Process(limiter) => Ok(limiter.check(&customer.to_owned()).err().map(|w| w.0)),
            Self::Shared(rate) => store.take_rate_slot(scope, customer, *rate, now).await,
        }
    }

    /// `"process"` or `"shared"`, as metrics label it.
    pub fn scope_label(&self) -> &'static str {
        match self {
            Self::Process(_) => "process",
            Self::Shared(_) => "shared",
        }
    }
}

/// The scope of the shared per-customer provisioning rate in the store.
pub const PROVISION_RATE_SCOPE: &str = "customer_provision";

/// How many of a job's attempts may end in an unknown outcome at the step it stands at before
/// the backoff grows: those look the call up again at once (the settle rule paces repeats of
/// the call itself).
const UNKNOWN_OUTCOMES_LOOKED_UP_AT_ONCE: u32 = 3;

/// Runs claimed jobs.
pub struct JobRunner {
    ports: Ports,
    config: Arc<EngineConfig>,
    owner: String,
    rate: Option<ProvisionLimit>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Products whose first ordered services were checked for the stored external ref (once
    /// per product in this process).
    ref_checked: Mutex<HashSet<u64>>,
}

impl JobRunner {
    /// A runner claiming as `owner`, with an optional per-customer provisioning rate limit.
    pub fn new(
        ports: Ports,
        config: Arc<EngineConfig>,
        owner: String,
        rate: Option<ProvisionLimit>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        JobRunner {
            ports,
            config,
            owner,
            rate,
            shutdown,
            ref_checked: Mutex::new(HashSet::new()),
        }
    }

    /// The lease owner name of this runner.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs one claimed job until it finishes, waits for a retry, or is given back. Every log
    /// line of the run carries the order id and event id (a `job` span).
    pub async fn run(&self, job: Job) -> JobOutcome {
        let clock = Arc::clone(&self.ports.clock);
        let now = clock.monotonic();
        let unbounded = LeaseHealth::new(Duration::from_secs(u32::MAX.into()), clock, now);
        self.run_fenced(job, &unbounded).await
    }

    /// [`JobRunner::run`] under a lease whose renewals report to `lease`: no external call
    /// starts once the lease may have lapsed (the job is given back instead).
    pub async fn run_fenced(&self, job: Job, lease: &LeaseHealth) -> JobOutcome {
        self.run_claimed(job, lease, RateTake::Undecided).await
    }

    /// [`JobRunner::run_fenced`] for a job whose claim already decided its customer's rate
    /// ([`provisioner_store::Store::claim_rated`]): a job at its start is not asked again.
    pub async fn run_claimed(&self, job: Job, lease: &LeaseHealth, rate: RateTake) -> JobOutcome {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "job",
            order_id = %job.order_id,
            event_id = job.event_id.as_deref().unwrap_or(""),
            step = %job.step,
        );
        self.run_in_span(job, lease, rate).instrument(span).await
    }

    async fn run_in_span(&self, job: Job, lease: &LeaseHealth, rate: RateTake) -> JobOutcome {
        use tracing::Instrument as _;
        if job.step == Step::Received {
            let wait = match self.rate_wait(&job, rate).await {
                Ok(wait) => wait,
                Err(_) => return JobOutcome::StoreUnavailable,
            };
            if let Some(wait) = wait {
                let at =
                    self.ports.clock.now() + chrono::Duration::from_std(wait).unwrap_or_default();
                return match crate::slot::outside_slot(self.ports.store.reschedule(
                    &job.order_id,
                    token(&job),
                    Reschedule::at(at, None, false),
                    Vec::new(),
                    self.ports.clock.now(),
                ))
                .await
                {
                    Ok(()) => JobOutcome::Delayed { at },
                    Err(provisioner_store::Error::LeaseLost { .. }) => JobOutcome::LeaseLost,
                    Err(_) => JobOutcome::StoreUnavailable,
                };
            }
        }
        let mut progress = Progress {
            whmcs_order_id: job.whmcs_order_id.as_deref().and_then(parse_id),
            service_ids: job.service_ids.iter().filter_map(|s| parse_id(s)).collect(),
            ..Progress::default()
        };
        let mut step = job.step;
        loop {
            if step == Step::Done {
                return self.settle_done(&job, &mut progress).await;
            }
            if *self.shutdown.borrow() {
                if let Err(e) = self.store_pending(&job, &mut progress).await {
                    return self.settled(&job, Err(e));
                }
                return self.settle(&job, step, Stop::Shutdown).await;
            }
            let started = std::time::Instant::now();
            // A `step` span per step run, child of the `job` span (its external calls nest in it).
            let result = self
                .step(&job, step, &mut progress, lease)
                .instrument(tracing::info_span!("step", step = %step))
                .await;
            metrics::histogram!(crate::metrics::STEP_SECONDS, "step" => step.as_str())
                .record(started.elapsed().as_secs_f64());
            if let Err(stop) = &result
                && !matches!(stop, Stop::LeaseLost)
                && let Err(e) = self.store_pending(&job, &mut progress).await
            {
                return self.settled(&job, Err(e));
            }
            match result {
                Ok(next) => step = next,
                // Once the AcceptOrder intent is stored, the job settles as the point it stored.
                Err(stop) if progress.accept_intent && step == Step::WhmcsOrdered => {
                    return self.settle(&job, Step::AcceptUnknown, stop).await;
                }
                Err(stop) => {
                    let accepted = progress.accepted.take();
                    return self.settle_carrying(&job, step, stop, accepted).await;
                }
            }
        }
    }

    /// How long the customer's provisioning rate holds `job` back (`None`: it may start now):
    /// what its claim decided, or else a slot taken now.
    async fn rate_wait(
        &self,
        job: &Job,
        decided: RateTake,
    ) -> Result<Option<Duration>, provisioner_store::Error> {
        let Some(rate) = &self.rate else {
            return Ok(None);
        };
        let wait = match decided {
            RateTake::Taken => None,
            RateTake::Refused(wait) => Some(wait),
            RateTake::Undecided => rate
                .take(
                    self.ports.store.as_ref(),
                    PROVISION_RATE_SCOPE,
                    &job.customer_number,
                    self.ports.clock.now(),
                )
                .await
                .inspect_err(crate::metrics::store_failed)?,
        };
        if wait.is_some() {
            metrics::counter!(crate::metrics::RATE_DELAYED_TOTAL, "scope" => rate.scope_label())
                .increment(1);
        }
        Ok(wait)
    }

    /// `record` about this job: its order id and (when it is a valid subject id) customer.
    fn record(job: &Job, record: NewAuditRecord) -> Result<NewAuditRecord, audit::Error> {
        let record = record.order_id(job.order_id.as_str())?;
        match audit::SubjectId::new(job.customer_number.as_str()) {
            Ok(_) => record.customer_number(job.customer_number.as_str()),
            Err(_) => Ok(record),
        }
    }

    /// A `step_succeeded` record of `step`, with an optional extra detail.
    fn step_record(
        job: &Job,
        step: Step,
        extra: Option<(DetailKey, String)>,
    ) -> Result<NewAuditRecord, audit::Error> {
        let mut record =
            NewAuditRecord::new(Actor::WORKER, Action::STEP_SUCCEEDED, Outcome::Success)
                .detail(DetailKey::Step, step.as_str())?;
        if let Some((key, value)) = extra {
            record = record.detail(key, value)?;
        }
        Self::record(job, record)
    }

    /// Stores a recovery point (fenced by the lease) with its audit records, in one
    /// transaction, together with the point this run reached before it and has not stored
    /// yet (its records first, its WHMCS ids unless `update` has newer ones).
    async fn store_point(
        &self,
        job: &Job,
        progress: &mut Progress,
        step: Step,
        update: StepUpdate,
        audit: Vec<NewAuditRecord>,
    ) -> Result<(), Stop> {
        let (update, audit) = carry(progress.pending.take(), update, audit);
        crate::slot::outside_slot(self.ports.store.advance(
            &job.order_id,
            token(job),
            step,
            update,
            audit,
            self.ports.clock.now(),
        ))
        .await?;
        Ok(())
    }

    /// Reaches recovery point `step` (with its `step_succeeded` record) without a write of its
    /// own: it goes with the job's next write ([`Pending`]). Without `WHMCS_ORDER_REF_FIELD_ID`
    /// it is stored at once: an AddOrder cannot be looked up then, so a run resumed after an
    /// AddOrder whose ids were not stored would fail for an operator.
    async fn reach(
        &self,
        job: &Job,
        progress: &mut Progress,
        step: Step,
        update: StepUpdate,
        extra: Option<(DetailKey, String)>,
    ) -> Result<Step, Stop> {
        let record = Self::step_record(job, step, extra)?;
        if self.config.order_ref_fields.is_none() {
            self.store_point(job, progress, step, update, vec![record])
                .await?;
            return Ok(step);
        }
        let (update, audit) = carry(progress.pending.take(), update, vec![record]);
        progress.pending = Some(Pending {
            step,
            update,
            audit,
        });
        Ok(step)
    }

    /// Stores the point this run reached and has not stored yet, if any (before the job's
    /// reschedule or end).
    async fn store_pending(&self, job: &Job, progress: &mut Progress) -> Result<(), SettleError> {
        let Some(pending) = progress.pending.take() else {
            return Ok(());
        };
        crate::slot::outside_slot(self.ports.store.advance(
            &job.order_id,
            token(job),
            pending.step,
            pending.update,
            pending.audit,
            self.ports.clock.now(),
        ))
        .await?;
        Ok(())
    }

    async fn fetch(&self, job: &Job, progress: &mut Progress) -> Result<(), Stop> {
        if progress.order.is_none() {
            let order =
                self.ports
                    .orders
                    .fetch_order(&job.order_id)
                    .await
                    .map_err(|e| match e {
                        sf_rest::Error::NotFound { .. } if job.step == Step::Received => {
                            Stop::Refuse {
                                code: StopReason::OrderNotFound,
                            }
                        }
                        sf_rest::Error::InvalidId { .. } => Stop::Refuse {
                            code: StopReason::InvalidOrderId,
                        },
                        other => sf_stop(other),
                    })?;
            progress.order = Some(order);
        }
        Ok(())
    }

    /// Whether `status` lets the job start: the approved status, or, for a job an operator
    /// retried (`dlq retry`), the failed status this provisioner wrote itself.
    fn approved_for(&self, job: &Job, status: &str) -> bool {
        let statuses = &self.config.statuses;
        status == statuses.approved
            || (job.reopened_by == Some(JobSource::Operator) && status == statuses.failed)
    }

    /// Whether the Order's `status` is the failed status this provisioner writes because an
    /// earlier run of this job failed it and stopped before its end was stored (a permanent
    /// failure PATCHes the Order before it stores the end; a crash, or a restored backup from
    /// before the end, lost the end). Refused `not_approved`, that failure would have no dead
    /// letter. That holds for a job never reopened (only a run of this job writes the failed
    /// status for its Order), and for one reopened by an event or the sweep whose reopening
    /// closed no dead letter (its earlier end was a refusal, so the failure is its own run's).
    /// A reopened failed job that finds the status is refused instead, its letters opened
    /// again (a late event: the failure stands); an operator's retry accepts the status (see
    /// [`Self::approved_for`]).
    async fn failed_earlier(&self, job: &Job, status: &str) -> Result<bool, Stop> {
        if status != self.config.statuses.failed {
            return Ok(false);
        }
        Ok(match job.reopened_by {
            None => true,
            Some(JobSource::Operator) => false,
            Some(JobSource::Event | JobSource::Reconcile) => {
                self.ports.store.reopened_letters(&job.order_id).await? == 0
            }
        })
    }

    /// Fetches the Order again right before a non-idempotent WHMCS call: it must still be
    /// approved (or in our provisioning status) and the job's customer's, else the job stops
    /// as `approval_withdrawn` with nothing more written.
    async fn recheck(&self, job: &Job, progress: &mut Progress) -> Result<(), Stop> {
        let withdrawn = || Stop::Withdrawn {
            whmcs_order_id: progress.whmcs_order_id,
        };
        let order = match self.ports.orders.fetch_order(&job.order_id).await {
            Ok(order) => order,
            Err(sf_rest::Error::NotFound { .. }) => return Err(withdrawn()),
            Err(e) => return Err(sf_stop(e)),
        };
        let status = order.status.as_deref().unwrap_or_default();
        let statuses = &self.config.statuses;
        // Provisioned meanwhile by an earlier run of this job (a restored backup resumes a job
        // from before its end; that run's write-back stands in Salesforce): done, as when the
        // job starts on such an Order, unless the Order names another WHMCS order than the one
        // this job added (that is not this job's work: refused, with its alert).
        let ours = match (progress.whmcs_order_id, order.whmcs_order_id.as_deref()) {
            (Some(added), Some(named)) => parse_id(named) == Some(added),
            _ => true,
        };
        if status == statuses.provisioned
            && has_whmcs_order(&order)
            && ours
            && same_customer(&order, job)
        {
            return Err(Stop::AlreadyDone);
        }
        if self.failed_earlier(job, status).await? {
            return Err(Stop::FailedEarlier);
        }
        let approved =
            self.approved_for(job, status) || statuses.provisioning.as_deref() == Some(status);
        if !approved || !same_customer(&order, job) || has_whmcs_order(&order) {
            tracing::warn!(order_id = %job.order_id, "approval withdrawn before a WHMCS write");
            return Err(withdrawn());
        }
        progress.order = Some(order);
        Ok(())
    }

    fn client_id(progress: &Progress) -> Result<u64, Stop> {
        let order = progress
            .order
            .as_ref()
            .ok_or_else(|| permanent(StopReason::Internal, "order not loaded"))?;
        order
            .whmcs_client_id
            .as_deref()
            .and_then(parse_id)
            .ok_or_else(|| {
                permanent(
                    StopReason::InvalidOrder,
                    "Order has no valid WHMCS_Client_Id__c",
                )
            })
    }

    /// Replaces each option the order intake sealed (bound to the Order's
    /// `Portal_Request_Id__c` and the option id) by its value. A value that does not open
    /// stops the job as an `integrity_failure`, before anything is written to WHMCS.
    fn open_sealed(
        &self,
        order: &sf_rest::Order,
        n: usize,
        json: &mut serde_json::Value,
    ) -> Result<(), Stop> {
        let Some(options) = json.as_object_mut() else {
            return Ok(());
        };
        for (id, value) in options.iter_mut() {
            let Some(text) = value.as_str().filter(|t| crate::order_intake::is_sealed(t)) else {
                continue;
            };
            let (Some(opener), Some(request_id)) = (&self.ports.opener, &order.request_id) else {
                return Err(permanent(
                    StopReason::IntegrityFailure,
                    format!(
                        "OrderItem {n} option {id} is sealed, but the Order has no \
                         Portal_Request_Id__c or no key to open it"
                    ),
                ));
            };
            let opened = opener.open(request_id, id, text).map_err(|e| {
                permanent(
                    StopReason::IntegrityFailure,
                    format!("OrderItem {n} option {id} does not decrypt: {e}"),
                )
            })?;
            *value = serde_json::Value::String(opened.expose_secret().to_owned());
        }
        Ok(())
    }

    fn lines(&self, job: &Job, progress: &Progress) -> Result<Vec<OrderLine>, Stop> {
        let order = progress
            .order
            .as_ref()
            .ok_or_else(|| permanent(StopReason::Internal, "order not loaded"))?;
        if order.items.is_empty() {
            return Err(permanent(
                StopReason::InvalidOrder,
                "Order has no OrderItems",
            ));
        }
        let mut lines = Vec::new();
        for (i, item) in order.items.iter().enumerate() {
            let n = i + 1;
            let pid = item
                .whmcs_product_id
                .as_deref()
                .and_then(parse_id)
                .ok_or_else(|| {
                    permanent(
                        StopReason::InvalidOrder,
                        format!("OrderItem {n} has no valid WHMCS_Product_Id__c"),
                    )
                })?;
            let cycle = item
                .billing_cycle
                .as_deref()
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    permanent(
                        StopReason::InvalidOrder,
                        format!("OrderItem {n} has no Billing_Cycle__c"),
                    )
                })?;
            let options = match &item.config_options {
                None => ConfigOptions::new(),
                Some(secret) => {
                    let mut json: serde_json::Value = serde_json::from_str(secret.expose_secret())
                        .map_err(|_| {
                            permanent(
                                StopReason::InvalidOrder,
                                format!("OrderItem {n} Config_Options__c is not a JSON object"),
                            )
                        })?;
                    self.open_sealed(order, n, &mut json)?;
                    ConfigOptions::from_json(&json).map_err(|e| {
                        permanent(StopReason::InvalidOrder, format!("OrderItem {n}: {e}"))
                    })?
                }
            };
            let mut fields = CustomFields::new();
            if let Some(refs) = &self.config.order_ref_fields {
                // AddOrder drops a field id the product does not define: with ids per product,
                // a product without one is stopped before anything is written to WHMCS.
                let field = refs.field_for(pid).ok_or_else(|| {
                    permanent(
                        StopReason::NoRefFieldForProduct,
                        format!(
                            "OrderItem {n}: WHMCS_ORDER_REF_FIELD_ID has no field id for WHMCS product {pid}"
                        ),
                    )
                })?;
                fields = fields.with(field, job.order_id.clone());
            }
            if item.quantity == 0 {
                return Err(permanent(
                    StopReason::InvalidOrder,
                    format!("OrderItem {n} has quantity 0"),
                ));
            }
            for _ in 0..item.quantity {
                let mut line = OrderLine::new(pid, cycle.to_owned());
                line.custom_fields = fields.clone();
                line.config_options = options.clone();
                lines.push(line);
            }
        }
        Ok(lines)
    }

    async fn step(
        &self,
        job: &Job,
        step: Step,
        progress: &mut Progress,
        lease: &LeaseHealth,
    ) -> Result<Step, Stop> {
        // Every step but the first makes an external write (PATCH, AddOrder, AcceptOrder) or
        // may: none starts once the lease may have lapsed.
        if step != Step::Received && !lease.is_live() {
            return Err(Stop::LeaseLapsed);
        }
        let statuses = &self.config.statuses;
        match step {
            Step::Received => {
                self.fetch(job, progress).await?;
                let order = progress
                    .order
                    .as_ref()
                    .ok_or_else(|| permanent(StopReason::Internal, "order not loaded"))?;
                let status = order.status.as_deref().unwrap_or_default();
                // Provisioned before (a replay, a restore): done, not refused, no alert.
                if status == statuses.provisioned && has_whmcs_order(order) {
                    return Err(Stop::AlreadyDone);
                }
                if self.failed_earlier(job, status).await? {
                    return Err(Stop::FailedEarlier);
                }
                // Our own unfinished work (a restored backup, a lost job) is resumed, never
                // refused: it is looked up in WHMCS before any AddOrder.
                let own_work =
                    statuses.provisioning.as_deref() == Some(status) && !has_whmcs_order(order);
                if !own_work && !self.approved_for(job, status) {
                    return Err(Stop::Refuse {
                        code: StopReason::NotApproved,
                    });
                }
                if !same_customer(order, job) {
                    return Err(Stop::Refuse {
                        code: StopReason::CustomerMismatch,
                    });
                }
                let client_id = Self::client_id(progress)?;
                self.lines(job, progress)?;
                let client = self
                    .ports
                    .whmcs
                    .get_client_details(client_id)
                    .await
                    .map_err(whmcs_stop)?;
                if !matches!(client.status, whmcs_client::ClientStatus::Active) {
                    return Err(permanent(
                        StopReason::WhmcsClientInactive,
                        format!("WHMCS client {client_id} is not Active"),
                    ));
                }
                progress.client_id = Some(client_id);
                if own_work {
                    // The Order already says Provisioning; an AddOrder of the lost run may
                    // exist: resume as "AddOrder outcome unknown".
                    let record = Self::step_record(
                        job,
                        Step::Checked,
                        Some((DetailKey::ReasonCode, "own_work_resumed".to_owned())),
                    )?;
                    // Found: the lost run's AddOrder committed, and its AcceptOrder may have
                    // been sent too and still be running the server module (the order stays
                    // Pending meanwhile, so a second AcceptOrder would create the services a
                    // second time). It counts as sent now: the job resumes as "AcceptOrder
                    // outcome unknown", settled by the order's status or after the settle
                    // point. Not found: the lost run never had an answer to an AddOrder (it
                    // stopped before this lookup, and an AddOrder commits before it answers),
                    // so it sent no AcceptOrder.
                    if let Some((order_id, ids)) = self.find_by_ref(job, client_id).await? {
                        let ordered = Self::step_record(
                            job,
                            Step::WhmcsOrdered,
                            Some((DetailKey::ReasonCode, "found_existing".to_owned())),
                        )?;
                        let update = StepUpdate {
                            whmcs_order_id: Some(order_id.to_string()),
                            service_ids: Some(ids.iter().map(u64::to_string).collect()),
                            intent_timeout: Some(self.config.whmcs_accept_timeout),
                        };
                        progress.whmcs_order_id = Some(order_id);
                        progress.service_ids = ids;
                        self.store_point(
                            job,
                            progress,
                            Step::AcceptUnknown,
                            update,
                            vec![record, ordered],
                        )
                        .await?;
                        progress.stored_intent = true;
                        progress.accept_intent = true;
                        return Ok(Step::AcceptUnknown);
                    }
                    // When that AddOrder was sent is unknown: it counts as sent now.
                    let update = StepUpdate {
                        intent_timeout: Some(self.config.whmcs_timeout),
                        ..StepUpdate::default()
                    };
                    self.store_point(job, progress, Step::OrderUnknown, update, vec![record])
                        .await?;
                    progress.stored_intent = true;
                    return Ok(Step::OrderUnknown);
                }
                // Stored at once, unlike the points after it: the PATCH that follows is
                // decided against the claim's current token (the write is fenced).
                let record = Self::step_record(job, Step::Checked, None)?;
                self.store_point(
                    job,
                    progress,
                    Step::Checked,
                    StepUpdate::default(),
                    vec![record],
                )
                .await?;
                Ok(Step::Checked)
            }
            // Resumed here (a crash or a takeover between the check and the PATCH, a restored
            // backup): this run has not seen the Order, which may have moved on since the
            // check (approval withdrawn, or provisioned by the run the backup predates). The
            // PATCH would overwrite that status: the Order is checked again first (reads only).
            Step::Checked if progress.order.is_none() => Ok(Step::Received),
            Step::Checked => {
                if let Some(value) = &statuses.provisioning {
                    let update = OrderUpdate {
                        status: Some(value.clone()),
                        deadline: Some(lease.deadline()),
                        ..OrderUpdate::default()
                    };
                    // The provisioning status is guarded by a validation rule (reached only
                    // from the approved or the failed status): an Order withdrawn since the
                    // check refuses the PATCH instead of having its withdrawal overwritten. A
                    // refusal reads like any permanent error, so the Order is read again:
                    // withdrawn -> refused `approval_withdrawn`, nothing written; approved
                    // (again: withdrawn and approved between the check and the re-read) ->
                    // the PATCH once more, whose error then stands.
                    let mut refused = false;
                    while let Err(e) = self.ports.orders.update_order(&job.order_id, &update).await
                    {
                        let stop = sf_stop(e);
                        if refused || !matches!(stop, Stop::Permanent { .. }) {
                            return Err(stop);
                        }
                        refused = true;
                        self.recheck(job, progress).await?;
                        if !lease.is_live() {
                            return Err(Stop::LeaseLapsed);
                        }
                    }
                }
                self.reach(
                    job,
                    progress,
                    Step::MarkedProvisioning,
                    StepUpdate::default(),
                    None,
                )
                .await
            }
            Step::MarkedProvisioning | Step::OrderUnknown => {
                self.fetch(job, progress).await?;
                let client_id = Self::client_id(progress)?;
                if self.config.order_ref_fields.is_some() {
                    if let Some((order_id, ids)) = self.find_by_ref(job, client_id).await? {
                        return self
                            .ordered(job, progress, order_id, ids, "found_existing")
                            .await;
                    }
                    if step == Step::OrderUnknown {
                        // Not found: repeated only when the earlier AddOrder can no longer
                        // commit (the settle rule), else the job waits and looks again.
                        self.may_repeat(job, progress, Step::OrderUnknown).await?;
                    }
                } else if step == Step::OrderUnknown {
                    return Err(permanent(
                        StopReason::UnknownOutcome,
                        "AddOrder outcome unknown and WHMCS_ORDER_REF_FIELD_ID is not set to look it up; \
                         check WHMCS before retrying",
                    ));
                }
                // Approval is checked again right before the non-idempotent call.
                self.recheck(job, progress).await?;
                let lines = self.lines(job, progress)?;
                // The intent, with its sent time and timeout, right before every AddOrder: a
                // run that loses track of it looks it up, and repeats it only after the settle
                // point. The call's timeout counts from before the intent's write (see
                // `intent_deadline`).
                let deadline = self.intent_deadline(Step::OrderUnknown);
                self.store_intent(job, progress, Step::OrderUnknown).await?;
                let products: BTreeSet<u64> = lines.iter().map(|l| l.product_id).collect();
                let mut order = NewOrder::new(client_id, lines);
                order.payment_method = Some(self.config.payment_method.clone());
                order.no_email = !self.config.send_email;
                order.no_invoice = self.config.no_invoice;
                order.deadline = Some(deadline);
                if !lease.is_live() {
                    return Err(Stop::LeaseLapsed);
                }
                let placed = self
                    .ports
                    .whmcs
                    .add_order(&order)
                    .await
                    .map_err(whmcs_stop)?;
                let whmcs_order_id = placed.order_id;
                let next = self
                    .ordered(
                        job,
                        progress,
                        placed.order_id,
                        placed.service_ids,
                        "add_order",
                    )
                    .await?;
                // A read, but no call starts on a lease that may have lapsed while AddOrder
                // was out: the product is then checked on its next order.
                if lease.is_live() {
                    self.check_ref_stored(job, client_id, whmcs_order_id, &products)
                        .await;
                }
                Ok(next)
            }
            Step::WhmcsOrdered | Step::AcceptUnknown => {
                let order_id = progress.whmcs_order_id.ok_or_else(|| {
                    permanent(StopReason::Internal, "WHMCS order id missing at accept")
                })?;
                if step == Step::AcceptUnknown {
                    match self
                        .ports
                        .whmcs
                        .get_order(order_id)
                        .await
                        .map_err(whmcs_stop)?
                    {
                        Some(o) if o.is_active() => return self.accepted(job, progress, order_id),
                        // Still Pending: the AcceptOrder may still be running the server
                        // module; repeated only after its settle point.
                        Some(o) if o.status.eq_ignore_ascii_case("pending") => {
                            self.may_repeat(job, progress, Step::AcceptUnknown).await?;
                        }
                        Some(_) | None => {
                            return Err(permanent(
                                StopReason::WhmcsOrderState,
                                format!("WHMCS order {order_id} is neither Pending nor Active"),
                            ));
                        }
                    }
                }
                // Approval is checked again right before the non-idempotent call.
                self.recheck(job, progress).await?;
                let deadline = self.intent_deadline(Step::AcceptUnknown);
                self.store_intent(job, progress, Step::AcceptUnknown)
                    .await?;
                progress.accept_intent = true;
                if !lease.is_live() {
                    return Err(Stop::LeaseLapsed);
                }
                let mut request = AcceptOrderRequest::provision(order_id, self.config.send_email);
                request.deadline = Some(deadline);
                match self.ports.whmcs.accept_order(&request).await {
                    Ok(()) => self.accepted(job, progress, order_id),
                    Err(e) if e.is_order_not_pending() => {
                        match self
                            .ports
                            .whmcs
                            .get_order(order_id)
                            .await
                            .map_err(whmcs_stop)?
                        {
                            Some(o) if o.is_active() => self.accepted(job, progress, order_id),
                            _ => Err(permanent(
                                StopReason::WhmcsOrderState,
                                format!("WHMCS order {order_id} is not Pending and not Active"),
                            )),
                        }
                    }
                    Err(e) => Err(whmcs_stop(e)),
                }
            }
            Step::Accepted => {
                let order_id = progress.whmcs_order_id.ok_or_else(|| {
                    permanent(StopReason::Internal, "WHMCS order id missing at write-back")
                })?;
                let update = OrderUpdate {
                    status: Some(statuses.provisioned.clone()),
                    whmcs_order_id: Some(order_id.to_string()),
                    whmcs_service_ids: Some(
                        progress.service_ids.iter().map(u64::to_string).collect(),
                    ),
                    provisioned_at: Some(self.ports.clock.now()),
                    provisioning_error: None,
                    deadline: Some(lease.deadline()),
                };
                // After WHMCS accepted, the Order is never marked failed: every write-back
                // error is retried (settle keeps this step's retries unbounded).
                self.ports
                    .orders
                    .update_order(&job.order_id, &update)
                    .await
                    .map_err(|e| Stop::Retry {
                        code: match e.class() {
                            sf_rest::ErrorClass::Permanent => StopReason::SalesforcePermanent,
                            _ => StopReason::SalesforceRetryable,
                        },
                        reason: format!("salesforce: {e}"),
                    })?;
                Ok(Step::Done)
            }
            Step::Done => Ok(Step::Done),
        }
    }

    /// The WHMCS order an earlier AddOrder of this Order made, found by its external ref: its
    /// id and the ids of its services. `None` when nothing carries the ref, or when no ref
    /// field is configured (nothing can be found then). One walk through the client's
    /// services: a service carries the ref in the field configured for *its* product.
    async fn find_by_ref(
        &self,
        job: &Job,
        client_id: u64,
    ) -> Result<Option<(u64, Vec<u64>)>, Stop> {
        let Some(refs) = &self.config.order_ref_fields else {
            return Ok(None);
        };
        let services = self
            .ports
            .whmcs
            .client_service_refs(client_id)
            .await
            .map_err(whmcs_stop)?;
        let found = services.iter().find(|s| {
            refs.field_for(s.product_id)
                .is_some_and(|field| s.custom_field(field) == Some(job.order_id.as_str()))
        });
        Ok(found.map(|service| {
            let ids = services
                .iter()
                .filter(|s| s.order_id == service.order_id)
                .map(|s| s.id)
                .collect();
            (service.order_id, ids)
        }))
    }

    /// The client timeout of the call whose intent is stored at `step`.
    fn intent_timeout(&self, step: Step) -> Duration {
        if step == Step::AcceptUnknown {
            self.config.whmcs_accept_timeout
        } else {
            self.config.whmcs_timeout
        }
    }

    /// The deadline of the call whose intent is about to be stored at `step`: now (before the
    /// intent's write begins) + the call's timeout. The store stamps the intent's sent time
    /// while it writes, so no earlier than now; the settle rule counts from that time + the
    /// timeout. Were the timeout counted from the send instead, a slow write or a pause of the
    /// process between the intent and the send (a second, say) would let the call be out, and
    /// commit, past the settle point another run goes by: a second AddOrder. With this
    /// deadline the request is given up by the recorded time + the timeout, and not sent at all
    /// once that has passed.
    fn intent_deadline(&self, step: Step) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.intent_timeout(step)
    }

    /// Stores the intent of the call about to be sent (`step`: [`Step::OrderUnknown`] for
    /// AddOrder, [`Step::AcceptUnknown`] for AcceptOrder), with its timeout; the store stamps
    /// its sent time by the database's clock.
    async fn store_intent(
        &self,
        job: &Job,
        progress: &mut Progress,
        step: Step,
    ) -> Result<(), Stop> {
        let update = StepUpdate {
            intent_timeout: Some(self.intent_timeout(step)),
            ..StepUpdate::default()
        };
        self.store_point(job, progress, step, update, Vec::new())
            .await?;
        progress.stored_intent = true;
        Ok(())
    }

    /// The settle rule: the call of unknown outcome at `step` was not found, and may be sent
    /// again only if this claim (hence the lookup that just missed) began no earlier than its
    /// sent time + its timeout + `WHMCS_SETTLE`, both by the database's clock. Otherwise the
    /// job waits until that point and looks again. An intent with no recorded time (a job
    /// from an older version) counts as sent now, as does one this run stored itself.
    async fn may_repeat(&self, job: &Job, progress: &mut Progress, step: Step) -> Result<(), Stop> {
        let settle = self.config.whmcs_settle;
        if let Some(intent) = job.intent
            && !progress.stored_intent
        {
            let point = intent.settle_point(settle);
            if job.claimed_at() >= point {
                return Ok(());
            }
            tracing::info!(order_id = %job.order_id, step = %step, settle_point = %point, "outcome unknown and not found yet; waiting until the call cannot still commit");
            return Err(Stop::Settling { until: point });
        }
        if !progress.stored_intent {
            self.store_intent(job, progress, step).await?;
        }
        // The stored time is the database's and at least this claim's: the next claim checks
        // it again.
        let wait = chrono::Duration::from_std(self.intent_timeout(step).saturating_add(settle))
            .unwrap_or(chrono::Duration::MAX);
        Err(Stop::Settling {
            until: job.claimed_at() + wait,
        })
    }

    /// Reaches [`Step::WhmcsOrdered`] with the WHMCS ids and the `whmcs_ordered` record
    /// (`how`): they are stored with the AcceptOrder intent, or ahead of the job's reschedule
    /// or end ([`Self::reach`]). A run that dies before that finds the order again by its
    /// external ref.
    async fn ordered(
        &self,
        job: &Job,
        progress: &mut Progress,
        order_id: u64,
        service_ids: Vec<u64>,
        how: &'static str,
    ) -> Result<Step, Stop> {
        progress.whmcs_order_id = Some(order_id);
        progress.service_ids = service_ids;
        let update = StepUpdate {
            whmcs_order_id: Some(order_id.to_string()),
            service_ids: Some(progress.service_ids.iter().map(u64::to_string).collect()),
            intent_timeout: None,
        };
        self.reach(
            job,
            progress,
            Step::WhmcsOrdered,
            update,
            Some((DetailKey::ReasonCode, how.to_owned())),
        )
        .await
    }

    /// The first time each product is ordered in this process: do the new services of
    /// `whmcs_order_id` carry the external ref in the field configured for their product? A
    /// service without it raises `ref_field_not_stored` (once per product): a wrong field id,
    /// or an admin-only field the WHMCS version does not save, would leave an unknown AddOrder
    /// outcome of that product impossible to look up. The check never stops the job; when
    /// GetClientsProducts fails, or the lease may have lapsed before it (no call starts then),
    /// the product is checked on its next order.
    async fn check_ref_stored(
        &self,
        job: &Job,
        client_id: u64,
        whmcs_order_id: u64,
        products: &BTreeSet<u64>,
    ) {
        let Some(refs) = &self.config.order_ref_fields else {
            return;
        };
        let unchecked: Vec<u64> = {
            let checked = self
                .ref_checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            products
                .iter()
                .copied()
                .filter(|pid| !checked.contains(pid))
                .collect()
        };
        if unchecked.is_empty() {
            return;
        }
        let services = match self.ports.whmcs.client_service_refs(client_id).await {
            Ok(services) => services,
            Err(e) => {
                tracing::warn!(order_id = %job.order_id, error = %e, "could not check that WHMCS stored the external ref; checking on the next order");
                return;
            }
        };
        for pid in unchecked {
            let Some(field) = refs.field_for(pid) else {
                continue;
            };
            // Another job may have checked the product meanwhile: one alert per product.
            let first = self
                .ref_checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(pid);
            if !first {
                continue;
            }
            let missing = services
                .iter()
                .filter(|s| s.order_id == whmcs_order_id && s.product_id == pid)
                .any(|s| s.custom_field(field) != Some(job.order_id.as_str()));
            if missing {
                tracing::error!(order_id = %job.order_id, whmcs_order_id, product_id = pid, field_id = field, "WHMCS did not store the external ref in the product's custom field");
                self.ports.alerts.ref_field_not_stored(pid, field).await;
            }
        }
    }

    /// AcceptOrder succeeded (or WHMCS shows the order Active). Audited, not stored as a
    /// recovery point of its own: the stored AcceptUnknown point already resumes by asking
    /// WHMCS for the order's status, which finds it Active and goes on to the write-back, an
    /// idempotent PATCH. One database write less per order, same behaviour after a crash. The
    /// record goes with the job's next write (its end, or the retry of a failed write-back);
    /// a run that stops before one (a crash, a lost lease, a shutdown) leaves it unwritten,
    /// like the step itself, and the next run finds the order Active and audits it then.
    fn accepted(&self, job: &Job, progress: &mut Progress, order_id: u64) -> Result<Step, Stop> {
        let record = Self::step_record(
            job,
            Step::Accepted,
            Some((DetailKey::WhmcsOrderId, order_id.to_string())),
        )?;
        progress.accepted = Some(record);
        Ok(Step::Accepted)
    }

    async fn settle_done(&self, job: &Job, progress: &mut Progress) -> JobOutcome {
        if let Err(e) = self.store_pending(job, progress).await {
            return self.settled(job, Err(e));
        }
        let ids: Vec<String> = progress.service_ids.iter().map(u64::to_string).collect();
        let record =
            NewAuditRecord::new(Actor::WORKER, Action::ORDER_PROVISIONED, Outcome::Success)
                .detail(
                    DetailKey::WhmcsOrderId,
                    progress.whmcs_order_id.unwrap_or_default().to_string(),
                )
                .and_then(|r| {
                    if ids.is_empty() {
                        Ok(r)
                    } else {
                        r.detail(DetailKey::ServiceIds, ids.join(","))
                    }
                });
        let end = JobEnd {
            state: JobState::Done,
            error: None,
            dead_letter: None,
        };
        let records = progress.accepted.take().map(Ok).into_iter().chain([record]);
        let settled = match self.finish(job, end, records.collect()).await {
            Ok(()) => Ok(JobOutcome::Provisioned {
                whmcs_order_id: progress.whmcs_order_id.unwrap_or_default(),
                service_ids: progress.service_ids.clone(),
            }),
            Err(e) => Err(e),
        };
        self.settled(job, settled)
    }

    /// Ends the job with `end` and its audit `records` (each built for this job), in one
    /// transaction.
    async fn finish(
        &self,
        job: &Job,
        end: JobEnd,
        records: Vec<Result<NewAuditRecord, audit::Error>>,
    ) -> Result<(), SettleError> {
        let audit = self.records(job, records)?;
        self.store_finish(job, end, audit).await
    }

    /// Ends the job with `end` and its built audit records, fenced by the claim's token.
    async fn store_finish(
        &self,
        job: &Job,
        end: JobEnd,
        audit: Vec<NewAuditRecord>,
    ) -> Result<(), SettleError> {
        crate::slot::outside_slot(self.ports.store.finish(
            &job.order_id,
            token(job),
            end,
            audit,
            self.ports.clock.now(),
        ))
        .await?;
        Ok(())
    }

    /// The records about this job, or the first one that could not be built.
    fn records(
        &self,
        job: &Job,
        records: Vec<Result<NewAuditRecord, audit::Error>>,
    ) -> Result<Vec<NewAuditRecord>, SettleError> {
        records
            .into_iter()
            .map(|r| r.and_then(|r| Self::record(job, r)))
            .collect::<Result<_, _>>()
            .map_err(SettleError::Audit)
    }

    /// The outcome of settling: a store or audit failure leaves the job to its lease (it runs
    /// again), counted and logged.
    fn settled(&self, job: &Job, settled: Result<JobOutcome, SettleError>) -> JobOutcome {
        match settled {
            Ok(outcome) => outcome,
            Err(SettleError::Store(provisioner_store::Error::LeaseLost { .. })) => {
                JobOutcome::LeaseLost
            }
            Err(SettleError::Store(e)) => {
                crate::metrics::store_failed(&e);
                tracing::error!(order_id = %job.order_id, error = %e, "could not settle job; its lease will expire");
                JobOutcome::StoreUnavailable
            }
            Err(SettleError::Audit(e)) => {
                crate::metrics::audit_failed();
                tracing::error!(order_id = %job.order_id, error = %e, "could not build the job's audit record; its lease will expire");
                JobOutcome::StoreUnavailable
            }
        }
    }

    async fn settle(&self, job: &Job, step: Step, stop: Stop) -> JobOutcome {
        self.settle_carrying(job, step, stop, None).await
    }

    /// [`Self::settle`], with the `accepted` record of this run if it was not stored yet: it
    /// goes with a write-back retry; a stop that writes nothing leaves it unwritten.
    async fn settle_carrying(
        &self,
        job: &Job,
        step: Step,
        stop: Stop,
        accepted: Option<NewAuditRecord>,
    ) -> JobOutcome {
        let now = self.ports.clock.now();
        let store = &self.ports.store;
        let settled = match stop {
            Stop::LeaseLost => return JobOutcome::LeaseLost,
            // Given back (fenced by the token): another claim resumes it from its recovery
            // point. If the claim was taken over meanwhile, the release is refused: lost.
            Stop::LeaseLapsed => {
                tracing::warn!(order_id = %job.order_id, step = %step, "lease lapsed; job given back");
                store
                    .release(&job.order_id, token(job), now)
                    .await
                    .map(|()| JobOutcome::LeaseLost)
                    .map_err(SettleError::Store)
            }
            Stop::Shutdown => store
                .release(&job.order_id, token(job), now)
                .await
                .map(|()| JobOutcome::Released)
                .map_err(SettleError::Store),
            Stop::AlreadyDone => {
                let record =
                    NewAuditRecord::new(Actor::WORKER, Action::ORDER_PROVISIONED, Outcome::Success)
                        .detail(DetailKey::ReasonCode, "already_provisioned");
                let end = JobEnd {
                    state: JobState::Done,
                    error: None,
                    dead_letter: None,
                };
                self.finish(job, end, vec![record])
                    .await
                    .map(|()| JobOutcome::AlreadyProvisioned)
            }
            Stop::Refuse { code } => self.refuse(job, code, None).await,
            Stop::FailedEarlier => {
                let reason = "an earlier run of this job marked the Order failed and stopped \
                              before its end was stored (a crash, or a restored backup); the \
                              Order's Provisioning_Error__c says why";
                self.fail(job, step, StopReason::EarlierFailure, reason, false)
                    .await
            }
            // Not an attempt: the call's outcome is still open, nothing failed.
            Stop::Settling { until } => self
                .reschedule(
                    job,
                    step,
                    StopReason::OutcomeSettling,
                    Reschedule::at(until, None, false),
                )
                .await
                .map(|()| JobOutcome::Delayed { at: until }),
            Stop::Withdrawn { whmcs_order_id } => {
                self.refuse(job, StopReason::ApprovalWithdrawn, Some(whmcs_order_id))
                    .await
            }
            // After WHMCS accepted, every write-back error is retried, without limit.
            Stop::Retry { reason, code } | Stop::Permanent { reason, code }
                if step == Step::Accepted =>
            {
                self.retry_write_back(job, code, reason, now, accepted)
                    .await
            }
            Stop::Retry { reason, code } => {
                let attempts = job.attempts.saturating_add(1);
                let age = (now - job.attempts_since()).to_std().unwrap_or_default();
                // An AcceptOrder may have been sent (its intent is stored) and may have run the
                // module create: the job is never given up on there, only looked up again (an
                // Order is never marked failed after WHMCS may have accepted).
                if step == Step::AcceptUnknown || self.config.retry.may_retry(attempts, age) {
                    // The backoff grows for a job that keeps failing where it stands. One
                    // that got further in this run before a transient error (a fault at
                    // another step) waits the first delay again: with a few calls per step,
                    // unrelated faults in a row would otherwise hold an Order for minutes.
                    // `attempts` still counts every run towards the limit.
                    //
                    // A lost answer (an unknown outcome) is not WHMCS failing where the job
                    // stands: the call went out, and the next run looks it up. Any repeat is
                    // paced by the settle rule (never before the last send + its timeout +
                    // `WHMCS_SETTLE`), so the first few in a row are looked up at once: a
                    // call that committed before its answer was lost is found without a wait,
                    // and one that did not starts waiting for its settle point sooner. A
                    // longer run of them backs off as usual.
                    let lost = code == StopReason::WhmcsUnknownOutcome;
                    let exponent = if step != job.step {
                        0
                    } else if lost {
                        job.attempts
                            .saturating_sub(UNKNOWN_OUTCOMES_LOOKED_UP_AT_ONCE)
                    } else {
                        job.attempts
                    };
                    let delay = if lost && exponent == 0 {
                        Duration::ZERO
                    } else {
                        self.config
                            .retry
                            .delay(exponent, jitter(&job.order_id, job.attempts))
                    };
                    let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
                    let reason = sanitize_reason(&reason);
                    tracing::info!(order_id = %job.order_id, step = %step, attempt = attempts, %reason, "retrying");
                    self.reschedule(
                        job,
                        step,
                        code,
                        Reschedule::at(at, Some(reason.clone()), true),
                    )
                    .await
                    .map(|()| JobOutcome::Retrying { at, reason })
                } else {
                    let reason = format!("gave up after {attempts} attempts: {reason}");
                    self.fail(job, step, code, &reason, true).await
                }
            }
            Stop::Permanent { reason, code } => self.fail(job, step, code, &reason, true).await,
        };
        self.settled(job, settled)
    }

    /// Ends the job as refused (nothing written to the Order or WHMCS) and raises the alert:
    /// `approval_withdrawn` (naming a WHMCS order already added) when `withdrawn` is set.
    async fn refuse(
        &self,
        job: &Job,
        code: StopReason,
        withdrawn: Option<Option<u64>>,
    ) -> Result<JobOutcome, SettleError> {
        let mut record =
            NewAuditRecord::new(Actor::WORKER, Action::ORDER_REFUSED, Outcome::Refused)
                .detail(DetailKey::ReasonCode, code.as_str());
        if let Some(Some(id)) = withdrawn {
            record = record.and_then(|r| r.detail(DetailKey::WhmcsOrderId, id.to_string()));
        }
        let end = JobEnd {
            state: JobState::Refused,
            error: Some(code.as_str().to_owned()),
            dead_letter: None,
        };
        self.finish(job, end, vec![record]).await?;
        tracing::warn!(order_id = %job.order_id, %code, "job refused");
        match withdrawn {
            Some(whmcs_order_id) => {
                self.ports
                    .alerts
                    .approval_withdrawn(&job.order_id, &job.customer_number, whmcs_order_id)
                    .await;
            }
            None => {
                self.ports
                    .alerts
                    .order_refused(&job.order_id, &job.customer_number)
                    .await;
            }
        }
        Ok(JobOutcome::Refused { code })
    }

    /// Puts the job back to pending with a `step_failed` record of `code`.
    async fn reschedule(
        &self,
        job: &Job,
        step: Step,
        code: StopReason,
        retry: Reschedule,
    ) -> Result<(), SettleError> {
        self.reschedule_carrying(job, step, code, retry, None).await
    }

    /// [`Self::reschedule`], with a record of this run's earlier work before the
    /// `step_failed` one.
    async fn reschedule_carrying(
        &self,
        job: &Job,
        step: Step,
        code: StopReason,
        retry: Reschedule,
        carried: Option<NewAuditRecord>,
    ) -> Result<(), SettleError> {
        metrics::counter!(crate::metrics::RETRIES_TOTAL, "error" => code.as_str()).increment(1);
        let outcome = if matches!(
            code,
            StopReason::WhmcsUnknownOutcome | StopReason::OutcomeSettling
        ) {
            Outcome::Unknown
        } else {
            Outcome::Retry
        };
        let attempt = job.attempts.saturating_add(1);
        let record = NewAuditRecord::new(Actor::WORKER, Action::STEP_FAILED, outcome)
            .detail(DetailKey::Step, step.as_str())
            .and_then(|r| r.detail(DetailKey::ErrorCode, code.as_str()))
            .and_then(|r| r.detail(DetailKey::Attempt, attempt.to_string()));
        let audit = self.records(job, carried.map(Ok).into_iter().chain([record]).collect())?;
        crate::slot::outside_slot(self.ports.store.reschedule(
            &job.order_id,
            token(job),
            retry,
            audit,
            self.ports.clock.now(),
        ))
        .await?;
        Ok(())
    }

    /// The write-back after WHMCS accepted failed: retried with backoff until it succeeds,
    /// whatever the error; `writeback_stuck` is raised once when it has been failing for
    /// `writeback_stuck_after`.
    async fn retry_write_back(
        &self,
        job: &Job,
        code: StopReason,
        reason: String,
        now: DateTime<Utc>,
        accepted: Option<NewAuditRecord>,
    ) -> Result<JobOutcome, SettleError> {
        let delay = self
            .config
            .retry
            .delay(job.attempts, jitter(&job.order_id, job.attempts));
        let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
        let reason = sanitize_reason(&reason);
        let failing_for = (now - job.writeback_since.unwrap_or(now))
            .to_std()
            .unwrap_or_default();
        let stuck =
            job.stuck_alerted_at.is_none() && failing_for >= self.config.writeback_stuck_after;
        tracing::warn!(order_id = %job.order_id, attempt = job.attempts.saturating_add(1), %reason, "write-back failed; retrying");
        let mut retry = Reschedule::at(at, Some(reason.clone()), true);
        retry.step = Some(Step::Accepted);
        retry.stuck_alerted = stuck;
        self.reschedule_carrying(job, Step::Accepted, code, retry, accepted)
            .await?;
        if stuck {
            tracing::error!(order_id = %job.order_id, "write-back stuck");
            self.ports
                .alerts
                .writeback_stuck(
                    &job.order_id,
                    &job.customer_number,
                    job.whmcs_order_id.as_deref().and_then(parse_id),
                )
                .await;
        }
        Ok(JobOutcome::Retrying { at, reason })
    }

    /// Ends the job failed: the Order marked failed with the reason (when `mark_order`), the
    /// end stored with its dead letter and audit records, then the alerts.
    async fn fail(
        &self,
        job: &Job,
        step: Step,
        code: StopReason,
        reason: &str,
        mark_order: bool,
    ) -> Result<JobOutcome, SettleError> {
        let reason = sanitize_reason(reason);
        tracing::error!(order_id = %job.order_id, step = %step, %code, %reason, "order failed");
        let records = vec![
            NewAuditRecord::new(Actor::WORKER, Action::ORDER_FAILED, Outcome::Failed)
                .detail(DetailKey::ErrorCode, code.as_str())
                .and_then(|r| r.detail(DetailKey::Step, step.as_str())),
            NewAuditRecord::new(Actor::WORKER, Action::DEAD_LETTERED, Outcome::Failed)
                .detail(DetailKey::ErrorCode, code.as_str()),
        ];
        let audit = self.records(job, records)?;
        // The fence first: a claim that was taken over writes nothing to the Order. The PATCH
        // goes out while the renewed lease is known to hold (as `LeaseHealth` counts it), or
        // not at all: sent late, it could mark failed an Order the lease's next holder
        // provisioned.
        // `mark_order` is false when the Order already says failed (`earlier_failure`): its
        // `Provisioning_Error__c` holds the first run's reason, which this one does not know.
        if mark_order {
            let renewed_at = tokio::time::Instant::now();
            self.ports
                .store
                .renew_lease(
                    &job.order_id,
                    token(job),
                    self.config.lease,
                    self.ports.clock.now(),
                )
                .await?;
            let update = OrderUpdate {
                status: Some(self.config.statuses.failed.clone()),
                provisioning_error: Some(reason.clone()),
                deadline: Some(renewed_at + LeaseHealth::usable(self.config.lease)),
                ..OrderUpdate::default()
            };
            if let Err(e) = self.ports.orders.update_order(&job.order_id, &update).await {
                tracing::warn!(order_id = %job.order_id, error = %e, "could not mark the Order failed in Salesforce");
            }
        }
        let end = JobEnd {
            state: JobState::Failed,
            error: Some(reason.clone()),
            dead_letter: Some(NewDeadLetter {
                topic: None,
                event_id: job.event_id.clone(),
                replay_id: None,
                order_id: Some(job.order_id.clone()),
                reason: reason.clone(),
                payload: None,
                attempts: job.attempts.saturating_add(1),
            }),
        };
        self.store_finish(job, end, audit).await?;
        if code == StopReason::IntegrityFailure {
            self.ports.alerts.integrity_failure(&job.order_id).await;
        }
        self.ports
            .alerts
            .provisioning_failed(&job.order_id, &job.customer_number)
            .await;
        Ok(JobOutcome::Failed { reason })
    }
}

/// Why settling a job did not go through.
#[derive(Debug)]
enum SettleError {
    /// The store refused or failed (including its audit records: they share the transaction).
    Store(provisioner_store::Error),
    /// An audit record could not be built.
    Audit(audit::Error),
}

impl From<provisioner_store::Error> for SettleError {
    fn from(e: provisioner_store::Error) -> Self {
        SettleError::Store(e)
    }
}

/// How long a lease is renewed before it runs out.
pub(crate) fn renew_every(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(100))
}
