//! The keyed hash chain: sealing records and verifying a sequence of them.
//!
//! `mac(n) = HMAC-SHA256(audit key, mac(n-1) || canonical_bytes(record n))`, with
//! `mac(0) = 32 zero bytes` ([`Mac::ZERO`]) and sequence numbers starting at 1. After a retention
//! purge the oldest remaining record chains to an [`Anchor`]: the sequence number and MAC of the
//! last removed record. These functions are pure, so every storage backend (memory, JSONL, the
//! database in provisioner-store) shares one definition of the chain.
//!
//! What the chain proves: without the key nobody can modify, insert, delete, reorder or
//! re-seal records (a plain SHA-256 chain could be recomputed; an HMAC chain cannot) without
//! [`Verifier`] naming the first bad sequence number. What it cannot prove on its own: that
//! the newest records were not cut off the end — compare [`ChainHead`] with a copy kept
//! elsewhere (a log line, a monitoring system) for that.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::canonical::write_canonical;
use crate::error::{Error, Result};
use crate::key::{AuditKey, Mac};
use crate::record::{Action, AuditRecord, DetailKey, NewAuditRecord, SealedRecord};

/// The end of a chain: the last record's sequence number and MAC (or the anchor's, when no
/// record follows it). The next record gets `seq + 1` and chains to `mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Sequence number of the last record (0 for an empty, never purged chain).
    pub seq: u64,
    /// Its MAC ([`Mac::ZERO`] for an empty, never purged chain).
    pub mac: Mac,
}

impl ChainHead {
    /// The head of an empty chain.
    pub const GENESIS: ChainHead = ChainHead {
        seq: 0,
        mac: Mac::ZERO,
    };

    /// The head after `record`.
    pub fn after(record: &SealedRecord) -> Self {
        ChainHead {
            seq: record.record.seq,
            mac: record.mac,
        }
    }

    /// Seals `new` as the record after this head (sequence number `self.seq + 1`).
    pub fn seal(&self, key: &AuditKey, new: NewAuditRecord) -> Result<SealedRecord> {
        let seq = self.seq.checked_add(1).ok_or(Error::SeqExhausted)?;
        Ok(seal(key, &self.mac, new.with_seq(seq)))
    }
}

/// Where the stored chain starts after retention purges: the last *removed* record's sequence
/// number and MAC, and how many records have been removed in total. The first remaining record
/// has sequence number `seq + 1` and chains to `mac`.
///
/// Since sequence numbers start at 1 and purges remove a prefix, `removed == seq` always.
/// Every purge also appends a [`Action::RETENTION_PURGE`] record carrying the anchor
/// ([`purge_record`]), and [`Verifier`] requires one for a non-genesis anchor, so an attacker
/// who deletes old rows and forges an anchor is detected too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// Sequence number of the last removed record (0: nothing ever removed).
    pub seq: u64,
    /// Its MAC ([`Mac::ZERO`] when nothing was removed).
    pub mac: Mac,
    /// Records removed in total.
    pub removed: u64,
}

impl Anchor {
    /// The anchor of a chain that was never purged.
    pub const GENESIS: Anchor = Anchor {
        seq: 0,
        mac: Mac::ZERO,
        removed: 0,
    };

    /// The anchor left when `record` is the last record removed.
    pub fn at(record: &SealedRecord) -> Self {
        Anchor {
            seq: record.record.seq,
            mac: record.mac,
            removed: record.record.seq,
        }
    }

    /// Whether nothing was ever purged.
    pub fn is_genesis(&self) -> bool {
        *self == Anchor::GENESIS
    }

    /// The chain head when no record follows the anchor.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            mac: self.mac,
        }
    }
}

/// The MAC of `record` chained after `prev`.
pub fn compute_mac(key: &AuditKey, prev: &Mac, record: &AuditRecord) -> Mac {
    let mut buf = Vec::with_capacity(160);
    write_canonical(record, &mut buf);
    key.chain_mac(prev, &buf)
}

/// Seals `record` (which already has its sequence number) after `prev`.
pub fn seal(key: &AuditKey, prev: &Mac, record: AuditRecord) -> SealedRecord {
    let mac = compute_mac(key, prev, &record);
    SealedRecord { record, mac }
}

