//! [`SecurityMonitor`]: feeds events to the detectors and sends the alerts they raise.

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::{
    Alert, AlertKind, AlertSink, Details, DetectorConfig, Error, Id, IntegrityCheck, Result,
    Subject, Thresholds, WindowCounter,
};

/// The detectors and the alert path of one process.
///
/// Cheap to clone (an `Arc` inside); share one per process. Each method records one event with
/// its detector and, when that crosses the detector's threshold within its window, builds an
/// [`Alert`], passes it through deduplication and hands it to the [`AlertSink`]. The methods
/// return the alert that was handed over, if any, so callers can also audit it.
///
/// The sink is never awaited on the network (see [`AlertSink`]), so calling these from the
/// request or provisioning path costs a mutex and a hash-map update.
#[derive(Clone)]
pub struct SecurityMonitor {
    inner: Arc<Inner>,
}

struct Inner {
    thresholds: Thresholds,
    detectors: Mutex<Detectors>,
    dedup: Mutex<crate::Deduplicator>,
    sink: Arc<dyn AlertSink>,
}

struct Detectors {
    auth_failures: WindowCounter<Subject>,
    status_not_found: WindowCounter<Subject>,
    rate_limited: WindowCounter<Subject>,
    integrity_failures: WindowCounter<Subject>,
    refused_orders: WindowCounter<Subject>,
    provisioning_failures: WindowCounter<Subject>,
}

impl Detectors {
    fn new(t: &Thresholds) -> Self {
        Self {
            auth_failures: WindowCounter::new(t.auth_failures),
            status_not_found: WindowCounter::new(t.status_not_found),
            rate_limited: WindowCounter::new(t.rate_limited),
            integrity_failures: WindowCounter::new(t.integrity_failures),
            refused_orders: WindowCounter::new(t.refused_orders),
            provisioning_failures: WindowCounter::new(t.provisioning_failures),
        }
    }

    /// The detector counting `kind`; `None` for kinds raised at once (one event is enough).
    fn for_kind(&mut self, kind: AlertKind) -> Option<&mut WindowCounter<Subject>> {
        Some(match kind {
            AlertKind::AuthFailureBurst => &mut self.auth_failures,
            AlertKind::StatusEnumeration => &mut self.status_not_found,
            AlertKind::RateLimitAbuse => &mut self.rate_limited,
            AlertKind::IntegrityFailure => &mut self.integrity_failures,
            AlertKind::UnapprovedOrderEvent => &mut self.refused_orders,
            AlertKind::RepeatedProvisioningFailure => &mut self.provisioning_failures,
            AlertKind::ApprovalWithdrawn
            | AlertKind::WritebackStuck
            | AlertKind::RefFieldNotStored
            | AlertKind::AuditHead => return None,
        })
    }

    fn prune(&mut self, now: Instant) -> usize {
        self.auth_failures.prune(now)
            + self.status_not_found.prune(now)
            + self.rate_limited.prune(now)
            + self.integrity_failures.prune(now)
            + self.refused_orders.prune(now)
            + self.provisioning_failures.prune(now)
    }
}

impl SecurityMonitor {
    /// A monitor sending to `sink` with the given thresholds.
    pub fn new(sink: Arc<dyn AlertSink>, thresholds: Thresholds) -> Self {
        Self {
            inner: Arc::new(Inner {
                detectors: Mutex::new(Detectors::new(&thresholds)),
                dedup: Mutex::new(crate::Deduplicator::new(thresholds.dedup_window)),
                thresholds,
                sink,
            }),
        }
    }

    /// The thresholds in use.
    pub fn thresholds(&self) -> &Thresholds {
        &self.inner.thresholds
    }

    /// A bearer-token check failed for a request from `ip`.
    pub async fn auth_failed(&self, ip: IpAddr) -> Option<Alert> {
        let subject = Subject::ip(ip);
        let details = subject.details();
        self.record(AlertKind::AuthFailureBurst, subject, details)
            .await
    }

