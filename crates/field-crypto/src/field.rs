//! Field contexts and the `pf1` text format.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, Result};
use crate::keyring::KeyId;

/// Version prefix of the text format.
pub(crate) const PREFIX: &str = "pf1";
/// AES-GCM nonce length (96 bits).
pub(crate) const NONCE_LEN: usize = 12;
/// AES-GCM tag length (128 bits).
pub(crate) const TAG_LEN: usize = 16;

/// What kind of field a value is (`config_options`, `dead_letter_payload`, ...).
///
/// Each kind gets its own subkey, and the kind is bound into the associated data, so a
/// ciphertext moved to another kind of field does not decrypt. 1 to 64 characters of
/// `a-z`, `0-9` and `_`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldKind(Box<str>);

impl FieldKind {
    /// Validates a field kind name.
    pub fn new(name: &str) -> Result<Self> {
        if name.is_empty() || name.len() > 64 {
            return Err(Error::InvalidContext {
                reason: "field kind must be 1 to 64 characters",
            });
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::InvalidContext {
                reason: "field kind may only hold a-z, 0-9 and _",
            });
        }
        Ok(FieldKind(name.into()))
    }

    /// The kind's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for FieldKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a ciphertext belongs: a field kind and the id of the record holding it.
///
/// Both are bound into the AES-GCM associated data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldContext {
    kind: FieldKind,
    record_id: Box<str>,
}

impl FieldContext {
    /// A context for `kind` in the record `record_id` (1 to 255 bytes, e.g. a Salesforce id).
    pub fn new(kind: &str, record_id: &str) -> Result<Self> {
        Self::with_kind(FieldKind::new(kind)?, record_id)
    }

    /// A context from an already validated kind.
    pub fn with_kind(kind: FieldKind, record_id: &str) -> Result<Self> {
        if record_id.is_empty() || record_id.len() > 255 {
            return Err(Error::InvalidContext {
                reason: "record id must be 1 to 255 bytes",
            });
        }
        Ok(FieldContext {
            kind,
            record_id: record_id.into(),
        })
    }

    /// The field kind.
    pub fn kind(&self) -> &FieldKind {
        &self.kind
    }

    /// The record id.
    pub fn record_id(&self) -> &str {
        &self.record_id
    }

    /// Associated data: `"pf1" || len(kind) || kind || len(record) || record || key id`,
    /// lengths and key id big-endian, so no two contexts share an encoding.
    pub(crate) fn aad(&self, key_id: KeyId) -> Vec<u8> {
        let kind = self.kind.as_str().as_bytes();
        let record = self.record_id.as_bytes();
        let mut aad = Vec::with_capacity(3 + 1 + kind.len() + 2 + record.len() + 4);
        aad.extend_from_slice(PREFIX.as_bytes());
        // Lengths are bounded by the constructors (<= 64 and <= 255).
        aad.push(kind.len() as u8);
        aad.extend_from_slice(kind);
        aad.extend_from_slice(&(record.len() as u16).to_be_bytes());
        aad.extend_from_slice(record);
        aad.extend_from_slice(&key_id.get().to_be_bytes());
        aad
    }
}

/// A parsed `pf1.<key id>.<base64url>` text.
pub(crate) struct Envelope {
    pub(crate) key_id: KeyId,
    /// `nonce || ciphertext || tag`.
    pub(crate) body: Vec<u8>,
}

impl Envelope {
    pub(crate) fn format(key_id: KeyId, body: &[u8]) -> String {
        let mut out = String::with_capacity(PREFIX.len() + 12 + body.len().div_ceil(3) * 4);
        out.push_str(PREFIX);
        out.push('.');
        out.push_str(&key_id.to_string());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(body, &mut out);
        out
    }

    pub(crate) fn key_id_of(text: &str) -> Result<KeyId> {
        let mut parts = text.splitn(3, '.');
        let (Some(prefix), Some(id), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::MalformedCiphertext {
                reason: "expected `pf1.<key id>.<data>`",
            });
        };
        if prefix != PREFIX {
            return Err(Error::MalformedCiphertext {
                reason: "unknown format version (expected `pf1`)",
            });
        }
        parse_key_id(id)
    }

    pub(crate) fn parse(text: &str) -> Result<Self> {
        let key_id = Self::key_id_of(text)?;
        let data = text.splitn(3, '.').nth(2).unwrap_or_default();
        let body =
            URL_SAFE_NO_PAD
                .decode(data.as_bytes())
                .map_err(|_| Error::MalformedCiphertext {
                    reason: "data is not unpadded base64url",
                })?;
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::MalformedCiphertext {
                reason: "too short to hold a nonce and a tag",
            });
        }
        Ok(Envelope { key_id, body })
    }
}

fn parse_key_id(id: &str) -> Result<KeyId> {
    let canonical = !id.is_empty()
        && id.len() <= 10
        && id.bytes().all(|b| b.is_ascii_digit())
        && !(id.len() > 1 && id.starts_with('0'));
    let n = if canonical {
        id.parse::<u32>().ok()
    } else {
        None
    };
    match n {
        Some(n) if n > 0 => Ok(KeyId::new(n)),
        _ => Err(Error::MalformedCiphertext {
            reason: "key id must be a positive decimal number",
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn field_kind_rules() {
        assert!(FieldKind::new("config_options").is_ok());
        assert!(FieldKind::new("").is_err());
        assert!(FieldKind::new("Config").is_err());
        assert!(FieldKind::new("a.b").is_err());
        assert!(FieldKind::new(&"a".repeat(65)).is_err());
        assert!(FieldContext::new("x", "").is_err());
        assert!(FieldContext::new("x", &"r".repeat(256)).is_err());
    }

    #[test]
    fn aad_is_unambiguous() {
        let a = FieldContext::new("ab", "c").unwrap().aad(KeyId::new(1));
        let b = FieldContext::new("a", "bc").unwrap().aad(KeyId::new(1));
        assert_ne!(a, b);
        let c = FieldContext::new("ab", "c").unwrap().aad(KeyId::new(2));
        assert_ne!(a, c);
    }

    #[test]
    fn envelope_parse_errors() {
        for text in [
            "",
            "pf1",
            "pf1.1",
            "pf2.1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "pf1.0.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "pf1.01.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "pf1.x.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "pf1.1.AAAA",
            "pf1.1.AA==AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "pf1.99999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(
                matches!(
                    Envelope::parse(text),
                    Err(Error::MalformedCiphertext { .. })
                ),
                "{text:?} must be malformed"
            );
        }
    }
}
