//! One engine instance's view of the world: its clock (skewed), the gate every port call of the
//! instance passes (a crashed instance's calls never return, a paused one's wait), and the store
//! and audit decorators that run the real store on the database's ("true") clock and complete
//! each call before the simulation's runtime may move virtual time again.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use audit::{Actor, AuditLog, NewAuditRecord, SealedRecord};
use chrono::{DateTime, Utc};
use provisioner_store::{
    Checkpoint, DeadLetter, DeadLetterState, InboxEvent, IngestOutcome, Job, JobCounts, JobEnd,
    JobFilter, JobState, Leadership, NewDeadLetter, NewJob, Reopen, Reschedule, SqlStore, Step,
    StepUpdate, Store,
};
use tokio::time::Instant;

use crate::world::World;

/// One engine process: its name, clock skew, and what the scenario does to it.
#[derive(Debug)]
pub struct Inst {
    /// `i<slot>g<generation>`: a restarted instance is a new process in the same slot.
    pub name: String,
    /// How far this process's wall clock is off the true time.
    pub skew: chrono::Duration,
    dead: AtomicBool,
    paused_until: Mutex<Option<Instant>>,
    renew_failing_until: Mutex<Option<Instant>>,
    /// A crash or pause that strikes at the n-th next gate passage (any await point of the
    /// process's port calls, weighted by passages rather than by time).
    armed: Mutex<Option<(u32, Strike)>>,
}

/// What an armed gate does.
#[derive(Clone, Copy, Debug)]
pub enum Strike {
    /// The process dies there.
    Crash,
    /// The process stops there for this long.
    Pause(Duration),
}

impl Inst {
    pub fn new(slot: usize, generation: u32, skew_ms: i64) -> Self {
        Inst {
            name: format!("i{slot}g{generation}"),
            skew: chrono::Duration::milliseconds(skew_ms),
            dead: AtomicBool::new(false),
            paused_until: Mutex::new(None),
            renew_failing_until: Mutex::new(None),
            armed: Mutex::new(None),
        }
    }

