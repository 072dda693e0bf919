//! The alert port of the engine, implemented by [`security::SecurityMonitor`].

use async_trait::async_trait;

/// Security and operations alerts the engine raises.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Alerts: Send + Sync {
    /// An event was refused (order not approved, customer mismatch, unknown order).
    async fn order_refused(&self, order_id: &str, customer_number: &str);
    /// An order failed permanently.
    async fn provisioning_failed(&self, order_id: &str, customer_number: &str);
    /// A running job stopped because its Order left the approved status; `whmcs_order_id` is
    /// a WHMCS order it had already added (left Pending).
    async fn approval_withdrawn(
        &self,
        order_id: &str,
        customer_number: &str,
        whmcs_order_id: Option<u64>,
    );
    /// WHMCS accepted the order, but the write-back to Salesforce has been failing for longer
    /// than `EngineConfig::writeback_stuck_after`.
    async fn writeback_stuck(
        &self,
        order_id: &str,
        customer_number: &str,
        whmcs_order_id: Option<u64>,
    );
}

#[async_trait]
impl Alerts for security::SecurityMonitor {
    async fn order_refused(&self, order_id: &str, customer_number: &str) {
        let _ = security::SecurityMonitor::order_refused(self, order_id, customer_number).await;
    }

    async fn provisioning_failed(&self, order_id: &str, customer_number: &str) {
        let _ =
            security::SecurityMonitor::provisioning_failed(self, order_id, customer_number).await;
    }

    async fn approval_withdrawn(
        &self,
        order_id: &str,
        customer_number: &str,
        whmcs_order_id: Option<u64>,
    ) {
        let _ = security::SecurityMonitor::approval_withdrawn(
            self,
            order_id,
            customer_number,
            whmcs_order_id,
        )
        .await;
    }

    async fn writeback_stuck(
        &self,
        order_id: &str,
        customer_number: &str,
        whmcs_order_id: Option<u64>,
    ) {
        let _ = security::SecurityMonitor::writeback_stuck(
            self,
            order_id,
            customer_number,
            whmcs_order_id,
        )
        .await;
    }
}
