//! Request encoding: PHP `serialize`, the base64 wrapping WHMCS expects for `customfields` and
//! `configoptions`, and the `application/x-www-form-urlencoded` body with indexed arrays.
//!
//! WHMCS reads its parameters from PHP's `$_POST`, so the body must look like what PHP's
//! `http_build_query` writes: `pid[0]=1&pid[1]=1` (brackets percent-encoded), booleans as `1`/`0`,
//! every value percent-encoded (a raw `+` in a base64 value would turn into a space). Values that
//! hold PHP arrays (`customfields[i]`, `configoptions[i]`) are `base64(serialize(array(...)))`
//! with the standard alphabet and `=` padding.
//!
//! Nothing here logs, and [`FormBody`]'s `Debug` shows parameter names only: values can hold
//! credentials and config option secrets.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroize;

/// A PHP array key: PHP stores numeric string keys as integers, so ids are [`PhpKey::Int`].
#[derive(Clone, PartialEq, Eq)]
pub enum PhpKey {
    /// `i:<n>;`
    Int(i64),
    /// `s:<byte length>:"<bytes>";`
    Str(String),
}

/// The subset of PHP values WHMCS parameters need.
#[derive(Clone, PartialEq)]
pub enum PhpValue {
    /// `i:<n>;`
    Int(i64),
    /// `s:<UTF-8 byte length>:"<bytes>";`
    Str(String),
    /// `b:0;` / `b:1;`
    Bool(bool),
    /// `a:<count>:{<key><value>...}`, insertion order kept.
    Array(Vec<(PhpKey, PhpValue)>),
}

impl fmt::Debug for PhpValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be secrets (root passwords in config options): show the shape only.
        match self {
            PhpValue::Int(_) => f.write_str("Int(..)"),
            PhpValue::Str(_) => f.write_str("Str(..)"),
            PhpValue::Bool(_) => f.write_str("Bool(..)"),
            PhpValue::Array(items) => write!(f, "Array(len={})", items.len()),
        }
    }
}

impl fmt::Debug for PhpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhpKey::Int(n) => write!(f, "{n}"),
            PhpKey::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl Zeroize for PhpValue {
    fn zeroize(&mut self) {
        match self {
            PhpValue::Str(s) => s.zeroize(),
            PhpValue::Array(items) => {
                for (key, value) in items.iter_mut() {
                    if let PhpKey::Str(k) = key {
                        k.zeroize();
                    }
                    value.zeroize();
                }
            }
            PhpValue::Int(n) => *n = 0,
            PhpValue::Bool(b) => *b = false,
        }
    }
}

/// Writes `value` as PHP's `serialize()` would, appending to `out`.
pub fn php_serialize_into(value: &PhpValue, out: &mut String) {
    use std::fmt::Write as _;
    // Writing into a String cannot fail; the results are ignored on purpose.
    match value {
        PhpValue::Int(n) => {
            let _ = write!(out, "i:{n};");
        }
        PhpValue::Str(s) => {
            let _ = write!(out, "s:{}:\"", s.len());
            out.push_str(s);
            out.push_str("\";");
        }
        PhpValue::Bool(b) => out.push_str(if *b { "b:1;" } else { "b:0;" }),
        PhpValue::Array(items) => {
            let _ = write!(out, "a:{}:{{", items.len());
            for (key, item) in items {
                match key {
                    PhpKey::Int(n) => {
                        let _ = write!(out, "i:{n};");
                    }
                    PhpKey::Str(s) => {
                        let _ = write!(out, "s:{}:\"", s.len());
                        out.push_str(s);
                        out.push_str("\";");
                    }
                }
                php_serialize_into(item, out);
            }
            out.push('}');
        }
    }
}

/// PHP `serialize($value)`. String lengths are UTF-8 byte counts (`"Zürich"` is `s:7:`).
pub fn php_serialize(value: &PhpValue) -> String {
    let mut out = String::new();
    php_serialize_into(value, &mut out);
    out
}

/// `base64_encode(serialize($value))` with the standard alphabet (`+`, `/`) and `=` padding:
/// the form WHMCS wants for `customfields`, `configoptions` and `domainfields`.
pub fn serialized_base64(value: &PhpValue) -> String {
    let mut serialized = php_serialize(value);
    let encoded = STANDARD.encode(serialized.as_bytes());
    serialized.zeroize();
    encoded
}

/// A form body under construction: flattened `(name, value)` pairs in order.
///
/// `Debug` lists the names only; values are wiped from memory when the body is dropped.
#[derive(Default)]
pub struct FormBody {
    pairs: Vec<(String, String)>,
}