    /// Every port call of this process passes here, before it is sent and before its answer is
    /// seen: a crashed process never gets further (its tasks are gone; whatever survived the
    /// abort, such as a detached renewal task, is stuck here), a paused one waits.
    pub async fn gate(&self) {
        let strike = {
            let mut armed = self
                .armed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match armed.as_mut() {
                Some((n, strike)) if *n <= 1 => {
                    let strike = *strike;
                    *armed = None;
                    Some(strike)
                }
                Some((n, _)) => {
                    *n -= 1;
                    None
                }
                None => None,
            }
        };
        match strike {
            Some(Strike::Crash) => self.kill(),
            Some(Strike::Pause(d)) => self.pause(Instant::now() + d),
            None => {}
        }
        loop {
            if self.dead.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let until = *self
                .paused_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match until {
                Some(until) if Instant::now() < until => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    /// Arms a strike at the `n`-th next gate passage.
    pub fn arm(&self, n: u32, strike: Strike) {
        *self
            .armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((n, strike));
    }

    /// Calls off an armed strike.
    pub fn disarm(&self) {
        *self
            .armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    pub fn pause(&self, until: Instant) {
        *self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
    }

    pub fn is_paused(&self) -> bool {
        self.paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }

    pub fn fail_renewals(&self, until: Instant) {
        *self
            .renew_failing_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
    }

    fn renewals_failing(&self) -> bool {
        self.renew_failing_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }
}

/// An instance's clock: the virtual time, its wall clock off by the instance's skew.
#[derive(Debug)]
pub struct SimClock {
    pub world: Arc<World>,
    pub inst: Arc<Inst>,
}

impl provisioner_core::Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        self.world.now() + self.inst.skew
    }

    fn monotonic(&self) -> Duration {
        self.world.elapsed()
    }
}

/// The store as one instance reaches it.
///
/// Each call passes the instance's gate, may be held (a lock, a slow commit) for longer than a
/// lease, runs on the real [`SqlStore`] with `now` replaced by the true time (the database's
/// clock, which no instance's skew touches), and passes the gate again before the instance sees
/// the answer (a crash there is a crash after the commit).
///
/// The store answers from its own threads (the SQLite writer, sqlx's pool). The call is run on
/// a runtime of its own and this thread *blocks* until it is done: the paused simulation
/// runtime is never idle while the store works, so it never moves virtual time on by itself,
/// and each store call is one step of the simulation.
pub struct SimStore {
    pub world: Arc<World>,
    pub inst: Arc<Inst>,
    pub inner: Arc<SqlStore>,
    pub rt: tokio::runtime::Handle,
    pub lease: Duration,
}

/// Runs `fut` on the store's runtime and blocks this thread until it is done.
pub fn complete<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> T {
    match futures::executor::block_on(rt.spawn(fut)) {
        Ok(out) => out,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl SimStore {
    /// A call that reads through sqlx's pool: run on the store runtime.
    async fn call<T, Fut>(&self, f: impl FnOnce(Arc<SqlStore>, DateTime<Utc>) -> Fut) -> T
    where
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        self.step(false, f).await
    }

    /// A call that only writes: on SQLite it goes to the writer alone (on the two-worker
    /// store runtime, a thread of its own), so this thread waits for it directly (one thread
    /// hop fewer).
    async fn write<T, Fut>(&self, f: impl FnOnce(Arc<SqlStore>, DateTime<Utc>) -> Fut) -> T
    where
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        self.step(true, f).await
    }

    async fn step<T, Fut>(
        &self,
        writes_only: bool,
        f: impl FnOnce(Arc<SqlStore>, DateTime<Utc>) -> Fut,
    ) -> T
    where
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        self.inst.gate().await;
        let world = &self.world;
        let held = if world.chance(world.faults.store_slow) {
            world.count("store call held past a lease");
            self.lease
                .mul_f64(world.rng(|r| rand::Rng::random_range(r, 1.0..2.5)))
        } else {
            Duration::from_millis(world.rng(|r| rand::Rng::random_range(r, 0..=2)))
        };
        tokio::time::sleep(held).await;
        self.inst.gate().await;
        world.count(if writes_only {
            "store writes"
        } else {
            "store reads"
        });
        let fut = f(Arc::clone(&self.inner), world.now());
        let out = if writes_only && self.inner.backend() == provisioner_store::Backend::Sqlite {
            futures::executor::block_on(fut)
        } else {
            complete(&self.rt, fut)
        };
        tokio::time::sleep(Duration::from_millis(
            world.rng(|r| rand::Rng::random_range(r, 0..=2)),
        ))
        .await;
        self.inst.gate().await;
        out
    }
}

impl World {
    /// Counts one occurrence of `what`.
    pub fn count(&self, what: &'static str) {
        self.state().count(what);
    }
}

fn injected(what: &str) -> provisioner_store::Error {
    provisioner_store::Error::Io {
        op: format!("sim: {what}"),
        source: std::io::Error::other("injected"),
    }
}

#[async_trait]
impl Store for SimStore {
    async fn ping(&self) -> provisioner_store::Result<()> {
        self.call(|s, _| async move { s.ping().await }).await
    }

