//! Salesforce Pub/Sub API client: subscribe to platform events, decode them, publish.
//!
//! ```no_run
//! # async fn example(tokens: std::sync::Arc<dyn sf_auth::TokenSource>) -> sf_pubsub::Result<()> {
//! use sf_pubsub::{ClientConfig, Message, OrderProvisionRequested, PubSubClient, SubscribeConfig};
//!
//! let client = PubSubClient::new(ClientConfig::new("https://api.pubsub.salesforce.com:7443"), tokens)?;
//! let mut events = client.subscribe::<OrderProvisionRequested>(SubscribeConfig::new(
//!     "/event/OrderProvisionRequested__e",
//! ));
//! while let Some(message) = events.next().await {
//!     match message? {
//!         Message::Event(event) => match event.record {
//!             Ok(order) => println!("order {} of {}", order.order_id, order.customer_number),
//!             Err(bad) => eprintln!("bad event {}: {bad}", event.event_id),
//!         },
//!         Message::Keepalive { latest_replay_id } => { /* persist latest_replay_id */ }
//!         Message::ReplayReset { .. } => { /* events may have been missed: reconcile */ }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! What it takes care of (facts in `shared/interop/salesforce.md`):
//!
//! - [`proto`]: the gRPC messages, client and server generated from
//!   `proto/eventbus/v1/pubsub_api.proto` by `cargo xtask codegen` (committed, never hand-edited).
//! - [`PubSubClient`]: the `accesstoken`, `instanceurl`, `tenantid` and `x-client-trace-id`
//!   metadata on every call, a re-mint of the token on `UNAUTHENTICATED`, a schema cache that asks
//!   `GetSchema` once per schema id, `GetTopic` and `Publish`.
//! - [`Subscription`]: the engine behind [`PubSubClient::subscribe`]: credit (`num_requested`)
//!   topped up before it runs out and only while the consumer keeps up, reconnects with backoff
//!   and jitter resuming after the last event handed over, a watchdog for silent streams, and the
//!   trailer `error-code` classification.
//! - [`WriterSchema`] and [`Record`]: Avro decoding with each event's own writer schema; a
//!   compiled fast path for [`OrderProvisionRequested`] and the generic apache-avro path
//!   ([`GenericRecord`]), both strict about truncated, garbage and trailing bytes.

mod avro;
mod client;
mod error;
mod record;
mod replay;
mod subscribe;

pub mod proto;

pub use avro::WriterSchema;
pub use client::{ClientConfig, PubSubApi, PubSubClient, Published};
pub use error::{Action, Error, Result};
pub use record::{GenericRecord, OrderProvisionRequested, Record};
pub use replay::ReplayStart;
pub use subscribe::{Event, Message, SubscribeConfig, Subscription};

/// The platform event topic of DESIGN §3.
pub const DEFAULT_TOPIC: &str = "/event/OrderProvisionRequested__e";

/// Most credit one Subscribe stream may have outstanding (interop §3.1).
pub const MAX_BATCH: u32 = 100;
