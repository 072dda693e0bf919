//! The master key: where it comes from and the keys derived from it.

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hkdf::Hkdf;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// PBKDF2-HMAC-SHA256 iterations at the least for a passphrase master key (OWASP 2023).
pub const PBKDF2_MIN_ITERATIONS: u32 = 600_000;

/// Shortest accepted passphrase, in characters.
const MIN_PASSPHRASE_CHARS: usize = 16;

/// Salt length for passphrase stretching.
const SALT_LEN: usize = 16;

/// Parameters of the passphrase stretching, stored with the keyring (they are not secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Random salt, base64 in the stored form.
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
}

impl KdfParams {
    /// Fresh parameters: a random 128-bit salt and [`PBKDF2_MIN_ITERATIONS`].
    pub fn generate() -> Self {
        let mut salt = vec![0u8; SALT_LEN];
        OsRng.fill_bytes(&mut salt);
        KdfParams {
            salt,
            iterations: PBKDF2_MIN_ITERATIONS,
        }
    }
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Clone)]
enum Source {
    Raw(Zeroizing<[u8; 32]>),
    Passphrase(SecretString),
}

/// The master key, as configured by `FIELD_ENCRYPTION_KEY`.
///
/// `Debug` shows only which kind of key it is. Clones are zeroized on drop too.
#[derive(Clone)]
pub struct MasterKey {
    source: Source,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.source {
            Source::Raw(_) => "base64",
            Source::Passphrase(_) => "passphrase",
        };
        f.debug_struct("MasterKey")
            .field("kind", &kind)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl MasterKey {
    /// Parses the configuration value: `base64:<32 bytes in standard base64>`, or a passphrase
    /// of at least 16 characters. A trailing newline (from a `_FILE`) is ignored.
    pub fn from_config(value: &str) -> Result<Self> {
        let value = value.trim_end_matches(['\n', '\r']);
        if let Some(encoded) = value.strip_prefix("base64:") {
            let bytes =
                Zeroizing::new(STANDARD.decode(encoded.trim().as_bytes()).map_err(|_| {
                    Error::WeakMasterKey {
                        reason: "`base64:` value is not valid standard base64",
                    }
                })?);
            let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::WeakMasterKey {
                reason: "`base64:` value must decode to exactly 32 bytes (e.g. `openssl rand -base64 32`)",
            })?;
            let key = Zeroizing::new(key);
            if key.iter().all(|b| *b == key[0]) {
                return Err(Error::WeakMasterKey {
                    reason: "key bytes are all the same; use 32 random bytes",
                });
            }
            return Ok(MasterKey {
                source: Source::Raw(key),
            });
        }
        Self::from_passphrase(value)
    }

    /// A passphrase master key; stretched with PBKDF2 when a keyring is created or opened.
    pub fn from_passphrase(passphrase: &str) -> Result<Self> {
        let count = passphrase.chars().count();
        if count == 0 {
            return Err(Error::WeakMasterKey {
                reason: "empty; set FIELD_ENCRYPTION_KEY to `base64:<32 random bytes>` or a long passphrase",
            });
        }
        if count < MIN_PASSPHRASE_CHARS {
            return Err(Error::WeakMasterKey {
                reason: "passphrase shorter than 16 characters",
            });
        }
        let mut chars = passphrase.chars();
        let first = chars.next();
        if chars.all(|c| Some(c) == first) {
            return Err(Error::WeakMasterKey {
                reason: "passphrase repeats a single character",
            });
        }
        Ok(MasterKey {
            source: Source::Passphrase(SecretString::from(passphrase.to_owned())),
        })
    }

    /// Whether this key is a passphrase (needs [`KdfParams`]).
    pub fn is_passphrase(&self) -> bool {
        matches!(self.source, Source::Passphrase(_))
    }

    /// The 256-bit root secret: the raw key, or PBKDF2-HMAC-SHA256 of the passphrase.
    pub(crate) fn root(&self, kdf: Option<&KdfParams>) -> Result<Zeroizing<[u8; 32]>> {
        match (&self.source, kdf) {
            (Source::Raw(key), None) => Ok(key.clone()),
            (Source::Raw(_), Some(_)) => Err(Error::InvalidKeyring {
                reason: "the keyring was created from a passphrase but FIELD_ENCRYPTION_KEY is a base64 key"
                    .to_owned(),
            }),
            (Source::Passphrase(_), None) => Err(Error::InvalidKeyring {
                reason: "the keyring was created from a base64 key but FIELD_ENCRYPTION_KEY is a passphrase"
                    .to_owned(),
            }),
            (Source::Passphrase(pass), Some(params)) => {
                if params.iterations < PBKDF2_MIN_ITERATIONS {
                    return Err(Error::InvalidKeyring {
                        reason: format!(
                            "PBKDF2 iterations {} below the minimum {PBKDF2_MIN_ITERATIONS}",
                            params.iterations
                        ),
                    });
                }
                if params.salt.len() < SALT_LEN {
                    return Err(Error::InvalidKeyring {
                        reason: "PBKDF2 salt shorter than 16 bytes".to_owned(),
                    });
                }
                let mut out = Zeroizing::new([0u8; 32]);
                crate::primitives::pbkdf2_sha256(
                    pass.expose_secret().as_bytes(),
                    &params.salt,
                    params.iterations,
                    out.as_mut(),
                );
                Ok(out)
            }
        }
    }
}

/// HKDF-SHA256 expansion of `ikm` for `info` into 32 bytes.
pub(crate) fn hkdf32(ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(None, ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    if hk.expand_multi_info(info, out.as_mut()).is_err() {
        unreachable!("HKDF-SHA256 output of 32 bytes is always valid");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn rejects_weak_input_with_reasons() {
        for (input, needle) in [
            ("", "empty"),
            ("short pass", "shorter than 16"),
            ("aaaaaaaaaaaaaaaaaaaaaa", "single character"),
            ("base64:not base64!", "not valid standard base64"),
            ("base64:AAECAw==", "exactly 32 bytes"),
            (
                "base64:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                "all the same",
            ),
        ] {
            let err = MasterKey::from_config(input).unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{input:?}: {err} should mention {needle:?}"
            );
        }
    }

    #[test]
    fn accepts_good_input() {
        let raw = MasterKey::from_config("base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=\n")
            .unwrap();
        assert!(!raw.is_passphrase());
        let pass = MasterKey::from_config("correct horse battery staple").unwrap();
        assert!(pass.is_passphrase());
    }

    #[test]
    fn kind_mismatch_is_explained() {
        let raw =
            MasterKey::from_config("base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=").unwrap();
        let err = raw.root(Some(&KdfParams::generate())).unwrap_err();
        assert!(err.to_string().contains("created from a passphrase"));
    }

    #[test]
    fn low_iteration_count_is_refused() {
        let pass = MasterKey::from_passphrase("correct horse battery staple").unwrap();
        let params = KdfParams {
            salt: vec![7; 16],
            iterations: 1000,
        };
        assert!(matches!(
            pass.root(Some(&params)),
            Err(Error::InvalidKeyring { .. })
        ));
    }
}
