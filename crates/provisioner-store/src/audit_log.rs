//! [`audit::AuditLog`] on the store's database: one sealed record per row. An append is one
//! `INSERT` sealed on the head this process keeps in memory; the `seq` primary key refuses a
//! record sealed on a stale head (another instance or an operator command appended), and the
//! append then re-reads the head and seals again, so the chain never forks or gaps. Purges keep
//! an anchor, in one transaction (serialised across PostgreSQL instances by an advisory lock).

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

const SQL_ANCHOR: &str = "SELECT anchor FROM audit_anchor WHERE id = 1";
const SQL_LAST_RECORD: &str = "SELECT record FROM audit_log ORDER BY seq DESC LIMIT 1";
const SQL_INSERT_RECORD: &str = "INSERT INTO audit_log (seq, at, record) VALUES ($1, $2, $3)";

/// An append gave up: other writers took every `seq` it sealed for.
fn head_kept_moving() -> audit::Error {
    audit::Error::Backend {
        op: "audit: append",
        source: format!(
            "the chain head kept moving under {APPEND_ATTEMPTS} attempts (other writers)"
        )
        .into(),
    }
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
    let row = sqlx::query(SQL_ANCHOR)
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
    let last = sqlx::query(SQL_LAST_RECORD)
        .fetch_optional(&mut *conn)
        .await
        .map_err(backend("audit: reading the head"))?;
    match last {
        Some(row) => Ok(ChainHead::after(&decode(&row)?)),
        None => Ok(read_anchor(conn).await?.head()),
    }
}

/// Inserts a sealed record; the outer error is an encoding problem, the inner one the
/// database's answer (a unique violation means the head moved).
async fn insert_raw(
    conn: &mut AnyConnection,
    sealed: &SealedRecord,
) -> audit::Result<std::result::Result<(), sqlx::Error>> {
    let json = serde_json::to_string(sealed).map_err(|e| corrupt("audit: encoding", e))?;
    let seq = i64::try_from(sealed.record.seq).map_err(|e| corrupt("audit: seq", e))?;
    Ok(sqlx::query(SQL_INSERT_RECORD)
        .bind(seq)
        .bind(micros(sealed.record.at))
        .bind(json)
        .execute(conn)
        .await
        .map(|_| ()))
}

/// One multi-row `INSERT` of consecutive sealed records (atomic: all or none).
async fn insert_many(
    conn: &mut AnyConnection,
    sealed: &[SealedRecord],
) -> audit::Result<std::result::Result<(), sqlx::Error>> {
    if let [one] = sealed {
        return insert_raw(conn, one).await;
    }
    let mut sql = String::from("INSERT INTO audit_log (seq, at, record) VALUES ");
    for i in 0..sealed.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        let p = 3 * i;
        sql.push_str(&format!("(${}, ${}, ${})", p + 1, p + 2, p + 3));
    }
    let mut query = sqlx::query(&sql);
    for s in sealed {
        let json = serde_json::to_string(s).map_err(|e| corrupt("audit: encoding", e))?;
        let seq = i64::try_from(s.record.seq).map_err(|e| corrupt("audit: seq", e))?;
        query = query.bind(seq).bind(micros(s.record.at)).bind(json);
    }
    Ok(query.execute(conn).await.map(|_| ()))
}

