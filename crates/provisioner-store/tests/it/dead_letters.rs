//! Dead letters: stored with the reason, payload encrypted at rest, operator states.

use chrono::Utc;
use provisioner_store::{Checkpoint, DeadLetterState, NewDeadLetter, Store};
use sqlx::Connection;

use crate::support::both_backends;

both_backends! {
    async fn a_bad_event_is_dead_lettered_with_its_checkpoint(db: &TestDb) {
        let store = db.open().await;
        let topic = "/event/OrderProvisionRequested__e";
        let payload = b"\x80\xa0canary-payload-with-pii jane@example.com".to_vec();
        let id = store
            .dead_letter(
                NewDeadLetter {
                    topic: Some(topic.into()),
                    event_id: Some("evt-bad".into()),
                    replay_id: Some(vec![1, 2, 3]),
                    order_id: None,
                    reason: "missing required field OrderId__c".into(),
                    payload: Some(payload.clone()),
                    attempts: 0,
                },
                Some(Checkpoint { topic: topic.into(), replay_id: vec![1, 2, 3] }),
                vec![],
                Utc::now(),
            )
            .await
            .unwrap();
        assert_eq!(store.load_checkpoint(topic).await.unwrap(), Some(vec![1, 2, 3]));

        let listed = store.dead_letters(Some(DeadLetterState::Open), 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, id);
        assert_eq!(listed[0].reason, "missing required field OrderId__c");
        assert!(listed[0].has_payload);
        let back = store.dead_letter_payload(&id).await.unwrap().unwrap();
        assert_eq!(&back[..], &payload[..]);

        // At rest the payload is a field-crypto ciphertext, not the bytes.
        sqlx::any::install_default_drivers();
        let mut raw = sqlx::AnyConnection::connect(&db.url()).await.unwrap();
        let stored: String = sqlx::Row::get(
            &sqlx::query("SELECT payload FROM dead_letters WHERE id = $1")
                .bind(&id)
                .fetch_one(&mut raw)
                .await
                .unwrap(),
            "payload",
        );
        raw.close().await.unwrap();
        assert!(stored.starts_with("pf1."));
        assert!(!stored.contains("canary"));

        store.set_dead_letter_state(&id, DeadLetterState::Discarded, vec![], Utc::now()).await.unwrap();
        assert!(store.dead_letters(Some(DeadLetterState::Open), 10).await.unwrap().is_empty());
        assert_eq!(
            store.dead_letter_by_id(&id).await.unwrap().unwrap().state,
            DeadLetterState::Discarded
        );
        assert!(matches!(
            store.set_dead_letter_state("nope", DeadLetterState::Retried, vec![], Utc::now()).await,
            Err(provisioner_store::Error::NotFound { .. })
        ));
    }
}
