//! One seed: the scenario it draws, the engine instances it runs over one store, and the
//! invariants checked at the end.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use provisioner_core::intake::{EventFields, IntakeItem};
use provisioner_core::{Engine, EngineBuilder, EngineConfig, EngineHandle, RetryPolicy};
use provisioner_store::{DeadLetterState, JobState, SqlStore, Store, StoreClock, StoreOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::outside::{SimSalesforce, SimWhmcs};
use crate::ports::{Inst, SimAlerts, SimAudit, SimClock, SimStore, Strike, complete};
use crate::world::{self, SfOrder, World};

/// `FIELD_ENCRYPTION_KEY` of every simulated store: a raw key, no PBKDF2.
const MASTER_KEY: &str = "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=";
/// The lease of a claimed job.
const LEASE: Duration = Duration::from_secs(2);
/// Faults (crashes, pauses, failing renewals, status changes) happen before this.
const FAULT_WINDOW_MS: u64 = 20_000;
/// A seed whose approved Orders are not all settled by then breaks liveness.
const LIMIT: Duration = Duration::from_secs(600);
/// The share of SQLite seeds with a backup and a later restore ([`draw_restore`]).
const RESTORE_SHARE: f64 = 0.25;

/// Where a seed's store lives.
#[derive(Clone, Debug)]
pub enum Db {
    /// A fresh SQLite file per seed: a copy of a template migrated once (with its keyring).
    Sqlite(Arc<tempfile::TempDir>),
    /// One PostgreSQL database for many seeds (each seed's Orders and customers are its own).
    Postgres(String),
}

/// What one seed did.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub violations: Vec<String>,
    /// A hash of the trace: the same seed gives the same one.
    pub trace_hash: u64,
    pub trace: Vec<String>,
    pub stats: BTreeMap<&'static str, u64>,
}

/// Events delivered together: (Order Id, event id) in delivery order.
type Batch = Vec<(String, String)>;

/// Something the scenario does at a time.
#[derive(Clone, Debug)]
enum Action {
    /// Events delivered to the subscriber (as one batch, in this order).
    Deliver(Vec<(String, String)>),
    Crash(usize),
    /// A crash or pause at the n-th next port-call gate of the slot's process.
    Arm(usize, u32, Strike),
    Restart(usize),
    Pause(usize, Duration),
    FailRenewals(usize, Duration),
    Withdraw(String),
    Reapprove(String, Option<String>),
    /// A backup of the store (SQLite: `VACUUM INTO`), kept for a later [`Action::Restore`].
    Backup,
    /// Every process stops; after the given downtime the store is the last backup and every
    /// process starts again on it. The subscriber resumes from the restored checkpoint: every
    /// event taken in since the backup is delivered again.
    Restore(Duration),
}

/// The store runtime: the real store answers from here (see [`SimStore`]).
fn store_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("sim-store")
            .build()
            .unwrap_or_else(|e| panic!("the store runtime: {e}"))
    })
}

/// A valid 18-character Order Id, unique per seed and index.
fn order_id(seed: u64, i: usize) -> String {
    let short = format!("801{:010}{:02}", seed % 10_000_000_000, i);
    sf_rest::OrderId::parse(&short)
        .map(|id| id.to_18())
        .unwrap_or(short)
}

struct Scenario {
    instances: usize,
    skews_ms: Vec<i64>,
    orders: Vec<SfOrder>,
    actions: Vec<(u64, Action)>,
    config: EngineConfig,
}

