//! Done-when 5 and 6 of issue 6, through the real Pub/Sub sandbox and subscriber; and the
//! subscriber's resumption over a mocked Pub/Sub port (`sf_pubsub::MockPubSubApi`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use provisioner_core::intake::IntakeItem;
use provisioner_core::subscriber::{SubscriberConfig, SubscriberStatus, run_subscriber};
use provisioner_store::{DeadLetterState, Store};
use sf_pubsub::{
    Message, MockPubSubApi, OrderProvisionRequested, ReplayStart, SubscribeConfig, Subscription,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::stack;

fn sub_config(start: ReplayStart) -> SubscriberConfig {
    SubscriberConfig {
        start,
        fallback: ReplayStart::Latest,
        batch: 25,
        watchdog: Duration::from_secs(5),
        restart_backoff: Duration::from_millis(50),
        reconnect_backoff: (Duration::from_millis(20), Duration::from_millis(500)),
        leadership_poll: Duration::from_millis(100),
        ..SubscriberConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_replays_and_a_malformed_event_provision_each_order_once() {
    let stack = stack::build_with(10, 10, true).await;
    let ps = stack.pubsub.as_ref().unwrap();
    ps.faults().end_stream_every(7);
    let topic = sf_pubsub::DEFAULT_TOPIC;
    let schema = ps.schema_id(topic).unwrap();
    for (i, o) in stack.orders.iter().enumerate() {
        stack.publish(o);
        if i % 10 == 3 {
            // The same approval published twice (a second event id for one order).
            stack.publish(o);
        }
        if i == 50 {
            ps.publish_raw(topic, &schema, vec![0xde, 0xad, 0xbe, 0xef, 0x01])
                .unwrap();
        }
    }
    let mut handle = stack.engine.start();
    let status = stack.engine.spawn_subscriber(
        &mut handle,
        stack.pubsub_client.clone().unwrap(),
        sub_config(ReplayStart::Earliest),
    );
    stack.drain_count(100, Duration::from_secs(120)).await;
    // Let the subscriber read to the end (the duplicates arrive after some jobs finished).
    let expected_events = 100 + 10 + 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while status.events() + status.dead_letters() < expected_events {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events {} dead {}",
            status.events(),
            status.dead_letters()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.drain(Duration::from_secs(60)).await;
    handle.shutdown().await;

    assert_eq!(status.dead_letters(), 1);
    let letters = stack
        .store
        .dead_letters(Some(DeadLetterState::Open), 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.to_lowercase().contains("payload") || letters[0].reason.contains("field"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        &stack
            .store
            .dead_letter_payload(&letters[0].id)
            .await
            .unwrap()
            .unwrap()[..],
        &[0xde, 0xad, 0xbe, 0xef, 0x01]
    );
    stack.check_invariants().await;

    // A restore from nothing: a new store replays every event from EARLIEST. Every Order is
    // already Activated, so nothing new happens in WHMCS.
    let (store2, engine2) = stack.fresh_engine("restored.db").await;
    let mut handle2 = engine2.start();
    let status2 = engine2.spawn_subscriber(
        &mut handle2,
        stack.pubsub_client.clone().unwrap(),
        sub_config(ReplayStart::Earliest),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while status2.events() + status2.dead_letters() < expected_events {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay stalled at {}",
            status2.events()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = store2.job_counts().await.unwrap();
        if c.done == 100 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle2.shutdown().await;
    stack.check_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_replay_id_and_events_lost_while_down_are_reconciled() {
    let stack = stack::build_with(5, 8, true).await;
    let ps = stack.pubsub.as_ref().unwrap();
    let (first, rest) = stack.orders.split_at(20);
    let set_status = |id: &str, status: &str| {
        let mut order = stack.sf.order(id).unwrap();
        order.status = status.into();
        stack.sf.insert_order(order);
    };
    // The second half is approved only while the provisioner is down.
    for o in rest {
        set_status(&o.order_id, "Draft");
    }
    for o in first {
        stack.publish(o);
    }
    let mut handle = stack.engine.start();
    let status = stack.engine.spawn_subscriber(
        &mut handle,
        stack.pubsub_client.clone().unwrap(),
        sub_config(ReplayStart::Earliest),
    );
    stack.drain_count(20, Duration::from_secs(60)).await;
    while status.events() < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.shutdown().await;
    assert!(
        stack
            .store
            .load_checkpoint(sf_pubsub::DEFAULT_TOPIC)
            .await
            .unwrap()
            .is_some()
    );

    // While the provisioner is down: 20 more approvals, then retention drops everything,
    // including the stored position.
    for o in rest {
        set_status(&o.order_id, "Approved");
        stack.publish(o);
    }
    ps.purge_oldest(sf_pubsub::DEFAULT_TOPIC, 1000).unwrap();

    let mut handle = stack.engine.start();
    let status = stack.engine.spawn_subscriber(
        &mut handle,
        stack.pubsub_client.clone().unwrap(),
        sub_config(ReplayStart::Earliest),
    );
    stack.drain_count(40, Duration::from_secs(120)).await;
    handle.shutdown().await;
    assert!(
        status.replay_resets() >= 1,
        "the stored replay id was rejected"
    );
    stack.check_invariants().await;
}

/// An event of the mocked subscription for a valid Order.
fn mocked_event(n: u64, replay_id: &[u8]) -> sf_pubsub::Result<Message<OrderProvisionRequested>> {
    Ok(Message::Event(sf_pubsub::Event {
        replay_id: replay_id.to_vec(),
        event_id: format!("evt-{n}"),
        schema_id: "schema-1".into(),
        payload: vec![1, 2, 3],
        record: Ok(OrderProvisionRequested {
            created_date: 1_700_000_000_000,
            created_by_id: "005000000000001AAA".into(),
            order_id: sandbox::salesforce::salesforce_id("801", n),
            customer_number: "C-0001".into(),
            account_id: None,
        }),
    }))
}

#[tokio::test]
async fn the_subscriber_resumes_from_the_stored_checkpoint_and_moves_it_over_stored_events() {
    // Nothing provisions here (no worker runs): the Salesforce and WHMCS ports are never called.
    let dir = tempfile::tempdir().unwrap();
    let rest: Arc<dyn sf_rest::OrderApi> = Arc::new(sf_rest::MockOrderApi::new());
    let whmcs: Arc<dyn whmcs_client::WhmcsApi> = Arc::new(whmcs_client::MockWhmcsApi::new());
    let (store, engine) = stack::engine_on(&dir, "s.db", &rest, &whmcs).await;
    let topic = sf_pubsub::DEFAULT_TOPIC;
    // A position stored by an earlier run wins over the configured start (EARLIEST).
    engine
        .intake_batch(vec![IntakeItem::Keepalive {
            latest_replay_id: b"r0".to_vec(),
        }])
        .await
        .unwrap();

    // The first stream delivers two events, then fails; the second stays open.
    let (first_tx, first_rx) = mpsc::channel(8);
    first_tx.send(mocked_event(1, b"r1")).await.unwrap();
    first_tx.send(mocked_event(2, b"r2")).await.unwrap();
    first_tx
        .send(Err(sf_pubsub::Error::Silent {
            rpc: "Subscribe",
            seconds: 300.0,
        }))
        .await
        .unwrap();
    let (_second_tx, second_rx) = mpsc::channel(8);
    let mut streams = vec![second_rx, first_rx];
    let starts = Arc::new(Mutex::new(Vec::new()));
    let (resubscribed_tx, resubscribed_rx) = oneshot::channel();
    let mut resubscribed_tx = Some(resubscribed_tx);
    let mut pubsub = MockPubSubApi::new();
    {
        let starts = Arc::clone(&starts);
        pubsub
            .expect_subscribe_orders()
            .withf(move |c| c.topic == topic)
            .times(2)
            .returning(move |config: SubscribeConfig| {
                starts.lock().unwrap().push(config.start.to_string());
                let stream = streams.pop().unwrap();
                if streams.is_empty() {
                    let _ = resubscribed_tx.take().unwrap().send(());
                }
                Subscription::from_channel(stream)
            });
    }

    let status = Arc::new(SubscriberStatus::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let subscriber = tokio::spawn(run_subscriber(
        engine,
        Arc::new(pubsub),
        sub_config(ReplayStart::Earliest),
        Arc::clone(&status),
        shutdown_rx,
    ));
    // Waits for the second subscription (a failed expectation ends the task: Err here). The
    // limit only turns a regression that never resubscribes into a failure instead of a hang.
    tokio::time::timeout(Duration::from_secs(60), resubscribed_rx)
        .await
        .expect("the subscriber never subscribed again")
        .unwrap();
    shutdown_tx.send(true).unwrap();
    subscriber.await.unwrap();

    let custom = |id: &[u8]| ReplayStart::Custom(id.to_vec()).to_string();
    assert_eq!(
        *starts.lock().unwrap(),
        vec![custom(b"r0"), custom(b"r2")],
        "first from the stored checkpoint, then from the last stored event"
    );
    assert_eq!(status.events(), 2);
    assert_eq!(
        store.load_checkpoint(topic).await.unwrap(),
        Some(b"r2".to_vec())
    );
    assert_eq!(store.job_counts().await.unwrap().pending, 2);
}
