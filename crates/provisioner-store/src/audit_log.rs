//! [`audit::AuditLog`] on the store's database: one sealed record per row.
//!
//! Records are sealed by the one transaction API ([`crate::tx`]): a standalone append is a
//! unit with one audit record; a job write carries its records in its own unit. Purges keep
//! an anchor, in one transaction (serialised across PostgreSQL instances by an advisory lock).
//! Each row also carries the record's Order Id, so an Order's records are read by index.

use async_trait::async_trait;
use audit::{Actor, Anchor, AuditLog, ChainHead, NewAuditRecord, PurgeReport, SealedRecord};
use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::sql::{Backend, SqlStore};
use crate::tx::{AUDIT_LOCK_KEY, Arg, SQL_LAST_RECORD, Tx, decode_record, read_anchor, read_head};

/// A store error as the audit port's error (an audit failure stays what it is).
fn to_audit(e: Error) -> audit::Error {
    match e {
        Error::Audit(inner) => *inner,
        other => audit::Error::Backend {
            op: "audit",
            source: Box::new(other),
        },
    }
}

fn seq_arg(seq: u64) -> Arg {
    Arg::Int(i64::try_from(seq).unwrap_or(i64::MAX))
}

/// Deletes every record older than `older_than` (the longest such prefix), moves the anchor
/// to the last one removed, and returns the anchor and how many went.
async fn purge_prefix(tx: &mut dyn Tx, older_than: DateTime<Utc>) -> crate::Result<(Anchor, u64)> {
    if tx.backend() == Backend::Postgres {
        tx.exec(
            "audit: lock",
            "SELECT pg_advisory_xact_lock($1)",
            &[Arg::Int(AUDIT_LOCK_KEY)],
        )
        .await?;
    }
    // The longest prefix of records older than the cutoff: everything before the first
    // record that is not older.
    let first_kept = tx
        .query_opt(
            "audit: purge boundary",
            "SELECT MIN(seq) AS s FROM audit_log WHERE at >= $1",
            &[Arg::Int(older_than.timestamp_micros())],
        )
        .await?
        .map(|row| row.int("s", "audit purge"))
        .transpose()?
        .flatten();
    let last_removed = match first_kept {
        Some(first) => {
            tx.query_opt(
                "audit: purge last removed",
                "SELECT record FROM audit_log WHERE seq < $1 ORDER BY seq DESC LIMIT 1",
                &[Arg::Int(first)],
            )
            .await?
        }
        None => {
            tx.query_opt("audit: purge last removed", SQL_LAST_RECORD, &[])
                .await?
        }
    };
    let old_anchor = read_anchor(tx).await?;
    let (anchor, removed) = match &last_removed {
        Some(row) => {
            let anchor = Anchor::at(&decode_record(row)?);
            (anchor, anchor.seq.saturating_sub(old_anchor.seq))
        }
        None => (old_anchor, 0),
    };
    if removed > 0 {
        tx.exec(
            "audit: purge delete",
            "DELETE FROM audit_log WHERE seq <= $1",
            &[seq_arg(anchor.seq)],
        )
        .await?;
        let json = serde_json::to_string(&anchor).map_err(|e| Error::Corrupt {
            what: "audit anchor",
            reason: e.to_string(),
        })?;
        tx.exec(
            "audit: purge anchor",
            "INSERT INTO audit_anchor (id, anchor) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET anchor = excluded.anchor",
            &[Arg::text(json)],
        )
        .await?;
    }
    Ok((anchor, removed))
}

impl SqlStore {
    /// The records about one Order, oldest first (by the indexed `order_id` column).
    pub(crate) async fn read_order_audit(
        &self,
        order_id: &str,
        limit: u32,
    ) -> crate::Result<Vec<SealedRecord>> {
        let rows = self
            .read(
                "audit: reading an order's records",
                "SELECT record FROM audit_log WHERE order_id = $1 ORDER BY seq LIMIT $2",
                &[Arg::text(order_id), Arg::Int(i64::from(limit))],
            )
            .await?;
        rows.iter().map(decode_record).collect()
    }
}

#[async_trait]
impl AuditLog for SqlStore {
    /// One unit with one record: sealed on the chain head and stored in its own transaction.
    async fn append(&self, record: NewAuditRecord) -> audit::Result<SealedRecord> {
        let ((), mut sealed) = self
            .transact_sealed("audit: append", move |tx| {
                Box::pin(async move {
                    tx.audit(record);
                    Ok(())
                })
            })
            .await
            .map_err(to_audit)?;
        sealed.pop().ok_or_else(|| audit::Error::Backend {
            op: "audit: append",
            source: "the record was not sealed".into(),
        })
    }

    async fn read_range(&self, from_seq: u64, limit: usize) -> audit::Result<Vec<SealedRecord>> {
        let rows = self
            .read(
                "audit: read range",
                "SELECT record FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
                &[
                    seq_arg(from_seq),
                    Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX)),
                ],
            )
            .await
            .map_err(to_audit)?;
        rows.iter()
            .map(|r| decode_record(r).map_err(to_audit))
            .collect()
    }

    async fn head(&self) -> audit::Result<ChainHead> {
        read_head(&mut self.reads()).await.map_err(to_audit)
    }

    async fn anchor(&self) -> audit::Result<Anchor> {
        read_anchor(&mut self.reads()).await.map_err(to_audit)
    }

    async fn purge(&self, older_than: DateTime<Utc>, actor: Actor) -> audit::Result<PurgeReport> {
        let (report, mut sealed) = self
            .transact_sealed("audit: purge", move |tx| {
                Box::pin(async move {
                    let (anchor, removed) = purge_prefix(tx, older_than).await?;
                    let record = audit::purge_record(actor, &anchor, removed, older_than)
                        .map_err(|e| Error::Audit(Box::new(e)))?;
                    tx.audit(record);
                    Ok((anchor, removed))
                })
            })
            .await
            .map_err(to_audit)?;
        let (anchor, removed) = report;
        let record = sealed.pop().ok_or_else(|| audit::Error::Backend {
            op: "audit: purge",
            source: "the purge record was not sealed".into(),
        })?;
        Ok(PurgeReport {
            removed,
            anchor,
            record,
        })
    }
}