fn draw(seed: u64, world: &World) -> Scenario {
    let mut rng = StdRng::seed_from_u64(seed);
    let instances = rng.random_range(1..=3);
    let skews_ms = (0..instances)
        .map(|_| {
            if rng.random_bool(0.5) {
                rng.random_range(-3000..=3000)
            } else {
                0
            }
        })
        .collect();
    let customers = rng.random_range(1..=2);
    let n = rng.random_range(1..=4);
    let mut orders = Vec::new();
    let mut actions = Vec::new();
    let mut event_no = 0;
    let mut next_event = |rng: &mut StdRng| {
        event_no += 1;
        format!("ev-{seed}-{event_no}-{}", rng.random_range(0..1000))
    };
    for i in 0..n {
        let id = order_id(seed, i);
        let bad_items = rng.random_bool(0.05);
        let inactive = rng.random_bool(0.05);
        let items = if bad_items {
            Vec::new()
        } else {
            (0..rng.random_range(1..=2))
                .map(|_| (rng.random_range(1..=3), rng.random_range(1..=2)))
                .collect()
        };
        orders.push(SfOrder {
            id: id.clone(),
            customer: format!("C{seed}-{}", i % customers),
            client_id: 1000 + i as u64,
            status: world::APPROVED.to_owned(),
            items,
            whmcs_order_id: None,
            service_ids: Vec::new(),
            last_modified: world.now(),
            approved_intent: true,
            permanent_cause: bad_items || inactive,
        });
        // Its event: most arrive, some twice; a lost one is left to the reconcile sweep.
        if rng.random_bool(0.85) {
            let event = next_event(&mut rng);
            let at = rng.random_range(0..10_000);
            actions.push((at, Action::Deliver(vec![(id.clone(), event.clone())])));
            if rng.random_bool(0.25) {
                let again = at + rng.random_range(0..8_000);
                actions.push((again, Action::Deliver(vec![(id.clone(), event)])));
            }
        }
        // The approval withdrawn, and often given again with a new event.
        if rng.random_bool(0.2) {
            let at = rng.random_range(0..12_000);
            actions.push((at, Action::Withdraw(id.clone())));
            if rng.random_bool(0.7) {
                let event = rng.random_bool(0.8).then(|| next_event(&mut rng));
                actions.push((
                    at + rng.random_range(1_000..10_000),
                    Action::Reapprove(id.clone(), event),
                ));
            }
        }
    }
    // Events that arrive close together are delivered together, in either order.
    if rng.random_bool(0.3) {
        let mut events: Vec<(String, String)> = Vec::new();
        actions.retain(|(_, a)| match a {
            Action::Deliver(batch) => {
                events.extend(batch.iter().cloned());
                false
            }
            _ => true,
        });
        for e in (1..events.len()).rev() {
            events.swap(e, rng.random_range(0..=e));
        }
        actions.push((rng.random_range(0..5_000), Action::Deliver(events)));
    }
    for _ in 0..rng.random_range(0..=4) {
        let slot = rng.random_range(0..instances);
        let at = rng.random_range(0..FAULT_WINDOW_MS);
        let gates = rng.random_range(1..=60);
        match rng.random_range(0..5) {
            0 => {
                actions.push((at, Action::Crash(slot)));
                actions.push((at + rng.random_range(100..8_000), Action::Restart(slot)));
            }
            1 => {
                actions.push((at, Action::Arm(slot, gates, Strike::Crash)));
                actions.push((at + rng.random_range(2_000..10_000), Action::Restart(slot)));
            }
            2 => actions.push((
                at,
                Action::Pause(slot, Duration::from_millis(rng.random_range(300..8_000))),
            )),
            3 => {
                let d = Duration::from_millis(rng.random_range(300..8_000));
                actions.push((at, Action::Arm(slot, gates, Strike::Pause(d))));
            }
            _ => actions.push((
                at,
                Action::FailRenewals(slot, Duration::from_millis(rng.random_range(500..6_000))),
            )),
        }
    }
    actions.sort_by_key(|(at, _)| *at);
    let config = EngineConfig {
        order_ref_fields: Some(world::REF_FIELD.into()),
        concurrency: rng.random_range(1..=3),
        lease: LEASE,
        retry: RetryPolicy {
            base: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_attempts: 12,
            max_age: Duration::from_secs(24 * 3600),
        },
        reconcile_interval: Duration::from_secs(15),
        reconcile_min_age: Duration::from_secs(5),
        poll_interval: Duration::from_millis(rng.random_range(1000..=3000)),
        shutdown_grace: Duration::from_secs(5),
        writeback_stuck_after: Duration::from_secs(120),
        whmcs_timeout: Duration::from_secs(1),
        whmcs_accept_timeout: Duration::from_secs(3),
        whmcs_settle: Duration::from_secs(2),
        ..EngineConfig::default()
    };
    Scenario {
        instances,
        skews_ms,
        orders,
        actions,
        config,
    }
}

