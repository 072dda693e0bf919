//! Integration tests of the status API: a real server on 127.0.0.1 with an ephemeral port, a
//! real SQLite store in a temporary directory (or a mockall store where a failure is needed),
//! and a real HTTP client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fuzz;
mod guards;
mod probes;
mod status;
mod support;
mod tls;