/// The record every purge appends, atomically with the removal: action
/// [`Action::RETENTION_PURGE`], details `anchor_seq`, `anchor_mac` (the anchor *after* the
/// purge), `count` (removed by this purge) and `cutoff` (omitted when its year is outside
/// 0..=9999, which RFC 3339 cannot write). Storage backends use this so
/// [`Verifier`] can check the anchor.
pub fn purge_record(
    actor: crate::record::Actor,
    anchor: &Anchor,
    removed: u64,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<NewAuditRecord> {
    let mut record = NewAuditRecord::new(
        actor,
        Action::RETENTION_PURGE,
        crate::record::Outcome::Success,
    )
    .detail(DetailKey::AnchorSeq, anchor.seq.to_string())?
    .detail(DetailKey::AnchorMac, anchor.mac.to_hex())?
    .detail(DetailKey::Count, removed.to_string())?;
    // RFC 3339 has four-digit years; a cutoff outside them (a "purge everything" sentinel such
    // as `DateTime::MAX_UTC`) is left out rather than failing the purge.
    if (0..=9999).contains(&chrono::Datelike::year(&cutoff)) {
        record = record.detail(
            DetailKey::Cutoff,
            cutoff.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        )?;
    }
    Ok(record)
}

/// Why a sequence number does not verify (see [`Error::Tampered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tamper {
    /// The record's MAC is wrong: it was modified, inserted with a made-up MAC, re-sealed
    /// without the key (e.g. with plain SHA-256), or a wrong key is in use (then the first
    /// record fails).
    MacMismatch,
    /// The record is missing (deleted); the next stored record is `next_found`.
    Missing {
        /// Sequence number of the record found where this one was expected.
        next_found: u64,
    },
    /// The record appears after record `after` (records swapped, duplicated or inserted
    /// with a reused sequence number).
    OutOfOrder {
        /// The record it follows in storage.
        after: u64,
    },
    /// The oldest remaining record does not chain to the retention anchor (the anchor or the
    /// record was modified, or records the anchor says were removed are still present).
    AnchorMismatch,
    /// No `retention_purge` record vouches for the anchor (old records were deleted and an
    /// anchor forged, or the purge record was removed).
    AnchorUnattested,
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tamper::MacMismatch => f.write_str(
                "mac mismatch (record modified, inserted or re-sealed without the audit key, or wrong key)",
            ),
            Tamper::Missing { next_found } => write!(
                f,
                "record missing (deleted?): the next stored record is {next_found}"
            ),
            Tamper::OutOfOrder { after } => write!(
                f,
                "record out of order: stored after record {after} (swapped, duplicated or inserted)"
            ),
            Tamper::AnchorMismatch => {
                f.write_str("oldest record does not chain to the retention anchor")
            }
            Tamper::AnchorUnattested => {
                f.write_str("no retention_purge record vouches for the retention anchor")
            }
        }
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifySummary {
    /// Records checked.
    pub records: u64,
    /// Sequence number of the first record checked (`None`: none).
    pub first_seq: Option<u64>,
    /// Sequence number of the last record checked.
    pub last_seq: Option<u64>,
    /// The anchor verification started from.
    pub anchor: Anchor,
    /// The verified head (compare with a copy kept elsewhere to detect a truncated tail).
    pub head: ChainHead,
}

/// Streaming verifier: [`push`](Verifier::push) records in storage order, then
/// [`finish`](Verifier::finish). Stops at the first problem; a missing record is reported one
/// push late (when the following record shows whether it was missing or moved).
#[derive(Debug)]
pub struct Verifier<'k> {
    key: &'k AuditKey,
    anchor: Anchor,
    prev: ChainHead,
    /// `(expected, found)`: a record with a higher sequence number than expected was seen.
    pending_gap: Option<(u64, u64)>,
    records: u64,
    first_seq: Option<u64>,
    attested: bool,
    /// Started from a head verified earlier ([`Verifier::resume`]) rather than an anchor.
    resumed: bool,
    buf: Vec<u8>,
}

impl<'k> Verifier<'k> {
    /// A verifier for a chain starting at `anchor` ([`Anchor::GENESIS`] if never purged).
    pub fn new(key: &'k AuditKey, anchor: Anchor) -> Result<Self> {
        if anchor.removed != anchor.seq || (anchor.seq == 0 && anchor.mac != Mac::ZERO) {
            return Err(Error::Tampered {
                seq: anchor.seq.saturating_add(1),
                reason: Tamper::AnchorMismatch,
            });
        }
        Ok(Verifier {
            key,
            anchor,
            prev: anchor.head(),
            pending_gap: None,
            records: 0,
            first_seq: None,
            attested: anchor.is_genesis(),
            resumed: false,
            buf: Vec::with_capacity(256),
        })
    }

    /// A verifier that continues a chain already verified up to `head` (from a earlier
    /// [`VerifySummary::head`]): the records pushed must be those after it. Nothing before
    /// `head` is checked again, so a long-running service can check only what was appended
    /// since its last verification. The summary's `anchor` is then `head`, as the point where
    /// checking started.
    pub fn resume(key: &'k AuditKey, head: ChainHead) -> Self {
        Verifier {
            key,
            anchor: Anchor {
                seq: head.seq,
                mac: head.mac,
                removed: head.seq,
            },
            prev: head,
            pending_gap: None,
            records: 0,
            first_seq: None,
            attested: true,
            resumed: true,
            buf: Vec::with_capacity(256),
        }
    }

