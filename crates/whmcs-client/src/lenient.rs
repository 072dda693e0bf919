//! Lenient readers for WHMCS's inconsistent JSON: ids and counts as numbers or numeric strings,
//! booleans in many spellings, nested lists that are `""` when empty, comma-separated id lists.

use serde::de::DeserializeOwned;
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

/// Items of a WHMCS nested list such as `{"product": [...]}`: also accepts `""`/`null` (empty),
/// a bare array, and a single object instead of an array.
pub(crate) fn nested_items(value: Value) -> Vec<Value> {
    match value {
        Value::Null | Value::String(_) | Value::Bool(_) | Value::Number(_) => Vec::new(),
        Value::Array(items) => items,
        Value::Object(map) => {
            if map.len() == 1 {
                match map.into_iter().next().map(|(_, v)| v) {
                    Some(Value::Array(items)) => items,
                    Some(item @ Value::Object(_)) => vec![item],
                    _ => Vec::new(),
                }
            } else if map.is_empty() {
                Vec::new()
            } else {
                // Not a wrapper: the object itself is the only item.
                vec![Value::Object(map)]
            }
        }
    }
}

/// `deserialize_with` for nested lists (`products.product[]`, `lineitems.lineitem[]`, ...).
pub(crate) fn nested_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let value = Value::deserialize(d)?;
    nested_items(value)
        .into_iter()
        .map(|item| serde_json::from_value(item).map_err(serde::de::Error::custom))
        .collect()
}

/// `deserialize_with` for plain lists that may be `""` or `null` when empty.
pub(crate) fn plain_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .map(|item| serde_json::from_value(item).map_err(serde::de::Error::custom))
            .collect(),
        _ => Ok(Vec::new()),
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

    #[test]
    fn nested_lists() {
        assert_eq!(nested_items(json!("")).len(), 0);
        assert_eq!(nested_items(json!(null)).len(), 0);
        assert_eq!(nested_items(json!([])).len(), 0);
        assert_eq!(nested_items(json!({"product": []})).len(), 0);
        assert_eq!(nested_items(json!({"product": ""})).len(), 0);
        assert_eq!(
            nested_items(json!({"product": [{"id": 1}, {"id": 2}]})).len(),
            2
        );
        assert_eq!(nested_items(json!({"product": {"id": 1}})).len(), 1);
        assert_eq!(nested_items(json!([{"id": 1}])).len(), 1);
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