    /// A status lookup by `customer` from `ip` was answered 404: counted per customer, as
    /// probing order ids is what enumeration looks like.
    pub async fn status_not_found(&self, customer: &str, ip: IpAddr) -> Option<Alert> {
        let subject = Subject::customer(customer);
        let details = subject.details().ip(ip);
        self.record(AlertKind::StatusEnumeration, subject, details)
            .await
    }

    /// A rate-limit check for `key` (a customer or an address) was refused.
    pub async fn rate_limited(&self, key: Subject) -> Option<Alert> {
        let details = key.details();
        self.record(AlertKind::RateLimitAbuse, key, details).await
    }

    /// An integrity check failed; `key_id` names the data key involved, when known.
    pub async fn integrity_failure(
        &self,
        check: IntegrityCheck,
        key_id: Option<&str>,
    ) -> Option<Alert> {
        let subject = Subject::Integrity(check);
        let mut details = subject.details();
        if let Some(key_id) = key_id {
            details = details.key_id(key_id);
        }
        self.record(AlertKind::IntegrityFailure, subject, details)
            .await
    }

    /// The audit chain failed verification at record `seq` (its MAC, or the record itself is
    /// missing or out of place): an [`IntegrityCheck::AuditMac`] integrity failure naming the
    /// record.
    pub async fn audit_chain_broken(&self, seq: u64) -> Option<Alert> {
        self.audit_chain_broken_in(0, seq).await
    }

    /// [`SecurityMonitor::audit_chain_broken`] for record `seq` of chain `chain` of a log kept
    /// as several chains (`audit_seq` is `CHAIN.SEQ` unless the chain is 0).
    pub async fn audit_chain_broken_in(&self, chain: u32, seq: u64) -> Option<Alert> {
        let subject = Subject::Integrity(IntegrityCheck::AuditMac);
        let details = subject.details().audit_chain_seq(chain, seq);
        self.record(AlertKind::IntegrityFailure, subject, details)
            .await
    }

    /// A value sealed for the Order `order_id` did not decrypt (an AES-GCM tag mismatch or an
    /// unknown key): an [`IntegrityCheck::FieldDecrypt`] integrity failure naming the Order.
    pub async fn sealed_value_failed(&self, order_id: &str) -> Option<Alert> {
        let subject = Subject::Integrity(IntegrityCheck::FieldDecrypt);
        let details = subject.details().order_id(order_id);
        self.record(AlertKind::IntegrityFailure, subject, details)
            .await
    }

    /// An event for `order_id` was refused: the Order is not approved or belongs to another
    /// customer than the event's `customer`.
    pub async fn order_refused(&self, order_id: &str, customer: &str) -> Option<Alert> {
        let subject = Subject::customer(customer);
        let details = subject.details().order_id(order_id);
        self.record(AlertKind::UnapprovedOrderEvent, subject, details)
            .await
    }

    /// A provisioning job for `order_id` of `customer` ended as failed.
    pub async fn provisioning_failed(&self, order_id: &str, customer: &str) -> Option<Alert> {
        let subject = Subject::customer(customer);
        let details = subject.details().order_id(order_id);
        self.record(AlertKind::RepeatedProvisioningFailure, subject, details)
            .await
    }

    /// The job of `order_id` stopped because the Order left the approved status before a WHMCS
    /// write; `whmcs_order_id` names a WHMCS order it had already added (left Pending for an
    /// operator). Raised at once, deduplicated per Order.
    pub async fn approval_withdrawn(
        &self,
        order_id: &str,
        customer: &str,
        whmcs_order_id: Option<u64>,
    ) -> Option<Alert> {
        self.order_alert(
            AlertKind::ApprovalWithdrawn,
            order_id,
            customer,
            whmcs_order_id,
        )
        .await
    }

