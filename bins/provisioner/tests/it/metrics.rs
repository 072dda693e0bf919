//! `/metrics` is valid Prometheus text and moves as orders flow (issue 7, done-when 6).

use std::collections::BTreeSet;
use std::time::Duration;

use test_support::process::{Captured, PATIENCE, free_port};
use test_support::prometheus::{Sample, total};
use tokio::time::Instant;

use crate::status_api::StatusApi;
use crate::support::{CapturedProvisioner as _, World, wait_all_activated, wait_healthy};

/// Scrapes `/metrics` until `jobs_total{outcome="provisioned"}` reaches `want`.
async fn scrape_until_provisioned(api: &mut StatusApi, want: f64) -> (String, Vec<Sample>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = api.get("/metrics", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let content_type = answer.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let samples = test_support::prometheus::parse(&answer.body)
            .unwrap_or_else(|e| panic!("{e}\n{}", answer.body));
        let provisioned = total(
            &samples,
            "provisioner_jobs_total",
            &[("outcome", "provisioned")],
        );
        if provisioned >= want {
            assert_eq!(
                provisioned, want,
                "no order is provisioned twice\n{}",
                answer.body
            );
            return (answer.body, samples);
        }
        assert!(
            Instant::now() < deadline,
            "provisioned stayed at {provisioned} (want {want})\n{}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_are_valid_prometheus_text_and_move_as_orders_flow() {
    let world = World::start(2, 3).await;
    let port = free_port();
    let env = world.env(port);
    let mut provisioner = Captured::provisioner("provisioner", &["run"], &env);
    wait_healthy(port, PATIENCE).await;
    let mut api = StatusApi::new(port);

    // Half the orders, then a scrape; the other half, then another.
    let (early, late) = world.seeded.events.split_at(3);
    for event in early {
        world
            .pubsub
            .publish_order(sf_pubsub::DEFAULT_TOPIC, event)
            .unwrap();
    }
    let (text1, first) = scrape_until_provisioned(&mut api, 3.0).await;
    for event in late {
        world
            .pubsub
            .publish_order(sf_pubsub::DEFAULT_TOPIC, event)
            .unwrap();
    }
    let (text2, second) = scrape_until_provisioned(&mut api, 6.0).await;
    wait_all_activated(&world, PATIENCE).await;

    let events1 = total(&first, "provisioner_events_total", &[]);
    let events2 = total(&second, "provisioner_events_total", &[]);
    assert!(events1 >= 3.0, "{text1}");
    assert!(
        events2 >= events1 + 3.0,
        "events moved: {events1} -> {events2}\n{text2}"
    );
    assert_eq!(
        total(
            &second,
            "provisioner_events_total",
            &[("outcome", "enqueued")]
        ),
        6.0
    );
    // Step latencies are recorded per step, and the status API counts its own requests.
    let steps: BTreeSet<&str> = second
        .iter()
        .filter(|s| s.name.starts_with("provisioner_step_duration_seconds"))
        .filter_map(|s| s.labels.get("step").map(String::as_str))
        .collect();
    assert!(
        steps.len() >= 3,
        "step latencies by step: {steps:?}\n{text2}"
    );
    // ... as histograms: cumulative buckets, the `+Inf` one equal to the count.
    assert!(
        text2.contains("# TYPE provisioner_step_duration_seconds histogram"),
        "{text2}"
    );
    for step in &steps {
        let with = [("step", *step)];
        let count = total(&second, "provisioner_step_duration_seconds_count", &with);
        assert!(count >= 6.0, "{step}: {count}");
        let mut buckets: Vec<(f64, f64)> = second
            .iter()
            .filter(|s| s.name == "provisioner_step_duration_seconds_bucket")
            .filter(|s| s.labels.get("step").map(String::as_str) == Some(*step))
            .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() > 1, "{step}: buckets {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        assert_eq!(buckets.last().copied(), Some((f64::INFINITY, count)));
    }
    // The runtime's workers: on SQLite, one per CPU but one (the store's writer has a thread
    // of its own), at least one.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    assert_eq!(
        total(&second, "provisioner_runtime_workers", &[]),
        cpus.saturating_sub(1).max(1) as f64,
        "{text2}"
    );
    for name in ["provisioner_jobs_total", "provisioner_events_total"] {
        assert!(
            text2.contains(&format!("# TYPE {name} counter")),
            "{name} is a counter\n{text2}"
        );
    }
    assert!(
        total(&second, "status_api_requests_total", &[])
            > total(&first, "status_api_requests_total", &[]),
        "status API requests are counted\n{text2}"
    );
    // Token refreshes and per-call downstream latencies.
    assert!(
        total(&second, "salesforce_token_requests_total", &[]) >= 1.0,
        "token requests are counted\n{text2}"
    );
    for (name, action) in [
        ("salesforce_request_duration_seconds_count", "fetch_order"),
        ("whmcs_request_duration_seconds_count", "AddOrder"),
    ] {
        let calls: f64 = second
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                s.labels
                    .get("action")
                    .is_some_and(|a| a.eq_ignore_ascii_case(action))
            })
            .map(|s| s.value)
            .sum();
        assert!(calls >= 6.0, "{name}{{action={action}}}: {calls}\n{text2}");
    }
    assert_eq!(
        provisioner.terminate().await,
        Some(0),
        "{}",
        provisioner.tail()
    );
}
