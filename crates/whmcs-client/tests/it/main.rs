//! Integration tests of the WHMCS client against the sandbox's WHMCS emulator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod actions;
mod catalog;
mod errors;
mod faults;
mod mock;
mod robust;
mod roundtrip;
mod secrets;
mod support;