    /// WHMCS accepted `whmcs_order_id` for `order_id`, but the write-back to Salesforce has
    /// been failing for longer than the configured time. Raised at once, per Order (the
    /// engine raises it once per Order).
    pub async fn writeback_stuck(
        &self,
        order_id: &str,
        customer: &str,
        whmcs_order_id: Option<u64>,
    ) -> Option<Alert> {
        self.order_alert(
            AlertKind::WritebackStuck,
            order_id,
            customer,
            whmcs_order_id,
        )
        .await
    }

    /// The first services the engine ordered of WHMCS product `product_id` do not carry the
    /// Salesforce Order Id in custom field `field_id` (its `WHMCS_ORDER_REF_FIELD_ID` entry).
    /// Raised at once, deduplicated per product (the engine checks each product once per
    /// process).
    pub async fn ref_field_not_stored(&self, product_id: u64, field_id: u64) -> Option<Alert> {
        let subject = Subject::Product(product_id);
        let details = subject.details().whmcs_field_id(field_id);
        self.record(AlertKind::RefFieldNotStored, subject, details)
            .await
    }

    /// An alert of `kind` about one Order, naming its customer and WHMCS order.
    async fn order_alert(
        &self,
        kind: AlertKind,
        order_id: &str,
        customer: &str,
        whmcs_order_id: Option<u64>,
    ) -> Option<Alert> {
        let subject = Subject::Order(Id::new(order_id));
        let mut details = subject.details().customer_number(customer);
        if let Some(id) = whmcs_order_id {
            details = details.whmcs_order_id(id.to_string());
        }
        self.record(kind, subject, details).await
    }

    /// Publishes the audit chain's head (`audit_head`, low severity): sent at once, never
    /// deduplicated, so every witness reaches the webhook.
    pub async fn audit_head(&self, seq: u64, mac_hex: &str) -> Alert {
        self.audit_chain_head(0, seq, mac_hex).await
    }

    /// [`SecurityMonitor::audit_head`] for chain `chain` of a log kept as several chains
    /// (`audit_seq` is `CHAIN.SEQ` unless the chain is 0).
    pub async fn audit_chain_head(&self, chain: u32, seq: u64, mac_hex: &str) -> Alert {
        let subject = Subject::AuditChain;
        let details = subject.details().audit_chain_head(chain, seq, mac_hex);
        let alert = Alert::new(AlertKind::AuditHead, subject, 1, Duration::ZERO, details);
        self.inner.sink.send(alert.clone()).await;
        alert
    }

    /// Waits up to `grace` for the sink to deliver what it was handed (at shutdown).
    pub async fn drain(&self, grace: Duration) -> bool {
        self.inner.sink.flush(grace).await
    }

    /// Sends an alert built elsewhere, through deduplication. Returns it if it was sent.
    pub async fn raise(&self, alert: Alert) -> Option<Alert> {
        let out = self.inner.dedup.lock().offer(alert, Instant::now());
        if let Some(alert) = &out {
            self.inner.sink.send(alert.clone()).await;
        }
        out
    }

    /// Sends the summaries of deduplication windows that have ended and drops idle detector
    /// keys. Returns how many summaries were sent. Runs from
    /// [`spawn_housekeeping`](Self::spawn_housekeeping); call it directly in tests.
    pub async fn flush(&self) -> usize {
        self.flush_at(Instant::now()).await
    }

    async fn flush_at(&self, now: Instant) -> usize {
        let summaries = self.inner.dedup.lock().flush(now);
        self.inner.detectors.lock().prune(now);
        let n = summaries.len();
        for alert in summaries {
            self.inner.sink.send(alert).await;
        }
        n
    }

