//! Done when 2, 3, 4 and 5: the subscription engine against the sandbox.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sandbox::pubsub::{PubSubConfig, SANDBOX_ACCESS_TOKEN, replay_id_of, sample_order};
use sf_pubsub::{Action, Error, Message, OrderProvisionRequested, ReplayStart, SubscribeConfig};

use crate::{TOPIC, TestTokens, client, default_client, events, next, sandbox};

fn config() -> SubscribeConfig {
    SubscribeConfig::new(TOPIC)
        .start(ReplayStart::Earliest)
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
        .max_failures(Some(50))
}

fn order_ids(events: &[sf_pubsub::Event<OrderProvisionRequested>]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.record.as_ref().unwrap().order_id.clone())
        .collect()
}

fn seeded_ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| sample_order(i).order_id).collect()
}

#[tokio::test]
async fn thousand_events_exactly_once_in_order_while_the_server_ends_the_stream_every_7() {
    let sb = sandbox(PubSubConfig::default().max_events_per_response(3)).await;
    sb.seed_orders(TOPIC, 1000).unwrap();
    sb.faults().end_stream_every(7);
    let client = default_client(&sb);
    let mut sub = client.subscribe::<OrderProvisionRequested>(config().max_failures(None));
    let got = events(&mut sub, 1000).await;
    assert_eq!(order_ids(&got), seeded_ids(0..1000));
    // Exactly once: the next event after the 1000th is a new one, not a repeat.
    sb.publish_order(TOPIC, &sample_order(5000)).unwrap();
    let after = events(&mut sub, 1).await;
    assert_eq!(order_ids(&after), seeded_ids(5000..5001));
    let stats = sb.stats();
    assert!(stats.subscribe_calls >= 1000 / 7, "{stats:?}");
    assert_eq!(stats.over_credit_sends, 0, "{stats:?}");
    assert!(stats.max_outstanding <= 100, "{stats:?}");
    assert_eq!(stats.zero_credit_with_backlog, 0, "{stats:?}");
    assert_eq!(stats.zero_credit_responses, 0, "{stats:?}");
    assert_eq!(stats.get_schema_calls, 1, "{stats:?}");
    assert!(
        stats.trace_ids_ok,
        "every call carries its own x-client-trace-id"
    );
}

