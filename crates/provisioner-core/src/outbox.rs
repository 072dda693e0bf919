//! Alerts kept in the store until the webhook takes them ([`StoreOutbox`]), and each alert's
//! audit record ([`alert_audit_record`], [`AuditedSink`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use audit::NewAuditRecord;
use provisioner_store::{NewAlert, Store};
use security::{Alert, AlertKind, AlertOutbox, AlertSink, OutboxError, Outgoing};

use crate::Clock;

/// Waiting alerts a [`StoreOutbox`] keeps by default; past this, the oldest are dropped.
pub const DEFAULT_ALERT_OUTBOX_MAX: u64 = 10_000;

/// The `alert_raised` audit record of `alert` (its kind, and its Order when it names one);
/// `None` for the audit head witness, which is a copy of the chain rather than an event in it.
pub fn alert_audit_record(alert: &Alert) -> Option<Result<NewAuditRecord, audit::Error>> {
    if alert.kind == AlertKind::AuditHead {
        return None;
    }
    let record = NewAuditRecord::new(
        audit::Actor::SECURITY,
        audit::Action::ALERT_RAISED,
        audit::Outcome::Success,
    )
    .detail(audit::DetailKey::Alert, alert.kind.as_str());
    Some(match alert.details.get(security::DetailKey::OrderId) {
        Some(security::DetailValue::Id(id)) => record.and_then(|r| r.order_id(id.as_str())),
        _ => record,
    })
}

/// The [`AlertOutbox`] of the provisioner: the store's `alert_outbox` table. An alert is stored
/// with its `alert_raised` audit record in one transaction, so every alert the webhook may
/// get is in the audit log, and it survives a restart. Every instance on a PostgreSQL store
/// delivers from the same outbox, each alert by one instance at a time.
pub struct StoreOutbox {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    max_waiting: u64,
}

impl StoreOutbox {
    /// An outbox in `store` keeping at most `max_waiting` alerts (the oldest are dropped).
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, max_waiting: u64) -> Self {
        Self {
            store,
            clock,
            max_waiting: max_waiting.max(1),
        }
    }
}

impl std::fmt::Debug for StoreOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOutbox")
            .field("max_waiting", &self.max_waiting)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl AlertOutbox for StoreOutbox {
    async fn push(&self, alert: &Alert) -> Result<u64, OutboxError> {
        let audit = match alert_audit_record(alert) {
            Some(Ok(record)) => vec![record],
            Some(Err(e)) => {
                crate::metrics::audit_failed();
                tracing::warn!(alert = alert.kind.as_str(), error = %e, "could not build an alert's audit record");
                Vec::new()
            }
            None => Vec::new(),
        };
        let new = NewAlert {
            kind: alert.kind.as_str().to_owned(),
            body: alert.to_json(),
        };
        let dropped = self
            .store
            .queue_alert(new, self.max_waiting, audit, self.clock.now())
            .await?;
        metrics::counter!(crate::metrics::ALERTS_TOTAL, "outcome" => "queued").increment(1);
        if dropped > 0 {
            metrics::counter!(crate::metrics::ALERTS_TOTAL, "outcome" => "dropped")
                .increment(dropped);
        }
        Ok(dropped)
    }

    async fn take(&self, limit: usize, hold: Duration) -> Result<Vec<Outgoing>, OutboxError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let taken = self
            .store
            .take_alerts(limit, hold, self.clock.now())
            .await?;
        Ok(taken
            .into_iter()
            .map(|a| Outgoing {
                id: a.id,
                kind: a.kind,
                body: a.body,
                attempts: a.attempts,
            })
            .collect())
    }

    async fn remove(&self, id: i64) -> Result<(), OutboxError> {
        self.store.remove_alert(id).await?;
        metrics::counter!(crate::metrics::ALERTS_TOTAL, "outcome" => "sent").increment(1);
        Ok(())
    }

    async fn retry(&self, id: i64, after: Duration, reason: &str) -> Result<(), OutboxError> {
        let reason = crate::sanitize_reason(reason);
        self.store
            .retry_alert(id, after, &reason, self.clock.now())
            .await?;
        Ok(())
    }

    async fn waiting(&self) -> Result<u64, OutboxError> {
        let n = self.store.waiting_alerts().await?;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(crate::metrics::ALERTS_WAITING).set(n as f64);
        Ok(n)
    }
}

/// An alert sink that first appends each alert's audit record ([`alert_audit_record`]) on its
/// own, then hands the alert on: for a sink without a [`StoreOutbox`] (alerts to the log).
pub struct AuditedSink {
    inner: Arc<dyn AlertSink>,
    audit: Arc<dyn audit::AuditLog>,
}

impl AuditedSink {
    /// Audits into `audit`, then sends to `inner`.
    pub fn new(inner: Arc<dyn AlertSink>, audit: Arc<dyn audit::AuditLog>) -> Self {
        Self { inner, audit }
    }
}

#[async_trait]
impl AlertSink for AuditedSink {
    async fn send(&self, alert: Alert) {
        match alert_audit_record(&alert) {
            Some(Ok(record)) => {
                if let Err(e) = self.audit.append(record).await {
                    crate::metrics::audit_failed();
                    tracing::warn!(alert = alert.kind.as_str(), error = %e, "could not audit an alert");
                }
            }
            Some(Err(e)) => {
                crate::metrics::audit_failed();
                tracing::warn!(alert = alert.kind.as_str(), error = %e, "could not build an alert's audit record");
            }
            None => {}
        }
        self.inner.send(alert).await;
    }

    async fn flush(&self, grace: Duration) -> bool {
        self.inner.flush(grace).await
    }
}
