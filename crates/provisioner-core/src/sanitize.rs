//! Short, safe error reasons: what goes into `Provisioning_Error__c`, the job row, the status
//! API's `error` and the dead-letter table. At most 255 characters, one line, no email
//! addresses, no long digit runs (card or phone numbers), and nothing that looks like a
//! credential: the value after a secret-looking key in `key=value`, `key: value` and JSON
//! (`"key":"value"`) forms, `Authorization:` headers and `Bearer`/`Basic` credentials, and
//! anything shaped like a JWT or a PEM block.

use std::sync::LazyLock;

use regex::Regex;

/// The longest reason written anywhere (the Salesforce field's length).
pub const MAX_REASON_CHARS: usize = 255;

/// What replaces a secret value.
const REDACTED: &str = "[redacted]";

/// Parts of a key name that make its value a secret (`db_password`, `X-Api-Token`,
/// `client_secret`, `accesskey`...).
const SECRET_KEYS: &str = "passw(?:or)?d|pwd|secret|token|access[_-]?key|api[_-]?key|apikey|\
    private[_-]?key|credential|session[_-]?id|cookie|signature";

/// One redaction: a pattern and its replacement (`$name` groups kept).
struct Rule {
    pattern: Regex,
    replace: &'static str,
}

fn rule(pattern: &str, replace: &'static str) -> Rule {
    Rule {
        // The patterns are constants of this module, tested below.
        #[allow(clippy::expect_used)]
        pattern: Regex::new(pattern).expect("a valid redaction pattern"),
        replace,
    }
}

/// The rules, most specific first (a PEM block before the words in it).
static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        // A PEM block, to its END line or the end of the text.
        rule(
            r"(?s)-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\z)",
            REDACTED,
        ),
        // JSON (or a Python-ish dict): "key": "value" / "key": value.
        rule(
            &format!(
                r#"(?i)(?P<k>["'][^"']*(?:{SECRET_KEYS}|authorization)[^"']*["']\s*:\s*)(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,}}\]]+)"#
            ),
            "${k}\"[redacted]\"",
        ),
        // An Authorization header: scheme and credentials.
        rule(
            r"(?i)(?P<k>\b(?:proxy-)?authorization\s*[:=]\s*)(?:[A-Za-z][A-Za-z0-9-]*\s+)?[^\s,;]+",
            "${k}[redacted]",
        ),
        // A bare Bearer/Basic credential.
        rule(
            r"(?i)(?P<k>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}",
            "${k}[redacted]",
        ),
        // key=value, key: value, key = "quoted value".
        rule(
            &format!(
                r#"(?i)(?P<k>\b[A-Za-z0-9_.-]*(?:{SECRET_KEYS})[A-Za-z0-9_.-]*\s*(?:=|:)\s*)(?:"[^"]*"|'[^']*'|[^\s&,;]+)"#
            ),
            "${k}[redacted]",
        ),
        // A JWT (header.payload.signature, base64url; the header starts `{"` = `eyJ`).
        rule(
            r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
            REDACTED,
        ),
    ]
});

/// Makes `text` safe to store and show: single line, redacted, at most 255 characters.
pub fn sanitize_reason(text: &str) -> String {
    let mut redacted = std::borrow::Cow::Borrowed(text);
    for rule in RULES.iter() {
        if let std::borrow::Cow::Owned(changed) = rule.pattern.replace_all(&redacted, rule.replace)
        {
            redacted = std::borrow::Cow::Owned(changed);
        }
    }
    let mut out = String::with_capacity(redacted.len().min(MAX_REASON_CHARS));
    for word in redacted.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&redact_word(word));
    }
    truncate_chars(&out, MAX_REASON_CHARS)
}

