//! The running engine: workers under a concurrency bound, the reconcile sweep, key rotation,
//! graceful shutdown.
//!
//! Every `select!` here is `biased`: the same inputs make the same choices, which the
//! deterministic simulation (`tests/sim`) relies on.

use std::sync::Arc;
use std::time::Duration;

use audit::{Action, Actor, NewAuditRecord, Outcome};
use provisioner_store::{JobSource, JobState, NewJob, Reopen};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::EngineConfig;
use crate::intake::{self, IntakeItem, IntakeResult};
use crate::job::{JobOutcome, JobRunner, LeaseHealth, Ports, renew_every};

/// The engine: cheap to clone, all state behind `Arc`s.
#[derive(Clone)]
pub struct Engine {
    ports: Ports,
    config: Arc<EngineConfig>,
    rate: Option<crate::job::ProvisionLimit>,
    notify: Arc<Notify>,
    owner: String,
    shutdown_tx: Arc<watch::Sender<bool>>,
    outcomes: Option<tokio::sync::mpsc::UnboundedSender<(String, JobOutcome)>>,
}

/// A started engine; [`EngineHandle::shutdown`] stops it gracefully.
pub struct EngineHandle {
    shutdown_tx: Arc<watch::Sender<bool>>,
    tasks: JoinSet<()>,
}

impl Engine {
    /// An engine over `ports`, with an optional per-customer provisioning rate. Outside this
    /// crate, engines are made by [`crate::EngineBuilder`].
    pub(crate) fn new(
        ports: Ports,
        config: EngineConfig,
        rate: Option<crate::job::ProvisionLimit>,
    ) -> Self {
        let owner = format!("{}-{:08x}", config.instance, rand::random::<u32>());
        let (shutdown_tx, _) = watch::channel(false);
        Engine {
            ports,
            config: Arc::new(config),
            rate,
            notify: Arc::new(Notify::new()),
            owner,
            shutdown_tx: Arc::new(shutdown_tx),
            outcomes: None,
        }
    }

    /// Sends every job outcome to `tx` (progress display, tests).
    pub(crate) fn with_outcomes(
        mut self,
        tx: tokio::sync::mpsc::UnboundedSender<(String, JobOutcome)>,
    ) -> Self {
        self.outcomes = Some(tx);
        self
    }

    /// The store port (for the subscriber and operator commands).
    pub fn store(&self) -> &std::sync::Arc<dyn provisioner_store::Store> {
        &self.ports.store
    }

    /// Starts the subscriber as one of this engine's tasks (stopped by the handle's shutdown).
    pub fn spawn_subscriber(
        &self,
        handle: &mut EngineHandle,
        pubsub: Arc<dyn sf_pubsub::PubSubApi>,
        config: crate::subscriber::SubscriberConfig,
    ) -> Arc<crate::subscriber::SubscriberStatus> {
        let status = Arc::new(crate::subscriber::SubscriberStatus::default());
        handle.tasks.spawn(crate::subscriber::run_subscriber(
            self.clone(),
            pubsub,
            config,
            Arc::clone(&status),
            self.shutdown_tx.subscribe(),
        ));
        status
    }

    /// The lease owner name of this engine.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Stores a batch of subscription items (what one Pub/Sub fetch delivered) in their
    /// order, runs of valid events in one transaction each, and wakes the workers when jobs
    /// were created. Results are in the order of `items`. On an error, retry the whole batch:
    /// what was stored comes back as duplicates.
    pub async fn intake_batch(
        &self,
        items: Vec<IntakeItem>,
    ) -> provisioner_store::Result<Vec<IntakeResult>> {
        let results = intake::handle_batch(&self.ports, &self.config.topic, items).await?;
        let mut enqueued = false;
        for result in &results {
            let label = match result {
                IntakeResult::Enqueued => "enqueued",
                IntakeResult::Reopened => "reopened",
                IntakeResult::Duplicate => "duplicate",
                IntakeResult::DeadLettered(_) => "dead_lettered",
                IntakeResult::Checkpointed => "keepalive",
            };
            metrics::counter!(crate::metrics::EVENTS_TOTAL, "outcome" => label).increment(1);
            if matches!(result, IntakeResult::DeadLettered(_)) {
                metrics::counter!(crate::metrics::DEAD_LETTERS_TOTAL, "kind" => "event")
                    .increment(1);
            }
            enqueued |= matches!(result, IntakeResult::Enqueued | IntakeResult::Reopened);
        }
        if results
            .iter()
            .any(|r| !matches!(r, IntakeResult::Checkpointed))
        {
            metrics::gauge!(crate::metrics::LAST_EVENT_TIMESTAMP)
                .set(self.ports.clock.now().timestamp() as f64);
        }
        if enqueued {
            self.notify.notify_one();
        }
        Ok(results)
    }