    async fn ingest_event(
        &self,
        event: &InboxEvent,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<IngestOutcome> {
        let event = event.clone();
        self.write(|s, now| async move { s.ingest_event(&event, now).await })
            .await
    }

    async fn ingest_events(
        &self,
        events: &[InboxEvent],
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<Vec<IngestOutcome>> {
        let events = events.to_vec();
        self.write(|s, now| async move { s.ingest_events(&events, now).await })
            .await
    }

    async fn dead_letter(
        &self,
        letter: NewDeadLetter,
        checkpoint: Option<Checkpoint>,
        audit: Vec<NewAuditRecord>,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<String> {
        self.write(|s, now| async move { s.dead_letter(letter, checkpoint, audit, now).await })
            .await
    }

    async fn save_checkpoint(
        &self,
        checkpoint: &Checkpoint,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<()> {
        let checkpoint = checkpoint.clone();
        self.write(|s, now| async move { s.save_checkpoint(&checkpoint, now).await })
            .await
    }

    async fn load_checkpoint(&self, topic: &str) -> provisioner_store::Result<Option<Vec<u8>>> {
        let topic = topic.to_owned();
        self.call(|s, _| async move { s.load_checkpoint(&topic).await })
            .await
    }

    async fn enqueue(
        &self,
        job: NewJob,
        audit: Vec<NewAuditRecord>,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<bool> {
        self.write(|s, now| async move { s.enqueue(job, audit, now).await })
            .await
    }

    async fn claim(
        &self,
        owner: &str,
        _now: DateTime<Utc>,
        lease: Duration,
    ) -> provisioner_store::Result<Option<Job>> {
        let owner = owner.to_owned();
        let claimed = self
            .write(|s, now| async move { s.claim(&owner, now, lease).await })
            .await;
        if let Ok(Some(job)) = &claimed {
            self.world.trace(format!(
                "{} claim {} at {} epoch {}",
                self.inst.name, job.order_id, job.step, job.claim_epoch
            ));
        }
        claimed
    }

    async fn renew_lease(
        &self,
        order_id: &str,
        owner: &str,
        lease: Duration,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<()> {
        if self.inst.renewals_failing() || self.world.chance(self.world.faults.renew_fail) {
            self.inst.gate().await;
            tokio::time::sleep(self.world.latency()).await;
            self.inst.gate().await;
            self.world.count("lease renewal failed");
            return Err(injected("lease renewal failed"));
        }
        let (order_id, owner) = (order_id.to_owned(), owner.to_owned());
        let renewed = self
            .write(|s, now| async move { s.renew_lease(&order_id, &owner, lease, now).await })
            .await;
        if let Err(provisioner_store::Error::LeaseLost { order_id, .. }) = &renewed {
            self.world
                .trace(format!("{} renewal fenced out {order_id}", self.inst.name));
            self.world.count("fenced write refused");
        }
        renewed
    }

    async fn advance(
        &self,
        order_id: &str,
        owner: &str,
        step: Step,
        update: StepUpdate,
        audit: Vec<NewAuditRecord>,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<()> {
        let (id, owner) = (order_id.to_owned(), owner.to_owned());
        let done = self
            .write(|s, now| async move { s.advance(&id, &owner, step, update, audit, now).await })
            .await;
        self.fenced("advance", order_id, &format!("{step}"), &done);
        done
    }

    async fn reschedule(
        &self,
        order_id: &str,
        owner: &str,
        retry: Reschedule,
        audit: Vec<NewAuditRecord>,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<()> {
        let (id, owner) = (order_id.to_owned(), owner.to_owned());
        let what: String = retry
            .error
            .as_deref()
            .unwrap_or("delay")
            .chars()
            .take(60)
            .collect();
        let done = self
            .write(|s, now| async move { s.reschedule(&id, &owner, retry, audit, now).await })
            .await;
        self.fenced("reschedule", order_id, &what, &done);
        done
    }

    async fn finish(
        &self,
        order_id: &str,
        owner: &str,
        end: JobEnd,
        audit: Vec<NewAuditRecord>,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<()> {
        let (id, owner) = (order_id.to_owned(), owner.to_owned());
        let what = format!("{} {}", end.state, end.error.as_deref().unwrap_or(""));
        let done = self
            .write(|s, now| async move { s.finish(&id, &owner, end, audit, now).await })
            .await;
        self.fenced("finish", order_id, &what, &done);
        done
    }

    async fn reopen(
        &self,
        order_id: &str,
        how: Reopen,
        audit: Vec<NewAuditRecord>,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<bool> {
        let id = order_id.to_owned();
        let reopened = self
            .write(|s, now| async move { s.reopen(&id, how, audit, now).await })
            .await;
        if let Ok(true) = reopened {
            self.world
                .trace(format!("{} reopened {order_id}", self.inst.name));
        }
        reopened
    }

    async fn reopened_letters(&self, order_id: &str) -> provisioner_store::Result<u64> {
        let id = order_id.to_owned();
        self.call(|s, _| async move { s.reopened_letters(&id).await })
            .await
    }

    async fn job_states(
        &self,
        order_ids: &[String],
    ) -> provisioner_store::Result<Vec<(String, JobState)>> {
        let ids = order_ids.to_vec();
        self.call(|s, _| async move { s.job_states(&ids).await })
            .await
    }

    async fn release(
        &self,
        order_id: &str,
        owner: &str,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<()> {
        let (id, owner) = (order_id.to_owned(), owner.to_owned());
        let done = self
            .write(|s, now| async move { s.release(&id, &owner, now).await })
            .await;
        self.fenced("release", order_id, "", &done);
        done
    }

    async fn take_over_leases(&self, _now: DateTime<Utc>) -> provisioner_store::Result<u64> {
        self.write(|s, now| async move { s.take_over_leases(now).await })
            .await
    }

    async fn job(&self, order_id: &str) -> provisioner_store::Result<Option<Job>> {
        let id = order_id.to_owned();
        self.call(|s, _| async move { s.job(&id).await }).await
    }

    async fn jobs(&self, after_seq: i64, limit: u32) -> provisioner_store::Result<Vec<Job>> {
        self.call(|s, _| async move { s.jobs(after_seq, limit).await })
            .await
    }

    async fn job_counts(&self) -> provisioner_store::Result<JobCounts> {
        self.call(|s, _| async move { s.job_counts().await }).await
    }

    async fn list_jobs(&self, filter: &JobFilter) -> provisioner_store::Result<Vec<Job>> {
        let filter = filter.clone();
        self.call(|s, _| async move { s.list_jobs(&filter).await })
            .await
    }

    async fn audit_for_order(
        &self,
        order_id: &str,
        limit: u32,
    ) -> provisioner_store::Result<Vec<SealedRecord>> {
        let id = order_id.to_owned();
        self.call(|s, _| async move { s.audit_for_order(&id, limit).await })
            .await
    }

    async fn dead_letters(
        &self,
        state: Option<DeadLetterState>,
        limit: u32,
    ) -> provisioner_store::Result<Vec<DeadLetter>> {
        self.call(|s, _| async move { s.dead_letters(state, limit).await })
            .await
    }

    async fn dead_letter_by_id(&self, id: &str) -> provisioner_store::Result<Option<DeadLetter>> {
        let id = id.to_owned();
        self.call(|s, _| async move { s.dead_letter_by_id(&id).await })
            .await
    }

    async fn dead_letter_payload(
        &self,
        id: &str,
    ) -> provisioner_store::Result<Option<field_crypto::Plaintext>> {
        let id = id.to_owned();
        self.call(|s, _| async move { s.dead_letter_payload(&id).await })
            .await
    }

    async fn set_dead_letter_state(
        &self,
        id: &str,
        state: DeadLetterState,
        audit: Vec<NewAuditRecord>,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<()> {
        let id = id.to_owned();
        self.call(|s, now| async move { s.set_dead_letter_state(&id, state, audit, now).await })
            .await
    }

    async fn rotate_keys_if_older_than(
        &self,
        max_age_days: u32,
        actor: Actor,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<Option<field_crypto::KeyId>> {
        self.call(
            |s, now| async move { s.rotate_keys_if_older_than(max_age_days, actor, now).await },
        )
        .await
    }

    async fn reencrypt_all(&self) -> provisioner_store::Result<u64> {
        self.call(|s, _| async move { s.reencrypt_all().await })
            .await
    }

    async fn try_lead(&self, name: &str) -> provisioner_store::Result<Option<Leadership>> {
        let name = name.to_owned();
        self.call(|s, _| async move { s.try_lead(&name).await })
            .await
    }

    async fn queue_alert(
        &self,
        alert: provisioner_store::NewAlert,
        max_waiting: u64,
        audit: Vec<NewAuditRecord>,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<u64> {
        self.write(|s, now| async move { s.queue_alert(alert, max_waiting, audit, now).await })
            .await
    }

    async fn take_alerts(
        &self,
        limit: u32,
        hold: Duration,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<Vec<provisioner_store::QueuedAlert>> {
        self.write(|s, now| async move { s.take_alerts(limit, hold, now).await })
            .await
    }

    async fn remove_alert(&self, id: i64) -> provisioner_store::Result<()> {
        self.call(|s, _| async move { s.remove_alert(id).await })
            .await
    }

    async fn retry_alert(
        &self,
        id: i64,
        after: Duration,
        error: &str,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<()> {
        let error = error.to_owned();
        self.write(|s, now| async move { s.retry_alert(id, after, &error, now).await })
            .await
    }

    async fn waiting_alerts(&self) -> provisioner_store::Result<u64> {
        self.call(|s, _| async move { s.waiting_alerts().await })
            .await
    }

    async fn take_rate_slot(
        &self,
        scope: &str,
        key: &str,
        rate: provisioner_store::SharedRate,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<Option<Duration>> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.write(|s, now| async move { s.take_rate_slot(&scope, &key, rate, now).await })
            .await
    }

    async fn begin_order_request(
        &self,
        key: &provisioner_store::OrderRequestKey,
        fingerprint: &str,
        hold: Duration,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<provisioner_store::OrderRequestStart> {
        let (key, fingerprint) = (key.clone(), fingerprint.to_owned());
        self.write(
            |s, now| async move { s.begin_order_request(&key, &fingerprint, hold, now).await },
        )
        .await
    }

    async fn answer_order_request(
        &self,
        key: &provisioner_store::OrderRequestKey,
        answer: provisioner_store::OrderRequestAnswer,
        audit: Vec<NewAuditRecord>,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<()> {
        let key = key.clone();
        self.write(|s, now| async move { s.answer_order_request(&key, answer, audit, now).await })
            .await
    }

    async fn release_order_request(
        &self,
        key: &provisioner_store::OrderRequestKey,
        audit: Vec<NewAuditRecord>,
        _now: DateTime<Utc>,
    ) -> provisioner_store::Result<()> {
        let key = key.clone();
        self.write(|s, now| async move { s.release_order_request(&key, audit, now).await })
            .await
    }

    async fn order_request_customer(
        &self,
        order_id: &str,
    ) -> provisioner_store::Result<Option<(String, DateTime<Utc>)>> {
        let order_id = order_id.to_owned();
        self.call(|s, _| async move { s.order_request_customer(&order_id).await })
            .await
    }
}

impl SimStore {
    /// Traces a fenced write and counts the ones the fence refused.
    fn fenced(&self, op: &str, order_id: &str, what: &str, done: &provisioner_store::Result<()>) {
        let result = match done {
            Ok(()) => "ok".to_owned(),
            Err(provisioner_store::Error::LeaseLost { .. }) => {
                self.world.count("fenced write refused");
                "FENCED".to_owned()
            }
            Err(e) => format!("error {e}"),
        };
        self.world.trace(format!(
            "{} {op} {order_id} {what} -> {result}",
            self.inst.name
        ));
    }
}

/// The audit chain as one instance reaches it (the same store, the same rules).
pub struct SimAudit(pub Arc<SimStore>);

#[async_trait]
impl AuditLog for SimAudit {
    async fn append(&self, record: NewAuditRecord) -> audit::Result<SealedRecord> {
        self.0
            .write(|s, _| async move { s.append(record).await })
            .await
    }

    async fn read_range(&self, from_seq: u64, limit: usize) -> audit::Result<Vec<SealedRecord>> {
        self.0
            .call(|s, _| async move { s.read_range(from_seq, limit).await })
            .await
    }

    async fn head(&self) -> audit::Result<audit::ChainHead> {
        self.0.call(|s, _| async move { s.head().await }).await
    }

    async fn anchor(&self) -> audit::Result<audit::Anchor> {
        self.0.call(|s, _| async move { s.anchor().await }).await
    }

    async fn purge(
        &self,
        older_than: DateTime<Utc>,
        actor: Actor,
    ) -> audit::Result<audit::PurgeReport> {
        self.0
            .call(|s, _| async move { s.purge(older_than, actor).await })
            .await
    }
}

/// Alerts: counted, nothing sent.
pub struct SimAlerts(pub Arc<World>);

#[async_trait]
impl provisioner_core::Alerts for SimAlerts {
    async fn integrity_failure(&self, _order_id: &str) {
        self.0.count("alert integrity_failure");
    }

    async fn order_refused(&self, _order_id: &str, _customer_number: &str) {
        self.0.count("alert order_refused");
    }

    async fn provisioning_failed(&self, _order_id: &str, _customer_number: &str) {
        self.0.count("alert provisioning_failed");
    }

    async fn approval_withdrawn(
        &self,
        _order_id: &str,
        _customer_number: &str,
        _whmcs_order_id: Option<u64>,
    ) {
        self.0.count("alert approval_withdrawn");
    }

    async fn writeback_stuck(
        &self,
        _order_id: &str,
        _customer_number: &str,
        _whmcs_order_id: Option<u64>,
    ) {
        self.0.count("alert writeback_stuck");
    }

    async fn ref_field_not_stored(&self, _product_id: u64, _field_id: u64) {
        self.0.count("alert ref_field_not_stored");
    }
}
