//! The audit key never shows its bytes.

use audit::{AuditKey, JsonlAuditLog, MemoryAuditLog};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::common::KEY_BYTES;

/// Every way `bytes` could show up in formatted text.
fn assert_hidden(text: &str, bytes: &[u8]) {
    let lower: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!text.contains(&lower), "hex key bytes in {text:?}");
    assert!(
        !text.contains(&lower.to_uppercase()),
        "HEX key bytes in {text:?}"
    );
    // Any 8-byte window of the raw bytes as text (KEY_BYTES is printable ASCII).
    for w in bytes.windows(8) {
        if let Ok(s) = std::str::from_utf8(w) {
            assert!(!text.contains(s), "raw key bytes {s:?} in {text:?}");
        }
    }
    // `[u8]` Debug style: "75, 118, ..."
    let list = bytes[..6]
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    assert!(!text.contains(&list), "decimal key bytes in {text:?}");
}

#[test]
fn key_formats_show_no_key_bytes() {
    let key = AuditKey::from_bytes(KEY_BYTES).unwrap();
    for text in [format!("{key:?}"), format!("{key:#?}"), format!("{key}")] {
        assert_hidden(&text, KEY_BYTES);
        assert!(text.contains(&key.fingerprint()), "{text}");
    }
}

#[test]
fn derived_key_formats_show_neither_input_nor_key_bytes() {
    let key = AuditKey::derive(KEY_BYTES).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"portal-provisioner/audit-key/v1").unwrap();
    mac.update(KEY_BYTES);
    let derived = mac.finalize().into_bytes();
    for text in [format!("{key:?}"), format!("{key}")] {
        assert_hidden(&text, KEY_BYTES);
        assert_hidden(&text, &derived);
    }
}

#[tokio::test]
async fn logs_holding_the_key_show_no_key_bytes() {
    let key = AuditKey::from_bytes(KEY_BYTES).unwrap();
    let mem = MemoryAuditLog::new(key.clone());
    assert_hidden(&format!("{mem:?}"), KEY_BYTES);
    let dir = tempfile::tempdir().unwrap();
    let jsonl = JsonlAuditLog::open(dir.path().join("a.jsonl"), key)
        .await
        .unwrap();
    assert_hidden(&format!("{jsonl:?}"), KEY_BYTES);
}

#[test]
fn key_errors_show_no_key_bytes() {
    let mut short = KEY_BYTES.to_vec();
    short.pop();
    let err = AuditKey::from_bytes(&short).unwrap_err();
    assert_hidden(&format!("{err} {err:?}"), &short);
}
