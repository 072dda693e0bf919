//! [`audit::AuditLog`] on the store's database: one sealed record per row.
//!
//! Records are sealed by the one transaction API ([`crate::tx`]): a standalone append is a
//! unit with one audit record; a job write carries its records in its own unit. The log is a
//! set of independent chains (one on SQLite, [`crate::POSTGRES_AUDIT_CHAINS`] on PostgreSQL),
//! each with its own sequence numbers, head and anchor; [`AuditChain`] is one of them as an
//! [`AuditLog`], and [`SqlStore::verify_audit`] verifies them all. Purges keep an anchor per
//! chain, each in one transaction that holds its chain. Each row also carries the record's
//! Order Id, so an Order's records are read by index.

use async_trait::async_trait;
use audit::{Actor, Anchor, AuditLog, ChainHead, NewAuditRecord, PurgeReport, SealedRecord};
use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::sql::{Backend, SqlStore};
use crate::tx::{Arg, SQL_LAST_RECORD, Tx, chain_arg, decode_record, read_anchor, read_head};
use crate::tx::{OneStatement, Row};

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

/// Deletes every record of `chain` older than `older_than` (the longest such prefix), moves
/// its anchor to the last one removed, and returns the anchor and how many went. The caller's
/// transaction holds the chain.
async fn purge_prefix(
    tx: &mut dyn Tx,
    chain: u32,
    older_than: DateTime<Utc>,
) -> crate::Result<(Anchor, u64)> {
    // The longest prefix of records older than the cutoff: everything before the first
    // record that is not older.
    let first_kept = tx
        .query_opt(
            "audit: purge boundary",
            "SELECT MIN(seq) AS s FROM audit_log WHERE chain = $2 AND at >= $1",
            &[Arg::Int(older_than.timestamp_micros()), chain_arg(chain)],
        )
        .await?
        .map(|row| row.int("s", "audit purge"))
        .transpose()?
        .flatten();
    let last_removed = match first_kept {
        Some(first) => {
            tx.query_opt(
                "audit: purge last removed",
                "SELECT record FROM audit_log WHERE chain = $2 AND seq < $1 \
                 ORDER BY seq DESC LIMIT 1",
                &[Arg::Int(first), chain_arg(chain)],
            )
            .await?
        }
        None => {
            tx.query_opt(
                "audit: purge last removed",
                SQL_LAST_RECORD,
                &[chain_arg(chain)],
            )
            .await?
        }
    };
    let old_anchor = read_anchor(tx, chain).await?;
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
            "DELETE FROM audit_log WHERE chain = $2 AND seq <= $1",
            &[seq_arg(anchor.seq), chain_arg(chain)],
        )
        .await?;
        let json = serde_json::to_string(&anchor).map_err(|e| Error::Corrupt {
            what: "audit anchor",
            reason: e.to_string(),
        })?;
        tx.exec(
            "audit: purge anchor",
            "INSERT INTO audit_anchor (id, anchor) VALUES ($2 + 1, $1) \
             ON CONFLICT (id) DO UPDATE SET anchor = excluded.anchor",
            &[Arg::text(json), chain_arg(chain)],
        )
        .await?;
    }
    Ok((anchor, removed))
}

/// An Order's records (`$1`), oldest first, at most `$2`. Each half reads one partial index;
/// `order_id` is checked in both, so a record is only ever found under its own Order.
pub(crate) const SQL_ORDER_AUDIT: &str = "SELECT record FROM (\
     SELECT record, at, chain, seq FROM audit_log \
     WHERE job = (SELECT seq FROM jobs WHERE order_id = $1) AND order_id = $1 \
     UNION ALL \
     SELECT record, at, chain, seq FROM audit_log WHERE job IS NULL AND order_id = $1\
     ) AS r ORDER BY at, chain, seq LIMIT $2";

impl SqlStore {
    /// The records about one Order, oldest first: those keyed by its job (`audit_log_job`)
    /// and those written before it had one, or before records were keyed by job
    /// (`audit_log_order`).
    pub(crate) async fn read_order_audit(
        &self,
        order_id: &str,
        limit: u32,
    ) -> crate::Result<Vec<SealedRecord>> {
        let rows = self
            .read(
                "audit: reading an order's records",
                SQL_ORDER_AUDIT,
                &[Arg::text(order_id), Arg::Int(i64::from(limit))],
            )
            .await?;
        rows.iter().map(decode_record).collect()
    }
}

