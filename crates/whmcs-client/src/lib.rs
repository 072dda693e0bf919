//! WHMCS External API client (`includes/api.php`).
//!
//! Placing and accepting an order, the two non-idempotent steps of provisioning, here against
//! the loopback WHMCS of the `sandbox` crate (a real HTTP server on `127.0.0.1`):
//!
//! ```
//! use sandbox::whmcs::{Client, Product, WhmcsSandbox};
//! use secrecy::SecretString;
//! use whmcs_client::{
//!     AcceptOrderRequest, ConfigOptionValue, ConfigOptions, CustomFields, HttpWhmcsClient,
//!     NewOrder, OrderLine, WhmcsApi, WhmcsConfig,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One Active client, and a product whose custom field 12 holds the external ref (the
//! // Salesforce Order Id; WHMCS_ORDER_REF_FIELD_ID) and which has a text option 4.
//! let sandbox = WhmcsSandbox::start().await?;
//! let client_id = sandbox.seed_client(Client::active("Ada", "ada@example.com"));
//! let pid = sandbox.seed_product(
//!     Product::new("VPS S")
//!         .with_custom_field(12, "Salesforce Order", false)
//!         .with_config_option(4, "Root password", "text"),
//! );
//!
//! // WHMCS_API_URL, WHMCS_API_IDENTIFIER, WHMCS_API_SECRET in the provisioner.
//! let whmcs = HttpWhmcsClient::new(WhmcsConfig::new(
//!     sandbox.api_url(),
//!     SecretString::from(sandbox.config().identifier.clone()),
//!     SecretString::from(sandbox.config().secret.clone()),
//! ))?;
//! assert!(whmcs.get_client_details(client_id).await?.is_active());
//!
//! let sf_order = "801XX000003DHAZYA4";
//! let mut line = OrderLine::new(pid, "monthly");
//! line.custom_fields = CustomFields::new().with(12, sf_order);
//! line.config_options = ConfigOptions::new()
//!     .with(4, ConfigOptionValue::Text(SecretString::from("root-pw".to_owned())));
//! let mut order = NewOrder::new(client_id, vec![line]);
//! order.no_email = true;
//!
//! let placed = whmcs.add_order(&order).await?; // a Pending order with Pending services
//! whmcs
//!     .accept_order(&AcceptOrderRequest::provision(placed.order_id, false))
//!     .await?; // AcceptOrder(autosetup=1, sendemail=0)
//! assert_eq!(sandbox.order(placed.order_id).map(|o| o.status).as_deref(), Some("Active"));
//!
//! // After an `ErrorClass::UnknownOutcome` (a timeout), look for an earlier attempt by the
//! // external ref before placing the order again:
//! let earlier = whmcs.find_service_by_custom_field(client_id, 12, sf_order).await?;
//! assert_eq!(earlier.map(|s| s.order_id), Some(placed.order_id));
//! # Ok(())
//! # }
//! ```
//!
//! Wire rules: every call POSTs an
//! `application/x-www-form-urlencoded` body with `action`, `identifier`, `secret`, optional
//! `accesskey` and `responsetype=json`; arrays go as `name[i]` with the same indices on every
//! parallel array; `customfields`/`configoptions` are base64 of PHP `serialize()` of an
//! id-keyed array ([`encoding`]). Replies are read on every HTTP status, and an error is
//! `result` or `status` = `error`, or the absence of a `success`. See [`ErrorClass`] for what
//! to do with each failure; in particular an [`ErrorClass::UnknownOutcome`] must be reconciled
//! (by the external-ref custom field or `GetOrders`) before the call is repeated.
//!
//! Configuration checks read the catalog with [`HttpWhmcsClient::get_products`] (GetProducts)
//! and [`HttpWhmcsClient::payment_methods`] (GetPaymentMethods), both read-only.
//!
//! Secrets (identifier, secret, access key, config option values) stay in `secrecy` types or
//! redacting `Debug` impls, and nothing in this crate logs a request or reply body.

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
pub use config::{DEFAULT_PROVISIONING_TIMEOUT, DEFAULT_READ_TIMEOUT, WhmcsConfig};
pub use error::{Action, Error, ErrorClass, Result};
pub use http::HttpWhmcsClient;
pub use model::{
    AcceptOrderRequest, ClientDetails, ClientStatus, ConfigOptionValue, ConfigOptions,
    CustomFields, FieldValue, LineItem, ListPage, NewClient, NewOrder, Order, OrderLine,
    OrdersQuery, Page, PlacedOrder, ProductsQuery, Service, ServiceConfigOption,
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
