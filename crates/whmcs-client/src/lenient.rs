//! Lenient readers for WHMCS's inconsistent JSON: ids and counts as numbers or numeric strings,
//! booleans in many spellings, nested lists that are `""` when empty, comma-separated id lists.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A number or a numeric string as `u64`; `null`, `""` and absent values are `None`.
pub(crate) fn opt_u64_value(value: &Value) -> Result<Option<u64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0) {
                // Integral floats such as 2.0; the cast is exact below 2^53.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(Some(f as u64))
            } else if n.as_i64().is_some() {
                // Negative ids do not exist; WHMCS sometimes uses -1 for "none".
                Ok(None)
            } else {
                Err(format!("expected an id or count, got {n}"))
            }
        }
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            if let Ok(v) = s.parse::<u64>() {
                return Ok(Some(v));
            }
            match s.parse::<f64>() {
                Ok(f) if f.fract() == 0.0 && f >= 0.0 =>
                {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Ok(Some(f as u64))
                }
                Ok(_) => Ok(None),
                Err(_) => Err("expected a numeric string".to_owned()),
            }
        }
        Value::Bool(_) | Value::Array(_) | Value::Object(_) => {
            Err("expected an id or count".to_owned())
        }
    }
}

/// `deserialize_with` for `u64` fields (missing/empty becomes 0 with `#[serde(default)]`).
pub(crate) fn u64_any<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = Value::deserialize(d)?;
    opt_u64_value(&value)
        .map(Option::unwrap_or_default)
        .map_err(serde::de::Error::custom)
}

/// `deserialize_with` for `Option<u64>` fields; `0` counts as absent (WHMCS's "no invoice").
pub(crate) fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = Value::deserialize(d)?;
    opt_u64_value(&value)
        .map(|v| v.filter(|id| *id != 0))
        .map_err(serde::de::Error::custom)
}

/// `deserialize_with` for text fields that may arrive as numbers or `null`.
pub(crate) fn string_any<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => String::new(),
        Value::String(s) => s,
        Value::Bool(b) => if b { "1" } else { "" }.to_owned(),
        other => other.to_string(),
    })
}

/// A WHMCS boolean: `true`/`false`, `1`/`0`, `"1"`/`"0"`, `"on"`/`"off"`, `"yes"`/`"no"`,
/// `"true"`/`"false"`, `""`, `null`.
pub(crate) fn bool_value(value: &Value) -> Result<bool, String> {
    match value {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "" | "0" | "off" | "no" | "false" => Ok(false),
            "1" | "on" | "yes" | "true" => Ok(true),
            other => Err(format!("expected a boolean, got {other:?}")),
        },
        Value::Array(_) | Value::Object(_) => Err("expected a boolean".to_owned()),
    }
}

/// `deserialize_with` for WHMCS booleans.
pub(crate) fn bool_any<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let value = Value::deserialize(d)?;
    bool_value(&value).map_err(serde::de::Error::custom)
}

/// `deserialize_with` for nested lists (`products.product[]`, `lineitems.lineitem[]`, ...):
/// `{"product": [...]}`, and also `""`/`null`/any scalar (empty), a bare array, a wrapper
/// holding a single object instead of an array, and an object of several fields that is
/// itself the only item.
///
/// The items are read straight from the input, never built into a JSON tree first: a page of
/// services costs one pass, and fields a model does not name (the service password of
/// `GetClientsProducts`) are skipped in the reply's bytes, not copied out of them.
pub(crate) fn nested_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    d.deserialize_any(ListVisitor::new(true))
}

/// `deserialize_with` for plain lists that may be `""` or `null` (or anything but an array)
/// when empty; items are read straight from the input.
pub(crate) fn plain_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    d.deserialize_any(ListVisitor::new(false))
}

/// Every item of a JSON array, read as `T`.
fn items_of<'de, A: SeqAccess<'de>, T: DeserializeOwned>(mut seq: A) -> Result<Vec<T>, A::Error> {
    // The hint comes from the input: trusted only as far as a small preallocation.
    let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
    while let Some(item) = seq.next_element::<T>()? {
        items.push(item);
    }
    Ok(items)
}