#[tokio::test]
async fn credit_is_topped_up_before_it_runs_out() {
    let sb = Arc::new(
        sandbox(
            PubSubConfig::default()
                .max_events_per_response(1)
                .keepalive_interval(Duration::from_millis(20)),
        )
        .await,
    );
    let client = default_client(&sb);
    let mut sub =
        client.subscribe::<OrderProvisionRequested>(config().start(ReplayStart::Latest).batch(100));
    // A keepalive proves the stream is positioned at the tip before anything is published.
    assert!(matches!(next(&mut sub).await, Message::Keepalive { .. }));
    let publisher = {
        let sb = sb.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                sb.publish_order(TOPIC, &sample_order(i)).unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let got = events(&mut sub, 400).await;
    publisher.await.unwrap();
    assert_eq!(order_ids(&got), seeded_ids(0..400));
    let stats = sb.stats();
    assert_eq!(stats.subscribe_calls, 1, "{stats:?}");
    assert!(stats.fetch_requests > 4, "credit was topped up: {stats:?}");
    assert_eq!(stats.zero_credit_with_backlog, 0, "{stats:?}");
    assert_eq!(stats.zero_credit_responses, 0, "{stats:?}");
    assert_eq!(stats.over_credit_sends, 0, "{stats:?}");
}

#[tokio::test]
async fn a_slow_consumer_gets_less_credit_not_more_memory() {
    let sb = sandbox(PubSubConfig::default()).await;
    sb.seed_orders(TOPIC, 1000).unwrap();
    let client = default_client(&sb);
    let mut sub = client.subscribe::<OrderProvisionRequested>(config().batch(10).buffer(10));
    let got = events(&mut sub, 5).await;
    assert_eq!(order_ids(&got), seeded_ids(0..5));
    // Give the engine every chance to overrun the consumer; the bound holds whatever the timing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = sb.stats().events_sent;
    assert!(
        sent <= 5 + 10 + 2 * 10,
        "server sent {sent} events to a consumer that took 5"
    );
    let rest = events(&mut sub, 995).await;
    assert_eq!(order_ids(&rest), seeded_ids(5..1000));
}

#[tokio::test]
async fn keepalives_surface_latest_replay_id() {
    let sb = sandbox(PubSubConfig::default().keepalive_interval(Duration::from_millis(50))).await;
    sb.seed_orders(TOPIC, 3).unwrap();
    let client = default_client(&sb);
    let mut sub = client.subscribe::<OrderProvisionRequested>(config().start(ReplayStart::Latest));
    match next(&mut sub).await {
        Message::Keepalive { latest_replay_id } => assert_eq!(latest_replay_id, replay_id_of(3)),
        other => panic!("expected a keepalive, got {other:?}"),
    }
}

#[tokio::test]
async fn an_expired_replay_id_falls_back_to_the_configured_preset() {
    let sb = sandbox(PubSubConfig::default()).await;
    sb.seed_orders(TOPIC, 10).unwrap();
    sb.purge_oldest(TOPIC, 5).unwrap();
    let client = default_client(&sb);
    let expired = replay_id_of(2);
    let mut sub = client.subscribe::<OrderProvisionRequested>(
        config()
            .start(ReplayStart::Custom(expired.clone()))
            .fallback(ReplayStart::Earliest),
    );
    match next(&mut sub).await {
        Message::ReplayReset {
            error_code,
            rejected,
            fallback,
        } => {
            assert_eq!(error_code, "subscription.fetch.replayid.corrupted");
            assert_eq!(rejected, ReplayStart::Custom(expired));
            assert_eq!(fallback, ReplayStart::Earliest);
        }
        other => panic!("expected a replay reset, got {other:?}"),
    }
    let got = events(&mut sub, 5).await;
    assert_eq!(order_ids(&got), seeded_ids(5..10));
}

#[tokio::test]
async fn a_custom_replay_id_resumes_after_that_event() {
    let sb = sandbox(PubSubConfig::default()).await;
    sb.seed_orders(TOPIC, 10).unwrap();
    let client = default_client(&sb);
    let mut sub = client
        .subscribe::<OrderProvisionRequested>(config().start(ReplayStart::Custom(replay_id_of(4))));
    let got = events(&mut sub, 6).await;
    assert_eq!(order_ids(&got), seeded_ids(4..10));
    assert_eq!(got[0].replay_id, replay_id_of(5));
}

#[tokio::test]
async fn an_auth_failure_mid_run_remints_the_token_and_resumes_without_loss() {
    let revoked = Arc::new(AtomicBool::new(false));
    let validator = {
        let revoked = revoked.clone();
        move |t: &str| t == "tok-2" || (t == "tok-1" && !revoked.load(Ordering::SeqCst))
    };
    let sb = sandbox(PubSubConfig::default().token_validator(validator)).await;
    sb.seed_orders(TOPIC, 20).unwrap();
    sb.faults().auth_error_after(5);
    let tokens = TestTokens::new(&["tok-1", "tok-2"]);
    let client = client(&sb, tokens.clone());
    let mut sub = client.subscribe::<OrderProvisionRequested>(config());
    let first = events(&mut sub, 5).await;
    revoked.store(true, Ordering::SeqCst);
    let rest = events(&mut sub, 15).await;
    let mut all = order_ids(&first);
    all.extend(order_ids(&rest));
    assert_eq!(all, seeded_ids(0..20));
    assert_eq!(tokens.mints(), 2);
    assert!(sb.stats().auth_failures >= 1);
}

#[tokio::test]
async fn an_auth_failure_of_the_call_itself_remints_and_subscribes() {
    let sb = sandbox(PubSubConfig::default()).await;
    sb.seed_orders(TOPIC, 3).unwrap();
    sb.faults().reject_calls(1);
    let tokens = TestTokens::new(&[SANDBOX_ACCESS_TOKEN]);
    let client = client(&sb, tokens.clone());
    let mut sub = client.subscribe::<OrderProvisionRequested>(config());
    let got = events(&mut sub, 3).await;
    assert_eq!(order_ids(&got), seeded_ids(0..3));
    assert_eq!(tokens.mints(), 2);
    assert_eq!(sb.stats().subscribe_calls, 2);
}

#[tokio::test]
async fn two_schema_ids_in_one_stream_both_decode() {
    let sb = sandbox(PubSubConfig::default()).await;
    sb.seed_orders(TOPIC, 2).unwrap();
    let v2 = OrderProvisionRequested::SCHEMA_JSON.replace(
        r#"{"name":"CreatedById""#,
        r#"{"name":"Priority__c","type":["null","double"],"default":null},{"name":"CreatedById""#,
    );
    let v2_id = sb.register_schema(TOPIC, &v2).unwrap();
    for i in 2..4 {
        sb.publish_order(TOPIC, &sample_order(i)).unwrap();
    }
    let client = default_client(&sb);
    let mut sub = client.subscribe::<OrderProvisionRequested>(config());
    let got = events(&mut sub, 4).await;
    assert_eq!(order_ids(&got), seeded_ids(0..4));
    let ids: HashSet<&str> = got.iter().map(|e| e.schema_id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(got[3].schema_id, v2_id);
    assert_eq!(got[3].record.as_ref().unwrap(), &sample_order(3));
    assert_eq!(sb.stats().get_schema_calls, 2);
}

#[tokio::test]
async fn a_garbage_payload_is_an_error_value_and_the_stream_goes_on() {
    let sb = sandbox(PubSubConfig::default()).await;
    let schema_id = sb.schema_id(TOPIC).unwrap();
    sb.publish_raw(
        TOPIC,
        &schema_id,
        vec![0x80, 0x01, 0x7f, 0x33, 0xfe, 0xff, 0x12, 0x07],
    )
    .unwrap();
    sb.publish_raw(TOPIC, &schema_id, Vec::new()).unwrap();
    sb.publish_order(TOPIC, &sample_order(0)).unwrap();
    let client = default_client(&sb);
    let mut sub = client.subscribe::<OrderProvisionRequested>(config());
    let got = events(&mut sub, 3).await;
    for bad in &got[..2] {
        let err = bad.record.as_ref().unwrap_err();
        assert!(matches!(err, Error::MalformedPayload { .. }), "{err}");
        assert_eq!(err.action(), Action::Permanent);
    }
    assert_eq!(got[2].record.as_ref().unwrap(), &sample_order(0));
}

#[tokio::test]
async fn a_stalled_stream_is_detected_by_the_watchdog_and_the_client_reconnects() {
    let sb = sandbox(PubSubConfig::default()).await;
    sb.seed_orders(TOPIC, 3).unwrap();
    sb.faults().stall_streams(1);
    let client = default_client(&sb);
    let mut sub =
        client.subscribe::<OrderProvisionRequested>(config().watchdog(Duration::from_millis(300)));
    let got = events(&mut sub, 3).await;
    assert_eq!(order_ids(&got), seeded_ids(0..3));
    assert_eq!(sb.stats().subscribe_calls, 2);
}

#[tokio::test]
async fn a_permanent_error_ends_the_subscription_with_the_trailer_code() {
    let sb = sandbox(PubSubConfig::default()).await;
    let client = default_client(&sb);
    let mut sub =
        client.subscribe::<OrderProvisionRequested>(SubscribeConfig::new("/event/Nope__e"));
    let err = sub.next().await.unwrap().unwrap_err();
    assert_eq!(err.error_code(), Some("topic.not.found"));
    assert_eq!(err.action(), Action::Reconfigure);
    assert!(sub.next().await.is_none());
}

#[tokio::test]
async fn schemas_are_fetched_once_per_id_even_concurrently() {
    let sb = sandbox(PubSubConfig::default()).await;
    let id = sb.schema_id(TOPIC).unwrap();
    let client = default_client(&sb);
    let calls = (0..16).map(|_| {
        let client = client.clone();
        let id = id.clone();
        tokio::spawn(async move { client.get_schema(&id).await.unwrap() })
    });
    for c in futures::future::join_all(calls).await {
        assert_eq!(c.unwrap().id(), id);
    }
    assert_eq!(sb.stats().get_schema_calls, 1);
}

#[tokio::test]
async fn publish_returns_replay_ids_and_checks_schema_and_payload() {
    let sb = sandbox(PubSubConfig::default()).await;
    let client = default_client(&sb);
    let info = client.get_topic(TOPIC).await.unwrap();
    assert!(info.can_subscribe && info.can_publish);
    let published = client
        .publish_orders(TOPIC, &[sample_order(0), sample_order(1)])
        .await
        .unwrap();
    assert_eq!(published.len(), 2);
    assert_eq!(published[0].replay_id, replay_id_of(1));
    assert_eq!(published[1].replay_id, replay_id_of(2));
    assert!(
        published
            .iter()
            .all(|p| p.error.is_none() && p.correlation_key.len() == 36)
    );

    let bad = vec![
        sf_pubsub::proto::ProducerEvent {
            id: "bad-schema".into(),
            schema_id: "nope".into(),
            payload: vec![0],
            headers: vec![],
        },
        sf_pubsub::proto::ProducerEvent {
            id: "bad-payload".into(),
            schema_id: info.schema_id.clone(),
            payload: vec![0x02],
            headers: vec![],
        },
    ];
    let results = client.publish_events(TOPIC, bad).await.unwrap();
    assert_eq!(results[0].correlation_key, "bad-schema");
    assert!(
        results[0]
            .error
            .as_deref()
            .unwrap()
            .contains("unknown schema id")
    );
    assert!(
        results[1]
            .error
            .as_deref()
            .unwrap()
            .contains("does not decode")
    );
    assert!(results.iter().all(|r| r.replay_id.is_empty()));
}

#[tokio::test]
async fn retries_are_bounded_and_the_last_error_is_surfaced() {
    let sb = sandbox(PubSubConfig::default()).await;
    sb.faults().reject_calls(1_000);
    let client = default_client(&sb);
    let mut sub = client.subscribe::<OrderProvisionRequested>(config().max_failures(Some(3)));
    let err = sub.next().await.unwrap().unwrap_err();
    match &err {
        Error::GaveUp { attempts, last, .. } => {
            assert_eq!(*attempts, 3);
            assert_eq!(last.action(), Action::Reauthenticate);
            assert_eq!(last.error_code(), Some("service.auth.error"));
        }
        other => panic!("expected GaveUp, got {other}"),
    }
    assert_eq!(sb.stats().subscribe_calls, 3);
    assert!(sub.next().await.is_none());
}

/// A stream that delivered before it failed (here the sandbox ends every fourth event's
/// stream with `UNAVAILABLE`) is resubscribed at once, with no backoff: only failures in a row
/// without progress back off. With a backoff of an hour, the 20 events arrive only if no
/// stream end waits for it.
#[tokio::test]
async fn a_stream_that_delivered_and_then_failed_is_resumed_at_once() {
    let sb = sandbox(PubSubConfig::default().max_events_per_response(2)).await;
    sb.seed_orders(TOPIC, 20).unwrap();
    sb.faults().end_stream_every(4);
    let client = default_client(&sb);
    let mut sub = client.subscribe::<OrderProvisionRequested>(
        config()
            .backoff(Duration::from_secs(3600), Duration::from_secs(3600))
            .max_failures(None),
    );
    let got = events(&mut sub, 20).await;
    assert_eq!(order_ids(&got), seeded_ids(0..20));
    assert!(sb.stats().subscribe_calls >= 5, "{:?}", sb.stats());
}