/// A restore of the store from a backup, in some SQLite seeds: the backup at a seeded time in
/// the fault window, the restore later, the service down in between for at least the longest
/// a WHMCS call may still commit after it was sent (`WHMCS_ACCEPT_TIMEOUT` + `WHMCS_SETTLE`,
/// the contract of §4; a restore takes minutes, not seconds). Drawn from a stream of its own,
/// so that the seeds without one run exactly as before.
fn draw_restore(seed: u64, config: &EngineConfig) -> Vec<(u64, Action)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7265_7374_6f72_6531);
    if !rng.random_bool(RESTORE_SHARE) {
        return Vec::new();
    }
    let backup = rng.random_range(0..FAULT_WINDOW_MS);
    let restore = backup + rng.random_range(300..15_000);
    let min_down = config.whmcs_accept_timeout.max(config.whmcs_timeout) + config.whmcs_settle;
    let down = min_down + Duration::from_millis(rng.random_range(0..10_000));
    vec![(backup, Action::Backup), (restore, Action::Restore(down))]
}

/// A running instance.
struct Live {
    inst: Arc<Inst>,
    engine: Engine,
}

/// Starts the process of `slot` (generation `generation`).
fn start(
    world: &Arc<World>,
    store: &Arc<SqlStore>,
    config: &EngineConfig,
    slot: usize,
    generation: u32,
    skew_ms: i64,
) -> (Live, EngineHandle, Arc<SimStore>) {
    let inst = Arc::new(Inst::new(slot, generation, skew_ms));
    let sim_store = Arc::new(SimStore {
        world: Arc::clone(world),
        inst: Arc::clone(&inst),
        inner: Arc::clone(store),
        rt: store_runtime().handle().clone(),
        lease: config.lease,
    });
    let orders = Arc::new(SimSalesforce {
        world: Arc::clone(world),
        inst: Arc::clone(&inst),
        timeout: LEASE,
    });
    let whmcs = Arc::new(SimWhmcs {
        world: Arc::clone(world),
        inst: Arc::clone(&inst),
        timeout: config.whmcs_timeout,
        accept_timeout: config.whmcs_accept_timeout,
        settle: config.whmcs_settle,
    });
    let clock = Arc::new(SimClock {
        world: Arc::clone(world),
        inst: Arc::clone(&inst),
    });
    let mut config = config.clone();
    config.instance = inst.name.clone();
    let engine = EngineBuilder::new(
        orders,
        whmcs,
        Arc::clone(&sim_store) as Arc<dyn Store>,
        Arc::new(SimAudit(Arc::clone(&sim_store))),
        Arc::new(SimAlerts(Arc::clone(world))),
    )
    .config(config)
    .clock(clock)
    .build();
    let handle = engine.start();
    world.trace(format!("{} started", inst.name));
    (Live { inst, engine }, handle, sim_store)
}

/// What a process started after the first ones starts over.
struct Next<'a> {
    world: &'a Arc<World>,
    store: &'a Arc<SqlStore>,
    scenario: &'a Scenario,
    db: &'a Db,
}

impl Next<'_> {
    /// Starts the next generation of `slot`'s process. A starting SQLite service takes every
    /// lease over when it is the only process.
    async fn start(
        &self,
        slot: usize,
        generations: &mut [u32],
        handles: &mut [Option<EngineHandle>],
        live: &Mutex<Vec<Option<Live>>>,
    ) {
        generations[slot] += 1;
        let (l, handle, sim_store) = start(
            self.world,
            self.store,
            &self.scenario.config,
            slot,
            generations[slot],
            self.scenario.skews_ms[slot],
        );
        if matches!(self.db, Db::Sqlite(_)) && self.scenario.instances == 1 {
            let _ = sim_store.take_over_leases(self.world.now()).await;
        }
        handles[slot] = Some(handle);
        lock(live)[slot] = Some(l);
    }
}

/// Opens the seed's store on the store runtime.
impl Db {
    /// SQLite, with a template database made now.
    pub fn sqlite() -> Db {
        let dir = scratch_dir();
        let template = open_store(&format!("sqlite://{}/sim.db", dir.path().display()), true);
        // Closed (its WAL checkpointed into the file) before it is copied.
        complete(
            &store_runtime().handle().clone(),
            async move { drop(template) },
        );
        Db::Sqlite(Arc::new(dir))
    }
}

