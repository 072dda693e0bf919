#![doc = include_str!("../README.md")]

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
