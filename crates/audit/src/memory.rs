//! In-memory audit log, for tests and the demo.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::chain::{Anchor, ChainHead, purge_record};
use crate::error::{Error, Result};
use crate::key::AuditKey;
use crate::log::{AuditLog, PurgeReport};
use crate::record::{Actor, NewAuditRecord, SealedRecord};

/// An [`AuditLog`] kept in memory. Appends are serialised by a mutex (never held across an
/// `.await`).
pub struct MemoryAuditLog {
    key: AuditKey,
    state: Mutex<State>,
}

struct State {
    anchor: Anchor,
    head: ChainHead,
    records: VecDeque<SealedRecord>,
}

impl std::fmt::Debug for MemoryAuditLog {
    /// The key's fingerprint and the chain's extent, not the records.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("MemoryAuditLog");
        d.field("key", &self.key);
        if let Ok(st) = self.state.lock() {
            d.field("anchor_seq", &st.anchor.seq)
                .field("head_seq", &st.head.seq)
                .field("records", &st.records.len());
        }
        d.finish()
    }
}

impl MemoryAuditLog {
    /// An empty log sealing with `key`.
    pub fn new(key: AuditKey) -> Self {
        MemoryAuditLog {
            key,
            state: Mutex::new(State {
                anchor: Anchor::GENESIS,
                head: ChainHead::GENESIS,
                records: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| Error::Poisoned)
    }

    /// A copy of the anchor and all records (for tests and exports).
    pub fn snapshot(&self) -> Result<(Anchor, Vec<SealedRecord>)> {
        let st = self.lock()?;
        Ok((st.anchor, st.records.iter().cloned().collect()))
    }

    /// Number of stored records.
    pub fn len(&self) -> Result<usize> {
        Ok(self.lock()?.records.len())
    }

    /// Whether no record is stored.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

#[async_trait]
impl AuditLog for MemoryAuditLog {
    async fn append(&self, record: NewAuditRecord) -> Result<SealedRecord> {
        let mut st = self.lock()?;
        let sealed = st.head.seal(&self.key, record)?;
        st.head = ChainHead::after(&sealed);
        st.records.push_back(sealed.clone());
        Ok(sealed)
    }

    async fn read_range(&self, from_seq: u64, limit: usize) -> Result<Vec<SealedRecord>> {
        let st = self.lock()?;
        // Records are contiguous here, so the position follows from the first sequence number.
        let first = st.anchor.seq.saturating_add(1);
        let skip = usize::try_from(from_seq.saturating_sub(first)).unwrap_or(usize::MAX);
        Ok(st.records.iter().skip(skip).take(limit).cloned().collect())
    }

    async fn head(&self) -> Result<ChainHead> {
        Ok(self.lock()?.head)
    }

    async fn anchor(&self) -> Result<Anchor> {
        Ok(self.lock()?.anchor)
    }

    async fn purge(&self, older_than: DateTime<Utc>, actor: Actor) -> Result<PurgeReport> {
        let mut st = self.lock()?;
        let n = st
            .records
            .iter()
            .take_while(|r| r.record.at < older_than)
            .count();
        let anchor = match n.checked_sub(1).and_then(|i| st.records.get(i)) {
            Some(last_removed) => Anchor::at(last_removed),
            None => st.anchor,
        };
        let removed = u64::try_from(n).unwrap_or(u64::MAX);
        let sealed = st.head.seal(
            &self.key,
            purge_record(actor, &anchor, removed, older_than)?,
        )?;
        st.records.drain(..n);
        st.anchor = anchor;
        st.head = ChainHead::after(&sealed);
        st.records.push_back(sealed.clone());
        Ok(PurgeReport {
            removed,
            anchor,
            record: sealed,
        })
    }
}
