//! Salesforce Pub/Sub API client: subscribe to platform events, decode them, publish.
//!
//! Subscribing to `OrderProvisionRequested__e`, here against the loopback Pub/Sub server of
//! the `sandbox` crate (a real gRPC server on `127.0.0.1`; a dev-dependency only, as `sandbox`
//! itself builds its server on this crate's generated code). Against Salesforce, the endpoint
//! is `https://api.pubsub.salesforce.com:7443` and the tokens come from `sf_auth::JwtBearer`.
//!
//! ```
//! use std::sync::Arc;
//!
//! use sandbox::pubsub::{PubSubConfig, PubSubSandbox, SANDBOX_ACCESS_TOKEN, SANDBOX_ORG_ID};
//! use secrecy::SecretString;
//! use sf_auth::StaticToken;
//! use sf_pubsub::{
//!     ClientConfig, DEFAULT_TOPIC, Message, OrderProvisionRequested, PubSubClient, ReplayStart,
//!     SubscribeConfig,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The Flow's side: one approved Order published on the channel.
//! let server = PubSubSandbox::start(PubSubConfig::default()).await?;
//! server.publish_order(DEFAULT_TOPIC, &OrderProvisionRequested {
//!     created_date: 1_764_374_400_000,
//!     created_by_id: "005xx000001X83aAAC".to_owned(),
//!     order_id: "801xx000003DIsYAAW".to_owned(),
//!     customer_number: "C-1001".to_owned(),
//!     account_id: None,
//! })?;
//!
//! // The subscriber's side (SF_PUBSUB_ENDPOINT; an `http://` endpoint is plaintext).
//! let tokens = Arc::new(StaticToken::new(
//!     SecretString::from(SANDBOX_ACCESS_TOKEN),
//!     "https://sandbox.my.salesforce.com",
//!     SANDBOX_ORG_ID,
//! ));
//! let client = PubSubClient::new(ClientConfig::new(server.endpoint()), tokens)?;
//! let mut events = client.subscribe::<OrderProvisionRequested>(
//!     SubscribeConfig::new(DEFAULT_TOPIC).start(ReplayStart::Earliest),
//! );
//! while let Some(message) = events.next().await {
//!     match message? {
//!         Message::Event(event) => {
//!             // Deduplicate by `event.event_id` (never by replay id); store
//!             // `event.replay_id` as the checkpoint in the same transaction as the event.
//!             let order = event.record?; // `Err`: a bad event, dead-letter it and go on
//!             assert_eq!(order.order_id, "801xx000003DIsYAAW");
//!             assert_eq!(order.customer_number, "C-1001");
//!             break;
//!         }
//!         Message::Keepalive { latest_replay_id } => {
//!             // Nothing new: persist `latest_replay_id` as the checkpoint.
//!             let _ = latest_replay_id;
//!         }
//!         Message::ReplayReset { .. } => {
//!             // The stored position was rejected: events may have been missed, reconcile.
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! What it takes care of (the Pub/Sub API's documented behaviour, pinned by this crate's wire
//! tests and emulated by `sandbox::pubsub`):
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
#[cfg(feature = "mock")]
pub use client::MockPubSubApi;
pub use client::{ClientConfig, PubSubApi, PubSubClient, Published};
pub use error::{Action, Error, Result};
pub use record::{GenericRecord, OrderProvisionRequested, Record};
pub use replay::ReplayStart;
pub use subscribe::{Event, Message, SubscribeConfig, Subscription};

/// The platform event topic the provisioner subscribes to by default
/// (`SF_PROVISION_EVENT_CHANNEL`).
pub const DEFAULT_TOPIC: &str = "/event/OrderProvisionRequested__e";

/// Most credit one Subscribe stream may have outstanding: the Pub/Sub API caps
/// `num_requested` at 100 events.
pub const MAX_BATCH: u32 = 100;
