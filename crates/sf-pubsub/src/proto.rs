//! The Pub/Sub API's gRPC messages, client (`pub_sub_client`) and server (`pub_sub_server`).
//!
//! Generated from `proto/eventbus/v1/pubsub_api.proto` into `src/generated/eventbus.v1.rs` by
//! `cargo xtask codegen`; CI fails when that file is stale. Package `eventbus.v1`, service
//! `eventbus.v1.PubSub`.

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]

include!("generated/eventbus.v1.rs");
