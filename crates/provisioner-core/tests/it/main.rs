//! The engine against the real loopback sandboxes (Salesforce REST + OAuth, WHMCS) and a real
//! store, with faults injected everywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod faults;
mod no_lost_order;
mod order_intake;
mod settle;
mod slots;
mod stack;
mod subscriber;