    fn expected(&self) -> u64 {
        self.prev.seq.saturating_add(1)
    }

    /// Checks the next stored record.
    pub fn push(&mut self, rec: &SealedRecord) -> Result<()> {
        let seq = rec.record.seq;
        let tampered = |seq, reason| Err(Error::Tampered { seq, reason });
        if let Some((expected, found)) = self.pending_gap {
            if (expected..found).contains(&seq) {
                return tampered(seq, Tamper::OutOfOrder { after: found });
            }
            return tampered(expected, Tamper::Missing { next_found: found });
        }
        let expected = self.expected();
        if seq > expected {
            self.pending_gap = Some((expected, seq));
            return Ok(());
        }
        let first_after_anchor = self.records == 0 && !self.resumed && !self.anchor.is_genesis();
        if seq < expected {
            if first_after_anchor {
                return tampered(seq, Tamper::AnchorMismatch);
            }
            return tampered(
                seq,
                Tamper::OutOfOrder {
                    after: self.prev.seq,
                },
            );
        }
        self.buf.clear();
        write_canonical(&rec.record, &mut self.buf);
        if !self
            .key
            .chain_mac_matches(&self.prev.mac, &self.buf, &rec.mac)
        {
            let reason = if first_after_anchor {
                Tamper::AnchorMismatch
            } else {
                Tamper::MacMismatch
            };
            return tampered(seq, reason);
        }
        if !self.attested
            && rec.record.action == Action::RETENTION_PURGE
            && rec.record.details.get(DetailKey::AnchorSeq)
                == Some(self.anchor.seq.to_string().as_str())
            && rec.record.details.get(DetailKey::AnchorMac)
                == Some(self.anchor.mac.to_hex().as_str())
        {
            self.attested = true;
        }
        self.records += 1;
        self.first_seq.get_or_insert(seq);
        self.prev = ChainHead::after(rec);
        Ok(())
    }

    /// Ends verification: reports a pending missing record or an unattested anchor, else the
    /// summary.
    pub fn finish(self) -> Result<VerifySummary> {
        if let Some((expected, found)) = self.pending_gap {
            return Err(Error::Tampered {
                seq: expected,
                reason: Tamper::Missing { next_found: found },
            });
        }
        if !self.attested {
            return Err(Error::Tampered {
                seq: self.anchor.seq,
                reason: Tamper::AnchorUnattested,
            });
        }
        Ok(VerifySummary {
            records: self.records,
            first_seq: self.first_seq,
            last_seq: (self.records > 0).then_some(self.prev.seq),
            anchor: self.anchor,
            head: self.prev,
        })
    }
}

