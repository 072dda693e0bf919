//! [`audit::AuditLog`] on the store's database: one sealed record per row, appends serialised
//! (the single SQLite writer; a transaction-scoped advisory lock on PostgreSQL), purges that
//! keep an anchor, all in one transaction each.

use async_trait::async_trait;
use audit::{Actor, Anchor, AuditLog, ChainHead, NewAuditRecord, PurgeReport, SealedRecord};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use sqlx::Row;

use crate::sql::{Backend, SqlStore};

fn backend(op: &'static str) -> impl FnOnce(sqlx::Error) -> audit::Error {
    move |e| audit::Error::Backend {
        op,
        source: Box::new(e),
    }
}

fn corrupt(op: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> audit::Error {
    audit::Error::Backend {
        op,
        source: Box::new(e),
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Serialises appends across PostgreSQL instances for the transaction's lifetime.
const AUDIT_LOCK_KEY: i64 = 0x7070_6175_6469_7431; // "ppaudit1"

impl SqlStore {
    async fn audit_lock(&self, tx: &mut AnyConnection) -> audit::Result<()> {
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(AUDIT_LOCK_KEY)
                .execute(tx)
                .await
                .map_err(backend("audit: lock"))?;
        }
        Ok(())
    }
}

async fn read_anchor(conn: &mut AnyConnection) -> audit::Result<Anchor> {
    let row = sqlx::query("SELECT anchor FROM audit_anchor WHERE id = 1")
        .fetch_optional(conn)
        .await
        .map_err(backend("audit: reading the anchor"))?;
    match row {
        None => Ok(Anchor::GENESIS),
        Some(row) => {
            let json: String = row.try_get("anchor").map_err(backend("audit: anchor"))?;
            serde_json::from_str(&json).map_err(|e| corrupt("audit: decoding the anchor", e))
        }
    }
}

fn decode(row: &sqlx::any::AnyRow) -> audit::Result<SealedRecord> {
    let json: String = row.try_get("record").map_err(backend("audit: record"))?;
    serde_json::from_str(&json).map_err(|e| corrupt("audit: decoding a record", e))
}

async fn read_head(conn: &mut AnyConnection) -> audit::Result<ChainHead> {
    let last = sqlx::query("SELECT record FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await
        .map_err(backend("audit: reading the head"))?;
    match last {
        Some(row) => Ok(ChainHead::after(&decode(&row)?)),
        None => Ok(read_anchor(conn).await?.head()),
    }
}

async fn insert(conn: &mut AnyConnection, sealed: &SealedRecord) -> audit::Result<()> {
    let json = serde_json::to_string(sealed).map_err(|e| corrupt("audit: encoding", e))?;
    let seq = i64::try_from(sealed.record.seq).map_err(|e| corrupt("audit: seq", e))?;
    sqlx::query("INSERT INTO audit_log (seq, at, record) VALUES ($1, $2, $3)")
        .bind(seq)
        .bind(micros(sealed.record.at))
        .bind(json)
        .execute(conn)
        .await
        .map_err(backend("audit: insert"))?;
    Ok(())
}

#[async_trait]
impl AuditLog for SqlStore {
    async fn append(&self, record: NewAuditRecord) -> audit::Result<SealedRecord> {
        let mut tx = self
            .writer()
            .begin()
            .await
            .map_err(backend("audit: begin"))?;
        self.audit_lock(&mut tx).await?;
        let head = read_head(&mut tx).await?;
        let sealed = head.seal(self.audit_key(), record)?;
        insert(&mut tx, &sealed).await?;
        tx.commit().await.map_err(backend("audit: commit"))?;
        Ok(sealed)
    }

    async fn read_range(&self, from_seq: u64, limit: usize) -> audit::Result<Vec<SealedRecord>> {
        let rows =
            sqlx::query("SELECT record FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2")
                .bind(i64::try_from(from_seq).unwrap_or(i64::MAX))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(self.reader())
                .await
                .map_err(backend("audit: read range"))?;
        rows.iter().map(decode).collect()
    }

    async fn head(&self) -> audit::Result<ChainHead> {
        let mut conn = self
            .reader()
            .acquire()
            .await
            .map_err(backend("audit: acquire"))?;
        read_head(&mut conn).await
    }

    async fn anchor(&self) -> audit::Result<Anchor> {
        let mut conn = self
            .reader()
            .acquire()
            .await
            .map_err(backend("audit: acquire"))?;
        read_anchor(&mut conn).await
    }

    async fn purge(&self, older_than: DateTime<Utc>, actor: Actor) -> audit::Result<PurgeReport> {
        let mut tx = self
            .writer()
            .begin()
            .await
            .map_err(backend("audit: begin"))?;
        self.audit_lock(&mut tx).await?;
        // The longest prefix of records older than the cutoff: everything before the first
        // record that is not older.
        let first_kept = sqlx::query("SELECT MIN(seq) AS s FROM audit_log WHERE at >= $1")
            .bind(micros(older_than))
            .fetch_one(&mut *tx)
            .await
            .map_err(backend("audit: purge boundary"))?;
        let first_kept: Option<i64> = first_kept.try_get("s").map_err(backend("audit: purge"))?;
        let last_removed = match first_kept {
            Some(first) => {
                sqlx::query("SELECT record FROM audit_log WHERE seq < $1 ORDER BY seq DESC LIMIT 1")
                    .bind(first)
                    .fetch_optional(&mut *tx)
                    .await
            }
            None => {
                sqlx::query("SELECT record FROM audit_log ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await
            }
        }
        .map_err(backend("audit: purge last removed"))?;
        let old_anchor = read_anchor(&mut tx).await?;
        let (anchor, removed) = match &last_removed {
            Some(row) => {
                let rec = decode(row)?;
                let anchor = Anchor::at(&rec);
                (anchor, anchor.seq.saturating_sub(old_anchor.seq))
            }
            None => (old_anchor, 0),
        };
        if removed > 0 {
            let upto = i64::try_from(anchor.seq).map_err(|e| corrupt("audit: seq", e))?;
            sqlx::query("DELETE FROM audit_log WHERE seq <= $1")
                .bind(upto)
                .execute(&mut *tx)
                .await
                .map_err(backend("audit: purge delete"))?;
            let json = serde_json::to_string(&anchor).map_err(|e| corrupt("audit: anchor", e))?;
            sqlx::query(
                "INSERT INTO audit_anchor (id, anchor) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET anchor = excluded.anchor",
            )
            .bind(json)
            .execute(&mut *tx)
            .await
            .map_err(backend("audit: purge anchor"))?;
        }
        let head = read_head(&mut tx).await?;
        let sealed = head.seal(
            self.audit_key(),
            audit::purge_record(actor, &anchor, removed, older_than)?,
        )?;
        insert(&mut tx, &sealed).await?;
        tx.commit().await.map_err(backend("audit: commit purge"))?;
        Ok(PurgeReport {
            removed,
            anchor,
            record: sealed,
        })
    }
}