/// Reads a list field: an array is its items, a scalar (`""`, `null`, ...) none. An object is
/// a WHMCS wrapper for a nested list ([`nested_list`]); for a plain list it is skipped.
struct ListVisitor<T> {
    nested: bool,
    item: PhantomData<T>,
}

impl<T> ListVisitor<T> {
    fn new(nested: bool) -> Self {
        ListVisitor {
            nested,
            item: PhantomData,
        }
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for ListVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a WHMCS list: an object wrapping an array, an array, or an empty value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        items_of(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if !self.nested {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Vec::new());
        }
        let Some(first_key) = map.next_key::<String>()? else {
            return Ok(Vec::new());
        };
        let first = map.next_value_seed(FirstField::<T>(PhantomData))?;
        let Some(second_key) = map.next_key::<String>()? else {
            // One field: the wrapper (`{"product": [...]}` or `{"product": {...}}`).
            return Ok(match first {
                First::Items(items) => items,
                First::Item(item) => vec![item],
                First::Scalar(_) => Vec::new(),
            });
        };
        // Several fields: not a wrapper, the object itself is the only item. Rare enough to
        // be read through a JSON object; its first field was read as a scalar, or as a list
        // or item of the wrapper it turned out not to be, which cannot be read back.
        let First::Scalar(first_value) = first else {
            return Err(de::Error::custom(
                "an object of several fields whose first field holds a list or an object is \
                 neither a WHMCS list wrapper nor a list item",
            ));
        };
        let mut object = serde_json::Map::new();
        object.insert(first_key, first_value);
        let second_value = map.next_value::<Value>()?;
        object.insert(second_key, second_value);
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            object.insert(key, value);
        }
        T::deserialize(Value::Object(object))
            .map(|item| vec![item])
            .map_err(de::Error::custom)
    }
}

/// The first field of an object in a nested list's place: the wrapped items, or one wrapped
/// item, read straight away; a scalar is kept as a value.
enum First<T> {
    Items(Vec<T>),
    Item(T),
    Scalar(Value),
}

struct FirstField<T>(PhantomData<T>);

impl<'de, T: DeserializeOwned> de::DeserializeSeed<'de> for FirstField<T> {
    type Value = First<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for FirstField<T> {
    type Value = First<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list, an item or a scalar")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(First::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(First::Scalar(Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(First::Scalar(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(First::Scalar(Value::from(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(First::Scalar(Value::String(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(First::Scalar(Value::String(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(First::Scalar(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(First::Scalar(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        items_of(seq).map(First::Items)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(First::Item)
    }
}

