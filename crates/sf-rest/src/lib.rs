//! Salesforce REST for provisioning: fetch an Order with its OrderItems (one fixed SOQL query),
//! PATCH it back, and list approved Orders for the reconcile sweep.
//!
//! [`OrderApi`] is the port the provisioner core uses; [`RestOrderApi`] implements it over
//! reqwest (rustls) with any [`sf_auth::TokenSource`]. Ids are validated as 15/18-character
//! Salesforce ids before anything is sent, so no caller-supplied text reaches SOQL. A 401
//! `INVALID_SESSION_ID` invalidates the token and repeats the request once; retryable errors
//! (5xx, 503, timeouts, `UNABLE_TO_LOCK_ROW`) are retried per [`RetryPolicy`]; every error is
//! classified by [`Error::class`]. The last `Sforce-Limit-Info` is kept in
//! [`RestOrderApi::api_usage`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use sf_rest::{OrderApi, OrderUpdate, RestConfig, RestOrderApi};
//!
//! # async fn run(tokens: Arc<dyn sf_auth::TokenSource>) -> Result<(), sf_rest::Error> {
//! let api = RestOrderApi::new(tokens, RestConfig::default())?;
//! let order = api.fetch_order("801A0000006Vm9rIAC").await?;
//! for item in &order.items {
//!     println!("{} x product {:?}", item.quantity, item.whmcs_product_id);
//! }
//! let done = OrderUpdate {
//!     status: Some("Activated".into()),
//!     whmcs_order_id: Some("42".into()),
//!     ..OrderUpdate::default()
//! };
//! api.update_order(order.id.as_str(), &done).await?;
//! # Ok(()) }
//! ```

mod client;
mod error;
mod id;
mod model;

use std::time::Duration;

use async_trait::async_trait;

pub use client::{ApiUsage, DEFAULT_API_VERSION, RestConfig, RestOrderApi, RetryPolicy};
pub use error::{Action, Error, ErrorClass, Result};
pub use id::OrderId;
pub use model::{
    APPROVED_ORDERS_QUERY, ApprovedOrder, MAX_PROVISIONING_ERROR_CHARS, MAX_QUANTITY, ORDER_QUERY,
    Order, OrderItem, OrderUpdate, approved_orders_soql, order_soql, soql_quote,
};

/// Metric: duration of each REST call until the response headers, by `action`, in seconds.
pub const REQUEST_SECONDS: &str = "salesforce_request_duration_seconds";

/// The Salesforce Order operations the provisioner needs.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait OrderApi: Send + Sync {
    /// The Order with its OrderItems. `order_id` must be a 15/18-character id
    /// ([`Error::InvalidId`] otherwise, with no request made); [`Error::NotFound`] when the org
    /// has no such Order.
    async fn fetch_order(&self, order_id: &str) -> Result<Order>;

    /// PATCHes the fields `update` sets (Salesforce answers 204). An empty update sends
    /// nothing. A bad picklist value or validation rule is a permanent [`Error::Api`].
    async fn update_order(&self, order_id: &str, update: &OrderUpdate) -> Result<()>;

    /// Every Order in the approved status last modified more than `older_than` ago, oldest
    /// first (all result batches, followed through `nextRecordsUrl`).
    async fn list_approved_orders(&self, older_than: Duration) -> Result<Vec<ApprovedOrder>>;
}
