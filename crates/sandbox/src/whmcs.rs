//! WHMCS External API emulator: `POST /includes/api.php` on `127.0.0.1`.
//!
//! It reads the form as PHP's `$_POST` does ([`php::parse_form`]: `name[i]` arrays, a bare
//! repeated key keeps its last value, `+` is a space), checks the API credentials like WHMCS
//! (HTTP 403 + `{"result":"error","message":"Authentication Failed"}`), and applies WHMCS's
//! rules to seeded clients, products, orders and services: AddOrder validates the client and
//! the array parameters and creates a Pending order with Pending services whose custom fields
//! and config options are decoded from `customfields[i]`/`configoptions[i]`
//! (`unserialize(base64_decode(...))`); AcceptOrder works only on Pending orders; list actions
//! page with `limitstart`/`limitnum`. The read-only GetProducts (`pid` one id or a
//! comma-separated list, `gid`, `module`; `products.product[]`) and GetPaymentMethods (the
//! gateways of [`WhmcsSandboxConfig::payment_methods`], `paymentmethods.paymentmethod[]` of
//! `{module, displayname}`) answer like the other actions, behind the same credential, IP and
//! API-role checks and fault injection. Replies copy WHMCS's inconsistent number types and its
//! `""` for empty lists.
//!
//! Every request is recorded (action and decoded parameters) for tests to inspect: the most
//! recent [`crate::DEFAULT_RECORD_LIMIT`] by default, see [`WhmcsSandbox::set_record_requests`]
//! and [`WhmcsSandbox::set_request_log_limit`]. Clients by email, and services and orders by
//! client, are indexed, so per-client calls stay O(log n) with 100,000+ records. Faults can
//! be injected per action: latency, an HTML HTTP 500, and "commit then drop the connection"
//! (the change is applied, then the TCP connection is closed with no reply at all).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use sandbox::whmcs::{Client, Fault, Product, WhmcsSandbox};
//! let whmcs = WhmcsSandbox::start().await?;
//! let client_id = whmcs.seed_client(Client::active("Ada", "ada@example.com"));
//! let pid = whmcs.seed_product(Product::new("VPS S"));
//! whmcs.inject_fault("AddOrder", Fault::CommitThenDrop, Some(1));
//! println!("{} {client_id} {pid}", whmcs.api_url());
//! # Ok(())
//! # }
//! ```

mod actions;
mod admin;
mod faults;
mod model;
pub mod php;
mod server;
mod state;

pub use faults::Fault;
pub use model::{Client, Order, Product, ProductConfigOption, ProductCustomField, Service};
pub use server::{API_PATH, RecordedRequest, WhmcsSandbox, WhmcsSandboxConfig};