/// `deserialize_with` for id lists: `"1,2"`, `"1"`, `""`, `3`, `[1, "2"]`.
pub(crate) fn id_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    let value = Value::deserialize(d)?;
    let items: Vec<Value> = match value {
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| Value::String(p.to_owned()))
            .collect(),
        Value::Array(items) => items,
        other => vec![other],
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in &items {
        if let Some(id) = opt_u64_value(item).map_err(serde::de::Error::custom)? {
            ids.push(id);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_and_counts() {
        for (value, want) in [
            (json!(1), Some(1)),
            (json!("1"), Some(1)),
            (json!(" 25 "), Some(25)),
            (json!(2.0), Some(2)),
            (json!("3.0"), Some(3)),
            (json!(""), None),
            (json!(null), None),
            (json!(-1), None),
        ] {
            assert_eq!(opt_u64_value(&value).unwrap(), want, "{value}");
        }
        assert!(opt_u64_value(&json!("abc")).is_err());
        assert!(opt_u64_value(&json!([1])).is_err());
    }

    #[test]
    fn booleans() {
        for (value, want) in [
            (json!(true), true),
            (json!(false), false),
            (json!(1), true),
            (json!(0), false),
            (json!("1"), true),
            (json!("0"), false),
            (json!("on"), true),
            (json!(""), false),
            (json!(null), false),
        ] {
            assert_eq!(bool_value(&value).unwrap(), want, "{value}");
        }
        assert!(bool_value(&json!("maybe")).is_err());
    }

    #[derive(Debug, serde::Deserialize)]
    struct Item {
        #[serde(deserialize_with = "u64_any", default)]
        id: u64,
    }

    #[derive(serde::Deserialize)]
    struct Lists {
        #[serde(deserialize_with = "nested_list", default)]
        nested: Vec<Item>,
        #[serde(deserialize_with = "plain_list", default)]
        plain: Vec<Item>,
    }

    /// The ids a list field reads to, from the text (streamed) and from a JSON value: both
    /// must agree.
    fn read(field: &str, list: &serde_json::Value) -> Result<Vec<u64>, String> {
        let doc = json!({ field: list });
        let streamed: Result<Lists, _> = serde_json::from_str(&doc.to_string());
        let from_value: Result<Lists, _> = serde_json::from_value(doc);
        let ids = |lists: Lists| {
            let items = if field == "nested" {
                lists.nested
            } else {
                lists.plain
            };
            items.iter().map(|i| i.id).collect::<Vec<_>>()
        };
        match (streamed, from_value) {
            (Ok(a), Ok(b)) => {
                let (a, b) = (ids(a), ids(b));
                assert_eq!(a, b, "{list}");
                Ok(a)
            }
            (Err(a), Err(_)) => Err(a.to_string()),
            (a, b) => panic!(
                "{list}: streamed {:?}, from a value {:?}",
                a.is_ok(),
                b.is_ok()
            ),
        }
    }

    #[test]
    fn nested_lists() {
        for (list, want) in [
            (json!(""), vec![]),
            (json!(null), vec![]),
            (json!(0), vec![]),
            (json!(true), vec![]),
            (json!([]), vec![]),
            (json!({}), vec![]),
            (json!({"product": []}), vec![]),
            (json!({"product": ""}), vec![]),
            (json!({"product": [{"id": 1}, {"id": "2"}]}), vec![1, 2]),
            (json!({"product": {"id": 1}}), vec![1]),
            (json!([{"id": 1}]), vec![1]),
            // One scalar field: a wrapper holding nothing.
            (json!({"id": 3}), vec![]),
            // Several fields: the object is the only item.
            (json!({"id": 7, "name": "x", "tags": ["a"]}), vec![7]),
        ] {
            assert_eq!(read("nested", &list).unwrap(), want, "{list}");
        }
        // A wrapper's list followed by more fields is neither a wrapper nor an item.
        let err = read("nested", &json!({"product": [{"id": 1}], "total": 1})).unwrap_err();
        assert!(err.contains("neither a WHMCS list wrapper"), "{err}");
        // An item that is not one is an error, not an empty list.
        assert!(read("nested", &json!({"product": [{"id": "x"}]})).is_err());
    }

    #[test]
    fn plain_lists() {
        for (list, want) in [
            (json!(""), vec![]),
            (json!(null), vec![]),
            (json!({"a": [1]}), vec![]),
            (json!([{"id": 4}, {"id": "5"}]), vec![4, 5]),
        ] {
            assert_eq!(read("plain", &list).unwrap(), want, "{list}");
        }
    }

    #[derive(serde::Deserialize)]
    struct Ids {
        #[serde(deserialize_with = "id_list")]
        ids: Vec<u64>,
    }

    #[test]
    fn comma_separated_ids() {
        for (value, want) in [
            (json!("1,2"), vec![1, 2]),
            (json!("7"), vec![7]),
            (json!(""), vec![]),
            (json!(3), vec![3]),
            (json!([4, "5"]), vec![4, 5]),
            (json!(" 8 , 9 ,"), vec![8, 9]),
        ] {
            let parsed: Ids = serde_json::from_value(json!({ "ids": value })).unwrap();
            assert_eq!(parsed.ids, want);
        }
    }
}
