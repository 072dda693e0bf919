//! Integration tests of the security crate: a real loopback webhook receiver, the allowlist
//! and the rate limiter through the public API only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod allowlist;
mod limiter;
mod support;
mod webhook;
