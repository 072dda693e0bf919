//! The keyring: wrapped data keys, the primary key, rotation and field encryption.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{AeadInPlace, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Plaintext;
use crate::error::{Error, Result};
use crate::field::{Envelope, FieldContext, NONCE_LEN, TAG_LEN};
use crate::master::{KdfParams, MasterKey, hkdf32};

/// The id of a data key, named in every ciphertext. Data keys are numbered from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(u32);

impl KeyId {
    /// A key id.
    pub const fn new(n: u32) -> Self {
        KeyId(n)
    }

    /// Its number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Reserved id under which the MAC root key is wrapped.
const MAC_KEY_ID: KeyId = KeyId(0);
/// Version of [`StoredKeyring`].
const STORED_FORMAT: u32 = 1;

/// One wrapped key as stored: nothing here is secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    /// Key id.
    pub id: KeyId,
    /// When the key was made.
    pub created_at: DateTime<Utc>,
    /// `base64(nonce || AES-256-GCM(kek, key) || tag)`.
    pub wrapped: String,
}

/// The keyring as persisted (by the store, or a file): only wrapped keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKeyring {
    /// Format version (1).
    pub format: u32,
    /// PBKDF2 parameters when the master key is a passphrase.
    pub kdf: Option<KdfParams>,
    /// The key new data is encrypted under.
    pub primary: KeyId,
    /// Data keys, oldest first.
    pub keys: Vec<StoredKey>,
    /// The root of MAC keys (e.g. the audit chain key); not rotated with data keys.
    pub mac_key: StoredKey,
}

/// Public facts about a data key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Key id.
    pub id: KeyId,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Whether new data is encrypted under it.
    pub primary: bool,
}

struct DataKey {
    key: Zeroizing<[u8; 32]>,
    created_at: DateTime<Utc>,
}

/// Subkey ciphers per data key and field kind, built on first use.
type CipherCache = HashMap<KeyId, HashMap<Box<str>, Arc<Aes256Gcm>>>;

/// Data keys in memory, unwrapped, with the primary one.
///
/// `Debug` lists key ids and ages only.
pub struct Keyring {
    kek: Aes256Gcm,
    kdf: Option<KdfParams>,
    keys: BTreeMap<KeyId, DataKey>,
    stored: BTreeMap<KeyId, StoredKey>,
    primary: KeyId,
    mac_root: Zeroizing<[u8; 32]>,
    mac_stored: StoredKey,
    ciphers: RwLock<CipherCache>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary)
            .field("keys", &self.key_infos())
            .field("key_material", &"[REDACTED]")
            .finish()
    }
}

fn random_key() -> Result<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.try_fill_bytes(key.as_mut()).map_err(|_| Error::Rng)?;
    Ok(key)
}

fn kek_from(master: &MasterKey, kdf: Option<&KdfParams>) -> Result<Aes256Gcm> {
    let root = master.root(kdf)?;
    let kek = hkdf32(root.as_ref(), &[b"portal-provisioner/pf1/key-wrap"]);
    Ok(Aes256Gcm::new(kek.as_ref().into()))
}

fn wrap_aad(id: KeyId, created_at: DateTime<Utc>) -> Vec<u8> {
    let mut aad = b"pf1-wrap".to_vec();
    aad.extend_from_slice(&id.get().to_be_bytes());
    aad.extend_from_slice(&created_at.timestamp_millis().to_be_bytes());
    aad
}

fn wrap(
    kek: &Aes256Gcm,
    id: KeyId,
    created_at: DateTime<Utc>,
    key: &[u8; 32],
) -> Result<StoredKey> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.try_fill_bytes(&mut nonce).map_err(|_| Error::Rng)?;
    let mut body = Zeroizing::new(Vec::with_capacity(NONCE_LEN + 32 + TAG_LEN));
    body.extend_from_slice(&nonce);
    body.extend_from_slice(key);
    let tag = kek
        .encrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &wrap_aad(id, created_at),
            &mut body[NONCE_LEN..],
        )
        .map_err(|_| Error::Rng)?;
    body.extend_from_slice(&tag);
    Ok(StoredKey {
        id,
        created_at,
        wrapped: STANDARD.encode(&body[..]),
    })
}

fn unwrap_key(kek: &Aes256Gcm, stored: &StoredKey) -> Result<Zeroizing<[u8; 32]>> {
    let invalid = || Error::InvalidKeyring {
        reason: format!("wrapped key {} is not base64 of 60 bytes", stored.id),
    };
    let body = STANDARD
        .decode(stored.wrapped.as_bytes())
        .map_err(|_| invalid())?;
    if body.len() != NONCE_LEN + 32 + TAG_LEN {
        return Err(invalid());
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&body[NONCE_LEN..NONCE_LEN + 32]);
    let tag = Tag::from_slice(&body[NONCE_LEN + 32..]);
    kek.decrypt_in_place_detached(
        Nonce::from_slice(&body[..NONCE_LEN]),
        &wrap_aad(stored.id, stored.created_at),
        key.as_mut(),
        tag,
    )
    .map_err(|_| Error::WrongMasterKey { key_id: stored.id })?;
    Ok(key)
}

