//! Loopback emulators of the outside systems the provisioner talks to.
//!
//! Each part is a real server on `127.0.0.1` with an ephemeral port, faithful to the wire
//! facts in `shared/interop/`, with fault injection for tests:
//!
//! - [`salesforce`]: OAuth token endpoint (JWT bearer), REST query and PATCH of Orders.
//! - [`whmcs`]: the WHMCS External API (`/includes/api.php`).
//! - [`pubsub`]: the Salesforce Pub/Sub API over gRPC.
//! - [`seed`]: a consistent org across the three (customers, Orders, WHMCS clients, events).

pub mod pubsub;
pub mod salesforce;
pub mod seed;
pub mod whmcs;
