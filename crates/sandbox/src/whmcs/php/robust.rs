//! Robustness of the PHP-side parsers: random bytes and mutated valid forms and serialized
//! strings never panic, valid input reads back exactly, and failures carry an in-bounds offset.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use base64::Engine as _;
use proptest::prelude::*;
use test_support::mutation::{Mutation, apply};

use super::*;

/// PHP `serialize()` of the subset `unserialize` reads (byte lengths, `{}` floats).
fn serialize(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"N;"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"b:1;" } else { b"b:0;" }),
        Value::Int(n) => out.extend_from_slice(format!("i:{n};").as_bytes()),
        Value::Float(f) => out.extend_from_slice(format!("d:{f};").as_bytes()),
        Value::Str(bytes) => serialize_str(bytes, out),
        Value::Array(array) => {
            out.extend_from_slice(format!("a:{}:{{", array.len()).as_bytes());
            for (key, value) in &array.0 {
                match key {
                    Key::Int(n) => out.extend_from_slice(format!("i:{n};").as_bytes()),
                    Key::Str(s) => serialize_str(s.as_bytes(), out),
                }
                serialize(value, out);
            }
            out.push(b'}');
        }
    }
}

fn serialize_str(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("s:{}:\"", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\";");
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        any::<i64>().prop_map(Key::Int),
        // Not canonical integers, so they stay string keys.
        "[a-z_][a-z0-9_.]{0,8}".prop_map(Key::Str),
    ]
}

/// Values as WHMCS stores them: scalars, byte strings with quotes and `;`, nested arrays with
/// distinct keys.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Float),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Value::Str),
        Just(Value::Str(b"a\";s:1:\"}".to_vec())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop::collection::btree_map(key(), inner, 0..6)
            .prop_map(|map: BTreeMap<Key, Value>| Value::Array(Array(map.into_iter().collect())))
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Bytes that matter to the grammars: digits, separators, quotes, brackets, escapes.
    let special = prop::sample::select(b"0123456789-:;{}\"aisbdN=&[]%+.".to_vec());
    test_support::mutation::mutation(special.clone(), prop_oneof![special, any::<u8>()])
}

/// What every `unserialize` outcome satisfies.
fn check_unserialize(bytes: &[u8]) -> Result<(), TestCaseError> {
    match unserialize(bytes) {
        Ok(value) => {
            // What it accepted, it can write back into the same bytes' meaning.
            let mut again = Vec::new();
            serialize(&value, &mut again);
            prop_assert!(unserialize(&again).is_ok());
        }
        Err(err) => prop_assert!(err.offset <= bytes.len(), "{err}"),
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let _ = decode_serialized_base64(b64.as_bytes());
    Ok(())
}

/// What every `$_POST` parse satisfies: top-level names are non-empty, have no `.` or space
/// (PHP turns them into `_`) and no leading space.
fn check_form(body: &[u8]) -> Result<(), TestCaseError> {
    let post = parse_form(body);
    for (key, _) in &post.0 {
        if let Key::Str(name) = key {
            prop_assert!(!name.is_empty());
            prop_assert!(!name.contains('.') && !name.contains(' '), "{name:?}");
        }
    }
    Ok(())
}

fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A form field name in one of the shapes WHMCS clients send.
fn field_name() -> impl Strategy<Value = String> {
    let base = "[a-z][a-z0-9_]{0,6}";
    prop_oneof![
        base.prop_map(|b| b),
        (base, 0..4u8).prop_map(|(b, i)| format!("{b}[{i}]")),
        base.prop_map(|b| format!("{b}[]")),
        (base, "[a-z0-9.]{1,6}", 0..3u8).prop_map(|(b, k, i)| format!("{b}[{k}][{i}]")),
        (base, "[a-z0-9]{1,6}").prop_map(|(b, k)| format!("{b}%5B{k}%5D")),
    ]
}

fn valid_form() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (field_name(), prop::collection::vec(any::<u8>(), 0..16)),
        0..8,
    )
    .prop_map(|pairs| {
        pairs
            .iter()
            .map(|(name, value)| format!("{name}={}", percent_encode(value)))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    #[test]
    fn serialized_values_read_back(value in value()) {
        let mut bytes = Vec::new();
        serialize(&value, &mut bytes);
        prop_assert_eq!(unserialize(&bytes), Ok(value));
    }

    #[test]
    fn mutated_serialized_values_never_panic(
        value in value(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut bytes = Vec::new();
        serialize(&value, &mut bytes);
        check_unserialize(&apply(bytes, &mutations))?;
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check_unserialize(&bytes)?;
        check_form(&bytes)?;
        let _ = base64_decode(&bytes);
    }

    #[test]
    fn flat_forms_read_back(
        fields in prop::collection::btree_map("[a-z][a-z0-9_]{0,8}", prop::collection::vec(any::<u8>(), 0..24), 0..8),
    ) {
        let body: Vec<String> = fields
            .iter()
            .map(|(name, value)| format!("{name}={}", percent_encode(value)))
            .collect();
        let post = parse_form(body.join("&").as_bytes());
        prop_assert_eq!(post.len(), fields.len());
        for (name, value) in &fields {
            prop_assert_eq!(post.get_str(name), Some(&Value::Str(value.clone())));
        }
    }

    #[test]
    fn mutated_forms_never_panic(
        form in valid_form(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        check_form(&form)?;
        check_form(&apply(form, &mutations))?;
    }
}
