//! Loopback emulators of the outside systems the provisioner talks to.
//!
//! Each part is a real server on `127.0.0.1` with an ephemeral port, faithful to the wire
//! facts in `shared/interop/`, with fault injection for tests:
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
