//! WHMCS External API client (`includes/api.php`).
//!
//! Placing and accepting an order, the two non-idempotent steps of provisioning:
//!
//! ```no_run
//! use secrecy::SecretString;
//! use whmcs_client::{
//!     AcceptOrderRequest, ConfigOptionValue, ConfigOptions, CustomFields, ErrorClass,
//!     HttpWhmcsClient, NewOrder, OrderLine, WhmcsApi, WhmcsConfig,
//! };
//!
//! # async fn demo() -> whmcs_client::Result<()> {
//! let config = WhmcsConfig::new(
//!     "https://billing.example.com/includes/api.php",
//!     SecretString::from("identifier".to_owned()),
//!     SecretString::from("secret".to_owned()),
//! );
//! let whmcs = HttpWhmcsClient::new(config)?;
//!
//! let mut line = OrderLine::new(5, "monthly");
//! line.custom_fields = CustomFields::new().with(12, "801XX000003DHAZYA4"); // external ref
//! line.config_options = ConfigOptions::new()
//!     .with(4, ConfigOptionValue::Text(SecretString::from("root-pw".to_owned())));
//! let mut order = NewOrder::new(42, vec![line]);
//! order.no_email = true;
//!
//! match whmcs.add_order(&order).await {
//!     Ok(placed) => {
//!         whmcs.accept_order(&AcceptOrderRequest::provision(placed.order_id, false)).await?;
//!     }
//!     Err(e) if e.class() == ErrorClass::UnknownOutcome => {
//!         // The order may exist: look it up by the external ref before trying again.
//!         let earlier = whmcs.find_service_by_custom_field(42, 12, "801XX000003DHAZYA4").await?;
//!         println!("earlier attempt: {:?}", earlier.map(|s| s.order_id));
//!     }
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Wire rules (`shared/interop/whmcs.md`): every call POSTs an
//! `application/x-www-form-urlencoded` body with `action`, `identifier`, `secret`, optional
//! `accesskey` and `responsetype=json`; arrays go as `name[i]` with the same indices on every
//! parallel array; `customfields`/`configoptions` are base64 of PHP `serialize()` of an
//! id-keyed array ([`encoding`]). Replies are read on every HTTP status, and an error is
//! `result` or `status` = `error`, or the absence of a `success`. See [`ErrorClass`] for what
//! to do with each failure; in particular an [`ErrorClass::UnknownOutcome`] must be reconciled
//! (by the external-ref custom field or `GetOrders`) before the call is repeated.
//!
//! Secrets (identifier, secret, access key, config option values) stay in `secrecy` types or
//! redacting `Debug` impls, and nothing in this crate logs a request or reply body.

mod config;
pub mod encoding;
mod error;
mod http;
mod lenient;
mod model;

use async_trait::async_trait;

pub use config::WhmcsConfig;
pub use error::{Action, Error, ErrorClass, Result};
pub use http::HttpWhmcsClient;
pub use model::{
    AcceptOrderRequest, ClientDetails, ClientStatus, ConfigOptionValue, ConfigOptions,
    CustomFields, FieldValue, LineItem, ListPage, NewClient, NewOrder, Order, OrderLine,
    OrdersQuery, Page, PlacedOrder, ProductsQuery, Service, ServiceConfigOption,
};

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
