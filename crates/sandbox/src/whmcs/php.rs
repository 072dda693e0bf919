//! PHP's side of the wire, written independently of `whmcs-client` so it can check it:
//! the `$_POST` form parser (with `name[key]` arrays), `unserialize()` and the lenient
//! `base64_decode()`.

use std::fmt;

use base64::Engine as _;

/// A PHP array key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// Integer key (PHP turns canonical numeric strings such as `"7"` into these).
    Int(i64),
    /// String key.
    Str(String),
}

impl Key {
    /// PHP's key normalisation: a canonical decimal integer string becomes an int key.
    pub fn from_text(s: &str) -> Key {
        let canonical = !s.is_empty()
            && (s == "0"
                || (!s.starts_with('0') && !s.starts_with("-0") && s != "-")
                    && s.strip_prefix('-')
                        .unwrap_or(s)
                        .bytes()
                        .all(|b| b.is_ascii_digit()));
        if canonical && let Ok(n) = s.parse::<i64>() {
            return Key::Int(n);
        }
        Key::Str(s.to_owned())
    }

    /// The key as text.
    pub fn text(&self) -> String {
        match self {
            Key::Int(n) => n.to_string(),
            Key::Str(s) => s.clone(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(n) => write!(f, "{n}"),
            Key::Str(s) => f.write_str(s),
        }
    }
}

/// A PHP value (the subset forms and `serialize` produce).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null` (`N;`).
    Null,
    /// `bool`.
    Bool(bool),
    /// `int`.
    Int(i64),
    /// `float`.
    Float(f64),
    /// Byte string (PHP strings are bytes; form values and UTF-8 text fit).
    Str(Vec<u8>),
    /// Ordered array.
    Array(Array),
}

/// A PHP ordered array.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Array(pub Vec<(Key, Value)>);

impl Array {
    /// The value under `key`.
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value under the string key `name` (or its integer form).
    pub fn get_str(&self, name: &str) -> Option<&Value> {
        self.get(&Key::from_text(name))
    }

