//! Integration tests of the JWT bearer flow against the sandbox's token endpoint, over real
//! HTTP on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_credentials;
mod single_flight;
mod support;
mod token_flow;