fn redact_word(word: &str) -> String {
    if word.contains('@') {
        return "[email]".to_owned();
    }
    let digits = word.chars().filter(char::is_ascii_digit).count();
    if digits >= 9 {
        return "[number]".to_owned();
    }
    word.to_owned()
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((cut, _)) => {
            let mut t: String = s[..cut].chars().take(max.saturating_sub(1)).collect();
            t.push('…');
            t
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn redacts_and_caps() {
        assert_eq!(
            sanitize_reason("Client jane@example.com\nnot found"),
            "Client [email] not found"
        );
        assert_eq!(
            sanitize_reason("card 4111111111111111 declined"),
            "card [number] declined"
        );
        assert_eq!(
            sanitize_reason("bad password=hunter2"),
            "bad password=[redacted]"
        );
        assert_eq!(
            sanitize_reason("WHMCS order 4711 failed"),
            "WHMCS order 4711 failed"
        );
        let long = "é".repeat(400);
        let s = sanitize_reason(&long);
        assert_eq!(s.chars().count(), MAX_REASON_CHARS);
        assert!(s.ends_with('…'));
    }

    /// Finding 3 of the security review: the value after `key: ` survived, word by word.
    #[test]
    fn each_form_loses_its_value() {
        for (input, kept) in [
            (
                "login failed, password: hunter2 given",
                "password: [redacted] given",
            ),
            (
                "db_password = 'hunter2' rejected",
                "db_password = [redacted] rejected",
            ),
            (
                r#"body {"token":"hunter2","n":1}"#,
                r#"{"token":"[redacted]","n":1}"#,
            ),
            (
                r#"{"client_secret": "hunter2"}"#,
                r#"{"client_secret": "[redacted]"}"#,
            ),
            (
                "Authorization: Bearer hunter2hunter2",
                "Authorization: [redacted]",
            ),
            ("sent bearer hunter2hunter2 to x", "bearer [redacted] to x"),
            ("url ?accesskey=hunter2&x=1", "accesskey=[redacted]&x=1"),
            ("X-Api-Token: hunter2", "X-Api-Token: [redacted]"),
        ] {
            let out = sanitize_reason(input);
            assert!(!out.contains("hunter2"), "{input:?} -> {out:?}");
            assert!(out.contains(kept), "{input:?} -> {out:?}");
        }
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXBhcnQ";
        assert_eq!(
            sanitize_reason(&format!("got {jwt} back")),
            "got [redacted] back"
        );
        let pem = "key -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0B\n-----END PRIVATE KEY----- end";
        assert_eq!(sanitize_reason(pem), "key [redacted] end");
        let cut = "-----BEGIN RSA PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B";
        assert_eq!(sanitize_reason(cut), "[redacted]");
    }

    /// A secret value: a marker no ordinary text contains, then random base64url characters.
    fn secret() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{6,24}".prop_map(|s| format!("Zq9{s}"))
    }

    /// Text around it: words that are not secret keys.
    fn filler() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-z]{1,8}|[0-9]{1,4}|[(),.!?-]", 0..12).prop_map(|w| w.join(" "))
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "password",
            "Password",
            "db_password",
            "passwd",
            "pwd",
            "secret",
            "client_secret",
            "token",
            "access_token",
            "X-Api-Token",
            "accesskey",
            "api_key",
            "private_key",
        ])
        .prop_map(str::to_owned)
    }

    proptest! {
        #[test]
        fn no_form_leaks_its_value(
            before in filler(),
            after in filler(),
            key in key(),
            value in secret(),
            form in 0usize..9,
        ) {
            let fragment = match form {
                0 => format!("{key}={value}"),
                1 => format!("{key}: {value}"),
                2 => format!("{key} = \"{value}\""),
                3 => format!("{{\"{key}\":\"{value}\"}}"),
                4 => format!("{{\"{key}\": \"{value}\", \"n\": 1}}"),
                5 => format!("Authorization: Bearer {value}"),
                6 => format!("authorization=Basic {value}"),
                7 => format!("eyJhbGciOi{value}.eyJzdWIi{value}.{value}"),
                _ => format!("-----BEGIN PRIVATE KEY-----\n{value}\n-----END PRIVATE KEY-----"),
            };
            let text = format!("{before} {fragment} {after}");
            let out = sanitize_reason(&text);
            prop_assert!(!out.contains(&value), "{text:?} -> {out:?}");
            prop_assert!(!out.contains('\n'));
            prop_assert!(out.chars().count() <= MAX_REASON_CHARS);
        }

        #[test]
        fn ordinary_text_only_loses_its_line_breaks(words in prop::collection::vec("[a-z]{1,8}|[0-9]{1,4}", 1..20)) {
            let text = words.join("\n");
            prop_assert_eq!(sanitize_reason(&text), words.join(" "));
        }
    }
}