    fn get_mut(&mut self, key: &Key) -> Option<&mut Value> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value`, keeping the position of an existing key (PHP semantics).
    pub fn set(&mut self, key: Key, value: Value) {
        match self.get_mut(&key) {
            Some(slot) => *slot = value,
            None => self.0.push((key, value)),
        }
    }

    /// PHP's next free integer key for `$a[] = ...`.
    fn next_index(&self) -> i64 {
        self.0
            .iter()
            .filter_map(|(k, _)| match k {
                Key::Int(n) => Some(*n + 1),
                Key::Str(_) => None,
            })
            .max()
            .unwrap_or(0)
            .max(0)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Value {
    /// The value as text if it is a string or number (PHP's string conversion).
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Str(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            Value::Int(n) => Some(n.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(true) => Some("1".to_owned()),
            Value::Bool(false) | Value::Null => Some(String::new()),
            Value::Array(_) => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// PHP truthiness (`""`, `"0"`, `0`, `false`, `null` and `[]` are false).
    pub fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(n) => *n != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !(s.is_empty() || s.as_slice() == b"0"),
            Value::Array(a) => !a.is_empty(),
        }
    }
}

/// Percent-decodes a form component as PHP's `urldecode` does: `+` is a space, `%XX` a byte,
/// and a `%` not followed by two hex digits stays as it is.
pub fn urldecode(input: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Parses an `application/x-www-form-urlencoded` body into `$_POST` as PHP does:
/// `name[a][b]=v` builds nested arrays, `name[]=v` appends, a bare repeated key keeps only the
/// last value, `.` and space in a top-level name become `_`.
pub fn parse_form(body: &[u8]) -> Array {
    let mut post = Array::default();
    for pair in body.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (raw_name, raw_value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let name = String::from_utf8_lossy(&urldecode(raw_name)).into_owned();
        let value = urldecode(raw_value);
        insert_form_value(&mut post, &name, value);
    }
    post
}

/// PHP's default `max_input_nesting_level`.
const MAX_INPUT_NESTING: usize = 64;

/// Nesting depth `unserialize` accepts (PHP's `unserialize_max_depth` is 4096; lower here so
/// the recursive parser stays well inside a test thread's stack).
const MAX_UNSERIALIZE_DEPTH: usize = 512;

fn insert_form_value(post: &mut Array, name: &str, value: Vec<u8>) {
    let name = name.trim_start_matches(' ');
    // Split "base[k1][k2]" into base and the bracketed keys; an unmatched '[' makes the rest
    // part of the base name.
    let (base, mut path) = match name.find('[') {
        Some(open) => {
            let base = &name[..open];
            let mut keys: Vec<Option<String>> = Vec::new();
            let mut rest = &name[open..];
            let mut complete = true;
            while let Some(stripped) = rest.strip_prefix('[') {
                match stripped.find(']') {
                    Some(close) => {
                        let k = &stripped[..close];
                        keys.push(if k.is_empty() {
                            None
                        } else {
                            Some(k.to_owned())
                        });
                        rest = &stripped[close + 1..];
                    }
                    None => {
                        complete = keys.is_empty();
                        break;
                    }
                }
            }
            if keys.is_empty() && complete {
                (name.to_owned(), Vec::new())
            } else {
                (base.to_owned(), keys)
            }
        }
        None => (name.to_owned(), Vec::new()),
    };
    // PHP's max_input_nesting_level (64): deeper variables are dropped.
    if base.is_empty() || path.len() > MAX_INPUT_NESTING {
        return;
    }
    let base: String = base
        .chars()
        .map(|c| {
            if c == '.' || c == ' ' || c == '[' {
                '_'
            } else {
                c
            }
        })
        .collect();
    let base_key = Key::from_text(&base);
    if path.is_empty() {
        post.set(base_key, Value::Str(value));
        return;
    }
    let mut current: &mut Array = {
        if !matches!(post.get(&base_key), Some(Value::Array(_))) {
            post.set(base_key.clone(), Value::Array(Array::default()));
        }
        match post.get_mut(&base_key) {
            Some(Value::Array(a)) => a,
            _ => return,
        }
    };
    let last = path.pop().unwrap_or(None);
    for segment in path {
        let key = match segment {
            Some(k) => Key::from_text(&k),
            None => Key::Int(current.next_index()),
        };
        if !matches!(current.get(&key), Some(Value::Array(_))) {
            current.set(key.clone(), Value::Array(Array::default()));
        }
        current = match current.get_mut(&key) {
            Some(Value::Array(a)) => a,
            _ => return,
        };
    }
    let key = match last {
        Some(k) => Key::from_text(&k),
        None => Key::Int(current.next_index()),
    };
    current.set(key, Value::Str(value));
}

/// Why `unserialize` failed (PHP itself just returns `false`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unserialize failed at byte {offset}: {reason}")]
pub struct UnserializeError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What was expected.
    pub reason: &'static str,
}

/// PHP `unserialize()` for `N;`, `b:`, `i:`, `d:`, `s:` (byte lengths) and `a:` values.
pub fn unserialize(input: &[u8]) -> Result<Value, UnserializeError> {
    let mut parser = Unserializer {
        input,
        pos: 0,
        depth: 0,
    };
    let value = parser.value()?;
    if parser.pos != input.len() {
        return Err(parser.fail("trailing bytes"));
    }
    Ok(value)
}

struct Unserializer<'a> {
    input: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Unserializer<'_> {
    fn fail(&self, reason: &'static str) -> UnserializeError {
        UnserializeError {
            offset: self.pos,
            reason,
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), UnserializeError> {
        if self.input.get(self.pos) == Some(&byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.fail("unexpected byte"))
        }
    }

    fn until(&mut self, end: u8) -> Result<&[u8], UnserializeError> {
        let start = self.pos;
        let len = self.input[start..]
            .iter()
            .position(|b| *b == end)
            .ok_or_else(|| self.fail("missing terminator"))?;
        self.pos = start + len + 1;
        Ok(&self.input[start..start + len])
    }

    fn int_until(&mut self, end: u8) -> Result<i64, UnserializeError> {
        let text = self.until(end)?;
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or(UnserializeError {
                offset: self.pos,
                reason: "bad integer",
            })
    }

    fn string_body(&mut self) -> Result<Vec<u8>, UnserializeError> {
        let len = usize::try_from(self.int_until(b':')?).map_err(|_| self.fail("bad length"))?;
        self.expect(b'"')?;
        let end = self
            .pos
            .checked_add(len)
            .ok_or_else(|| self.fail("bad length"))?;
        let bytes = self
            .input
            .get(self.pos..end)
            .ok_or_else(|| self.fail("string shorter than its length"))?
            .to_vec();
        self.pos = end;
        self.expect(b'"')?;
        Ok(bytes)
    }

    fn value(&mut self) -> Result<Value, UnserializeError> {
        let tag = *self
            .input
            .get(self.pos)
            .ok_or_else(|| self.fail("end of input"))?;
        self.pos += 1;
        match tag {
            b'N' => {
                self.expect(b';')?;
                Ok(Value::Null)
            }
            b'b' => {
                self.expect(b':')?;
                match self.int_until(b';')? {
                    0 => Ok(Value::Bool(false)),
                    1 => Ok(Value::Bool(true)),
                    _ => Err(self.fail("bad bool")),
                }
            }
            b'i' => {
                self.expect(b':')?;
                Ok(Value::Int(self.int_until(b';')?))
            }
            b'd' => {
                self.expect(b':')?;
                let text = self.until(b';')?;
                std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.parse::<f64>().ok())
                    .map(Value::Float)
                    .ok_or(UnserializeError {
                        offset: self.pos,
                        reason: "bad float",
                    })
            }
            b's' => {
                self.expect(b':')?;
                let bytes = self.string_body()?;
                self.expect(b';')?;
                Ok(Value::Str(bytes))
            }
            b'a' => {
                self.expect(b':')?;
                let count =
                    usize::try_from(self.int_until(b':')?).map_err(|_| self.fail("bad count"))?;
                self.expect(b'{')?;
                self.depth += 1;
                if self.depth > MAX_UNSERIALIZE_DEPTH {
                    return Err(self.fail("nested too deeply"));
                }
                let mut array = Array::default();
                for _ in 0..count {
                    let key = match self.value()? {
                        Value::Int(n) => Key::Int(n),
                        Value::Str(bytes) => Key::from_text(&String::from_utf8_lossy(&bytes)),
                        _ => return Err(self.fail("bad array key")),
                    };
                    let value = self.value()?;
                    array.set(key, value);
                }
                self.expect(b'}')?;
                self.depth -= 1;
                Ok(Value::Array(array))
            }
            _ => Err(self.fail("unknown type tag")),
        }
    }
}

/// PHP `base64_decode($s)` (non-strict): characters outside the alphabet are skipped, padding
/// is optional. Returns `None` where PHP returns `false`.
pub fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    let filtered: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    engine.decode(&filtered).ok()
}

/// `unserialize(base64_decode($s))`, as WHMCS reads `customfields`/`configoptions`: `None`
/// when either step fails or the result is not an array.
pub fn decode_serialized_base64(input: &[u8]) -> Option<Array> {
    let bytes = base64_decode(input)?;
    match unserialize(&bytes).ok()? {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

#[cfg(test)]
mod robust;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn s(v: &str) -> Value {
        Value::Str(v.as_bytes().to_vec())
    }

    #[test]
    fn form_arrays_and_last_value_wins() {
        let post = parse_form(b"pid%5B0%5D=1&pid%5B1%5D=2&domain=a&domain=b&x+y=1%2B1&q[]=a&q[]=b");
        let pid = post.get_str("pid").unwrap().as_array().unwrap();
        assert_eq!(pid.0, vec![(Key::Int(0), s("1")), (Key::Int(1), s("2"))]);
        assert_eq!(post.get_str("domain"), Some(&s("b")));
        assert_eq!(post.get_str("x_y"), Some(&s("1+1")));
        let q = post.get_str("q").unwrap().as_array().unwrap();
        assert_eq!(q.0, vec![(Key::Int(0), s("a")), (Key::Int(1), s("b"))]);
    }

    #[test]
    fn plus_is_space_and_bad_escapes_stay() {
        assert_eq!(urldecode(b"a+b%2Bc%zz%4"), b"a b+c%zz%4");
        let post = parse_form(b"v=YTo+x");
        assert_eq!(post.get_str("v"), Some(&s("YTo x")));
    }

    #[test]
    fn nested_and_associative_keys() {
        let post = parse_form(b"domainrenewals[example.com]=2&a[1][x]=y");
        let renewals = post.get_str("domainrenewals").unwrap().as_array().unwrap();
        assert_eq!(renewals.get_str("example.com"), Some(&s("2")));
        let a = post.get_str("a").unwrap().as_array().unwrap();
        let inner = a.get(&Key::Int(1)).unwrap().as_array().unwrap();
        assert_eq!(inner.get_str("x"), Some(&s("y")));
    }

    #[test]
    fn unserialize_worked_examples() {
        let v = decode_serialized_base64(b"YToxOntpOjc7czo3OiJaw7xyaWNoIjt9").unwrap();
        assert_eq!(v.0, vec![(Key::Int(7), s("Zürich"))]);
        let v = decode_serialized_base64(
            b"YToxOntpOjQ7YToyOntzOjg6Im9wdGlvbmlkIjtpOjEyO3M6MzoicXR5IjtpOjM7fX0=",
        )
        .unwrap();
        let inner = v.get(&Key::Int(4)).unwrap().as_array().unwrap();
        assert_eq!(inner.get_str("optionid"), Some(&Value::Int(12)));
        assert_eq!(inner.get_str("qty"), Some(&Value::Int(3)));
        assert_eq!(
            unserialize(b"a:3:{i:1;b:1;s:1:\"k\";d:1.5;i:2;N;}").unwrap(),
            Value::Array(Array(vec![
                (Key::Int(1), Value::Bool(true)),
                (Key::Str("k".into()), Value::Float(1.5)),
                (Key::Int(2), Value::Null)
            ]))
        );
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let deep = format!("{}i:1;{}", "a:1:{i:0;".repeat(100_000), "}".repeat(100_000));
        assert_eq!(
            unserialize(deep.as_bytes()).unwrap_err().reason,
            "nested too deeply"
        );
        let name = format!("x{}", "[a]".repeat(100_000));
        let form = parse_form(format!("{name}=1&y=2").as_bytes());
        assert!(
            form.get(&Key::from_text("x")).is_none(),
            "too deep: dropped as PHP does"
        );
        assert!(form.get(&Key::from_text("y")).is_some());
    }

    #[test]
    fn unserialize_rejects_char_lengths() {
        // "Zürich" is 7 bytes; a writer counting chars (6) produces something PHP rejects.
        assert!(unserialize("a:1:{i:7;s:6:\"Zürich\";}".as_bytes()).is_err());
        assert!(unserialize(b"a:1:{i:1;s:6:\"Google\"}").is_err());
        assert!(unserialize(b"i:1;x").is_err());
    }

    #[test]
    fn a_raw_plus_corrupts_the_value() {
        // base64 of bytes fb ff is "+/8="; sent unescaped the '+' becomes a space, which
        // PHP's lenient base64_decode skips, so the bytes change.
        let post = parse_form(b"v=+/8=");
        let text = post.get_str("v").unwrap().as_text().unwrap();
        assert_ne!(base64_decode(text.as_bytes()), Some(vec![0xfb, 0xff]));
        let post = parse_form(b"v=%2B%2F8%3D");
        let text = post.get_str("v").unwrap().as_text().unwrap();
        assert_eq!(base64_decode(text.as_bytes()), Some(vec![0xfb, 0xff]));
    }

    #[test]
    fn numeric_keys() {
        assert_eq!(Key::from_text("7"), Key::Int(7));
        assert_eq!(Key::from_text("-3"), Key::Int(-3));
        assert_eq!(Key::from_text("07"), Key::Str("07".into()));
        assert_eq!(Key::from_text(""), Key::Str(String::new()));
        assert_eq!(Key::from_text("1.5"), Key::Str("1.5".into()));
    }
}
