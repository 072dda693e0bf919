//! Backlog test (issue requirement "a backlog scenario"): every approved Order's event waits in
//! the Pub/Sub sandbox while the provisioner is down; it starts, drains the whole backlog
//! exactly once, and its resident memory stays bounded (credit-based flow control, not an
//! in-memory queue of everything replayed).
//!
//! `BACKLOG_ORDERS` sets the size (default 2,000; the benchmark runs 100,000 in release) and
//! `BACKLOG_CONCURRENCY` overrides `PROVISIONER_CONCURRENCY` (default: the binary's own).

use std::time::{Duration, Instant};

use test_support::process::{free_port, sigterm};

use crate::support::{World, audit_verify_clean, check_invariants, spawn_logged};

/// The peak resident set the provisioner may reach while draining, in KiB (128 MiB).
const RSS_LIMIT_KIB: u64 = 128 * 1024;

/// How often the child's `VmRSS` is sampled.
const RSS_SAMPLE: Duration = Duration::from_millis(250);

/// How often the not-yet-activated Orders are re-checked in the Salesforce sandbox.
const ACTIVATION_POLL: Duration = Duration::from_secs(1);

/// A positive integer from the environment, or `default` when unset.
fn env_count(name: &str, default: u32) -> u32 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a count: {e}")),
        Err(_) => default,
    }
}

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in KiB; `None` once the process
/// is gone.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// The last `n` lines of the provisioner's log file.
fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drains_a_backlog_exactly_once_within_128_mib() {
    let orders = env_count("BACKLOG_ORDERS", 2_000).max(1);
    // Ten Orders per customer, so per-customer ordering is exercised.
    let customers = (orders / 10).max(1);
    let per_customer = orders.div_ceil(customers);

    let seeding = Instant::now();
    let world = World::start(customers, per_customer).await;
    let seeded_in = seeding.elapsed();
    // Nobody reads the sandboxes' request logs here; keeping 100,000 of them only costs
    // memory in the test process.
    world.whmcs.set_record_requests(false);
    world.sf.set_record_patches(false);
    let total = world.seeded.events.len();

    // The provisioner is down while the whole backlog is published.
    let publishing = Instant::now();
    world.publish_all();
    let published_in = publishing.elapsed();
    eprintln!(
        "BACKLOG setup: {total} Orders ({customers} customers) seeded in {:.1}s, published in {:.1}s",
        seeded_in.as_secs_f64(),
        published_in.as_secs_f64()
    );

    let port = free_port();
    let mut env = world.env(port);
    env.insert("RUST_LOG".into(), "warn".into());
    if let Ok(c) = std::env::var("BACKLOG_CONCURRENCY") {
        env.insert("PROVISIONER_CONCURRENCY".into(), c);
    }
    let log = world.dir.path().join("provisioner.log");

    let started = Instant::now();
    let mut child = spawn_logged(&["run"], &env, &log);
    let pid = child.id().expect("the provisioner just started");
    let limit = Duration::from_secs(60) + Duration::from_millis(20) * u32::try_from(total).unwrap();
    let deadline = started + limit;

    // Orders not yet seen Activated: only these are re-checked, so a poll costs less and less.
    let mut pending: Vec<&str> = world
        .seeded
        .events
        .iter()
        .map(|e| e.order_id.as_str())
        .collect();
    let mut peak_rss_kib = 0_u64;
    let mut last_poll: Option<Instant> = None;
    let mut rss_trace: Vec<(u64, usize, u64)> = Vec::new();
    while !pending.is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "provisioner exited ({status}) with {}/{total} Orders activated:\n{}",
                total - pending.len(),
                log_tail(&log, 50)
            );
        }
        if let Some(rss) = proc_status_kib(pid, "VmRSS") {
            peak_rss_kib = peak_rss_kib.max(rss);
        }
        if last_poll.is_none_or(|t| t.elapsed() >= ACTIVATION_POLL) {
            last_poll = Some(Instant::now());
            pending.retain(|id| world.sf.order(id).is_none_or(|o| o.status != "Activated"));
            rss_trace.push((
                started.elapsed().as_secs(),
                total - pending.len(),
                proc_status_kib(pid, "VmRSS").unwrap_or(0) / 1024,
            ));
            if pending.is_empty() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "only {}/{total} Orders activated within {limit:?}; RSS trace (s, activated, MiB): \
             {rss_trace:?}\n{}",
            total - pending.len(),
            log_tail(&log, 50)
        );
        tokio::time::sleep(RSS_SAMPLE).await;
    }
    let drained_in = started.elapsed();

    // The kernel's own high-water mark covers the moments between samples.
    let hwm_kib = proc_status_kib(pid, "VmHWM").expect("the provisioner is still running");
    peak_rss_kib = peak_rss_kib.max(hwm_kib);
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits within the shutdown bound")
        .unwrap();

    let secs = drained_in.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rate = total as f64 / secs;
    #[allow(clippy::cast_precision_loss)]
    let peak_mib = peak_rss_kib as f64 / 1024.0;
    // On stdout, for the benchmark to quote.
    #[allow(clippy::print_stdout)]
    {
        println!(
            "BACKLOG orders={total} drained_in={secs:.1}s rate={rate:.0}/s peak_rss_mib={peak_mib:.1}"
        );
    }
    eprintln!("RSS trace (s, activated, MiB): {rss_trace:?}");

    assert_eq!(status.code(), Some(0), "{}", log_tail(&log, 50));
    assert!(
        peak_rss_kib <= RSS_LIMIT_KIB,
        "peak RSS {peak_mib:.1} MiB exceeds 128 MiB; trace (s, activated, MiB): {rss_trace:?}"
    );
    check_invariants(&world, &env).await;
    audit_verify_clean(&env).await;
}
