//! Issue 15: a deterministic simulation of the engine.
//!
//! The real engine (job state machine, workers, lease renewal, reconcile sweep, intake) runs
//! over the real store (SQLite; PostgreSQL in [`postgres_seeds`]) with its fencing, against
//! Salesforce and WHMCS simulated in memory (`outside`). Each seed draws one scenario and its
//! faults, runs it to the end and checks the invariants. A failing seed prints the one line
//! that runs it again.
//!
//! ```text
//! cargo nextest run -p provisioner-core --test sim            # the default seeds (2,000)
//! SIM_SEEDS=200000 cargo nextest run -p provisioner-core --test sim   # many
//! SIM_SEED=1234 cargo nextest run -p provisioner-core --test sim      # one, with its trace
//! ```
//!
//! # Design
//!
//! - **Virtual time.** Each seed runs on its own current-thread Tokio runtime started paused:
//!   timers fire in virtual time, and the runtime jumps to the next timer whenever every task
//!   waits. A seed covers minutes of leases, timeouts and backoff in milliseconds. Each
//!   instance's [`provisioner_core::Clock`] is that virtual time plus the instance's skew.
//! - **One step at a time.** The real store answers from other threads (the SQLite writer,
//!   sqlx's pool). Were the simulation runtime to *wait* for them, it would count as idle and
//!   move virtual time on by a racy amount. So the store decorator (`ports::SimStore`) runs
//!   each call on a separate store runtime and blocks the simulation thread until it is done:
//!   a store call takes no virtual time of its own (the decorator adds seeded latency around
//!   it instead), and everything the engine sees is a function of the seed. The engine's
//!   `select!`s are `biased` and its retry jitter is a hash, so nothing else draws randomness.
//!   [`same_seed_same_trace`] runs seeds twice and compares the trace of every call.
//! - **The database's clock.** The store is opened with `StoreClock::Caller` and the
//!   decorator replaces every `now` with the true time: lease expiry, due times, claim times
//!   and intent times are judged by one clock, as PostgreSQL does, while each instance's own
//!   (skewed) clock drives its retry times, its `LeaseHealth` and its write-back times.
//! - **The outside** (`outside`): every call has a client deadline (AddOrder's and
//!   AcceptOrder's the engine's own, counted from before the call's intent was written, as the
//!   real client honours it: `NewOrder::deadline`; a PATCH's the end of the worker's lease).
//!   A Salesforce request held up past its own timeout by a pause still goes out (the caller
//!   hears a timeout), as with the real client; one past the caller's deadline does not.
//!   Requests and answers
//!   travel with seeded latency; transient errors; answers lost after a commit (unknown
//!   outcome); AddOrder/AcceptOrder that run past the client's timeout and commit later, in a
//!   task of the world that lands whatever happens to the caller, but within timeout +
//!   `WHMCS_SETTLE` (the contract's bound: §4); AcceptOrder's module create keeps the order
//!   Pending while it runs, so a second AcceptOrder then would be a second module create;
//!   Salesforce validation errors (a permanent cause).
//! - **Instances** (1–3 over one store, `ports::Inst`): every port call passes the instance's
//!   gate before it is sent and before its answer is seen. Crashes and pauses come at a
//!   seeded time or at the seeded n-th next gate passage (every await point of a port call
//!   alike, however short). A *crash* drops the engine's
//!   handle (its tasks stop at whatever await point they were at) and shuts the gate for good
//!   (a detached task that outlived the abort never gets a call through); a new process starts
//!   later in its slot. A *pause* holds the gate long enough for the lease to expire and
//!   another instance to take the job over, then lets the stale worker go on. Renewals fail in
//!   windows and at random; store calls are now and then held past a lease (slow commits).
//! - **Scenario** (`run`): 1–4 Orders of 1–2 customers, events delivered at least once (some
//!   twice, some batched and shuffled, some never: the sweep finds those), approvals withdrawn
//!   and given again with a new event, a few Orders with permanent causes (no items, an
//!   inactive client).
//! - **Restores** (a quarter of the SQLite seeds, drawn from a stream of their own so that the
//!   other seeds run as before): a backup (`SqlStore::backup_to`, `VACUUM INTO`) at a seeded
//!   time; later every process stops, stays down for at least `WHMCS_ACCEPT_TIMEOUT` +
//!   `WHMCS_SETTLE` (what README asks of a restore: nothing the stopped processes sent can
//!   still commit after that), and starts again on a copy of the backup; the subscriber
//!   resumes after the restored checkpoint, so every batch taken in since the backup is
//!   delivered again. Salesforce and WHMCS keep everything. A job whose Order ended after the
//!   backup may come back gone, refused or failed while Salesforce and WHMCS say provisioned:
//!   counted, not a violation (the store lost those writes; the Order is right).
//! - **Invariants**, after the seed settles (every Order the user left approved done or
//!   failed, nothing in flight) or hits its virtual time limit: at most one committed WHMCS
//!   order and at most one module create (successful AcceptOrder) per Order; every Order left
//!   approved ends provisioned (Salesforce Activated with the WHMCS order id, the WHMCS order
//!   Active) or failed with a dead letter for a permanent cause (bad data, an inactive client,
//!   a validation rule, or the configured retry budget running out); never failed after an
//!   AcceptOrder ran (neither the job nor the Order's status); the audit chain verifies. A
//!   failed Order whose job a late event reopened and its checks refused keeps its dead
//!   letter open (once finding F1: the reopening closed it for good).
//! - **Speed**: seeds run on `SIM_THREADS` OS threads (default 2), each seed in a fresh SQLite
//!   file in `/dev/shm` when there is one.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod outside;
mod ports;
mod run;
mod world;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use run::{Db, Report};

