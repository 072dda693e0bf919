//! The audit key (a secret) and chain MACs (not secret).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Salt of the derivation in [`AuditKey::derive`]; changing it changes every MAC.
const DERIVE_LABEL: &[u8] = b"portal-provisioner/audit-key/v1";
const FINGERPRINT_LABEL: &[u8] = b"portal-provisioner/audit-key-fingerprint/v1";

/// The 256-bit HMAC key of the audit chain.
///
/// Held in a [`SecretBox`] (zeroized on drop; cloning shares one allocation). `Debug` and
/// `Display` show only a fingerprint (a one-way function of the key), never key bytes.
#[derive(Clone)]
pub struct AuditKey {
    bytes: Arc<SecretBox<[u8; 32]>>,
}

impl AuditKey {
    /// Key length in bytes.
    pub const LEN: usize = 32;

    /// Uses exactly 32 caller-supplied bytes as the key (they should already be a uniformly
    /// random key, e.g. derived from the master key by field-crypto). The caller keeps
    /// responsibility for zeroizing its own copy.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != Self::LEN {
            return Err(Error::InvalidKey {
                reason: "must be exactly 32 bytes",
            });
        }
        if bytes.iter().all(|b| *b == 0) {
            return Err(Error::InvalidKey {
                reason: "all-zero key",
            });
        }
        Ok(Self::from_fn(|k| k.copy_from_slice(bytes)))
    }

    /// Derives the key from at least 32 bytes of high-entropy input keying material:
    /// `HMAC-SHA256(key = "portal-provisioner/audit-key/v1", message = ikm)`, i.e. HKDF-Extract
    /// with that label as salt. The binary passes bytes derived from the master key, so the
    /// audit key changes with it and is never stored.
    pub fn derive(ikm: &[u8]) -> Result<Self> {
        if ikm.len() < Self::LEN {
            return Err(Error::InvalidKey {
                reason: "input keying material shorter than 32 bytes",
            });
        }
        let mut mac = keyed(DERIVE_LABEL);
        mac.update(ikm);
        let out = mac.finalize().into_bytes();
        Ok(Self::from_fn(|k| k.copy_from_slice(&out)))
    }

    fn from_fn(fill: impl FnOnce(&mut [u8; 32])) -> Self {
        AuditKey {
            bytes: Arc::new(SecretBox::init_with_mut(fill)),
        }
    }

    /// A short public identifier of the key (16 hex digits of a keyed hash of a fixed label),
    /// to tell keys apart in logs and reports without revealing them.
    pub fn fingerprint(&self) -> String {
        let mut mac = self.hmac();
        mac.update(FINGERPRINT_LABEL);
        hex(&mac.finalize().into_bytes()[..8])
    }

    fn hmac(&self) -> HmacSha256 {
        keyed(self.bytes.expose_secret())
    }

    /// `HMAC-SHA256(key, prev || canonical)`.
    pub(crate) fn chain_mac(&self, prev: &Mac, canonical: &[u8]) -> Mac {
        let mut mac = self.hmac();
        mac.update(&prev.0);
        mac.update(canonical);
        Mac(mac.finalize().into_bytes().into())
    }

    /// Constant-time check of a chain MAC.
    pub(crate) fn chain_mac_matches(&self, prev: &Mac, canonical: &[u8], expected: &Mac) -> bool {
        let mut mac = self.hmac();
        mac.update(&prev.0);
        mac.update(canonical);
        mac.verify_slice(&expected.0).is_ok()
    }
}

/// An HMAC-SHA256 instance keyed with `key` (at most one SHA-256 block, 64 bytes).
///
/// RFC 2104 pads keys shorter than the block with zeros, so keying with the zero-padded block
/// is the same HMAC, and unlike `new_from_slice` it has no error path. The padded copy is
/// zeroized.
fn keyed(key: &[u8]) -> HmacSha256 {
    use hmac::digest::KeyInit;
    use zeroize::Zeroize;
    let mut block = [0u8; 64];
    let n = key.len().min(block.len());
    block[..n].copy_from_slice(&key[..n]);
    let mac = <HmacSha256 as KeyInit>::new(&block.into());
    block.zeroize();
    mac
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit key {} (redacted)", self.fingerprint())
    }
}

/// A 32-byte chain MAC. Public information: stored next to each record, shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 32]);

impl Mac {
    /// The "previous MAC" of the first record ever (32 zero bytes).
    pub const ZERO: Mac = Mac([0; 32]);

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex (64 digits).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({})", self.to_hex())
    }
}

impl FromStr for Mac {
    type Err = Error;

    /// Parses 64 hex digits (either case).
    fn from_str(s: &str) -> Result<Self> {
        let invalid = Error::InvalidField {
            field: "mac",
            reason: "must be 64 hex digits",
        };
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(invalid);
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(h), Some(l)) => *o = (h << 4) | l,
                _ => return Err(invalid),
            }
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom("mac must be 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn key_length_and_zero_rules() {
        assert!(matches!(
            AuditKey::from_bytes(&[7; 31]),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            AuditKey::from_bytes(&[0; 32]),
            Err(Error::InvalidKey { .. })
        ));
        assert!(AuditKey::from_bytes(&[7; 32]).is_ok());
        assert!(matches!(
            AuditKey::derive(&[7; 16]),
            Err(Error::InvalidKey { .. })
        ));
    }

    #[test]
    fn derive_is_deterministic_and_input_sensitive() {
        let a = AuditKey::derive(&[1; 32]).unwrap();
        let b = AuditKey::derive(&[1; 32]).unwrap();
        let c = AuditKey::derive(&[2; 32]).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        // Frozen: HMAC-SHA256(key = label, msg = ikm), computed independently with Python.
        let d = AuditKey::derive(&[0x5a; 32]).unwrap();
        let expected = "bfd0f5e5888ed5cb5ee2e49c3452fca510afa81564d51f3339293573e1a239b1";
        assert_eq!(hex(d.bytes.expose_secret()), expected);
        // derive is not the identity
        let raw = AuditKey::from_bytes(&[1; 32]).unwrap();
        assert_ne!(a.fingerprint(), raw.fingerprint());
    }

    #[test]
    fn mac_hex_round_trip() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::try_from(i * 7).unwrap();
        }
        let m = Mac(bytes);
        assert_eq!(m.to_hex().parse::<Mac>().unwrap(), m);
        assert_eq!(m.to_hex().to_uppercase().parse::<Mac>().unwrap(), m);
        assert!("zz".repeat(32).parse::<Mac>().is_err());
        assert!("00".parse::<Mac>().is_err());
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Mac>(&json).unwrap(), m);
    }

    #[test]
    fn padded_keying_equals_standard_hmac() {
        for key in [&[9u8; 32][..], DERIVE_LABEL, &[5u8; 64][..]] {
            let mut ours = keyed(key);
            ours.update(b"message");
            let mut std = HmacSha256::new_from_slice(key).unwrap();
            std.update(b"message");
            assert_eq!(ours.finalize().into_bytes(), std.finalize().into_bytes());
        }
    }

    #[test]
    fn mac_check_is_exact() {
        let k = AuditKey::from_bytes(&[9; 32]).unwrap();
        let m = k.chain_mac(&Mac::ZERO, b"abc");
        assert!(k.chain_mac_matches(&Mac::ZERO, b"abc", &m));
        assert!(!k.chain_mac_matches(&Mac::ZERO, b"abd", &m));
        let mut other = m;
        other.0[31] ^= 1;
        assert!(!k.chain_mac_matches(&Mac::ZERO, b"abc", &other));
    }
}
