//! The order intake's adapters: sensitive options sealed with the store's keyring, and
//! `provisioner-core`'s order intake as the status API's order desk.

use std::sync::Arc;

use async_trait::async_trait;
use field_crypto::FieldContext;
use provisioner_core::order_intake::{
    OptionOpener, OptionSealer, OrderIntake, SENSITIVE_OPTION_KIND,
};
use provisioner_store::SqlStore;
use secrecy::{ExposeSecret, SecretString};

/// Seals with the primary data key of the store's keyring (the current one, so a rotation
/// takes effect at once; older Orders stay readable, their key id is in the text), and
/// fingerprints with a keyed PRF (HKDF-Extract, i.e. HMAC-SHA256, under a MAC key of the
/// keyring): a fingerprint of a body with a secret in it cannot be guessed back.
pub(crate) struct KeyringSealer(pub(crate) Arc<SqlStore>);

impl KeyringSealer {
    /// The associated data of option `option_id` of the Order with `external_id`.
    pub(crate) fn context(external_id: &str, option_id: &str) -> Result<FieldContext, String> {
        FieldContext::new(SENSITIVE_OPTION_KIND, &format!("{external_id}#{option_id}"))
            .map_err(|e| e.to_string())
    }
}

impl OptionSealer for KeyringSealer {
    fn seal(&self, external_id: &str, option_id: &str, value: &str) -> Result<String, String> {
        let ctx = Self::context(external_id, option_id)?;
        self.0
            .keyring()
            .encrypt(&ctx, value.as_bytes())
            .map_err(|e| e.to_string())
    }

    fn fingerprint(&self, bytes: &[u8]) -> Result<String, String> {
        let key = self.0.keyring().derive_mac_key("order-request-fingerprint");
        let mut out = [0u8; 32];
        field_crypto::primitives::hkdf_sha256(
            Some(key.expose_secret()),
            bytes,
            b"portal-provisioner/order-request",
            &mut out,
        )
        .map_err(|e| e.to_string())?;
        Ok(out.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl OptionOpener for KeyringSealer {
    fn open(
        &self,
        external_id: &str,
        option_id: &str,
        sealed: &str,
    ) -> Result<SecretString, String> {
        let ctx = Self::context(external_id, option_id)?;
        let plain = self
            .0
            .keyring()
            .decrypt(&ctx, sealed)
            .map_err(|e| e.to_string())?;
        let text =
            std::str::from_utf8(plain.expose()).map_err(|_| "the value is not UTF-8".to_owned())?;
        Ok(SecretString::from(text.to_owned()))
    }
}

/// The order desk of the status API: `provisioner-core`'s order intake.
pub(crate) struct Desk(pub(crate) Arc<OrderIntake>);

#[async_trait]
impl status_api::OrderDesk for Desk {
    async fn place(
        &self,
        customer: &str,
        idempotency_key: &str,
        body: &[u8],
    ) -> status_api::DeskAnswer {
        let answer = self.0.place(customer, idempotency_key, body).await;
        status_api::DeskAnswer {
            status: answer.status,
            body: answer.body,
            retry_after: answer.retry_after,
        }
    }
}
