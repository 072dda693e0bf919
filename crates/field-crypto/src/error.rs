//! The crate's error type.

use crate::keyring::KeyId;

/// Everything that can go wrong in field encryption and key management.
///
/// Messages never contain key bytes, plaintext or ciphertext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `FIELD_ENCRYPTION_KEY` is unusable; the reason says how to fix it.
    #[error("master key rejected: {reason}")]
    WeakMasterKey {
        /// What is wrong with it (never the key itself).
        reason: &'static str,
    },
    /// The master key does not unwrap the stored keyring (a different `FIELD_ENCRYPTION_KEY`
    /// than the one that created it, or tampered key records).
    #[error(
        "master key does not unwrap data key {key_id} (wrong FIELD_ENCRYPTION_KEY, or the stored key was modified)"
    )]
    WrongMasterKey {
        /// The data key that failed to unwrap.
        key_id: KeyId,
    },
    /// The stored keyring is inconsistent (missing primary, duplicate ids, bad encoding).
    #[error("stored keyring is invalid: {reason}")]
    InvalidKeyring {
        /// What is inconsistent.
        reason: String,
    },
    /// The ciphertext names a key this keyring does not hold.
    #[error(
        "data key {key_id} is not in the keyring (was it deleted, or is this another keyring's data?)"
    )]
    UnknownKey {
        /// The key id named by the ciphertext.
        key_id: KeyId,
    },
    /// The text is not a `pf1.<key id>.<base64url>` ciphertext.
    #[error("malformed ciphertext: {reason}")]
    MalformedCiphertext {
        /// What is wrong with its shape.
        reason: &'static str,
    },
    /// Authentication failed: the ciphertext was modified, or belongs to another field kind,
    /// record or key.
    #[error("ciphertext failed authentication for field kind `{kind}` under key {key_id}")]
    DecryptFailed {
        /// Field kind the caller asked to decrypt.
        kind: String,
        /// Key named by the ciphertext.
        key_id: KeyId,
    },
    /// A field kind or record id that cannot be used as context.
    #[error("invalid field context: {reason}")]
    InvalidContext {
        /// Why.
        reason: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("random number generator failed")]
    Rng,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
