//! Crash and scale-out tests (issue 6, done-when 3 and 4): `provisioner run` killed with
//! SIGKILL again and again on SQLite, and two processes sharing one PostgreSQL database with
//! the subscriber's holder killed mid-flow.

use std::time::{Duration, Instant};

use sandbox::whmcs::Fault;

use test_support::pg::PgTempDb;
use test_support::process::{free_port, sigkill, sigterm};

use crate::support::{
    Logs, World, activated, audit_verify_clean, check_invariants, spawn, wait_all_activated,
    wait_healthy,
};

/// A small seeded generator (splitmix64): reproducible kill moments without a dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// What `provisioner run` on SQLite logs when it takes over its dead predecessor's jobs.
const RESUMING: &str = "resuming jobs left running by the previous process";

/// Done-when 3: SIGKILL at 20+ random moments while 300 orders flow (with "commit then drop"
/// faults on both non-idempotent WHMCS calls), restarting on the same SQLite file each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_twenty_times_while_300_orders_flow_keeps_exactly_once() {
    const KILLS: usize = 20;
    let began = Instant::now();
    let world = World::start(30, 10).await;
    world
        .whmcs
        .inject_fault_rate("AddOrder", Fault::CommitThenDrop, 0.05, 61);
    world
        .whmcs
        .inject_fault_rate("AcceptOrder", Fault::CommitThenDrop, 0.05, 62);
    world
        .whmcs
        .inject_fault_rate("GetOrders", Fault::Html500, 0.05, 63);
    // Every order's client check waits 80 ms and at most 4 jobs run at once: at most ~50
    // orders per second of uptime, whatever the machine, so 20 kills (each within 300 ms of
    // becoming healthy) all land while orders are still flowing.
    world.whmcs.inject_fault_rate(
        "GetClientsDetails",
        Fault::Latency(Duration::from_millis(80)),
        1.0,
        64,
    );
    world.publish_all();
    let port = free_port();
    let mut env = world.env(port);
    env.insert("PROVISIONER_CONCURRENCY".into(), "4".into());

    let mut rng = SplitMix(0x5EED_0006);
    let mut progress = Vec::new();
    let mut resumed = 0;
    for _ in 0..KILLS {
        let mut child = spawn(&["run"], &env);
        let logs = Logs::capture(&mut child);
        tokio::select! {
            () = wait_healthy(port, Duration::from_secs(30)) => {}
            status = child.wait() => panic!("provisioner exited early ({status:?}):\n{}", logs.text()),
        }
        tokio::time::sleep(Duration::from_millis(rng.between(20, 300))).await;
        sigkill(&mut child).await;
        progress.push(activated(&world));
        if logs.contains(RESUMING) {
            resumed += 1;
        }
    }
    eprintln!("activated at each SIGKILL: {progress:?}; {resumed} restarts resumed jobs");
    assert!(
        progress
            .iter()
            .filter(|&&n| n < world.seeded.events.len())
            .count()
            >= KILLS,
        "every kill must land while orders are still flowing: {progress:?}"
    );
    assert!(
        resumed > 0,
        "no restart found a job its predecessor was running"
    );

    // The last restart runs to the end.
    let mut child = spawn(&["run"], &env);
    let logs = Logs::capture(&mut child);
    wait_healthy(port, Duration::from_secs(30)).await;
    wait_all_activated(&world, Duration::from_secs(90)).await;
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within the shutdown bound")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", logs.text());
    world.whmcs.clear_faults();

    check_invariants(&world, &env).await;
    audit_verify_clean(&env).await;
    eprintln!(
        "crash test: {KILLS} SIGKILLs, 300 orders, {:?} in all",
        began.elapsed()
    );
}

/// Waits until one of `logs` says it runs the subscriber; returns its index.
async fn subscriber_holder(logs: &[&Logs], limit: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(i) = logs
            .iter()
            .position(|l| l.contains("this instance runs the subscriber"))
        {
            return i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no instance took the subscriber within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Done-when 4b: two processes share one PostgreSQL database; the subscriber's holder is
/// SIGKILLed mid-flow, the survivor takes the subscriber over and provisions everything,
/// later events included, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgres_fail_over_the_subscriber_without_duplicates() {
    let began = Instant::now();
    let db = PgTempDb::create().await;
    let world = World::start(30, 10).await;
    world
        .whmcs
        .inject_fault_rate("AddOrder", Fault::CommitThenDrop, 0.03, 71);
    let ports = [free_port(), free_port()];
    let envs: Vec<_> = ports
        .iter()
        .map(|&p| {
            let mut env = world.env(p);
            env.insert("DATABASE_URL".into(), db.url());
            env.insert("JOB_LEASE".into(), "3s".into());
            env.insert("PROVISIONER_CONCURRENCY".into(), "4".into());
            env
        })
        .collect();

    let mut children = Vec::new();
    let mut logs = Vec::new();
    for (env, &port) in envs.iter().zip(&ports) {
        let mut child = spawn(&["run"], env);
        logs.push(Logs::capture(&mut child));
        wait_healthy(port, Duration::from_secs(30)).await;
        children.push(child);
    }
    let holder = subscriber_holder(&[&logs[0], &logs[1]], Duration::from_secs(20)).await;
    let survivor = 1 - holder;

    // The first 200 orders (customers 1..=20).
    let (first, later) = world.seeded.events.split_at(200);
    for e in first {
        world
            .pubsub
            .publish_order(sf_pubsub::DEFAULT_TOPIC, e)
            .unwrap();
    }
    // Mid-flow: some provisioned, many not.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while activated(&world) < 40 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress before the kill: {} activated",
            activated(&world)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_kill = activated(&world);
    sigkill(&mut children[holder]).await;
    let killed = Instant::now();
    assert!(
        !logs[survivor].contains("this instance runs the subscriber"),
        "only one instance may hold the subscriber"
    );
    for e in later {
        world
            .pubsub
            .publish_order(sf_pubsub::DEFAULT_TOPIC, e)
            .unwrap();
    }
    let took_over = subscriber_holder(&[&logs[survivor]], Duration::from_secs(30)).await;
    assert_eq!(took_over, 0);
    let failover = killed.elapsed();

    wait_all_activated(&world, Duration::from_secs(120)).await;
    let all_done = killed.elapsed();
    sigterm(&children[survivor]);
    let status = tokio::time::timeout(Duration::from_secs(30), children[survivor].wait())
        .await
        .expect("exits within the shutdown bound")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", logs[survivor].text());
    world.whmcs.clear_faults();

    check_invariants(&world, &envs[survivor]).await;
    audit_verify_clean(&envs[survivor]).await;
    eprintln!(
        "failover: holder #{holder} killed with {at_kill}/300 activated; survivor ran the \
         subscriber after {failover:?}; all 300 activated {all_done:?} after the kill; {:?} in all",
        began.elapsed()
    );
    db.close().await;
}
