#![doc = include_str!("../README.md")]

mod client;
mod describe;
mod error;
mod id;
mod intake;
mod model;

use std::time::Duration;

use async_trait::async_trait;

pub use client::{
    ApiUsage, DEFAULT_API_VERSION, PauseFuture, RestConfig, RestOrderApi, RetryPause, RetryPolicy,
};
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

    /// Every Order in `status` last modified more than `older_than` ago, oldest first: the
    /// same query as [`OrderApi::list_approved_orders`] with another status literal. The
    /// reconcile sweep uses it for the provisioning status, where an Order whose job was lost
    /// (a restored backup) would otherwise stay for good.
    async fn list_orders_in_status(
        &self,
        status: &str,
        older_than: Duration,
    ) -> Result<Vec<ApprovedOrder>>;
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
