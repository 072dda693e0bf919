//! Dead letters: what could not be processed, with the raw payload encrypted by field-crypto.

use audit::NewAuditRecord;
use chrono::{DateTime, Utc};
use field_crypto::FieldContext;

use crate::DEAD_LETTER_PAYLOAD_KIND;
use crate::error::{Error, Result};
use crate::intake::{SQL_UPSERT_CHECKPOINT, checkpoint_args};
use crate::sql::SqlStore;
use crate::tx::{Arg, Row, Tx};
use crate::types::{Checkpoint, DeadLetter, DeadLetterState, NewDeadLetter, from_ms, ms};

const DL_COLS: &str = "id, topic, event_id, replay_id, order_id, reason, payload, attempts, \
    state, created_at, updated_at";

const SQL_INSERT_DEAD_LETTER: &str = "INSERT INTO dead_letters (id, topic, event_id, replay_id, \
     order_id, reason, payload, attempts, state, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'open', $9, $9)";

fn dead_letter_from_row(row: &Row) -> Result<DeadLetter> {
    const W: &str = "dead letter";
    let text = |name| Row::required(row.text(name, W)?, name, W);
    Ok(DeadLetter {
        id: text("id")?,
        topic: row.text("topic", W)?,
        event_id: row.text("event_id", W)?,
        replay_id: row.blob("replay_id", W)?,
        order_id: row.text("order_id", W)?,
        reason: text("reason")?,
        has_payload: row.text("payload", W)?.is_some(),
        attempts: u32::try_from(Row::required(row.int("attempts", W)?, "attempts", W)?)
            .unwrap_or(u32::MAX),
        state: DeadLetterState::parse(&text("state")?)?,
        created_at: from_ms(
            W,
            Row::required(row.int("created_at", W)?, "created_at", W)?,
        )?,
        updated_at: from_ms(
            W,
            Row::required(row.int("updated_at", W)?, "updated_at", W)?,
        )?,
    })
}

/// Inserts a dead letter (its arguments from [`SqlStore::dead_letter_args`]) inside `tx`.
pub(crate) async fn insert(tx: &mut dyn Tx, args: &[Arg]) -> Result<()> {
    tx.exec("storing a dead letter", SQL_INSERT_DEAD_LETTER, args)
        .await
        .map(|_| ())
}

impl SqlStore {
    /// A new dead letter's id and statement arguments, its payload encrypted.
    pub(crate) fn dead_letter_args(
        &self,
        letter: NewDeadLetter,
        now: DateTime<Utc>,
    ) -> Result<(String, Vec<Arg>)> {
        let id = uuid::Uuid::new_v4().to_string();
        let payload = letter
            .payload
            .as_deref()
            .map(|p| {
                let ctx = FieldContext::new(DEAD_LETTER_PAYLOAD_KIND, &id)?;
                self.keyring().encrypt(&ctx, p)
            })
            .transpose()?;
        let args = vec![
            Arg::text(id.as_str()),
            Arg::Text(letter.topic),
            Arg::Text(letter.event_id),
            Arg::Blob(letter.replay_id),
            Arg::Text(letter.order_id),
            Arg::Text(Some(letter.reason)),
            Arg::Text(payload),
            Arg::Int(i64::from(letter.attempts)),
            Arg::Int(ms(now)),
        ];
        Ok((id, args))
    }

