//! Issue 16, Done-when 6: on PostgreSQL the per-customer provisioning rate is held in the
//! database, so however many instances run (and however often they restart) one customer's
//! orders start at most `CUSTOMER_PROVISION_RATE` in all.

use std::collections::BTreeMap;
use std::time::Duration;

use test_support::pg::PgTempDb;
use test_support::process::free_port;
use test_support::prometheus::total;

use crate::status_api::StatusApi;
use crate::support::{World, activated, provisioner, spawn_logged, stop, wait_healthy};

/// The rate under test: three orders per customer per hour.
const BURST: usize = 3;

/// `provisioner_rate_delayed_total{scope="shared"}` of the instance on `port`.
async fn delayed(port: u16) -> usize {
    let answer = StatusApi::new(port).get("/metrics", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let samples = test_support::prometheus::parse(&answer.body).unwrap();
    total(
        &samples,
        "provisioner_rate_delayed_total",
        &[("scope", "shared")],
    ) as usize
}

/// Two instances on one PostgreSQL database, one customer, a rate of three an hour. The first
/// instance alone starts three of the customer's orders; then it restarts and a second
/// instance joins, and the next five orders, whichever instance claims them, are all held back
/// by the rate both read from the database. Per-process limits would have let each fresh
/// process start three more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgres_share_one_customers_provisioning_rate() {
    let db = PgTempDb::create().await;
    let world = World::start(1, 8).await;
    let (first, later) = world.seeded.events.split_at(BURST);
    let ports = [free_port(), free_port()];
    let envs: Vec<BTreeMap<String, String>> = ports
        .iter()
        .map(|&port| {
            let mut env = world.env(port);
            env.insert("DATABASE_URL".into(), db.url());
            env.insert("CUSTOMER_PROVISION_RATE".into(), format!("{BURST}/hour"));
            env
        })
        .collect();
    let dir = world.dir.path();

    // The first instance alone: the customer's first three orders start.
    let mut a = spawn_logged(&["run"], &envs[0], &dir.join("a1.log"));
    wait_healthy(ports[0], Duration::from_secs(30)).await;
    for e in first {
        world
            .pubsub
            .publish_order(sf_pubsub::DEFAULT_TOPIC, e)
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while activated(&world) < BURST {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} activated",
            activated(&world)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(&mut a).await;

    // Both instances, the first one restarted: five more orders of the same customer.
    let mut a = spawn_logged(&["run"], &envs[0], &dir.join("a2.log"));
    let mut b = spawn_logged(&["run"], &envs[1], &dir.join("b.log"));
    wait_healthy(ports[0], Duration::from_secs(30)).await;
    wait_healthy(ports[1], Duration::from_secs(30)).await;
    for e in later {
        world
            .pubsub
            .publish_order(sf_pubsub::DEFAULT_TOPIC, e)
            .unwrap();
    }
    // A job held back by the rate waits for its time without holding the customer's later
    // jobs back, so each of the five is claimed once and held (for twenty minutes and more):
    // once all five are held, nothing more can start during the test.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let jobs = loop {
        let held = delayed(ports[0]).await + delayed(ports[1]).await;
        let (code, out) = provisioner(&["jobs", "list", "--json"], &envs[1]).await;
        assert_eq!(code, 0, "{out}");
        let jobs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        if held >= later.len() && jobs.len() == world.seeded.events.len() {
            assert_eq!(held, later.len(), "each waiting job is held back once");
            break jobs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{held} held back, {} jobs, {} activated",
            jobs.len(),
            activated(&world)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for e in later {
        let held = jobs
            .iter()
            .find(|j| j["order_id"] == e.order_id.as_str())
            .unwrap();
        assert_eq!(held["state"], "pending", "{held}");
        let next: chrono::DateTime<chrono::Utc> =
            held["next_attempt_at"].as_str().unwrap().parse().unwrap();
        assert!(
            next > chrono::Utc::now() + chrono::Duration::minutes(10),
            "held back by the hour's rate: {held}"
        );
    }
    assert_eq!(
        activated(&world),
        BURST,
        "the customer's rate holds across instances"
    );
    assert_eq!(
        world.whmcs.orders().len(),
        BURST,
        "no WHMCS order past the rate"
    );
    stop(&mut a).await;
    stop(&mut b).await;
    db.close().await;
}
