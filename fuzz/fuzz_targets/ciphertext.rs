//! Stored ciphertext texts: `Keyring::decrypt` rejects anything it did not produce with a typed
//! error and never panics.
#![no_main]

use std::sync::OnceLock;

use chrono::{TimeZone, Utc};
use field_crypto::{FieldContext, Keyring, MasterKey};
use libfuzzer_sys::fuzz_target;

/// A fixed raw master key for fuzzing only.
const FUZZ_MASTER: &str = "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=";

fn setup() -> &'static (Keyring, FieldContext) {
    static SETUP: OnceLock<(Keyring, FieldContext)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let master = MasterKey::from_config(FUZZ_MASTER).unwrap_or_else(|e| panic!("{e}"));
        let t0 = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_else(|| panic!("a valid date"));
        let ring = Keyring::create(&master, t0).unwrap_or_else(|e| panic!("{e}"));
        let ctx = FieldContext::new("config_options", "801000000000001AAA")
            .unwrap_or_else(|e| panic!("{e}"));
        (ring, ctx)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (ring, ctx) = setup();
    // Also with the prefix, so the fuzzer spends its time past it.
    for candidate in [text.to_owned(), format!("pf1.1.{text}")] {
        assert!(
            ring.decrypt(ctx, &candidate).is_err(),
            "{candidate:?} decrypted"
        );
        let _ = Keyring::key_id_of(&candidate);
        let _ = ring.needs_reencrypt(&candidate);
    }
});
