//! Short, safe error reasons: what goes into `Provisioning_Error__c`, the job row and the
//! dead-letter table. At most 255 characters, one line, no email addresses, no long digit
//! runs (card or phone numbers), nothing that looks like a credential.

/// The longest reason written anywhere (the Salesforce field's length).
pub const MAX_REASON_CHARS: usize = 255;

/// Makes `text` safe to store and show: single line, redacted, at most 255 characters.
pub fn sanitize_reason(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REASON_CHARS));
    for word in text.split_whitespace() {
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
    let lower = word.to_ascii_lowercase();
    for key in ["password", "secret", "token", "passwd", "pwd", "accesskey"] {
        if let Some(pos) = lower.find(key) {
            let rest = &word[pos + key.len()..];
            if rest.starts_with('=') || rest.starts_with(':') {
                return format!("{}[redacted]", &word[..=pos + key.len()]);
            }
        }
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
}
