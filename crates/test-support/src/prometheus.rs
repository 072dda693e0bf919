//! A strict parser of the Prometheus text exposition format 0.0.4, for tests that scrape
//! `/metrics`: any malformed line is an error naming the line.
//!
//! Checked: `# HELP` and `# TYPE` name valid metrics, a family has one `TYPE` of the known
//! kinds; every other non-empty line is `name{label="value",...} value [timestamp]` with valid
//! names, quoted and escaped label values, a float value (`+Inf`, `-Inf`, `NaN` included) and
//! an integer timestamp; a histogram's `_bucket` has `le`; a counter is not negative.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name, suffix (`_bucket`, `_sum`, `_count`) included.
    pub name: String,
    /// Label name to (unescaped) value.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// Whether the sample carries `pair`, a label written as in the exposition:
    /// `name="value"` (escapes included).
    pub fn has_label(&self, pair: &str) -> bool {
        let Some((name, quoted)) = pair.split_once('=') else {
            return false;
        };
        let Some(value) = quoted.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
            return false;
        };
        unescape(value).is_some_and(|v| self.labels.get(name) == Some(&v))
    }
}

/// The sum of `name`'s samples whose labels include every `(label, value)` of `with`.
pub fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `text` with the exposition's escapes (`\\`, `\"`, `\n`) undone; `None` on a bad escape.
fn unescape(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                'n' => out.push('\n'),
                c @ ('\\' | '"') => out.push(c),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Reads a label value up to its closing quote (the opening one already read): the position
/// of the closing quote, `None` if the text ends first, or an error on a bad escape.
fn label_value(
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> Result<Option<usize>, String> {
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, 'n' | '\\' | '"')) => {}
                other => return Err(format!("bad escape {other:?}")),
            },
            '"' => return Ok(Some(i)),
            _ => {}
        }
    }
    Ok(None)
}

/// Parses `text`; the error names the first malformed line.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match words.next() {
                Some("HELP") => {
                    let name = words.next().unwrap_or_default();
                    if !is_metric_name(name) {
                        return Err(format!("line {n}: bad HELP {line:?}"));
                    }
                }
                Some("TYPE") => {
                    let name = words.next().unwrap_or_default();
                    let kind = words.next().unwrap_or_default();
                    if !is_metric_name(name)
                        || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                    {
                        return Err(format!("line {n}: bad TYPE {line:?}"));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(format!("line {n}: second TYPE for {name}"));
                    }
                }
                _ => {}
            }
            continue;
        }
        samples.push(sample(line, &types).map_err(|e| format!("line {n}: {e} in {line:?}"))?);
    }
    Ok(samples)
}

/// One sample line, checked against the `TYPE`s seen so far.
fn sample(line: &str, types: &BTreeMap<String, String>) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let close = loop {
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            match chars.peek().copied() {
                Some((i, '}')) => break i,
                None => return Err("unclosed labels".into()),
                Some(_) => {}
            }
            let mut label = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                label.push(c);
            }
            if !is_label_name(&label) {
                return Err(format!("bad label name {label:?}"));
            }
            let Some((open, '"')) = chars.next() else {
                return Err(format!("label {label} has no quoted value"));
            };
            let end = label_value(&mut chars)?.ok_or("unterminated label value")?;
            let value = unescape(&inner[open + 1..end]).ok_or("bad escape")?;
            if labels.insert(label.clone(), value).is_some() {
                return Err(format!("label {label} twice"));
            }
        };
        rest = &inner[close + 1..];
    }
    if !rest.starts_with(' ') {
        return Err("no space before the value".into());
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value: f64 = value
        .parse()
        .map_err(|_| format!("value {value:?} is not a float"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp".to_owned())?;
    }
    if fields.next().is_some() {
        return Err("trailing text".into());
    }
    let family = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| {
            name.strip_suffix(suffix).filter(|base| {
                matches!(
                    types.get(*base).map(String::as_str),
                    Some("histogram" | "summary")
                )
            })
        })
        .unwrap_or(name);
    match types.get(family).map(String::as_str) {
        Some("histogram") if name.ends_with("_bucket") && !labels.contains_key("le") => {
            return Err("bucket without le".into());
        }
        Some("counter") if value < 0.0 => return Err("negative counter".into()),
        _ => {}
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_text_parses() {
        let text = "# HELP a_total Requests.\n# TYPE a_total counter\n\
                    a_total{route=\"/x\",code=\"200\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2 1700000000\n\
                    h_sum 0.7\nh_count 2\nb{x=\"a\\\"b\\\\c\\nd\"} -Inf\nc NaN\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 7);
        assert_eq!(total(&samples, "a_total", &[("code", "200")]), 3.0);
        assert!(samples[0].has_label(r#"route="/x""#));
        assert!(!samples[0].has_label(r#"route="/y""#));
        assert_eq!(samples[2].labels["le"], "+Inf");
        assert_eq!(samples[2].value, 2.0);
        assert_eq!(samples[5].labels["x"], "a\"b\\c\nd");
        assert!(samples[5].has_label(r#"x="a\"b\\c\nd""#));
        assert_eq!(samples[5].value, f64::NEG_INFINITY);
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            "a{x=\"1\"}1",
            "a 1 x",
            "a{1x=\"1\"} 1",
            "a{x=\"\\t\"} 1",
            "a{x=\"1\",x=\"2\"} 1",
            "# HELP 1a text",
            "# TYPE a gauge\n# TYPE a gauge",
            "# TYPE a meter",
            "# TYPE a counter\na -1",
            "# TYPE h histogram\nh_bucket 1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
