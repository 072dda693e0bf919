//! Round trips: any plaintext, any context, fresh nonces.

use field_crypto::{FieldContext, Keyring, MasterKey};
use proptest::prelude::*;

use crate::{TEST_MASTER, keyring, t0};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_value_round_trips(
        plaintext in proptest::collection::vec(any::<u8>(), 0..512),
        kind in "[a-z_][a-z0-9_]{0,20}",
        record in "[A-Za-z0-9]{1,40}",
    ) {
        let ring = keyring();
        let ctx = FieldContext::new(&kind, &record).unwrap();
        let text = ring.encrypt(&ctx, &plaintext).unwrap();
        prop_assert!(text.starts_with("pf1.1."));
        let back = ring.decrypt(&ctx, &text).unwrap();
        prop_assert_eq!(&back[..], &plaintext[..]);
    }
}

#[test]
fn every_encryption_uses_a_fresh_nonce() {
    let ring = keyring();
    let ctx = FieldContext::new("config_options", "801000000000001AAA").unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let text = ring.encrypt(&ctx, b"same plaintext").unwrap();
        // The first 16 base64url characters after the prefix are the nonce's first 12 bytes.
        let nonce = text.split('.').nth(2).unwrap()[..16].to_owned();
        assert!(seen.insert(nonce), "nonce repeated");
    }
}

#[test]
fn text_format_is_pf1_key_id_base64url() {
    let ring = keyring();
    let ctx = FieldContext::new("k", "r").unwrap();
    let text = ring.encrypt(&ctx, &[0u8; 64]).unwrap();
    let parts: Vec<&str> = text.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], "pf1");
    assert_eq!(parts[1], "1");
    // 12 nonce + 64 ciphertext + 16 tag = 92 bytes = 123 base64url chars without padding.
    assert_eq!(parts[2].len(), 123);
    assert!(
        parts[2]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
}

#[test]
fn stored_keyring_reopens_and_wrong_master_is_refused() {
    let master = MasterKey::from_config(TEST_MASTER).unwrap();
    let ring = Keyring::create(&master, t0()).unwrap();
    let ctx = FieldContext::new("k", "r").unwrap();
    let text = ring.encrypt(&ctx, b"v").unwrap();
    let json = serde_json::to_string(&ring.to_stored()).unwrap();
    let stored = serde_json::from_str(&json).unwrap();
    let reopened = Keyring::open(&master, &stored).unwrap();
    assert_eq!(&reopened.decrypt(&ctx, &text).unwrap()[..], b"v");

    let other =
        MasterKey::from_config("base64:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=").unwrap();
    let err = Keyring::open(&other, &stored).unwrap_err();
    assert!(
        matches!(err, field_crypto::Error::WrongMasterKey { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("FIELD_ENCRYPTION_KEY"));
}

#[test]
fn passphrase_master_key_uses_stored_salt() {
    let master = MasterKey::from_config("correct horse battery staple").unwrap();
    let ring = Keyring::create(&master, t0()).unwrap();
    let stored = ring.to_stored();
    let kdf = stored.kdf.clone().unwrap();
    assert!(kdf.iterations >= field_crypto::PBKDF2_MIN_ITERATIONS);
    assert_eq!(kdf.salt.len(), 16);
    let ctx = FieldContext::new("k", "r").unwrap();
    let text = ring.encrypt(&ctx, b"v").unwrap();
    let reopened = Keyring::open(&master, &stored).unwrap();
    assert_eq!(&reopened.decrypt(&ctx, &text).unwrap()[..], b"v");
    let wrong = MasterKey::from_config("correct horse battery stapler").unwrap();
    assert!(Keyring::open(&wrong, &stored).is_err());
}

#[test]
fn mac_keys_are_stable_across_rotation_and_rewrap() {
    use secrecy::ExposeSecret;
    let master = MasterKey::from_config(TEST_MASTER).unwrap();
    let mut ring = Keyring::create(&master, t0()).unwrap();
    let before = *ring.derive_mac_key("audit-chain").expose_secret();
    assert_ne!(before, *ring.derive_mac_key("other").expose_secret());
    ring.rotate(t0()).unwrap();
    let new_master =
        MasterKey::from_config("base64:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=").unwrap();
    let rewrapped = ring.rewrap(&new_master).unwrap();
    let reopened = Keyring::open(&new_master, &rewrapped.to_stored()).unwrap();
    assert_eq!(
        before,
        *reopened.derive_mac_key("audit-chain").expose_secret()
    );
}
