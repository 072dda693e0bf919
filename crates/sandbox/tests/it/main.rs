//! Integration tests of the sandboxes over their HTTP APIs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod identity;
mod scale;
mod stats;
mod whmcs_concurrency;
