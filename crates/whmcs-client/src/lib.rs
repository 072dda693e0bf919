#![doc = include_str!("../README.md")]

mod catalog;
mod config;
pub mod encoding;
mod error;
mod http;
mod lenient;
mod model;
mod reply;

use async_trait::async_trait;

pub use catalog::{CatalogProduct, PaymentMethod, ProductConfigOption, ProductCustomField};
pub use config::{
    DEFAULT_PAGE_SIZE, DEFAULT_PROVISIONING_TIMEOUT, DEFAULT_READ_TIMEOUT, MAX_PAGE_SIZE,
    WhmcsConfig,
};
pub use error::{Action, Error, ErrorClass, Result};
pub use http::{HttpWhmcsClient, PauseFuture, RetryPause};
pub use model::{
    AcceptOrderRequest, ClientDetails, ClientStatus, ConfigOptionValue, ConfigOptions,
    CustomFields, FieldRef, FieldValue, LineItem, ListPage, NewClient, NewOrder, Order, OrderLine,
    OrdersQuery, Page, PlacedOrder, ProductsQuery, Service, ServiceConfigOption, ServiceRef,
};
pub use reply::{Reply, decode_reply};

/// Metric: duration of each External API call including the body, by `action`, in seconds.
pub const REQUEST_SECONDS: &str = "whmcs_request_duration_seconds";

/// The WHMCS actions provisioning needs. [`HttpWhmcsClient`] is the real implementation;
/// `MockWhmcsApi` (feature `mock`) the test double.
// `automock` must come before `async_trait` so the mock's expectations return plain values.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait WhmcsApi: Send + Sync {
    /// `GetClientsDetails(clientid)`. `Client Not Found` is a [`ErrorClass::Business`] error.
    async fn get_client_details(&self, client_id: u64) -> Result<ClientDetails>;

    /// One page of `GetClientsProducts`.
    async fn get_clients_products(
        &self,
        query: &ProductsQuery,
        page: Page,
    ) -> Result<ListPage<Service>>;

    /// Every service of a client, paging through `GetClientsProducts`.
    async fn all_client_services(&self, client_id: u64) -> Result<Vec<Service>>;

    /// Every service of a client as the external-ref lookup needs it (ids and custom field
    /// values), paging through `GetClientsProducts` like
    /// [`all_client_services`](Self::all_client_services). [`HttpWhmcsClient`] reads only
    /// those fields of each reply, which costs less than reading whole services; the default
    /// maps `all_client_services`.
    async fn client_service_refs(&self, client_id: u64) -> Result<Vec<ServiceRef>> {
        Ok(self
            .all_client_services(client_id)
            .await?
            .iter()
            .map(ServiceRef::from)
            .collect())
    }

    /// The first service of `client_id` whose custom field `field_id` equals `value` (an
    /// earlier attempt carrying the same external ref), paging through all services.
    ///
    /// Product custom fields are rows per product, so one `field_id` only matches services of
    /// the products defining it; with a field id per product, walk
    /// [`all_client_services`](Self::all_client_services) once and match each service by the
    /// field of its own [`Service::product_id`].
    async fn find_service_by_custom_field(
        &self,
        client_id: u64,
        field_id: u64,
        value: &str,
    ) -> Result<Option<Service>>;

    /// `AddOrder`: creates a Pending order and Pending services. Not idempotent: on
    /// [`ErrorClass::UnknownOutcome`] reconcile before retrying.
    async fn add_order(&self, order: &NewOrder) -> Result<PlacedOrder>;

    /// `AcceptOrder` (long timeout: provisioning runs inside). A second accept fails with
    /// `Order ID not found or Status not Pending` ([`Error::is_order_not_pending`]).
    async fn accept_order(&self, request: &AcceptOrderRequest) -> Result<()>;

    /// One page of `GetOrders`.
    async fn get_orders(&self, query: &OrdersQuery, page: Page) -> Result<ListPage<Order>>;

    /// `GetOrders(id)`: one order, `None` when WHMCS has no such order.
    async fn get_order(&self, order_id: u64) -> Result<Option<Order>>;

    /// `ModuleCreate(serviceid)` (long timeout). Not idempotent.
    async fn module_create(&self, service_id: u64) -> Result<()>;

    /// `AddClient`: returns the new client id. Not idempotent.
    async fn add_client(&self, client: &NewClient) -> Result<u64>;
}
