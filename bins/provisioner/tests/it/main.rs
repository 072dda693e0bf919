//! `provisioner` binary tests: the real binary as a child process against in-process
//! sandboxes (Salesforce OAuth + REST, Pub/Sub gRPC, WHMCS).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

mod alerts;
mod backlog;
mod binary;
mod config;
mod connections;
mod crash;
mod demo;
mod deploy;
mod doctor;
mod dr;
mod events;
mod examples;
mod ids;
mod jobs;
mod logs;
mod metrics;
mod operate;
mod orders;
mod otlp;
mod processes;
mod proxy;
mod rates;
mod ref_fields;
mod settle;
mod shutdown;
mod status_api;
mod witness;
