//! Property: whatever id -> value map the client encodes, PHP (the sandbox's independent
//! form parser, base64_decode and unserialize) reads back the same map.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sandbox::whmcs::php::{self, Key, Value};
use secrecy::SecretString;
use whmcs_client::encoding::FormBody;
use whmcs_client::{ConfigOptionValue, ConfigOptions, CustomFields};

/// Encodes like AddOrder does (`name[index]`), then parses as PHP and decodes the element.
fn through_php(name: &str, index: usize, encoded: String) -> php::Array {
    let mut body = FormBody::new();
    body.push("action", "AddOrder");
    body.push_indexed(name, index, encoded);
    body.push("tail", "x+y");
    let post = php::parse_form(body.to_urlencoded().as_bytes());
    assert_eq!(post.get_str("tail"), Some(&Value::Str(b"x+y".to_vec())));
    let element = post
        .get_str(name)
        .and_then(Value::as_array)
        .and_then(|a| a.get(&Key::Int(i64::try_from(index).unwrap())))
        .and_then(Value::as_text)
        .expect("the indexed element");
    php::decode_serialized_base64(element.as_bytes()).expect("valid base64 of a PHP array")
}

#[derive(Debug, Clone)]
enum Opt {
    Choice(u32),
    Quantity(u32),
    Nested(u32, u32),
    Flag(bool),
    Text(String),
}

fn opt() -> impl Strategy<Value = Opt> {
    prop_oneof![
        any::<u32>().prop_map(Opt::Choice),
        any::<u32>().prop_map(Opt::Quantity),
        (any::<u32>(), any::<u32>()).prop_map(|(o, q)| Opt::Nested(o, q)),
        any::<bool>().prop_map(Opt::Flag),
        any::<String>().prop_map(Opt::Text),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn custom_fields_round_trip(
        fields in proptest::collection::btree_map(any::<u32>(), any::<String>(), 0..8),
        index in 0usize..5,
    ) {
        let custom = CustomFields(fields.iter().map(|(k, v)| (u64::from(*k), v.clone())).collect());
        let decoded = through_php("customfields", index, custom.encode());
        let want: Vec<(Key, Value)> = fields
            .iter()
            .map(|(k, v)| (Key::Int(i64::from(*k)), Value::Str(v.as_bytes().to_vec())))
            .collect();
        prop_assert_eq!(decoded.0, want);
    }

    #[test]
    fn config_options_round_trip(
        options in proptest::collection::btree_map(any::<u32>(), opt(), 0..8),
    ) {
        let mut config = ConfigOptions::new();
        let mut want = BTreeMap::new();
        for (id, o) in &options {
            let (value, php_value) = match o {
                Opt::Choice(n) => (ConfigOptionValue::Choice(u64::from(*n)), Value::Int(i64::from(*n))),
                Opt::Quantity(n) => (ConfigOptionValue::Quantity(u64::from(*n)), Value::Int(i64::from(*n))),
                Opt::Nested(o, q) => (
                    ConfigOptionValue::OptionQuantity { option_id: u64::from(*o), qty: u64::from(*q) },
                    Value::Array(php::Array(vec![
                        (Key::Str("optionid".into()), Value::Int(i64::from(*o))),
                        (Key::Str("qty".into()), Value::Int(i64::from(*q))),
                    ])),
                ),
                Opt::Flag(b) => (ConfigOptionValue::Flag(*b), Value::Bool(*b)),
                Opt::Text(s) => (
                    ConfigOptionValue::Text(SecretString::from(s.clone())),
                    Value::Str(s.as_bytes().to_vec()),
                ),
            };
            config = config.with(u64::from(*id), value);
            want.insert(Key::Int(i64::from(*id)), php_value);
        }
        let decoded = through_php("configoptions", 0, config.encode());
        let got: BTreeMap<Key, Value> = decoded.0.into_iter().collect();
        prop_assert_eq!(got, want);
    }
}
