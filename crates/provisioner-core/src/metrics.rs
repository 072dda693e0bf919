//! Metric names the engine records (with the `metrics` crate; the binary installs the
//! Prometheus recorder and `/metrics` renders them).

/// Events stored by intake, by `outcome` (`enqueued`, `duplicate`, `dead_lettered`).
pub const EVENTS_TOTAL: &str = "provisioner_events_total";
/// Settled job runs, by `outcome` (`provisioned`, `already_provisioned`, `refused`,
/// `failed`, `retrying`, `delayed`, `released`, `lease_lost`, `store_unavailable`).
pub const JOBS_TOTAL: &str = "provisioner_jobs_total";
/// Duration of each workflow step, by `step`, in seconds (includes the downstream calls).
pub const STEP_SECONDS: &str = "provisioner_step_duration_seconds";
/// Retries scheduled, by `error` code.
pub const RETRIES_TOTAL: &str = "provisioner_retries_total";
/// Dead letters written, by `kind` (`event`, `job`).
pub const DEAD_LETTERS_TOTAL: &str = "provisioner_dead_letters_total";
/// Unix time of the last event stored (replay position age = now - this).
pub const LAST_EVENT_TIMESTAMP: &str = "provisioner_last_event_timestamp_seconds";
/// Orders enqueued by the reconcile sweep.
pub const RECONCILE_ENQUEUED_TOTAL: &str = "provisioner_reconcile_enqueued_total";

/// Audit records that could not be stored, so the change they record was not made (it is
/// retried), or that could not be appended on their own.
pub const AUDIT_FAILURES_TOTAL: &str = "provisioner_audit_failures_total";

/// Security alerts through the outbox, by `outcome` (`queued`, `sent` (delivered or refused
/// for good), `dropped` (oldest, past the outbox's bound)).
pub const ALERTS_TOTAL: &str = "provisioner_alerts_total";
/// Alerts waiting in the outbox for the webhook.
pub const ALERTS_WAITING: &str = "provisioner_alerts_waiting";
/// Provisioning runs held back by the per-customer rate, by `scope` (`process`, `shared`).
pub const RATE_DELAYED_TOTAL: &str = "provisioner_rate_delayed_total";

/// Registers descriptions (call once after installing a recorder).
pub fn describe() {
    metrics::describe_counter!(EVENTS_TOTAL, "Platform events stored by intake, by outcome");
    metrics::describe_counter!(JOBS_TOTAL, "Job runs settled, by outcome");
    metrics::describe_histogram!(
        STEP_SECONDS,
        metrics::Unit::Seconds,
        "Duration of each workflow step including downstream calls"
    );
    metrics::describe_counter!(RETRIES_TOTAL, "Retries scheduled, by error code");
    metrics::describe_counter!(DEAD_LETTERS_TOTAL, "Dead letters written");
    metrics::describe_gauge!(LAST_EVENT_TIMESTAMP, "Unix time of the last stored event");
    metrics::describe_counter!(RECONCILE_ENQUEUED_TOTAL, "Orders enqueued by reconcile");
    metrics::describe_counter!(
        ALERTS_TOTAL,
        "Security alerts through the outbox, by outcome"
    );
    metrics::describe_gauge!(ALERTS_WAITING, "Security alerts waiting for the webhook");
    metrics::describe_counter!(
        RATE_DELAYED_TOTAL,
        "Provisioning runs held back by the per-customer rate"
    );
    metrics::describe_counter!(
        AUDIT_FAILURES_TOTAL,
        "Audit records not stored (the change they record was not made either)"
    );
}

/// Counts an audit record that could not be stored or built.
pub(crate) fn audit_failed() {
    metrics::counter!(AUDIT_FAILURES_TOTAL).increment(1);
}

/// Counts a store failure that was an audit failure (the write and its record share a
/// transaction, so neither happened).
pub(crate) fn store_failed(e: &provisioner_store::Error) {
    if matches!(e, provisioner_store::Error::Audit(_)) {
        audit_failed();
    }
}

pub(crate) fn job_outcome(outcome: &crate::JobOutcome) {
    use crate::JobOutcome as O;
    let label = match outcome {
        O::Provisioned { .. } => "provisioned",
        O::AlreadyProvisioned => "already_provisioned",
        O::Refused { .. } => "refused",
        O::Retrying { .. } => "retrying",
        O::Delayed { .. } => "delayed",
        O::Failed { .. } => "failed",
        O::Released => "released",
        O::LeaseLost => "lease_lost",
        O::StoreUnavailable => "store_unavailable",
    };
    metrics::counter!(JOBS_TOTAL, "outcome" => label).increment(1);
    if matches!(outcome, O::Failed { .. }) {
        metrics::counter!(DEAD_LETTERS_TOTAL, "kind" => "job").increment(1);
    }
}
