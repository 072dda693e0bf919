//! Loopback emulators of the outside systems the provisioner talks to.
//!
//! Three real servers on `127.0.0.1`, each on an ephemeral port, seeded with one consistent
//! org; a provisioner pointed at them (`SF_LOGIN_URL`, `SF_PUBSUB_ENDPOINT`, `WHMCS_API_URL`)
//! cannot tell them from the real services:
//!
//! ```
//! use sandbox::pubsub::{PubSubConfig, PubSubSandbox};
//! use sandbox::salesforce::{SalesforceConfig, SalesforceSandbox};
//! use sandbox::seed::{Plan, seed};
//! use sandbox::whmcs::{Fault, WhmcsSandbox};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sf = SalesforceSandbox::start(SalesforceConfig::default()).await?;
//! let whmcs = WhmcsSandbox::start().await?;
//! let pubsub = PubSubSandbox::start(PubSubConfig::default()).await?;
//!
//! // Two customers with one Approved Order each: Accounts and Orders in Salesforce, clients
//! // and a product (custom field 12 holds the Salesforce Order Id) in WHMCS.
//! let seeded = seed(&sf, &whmcs, &Plan {
//!     customers: 2,
//!     orders_per_customer: 1,
//!     quantity: 1,
//!     billing_cycle: "monthly".into(),
//!     config_options: None,
//!     status: "Approved".into(),
//!     order_ref_field_id: 12,
//!     products: 1,
//! });
//! // What the Flow would publish when the Orders were approved.
//! for event in &seeded.events {
//!     pubsub.publish_order(sf_pubsub::DEFAULT_TOPIC, event)?;
//! }
//! let order = sf.order(&seeded.events[0].order_id).ok_or("not seeded")?;
//! assert_eq!(order.status, "Approved");
//!
//! // The WHMCS External API over real HTTP, as any client would call it.
//! let reply: serde_json::Value = reqwest::Client::new()
//!     .post(whmcs.api_url())
//!     .form(&[
//!         ("action", "GetClientsDetails"),
//!         ("identifier", whmcs.config().identifier.as_str()),
//!         ("secret", whmcs.config().secret.as_str()),
//!         ("clientid", "1"),
//!         ("responsetype", "json"),
//!     ])
//!     .send()
//!     .await?
//!     .json()
//!     .await?;
//! assert_eq!(reply["result"], "success");
//!
//! // Faults on purpose: the next AddOrder commits, then the connection drops unanswered.
//! whmcs.inject_fault("AddOrder", Fault::CommitThenDrop, Some(1));
//! # Ok(())
//! # }
//! ```
//!
//! The parts, each with fault injection for tests:
//!
//! - [`salesforce`]: OAuth token endpoint (JWT bearer), REST query and PATCH of Orders.
//! - [`whmcs`]: the WHMCS External API (`/includes/api.php`).
//! - [`pubsub`]: the Salesforce Pub/Sub API over gRPC.
//! - [`seed`]: a consistent org across the three (customers, Orders, WHMCS clients, events).
//!
//! The emulators keep secondary indexes (Orders by 15-character id, OrderItems by Order, WHMCS
//! services and orders by client, clients by email) so the provisioner's per-Order calls stay
//! O(log n) with 100,000+ records. What they record for tests (Salesforce PATCHes, WHMCS
//! requests) keeps the most recent [`DEFAULT_RECORD_LIMIT`] entries and can be switched off.

pub mod pubsub;
mod record_log;
pub mod salesforce;
pub mod seed;
pub mod whmcs;

pub use record_log::DEFAULT_RECORD_LIMIT;
