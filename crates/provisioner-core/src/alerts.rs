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
    /// The first services ordered of WHMCS product `product_id` (in this process) do not carry
    /// the Salesforce Order Id in custom field `field_id`: a wrong `WHMCS_ORDER_REF_FIELD_ID`
    /// entry, or an admin-only field the WHMCS version does not save.
    async fn ref_field_not_stored(&self, product_id: u64, field_id: u64);
    /// A config option the order intake sealed for `order_id` did not decrypt: the job failed
    /// before anything was written to WHMCS.
    async fn integrity_failure(&self, order_id: &str);
}

#[async_trait]
impl Alerts for security::SecurityMonitor {
    async fn integrity_failure(&self, order_id: &str) {
        let _ = security::SecurityMonitor::sealed_value_failed(self, order_id).await;
    }

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

    async fn ref_field_not_stored(&self, product_id: u64, field_id: u64) {
        let _ = security::SecurityMonitor::ref_field_not_stored(self, product_id, field_id).await;
    }
}
