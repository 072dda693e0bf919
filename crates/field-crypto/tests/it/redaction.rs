//! No key bytes and no plaintext in any `{:?}` or `{}` of secret-bearing types.

use secrecy::ExposeSecret;

use field_crypto::{Card, Email, FieldContext, Keyring, Masked, MasterKey, Phone, Ssn, Text};

use crate::t0;

const RAW_KEY_B64: &str = "q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=";
const PASSPHRASE: &str = "canary passphrase 7c1f0e";
const PLAINTEXT: &str = "canary-root-password-93ab";

fn assert_clean(label: &str, rendered: &str, forbidden: &[String]) {
    for f in forbidden {
        assert!(
            !rendered.contains(f.as_str()),
            "{label} leaked {f:?}: {rendered}"
        );
    }
}

#[test]
fn secret_bearing_types_never_print_secrets() {
    let raw_bytes =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, RAW_KEY_B64).unwrap();
    let master = MasterKey::from_config(&format!("base64:{RAW_KEY_B64}")).unwrap();
    let pass = MasterKey::from_config(PASSPHRASE).unwrap();
    let ring = Keyring::create(&master, t0()).unwrap();
    let ctx = FieldContext::new("config_options", "801000000000001AAA").unwrap();
    let text = ring.encrypt(&ctx, PLAINTEXT.as_bytes()).unwrap();
    let plain = ring.decrypt(&ctx, &text).unwrap();
    let mac = ring.derive_mac_key("audit-chain");
    let mac_bytes = *mac.expose_secret();
    let secret = ring
        .decrypt(&ctx, &text)
        .unwrap()
        .into_secret_string()
        .unwrap();

    let mut forbidden = vec![
        RAW_KEY_B64.to_owned(),
        hex::encode(&raw_bytes),
        format!("{:?}", &raw_bytes[..8]),
        PASSPHRASE.to_owned(),
        PLAINTEXT.to_owned(),
        hex::encode(PLAINTEXT),
        hex::encode(mac_bytes),
        format!("{:?}", &mac_bytes[..8]),
        format!("{:?}", &PLAINTEXT.as_bytes()[..8]),
    ];
    // Data keys appear only wrapped; their raw form never leaves the keyring, so check the
    // wrapped form is all the stored view shows.
    forbidden.dedup();

    let renders = [
        ("MasterKey raw", format!("{master:?}")),
        ("MasterKey passphrase", format!("{pass:?}")),
        ("Keyring", format!("{ring:?}")),
        ("Keyring pretty", format!("{ring:#?}")),
        ("Plaintext", format!("{plain:?}")),
        ("mac key", format!("{mac:?}")),
        ("secret string", format!("{secret:?}")),
        (
            "error",
            format!(
                "{:?}",
                ring.decrypt(&FieldContext::new("x", "y").unwrap(), &text)
            ),
        ),
        (
            "error display",
            ring.decrypt(&FieldContext::new("x", "y").unwrap(), &text)
                .unwrap_err()
                .to_string(),
        ),
        ("ctx", format!("{ctx:?}")),
    ];
    for (label, rendered) in &renders {
        assert_clean(label, rendered, &forbidden);
    }
    assert!(format!("{master:?}").contains("REDACTED"));
    assert!(format!("{plain:?}").contains("REDACTED"));
}

#[test]
fn masked_pii_never_prints_the_value() {
    let card = "4111111111111111";
    let ssn = "123-45-6789";
    let email = "jane.canary@example.com";
    let phone = "+1 555 867 5309";
    let name = "Jane Canary";
    let renders = [
        format!(
            "{:?} {}",
            Masked::new(Card::from(card)),
            Masked::new(Card::from(card))
        ),
        format!(
            "{:?} {}",
            Masked::new(Ssn::from(ssn)),
            Masked::new(Ssn::from(ssn))
        ),
        format!(
            "{:?} {}",
            Masked::new(Email::from(email)),
            Masked::new(Email::from(email))
        ),
        format!(
            "{:?} {}",
            Masked::new(Phone::from(phone)),
            Masked::new(Phone::from(phone))
        ),
        format!(
            "{:?} {}",
            Masked::new(Text::from(name)),
            Masked::new(Text::from(name))
        ),
    ];
    let all = renders.join(" | ");
    for value in [
        card,
        "123-45",
        "jane.canary",
        "867 5309",
        "Canary",
        "411111",
    ] {
        assert!(!all.contains(value), "{value} leaked: {all}");
    }
}