impl Keyring {
    /// A new keyring with one data key (id 1, primary) and a MAC root key.
    pub fn create(master: &MasterKey, now: DateTime<Utc>) -> Result<Self> {
        let kdf = master.is_passphrase().then(KdfParams::generate);
        let kek = kek_from(master, kdf.as_ref())?;
        let mac_root = random_key()?;
        let mac_stored = wrap(&kek, MAC_KEY_ID, now, &mac_root)?;
        let mut ring = Keyring {
            kek,
            kdf,
            keys: BTreeMap::new(),
            stored: BTreeMap::new(),
            primary: KeyId(1),
            mac_root,
            mac_stored,
            ciphers: RwLock::new(HashMap::new()),
        };
        ring.add_key(KeyId(1), now)?;
        Ok(ring)
    }

    /// Opens a stored keyring with the master key that wrapped it.
    pub fn open(master: &MasterKey, stored: &StoredKeyring) -> Result<Self> {
        if stored.format != STORED_FORMAT {
            return Err(Error::InvalidKeyring {
                reason: format!("unsupported keyring format {}", stored.format),
            });
        }
        if stored.mac_key.id != MAC_KEY_ID {
            return Err(Error::InvalidKeyring {
                reason: "MAC key must have id 0".to_owned(),
            });
        }
        let kek = kek_from(master, stored.kdf.as_ref())?;
        let mac_root = unwrap_key(&kek, &stored.mac_key)?;
        let mut keys = BTreeMap::new();
        let mut stored_keys = BTreeMap::new();
        for record in &stored.keys {
            if record.id == MAC_KEY_ID {
                return Err(Error::InvalidKeyring {
                    reason: "data key ids start at 1".to_owned(),
                });
            }
            let key = unwrap_key(&kek, record)?;
            let data = DataKey {
                key,
                created_at: record.created_at,
            };
            if keys.insert(record.id, data).is_some() {
                return Err(Error::InvalidKeyring {
                    reason: format!("duplicate key id {}", record.id),
                });
            }
            stored_keys.insert(record.id, record.clone());
        }
        if !keys.contains_key(&stored.primary) {
            return Err(Error::InvalidKeyring {
                reason: format!("primary key {} is not in the keyring", stored.primary),
            });
        }
        Ok(Keyring {
            kek,
            kdf: stored.kdf.clone(),
            keys,
            stored: stored_keys,
            primary: stored.primary,
            mac_root,
            mac_stored: stored.mac_key.clone(),
            ciphers: RwLock::new(HashMap::new()),
        })
    }

    /// The persistable form (wrapped keys only).
    pub fn to_stored(&self) -> StoredKeyring {
        StoredKeyring {
            format: STORED_FORMAT,
            kdf: self.kdf.clone(),
            primary: self.primary,
            keys: self.stored.values().cloned().collect(),
            mac_key: self.mac_stored.clone(),
        }
    }

    /// The same keys wrapped under `new_master` (a master-key change). Ciphertexts stay valid.
    pub fn rewrap(&self, new_master: &MasterKey) -> Result<Self> {
        let kdf = new_master.is_passphrase().then(KdfParams::generate);
        let kek = kek_from(new_master, kdf.as_ref())?;
        let mut stored = BTreeMap::new();
        let mut keys = BTreeMap::new();
        for (id, data) in &self.keys {
            stored.insert(*id, wrap(&kek, *id, data.created_at, &data.key)?);
            keys.insert(
                *id,
                DataKey {
                    key: data.key.clone(),
                    created_at: data.created_at,
                },
            );
        }
        let mac_stored = wrap(&kek, MAC_KEY_ID, self.mac_stored.created_at, &self.mac_root)?;
        Ok(Keyring {
            kek,
            kdf,
            keys,
            stored,
            primary: self.primary,
            mac_root: self.mac_root.clone(),
            mac_stored,
            ciphers: RwLock::new(HashMap::new()),
        })
    }

    fn add_key(&mut self, id: KeyId, now: DateTime<Utc>) -> Result<()> {
        let key = random_key()?;
        self.stored.insert(id, wrap(&self.kek, id, now, &key)?);
        self.keys.insert(
            id,
            DataKey {
                key,
                created_at: now,
            },
        );
        self.primary = id;
        Ok(())
    }

    /// The primary key's id.
    pub fn primary(&self) -> KeyId {
        self.primary
    }

    /// Every data key's id, creation time and whether it is primary, oldest first.
    pub fn key_infos(&self) -> Vec<KeyInfo> {
        self.keys
            .iter()
            .map(|(id, k)| KeyInfo {
                id: *id,
                created_at: k.created_at,
                primary: *id == self.primary,
            })
            .collect()
    }

    /// Makes a new data key the primary one; older keys keep decrypting.
    pub fn rotate(&mut self, now: DateTime<Utc>) -> Result<KeyId> {
        let next = self
            .keys
            .keys()
            .next_back()
            .map_or(1, |id| id.get().saturating_add(1));
        let id = KeyId(next);
        self.add_key(id, now)?;
        Ok(id)
    }