/// One chain of the store's audit log, as an [`AuditLog`]: its records, head, anchor and
/// purge. [`audit::verify`] on it verifies that chain; [`SqlStore::verify_audit`] verifies
/// every chain.
#[derive(Debug, Clone, Copy)]
pub struct AuditChain<'a> {
    store: &'a SqlStore,
    chain: u32,
}

impl AuditChain<'_> {
    /// The chain's number (0 is the first; SQLite has only chain 0).
    pub fn chain(&self) -> u32 {
        self.chain
    }
}

/// One chain's verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSummary {
    /// The chain's number.
    pub chain: u32,
    /// What its verification covered.
    pub summary: audit::VerifySummary,
}

/// What the verification of every chain of the audit log covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    /// Each chain's summary, by chain number.
    pub chains: Vec<ChainSummary>,
}

impl AuditSummary {
    /// Records checked, over every chain.
    pub fn records(&self) -> u64 {
        self.chains.iter().map(|c| c.summary.records).sum()
    }

    /// Records removed by retention before the anchors, over every chain.
    pub fn purged(&self) -> u64 {
        self.chains.iter().map(|c| c.summary.anchor.removed).sum()
    }
}

/// A failed verification of one chain: which chain, and the verifier's error.
fn in_chain(chain: u32, e: audit::Error) -> audit::Error {
    match e {
        // Tampering is reported as is: the sequence number names the record within its
        // chain, and the caller says which chain it verified.
        audit::Error::Tampered { .. } => e,
        other => audit::Error::Backend {
            op: "audit: verify",
            source: format!("chain {chain}: {other}").into(),
        },
    }
}

impl SqlStore {
    /// Chain `chain` of the audit log. SQLite has chain 0 only: an append to or a purge of
    /// another is refused there (its reads find nothing).
    pub fn audit_chain(&self, chain: u32) -> AuditChain<'_> {
        AuditChain { store: self, chain }
    }

    /// Every chain of the audit log that holds a record or an anchor (chain 0 always), in
    /// order.
    pub async fn audit_chains(&self) -> crate::Result<Vec<AuditChain<'_>>> {
        let rows = self
            .read(
                "audit: listing the chains",
                "SELECT DISTINCT chain AS c FROM audit_log \
                 UNION SELECT id - 1 AS c FROM audit_anchor ORDER BY c",
                &[],
            )
            .await?;
        let mut chains = vec![0_u32];
        for row in &rows {
            let c = Row::required(row.int("c", "audit chain")?, "c", "audit chain")?;
            let c = u32::try_from(c).map_err(|_| Error::Corrupt {
                what: "audit chain",
                reason: format!("chain number {c} is out of range"),
            })?;
            if !chains.contains(&c) {
                chains.push(c);
            }
        }
        chains.sort_unstable();
        Ok(chains.into_iter().map(|c| self.audit_chain(c)).collect())
    }

    /// Verifies every chain of the audit log ([`audit::verify`] on each). A tampered record
    /// fails with [`audit::Error::Tampered`] and [`SqlStore::verify_audit`]'s caller learns
    /// the chain from [`VerifyFailure::chain`].
    pub async fn verify_audit(&self) -> Result<AuditSummary, VerifyFailure> {
        let chains = self.audit_chains().await.map_err(|e| VerifyFailure {
            chain: None,
            error: to_audit(e),
        })?;
        let mut summaries = Vec::with_capacity(chains.len());
        for chain in chains {
            let summary =
                audit::verify(&chain, self.audit_key())
                    .await
                    .map_err(|e| VerifyFailure {
                        chain: Some(chain.chain),
                        error: in_chain(chain.chain, e),
                    })?;
            summaries.push(ChainSummary {
                chain: chain.chain,
                summary,
            });
        }
        Ok(AuditSummary { chains: summaries })
    }
}

/// A failed [`SqlStore::verify_audit`]: the chain it failed in (`None`: before any chain was
/// read) and why.
#[derive(Debug, thiserror::Error)]
#[error("{}{error}", chain.map(|c| format!("audit chain {c}: ")).unwrap_or_default())]
pub struct VerifyFailure {
    /// The chain that failed verification.
    pub chain: Option<u32>,
    /// The error ([`audit::Error::Tampered`] names the record's sequence number in its chain).
    #[source]
    pub error: audit::Error,
}