/// The seed's store: a copy of the SQLite template in `dir`, or the PostgreSQL database.
fn seed_store(db: &Db, dir: &std::path::Path) -> Arc<SqlStore> {
    match db {
        Db::Sqlite(template) => {
            std::fs::copy(template.path().join("sim.db"), dir.join("sim.db"))
                .unwrap_or_else(|e| panic!("copying the template database: {e}"));
            open_store(&format!("sqlite://{}/sim.db", dir.display()), false)
        }
        Db::Postgres(url) => open_store(url, true),
    }
}

fn open_store(url: &str, migrate: bool) -> Arc<SqlStore> {
    let url = url.to_owned();
    let opened = complete(&store_runtime().handle().clone(), async move {
        let master = field_crypto::MasterKey::from_config(MASTER_KEY)
            .unwrap_or_else(|e| panic!("master key: {e}"));
        let options = StoreOptions {
            clock: StoreClock::Caller,
            max_connections: 2,
            migrate,
            ..StoreOptions::default()
        };
        SqlStore::open(&url, &master, options).await
    });
    Arc::new(opened.unwrap_or_else(|e| panic!("opening the simulated store: {e}")))
}

fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::Builder::new().prefix("pp-sim").tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("pp-sim").tempdir()
    };
    made.unwrap_or_else(|e| panic!("a scratch directory: {e}"))
}

/// Runs seed `seed` to the end and checks it.
pub fn run_seed(seed: u64, db: &Db) -> Report {
    let t0 = std::time::Instant::now();
    let dir = scratch_dir();
    let store = seed_store(db, dir.path());
    let t1 = t0.elapsed();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("the simulation runtime: {e}"));
    let (report, restored) = rt.block_on(simulate(seed, db, Arc::clone(&store), dir.path()));
    drop(rt);
    // The last handle on the store goes on the store runtime (its pools close there), in the
    // background: closing waits for the writer's checkpoint thread. The stores a restore
    // replaced or opened go with it, now that no task of the simulation holds them.
    drop(store_runtime().spawn_blocking(move || drop((store, restored, dir))));
    if std::env::var("SIM_PROFILE").is_ok() {
        eprintln!(
            "seed {seed}: open {:?} total {:?} trace {}",
            t1,
            t0.elapsed(),
            report.trace.len()
        );
    }
    report
}

