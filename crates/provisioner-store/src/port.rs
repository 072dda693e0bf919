//! The [`Store`] port implemented by [`SqlStore`]: each method is the operation of its
//! concern's module (`jobs`, `intake`, `dead_letters`, `keys`).

use std::time::Duration;

use async_trait::async_trait;
use audit::NewAuditRecord;
use chrono::{DateTime, Utc};

use crate::Store;
use crate::error::{Error, Result};
use crate::sql::{Leadership, SqlStore};
use crate::types::{
    Checkpoint, DeadLetter, DeadLetterState, InboxEvent, IngestOutcome, Job, JobCounts, JobEnd,
    JobFilter, JobState, NewAlert, NewDeadLetter, NewJob, OrderRequestAnswer, OrderRequestKey,
    OrderRequestStart, QueuedAlert, RateTake, Reopen, Reschedule, SharedRate, Step, StepUpdate,
};

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<()> {
        self.read("ping", "SELECT 1", &[]).await.map(|_| ())
    }

    async fn ingest_event(&self, event: &InboxEvent, now: DateTime<Utc>) -> Result<IngestOutcome> {
        let mut outcomes = self.ingest(std::slice::from_ref(event), now).await?;
        outcomes.pop().ok_or(Error::Corrupt {
            what: "ingest",
            reason: "no outcome for the event".to_owned(),
        })
    }

    async fn ingest_events(
        &self,
        events: &[InboxEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<IngestOutcome>> {
        self.ingest(events, now).await
    }

    async fn dead_letter(
        &self,
        letter: NewDeadLetter,
        checkpoint: Option<Checkpoint>,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<String> {
        self.store_dead_letter(letter, checkpoint, audit, now).await
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint, now: DateTime<Utc>) -> Result<()> {
        self.store_checkpoint(checkpoint, now).await
    }

    async fn load_checkpoint(&self, topic: &str) -> Result<Option<Vec<u8>>> {
        self.read_checkpoint(topic).await
    }

    async fn enqueue(
        &self,
        job: NewJob,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.enqueue_job(job, audit, now).await
    }

    async fn claim(&self, owner: &str, now: DateTime<Utc>, lease: Duration) -> Result<Option<Job>> {
        Ok(self
            .claim_job(owner, now, lease, None)
            .await?
            .map(|(job, _)| job))
    }

    async fn claim_rated(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        scope: &str,
        rate: SharedRate,
    ) -> Result<Option<(Job, RateTake)>> {
        self.claim_job(owner, now, lease, Some((scope, rate))).await
    }

    async fn renew_lease(
        &self,
        order_id: &str,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.renew_job_lease(order_id, owner, lease, now).await
    }

    async fn advance(
        &self,
        order_id: &str,
        owner: &str,
        step: Step,
        update: StepUpdate,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.advance_job(order_id, owner, step, update, audit, now)
            .await
    }

    async fn reschedule(
        &self,
        order_id: &str,
        owner: &str,
        retry: Reschedule,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.reschedule_job(order_id, owner, retry, audit, now)
            .await
    }

    async fn finish(
        &self,
        order_id: &str,
        owner: &str,
        end: JobEnd,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.finish_job(order_id, owner, end, audit, now).await
    }

    async fn reopen(
        &self,
        order_id: &str,
        how: Reopen,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.reopen_job(order_id, how, audit, now).await
    }

    async fn reopened_letters(&self, order_id: &str) -> Result<u64> {
        self.count_reopened_letters(order_id).await
    }

    async fn job_states(&self, order_ids: &[String]) -> Result<Vec<(String, JobState)>> {
        self.read_job_states(order_ids).await
    }

    async fn release(&self, order_id: &str, owner: &str, now: DateTime<Utc>) -> Result<()> {
        self.release_job(order_id, owner, now).await
    }

    async fn take_over_leases(&self, now: DateTime<Utc>) -> Result<u64> {
        self.take_over_job_leases(now).await
    }

    async fn job(&self, order_id: &str) -> Result<Option<Job>> {
        self.read_job(order_id).await
    }

    async fn jobs(&self, after_seq: i64, limit: u32) -> Result<Vec<Job>> {
        self.read_jobs(after_seq, limit).await
    }

    async fn job_counts(&self) -> Result<JobCounts> {
        self.count_jobs().await
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        self.read_filtered_jobs(filter).await
    }

    async fn audit_for_order(
        &self,
        order_id: &str,
        limit: u32,
    ) -> Result<Vec<audit::SealedRecord>> {
        self.read_order_audit(order_id, limit).await
    }

    async fn dead_letters(
        &self,
        state: Option<DeadLetterState>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>> {
        self.list_dead_letters(state, limit).await
    }

    async fn dead_letter_by_id(&self, id: &str) -> Result<Option<DeadLetter>> {
        self.read_dead_letter(id).await
    }

    async fn dead_letter_payload(&self, id: &str) -> Result<Option<field_crypto::Plaintext>> {
        self.read_dead_letter_payload(id).await
    }

    async fn set_dead_letter_state(
        &self,
        id: &str,
        state: DeadLetterState,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.update_dead_letter_state(id, state, audit, now).await
    }

    async fn rotate_keys_if_older_than(
        &self,
        max_age_days: u32,
        actor: audit::Actor,
        now: DateTime<Utc>,
    ) -> Result<Option<field_crypto::KeyId>> {
        self.rotate_keys(max_age_days, actor, now).await
    }

    async fn reencrypt_all(&self) -> Result<u64> {
        self.reencrypt_dead_letters().await
    }

    async fn try_lead(&self, name: &str) -> Result<Option<Leadership>> {
        self.lead(name).await
    }

    async fn queue_alert(
        &self,
        alert: NewAlert,
        max_waiting: u64,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        self.queue_alert_row(alert, max_waiting, audit, now).await
    }

    async fn take_alerts(
        &self,
        limit: u32,
        hold: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<QueuedAlert>> {
        self.take_alert_rows(limit, hold, now).await
    }

    async fn remove_alert(&self, id: i64) -> Result<()> {
        self.delete_alert_row(id).await
    }

    async fn retry_alert(
        &self,
        id: i64,
        after: Duration,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.retry_alert_row(id, after, error, now).await
    }

    async fn waiting_alerts(&self) -> Result<u64> {
        self.count_alert_rows().await
    }

    async fn take_rate_slot(
        &self,
        scope: &str,
        key: &str,
        rate: SharedRate,
        now: DateTime<Utc>,
    ) -> Result<Option<Duration>> {
        self.take_rate_slot_row(scope, key, rate, now).await
    }

    async fn begin_order_request(
        &self,
        key: &OrderRequestKey,
        fingerprint: &str,
        hold: Duration,
        now: DateTime<Utc>,
    ) -> Result<OrderRequestStart> {
        self.begin_order_request_row(key, fingerprint, hold, now)
            .await
    }

    async fn answer_order_request(
        &self,
        key: &OrderRequestKey,
        answer: OrderRequestAnswer,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.answer_order_request_row(key, answer, audit, now).await
    }

    async fn release_order_request(
        &self,
        key: &OrderRequestKey,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.release_order_request_row(key, audit, now).await
    }

    async fn order_request_customer(
        &self,
        order_id: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>> {
        self.order_request_customer_row(order_id).await
    }
}
