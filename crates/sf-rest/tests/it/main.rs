//! Integration tests of the REST client against the sandbox over real HTTP on 127.0.0.1,
//! with the real JWT bearer token source (and, in `token_source`, a mocked one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod concurrency;
mod describe;
mod faults;
mod intake;
mod leaks;
mod orders;
mod support;
mod token_source;
