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

/// One character-level edit of a ciphertext text; positions wrap around its length.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, char),
    Delete(usize),
    Truncate(usize),
    Swap(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let ch = prop_oneof![
        proptest::sample::select(b"pf1.0123456789AZaz_-=+/".to_vec()).prop_map(char::from),
        proptest::char::any(),
    ];
    prop_oneof![
        (any::<usize>(), ch).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    /// Past the `pf1.` prefix the parser meets any key id and any body.
    #[test]
    fn pf1_texts_with_arbitrary_parts_are_rejected(
        key_id in prop_oneof!["[0-9]{0,25}", ".{0,6}"],
        body in prop_oneof!["[A-Za-z0-9_-]{0,160}", ".{0,40}"],
        dots in 0usize..3,
    ) {
        let ring = keyring();
        let text = format!("pf1.{key_id}{}{body}", ".".repeat(dots));
        let result = ring.decrypt(&ctx(), &text);
        prop_assert!(result.is_err(), "{text:?} decrypted");
        let _ = field_crypto::Keyring::key_id_of(&text);
        let _ = ring.needs_reencrypt(&text);
    }

    /// Several insertions, deletions, truncations and swaps of a valid text.
    #[test]
    fn edited_text_is_rejected(edits in proptest::collection::vec(edit(), 1..5)) {
        let ring = keyring();
        let text = ring.encrypt(&ctx(), b"root-password").unwrap();
        let mut chars: Vec<char> = text.chars().collect();
        for e in &edits {
            let len = chars.len();
            match *e {
                Edit::Insert(i, c) => chars.insert(i % (len + 1), c),
                Edit::Delete(i) if len > 0 => {
                    chars.remove(i % len);
                }
                Edit::Truncate(i) => chars.truncate(i % (len + 1)),
                Edit::Swap(i, j) if len > 0 => chars.swap(i % len, j % len),
                _ => {}
            }
        }
        let forged: String = chars.into_iter().collect();
        match ring.decrypt(&ctx(), &forged) {
            // Only a no-op edit (or one in the unused trailing bits of the last base64url
            // character) may still decrypt, and then to the original plaintext.
            Ok(plain) => prop_assert_eq!(&plain[..], b"root-password"),
            Err(err) => {
                let message = err.to_string();
                prop_assert!(!message.contains("root-password"), "{message}");
            }
        }
    }
}
