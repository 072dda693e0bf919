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
}
