//! The `AuditLog` port, and verification of a whole log through it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::chain::{Anchor, ChainHead, Verifier, VerifySummary};
use crate::error::Result;
use crate::key::AuditKey;
use crate::record::{Actor, NewAuditRecord, SealedRecord};

/// Records per [`AuditLog::read_range`] call made by [`verify`].
pub const VERIFY_PAGE: usize = 1000;

/// What a purge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// Records removed by this purge (0 if none was old enough).
    pub removed: u64,
    /// The anchor after the purge.
    pub anchor: Anchor,
    /// The `retention_purge` record appended in the same step.
    pub record: SealedRecord,
}

/// An append-only, tamper-evident audit log.
///
/// Implementations serialise appends: however many tasks append at once, the records form one
/// chain (sequence numbers strictly +1, each chained to the previous record's MAC). Records
/// are returned in storage order.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Seals `record` after the current head, stores it, and returns it with its sequence
    /// number and MAC. When this returns `Ok`, the record is stored.
    async fn append(&self, record: NewAuditRecord) -> Result<SealedRecord>;

    /// Up to `limit` stored records, in storage order, starting with the first whose sequence
    /// number is `>= from_seq`.
    async fn read_range(&self, from_seq: u64, limit: usize) -> Result<Vec<SealedRecord>>;

    /// The last record's sequence number and MAC, or the anchor's when no record is stored.
    async fn head(&self) -> Result<ChainHead>;

    /// Where the stored chain starts ([`Anchor::GENESIS`] if never purged).
    async fn anchor(&self) -> Result<Anchor>;

    /// Removes the oldest records, those with `at < older_than` — precisely, the longest
    /// *prefix* of the chain whose records are all older than the cutoff, so the rest stays
    /// one unbroken chain even if clocks went backwards — moves the anchor to the last removed
    /// record, and appends a `retention_purge` record ([`crate::purge_record`]) by `actor`,
    /// all in one atomic step. A purge that removes nothing still appends its record.
    async fn purge(&self, older_than: DateTime<Utc>, actor: Actor) -> Result<PurgeReport>;
}

/// Verifies every stored record of `log` from its anchor, reading pages of [`VERIFY_PAGE`].
///
/// Returns the summary, or [`crate::Error::Tampered`] naming the first bad sequence number and
/// why. Run it while no purge is in progress (a concurrent purge moves the start of the chain
/// and shows up as a missing record); concurrent appends are fine.
pub async fn verify<L: AuditLog + ?Sized>(log: &L, key: &AuditKey) -> Result<VerifySummary> {
    let anchor = log.anchor().await?;
    let verifier = Verifier::new(key, anchor)?;
    verify_pages(log, verifier, anchor.seq).await
}

/// Verifies the records stored after `head`, a head an earlier verification returned
/// ([`VerifySummary::head`]), and returns the new head. Records up to `head` are trusted as
/// verified: use it to keep checking a growing chain, and [`verify`] now and then for all of it.
///
/// A record after `head` that was changed, removed or reordered fails with
/// [`crate::Error::Tampered`]; so does a chain whose records after `head` were purged (run
/// [`verify`] then).
pub async fn verify_after<L: AuditLog + ?Sized>(
    log: &L,
    key: &AuditKey,
    head: ChainHead,
) -> Result<VerifySummary> {
    verify_pages(log, Verifier::resume(key, head), head.seq).await
}

async fn verify_pages<L: AuditLog + ?Sized>(
    log: &L,
    mut verifier: Verifier<'_>,
    after: u64,
) -> Result<VerifySummary> {
    let mut from = after.saturating_add(1);
    loop {
        let page = log.read_range(from, VERIFY_PAGE).await?;
        let Some(last) = page.last() else { break };
        let next = last.record.seq.saturating_add(1);
        for r in &page {
            verifier.push(r)?;
        }
        if page.len() < VERIFY_PAGE || next <= from {
            break;
        }
        from = next;
    }
    verifier.finish()
}
