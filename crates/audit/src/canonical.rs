//! The canonical bytes of a record: the input of its chain MAC.
//!
//! Stored MACs depend on this encoding, so it is frozen: a change needs a new magic
//! (`ppaudit2`) and code that still verifies `ppaudit1` records. Version 1 is, in order:
//!
//! | field | encoding |
//! |---|---|
//! | magic | the 8 bytes `ppaudit1` |
//! | `seq` | u64, big-endian |
//! | `at` | i64 microseconds since 1970-01-01T00:00:00Z, big-endian (two's complement) |
//! | `actor` | string |
//! | `action` | string |
//! | `order_id` | optional string |
//! | `customer_number` | optional string |
//! | `outcome` | string (`success`, `refused`, `failed`, `retry`, `unknown`) |
//! | `details` | u32 big-endian entry count, then per entry in ascending byte order of the key name: key name as string, value as string |
//!
//! where *string* = u32 big-endian byte length followed by the UTF-8 bytes, and
//! *optional string* = the byte `0x00` when absent, or `0x01` followed by a string.
//!
//! Every field is length-prefixed or fixed-width, so no two different records have the same
//! encoding. The JSON form used for storage plays no part in the MAC, so JSON formatting
//! (key order, whitespace, timestamp style) can differ between writers without breaking
//! verification.

use crate::record::AuditRecord;

/// The first 8 bytes of every version-1 canonical encoding.
pub const CANONICAL_MAGIC: &[u8; 8] = b"ppaudit1";

/// The canonical bytes of `record` (see the module docs).
pub fn canonical_bytes(record: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_canonical(record, &mut out);
    out
}

/// Appends the canonical bytes of `record` to `out`.
pub fn write_canonical(record: &AuditRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(CANONICAL_MAGIC);
    out.extend_from_slice(&record.seq.to_be_bytes());
    out.extend_from_slice(&record.at.timestamp_micros().to_be_bytes());
    put_str(out, record.actor.as_str());
    put_str(out, record.action.as_str());
    put_opt(out, record.order_id.as_ref().map(|s| s.as_str()));
    put_opt(out, record.customer_number.as_ref().map(|s| s.as_str()));
    put_str(out, record.outcome.as_str());
    // Details iterate in key-name order (DetailKey's Ord is by name).
    put_len(out, record.details.len());
    for (k, v) in record.details.iter() {
        put_str(out, k.as_str());
        put_str(out, v);
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Every field is validated to far below 4 GiB; saturate rather than wrap if that ever changed.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use chrono::{DateTime, Utc};

    use super::*;
    use crate::record::{Action, Actor, DetailKey, NewAuditRecord, Outcome};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn sample() -> AuditRecord {
        let at: DateTime<Utc> = "2026-01-02T03:04:05.678901Z".parse().unwrap();
        NewAuditRecord::new(Actor::ENGINE, Action::STEP_FAILED, Outcome::Retry)
            .at(at)
            .order_id("801A")
            .unwrap()
            .detail(DetailKey::Step, "add_order")
            .unwrap()
            .detail(DetailKey::Attempt, "2")
            .unwrap()
            .with_seq(7)
    }

    /// Frozen: if this changes, every stored MAC breaks.
    #[test]
    fn encoding_is_frozen() {
        let expected = concat!(
            "7070617564697431", // ppaudit1
            "0000000000000007", // seq 7
            "0006475ef6574f35", // at, micros
            "00000006",
            "656e67696e65", // engine
            "0000000b",
            "737465705f6661696c6564", // step_failed
            "01",
            "00000004",
            "38303141", // Some("801A")
            "00",       // None
            "00000005",
            "7265747279", // retry
            "00000002",   // 2 details, by key name:
            "00000007",
            "617474656d7074",
            "00000001",
            "32", // attempt=2
            "00000004",
            "73746570",
            "00000009",
            "6164645f6f72646572", // step=add_order
        );
        assert_eq!(hex(&canonical_bytes(&sample())), expected);
    }

    /// Frozen chain MACs of the sample, computed independently (Python `hmac` over the bytes
    /// above): `HMAC-SHA256(key = 0x42 * 32, prev || canonical)`.
    #[test]
    fn chain_mac_is_frozen() {
        use crate::chain::compute_mac;
        use crate::key::{AuditKey, Mac};
        let key = AuditKey::from_bytes(&[0x42; 32]).unwrap();
        assert_eq!(
            compute_mac(&key, &Mac::ZERO, &sample()).to_hex(),
            "8bd9c3bf27af2d8e2749080c920b073a01f0b8d961b62e00168373257f1696c3"
        );
        let prev: Mac = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
            .parse()
            .unwrap();
        assert_eq!(
            compute_mac(&key, &prev, &sample()).to_hex(),
            "e64c7c9aef55d8153f669ecef94169b92235396168d9250fc7adcb10fe711095"
        );
    }

    #[test]
    fn optional_fields_are_unambiguous() {
        // order_id = "x", customer = None  vs  order_id = None, customer = "x"
        let base = NewAuditRecord::new(Actor::ENGINE, Action::STEP_FAILED, Outcome::Retry);
        let a = base.clone().order_id("x").unwrap().with_seq(1);
        let b = base.customer_number("x").unwrap().with_seq(1);
        assert_ne!(canonical_bytes(&a), canonical_bytes(&b));
    }

    #[test]
    fn every_field_changes_the_bytes() {
        let base = sample();
        let bytes = canonical_bytes(&base);
        let mut variants = Vec::new();
        let mut r = base.clone();
        r.seq += 1;
        variants.push(r);
        let mut r = base.clone();
        r.at += chrono::TimeDelta::microseconds(1);
        variants.push(r);
        let mut r = base.clone();
        r.actor = Actor::WORKER;
        variants.push(r);
        let mut r = base.clone();
        r.action = Action::STEP_SUCCEEDED;
        variants.push(r);
        let mut r = base.clone();
        r.order_id = None;
        variants.push(r);
        let mut r = base.clone();
        r.customer_number = Some(crate::record::SubjectId::new("C1").unwrap());
        variants.push(r);
        let mut r = base.clone();
        r.outcome = Outcome::Failed;
        variants.push(r);
        let mut r = base;
        r.details.insert(DetailKey::Attempt, "3").unwrap();
        variants.push(r);
        for v in variants {
            assert_ne!(canonical_bytes(&v), bytes, "{v:?}");
        }
    }
}