    /// Rotates when the primary key is at least `max_age_days` old
    /// (`ENCRYPTION_KEY_ROTATION_DAYS`). Returns the new key's id when it rotated.
    pub fn rotate_if_older_than(
        &mut self,
        now: DateTime<Utc>,
        max_age_days: u32,
    ) -> Result<Option<KeyId>> {
        let created =
            self.keys
                .get(&self.primary)
                .map(|k| k.created_at)
                .ok_or(Error::UnknownKey {
                    key_id: self.primary,
                })?;
        if now - created >= Duration::days(i64::from(max_age_days)) {
            self.rotate(now).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Removes a data key that no data uses any more (after [`Keyring::reencrypt`]).
    /// The primary key cannot be retired.
    pub fn retire(&mut self, id: KeyId) -> Result<()> {
        if id == self.primary {
            return Err(Error::InvalidKeyring {
                reason: format!("key {id} is primary and cannot be retired"),
            });
        }
        if self.keys.remove(&id).is_none() {
            return Err(Error::UnknownKey { key_id: id });
        }
        self.stored.remove(&id);
        self.ciphers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        Ok(())
    }

    /// A 256-bit MAC key for `label` (e.g. `"audit-chain"`), derived with HKDF-SHA256 from the
    /// keyring's MAC root; stable across data-key rotation and master-key changes.
    pub fn derive_mac_key(&self, label: &str) -> secrecy::SecretBox<[u8; 32]> {
        let key = hkdf32(
            self.mac_root.as_ref(),
            &[b"portal-provisioner/pf1/mac/", label.as_bytes()],
        );
        secrecy::SecretBox::new(Box::new(*key))
    }

    fn cipher(&self, id: KeyId, ctx: &FieldContext) -> Result<Arc<Aes256Gcm>> {
        let kind = ctx.kind().as_str();
        if let Some(c) = self
            .ciphers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .and_then(|m| m.get(kind))
        {
            return Ok(Arc::clone(c));
        }
        let data = self.keys.get(&id).ok_or(Error::UnknownKey { key_id: id })?;
        let subkey = hkdf32(
            data.key.as_ref(),
            &[b"portal-provisioner/pf1/field/", kind.as_bytes()],
        );
        let cipher = Arc::new(Aes256Gcm::new(subkey.as_ref().into()));
        self.ciphers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .insert(kind.into(), Arc::clone(&cipher));
        Ok(cipher)
    }

    /// Encrypts `plaintext` for `ctx` under the primary key: `pf1.<key id>.<base64url>`.
    pub fn encrypt(&self, ctx: &FieldContext, plaintext: &[u8]) -> Result<String> {
        self.encrypt_with(self.primary, ctx, plaintext)
    }

    fn encrypt_with(&self, id: KeyId, ctx: &FieldContext, plaintext: &[u8]) -> Result<String> {
        let cipher = self.cipher(id, ctx)?;
        let mut body = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        body.resize(NONCE_LEN, 0);
        OsRng
            .try_fill_bytes(&mut body[..NONCE_LEN])
            .map_err(|_| Error::Rng)?;
        body.extend_from_slice(plaintext);
        let (nonce, data) = body.split_at_mut(NONCE_LEN);
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), &ctx.aad(id), data)
            .map_err(|_| Error::InvalidContext {
                reason: "plaintext too long for AES-GCM",
            })?;
        body.extend_from_slice(&tag);
        Ok(Envelope::format(id, &body))
    }

    /// Decrypts a `pf1` text for `ctx`. Fails with a typed error (never garbage) when the text
    /// was modified, belongs to another field kind or record, or names an unknown key.
    pub fn decrypt(&self, ctx: &FieldContext, text: &str) -> Result<Plaintext> {
        let envelope = Envelope::parse(text)?;
        let id = envelope.key_id;
        let cipher = self.cipher(id, ctx)?;
        let body = envelope.body;
        let (nonce, rest) = body.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut plain = Zeroizing::new(ciphertext.to_vec());
        cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &ctx.aad(id),
                plain.as_mut_slice(),
                Tag::from_slice(tag),
            )
            .map_err(|_| Error::DecryptFailed {
                kind: ctx.kind().to_string(),
                key_id: id,
            })?;
        Ok(Plaintext::new(plain))
    }

    /// The key id a `pf1` text names.
    pub fn key_id_of(text: &str) -> Result<KeyId> {
        Envelope::key_id_of(text)
    }

    /// Whether a text is under a key other than the primary.
    pub fn needs_reencrypt(&self, text: &str) -> Result<bool> {
        Ok(Self::key_id_of(text)? != self.primary)
    }

    /// Moves a text to the primary key: `Some(new text)`, or `None` when it already is there.
    pub fn reencrypt(&self, ctx: &FieldContext, text: &str) -> Result<Option<String>> {
        if !self.needs_reencrypt(text)? {
            return Ok(None);
        }
        let plain = self.decrypt(ctx, text)?;
        self.encrypt(ctx, &plain).map(Some)
    }
}