    pub(crate) async fn store_dead_letter(
        &self,
        letter: NewDeadLetter,
        checkpoint: Option<Checkpoint>,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<String> {
        let (id, args) = self.dead_letter_args(letter, now)?;
        let checkpoint = checkpoint.map(|cp| checkpoint_args(&cp, now));
        self.transact("dead letter", move |tx| {
            Box::pin(async move {
                insert(tx, &args).await?;
                if let Some(cp) = &checkpoint {
                    tx.exec("dead letter: checkpoint", SQL_UPSERT_CHECKPOINT, cp)
                        .await?;
                }
                audit.into_iter().for_each(|r| tx.audit(r));
                Ok(())
            })
        })
        .await?;
        Ok(id)
    }

    pub(crate) async fn list_dead_letters(
        &self,
        state: Option<DeadLetterState>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>> {
        let sql = format!(
            "SELECT {DL_COLS} FROM dead_letters WHERE ($1 IS NULL OR state = $1) \
             ORDER BY created_at DESC, id LIMIT $2"
        );
        let state = Arg::Text(state.map(|s| s.as_str().to_owned()));
        let rows = self
            .read(
                "listing dead letters",
                &sql,
                &[state, Arg::Int(i64::from(limit))],
            )
            .await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    pub(crate) async fn read_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>> {
        let sql = format!("SELECT {DL_COLS} FROM dead_letters WHERE id = $1");
        let row = self
            .read_opt("reading a dead letter", &sql, &[Arg::text(id)])
            .await?;
        row.as_ref().map(dead_letter_from_row).transpose()
    }

    pub(crate) async fn read_dead_letter_payload(
        &self,
        id: &str,
    ) -> Result<Option<field_crypto::Plaintext>> {
        let row = self
            .read_opt(
                "reading a dead letter",
                "SELECT payload FROM dead_letters WHERE id = $1",
                &[Arg::text(id)],
            )
            .await?;
        let Some(row) = row else {
            return Err(Error::NotFound {
                what: "dead letter",
                id: id.to_owned(),
            });
        };
        let Some(text) = row.text("payload", "dead letter")? else {
            return Ok(None);
        };
        let ctx = FieldContext::new(DEAD_LETTER_PAYLOAD_KIND, id)?;
        match self.keyring().decrypt(&ctx, &text) {
            Err(field_crypto::Error::UnknownKey { .. }) => {
                // Another instance may have rotated: reload once.
                self.reload_keyring().await?;
                Ok(Some(self.keyring().decrypt(&ctx, &text)?))
            }
            other => Ok(Some(other?)),
        }
    }

    pub(crate) async fn update_dead_letter_state(
        &self,
        id: &str,
        state: DeadLetterState,
        audit: Vec<NewAuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let args = vec![Arg::text(state.as_str()), Arg::Int(ms(now)), Arg::text(id)];
        let id = id.to_owned();
        self.transact("updating a dead letter", move |tx| {
            Box::pin(async move {
                let changed = tx
                    .exec(
                        "updating a dead letter",
                        "UPDATE dead_letters SET state = $1, updated_at = $2 WHERE id = $3",
                        &args,
                    )
                    .await?;
                if changed == 0 {
                    return Err(Error::NotFound {
                        what: "dead letter",
                        id,
                    });
                }
                audit.into_iter().for_each(|r| tx.audit(r));
                Ok(())
            })
        })
        .await
    }

    /// Re-encrypts every stored ciphertext under the primary key; returns how many moved.
    pub(crate) async fn reencrypt_dead_letters(&self) -> Result<u64> {
        let ring = self.keyring();
        let rows = self
            .read(
                "re-encryption: listing",
                "SELECT id, payload FROM dead_letters WHERE payload IS NOT NULL",
                &[],
            )
            .await?;
        let mut moved = 0;
        for row in rows {
            const W: &str = "dead letter";
            let id = Row::required(row.text("id", W)?, "id", W)?;
            let text = Row::required(row.text("payload", W)?, "payload", W)?;
            let ctx = FieldContext::new(DEAD_LETTER_PAYLOAD_KIND, &id)?;
            if let Some(new) = ring.reencrypt(&ctx, &text)? {
                self.write(
                    "re-encryption: update",
                    "UPDATE dead_letters SET payload = $1 WHERE id = $2 AND payload = $3",
                    vec![Arg::text(new), Arg::text(id), Arg::text(text)],
                )
                .await?;
                moved += 1;
            }
        }
        Ok(moved)
    }
}
