//! The `provisioner` binary carries no private key.
//!
//! The binary these tests run is the same target, with the same normal dependencies, as the
//! release build (dev-dependencies such as `test-support` never link into it), so a key that
//! any of its crates embeds is in here too. `demo` and `sf-sandbox` generate their key pairs
//! at start; the fixed test keys live in the dev-only `test-support`.

use regex::bytes::Regex;

use crate::support::BIN;

/// A PEM private key's opening boundary, of any kind (PKCS#8, PKCS#1 `RSA`, `EC`, `ENCRYPTED`,
/// `OPENSSH`, ...). Source text that only *matches* PEM (the sanitiser's pattern) has no
/// literal label and does not match.
const PRIVATE_KEY_BOUNDARY: &str = r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----";

/// What of `haystack` gives a private key away: boundaries, and any line of the test keys.
fn private_key_traces(haystack: &[u8]) -> Vec<String> {
    let boundary = Regex::new(PRIVATE_KEY_BOUNDARY).unwrap();
    let mut found: Vec<String> = boundary
        .find_iter(haystack)
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .collect();
    for pem in [
        test_support::keys::PRIVATE_KEY_PEM,
        test_support::keys::OTHER_PRIVATE_KEY_PEM,
    ] {
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            if Regex::new(&regex::escape(line)).unwrap().is_match(haystack) {
                found.push(format!("a line of a test key: {line}"));
            }
        }
    }
    found
}

#[test]
fn the_binary_contains_no_private_key() {
    let bytes = std::fs::read(BIN).unwrap();
    let traces = private_key_traces(&bytes);
    assert!(
        traces.is_empty(),
        "{BIN} ({} bytes) carries private key material: {traces:?}",
        bytes.len()
    );
}

#[test]
fn the_scan_finds_an_embedded_key() {
    // The scan itself: a key anywhere in a blob of binary noise is found, in both PEM kinds,
    // and so is a bare line of a test key.
    let mut blob = vec![0u8, 0x7f, b'E', b'L', b'F'];
    blob.extend_from_slice(test_support::keys::PRIVATE_KEY_PEM.as_bytes());
    blob.extend_from_slice(b"\0\x01-----BEGIN RSA PRIVATE KEY-----\nMII\0");
    let traces = private_key_traces(&blob);
    assert!(
        traces.contains(&"-----BEGIN PRIVATE KEY-----".to_owned()),
        "{traces:?}"
    );
    assert!(
        traces.contains(&"-----BEGIN RSA PRIVATE KEY-----".to_owned()),
        "{traces:?}"
    );
    assert!(
        traces.iter().any(|t| t.starts_with("a line of")),
        "{traces:?}"
    );
    let public_only = test_support::keys::PUBLIC_KEY_PEM.as_bytes();
    assert!(private_key_traces(public_only).is_empty());
    let pattern = br"(?s)-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\z)";
    assert!(
        private_key_traces(pattern).is_empty(),
        "the sanitiser's own pattern"
    );
}
