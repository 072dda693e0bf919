//! Integration tests of the audit crate: tamper detection on both backends, retention,
//! concurrency, the JSONL file format, and secret hygiene.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod concurrency;
mod jsonl;
mod mock;
mod purge;
mod secrets;
mod tamper;
