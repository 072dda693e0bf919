//! Helpers for the workspace's tests and benches, each defined once.
//!
//! **A dev-dependency only**: no crate may take `test-support` as a normal dependency, and it
//! depends on no crate of this workspace that uses it (only third-party crates and the leaf
//! `sf-auth`), so it can serve every crate's tests without a cycle. What it holds:
//!
//! - [`keys`]: the fixed test-only RSA key pairs (no shipped crate carries a private key).
//! - [`pg`]: a uniquely named PostgreSQL database for one test or bench run, dropped at the end.
//! - [`mutation`]: byte-level edits of valid inputs, for the parsers' robustness properties.
//! - [`logs`]: a `tracing` subscriber that records every event at TRACE, for log-canary tests.
//! - [`prometheus`]: a strict parser of the Prometheus text exposition format (`/metrics`).
//! - [`process`]: child processes with captured output, signals, free ports.
//! - [`sf_sandbox`]: the `sf-sandbox` binary as a child process and the environment it prints.
//! - [`tls`]: self-signed certificates made at run time, and a client that trusts one.
//!
//! Helpers panic on failure (they are test code): a panic names what failed.

#![forbid(unsafe_code)]
// Test code: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod keys;
pub mod logs;
pub mod mutation;
pub mod pg;
pub mod process;
pub mod prometheus;
pub mod sf_sandbox;
pub mod tls;
