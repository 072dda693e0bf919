//! Order intake's idempotency ledger, on both backends: one holder per key however many ask at
//! once, the answer kept, another body refused, a lost attempt taken over, keys of different
//! customers independent.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use provisioner_store::{OrderRequestAnswer, OrderRequestKey, OrderRequestStart, Store};

use crate::support::both_backends;

fn key(customer: &str, k: &str) -> OrderRequestKey {
    OrderRequestKey {
        customer_number: customer.into(),
        idempotency_key: k.into(),
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_796_000_000_000).unwrap()
}

const HOLD: Duration = Duration::from_secs(120);
const ORDER: &str = "801000000000001AAA";

fn created() -> OrderRequestAnswer {
    OrderRequestAnswer {
        status: 201,
        body: format!(
            r#"{{"orderId":"{ORDER}","orderNumber":"00000101","status":"pending_review"}}"#
        ),
        order_id: Some(ORDER.into()),
    }
}

fn record() -> audit::NewAuditRecord {
    audit::NewAuditRecord::new(
        audit::Actor::PORTAL,
        audit::Action::ORDER_INTAKE,
        audit::Outcome::Success,
    )
    .order_id(ORDER)
    .unwrap()
}

both_backends! {
    async fn one_holder_then_the_same_answer_and_another_body_refused(db: &TestDb) {
        let store = db.open().await;
        let k = key("C-1", "key-00000001");
        let started = store.begin_order_request(&k, "fp-a", HOLD, t0()).await.unwrap();
        assert_eq!(started, OrderRequestStart::Started { taken_over: false });
        // While it is held: the same body waits, another body is refused.
        let later = t0() + TimeDelta::seconds(30);
        assert_eq!(
            store.begin_order_request(&k, "fp-a", HOLD, later).await.unwrap(),
            OrderRequestStart::InFlight { retry_after: Duration::from_secs(90) }
        );
        assert_eq!(
            store.begin_order_request(&k, "fp-b", HOLD, later).await.unwrap(),
            OrderRequestStart::Mismatch
        );
        let head = audit::AuditLog::head(&store).await.unwrap().seq;
        store.answer_order_request(&k, created(), vec![record()], later).await.unwrap();
        assert_eq!(audit::AuditLog::head(&store).await.unwrap().seq, head + 1, "audited with it");
        // Answered: the same body gets the answer, long after; another body is still refused.
        let much_later = t0() + TimeDelta::days(3);
        assert_eq!(
            store.begin_order_request(&k, "fp-a", HOLD, much_later).await.unwrap(),
            OrderRequestStart::Answered(created())
        );
        assert_eq!(
            store.begin_order_request(&k, "fp-b", HOLD, much_later).await.unwrap(),
            OrderRequestStart::Mismatch
        );
        assert_eq!(
            store.order_request_customer(ORDER).await.unwrap(),
            Some(("C-1".to_owned(), later))
        );
        assert_eq!(store.order_request_customer("801000000000002AAA").await.unwrap(), None);
    }

    async fn a_lost_or_released_attempt_is_taken_over_once(db: &TestDb) {
        let store = db.open().await;
        let k = key("C-1", "key-00000002");
        store.begin_order_request(&k, "fp", HOLD, t0()).await.unwrap();
        // The holder vanished (a crash): after its hold, one retry takes it over.
        let after = t0() + TimeDelta::seconds(121);
        assert_eq!(
            store.begin_order_request(&k, "fp", HOLD, after).await.unwrap(),
            OrderRequestStart::Started { taken_over: true }
        );
        assert!(matches!(
            store.begin_order_request(&k, "fp", HOLD, after).await.unwrap(),
            OrderRequestStart::InFlight { .. }
        ));
        // Released (outcome unknown): the next attempt takes it over at once.
        store.release_order_request(&k, vec![], after).await.unwrap();
        assert_eq!(
            store.begin_order_request(&k, "fp", HOLD, after).await.unwrap(),
            OrderRequestStart::Started { taken_over: true }
        );
        // Released, but another body: still refused (the first may have created its Order).
        store.release_order_request(&k, vec![], after).await.unwrap();
        assert_eq!(
            store.begin_order_request(&k, "fp-other", HOLD, after).await.unwrap(),
            OrderRequestStart::Mismatch
        );
    }

    async fn twenty_at_once_one_holder_and_keys_are_per_customer(db: &TestDb) {
        let store = std::sync::Arc::new(db.open().await);
        let k = key("C-1", "key-00000003");
        let calls = (0..20).map(|_| {
            let (store, k) = (store.clone(), k.clone());
            tokio::spawn(async move { store.begin_order_request(&k, "fp", HOLD, t0()).await })
        });
        let results: Vec<_> = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();
        let holders = results
            .iter()
            .filter(|r| matches!(r, OrderRequestStart::Started { .. }))
            .count();
        assert_eq!(holders, 1, "{results:?}");
        assert_eq!(
            results.iter().filter(|r| matches!(r, OrderRequestStart::InFlight { .. })).count(),
            19
        );
        // The same key from another customer is another request.
        assert_eq!(
            store.begin_order_request(&key("C-2", "key-00000003"), "fp-x", HOLD, t0()).await.unwrap(),
            OrderRequestStart::Started { taken_over: false }
        );
        assert_eq!(key("C-2", "key-00000003").external_id(), "C-2:key-00000003");
    }
}
