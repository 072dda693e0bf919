//! The keyring lives in the database, wrapped; rotation and re-encryption.

use chrono::{Duration, Utc};
use field_crypto::MasterKey;
use provisioner_store::{NewDeadLetter, SqlStore, Store, StoreOptions};

use crate::support::both_backends;

fn letter(payload: &[u8]) -> NewDeadLetter {
    NewDeadLetter {
        topic: None,
        event_id: None,
        replay_id: None,
        order_id: Some("801000000000001AAA".into()),
        reason: "test".into(),
        payload: Some(payload.to_vec()),
        attempts: 3,
    }
}

both_backends! {
    async fn keyring_persists_rotates_and_reencrypts(db: &TestDb) {
        let store = db.open().await;
        let now = Utc::now();
        let old = store.dead_letter(letter(b"under key 1"), None, vec![], now).await.unwrap();
        assert_eq!(store.rotate_keys_if_older_than(90, audit::Actor::KEY_MANAGER, now).await.unwrap(), None);
        let rotated = store
            .rotate_keys_if_older_than(90, audit::Actor::KEY_MANAGER, now + Duration::days(91))
            .await
            .unwrap();
        assert_eq!(rotated.map(|k| k.get()), Some(2));
        let new = store.dead_letter(letter(b"under key 2"), None, vec![], now).await.unwrap();
        drop(store);

        // Reopen: the rotated keyring was persisted; both payloads decrypt.
        let store = db.open().await;
        assert_eq!(store.keyring().primary().get(), 2);
        assert_eq!(&store.dead_letter_payload(&old).await.unwrap().unwrap()[..], b"under key 1");
        assert_eq!(&store.dead_letter_payload(&new).await.unwrap().unwrap()[..], b"under key 2");
        // Re-encryption moves the old one to key 2 (and only that one).
        assert_eq!(store.reencrypt_all().await.unwrap(), 1);
        assert_eq!(store.reencrypt_all().await.unwrap(), 0);
        assert_eq!(&store.dead_letter_payload(&old).await.unwrap().unwrap()[..], b"under key 1");
        let audit_key = store.audit_key().fingerprint();
        drop(store);

        // A different master key cannot open the store's keyring.
        let wrong = MasterKey::from_config("a completely different passphrase").unwrap();
        let err = SqlStore::open(&db.url(), &wrong, StoreOptions::default()).await.unwrap_err();
        assert!(err.to_string().contains("passphrase") || err.to_string().contains("FIELD_ENCRYPTION_KEY"), "{err}");
        // The audit key is stable across reopen and rotation.
        assert_eq!(db.open().await.audit_key().fingerprint(), audit_key);
    }
}