async fn insert(conn: &mut AnyConnection, sealed: &SealedRecord) -> audit::Result<()> {
    insert_raw(conn, sealed)
        .await?
        .map_err(backend("audit: insert"))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// How often one flush re-reads the head after another writer took its place.
const APPEND_ATTEMPTS: usize = 16;

/// At most this many records go into one `INSERT` (3 parameters each).
const MAX_BATCH: usize = 256;

type Reply = tokio::sync::oneshot::Sender<audit::Result<SealedRecord>>;

/// Records waiting for the next flush, each with where its result goes.
#[derive(Default)]
pub(crate) struct AuditQueue(parking_lot::Mutex<Vec<(NewAuditRecord, Reply)>>);

impl SqlStore {
    /// Seals `records` on the chain head and writes them in one multi-row `INSERT`. The head
    /// is kept in memory; the `seq` primary key refuses records sealed on a head another
    /// process (a second instance, an operator command) has moved on from, and the flush then
    /// reads the head again and seals anew, so the chain never forks or gaps.
    async fn flush_audit(
        &self,
        cached: &mut Option<ChainHead>,
        records: &[NewAuditRecord],
    ) -> audit::Result<Vec<SealedRecord>> {
        for _ in 0..APPEND_ATTEMPTS {
            let mut conn = self
                .writer()
                .acquire()
                .await
                .map_err(backend("audit: acquire"))?;
            let mut head = match *cached {
                Some(head) => head,
                None => read_head(&mut conn).await?,
            };
            let mut sealed = Vec::with_capacity(records.len());
            for record in records {
                let s = head.seal(self.audit_key(), record.clone())?;
                head = ChainHead::after(&s);
                sealed.push(s);
            }
            match insert_many(&mut conn, &sealed).await? {
                Ok(()) => {
                    *cached = Some(head);
                    return Ok(sealed);
                }
                Err(e) if is_unique_violation(&e) => *cached = None,
                Err(e) => {
                    *cached = None;
                    return Err(backend("audit: insert")(e));
                }
            }
        }
        Err(head_kept_moving())
    }
}

/// The SQLite writer thread's side of the chain: its head lives on the thread, records are
/// sealed and inserted there, inside the batch transaction of whatever else is being written.
mod on_writer {
    use audit::{Anchor, ChainHead, NewAuditRecord, SealedRecord};

    use super::{
        APPEND_ATTEMPTS, SQL_ANCHOR, SQL_INSERT_RECORD, SQL_LAST_RECORD, corrupt, head_kept_moving,
        micros,
    };
    use crate::sqlite_writer::{self, FromSqlite, State};

    /// The JSON in the one column of the first row of `sql`, decoded.
    fn json_row<T: serde::de::DeserializeOwned>(
        st: &State,
        sql: &str,
        what: &'static str,
    ) -> audit::Result<Option<T>> {
        sqlite_writer::query_opt(&st.conn, sql, &[], |row| {
            let json: String = row.get(0).map_err(|e| audit::Error::from_sqlite(what, e))?;
            serde_json::from_str(&json).map_err(|e| corrupt(what, e))
        })
    }

    fn head(st: &State) -> audit::Result<ChainHead> {
        let last: Option<SealedRecord> = json_row(st, SQL_LAST_RECORD, "audit: reading the head")?;
        if let Some(last) = last {
            return Ok(ChainHead::after(&last));
        }
        let anchor: Option<Anchor> = json_row(st, SQL_ANCHOR, "audit: reading the anchor")?;
        Ok(anchor.unwrap_or(Anchor::GENESIS).head())
    }

    /// Seals `record` on the thread's head and inserts it; a `seq` already taken (another
    /// process appended) means: read the head again and seal anew.
    pub(super) fn append(st: &mut State, record: &NewAuditRecord) -> audit::Result<SealedRecord> {
        for _ in 0..APPEND_ATTEMPTS {
            let head = match st.audit_head {
                Some(head) => head,
                None => head(st)?,
            };
            let sealed = head.seal(&st.audit_key, record.clone())?;
            let json = serde_json::to_string(&sealed).map_err(|e| corrupt("audit: encoding", e))?;
            let seq = i64::try_from(sealed.record.seq).map_err(|e| corrupt("audit: seq", e))?;
            match sqlite_writer::exec(
                &st.conn,
                SQL_INSERT_RECORD,
                &[&seq, &micros(sealed.record.at), &json],
            ) {
                Ok(_) => {
                    st.audit_head = Some(ChainHead::after(&sealed));
                    return Ok(sealed);
                }
                Err(e) if sqlite_writer::is_unique_violation(&e) => st.audit_head = None,
                Err(e) => {
                    st.audit_head = None;
                    return Err(audit::Error::from_sqlite("audit: insert", e));
                }
            }
        }
        Err(head_kept_moving())
    }
}

fn batch_failed(e: &audit::Error) -> audit::Error {
    audit::Error::Backend {
        op: "audit: append",
        source: e.to_string().into(),
    }
}

#[async_trait]
impl AuditLog for SqlStore {
    /// Group commit: the record joins the queue; whoever holds the chain head next (this call
    /// or one already waiting) writes every queued record in one statement. One `INSERT` per
    /// record at low load, one per batch under load; every caller still returns only once its
    /// own record is stored.
    async fn append(&self, record: NewAuditRecord) -> audit::Result<SealedRecord> {
        if let Some(writer) = &self.sqlite {
            return writer
                .call("audit: append", move |st| on_writer::append(st, &record))
                .await;
        }
        let (reply, mut result) = tokio::sync::oneshot::channel();
        self.audit_queue.0.lock().push((record, reply));
        let mut cached = self.audit_head.lock().await;
        loop {
            match result.try_recv() {
                Ok(done) => return done,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    // The caller that took this record was cancelled while writing it.
                    return Err(audit::Error::Backend {
                        op: "audit: append",
                        source: "the write of this record was interrupted; its outcome is \
                                 unknown (`audit verify` shows whether it is stored)"
                            .into(),
                    });
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Vec<(NewAuditRecord, Reply)> = {
                let mut queue = self.audit_queue.0.lock();
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                // Unreachable: records are only taken under the head lock, which we hold, and
                // ours was neither answered nor dropped.
                return Err(audit::Error::Backend {
                    op: "audit: append",
                    source: "the record left the queue without an answer".into(),
                });
            }
            let (records, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            match self.flush_audit(&mut cached, &records).await {
                Ok(sealed) => {
                    for (reply, s) in replies.into_iter().zip(sealed) {
                        let _ = reply.send(Ok(s));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(batch_failed(&e)));
                    }
                }
            }
        }
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
        let mut cached = self.audit_head.lock().await;
        *cached = None;
        let mut tx = self
            .writer()
            .begin_with(self.begin_write())
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
            None => sqlx::query(SQL_LAST_RECORD).fetch_optional(&mut *tx).await,
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
        *cached = Some(ChainHead::after(&sealed));
        if let Some(writer) = &self.sqlite {
            // The writer thread's head may point below the new anchor: it reads it again.
            writer
                .call("audit: purge", |st| {
                    st.audit_head = None;
                    Ok::<_, audit::Error>(())
                })
                .await?;
        }
        Ok(PurgeReport {
            removed,
            anchor,
            record: sealed,
        })
    }
}