    /// Whether the Order of a refused or failed job the sweep found listed is still approved
    /// or in the provisioning status, read now. The listing predates the job states: a job
    /// that ended in between wrote its end to the Order first (a failed job PATCHes the failed
    /// status before it stores its end), so a listing taken before that PATCH would reopen a
    /// failed Order's job, which then refuses it (`approval_withdrawn` past its checks, with a
    /// false alert). A refused or failed job with its Order still approved is rare (a retry, a
    /// restore), so the fetch costs little. An Order that cannot be read now waits for the
    /// next sweep.
    async fn still_open_to_reopen(&self, order_id: &str) -> bool {
        match self.ports.orders.fetch_order(order_id).await {
            Ok(order) => {
                let statuses = &self.config.statuses;
                let status = order.status.as_deref();
                status == Some(statuses.approved.as_str())
                    || (status.is_some() && status == statuses.provisioning.as_deref())
            }
            Err(e) => {
                tracing::warn!(order_id = %order_id, error = %e, "reconcile could not read an Order again before reopening its job; the next sweep tries again");
                false
            }
        }
    }

    /// One reconcile sweep over every approved Order older than the configured age: one with
    /// no job is enqueued, one whose job was refused or failed is reopened with the Order's
    /// own data; Orders whose job is live or done are passed over. Orders in the provisioning
    /// status (when one is configured) are treated alike: their work was lost (see the
    /// body). Returns how many jobs were enqueued or reopened.
    pub async fn reconcile_once(&self) -> crate::Result<usize> {
        let approved = self
            .ports
            .orders
            .list_approved_orders(self.config.reconcile_min_age)
            .await?;
        // An Order in the provisioning status is this provisioner's own work under way. With
        // no job for it, or a refused or failed one, that work was lost (a backup restored to
        // before the job, or to before the job was reopened, past the event's replay):
        // nothing else would ever take it up again. The job resumes it as such work (looked
        // up in WHMCS before any AddOrder).
        // The approved Orders are swept whatever becomes of this second query.
        let provisioning = match self.config.statuses.provisioning.as_deref() {
            Some(status) => self
                .ports
                .orders
                .list_orders_in_status(status, self.config.reconcile_min_age)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "reconcile could not list the Orders in the provisioning status; the approved ones are swept alone");
                    Vec::new()
                }),
            None => Vec::new(),
        };
        let orders: Vec<&sf_rest::ApprovedOrder> = approved.iter().chain(&provisioning).collect();
        let ids: Vec<String> = orders.iter().map(|o| o.id.to_18()).collect();
        let states: std::collections::HashMap<String, JobState> = self
            .ports
            .store
            .job_states(&ids)
            .await
            .inspect_err(crate::metrics::store_failed)?
            .into_iter()
            .collect();
        let mut touched = 0;
        for (order, order_id) in orders.iter().zip(ids) {
            let state = states.get(&order_id).copied();
            if !matches!(state, None | Some(JobState::Refused | JobState::Failed)) {
                continue;
            }
            let Some(customer) = order
                .customer_number
                .as_deref()
                .map(str::trim)
                .filter(|c| !c.is_empty())
            else {
                tracing::warn!(order_id = %order_id, "approved Order without Customer_Number__c skipped by reconcile");
                continue;
            };
            if state.is_some() && !self.still_open_to_reopen(&order_id).await {
                continue;
            }
            let action = if state.is_some() {
                Action::JOB_REOPENED
            } else {
                Action::RECONCILE_ENQUEUED
            };
            let record = NewAuditRecord::new(Actor::RECONCILER, action, Outcome::Success)
                .order_id(order_id.as_str())
                .inspect_err(|_| crate::metrics::audit_failed())?;
            let done = if state.is_some() {
                let how = Reopen {
                    by: JobSource::Reconcile,
                    customer_number: Some(customer.to_owned()),
                    account_id: order.account_id.clone(),
                    event_id: None,
                };
                self.ports
                    .store
                    .reopen(&order_id, how, vec![record], self.ports.clock.now())
                    .await
            } else {
                let job = NewJob {
                    order_id: order_id.clone(),
                    customer_number: customer.to_owned(),
                    account_id: order.account_id.clone(),
                    event_id: None,
                    source: JobSource::Reconcile,
                };
                self.ports
                    .store
                    .enqueue(job, vec![record], self.ports.clock.now())
                    .await
            }
            .inspect_err(crate::metrics::store_failed)?;
            if done {
                touched += 1;
                metrics::counter!(crate::metrics::RECONCILE_ENQUEUED_TOTAL).increment(1);
                tracing::info!(order_id = %order_id, reopened = state.is_some(), "reconcile enqueued an approved Order");
            }
        }
        if touched > 0 {
            self.notify.notify_waiters();
        }
        Ok(touched)
    }

    /// Rotates the data key when it is older than `ENCRYPTION_KEY_ROTATION_DAYS`.
    pub async fn rotate_keys_once(&self) -> crate::Result<bool> {
        // The store records `key_rotated` in the rotation's own transaction.
        let rotated = self
            .ports
            .store
            .rotate_keys_if_older_than(
                self.config.key_rotation_days,
                Actor::KEY_MANAGER,
                self.ports.clock.now(),
            )
            .await
            .inspect_err(crate::metrics::store_failed)?;
        if let Some(id) = rotated {
            tracing::info!(key_id = id.get(), "data key rotated");
        }
        Ok(rotated.is_some())
    }

    /// Starts the workers, the reconcile sweep and key rotation.
    pub fn start(&self) -> EngineHandle {
        // A restarted engine (after a shutdown) takes work again.
        self.shutdown_tx.send_replace(false);
        let mut tasks = JoinSet::new();
        let dispatch_shutdown = self.shutdown_tx.subscribe();
        tasks.spawn(self.clone().dispatch(dispatch_shutdown));
        let me = self.clone();
        // Subscribe before spawning: a receiver made after shutdown was sent would never see
        // it change.
        let mut shutdown = me.shutdown_tx.subscribe();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(me.config.reconcile_interval);
            while !*shutdown.borrow() {
                tokio::select! {
                    biased;
                    _ = tick.tick() => {
                        if let Err(e) = me.reconcile_once().await {
                            tracing::warn!(error = %e, "reconcile sweep failed");
                        }
                    }
                    _ = shutdown.changed() => break,
                }
            }
        });
        let me = self.clone();
        let mut shutdown = me.shutdown_tx.subscribe();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            while !*shutdown.borrow() {
                tokio::select! {
                    biased;
                    _ = tick.tick() => {
                        if let Err(e) = me.rotate_keys_once().await {
                            tracing::warn!(error = %e, "key rotation failed");
                        }
                    }
                    _ = shutdown.changed() => break,
                }
            }
        });
        EngineHandle {
            shutdown_tx: Arc::clone(&self.shutdown_tx),
            tasks,
        }
    }

    /// Claims the next job; with a rate held in the store, the claim also takes the job's
    /// slot when it is about to start (one statement on PostgreSQL).
    async fn claim(
        &self,
    ) -> Result<
        Option<(provisioner_store::Job, provisioner_store::RateTake)>,
        provisioner_store::Error,
    > {
        let (store, now, lease) = (&self.ports.store, self.ports.clock.now(), self.config.lease);
        match &self.rate {
            Some(crate::job::ProvisionLimit::Shared(rate)) => {
                store
                    .claim_rated(
                        &self.owner,
                        now,
                        lease,
                        crate::job::PROVISION_RATE_SCOPE,
                        *rate,
                    )
                    .await
            }
            _ => Ok(store
                .claim(&self.owner, now, lease)
                .await?
                .map(|job| (job, provisioner_store::RateTake::Undecided))),
        }
    }

    async fn dispatch(self, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        // Jobs claimed at once: those at work (a permit each) and those waiting between two
        // attempts of a call with their permit lent out (`crate::slot`).
        let claims = Arc::new(Semaphore::new(
            self.config.concurrency.max(1) * crate::slot::CLAIMED_PER_SLOT,
        ));
        // The jobs this process runs now, by Order Id.
        let running_here: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
        let mut running = JoinSet::new();
        let runner = Arc::new(JobRunner::new(
            self.ports.clone(),
            Arc::clone(&self.config),
            self.owner.clone(),
            self.rate.clone(),
            self.shutdown_tx.subscribe(),
        ));
        loop {
            if *shutdown.borrow() {
                break;
            }
            let (claim, permit) = tokio::select! {
                biased;
                p = async {
                    let claim = Arc::clone(&claims).acquire_owned().await?;
                    let permit = Arc::clone(&permits).acquire_owned().await?;
                    Ok::<_, tokio::sync::AcquireError>((claim, permit))
                } => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = shutdown.changed() => break,
            };
            while running.try_join_next().is_some() {}
            let claimed_at = self.ports.clock.monotonic();
            match self.claim().await {
                Ok(Some((job, rate))) => {
                    // One process never runs two claims of one job: an expired claim of a job
                    // still running here (its renewals failed) is given straight back; the run
                    // here is fenced out by the new claim's token and stops.
                    let order_id = job.order_id.clone();
                    let fresh = running_here
                        .lock()
                        .map(|mut set| set.insert(order_id.clone()))
                        .unwrap_or(false);
                    if !fresh {
                        tracing::warn!(order_id = %order_id, "claimed a job still running here; given back");
                        if let Err(e) = self
                            .ports
                            .store
                            .release(
                                &order_id,
                                job.lease_owner.as_deref().unwrap_or_default(),
                                self.ports.clock.now(),
                            )
                            .await
                        {
                            tracing::warn!(order_id = %order_id, error = %e, "could not give the job back");
                        }
                        drop((claim, permit));
                        continue;
                    }
                    let runner = Arc::clone(&runner);
                    let runner_clock = Arc::clone(&self.ports.clock);
                    let store = Arc::clone(&self.ports.store);
                    let lease = self.config.lease;
                    let notify = Arc::clone(&self.notify);
                    let outcomes = self.outcomes.clone();
                    let running_here = Arc::clone(&running_here);
                    let slot = crate::slot::Slot::new(Arc::clone(&permits), permit);
                    running.spawn(async move {
                        let _claim = claim;
                        let token = job.lease_owner.clone().unwrap_or_default();
                        let clock = Arc::clone(&runner_clock);
                        let health = Arc::new(LeaseHealth::new(lease, Arc::clone(&clock), claimed_at));
                        let renew = tokio::spawn({
                            let order_id = order_id.clone();
                            let health = Arc::clone(&health);
                            async move {
                                let mut tick = tokio::time::interval(renew_every(lease));
                                tick.tick().await;
                                loop {
                                    tick.tick().await;
                                    let sent = clock.monotonic();
                                    match store
                                        .renew_lease(&order_id, &token, lease, clock.now())
                                        .await
                                    {
                                        Ok(()) => health.renewed(sent),
                                        Err(provisioner_store::Error::LeaseLost { .. }) => {
                                            health.lost();
                                            break;
                                        }
                                        // Tried again at the next tick; the run stops before
                                        // its next external call if none goes through in time.
                                        Err(e) => {
                                            tracing::warn!(order_id = %order_id, error = %e, "lease renewal failed");
                                        }
                                    }
                                }
                            }
                        });
                        let outcome = slot.scope(runner.run_claimed(job, &health, rate)).await;
                        renew.abort();
                        if let Ok(mut set) = running_here.lock() {
                            set.remove(&order_id);
                        }
                        crate::metrics::job_outcome(&outcome);
                        tracing::debug!(order_id = %order_id, ?outcome, "job settled");
                        if let Some(tx) = outcomes {
                            let _ = tx.send((order_id, outcome));
                        }
                        // A finished job may unblock its customer's next one.
                        notify.notify_one();
                    });
                }
                Ok(None) => {
                    drop((claim, permit));
                    tokio::select! {
                        biased;
                        _ = self.notify.notified() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.changed() => break,
                    }
                }
                Err(e) => {
                    drop((claim, permit));
                    tracing::warn!(error = %e, "claiming a job failed");
                    tokio::select! {
                        biased;
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.changed() => break,
                    }
                }
            }
        }
        // Shutdown: in-flight jobs stop at their next step boundary and release themselves.
        let grace = self.config.shutdown_grace;
        if tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("shutdown grace ran out; remaining jobs are left to their leases");
            running.abort_all();
        }
    }
}

impl EngineHandle {
    /// Stops taking work, lets in-flight steps finish (bounded by the configured grace) and
    /// waits for every task.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}
