//! The raw primitives behind the keyring, exposed so they can be checked against published
//! test vectors (NIST CAVP AES-256-GCM, RFC 7914 PBKDF2-HMAC-SHA256). Prefer [`crate::Keyring`]:
//! these functions do not pick nonces or keys for you.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::field::TAG_LEN;

/// AES-256-GCM encryption with a 96-bit nonce: returns `ciphertext || 16-byte tag`.
pub fn aes256gcm_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
    out.extend_from_slice(plaintext);
    match cipher.encrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut out) {
        Ok(tag) => out.extend_from_slice(&tag),
        // Only plaintexts longer than AES-GCM's 64 GiB limit fail; nothing usable comes back.
        Err(_) => out.clear(),
    }
    out
}

/// AES-256-GCM decryption of `ciphertext || tag`; an authentication failure is an error.
pub fn aes256gcm_open(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    sealed: &[u8],
) -> Result<crate::Plaintext> {
    if sealed.len() < TAG_LEN {
        return Err(Error::MalformedCiphertext {
            reason: "shorter than the 16-byte tag",
        });
    }
    let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
    let cipher = Aes256Gcm::new(key.into());
    let mut plain = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            aad,
            plain.as_mut_slice(),
            Tag::from_slice(tag),
        )
        .map_err(|_| Error::DecryptFailed {
            kind: "raw".to_owned(),
            key_id: crate::KeyId::new(0),
        })?;
    Ok(crate::Plaintext::new(plain))
}

/// PBKDF2-HMAC-SHA256 of `password` and `salt` with `iterations`, filling `out`.
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, out);
}

/// HKDF-SHA256 (RFC 5869) extract-and-expand, filling `out` (at most 8160 bytes).
pub fn hkdf_sha256(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<()> {
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, out)
        .map_err(|_| Error::InvalidContext {
            reason: "HKDF-SHA256 output longer than 8160 bytes",
        })
}