    /// Spawns a task calling [`flush`](Self::flush) every `every` while any clone of the
    /// monitor is alive.
    ///
    /// # Errors
    /// [`Error::NoRuntime`] outside a Tokio runtime.
    pub fn spawn_housekeeping(&self, every: Duration) -> Result<tokio::task::JoinHandle<()>> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            component: "security monitor housekeeping",
        })?;
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        Ok(handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                SecurityMonitor { inner }.flush().await;
            }
        }))
    }

    async fn record(&self, kind: AlertKind, subject: Subject, details: Details) -> Option<Alert> {
        self.record_at(kind, subject, details, Instant::now()).await
    }

    async fn record_at(
        &self,
        kind: AlertKind,
        subject: Subject,
        details: Details,
        now: Instant,
    ) -> Option<Alert> {
        let (count, window) = {
            let mut detectors = self.inner.detectors.lock();
            match detectors.for_kind(kind) {
                Some(counter) => {
                    let config: DetectorConfig = counter.config();
                    (counter.record(subject.clone(), now)?, config.window)
                }
                None => (1, Duration::ZERO),
            }
        };
        let alert = Alert::new(kind, subject, count, window, details);
        let out = self.inner.dedup.lock().offer(alert, now);
        if let Some(alert) = &out {
            self.inner.sink.send(alert.clone()).await;
        }
        out
    }
}