async fn purge_chain(
    store: &SqlStore,
    chain: u32,
    older_than: DateTime<Utc>,
    actor: Actor,
) -> audit::Result<PurgeReport> {
    let (report, mut sealed) = store
        .transact_on("audit: purge", Some(chain), move |tx| {
            Box::pin(async move {
                let (anchor, removed) = purge_prefix(tx, chain, older_than).await?;
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

async fn read_chain_range(
    store: &SqlStore,
    chain: u32,
    from_seq: u64,
    limit: usize,
) -> audit::Result<Vec<SealedRecord>> {
    let rows = store
        .read(
            "audit: read range",
            "SELECT record FROM audit_log WHERE chain = $3 AND seq >= $1 ORDER BY seq LIMIT $2",
            &[
                seq_arg(from_seq),
                Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX)),
                chain_arg(chain),
            ],
        )
        .await
        .map_err(to_audit)?;
    rows.iter()
        .map(|r| decode_record(r).map_err(to_audit))
        .collect()
}

async fn append_on(
    store: &SqlStore,
    chain: Option<u32>,
    record: NewAuditRecord,
) -> audit::Result<SealedRecord> {
    if chain.is_none() && store.backend() == Backend::Postgres {
        // One statement on a cached head of a free chain, when there is one.
        if let OneStatement::Written(mut sealed) = store
            .unit_in_one_statement("audit: append", None, std::slice::from_ref(&record))
            .await
            .map_err(to_audit)?
        {
            return sealed.pop().ok_or_else(|| audit::Error::Backend {
                op: "audit: append",
                source: "the record was not sealed".into(),
            });
        }
    }
    let ((), mut sealed) = store
        .transact_on("audit: append", chain, move |tx| {
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

#[async_trait]
impl AuditLog for AuditChain<'_> {
    /// One unit with one record, sealed on this chain.
    async fn append(&self, record: NewAuditRecord) -> audit::Result<SealedRecord> {
        append_on(self.store, Some(self.chain), record).await
    }

    async fn read_range(&self, from_seq: u64, limit: usize) -> audit::Result<Vec<SealedRecord>> {
        read_chain_range(self.store, self.chain, from_seq, limit).await
    }

    async fn head(&self) -> audit::Result<ChainHead> {
        read_head(&mut self.store.reads(), self.chain)
            .await
            .map_err(to_audit)
    }

    async fn anchor(&self) -> audit::Result<Anchor> {
        read_anchor(&mut self.store.reads(), self.chain)
            .await
            .map_err(to_audit)
    }

    async fn purge(&self, older_than: DateTime<Utc>, actor: Actor) -> audit::Result<PurgeReport> {
        purge_chain(self.store, self.chain, older_than, actor).await
    }
}

/// The store's whole audit log as an [`AuditLog`] port. Appends go to whichever chain is
/// free; a purge purges every chain. `read_range`, `head` and `anchor` are those of chain 0 —
/// the whole log on SQLite, one chain of several on PostgreSQL: verify with
/// [`SqlStore::verify_audit`], or read a chain with [`SqlStore::audit_chain`].
#[async_trait]
impl AuditLog for SqlStore {
    /// One unit with one record, sealed on a free chain.
    async fn append(&self, record: NewAuditRecord) -> audit::Result<SealedRecord> {
        append_on(self, None, record).await
    }

    async fn read_range(&self, from_seq: u64, limit: usize) -> audit::Result<Vec<SealedRecord>> {
        read_chain_range(self, 0, from_seq, limit).await
    }

    async fn head(&self) -> audit::Result<ChainHead> {
        self.audit_chain(0).head().await
    }

    async fn anchor(&self) -> audit::Result<Anchor> {
        self.audit_chain(0).anchor().await
    }

    /// Purges every chain, each in its own transaction with its own `retention_purge` record;
    /// returns chain 0's anchor and record with the records removed from every chain.
    async fn purge(&self, older_than: DateTime<Utc>, actor: Actor) -> audit::Result<PurgeReport> {
        let chains = self.audit_chains().await.map_err(to_audit)?;
        let mut removed = 0_u64;
        let mut first: Option<PurgeReport> = None;
        for chain in chains {
            let report = purge_chain(self, chain.chain, older_than, actor.clone()).await?;
            removed = removed.saturating_add(report.removed);
            if first.is_none() {
                first = Some(report);
            }
        }
        let mut report = first.ok_or_else(|| audit::Error::Backend {
            op: "audit: purge",
            source: "the audit log has no chain".into(),
        })?;
        report.removed = removed;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan(
        conn: &rusqlite::Connection,
        sql: &str,
        args: &[(&str, &dyn rusqlite::ToSql)],
    ) -> String {
        let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let details: Vec<String> = plan
            .query_map(args, |row| row.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        details.join("\n")
    }

    /// On SQLite an Order's records are read by its job (`audit_log_job`) and by its Id among
    /// the records without a job (`audit_log_order`): two index searches, no scan of the log.
    #[test]
    fn an_orders_records_are_read_through_the_two_partial_indexes() {
        let conn = crate::jobs::tests::migrated_sqlite();
        let text = plan(&conn, SQL_ORDER_AUDIT, &[("$1", &"O"), ("$2", &100_i64)]);
        for expected in [
            "SEARCH audit_log USING INDEX audit_log_job (job=?)",
            "SEARCH audit_log USING INDEX audit_log_order (order_id=?)",
            "SEARCH jobs USING COVERING INDEX sqlite_autoindex_jobs_1 (order_id=?)",
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
        assert!(!text.contains("SCAN audit_log"), "{text}");
    }

    /// A record written after its Order's job carries the job's `seq`; one about no Order, or
    /// written before its job, has none (and is found by Order Id).
    #[test]
    fn a_record_is_keyed_by_its_orders_job_when_it_has_one() {
        let conn = crate::jobs::tests::migrated_sqlite();
        conn.execute_batch(
            "INSERT INTO jobs (seq, order_id, customer_number, source, state, step, \
             next_attempt_at, created_at, updated_at) \
             VALUES (41, 'O1', 'C1', 'event', 'pending', 'received', 0, 0, 0)",
        )
        .unwrap();
        let insert = |seq: i64, order: Option<&str>| {
            conn.execute(
                crate::tx::SQL_INSERT_FIRST_RECORD,
                rusqlite::named_params! {
                    "$1": seq, "$2": seq, "$3": "{}", "$4": order, "$5": 0_i64,
                },
            )
            .unwrap();
        };
        insert(1, Some("O1"));
        insert(2, Some("O2"));
        insert(3, None);
        let jobs: Vec<(i64, Option<i64>)> = conn
            .prepare("SELECT seq, job FROM audit_log ORDER BY seq")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(jobs, [(1, Some(41)), (2, None), (3, None)]);
        // A `seq` taken already inserts nothing, and is no error.
        let again = conn
            .execute(
                crate::tx::SQL_INSERT_FIRST_RECORD,
                rusqlite::named_params! {
                    "$1": 2_i64, "$2": 9_i64, "$3": "{\"forged\":1}", "$4": "O1", "$5": 0_i64,
                },
            )
            .unwrap();
        assert_eq!(again, 0);
        let kept: String = conn
            .query_row("SELECT record FROM audit_log WHERE seq = 2", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kept, "{}");
    }

    /// SQLite's one chain is keyed by its rowid: a record costs the table's B-tree and one of
    /// the two partial indexes, no separate key index; the chain's last record and a
    /// retention range are rowid reads; a record of another chain is refused.
    #[test]
    fn the_sqlite_log_is_keyed_by_seq_alone() {
        let conn = crate::jobs::tests::migrated_sqlite();
        let mut indexes: Vec<String> = conn
            .prepare("SELECT name FROM pragma_index_list('audit_log')")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        indexes.sort();
        assert_eq!(indexes, ["audit_log_job", "audit_log_order"]);
        let last = plan(&conn, crate::tx::SQL_LAST_RECORD, &[("$1", &0_i64)]);
        assert_eq!(last, "SCAN audit_log", "the last record is the last rowid");
        let range = plan(
            &conn,
            "DELETE FROM audit_log WHERE chain = $2 AND seq <= $1",
            &[("$1", &5_i64), ("$2", &0_i64)],
        );
        assert_eq!(
            range,
            "SEARCH audit_log USING INTEGER PRIMARY KEY (rowid<?)"
        );
        let other_chain = conn.execute(
            crate::tx::SQL_INSERT_FIRST_RECORD,
            rusqlite::named_params! {
                "$1": 1_i64, "$2": 1_i64, "$3": "{}", "$4": None::<String>, "$5": 1_i64,
            },
        );
        let err = other_chain.unwrap_err().to_string();
        assert!(err.contains("CHECK constraint failed"), "{err}");
    }
}
