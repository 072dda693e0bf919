//! Shared helpers.

use audit::{
    Action, Actor, AuditKey, AuditLog, DetailKey, NewAuditRecord, Outcome, SealedRecord, Tamper,
};
use chrono::{DateTime, TimeDelta, Utc};

/// Printable key bytes, so a leak of the raw bytes would be visible as text.
pub(crate) const KEY_BYTES: &[u8; 32] = b"K3y-bytes:0123456789abcdefghijkl";

pub(crate) fn key() -> AuditKey {
    AuditKey::from_bytes(KEY_BYTES).unwrap()
}

pub(crate) fn t0() -> DateTime<Utc> {
    "2020-01-01T00:00:00Z".parse().unwrap()
}

/// Record number `i` (1-based), stamped `i` days after [`t0`].
pub(crate) fn rec(i: u64) -> NewAuditRecord {
    NewAuditRecord::new(Actor::ENGINE, Action::STEP_SUCCEEDED, Outcome::Success)
        .at(t0() + TimeDelta::days(i64::try_from(i).unwrap()))
        .order_id(format!("801xx{i:013}"))
        .unwrap()
        .customer_number(format!("C-{}", 1000 + i % 7))
        .unwrap()
        .detail(DetailKey::Step, "accept_order")
        .unwrap()
        .detail(DetailKey::Attempt, (i % 3 + 1).to_string())
        .unwrap()
        .detail(DetailKey::ServiceIds, format!("{},{}", i * 10, i * 10 + 1))
        .unwrap()
}

/// Appends records 1..=n.
pub(crate) async fn fill<L: AuditLog + ?Sized>(log: &L, n: u64) -> Vec<SealedRecord> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(log.append(rec(i)).await.unwrap());
    }
    out
}

/// The `(seq, reason)` of a verification that must fail with tampering.
pub(crate) fn tampered<T: std::fmt::Debug>(r: audit::Result<T>) -> (u64, Tamper) {
    match r {
        Err(audit::Error::Tampered { seq, reason }) => (seq, reason),
        other => panic!("expected Error::Tampered, got {other:?}"),
    }
}
