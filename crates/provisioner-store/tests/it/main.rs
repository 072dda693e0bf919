//! Integration tests of provisioner-store on a real SQLite file and the local PostgreSQL.
//!
//! PostgreSQL: `DATABASE_URL_TEST` (default `postgres://postgres@127.0.0.1:5432/test`) is the
//! admin connection; every test creates its own database with a unique name and drops it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod alerts_and_rates;
mod atomic_audit;
mod audit_chain;
mod batches;
mod dead_letters;
mod intake;
mod jobs;
mod keys;
mod lifecycle;
mod operator_reads;
mod order_requests;
