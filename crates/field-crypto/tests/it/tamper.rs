//! Tampering: every modification is a typed error, never a panic or garbage.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use field_crypto::{Error, FieldContext};
use proptest::prelude::*;

use crate::{keyring, t0};

fn ctx() -> FieldContext {
    FieldContext::new("config_options", "801000000000001AAA").unwrap()
}

#[test]
fn flipping_any_single_byte_of_the_ciphertext_fails() {
    let ring = keyring();
    let text = ring.encrypt(&ctx(), &[0x5a; 64]).unwrap();
    let data = text.split('.').nth(2).unwrap();
    let body = URL_SAFE_NO_PAD.decode(data).unwrap();
    for i in 0..body.len() {
        for bit in [0x01u8, 0x80, 0xff] {
            let mut bad = body.clone();
            bad[i] ^= bit;
            let forged = format!("pf1.1.{}", URL_SAFE_NO_PAD.encode(&bad));
            match ring.decrypt(&ctx(), &forged) {
                Err(Error::DecryptFailed { key_id, .. }) => assert_eq!(key_id.get(), 1),
                other => panic!("byte {i} ^ {bit:#x}: expected DecryptFailed, got {other:?}"),
            }
        }
    }
}

#[test]
fn truncation_and_extension_fail() {
    let ring = keyring();
    let text = ring.encrypt(&ctx(), b"secret").unwrap();
    let body = URL_SAFE_NO_PAD
        .decode(text.split('.').nth(2).unwrap())
        .unwrap();
    for len in 0..body.len() {
        let forged = format!("pf1.1.{}", URL_SAFE_NO_PAD.encode(&body[..len]));
        assert!(ring.decrypt(&ctx(), &forged).is_err(), "truncated to {len}");
    }
    let mut longer = body.clone();
    longer.push(0);
    let forged = format!("pf1.1.{}", URL_SAFE_NO_PAD.encode(&longer));
    assert!(ring.decrypt(&ctx(), &forged).is_err());
}

#[test]
fn another_kind_or_record_fails() {
    let ring = keyring();
    let text = ring.encrypt(&ctx(), b"secret").unwrap();
    let other_kind = FieldContext::new("dead_letter_payload", "801000000000001AAA").unwrap();
    let other_record = FieldContext::new("config_options", "801000000000002AAA").unwrap();
    for wrong in [other_kind, other_record] {
        assert!(matches!(
            ring.decrypt(&wrong, &text),
            Err(Error::DecryptFailed { .. })
        ));
    }
}

#[test]
fn another_key_id_fails() {
    let mut ring = keyring();
    let text = ring.encrypt(&ctx(), b"secret").unwrap();
    ring.rotate(t0()).unwrap();
    // Key 2 exists: relabelling the ciphertext as key 2 fails authentication.
    let relabelled = text.replacen("pf1.1.", "pf1.2.", 1);
    assert!(matches!(
        ring.decrypt(&ctx(), &relabelled),
        Err(Error::DecryptFailed { key_id, .. }) if key_id.get() == 2
    ));
    // Key 9 does not exist: the error names it.
    let unknown = text.replacen("pf1.1.", "pf1.9.", 1);
    let err = ring.decrypt(&ctx(), &unknown).unwrap_err();
    assert!(matches!(err, Error::UnknownKey { key_id } if key_id.get() == 9));
    assert!(err.to_string().contains("data key 9"));
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        let ring = keyring();
        prop_assert!(ring.decrypt(&ctx(), &text).is_err());
    }

    #[test]
    fn mutated_text_is_rejected(pos in 0usize..200, ch in proptest::char::any()) {
        let ring = keyring();
        let text = ring.encrypt(&ctx(), b"root-password").unwrap();
        let mut chars: Vec<char> = text.chars().collect();
        let pos = pos % chars.len();
        prop_assume!(chars[pos] != ch);
        chars[pos] = ch;
        let forged: String = chars.into_iter().collect();
        // Base64url has unused trailing bits in its last character; a change there may
        // decode to the same bytes, which is not a forgery.
        if let Ok(plain) = ring.decrypt(&ctx(), &forged) {
            prop_assert_eq!(&plain[..], b"root-password");
            prop_assert_eq!(pos, text.len() - 1);
        }
    }
}