impl FormBody {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name=value`.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.pairs.push((name.into(), value.into()));
    }

    /// Adds `name=1` or `name=0` (PHP reads any non-empty string but `"0"` as true, so `false`
    /// must never be spelled out as text).
    pub fn push_bool(&mut self, name: &str, value: bool) {
        self.push(name, if value { "1" } else { "0" });
    }

    /// Adds the element `name[index]=value` of an indexed array.
    pub fn push_indexed(&mut self, name: &str, index: usize, value: impl Into<String>) {
        self.push(format!("{name}[{index}]"), value);
    }

    /// The pairs, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The value of the first pair named `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The names, in order (safe to show).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(k, _)| k.as_str())
    }

    /// The `application/x-www-form-urlencoded` text: names and values percent-encoded as PHP's
    /// `http_build_query` does (space as `+`, `+` as `%2B`, `/` as `%2F`, `=` as `%3D`,
    /// `[`/`]` as `%5B`/`%5D`).
    pub fn to_urlencoded(&self) -> String {
        let mut serializer = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.pairs {
            serializer.append_pair(name, value);
        }
        serializer.finish()
    }
}

impl fmt::Debug for FormBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FormBody")
            .field("names", &self.names().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for FormBody {
    fn drop(&mut self) {
        for (_, value) in &mut self.pairs {
            value.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn map(entries: Vec<(i64, PhpValue)>) -> PhpValue {
        PhpValue::Array(
            entries
                .into_iter()
                .map(|(k, v)| (PhpKey::Int(k), v))
                .collect(),
        )
    }

    fn check(value: PhpValue, serialized: &str, base64: &str) {
        assert_eq!(php_serialize(&value), serialized);
        assert_eq!(serialized_base64(&value), base64);
    }

    // Worked examples of PHP `serialize()` + base64 (as PHP itself encodes them), row by row.
    #[test]
    fn worked_example_string() {
        check(
            map(vec![(1, PhpValue::Str("Google".into()))]),
            r#"a:1:{i:1;s:6:"Google";}"#,
            "YToxOntpOjE7czo2OiJHb29nbGUiO30=",
        );
    }

    #[test]
    fn worked_example_utf8_byte_length() {
        check(
            map(vec![(7, PhpValue::Str("Zürich".into()))]),
            r#"a:1:{i:7;s:7:"Zürich";}"#,
            "YToxOntpOjc7czo3OiJaw7xyaWNoIjt9",
        );
    }

    #[test]
    fn worked_example_int() {
        check(
            map(vec![(3, PhpValue::Int(15))]),
            "a:1:{i:3;i:15;}",
            "YToxOntpOjM7aToxNTt9",
        );
    }

    #[test]
    fn worked_example_quantity_option() {
        let nested = PhpValue::Array(vec![
            (PhpKey::Str("optionid".into()), PhpValue::Int(12)),
            (PhpKey::Str("qty".into()), PhpValue::Int(3)),
        ]);
        check(
            map(vec![(4, nested)]),
            r#"a:1:{i:4;a:2:{s:8:"optionid";i:12;s:3:"qty";i:3;}}"#,
            "YToxOntpOjQ7YToyOntzOjg6Im9wdGlvbmlkIjtpOjEyO3M6MzoicXR5IjtpOjM7fX0=",
        );
    }

    #[test]
    fn bools_and_empty_array() {
        assert_eq!(
            php_serialize(&map(vec![
                (1, PhpValue::Bool(true)),
                (2, PhpValue::Bool(false))
            ])),
            "a:2:{i:1;b:1;i:2;b:0;}"
        );
        assert_eq!(php_serialize(&PhpValue::Array(vec![])), "a:0:{}");
    }

    #[test]
    fn form_body_percent_encodes_like_http_build_query() {
        let mut body = FormBody::new();
        body.push("action", "AddOrder");
        body.push_indexed("pid", 0, "1");
        body.push_indexed(
            "customfields",
            0,
            "YToxOntpOjQ7YToyOntzOjg6Im9wdGlvbmlkIjtpOjEyO3M6MzoicXR5IjtpOjM7fX0=",
        );
        body.push("note", "a b+c/d=e&f");
        body.push_bool("noemail", false);
        expect_test::expect![[r#"action=AddOrder&pid%5B0%5D=1&customfields%5B0%5D=YToxOntpOjQ7YToyOntzOjg6Im9wdGlvbmlkIjtpOjEyO3M6MzoicXR5IjtpOjM7fX0%3D&note=a+b%2Bc%2Fd%3De%26f&noemail=0"#]]
            .assert_eq(&body.to_urlencoded());
    }

    #[test]
    fn base64_special_characters_are_escaped() {
        // 0xfb 0xff encodes to "+/8=" in standard base64.
        let mut body = FormBody::new();
        body.push("v", STANDARD.encode([0xfb_u8, 0xff]));
        assert_eq!(body.get("v"), Some("+/8="));
        assert_eq!(body.to_urlencoded(), "v=%2B%2F8%3D");
    }

    #[test]
    fn debug_hides_values() {
        let mut body = FormBody::new();
        body.push("secret", "hunter2");
        let shown = format!("{body:?}");
        assert!(shown.contains("secret"));
        assert!(!shown.contains("hunter2"));
        let value = PhpValue::Str("hunter2".into());
        assert!(!format!("{value:?}").contains("hunter2"));
    }
}
