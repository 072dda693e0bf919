//! Integration tests of field-crypto: published vectors, round trips, tampering, rotation,
//! and redaction of secrets in formatting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod redaction;
mod rotation;
mod roundtrip;
mod tamper;
mod vectors;

use chrono::{DateTime, TimeZone, Utc};
use field_crypto::{Keyring, MasterKey};

/// A fixed raw master key for tests (not used anywhere else).
pub(crate) const TEST_MASTER: &str = "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=";

pub(crate) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

pub(crate) fn keyring() -> Keyring {
    Keyring::create(&MasterKey::from_config(TEST_MASTER).unwrap(), t0()).unwrap()
}
