//! Salesforce REST for provisioning: fetch an Order with its OrderItems (one fixed SOQL query),
//! PATCH it back, and list approved Orders for the reconcile sweep; and for the order intake:
//! read an Account's customer number, price products, create an Order with its OrderItems in one
//! all-or-none composite request, and find an Order by its unique request id.
//!
//! [`OrderApi`] is the port the provisioner core uses, [`OrderIntakeApi`] the one the order
//! intake uses; [`RestOrderApi`] implements both over
//! reqwest (rustls) with any [`sf_auth::TokenSource`]. Ids are validated as 15/18-character
//! Salesforce ids before anything is sent, so no caller-supplied text reaches SOQL. A 401
//! `INVALID_SESSION_ID` invalidates the token and repeats the request once; retryable errors
//! (5xx, 503, timeouts, `UNABLE_TO_LOCK_ROW`) are retried per [`RetryPolicy`]; every error is
//! classified by [`Error::class`]. The last `Sforce-Limit-Info` is kept in
//! [`RestOrderApi::api_usage`]. [`RestOrderApi::describe`] reads an sObject's fields and the
//! integration user's access to them ([`SObjectDescribe`]), for configuration checks.
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
mod describe;
mod error;
mod id;
mod intake;
mod model;

use std::time::Duration;

use async_trait::async_trait;

pub use client::{ApiUsage, DEFAULT_API_VERSION, RestConfig, RestOrderApi, RetryPolicy};
pub use describe::{
    FieldDescribe, FieldType, MAX_SOBJECT_NAME_CHARS, PicklistValue, SObjectDescribe,
};
pub use error::{Action, Error, ErrorClass, Result};
pub use id::OrderId;
pub use intake::{
    ACCOUNT_QUERY, CreatedOrder, MAX_ORDER_ITEMS, MAX_REQUEST_ID_CHARS, NewOrder, NewOrderItem,
    ORDER_BY_REQUEST_ID_QUERY, ORDER_REFERENCE, PRICEBOOK_ENTRY_QUERY, PricebookEntry,
    account_soql, order_by_request_id_soql, pricebook_entries_soql,
};
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

/// The Salesforce operations the order intake (`POST /v1/orders`) needs.
///
/// The create is idempotent through `Portal_Request_Id__c`, a unique external id: a second
/// create with the same request id fails with [`Error::Duplicate`], and a create whose outcome
/// is unknown ([`Error::UnknownOutcome`]) is resolved with
/// [`OrderIntakeApi::find_order_by_request_id`].
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait OrderIntakeApi: Send + Sync {
    /// The Account's `Customer_Number__c`; `None` when there is no such Account or the field is
    /// empty. `account_id` must be a 15/18-character id ([`Error::InvalidId`] otherwise, with no
    /// request made).
    async fn account_customer_number(&self, account_id: &str) -> Result<Option<String>>;

    /// The active entries of the price book whose product's `WHMCS_Product_Id__c` is one of
    /// `whmcs_product_ids` (none asked: none returned, no request made). Products without an
    /// active entry are simply missing from the answer.
    async fn pricebook_entries(
        &self,
        pricebook_id: &str,
        whmcs_product_ids: &[u64],
    ) -> Result<Vec<PricebookEntry>>;

    /// The Order whose `Portal_Request_Id__c` is `request_id`, if any.
    async fn find_order_by_request_id(&self, request_id: &str) -> Result<Option<CreatedOrder>>;

    /// Creates the Order with its OrderItems in one composite request, all-or-none: either
    /// everything is created or nothing is. Refused up front ([`Error::InvalidRequest`],
    /// [`Error::InvalidId`]) when [`NewOrder::validate`] fails, e.g. more than
    /// [`MAX_ORDER_ITEMS`] items. [`Error::Duplicate`] when an Order with this request id
    /// exists; [`Error::Api`] naming the `errorCode` and the failing subrequest for any other
    /// refusal; [`Error::UnknownOutcome`] when the request may have been applied (timeout,
    /// connection lost): never retried inside the client.
    async fn create_order(&self, order: &NewOrder) -> Result<CreatedOrder>;
}