/// Verifies `records` (in storage order) as the whole chain after `anchor`.
pub fn verify_records<'a>(
    key: &AuditKey,
    anchor: &Anchor,
    records: impl IntoIterator<Item = &'a SealedRecord>,
) -> Result<VerifySummary> {
    let mut v = Verifier::new(key, *anchor)?;
    for r in records {
        v.push(r)?;
    }
    v.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::record::{Actor, Outcome};

    fn key() -> AuditKey {
        AuditKey::from_bytes(&[0x42; 32]).unwrap()
    }

    fn chain(n: u64) -> Vec<SealedRecord> {
        let k = key();
        let mut head = ChainHead::GENESIS;
        (0..n)
            .map(|i| {
                let r = head
                    .seal(
                        &k,
                        NewAuditRecord::new(
                            Actor::ENGINE,
                            Action::STEP_SUCCEEDED,
                            Outcome::Success,
                        )
                        .detail(DetailKey::Attempt, i.to_string())
                        .unwrap(),
                    )
                    .unwrap();
                head = ChainHead::after(&r);
                r
            })
            .collect()
    }

    fn err(records: &[SealedRecord]) -> (u64, Tamper) {
        match verify_records(&key(), &Anchor::GENESIS, records) {
            Err(Error::Tampered { seq, reason }) => (seq, reason),
            other => panic!("expected tampering, got {other:?}"),
        }
    }

    #[test]
    fn genesis_uses_zero_prev_and_seq_one() {
        let c = chain(1);
        assert_eq!(c[0].record.seq, 1);
        assert_eq!(c[0].mac, compute_mac(&key(), &Mac::ZERO, &c[0].record));
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let s = verify_records(&key(), &Anchor::GENESIS, &c).unwrap();
        assert_eq!((s.records, s.first_seq, s.last_seq), (5, Some(1), Some(5)));
        assert_eq!(s.head, ChainHead::after(&c[4]));
        let empty = verify_records(&key(), &Anchor::GENESIS, &[]).unwrap();
        assert_eq!(
            (empty.records, empty.first_seq, empty.last_seq),
            (0, None, None)
        );
    }

    #[test]
    fn wrong_key_fails_at_first_record() {
        let c = chain(3);
        let other = AuditKey::from_bytes(&[0x43; 32]).unwrap();
        assert!(matches!(
            verify_records(&other, &Anchor::GENESIS, &c),
            Err(Error::Tampered {
                seq: 1,
                reason: Tamper::MacMismatch
            })
        ));
    }

    #[test]
    fn classifies_deletion_swap_and_duplicate() {
        let c = chain(6);
        let mut deleted = c.clone();
        deleted.remove(2);
        assert_eq!(err(&deleted), (3, Tamper::Missing { next_found: 4 }));

        let mut last_deleted_then_end = c.clone();
        last_deleted_then_end.remove(4);
        assert_eq!(
            err(&last_deleted_then_end),
            (5, Tamper::Missing { next_found: 6 })
        );

        let mut swapped = c.clone();
        swapped.swap(2, 3);
        assert_eq!(err(&swapped), (3, Tamper::OutOfOrder { after: 4 }));

        let mut dup = c.clone();
        dup.insert(3, c[2].clone());
        assert_eq!(err(&dup), (3, Tamper::OutOfOrder { after: 3 }));
    }

    #[test]
    fn resuming_checks_only_what_follows_the_trusted_head() {
        let (c, k) = (chain(6), key());
        let head = ChainHead::after(&c[2]);
        let resume = |records: &[SealedRecord]| {
            let mut v = Verifier::resume(&k, head);
            records.iter().try_for_each(|r| v.push(r))?;
            v.finish()
        };
        let s = resume(&c[3..]).unwrap();
        assert_eq!(
            (s.records, s.first_seq, s.head),
            (3, Some(4), ChainHead::after(&c[5]))
        );
        // Nothing appended since: the head stays.
        assert_eq!(resume(&[]).unwrap().head, head);
        // An edited record after the head is a MAC mismatch, not an anchor problem.
        let mut edited = c[3..].to_vec();
        edited[1].record.outcome = Outcome::Failed;
        assert!(matches!(
            resume(&edited),
            Err(Error::Tampered {
                seq: 5,
                reason: Tamper::MacMismatch
            })
        ));
        // The first record after the head removed.
        assert!(matches!(
            resume(&c[4..]),
            Err(Error::Tampered {
                seq: 4,
                reason: Tamper::Missing { next_found: 5 }
            })
        ));
        // A head from another chain: its successor does not chain to it.
        let other = ChainHead {
            seq: 3,
            mac: Mac([7; 32]),
        };
        let mut v = Verifier::resume(&k, other);
        assert!(matches!(
            v.push(&c[3]),
            Err(Error::Tampered {
                seq: 4,
                reason: Tamper::MacMismatch
            })
        ));
    }

    #[test]
    fn anchor_must_be_consistent_and_attested() {
        let c = chain(4);
        // Drop the first two records and forge an anchor from record 2: chains, but unattested.
        let forged = Anchor::at(&c[1]);
        assert!(matches!(
            verify_records(&key(), &forged, &c[2..]),
            Err(Error::Tampered {
                seq: 2,
                reason: Tamper::AnchorUnattested
            })
        ));
        // An anchor whose count disagrees with its seq.
        let bad = Anchor {
            removed: 1,
            ..forged
        };
        assert!(Verifier::new(&key(), bad).is_err());
        // Records the anchor claims were removed are still there.
        assert!(matches!(
            verify_records(&key(), &forged, &c[1..]),
            Err(Error::Tampered {
                seq: 2,
                reason: Tamper::AnchorMismatch
            })
        ));
    }

    #[test]
    fn purge_record_attests_the_anchor() {
        let k = key();
        let c = chain(4);
        let anchor = Anchor::at(&c[1]);
        let head = ChainHead::after(&c[3]);
        let p = head
            .seal(
                &k,
                purge_record(Actor::RETENTION, &anchor, 2, chrono::Utc::now()).unwrap(),
            )
            .unwrap();
        let mut rest = c[2..].to_vec();
        rest.push(p);
        let s = verify_records(&k, &anchor, &rest).unwrap();
        assert_eq!((s.first_seq, s.last_seq), (Some(3), Some(5)));
        // The same purge record does not vouch for a different anchor.
        let other = Anchor::at(&c[2]);
        assert!(verify_records(&k, &other, &rest[1..]).is_err());
    }

    #[test]
    fn seal_refuses_to_wrap_the_sequence() {
        let head = ChainHead {
            seq: u64::MAX,
            mac: Mac::ZERO,
        };
        let r = head.seal(
            &key(),
            NewAuditRecord::new(Actor::ENGINE, Action::STEP_SUCCEEDED, Outcome::Success),
        );
        assert!(matches!(r, Err(Error::SeqExhausted)));
    }
}