/// Seeds run when `SIM_SEEDS` is not set.
const DEFAULT_SEEDS: u64 = 2_000;

/// Seeds that once broke an invariant, run on every run ([`regressions`]). A change to what
/// the simulation draws may move a seed off its window; the sweeps find the next one.
///
/// - `100_024_272` (a sweep of 2026-12-06): the worker paused for 1.1 s between the AddOrder
///   intent's write and the send. The client's timeout counted from the send, so a slow
///   AddOrder committed past the settle point (intent time + timeout + settle) that another
///   claim went by: two WHMCS orders. The timeout now counts from before the intent's write.
/// - `2_850`, `4_621`, `6_647` (the same day, once the simulated Salesforce client sent a
///   request held up past its timeout, as the real one does, instead of dropping it): a worker
///   paused after its lease check sent `Status = Provisioning` after its lease had lapsed,
///   over the `Activated` the next claim had written. Every Order PATCH now carries the end of
///   what the worker knows of its lease as its deadline (`OrderUpdate::deadline`).
/// - `29`, `151`, `315`, `95` (2026-12-07, once seeds restored backups): an Order left in
///   Provisioning whose job the restore lost (its job made by the sweep, so no event to
///   replay) stayed there; a job restored at `checked` PATCHed `Provisioning` over the
///   `Activated` the run after the backup had written; a job restored as refused (from before
///   the re-approval) while the Order stood in Provisioning stayed refused; a job restored at
///   `whmcs_ordered` found its Order provisioned by that later run and was refused
///   `approval_withdrawn`. The sweep now also reads Orders in the provisioning status, a run
///   starting at `checked` checks again, and the re-fetch ends such a job done.
/// - `37_317` (a sweep of seeds 20,000-39,999 the same day): the sweep listed an Order in
///   Provisioning, then its job gave up (retry budget), PATCHed the failed status and stored
///   its end; the sweep, reading the job's state after its listing, reopened the failed job,
///   which found the Order failed and refused it `approval_withdrawn`. The sweep now reads an
///   Order again before it reopens its job.
/// - `1_932` (when the check for a failure whose end was never stored became strict): a job
///   refused (the Order not yet approved) was reopened by the re-approval's event, failed
///   for good (PATCHed the failed status, stored its end); a restore took the store back to
///   the refusal, the event's replay reopened the job again, which found the failed status
///   and was refused `not_approved`, with no dead letter ever left. Such a run now ends the
///   job failed with its letter (`earlier_failure`).
/// - `44_443` (a sweep of seeds 40,000-59,999 when the provisioning status got its validation
///   rule): the Order was withdrawn before the job's PATCH to the provisioning status (the rule
///   refused it) and approved again before the job read it again; the refusal was taken as the
///   permanent error it looks like and the Order failed. The PATCH is now sent once more when
///   the Order reads approved again.
const REGRESSIONS: &[u64] = &[
    100_024_272,
    2_850,
    4_621,
    6_647,
    29,
    151,
    315,
    95,
    37_317,
    1_932,
    44_443,
];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The line that runs `seed` again.
fn reproduce(seed: u64) -> String {
    format!("SIM_SEED={seed} cargo nextest run -p provisioner-core --test sim")
}

