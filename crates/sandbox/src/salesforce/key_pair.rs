//! The connected app's RSA key pair: generated fresh when a sandbox starts, or derived from a
//! private key the caller already has. No key is built into this crate, so nothing that links
//! it (the `provisioner` binary included) carries a private key.

use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use secrecy::SecretString;

/// The modulus size [`KeyPair::generate`] uses, as Salesforce's certificate upload expects.
pub const KEY_BITS: usize = 2048;

/// Why a key pair could not be made. The messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyPairError {
    /// The operating system's random source or the prime search failed.
    #[error("generating an RSA key pair failed")]
    Generate(#[source] rsa::Error),
    /// The PEM is neither a PKCS#8 (`BEGIN PRIVATE KEY`) nor a PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`) RSA private key.
    #[error("not an RSA private key in PKCS#8 or PKCS#1 PEM")]
    InvalidPrivateKey,
    /// The key could not be written as PEM.
    #[error("encoding the {0} key as PEM failed")]
    Encode(&'static str),
}

/// An RSA key pair in PEM: the private key signs JWT bearer assertions (`SF_PRIVATE_KEY`), the
/// public key is what [`super::SalesforceConfig::public_key_pem`] trusts.
///
/// `Debug` shows the public key only.
#[derive(Clone, Debug)]
pub struct KeyPair {
    private_key_pem: SecretString,
    public_key_pem: String,
}

impl KeyPair {
    /// A fresh [`KEY_BITS`]-bit key pair from the operating system's random source. Takes
    /// tens to hundreds of milliseconds (the prime search varies).
    pub fn generate() -> Result<Self, KeyPairError> {
        let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, KEY_BITS)
            .map_err(KeyPairError::Generate)?;
        Self::from_key(&key)
    }

    /// The pair of an existing private key (PKCS#8 or PKCS#1 PEM), its public key derived.
    pub fn from_private_key_pem(pem: &str) -> Result<Self, KeyPairError> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyPairError::InvalidPrivateKey)?;
        Self::from_key(&key)
    }

    fn from_key(key: &RsaPrivateKey) -> Result<Self, KeyPairError> {
        let private = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| KeyPairError::Encode("private"))?;
        let public_key_pem = RsaPublicKey::from(key)
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| KeyPairError::Encode("public"))?;
        Ok(Self {
            private_key_pem: SecretString::from(private.as_str()),
            public_key_pem,
        })
    }

    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn private_key_pem(&self) -> &SecretString {
        &self.private_key_pem
    }

    /// The public key, SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use secrecy::ExposeSecret as _;

    use super::*;

    #[test]
    fn a_generated_pair_signs_what_its_public_key_verifies() {
        let pair = KeyPair::generate().unwrap();
        let private = pair.private_key_pem().expose_secret();
        assert!(
            private.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "PKCS#8"
        );
        assert!(
            pair.public_key_pem()
                .starts_with("-----BEGIN PUBLIC KEY-----\n")
        );
        let claims = serde_json::json!({"sub": "x", "exp": 4_000_000_000u64});
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        let signing = jsonwebtoken::EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
        let verifying =
            jsonwebtoken::DecodingKey::from_rsa_pem(pair.public_key_pem().as_bytes()).unwrap();
        let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        jsonwebtoken::decode::<serde_json::Value>(&token, &verifying, &validation).unwrap();

        // The same pair again from its private key; a second generation differs.
        let again = KeyPair::from_private_key_pem(private).unwrap();
        assert_eq!(again.public_key_pem(), pair.public_key_pem());
        assert_ne!(
            KeyPair::generate().unwrap().public_key_pem(),
            pair.public_key_pem()
        );
        assert!(!format!("{pair:?}").contains("PRIVATE"), "{pair:?}");
    }

    #[test]
    fn the_test_keys_derive_their_public_keys() {
        for (private, public) in [
            (
                test_support::keys::PRIVATE_KEY_PEM,
                test_support::keys::PUBLIC_KEY_PEM,
            ),
            (
                test_support::keys::OTHER_PRIVATE_KEY_PEM,
                test_support::keys::OTHER_PUBLIC_KEY_PEM,
            ),
        ] {
            let pair = KeyPair::from_private_key_pem(private).unwrap();
            assert_eq!(pair.public_key_pem().trim(), public.trim());
        }
    }

    #[test]
    fn what_is_not_a_private_key_is_refused_without_echoing_it() {
        for pem in [
            "",
            "not pem",
            test_support::keys::PUBLIC_KEY_PEM,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let err = KeyPair::from_private_key_pem(pem).unwrap_err();
            assert!(matches!(err, KeyPairError::InvalidPrivateKey), "{err:?}");
            assert!(!err.to_string().contains("AAAA"));
        }
    }
}
