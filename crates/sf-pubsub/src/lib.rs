#![doc = include_str!("../README.md")]

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