impl std::fmt::Debug for SecurityMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityMonitor")
            .field("thresholds", &self.inner.thresholds)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use mockall::predicate::function;

    use super::*;
    use crate::{DetailKey, DetailValue, MockAlertSink};

    const S: Duration = Duration::from_secs(1);

    fn monitor(sink: MockAlertSink) -> SecurityMonitor {
        SecurityMonitor::new(Arc::new(sink), Thresholds::default())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_broken_audit_chain_is_a_high_integrity_failure_naming_the_record() {
        let mut sink = MockAlertSink::new();
        sink.expect_send()
            .with(function(|a: &Alert| {
                a.kind == AlertKind::IntegrityFailure
                    && a.severity == crate::Severity::High
                    && a.details.get(DetailKey::AuditSeq)
                        == Some(&DetailValue::Id(crate::Id::new("17")))
                    && a.details.get(DetailKey::Check)
                        == Some(&DetailValue::Check(IntegrityCheck::AuditMac))
            }))
            .times(1)
            .return_const(());
        let m = monitor(sink);
        assert!(m.audit_chain_broken(17).await.is_some());
    }

    #[tokio::test]
    async fn every_audit_head_witness_is_sent_never_deduplicated() {
        let mac = "ab".repeat(32);
        let mut sink = MockAlertSink::new();
        let expected = mac.clone();
        sink.expect_send()
            .with(function(move |a: &Alert| {
                a.kind == AlertKind::AuditHead
                    && a.severity == crate::Severity::Low
                    && a.details.get(DetailKey::AuditSeq)
                        == Some(&DetailValue::Id(crate::Id::new("42")))
                    && a.details.get(DetailKey::AuditMac)
                        == Some(&DetailValue::Id(crate::Id::new(&expected)))
            }))
            .times(3)
            .return_const(());
        let m = monitor(sink);
        for _ in 0..3 {
            m.audit_head(42, &mac).await;
        }
    }

    #[tokio::test]
    async fn auth_failure_burst_fires_at_threshold_per_ip() {
        let mut sink = MockAlertSink::new();
        sink.expect_send()
            .with(function(|a: &Alert| {
                a.kind == AlertKind::AuthFailureBurst
                    && a.count == 10
                    && a.window_seconds == 60
                    && a.details.get(DetailKey::Ip) == Some(&DetailValue::Ip(ip("192.0.2.1")))
            }))
            .times(1)
            .return_const(());
        let m = monitor(sink);
        for _ in 0..9 {
            assert!(m.auth_failed(ip("192.0.2.1")).await.is_none());
            assert!(m.auth_failed(ip("192.0.2.2")).await.is_none());
        }
        // The mapped form of the same client counts as the same IP.
        let alert = m.auth_failed(ip("::ffff:192.0.2.1")).await.unwrap();
        assert_eq!(alert.severity, crate::Severity::Medium);
    }

    #[tokio::test]
    async fn status_enumeration_counts_per_customer_across_ips() {
        let mut sink = MockAlertSink::new();
        sink.expect_send()
            .with(function(|a: &Alert| {
                a.kind == AlertKind::StatusEnumeration
                    && a.count == 20
                    && a.subject == Subject::customer("C-7")
            }))
            .times(1)
            .return_const(());
        let m = monitor(sink);
        for i in 0..19u8 {
            assert!(
                m.status_not_found("C-7", IpAddr::from([10, 0, 0, i]))
                    .await
                    .is_none()
            );
        }
        let alert = m.status_not_found("C-7", ip("10.0.0.99")).await.unwrap();
        assert_eq!(
            alert.details.get(DetailKey::CustomerNumber),
            Some(&DetailValue::Id(Id::new("C-7")))
        );
        assert_eq!(
            alert.details.get(DetailKey::Ip),
            Some(&DetailValue::Ip(ip("10.0.0.99")))
        );
    }

    #[tokio::test]
    async fn rate_limit_abuse_fires_per_key() {
        let mut sink = MockAlertSink::new();
        sink.expect_send()
            .with(function(|a: &Alert| {
                a.kind == AlertKind::RateLimitAbuse && a.severity == crate::Severity::Low
            }))
            .times(1)
            .return_const(());
        let m = monitor(sink);
        for _ in 0..19 {
            assert!(m.rate_limited(Subject::customer("C-1")).await.is_none());
        }
        assert!(m.rate_limited(Subject::customer("C-1")).await.is_some());
    }

    #[tokio::test]
    async fn integrity_failure_fires_at_once_and_dedups_per_check() {
        let mut sink = MockAlertSink::new();
        sink.expect_send()
            .with(function(|a: &Alert| {
                a.kind == AlertKind::IntegrityFailure && a.severity == crate::Severity::High
            }))
            .times(2)
            .return_const(());
        let m = monitor(sink);
        let first = m
            .integrity_failure(IntegrityCheck::AuditMac, Some("k-1"))
            .await
            .unwrap();
        assert_eq!(
            first.details.get(DetailKey::KeyId),
            Some(&DetailValue::Id(Id::new("k-1")))
        );
        assert!(
            m.integrity_failure(IntegrityCheck::AuditMac, None)
                .await
                .is_none()
        );
        assert!(
            m.integrity_failure(IntegrityCheck::FieldDecrypt, None)
                .await
                .is_some()
        );
    }

    #[tokio::test]
    async fn refused_order_alerts_with_order_and_customer() {
        let mut sink = MockAlertSink::new();
        sink.expect_send().times(1).return_const(());
        let m = monitor(sink);
        let alert = m.order_refused("801000000000001AAA", "C-3").await.unwrap();
        assert_eq!(alert.kind, AlertKind::UnapprovedOrderEvent);
        assert_eq!(
            alert.details.get(DetailKey::OrderId),
            Some(&DetailValue::Id(Id::new("801000000000001AAA")))
        );
        // A second forged event for the same customer within the dedup window is held back.
        assert!(m.order_refused("801000000000002AAA", "C-3").await.is_none());
    }

    #[tokio::test]
    async fn provisioning_failures_fire_on_the_third() {
        let mut sink = MockAlertSink::new();
        sink.expect_send().times(1).return_const(());
        let m = monitor(sink);
        assert!(m.provisioning_failed("o1", "C-5").await.is_none());
        assert!(m.provisioning_failed("o2", "C-5").await.is_none());
        assert!(m.provisioning_failed("o3", "C-6").await.is_none());
        let alert = m.provisioning_failed("o4", "C-5").await.unwrap();
        assert_eq!(alert.count, 3);
        assert_eq!(alert.kind, AlertKind::RepeatedProvisioningFailure);
    }

    #[tokio::test]
    async fn dedup_then_flush_sends_the_aggregated_count() {
        let mut sink = MockAlertSink::new();
        let mut seq = mockall::Sequence::new();
        sink.expect_send()
            .with(function(|a: &Alert| a.count == 1))
            .times(1)
            .in_sequence(&mut seq)
            .return_const(());
        sink.expect_send()
            .with(function(|a: &Alert| {
                a.count == 4 && a.kind == AlertKind::IntegrityFailure
            }))
            .times(1)
            .in_sequence(&mut seq)
            .return_const(());
        let m = monitor(sink);
        let t0 = Instant::now();
        let subject = Subject::Integrity(IntegrityCheck::KeyUnwrap);
        for i in 0..5 {
            m.record_at(
                AlertKind::IntegrityFailure,
                subject.clone(),
                subject.details(),
                t0 + i * S,
            )
            .await;
        }
        assert_eq!(m.flush_at(t0 + 299 * S).await, 0);
        assert_eq!(m.flush_at(t0 + 300 * S).await, 1);
        assert_eq!(m.flush_at(t0 + 900 * S).await, 0);
    }

    #[tokio::test]
    async fn disabled_detector_sends_nothing() {
        let sink = MockAlertSink::new();
        let thresholds = Thresholds {
            provisioning_failures: DetectorConfig::disabled(),
            ..Thresholds::default()
        };
        let m = SecurityMonitor::new(Arc::new(sink), thresholds);
        for i in 0..100 {
            assert!(
                m.provisioning_failed(&format!("o{i}"), "C-1")
                    .await
                    .is_none()
            );
        }
    }

    #[tokio::test]
    async fn withdrawn_and_stuck_alerts_fire_at_once_per_order_and_name_the_whmcs_order() {
        let mut sink = MockAlertSink::new();
        sink.expect_send().times(3).returning(|_| ());
        let m = monitor(sink);
        let a = m
            .approval_withdrawn("801000000000001AAA", "C-1", Some(77))
            .await
            .expect("one event is enough");
        let mut body: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
        body["at"] = "<at>".into();
        assert_eq!(
            body,
            serde_json::json!({"alert": "approval_withdrawn", "severity": "medium", "at": "<at>",
                "count": 1, "windowSeconds": 0, "details": {"order_id": "801000000000001AAA",
                "customer_number": "C-1", "whmcs_order_id": "77"}})
        );
        // Another Order is another subject; the same Order again is deduplicated.
        assert!(
            m.approval_withdrawn("801000000000002AAA", "C-1", None)
                .await
                .is_some()
        );
        assert!(
            m.approval_withdrawn("801000000000001AAA", "C-1", Some(77))
                .await
                .is_none()
        );
        let stuck = m
            .writeback_stuck("801000000000001AAA", "C-1", Some(77))
            .await
            .expect("sent");
        assert_eq!(
            (stuck.kind, stuck.severity),
            (AlertKind::WritebackStuck, crate::Severity::High)
        );
    }

    #[tokio::test]
    async fn ref_field_not_stored_fires_at_once_per_product_and_names_the_field() {
        let mut sink = MockAlertSink::new();
        sink.expect_send().times(2).returning(|_| ());
        let m = monitor(sink);
        let a = m
            .ref_field_not_stored(3, 31)
            .await
            .expect("one event is enough");
        let mut body: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
        body["at"] = "<at>".into();
        assert_eq!(
            body,
            serde_json::json!({"alert": "ref_field_not_stored", "severity": "high", "at": "<at>",
                "count": 1, "windowSeconds": 0, "details": {"whmcs_product_id": "3",
                "whmcs_field_id": "31"}})
        );
        assert!(
            m.ref_field_not_stored(3, 31).await.is_none(),
            "deduplicated"
        );
        assert!(m.ref_field_not_stored(4, 41).await.is_some());
    }
}