/// Runs the seed over `store`; returns its report and the stores its restores opened (to be
/// closed by the caller once the simulation's tasks are gone).
async fn simulate(
    seed: u64,
    db: &Db,
    mut store: Arc<SqlStore>,
    dir: &std::path::Path,
) -> (Report, Vec<Arc<SqlStore>>) {
    let world = Arc::new(World::new(seed));
    let mut scenario = draw(seed, &world);
    if matches!(db, Db::Sqlite(_)) {
        scenario
            .actions
            .extend(draw_restore(seed, &scenario.config));
        scenario.actions.sort_by_key(|(at, _)| *at);
    }
    let mut stores = Vec::new();
    let mut backup: Option<(std::path::PathBuf, Duration)> = None;
    let mut restored_at = None;
    // Every batch the subscriber took in, and when: what a restore's replay delivers again.
    let taken_in: Arc<Mutex<Vec<(Duration, Batch)>>> = Arc::default();
    {
        let mut state = world.state();
        for o in &scenario.orders {
            let inactive = o.permanent_cause && !o.items.is_empty();
            state.clients.insert(o.client_id, !inactive);
            state.orders.insert(o.id.clone(), o.clone());
        }
    }
    world.trace(format!(
        "seed {seed}: {} instances, skews {:?} ms, {} orders, faults {:?}",
        scenario.instances,
        scenario.skews_ms,
        scenario.orders.len(),
        world.faults
    ));
    let config = &scenario.config;
    let mut generations = vec![0u32; scenario.instances];
    let mut handles: Vec<Option<EngineHandle>> = Vec::new();
    let live: Arc<Mutex<Vec<Option<Live>>>> = Arc::default();
    for slot in 0..scenario.instances {
        let (l, handle, _) = start(&world, &store, config, slot, 0, scenario.skews_ms[slot]);
        handles.push(Some(handle));
        lock(&live).push(Some(l));
    }
    // The subscriber: delivers each batch through a running instance, again (elsewhere) when
    // that fails or hangs: at least once, so duplicates.
    let (events_tx, mut events_rx) =
        tokio::sync::mpsc::unbounded_channel::<Vec<(String, String)>>();
    let feeder = {
        let world = Arc::clone(&world);
        let live = Arc::clone(&live);
        let taken_in = Arc::clone(&taken_in);
        let customers: BTreeMap<String, String> = scenario
            .orders
            .iter()
            .map(|o| (o.id.clone(), o.customer.clone()))
            .collect();
        tokio::spawn(async move {
            let mut replay = 0u32;
            while let Some(batch) = events_rx.recv().await {
                let items: Vec<IntakeItem> = batch
                    .iter()
                    .map(|(order_id, event_id)| {
                        replay += 1;
                        IntakeItem::Event {
                            event_id: event_id.clone(),
                            replay_id: replay.to_be_bytes().to_vec(),
                            payload: Vec::new(),
                            decoded: Ok(EventFields {
                                order_id: order_id.clone(),
                                customer_number: customers
                                    .get(order_id)
                                    .cloned()
                                    .unwrap_or_default(),
                                account_id: None,
                            }),
                        }
                    })
                    .collect();
                loop {
                    let engine = {
                        let live = lock(&live);
                        let up: Vec<&Live> = live
                            .iter()
                            .flatten()
                            .filter(|l| !l.inst.is_dead() && !l.inst.is_paused())
                            .collect();
                        if up.is_empty() {
                            None
                        } else {
                            let pick = world.rng(|r| r.random_range(0..up.len()));
                            Some((up[pick].engine.clone(), up[pick].inst.name.clone()))
                        }
                    };
                    let Some((engine, name)) = engine else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let delivered = tokio::time::timeout(
                        Duration::from_secs(3),
                        engine.intake_batch(items.clone()),
                    )
                    .await;
                    match delivered {
                        Ok(Ok(results)) => {
                            world.trace(format!("{name} intake {batch:?} -> {results:?}"));
                            lock(&taken_in).push((world.elapsed(), batch.clone()));
                            world.state().undelivered -= 1;
                            break;
                        }
                        _ => {
                            world.trace(format!("{name} intake {batch:?} failed; again"));
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
        })
    };
    // The scenario, in time order; once only faults are left and all is quiet, they would
    // change nothing.
    let ids: Vec<String> = scenario.orders.iter().map(|o| o.id.clone()).collect();
    for (i, (at, action)) in scenario.actions.iter().cloned().enumerate() {
        let faults_only = scenario.actions[i..].iter().all(|(_, a)| {
            matches!(
                a,
                Action::Crash(_)
                    | Action::Restart(_)
                    | Action::Pause(..)
                    | Action::FailRenewals(..)
            )
        });
        if faults_only && quiescent(&world, &store, &ids) {
            world.trace("quiet: the remaining faults are left out");
            break;
        }
        tokio::time::sleep_until(world.start + Duration::from_millis(at)).await;
        world.trace(format!("scenario {action:?}"));
        match action {
            Action::Deliver(batch) => {
                world.state().undelivered += 1;
                let _ = events_tx.send(batch);
            }
            Action::Crash(slot) => {
                if let Some(l) = lock(&live)[slot].take() {
                    l.inst.kill();
                }
                // Dropping the handle aborts the process's tasks: each stops at the await
                // point it was at.
                drop(handles[slot].take());
                world.count("crash");
            }
            Action::Arm(slot, n, strike) => {
                if let Some(l) = &lock(&live)[slot] {
                    l.inst.arm(n, strike);
                    world.count(match strike {
                        Strike::Crash => "crash at a gate",
                        Strike::Pause(_) => "pause at a gate",
                    });
                }
            }
            Action::Restart(slot) => {
                // A process that died at an armed gate is gone: its tasks are aborted now.
                let died = lock(&live)[slot].as_ref().is_some_and(|l| l.inst.is_dead());
                if died {
                    lock(&live)[slot] = None;
                    drop(handles[slot].take());
                }
                if let Some(l) = &lock(&live)[slot] {
                    // Not struck yet: the crash is called off.
                    l.inst.disarm();
                    continue;
                }
                let next = Next {
                    world: &world,
                    store: &store,
                    scenario: &scenario,
                    db,
                };
                next.start(slot, &mut generations, &mut handles, &live)
                    .await;
            }
            Action::Pause(slot, d) => {
                if let Some(l) = &lock(&live)[slot] {
                    l.inst.pause(Instant::now() + d);
                    world.count("pause");
                }
            }
            Action::FailRenewals(slot, d) => {
                if let Some(l) = &lock(&live)[slot] {
                    l.inst.fail_renewals(Instant::now() + d);
                    world.count("renewal failure window");
                }
            }
            Action::Withdraw(id) => {
                let now = world.now();
                let mut state = world.state();
                if let Some(o) = state.orders.get_mut(&id)
                    && o.status == world::APPROVED
                {
                    o.status = world::DRAFT.to_owned();
                    o.approved_intent = false;
                    o.last_modified = now;
                    state.count("approval withdrawn");
                }
            }
            Action::Reapprove(id, event) => {
                let now = world.now();
                let again = {
                    let mut state = world.state();
                    match state.orders.get_mut(&id) {
                        Some(o) if o.status == world::DRAFT => {
                            o.status = world::APPROVED.to_owned();
                            o.approved_intent = true;
                            o.last_modified = now;
                            true
                        }
                        _ => false,
                    }
                };
                if again && let Some(event) = event {
                    world.state().undelivered += 1;
                    let _ = events_tx.send(vec![(id, event)]);
                }
            }
            Action::Backup => {
                let path = dir.join(format!("backup-{}.db", stores.len()));
                let (s, to) = (Arc::clone(&store), path.clone());
                complete(&store_runtime().handle().clone(), async move {
                    s.backup_to(&to).await
                })
                .unwrap_or_else(|e| panic!("backing the simulated store up: {e}"));
                backup = Some((path, world.elapsed()));
                world.count("backup");
            }
            Action::Restore(down) => {
                let Some((path, taken)) = backup.clone() else {
                    continue;
                };
                // Every process stops (as in a crash: whatever it sent is on its way).
                for l in lock(&live).iter_mut().filter_map(Option::take) {
                    l.inst.kill();
                }
                for handle in &mut handles {
                    drop(handle.take());
                }
                tokio::time::sleep(down).await;
                let copy = dir.join(format!("restored-{}.db", stores.len()));
                std::fs::copy(&path, &copy)
                    .unwrap_or_else(|e| panic!("restoring the simulated store: {e}"));
                let restored = open_store(&format!("sqlite://{}", copy.display()), false);
                stores.push(std::mem::replace(&mut store, restored));
                world.trace(format!(
                    "store restored from the backup of {} ms",
                    taken.as_millis()
                ));
                world.count("restore");
                restored_at = Some(world.now());
                let next = Next {
                    world: &world,
                    store: &store,
                    scenario: &scenario,
                    db,
                };
                for slot in 0..scenario.instances {
                    next.start(slot, &mut generations, &mut handles, &live)
                        .await;
                }
                // The subscriber resumes after the restored checkpoint: what it took in since
                // the backup comes again.
                let again: Vec<Batch> = lock(&taken_in)
                    .iter()
                    .filter(|(at, _)| *at >= taken)
                    .map(|(_, batch)| batch.clone())
                    .collect();
                for batch in again {
                    world.state().undelivered += 1;
                    let _ = events_tx.send(batch);
                }
            }
        }
    }
    // Until nothing more will happen (or the limit).
    let mut settled = false;
    while world.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if quiescent(&world, &store, &ids) {
            settled = true;
            break;
        }
    }
    feeder.abort();
    for l in lock(&live).iter().flatten() {
        l.inst.kill();
    }
    drop(handles);
    if !settled {
        world.violation(format!(
            "liveness: not every approved Order settled within {} s",
            LIMIT.as_secs()
        ));
    }
    check(&world, &store, &ids, restored_at).await;
    let state = world.state();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    state.trace.hash(&mut hasher);
    let report = Report {
        seed,
        violations: state.violations.clone(),
        trace_hash: hasher.finish(),
        trace: state.trace.clone(),
        stats: state.stats.clone(),
    };
    drop(state);
    stores.push(store);
    (report, stores)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Nothing more will happen: no event waits for delivery, nothing is in flight at WHMCS,
/// every job is final, and no Order stands approved or in the provisioning status without a
/// done job (the sweep would take it up).
fn quiescent(world: &World, store: &Arc<SqlStore>, ids: &[String]) -> bool {
    {
        let state = world.state();
        if state.inflight > 0 || state.undelivered > 0 {
            return false;
        }
    }
    let (s, wanted) = (Arc::clone(store), ids.to_vec());
    let states = complete(&store_runtime().handle().clone(), async move {
        s.job_states(&wanted).await
    });
    let Ok(states) = states else { return false };
    let states: BTreeMap<String, JobState> = states.into_iter().collect();
    let state = world.state();
    states.values().all(|s| s.is_final())
        && state.orders.values().all(|o| {
            let sweepable = o.status == world::APPROVED || o.status == world::PROVISIONING;
            !sweepable || matches!(states.get(&o.id), Some(JobState::Done))
        })
}

/// The invariants, after the run. `restored_at`: when the last restore started the processes
/// again on a backup.
async fn check(
    world: &World,
    store: &Arc<SqlStore>,
    ids: &[String],
    restored_at: Option<chrono::DateTime<chrono::Utc>>,
) {
    let rt = store_runtime().handle().clone();
    let s = Arc::clone(store);
    let wanted = ids.to_vec();
    let (jobs, letters, verified) = complete(&rt, async move {
        let mut jobs = BTreeMap::new();
        for id in &wanted {
            if let Ok(Some(job)) = s.job(id).await {
                jobs.insert(id.clone(), job);
            }
        }
        let every_letter = s.dead_letters(None, 10_000).await.unwrap_or_default();
        let verified = s.verify_audit().await;
        (jobs, every_letter, verified)
    });
    let (letters, closed): (Vec<_>, Vec<_>) = letters
        .into_iter()
        .partition(|l| l.state == DeadLetterState::Open);
    if let Err(e) = verified {
        world.violation(format!("the audit chain does not verify: {e}"));
    }
    let state = world.state();
    let mut found = Vec::new();
    let mut tolerated = Vec::new();
    for id in ids {
        let Some(order) = state.orders.get(id) else {
            continue;
        };
        let whmcs: Vec<&world::WOrder> = state.whmcs.values().filter(|o| &o.sf_ref == id).collect();
        if whmcs.len() > 1 {
            found.push(format!(
                "{} WHMCS orders for Order {id}: {:?}",
                whmcs.len(),
                whmcs.iter().map(|o| o.id).collect::<Vec<_>>()
            ));
        }
        let creates: u32 = whmcs
            .iter()
            .map(|o| state.module_creates.get(&o.id).copied().unwrap_or(0))
            .sum();
        if creates > 1 {
            found.push(format!(
                "{creates} module creates (AcceptOrder) for Order {id}"
            ));
        }
        let job = jobs.get(id);
        let job_state = job.map(|j| j.state);
        // Salesforce and WHMCS both say provisioned, with one WHMCS order.
        let provisioned = order.status == world::ACTIVATED
            && whmcs.len() == 1
            && whmcs[0].active
            && order.whmcs_order_id.as_deref() == Some(&whmcs[0].id.to_string());
        // A restore takes the store back to its backup: the job of an Order that ended after
        // the backup may be gone, or back at a refusal or failure from before it, while
        // Salesforce and WHMCS keep the end (the sweep takes up only approved Orders and our
        // own work under way). Counted, as long as the job has not run since the restore: one
        // that ran and still ended other than done is a violation.
        let stale = match (restored_at, job) {
            (Some(_), None) => true,
            (Some(at), Some(job)) => job.updated_at < at,
            (None, _) => false,
        };
        if stale && provisioned && job_state != Some(JobState::Done) {
            tolerated
                .push("restore: the job's record predates its end (Salesforce says Activated)");
            continue;
        }
        if job_state == Some(JobState::Failed) && creates > 0 {
            found.push(format!("Order {id} failed after AcceptOrder ran"));
        }
        if !order.approved_intent {
            continue;
        }
        match job_state {
            Some(JobState::Done) => {
                let active = whmcs.first().is_some_and(|o| o.active);
                let named = whmcs
                    .first()
                    .is_some_and(|o| order.whmcs_order_id.as_deref() == Some(&o.id.to_string()));
                if order.status != world::ACTIVATED || !active || !named {
                    found.push(format!(
                        "Order {id} done, but Salesforce says {} ({:?}) and WHMCS {:?}",
                        order.status, order.whmcs_order_id, whmcs
                    ));
                }
            }
            Some(JobState::Failed) => {
                let letter = letters
                    .iter()
                    .any(|l| l.order_id.as_deref() == Some(id.as_str()));
                // The retry budget (`RetryPolicy::max_attempts`) running out is the engine's
                // configured permanent cause; the module-create check above still holds.
                let budget = job
                    .and_then(|j| j.last_error.as_deref())
                    .is_some_and(|e| e.starts_with("gave up after"));
                if budget {
                    tolerated.push("failed: retry budget exhausted");
                }
                // A run stopped between its failed PATCH and its end (a crash, a restore): the
                // next run finds the failed status and ends the job failed itself.
                let earlier = job.and_then(|j| j.last_error.as_deref()).is_some_and(|e| {
                    e.contains("an earlier run of this job marked the Order failed")
                });
                if earlier {
                    tolerated
                        .push("failed: an earlier run's failure, its end stored by the next run");
                }
                if !letter || !(order.permanent_cause || budget || earlier) {
                    found.push(format!(
                        "Order {id} failed without a permanent cause or dead letter \
                         (permanent cause: {}, dead letter: {letter}, error: {:?})",
                        order.permanent_cause,
                        job.and_then(|j| j.last_error.clone())
                    ));
                }
            }
            // An event published before the Order failed but delivered after it (the
            // scenario reorders events) reopens the failed job; its checks find the failed
            // status and refuse it. The failure stands, and so must its dead letter (it was
            // F1: the reopening closed the letter and nothing opened it again). A job whose
            // failed PATCH went out but whose end was never stored (a crash or a restore in
            // between) must not be refused with no letter ever written.
            Some(JobState::Refused)
                if order.status == world::FAILED
                    && job.is_some_and(|j| j.last_error.as_deref() == Some("not_approved")) =>
            {
                let of_order =
                    |l: &&provisioner_store::DeadLetter| l.order_id.as_deref() == Some(id.as_str());
                if letters.iter().any(|l| of_order(&l)) {
                    tolerated
                        .push("a late event reopened a failed job, refused; its dead letter open");
                } else if closed.iter().any(|l| of_order(&l)) {
                    found.push(format!(
                        "Order {id} failed, its job reopened by a late event and refused, \
                         and its dead letter closed"
                    ));
                } else if stale {
                    // The restore took the job back to a refusal from before its re-approval
                    // and failure, and nothing ran it since (no event; the sweep reads no
                    // failed Orders): the same loss as a job gone with its letter, below.
                    tolerated.push(
                        "restore: a failed Order's job back at an earlier refusal (Salesforce says failed)",
                    );
                } else {
                    found.push(format!(
                        "Order {id} failed in Salesforce, its job refused not_approved with no \
                         dead letter (a failure whose end was not stored)"
                    ));
                }
            }
            None if restored_at.is_some() && order.status == world::FAILED => {
                tolerated.push(
                    "restore: a failed Order's job and dead letter lost (Salesforce says failed)",
                );
            }
            other => found.push(format!(
                "approved Order {id} ended {other:?}, not provisioned (job {job:?})"
            )),
        }
    }
    drop(state);
    for f in found {
        world.violation(f);
    }
    let mut state = world.state();
    for t in tolerated {
        state.count(t);
    }
    for job in jobs.values() {
        state.count(match job.state {
            JobState::Done => "orders provisioned",
            JobState::Failed => "orders failed",
            JobState::Refused => "orders refused",
            JobState::Pending | JobState::Running => "orders unsettled",
        });
    }
}
