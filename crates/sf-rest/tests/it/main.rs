//! Integration tests of the REST client against the sandbox over real HTTP on 127.0.0.1,
//! with the real JWT bearer token source.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod concurrency;
mod faults;
mod leaks;
mod orders;
mod support;
