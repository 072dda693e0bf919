//! Rotation: old data keeps decrypting, new data uses the new key, re-encryption moves data.

use chrono::Duration;
use field_crypto::{Error, FieldContext, Keyring, MasterKey};

use crate::{TEST_MASTER, keyring, t0};

fn ctx(i: usize) -> FieldContext {
    FieldContext::new("config_options", &format!("801{i:015}")).unwrap()
}

#[test]
fn rotation_by_age_keeps_old_data_readable_and_moves_it() {
    let mut ring = keyring();
    let old: Vec<String> = (0..10)
        .map(|i| {
            ring.encrypt(&ctx(i), format!("value {i}").as_bytes())
                .unwrap()
        })
        .collect();
    assert!(old.iter().all(|t| t.starts_with("pf1.1.")));

    // Younger than 90 days: nothing happens.
    assert_eq!(
        ring.rotate_if_older_than(t0() + Duration::days(89), 90)
            .unwrap(),
        None
    );
    assert_eq!(ring.primary().get(), 1);
    // 90 days: key 2 becomes primary.
    let new = ring
        .rotate_if_older_than(t0() + Duration::days(90), 90)
        .unwrap();
    assert_eq!(new.map(|k| k.get()), Some(2));
    assert_eq!(ring.primary().get(), 2);

    // Data under key 1 still decrypts; new data uses key 2.
    for (i, text) in old.iter().enumerate() {
        assert_eq!(
            &ring.decrypt(&ctx(i), text).unwrap()[..],
            format!("value {i}").as_bytes()
        );
        assert!(ring.needs_reencrypt(text).unwrap());
    }
    let fresh = ring.encrypt(&ctx(99), b"new").unwrap();
    assert!(fresh.starts_with("pf1.2."));
    assert!(!ring.needs_reencrypt(&fresh).unwrap());

    // Re-encryption moves everything to key 2, after which key 1 can be retired.
    let moved: Vec<String> = old
        .iter()
        .enumerate()
        .map(|(i, t)| ring.reencrypt(&ctx(i), t).unwrap().unwrap())
        .collect();
    assert!(moved.iter().all(|t| t.starts_with("pf1.2.")));
    assert_eq!(ring.reencrypt(&ctx(0), &moved[0]).unwrap(), None);
    ring.retire(field_crypto::KeyId::new(1)).unwrap();
    for (i, text) in moved.iter().enumerate() {
        assert_eq!(
            &ring.decrypt(&ctx(i), text).unwrap()[..],
            format!("value {i}").as_bytes()
        );
    }
    // A text still under the retired key names the missing id.
    let err = ring.decrypt(&ctx(0), &old[0]).unwrap_err();
    assert!(matches!(err, Error::UnknownKey { key_id } if key_id.get() == 1));
    assert!(err.to_string().contains("data key 1 is not in the keyring"));
}

#[test]
fn the_primary_key_cannot_be_retired() {
    let mut ring = keyring();
    assert!(ring.retire(ring.primary()).is_err());
}

#[test]
fn rotation_survives_persistence_and_master_key_change() {
    let master = MasterKey::from_config(TEST_MASTER).unwrap();
    let mut ring = Keyring::create(&master, t0()).unwrap();
    let a = ring.encrypt(&ctx(1), b"under key 1").unwrap();
    ring.rotate(t0() + Duration::days(1)).unwrap();
    let b = ring.encrypt(&ctx(2), b"under key 2").unwrap();

    let new_master = MasterKey::from_config("a brand new passphrase for the keys").unwrap();
    let stored = ring.rewrap(&new_master).unwrap().to_stored();
    assert_eq!(stored.keys.len(), 2);
    assert_eq!(stored.primary.get(), 2);
    // The old master no longer opens it; the new one does, with both keys.
    assert!(Keyring::open(&master, &stored).is_err());
    let reopened = Keyring::open(&new_master, &stored).unwrap();
    assert_eq!(&reopened.decrypt(&ctx(1), &a).unwrap()[..], b"under key 1");
    assert_eq!(&reopened.decrypt(&ctx(2), &b).unwrap()[..], b"under key 2");
    let infos = reopened.key_infos();
    assert_eq!(infos.len(), 2);
    assert!(infos[1].primary && !infos[0].primary);
}

#[test]
fn a_tampered_stored_key_is_refused() {
    let ring = keyring();
    let mut stored = ring.to_stored();
    stored.keys[0].created_at += Duration::seconds(1);
    let master = MasterKey::from_config(TEST_MASTER).unwrap();
    assert!(matches!(
        Keyring::open(&master, &stored),
        Err(Error::WrongMasterKey { .. })
    ));
    let mut stored = ring.to_stored();
    stored.primary = field_crypto::KeyId::new(7);
    assert!(matches!(
        Keyring::open(&master, &stored),
        Err(Error::InvalidKeyring { .. })
    ));
}
