//! Field-level encryption done properly, and masking of PII for logs.
//!
//! - [`MasterKey`]: from `FIELD_ENCRYPTION_KEY`, either `base64:<32 bytes>` used as is, or a
//!   passphrase stretched with PBKDF2-HMAC-SHA256 ([`PBKDF2_MIN_ITERATIONS`] or more, random
//!   stored salt). The master key only wraps data keys; it never encrypts a field itself.
//! - [`Keyring`]: random 256-bit data keys, each with a [`KeyId`] and a creation time, stored
//!   wrapped ([`StoredKeyring`], serde) by AES-256-GCM under a key-encryption key derived from
//!   the master key. One key is primary; older keys decrypt only; rotation by age.
//! - Field encryption ([`Keyring::encrypt`]): AES-256-GCM with a fresh random 96-bit nonce per
//!   call and a 16-byte tag, under a per-field-kind subkey (HKDF-SHA256 of the data key), with
//!   associated data binding the field kind, the record id and the key id. The text form is
//!   `pf1.<key id>.<base64url(nonce || ciphertext || tag)>`. Plaintext comes back zeroizing.
//! - [`Masked`] with maskers for card numbers, SSNs, emails and phone numbers: their `Debug` and
//!   `Display` never show the value.
//!
//! Invariant: only this crate sees key material; key types print `[REDACTED]`.
//!
//! ```
//! use chrono::Utc;
//! use field_crypto::{FieldContext, Keyring, MasterKey};
//!
//! # fn main() -> Result<(), field_crypto::Error> {
//! // `FIELD_ENCRYPTION_KEY=base64:...` (32 random bytes); a passphrase works too.
//! let master = MasterKey::from_config("base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=")?;
//! let mut keyring = Keyring::create(&master, Utc::now())?;
//!
//! let ctx = FieldContext::new("config_options", "801xx000003GZ1AAAW")?;
//! let text = keyring.encrypt(&ctx, br#"{"12":"root-password"}"#)?;
//! assert!(text.starts_with("pf1."));
//!
//! let plain = keyring.decrypt(&ctx, &text)?;
//! assert_eq!(&plain[..], br#"{"12":"root-password"}"#);
//!
//! // The keyring is persisted wrapped; reopening it needs the same master key.
//! let stored = keyring.to_stored();
//! let reopened = Keyring::open(&master, &stored)?;
//! assert_eq!(&reopened.decrypt(&ctx, &text)?[..], &plain[..]);
//! # Ok(()) }
//! ```

mod error;
mod field;
mod keyring;
mod mask;
mod master;
pub mod primitives;

pub use error::{Error, Result};
pub use field::{FieldContext, FieldKind};
pub use keyring::{KeyId, KeyInfo, Keyring, StoredKey, StoredKeyring};
pub use mask::{Card, Email, Mask, Masked, Phone, Ssn, Text};
pub use master::{KdfParams, MasterKey, PBKDF2_MIN_ITERATIONS};

/// Plaintext returned by decryption: wiped from memory when dropped, never printed.
pub struct Plaintext(zeroize::Zeroizing<Vec<u8>>);

impl Plaintext {
    pub(crate) fn new(bytes: zeroize::Zeroizing<Vec<u8>>) -> Self {
        Plaintext(bytes)
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as UTF-8 text, as a secret string.
    pub fn into_secret_string(self) -> Result<secrecy::SecretString> {
        let text = std::str::from_utf8(&self.0).map_err(|_| Error::InvalidContext {
            reason: "decrypted value is not UTF-8 text",
        })?;
        Ok(secrecy::SecretString::from(text.to_owned()))
    }
}

impl std::ops::Deref for Plaintext {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plaintext([REDACTED {} bytes])", self.0.len())
    }
}