/// Runs `seeds` on `threads` OS threads; returns the failing reports (lowest seed first) and
/// the totals of the counters.
fn run_many(
    seeds: Vec<u64>,
    threads: usize,
    db: &Db,
) -> (Vec<Report>, std::collections::BTreeMap<&'static str, u64>) {
    let next = Arc::new(AtomicU64::new(0));
    let seeds = Arc::new(seeds);
    let failures = Arc::new(Mutex::new(Vec::new()));
    let totals = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            let (next, seeds, failures, totals) = (
                Arc::clone(&next),
                Arc::clone(&seeds),
                Arc::clone(&failures),
                Arc::clone(&totals),
            );
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                    let Some(&seed) = seeds.get(i) else { break };
                    let report = run::run_seed(seed, db);
                    if (i + 1).is_multiple_of(10_000) {
                        eprintln!(
                            "{} seeds run, {} failed so far",
                            i + 1,
                            failures.lock().unwrap().len()
                        );
                    }
                    {
                        let mut totals = totals.lock().unwrap();
                        for (k, v) in &report.stats {
                            *totals.entry(*k).or_insert(0) += v;
                        }
                    }
                    if !report.violations.is_empty() {
                        eprintln!(
                            "seed {seed} FAILED: {}\n  {}",
                            report.violations.join("; "),
                            reproduce(seed)
                        );
                        failures.lock().unwrap().push(report);
                    }
                }
            });
        }
    });
    let mut failures = std::mem::take(&mut *failures.lock().unwrap());
    failures.sort_by_key(|r| r.seed);
    let totals = std::mem::take(&mut *totals.lock().unwrap());
    (failures, totals)
}

fn fail_on(failures: &[Report], ran: usize) {
    let Some(first) = failures.first() else {
        return;
    };
    let seeds: Vec<u64> = failures.iter().map(|r| r.seed).take(20).collect();
    panic!(
        "{} of {ran} seeds broke an invariant (first seeds: {seeds:?}).\n\
         seed {}: {}\nrun it again with its trace:\n{}",
        failures.len(),
        first.seed,
        first.violations.join("\n  "),
        reproduce(first.seed)
    );
}

/// The seeds of the run: `SIM_SEED` alone (its trace printed), else `SIM_SEEDS` (default
/// 2,000) from `SIM_FIRST_SEED` (default 0).
#[test]
fn seeds() {
    let threads = env_u64("SIM_THREADS").unwrap_or(2) as usize;
    if let Some(seed) = env_u64("SIM_SEED") {
        let report = run::run_seed(seed, &Db::sqlite());
        for line in &report.trace {
            eprintln!("{line}");
        }
        eprintln!("stats: {:?}", report.stats);
        if !report.violations.is_empty() {
            fail_on(std::slice::from_ref(&report), 1);
        }
        return;
    }
    let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(0);
    let started = Instant::now();
    let (failures, totals) = run_many((first..first + count).collect(), threads, &Db::sqlite());
    let took = started.elapsed();
    eprintln!(
        "{count} seeds in {:.1} s ({:.0} seeds/s, {threads} threads), {} failed; totals: {totals:?}",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64(),
        failures.len()
    );
    fail_on(&failures, count as usize);
}

/// The seeds of [`REGRESSIONS`].
#[test]
fn regressions() {
    let (failures, _) = run_many(REGRESSIONS.to_vec(), 1, &Db::sqlite());
    fail_on(&failures, REGRESSIONS.len());
}

/// The same seed twice gives the same trace of every external call, store write and scenario
/// action.
#[test]
fn same_seed_same_trace() {
    let db = Db::sqlite();
    for seed in (0..30).chain([1234, 31337, 4_000_000_000]) {
        let a = run::run_seed(seed, &db);
        let b = run::run_seed(seed, &db);
        if a.trace != b.trace {
            let at = a
                .trace
                .iter()
                .zip(&b.trace)
                .position(|(x, y)| x != y)
                .unwrap_or(a.trace.len().min(b.trace.len()));
            panic!(
                "seed {seed} ran differently the second time, from line {at}:\n  {:?}\n  {:?}",
                a.trace.get(at),
                b.trace.get(at)
            );
        }
        assert_eq!(a.trace_hash, b.trace_hash);
        assert!(a.trace.len() > 10, "seed {seed} did something");
    }
}

/// Seeds on PostgreSQL (one database, each seed's Orders its own): `SIM_PG_SEEDS` (default
/// 20).
#[test]
fn postgres_seeds() {
    let count = env_u64("SIM_PG_SEEDS").unwrap_or(20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(test_support::pg::PgTempDb::create());
    let url = db.url();
    let (failures, _) = run_many(
        (0..count).map(|s| 900_000 + s).collect(),
        1,
        &Db::Postgres(url),
    );
    rt.block_on(db.close());
    fail_on(&failures, count as usize);
}
