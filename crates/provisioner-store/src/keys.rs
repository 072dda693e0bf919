//! The keyring, wrapped by the master key: created on first use, rotated with its audit
//! record in one transaction, reloaded when another instance rotated it.

use std::sync::Arc;

use audit::{Action, DetailKey, NewAuditRecord, Outcome};
use chrono::{DateTime, Utc};
use field_crypto::{KeyId, Keyring, MasterKey, StoredKeyring};

use crate::error::{Error, Result};
use crate::sql::{Backend, SqlStore};
use crate::tx::{Arg, Row, Tx};
use crate::types::ms;

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        what: "keyring",
        reason: e.to_string(),
    }
}

fn decode(row: &Row) -> Result<StoredKeyring> {
    let json = Row::required(row.text("stored", "keyring")?, "stored", "keyring")?;
    serde_json::from_str(&json).map_err(corrupt)
}

const SQL_READ: &str = "SELECT stored FROM keyring WHERE id = 1";

/// Two instances starting at once: the first insert wins, the other reads it back.
const SQL_CREATE: &str =
    "INSERT INTO keyring (id, stored, updated_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING";

async fn read_in(tx: &mut dyn Tx) -> Result<Option<StoredKeyring>> {
    let row = tx.query_opt("reading the keyring", SQL_READ, &[]).await?;
    row.as_ref().map(decode).transpose()
}

/// The keyring on the database behind `pool`, created (and stored) on first use. Runs before
/// the store exists (its audit key comes from this keyring), so directly on the pool.
pub(crate) async fn load_or_create(
    pool: &sqlx::AnyPool,
    backend: Backend,
    master: &MasterKey,
) -> Result<Keyring> {
    let existing = crate::tx::on_pool(pool, backend, "reading the keyring", |tx| {
        Box::pin(async move { read_in(tx).await })
    })
    .await?;
    if let Some(stored) = existing {
        return Ok(Keyring::open(master, &stored)?);
    }
    let fresh = Keyring::create(master, Utc::now())?;
    let json = serde_json::to_string(&fresh.to_stored()).map_err(corrupt)?;
    let stored = crate::tx::on_pool(pool, backend, "storing the new keyring", |tx| {
        Box::pin(async move {
            let args = [Arg::text(json), Arg::Int(ms(Utc::now()))];
            tx.exec("storing the new keyring", SQL_CREATE, &args)
                .await?;
            read_in(tx).await
        })
    })
    .await?
    .ok_or_else(|| corrupt("missing right after it was stored"))?;
    Ok(Keyring::open(master, &stored)?)
}

impl SqlStore {
    /// Re-reads the keyring from the database (another instance may have rotated it).
    pub async fn reload_keyring(&self) -> Result<()> {
        if let Some(row) = self.read_opt("reading the keyring", SQL_READ, &[]).await? {
            let ring = Keyring::open(&self.master, &decode(&row)?)?;
            *self.keyring.write() = Arc::new(ring);
        }
        Ok(())
    }

    /// Rotation opens the keyring (which unwraps every data key, a key derivation) before
    /// its transaction, never inside it: on SQLite a transaction holds the one write lock. The
    /// write is optimistic instead: it replaces the keyring only if it is still the one that
    /// was read, and starts over when another instance rotated meanwhile.
    pub(crate) async fn rotate_keys(
        &self,
        max_age_days: u32,
        actor: audit::Actor,
        now: DateTime<Utc>,
    ) -> Result<Option<KeyId>> {
        for _ in 0..ROTATE_ATTEMPTS {
            let row = self
                .read_opt("reading the keyring", SQL_READ, &[])
                .await?
                .ok_or_else(|| corrupt("missing"))?;
            let old = Row::required(row.text("stored", "keyring")?, "stored", "keyring")?;
            let mut ring = Keyring::open(&self.master, &decode(&row)?)?;
            let Some(id) = ring.rotate_if_older_than(now, max_age_days)? else {
                *self.keyring.write() = Arc::new(ring);
                return Ok(None);
            };
            let new = serde_json::to_string(&ring.to_stored()).map_err(corrupt)?;
            let record = NewAuditRecord::new(actor.clone(), Action::KEY_ROTATED, Outcome::Success)
                .detail(DetailKey::KeyId, id.get().to_string())
                .map_err(|e| Error::Audit(Box::new(e)))?;
            let stored = self
                .transact("rotating the data key", move |tx| {
                    Box::pin(async move {
                        let changed = tx
                            .exec(
                                "rotation: storing the keyring",
                                "UPDATE keyring SET stored = $1, updated_at = $2 \
                                 WHERE id = 1 AND stored = $3",
                                &[Arg::text(new), Arg::Int(ms(now)), Arg::text(old)],
                            )
                            .await?;
                        if changed == 1 {
                            tx.audit(record);
                        }
                        Ok(changed == 1)
                    })
                })
                .await?;
            if stored {
                *self.keyring.write() = Arc::new(ring);
                return Ok(Some(id));
            }
        }
        Err(Error::Corrupt {
            what: "keyring",
            reason: format!("it kept changing under {ROTATE_ATTEMPTS} rotation attempts"),
        })
    }
}

/// How often a rotation starts over after another instance changed the keyring meanwhile.
const ROTATE_ATTEMPTS: usize = 5;
