//! End-to-end load: the real [`Engine`] with the real Salesforce REST and WHMCS clients against
//! the in-process sandboxes, over a SQLite file or a fresh PostgreSQL database.
//!
//! Each measured iteration provisions a batch of N new orders: N events are handed to
//! [`Engine::intake_batch`] the way the Pub/Sub subscriber hands them over after decoding — what
//! has arrived, at most one fetch's credit (100) at a time; in the burst all N have arrived at
//! once, in the paced run only the events that are due — (the gRPC stream and Avro decoding
//! are not part of this benchmark), and the iteration ends when the engine has reported N
//! settled job outcomes. Every batch gets a fresh stack (sandboxes, clients, store,
//! engine) and its Orders and WHMCS clients are seeded before the clock starts: the sandboxes
//! answer lookups by scanning all the records they hold, so a long-lived sandbox would make
//! later batches slower for reasons that are not the provisioner's. Every order has its own customer, so per-customer ordering never serialises
//! the batch.
//!
//! Added latency, per order: (end of the `Status = Activated` PATCH) − (start of its intake
//! call) − (wall time of every Salesforce and WHMCS client call made for that order). The
//! client calls are timed by decorators around the `OrderApi` / `WhmcsApi` ports, so what
//! remains is the engine's own time: store transactions, audit records, scheduling, waiting
//! for a worker. Calls are attributed to orders by Salesforce Order Id, WHMCS client id (one
//! per order) and the WHMCS order id AddOrder returned.
//!
//! `E2E_CONCURRENCY` overrides the zero-latency SQLite scenario's `PROVISIONER_CONCURRENCY` (16).
//!
//! CPU per order comes from `/proc/self/stat` (utime + stime, 100 ticks/s) minus the CPU of
//! the sandbox runtime's threads (`/proc/self/task/*/stat`, thread name `sandbox`): what is
//! left is the engine, the clients, the store's SQLite threads (writer, checkpointer, sqlx's
//! readers) and the bench's own driver (the
//! PostgreSQL server's CPU is in another process and not counted). Peak RSS is `VmHWM`, reset
//! through `/proc/self/clear_refs` at each scenario's start; it includes the sandboxes' data.

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use provisioner_core::intake::{EventFields, IntakeItem, IntakeResult};
use provisioner_core::{
    Engine, EngineBuilder, EngineConfig, EngineHandle, JobOutcome, RunningEngine,
};
use provisioner_store::{SqlStore, Store, StoreOptions};
use sandbox::salesforce::{
    SalesforceConfig, SalesforceSandbox, SfOrder, SfOrderItem, salesforce_id,
};
use sandbox::whmcs::{Client, Fault, Product, WhmcsSandbox};
use test_support::pg::PgTempDb;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// The integration tests' stack: the sandbox clients are made the same way here.
#[allow(dead_code)]
#[path = "../tests/it/stack.rs"]
mod stack;

use stack::REF_FIELD;
/// Events per intake batch at most: the subscriber's credit per fetch (`SF_PUBSUB_BATCH`).
const FETCH_CREDIT: usize = 100;
const SANDBOX_THREAD: &str = "sandbox";
const MASTER_KEY: &str = "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=";

// ---------------------------------------------------------------------------------------------
// Per-order timing of the downstream calls.

#[derive(Default)]
struct Ledger {
    /// WHMCS client id → Salesforce Order Id.
    client_order: HashMap<u64, String>,
    /// WHMCS order id → Salesforce Order Id.
    whmcs_order: HashMap<u64, String>,
    /// Salesforce Order Id → wall time spent in client calls.
    downstream: HashMap<String, Duration>,
    /// Salesforce Order Id → end of the `Activated` PATCH.
    activated: HashMap<String, Instant>,
}

#[derive(Default)]
struct Timing(Mutex<Ledger>);

impl Timing {
    fn charge(&self, order: Option<String>, took: Duration) {
        if let Some(order) = order {
            *self.0.lock().unwrap().downstream.entry(order).or_default() += took;
        }
    }

    fn by_client(&self, client_id: u64) -> Option<String> {
        self.0.lock().unwrap().client_order.get(&client_id).cloned()
    }

    fn by_whmcs_order(&self, order_id: u64) -> Option<String> {
        self.0.lock().unwrap().whmcs_order.get(&order_id).cloned()
    }
}

struct TimedOrders {
    inner: Arc<dyn sf_rest::OrderApi>,
    timing: Arc<Timing>,
    activated: String,
}

#[async_trait]
impl sf_rest::OrderApi for TimedOrders {
    async fn fetch_order(&self, order_id: &str) -> sf_rest::Result<sf_rest::Order> {
        let t = Instant::now();
        let r = self.inner.fetch_order(order_id).await;
        self.timing.charge(Some(order_id.to_owned()), t.elapsed());
        r
    }

    async fn update_order(
        &self,
        order_id: &str,
        update: &sf_rest::OrderUpdate,
    ) -> sf_rest::Result<()> {
        let t = Instant::now();
        let r = self.inner.update_order(order_id, update).await;
        let end = Instant::now();
        self.timing.charge(Some(order_id.to_owned()), end - t);
        if r.is_ok() && update.status.as_deref() == Some(self.activated.as_str()) {
            self.timing
                .0
                .lock()
                .unwrap()
                .activated
                .insert(order_id.to_owned(), end);
        }
        r
    }

    async fn list_approved_orders(
        &self,
        older_than: Duration,
    ) -> sf_rest::Result<Vec<sf_rest::ApprovedOrder>> {
        self.inner.list_approved_orders(older_than).await
    }

    async fn list_orders_in_status(
        &self,
        status: &str,
        older_than: Duration,
    ) -> sf_rest::Result<Vec<sf_rest::ApprovedOrder>> {
        self.inner.list_orders_in_status(status, older_than).await
    }
}

struct TimedWhmcs {
    inner: Arc<dyn whmcs_client::WhmcsApi>,
    timing: Arc<Timing>,
}

#[async_trait]
impl whmcs_client::WhmcsApi for TimedWhmcs {
    async fn get_client_details(
        &self,
        client_id: u64,
    ) -> whmcs_client::Result<whmcs_client::ClientDetails> {
        let t = Instant::now();
        let r = self.inner.get_client_details(client_id).await;
        self.timing
            .charge(self.timing.by_client(client_id), t.elapsed());
        r
    }

    async fn get_clients_products(
        &self,
        query: &whmcs_client::ProductsQuery,
        page: whmcs_client::Page,
    ) -> whmcs_client::Result<whmcs_client::ListPage<whmcs_client::Service>> {
        self.inner.get_clients_products(query, page).await
    }

    async fn all_client_services(
        &self,
        client_id: u64,
    ) -> whmcs_client::Result<Vec<whmcs_client::Service>> {
        let t = Instant::now();
        let r = self.inner.all_client_services(client_id).await;
        self.timing
            .charge(self.timing.by_client(client_id), t.elapsed());
        r
    }

    async fn client_service_refs(
        &self,
        client_id: u64,
    ) -> whmcs_client::Result<Vec<whmcs_client::ServiceRef>> {
        let t = Instant::now();
        let r = self.inner.client_service_refs(client_id).await;
        self.timing
            .charge(self.timing.by_client(client_id), t.elapsed());
        r
    }

    async fn find_service_by_custom_field(
        &self,
        client_id: u64,
        field_id: u64,
        value: &str,
    ) -> whmcs_client::Result<Option<whmcs_client::Service>> {
        let t = Instant::now();
        let r = self
            .inner
            .find_service_by_custom_field(client_id, field_id, value)
            .await;
        self.timing
            .charge(self.timing.by_client(client_id), t.elapsed());
        r
    }

    async fn add_order(
        &self,
        order: &whmcs_client::NewOrder,
    ) -> whmcs_client::Result<whmcs_client::PlacedOrder> {
        let t = Instant::now();
        let r = self.inner.add_order(order).await;
        let took = t.elapsed();
        let owner = self.timing.by_client(order.client_id);
        if let (Ok(placed), Some(owner)) = (&r, &owner) {
            self.timing
                .0
                .lock()
                .unwrap()
                .whmcs_order
                .insert(placed.order_id, owner.clone());
        }
        self.timing.charge(owner, took);
        r
    }

    async fn accept_order(
        &self,
        request: &whmcs_client::AcceptOrderRequest,
    ) -> whmcs_client::Result<()> {
        let t = Instant::now();
        let r = self.inner.accept_order(request).await;
        self.timing
            .charge(self.timing.by_whmcs_order(request.order_id), t.elapsed());
        r
    }

    async fn get_orders(
        &self,
        query: &whmcs_client::OrdersQuery,
        page: whmcs_client::Page,
    ) -> whmcs_client::Result<whmcs_client::ListPage<whmcs_client::Order>> {
        self.inner.get_orders(query, page).await
    }

    async fn get_order(&self, order_id: u64) -> whmcs_client::Result<Option<whmcs_client::Order>> {
        let t = Instant::now();
        let r = self.inner.get_order(order_id).await;
        self.timing
            .charge(self.timing.by_whmcs_order(order_id), t.elapsed());
        r
    }

    async fn module_create(&self, service_id: u64) -> whmcs_client::Result<()> {
        self.inner.module_create(service_id).await
    }

    async fn add_client(&self, client: &whmcs_client::NewClient) -> whmcs_client::Result<u64> {
        self.inner.add_client(client).await
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

/// utime + stime of a `/proc/.../stat` line, in seconds (USER_HZ = 100), and the thread name.
fn stat_cpu(stat: &str) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / 100.0))
}

/// (whole process, sandbox threads) CPU seconds so far.
fn cpu_seconds() -> (f64, f64) {
    let process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_cpu(&s))
        .map_or(0.0, |(_, c)| c);
    let mut sandbox = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Some((name, cpu)) = std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|s| stat_cpu(&s))
                && name.starts_with(SANDBOX_THREAD)
            {
                sandbox += cpu;
            }
        }
    }
    (process, sandbox)
}

fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// The stack.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Db {
    Sqlite,
    Postgres,
}

struct Scenario {
    name: &'static str,
    db: Db,
    accept_latency: Duration,
    concurrency: usize,
    batch: usize,
    /// Paced runs after the burst runs: (orders, offered orders/s) each. The burst measures
    /// throughput (queueing dominates its latency); a paced run below capacity measures the
    /// latency the provisioner adds at a sustainable load.
    paced: &'static [(usize, f64)],
}

#[derive(Default)]
struct Stats {
    orders: usize,
    elapsed: Duration,
    added: Vec<Duration>,
    cpu_total: f64,
    cpu_sandbox: f64,
    failed: usize,
}

struct Stack {
    sandbox_rt: Runtime,
    rt: Runtime,
    sf: SalesforceSandbox,
    whmcs: WhmcsSandbox,
    product: u64,
    timing: Arc<Timing>,
    engine: Engine,
    handle: Option<EngineHandle>,
    outcomes: mpsc::UnboundedReceiver<(String, JobOutcome)>,
    next: AtomicU64,
    pg: Option<PgTempDb>,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// `None` when the scenario's database is unreachable.
    fn build(s: &Scenario) -> Option<Stack> {
        let sandbox_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(SANDBOX_THREAD)
            .enable_all()
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("engine")
            .enable_all()
            .build()
            .unwrap();
        let (sf, whmcs) = sandbox_rt.block_on(async {
            (
                SalesforceSandbox::start(SalesforceConfig::trusting(
                    test_support::keys::PUBLIC_KEY_PEM,
                ))
                .await
                .unwrap(),
                WhmcsSandbox::start().await.unwrap(),
            )
        });
        let product = whmcs.seed_product(Product::new("VPS").with_custom_field(
            REF_FIELD,
            "External Order Ref",
            false,
        ));
        if !s.accept_latency.is_zero() {
            whmcs.inject_fault_rate("AcceptOrder", Fault::Latency(s.accept_latency), 1.0, 1);
        }
        let dir = tempfile::tempdir().unwrap();
        let pg = match s.db {
            Db::Sqlite => None,
            Db::Postgres => match rt.block_on(PgTempDb::try_create()) {
                Ok(db) => Some(db),
                Err(e) => {
                    println!("{}: skipped, PostgreSQL unreachable: {e}", s.name);
                    return None;
                }
            },
        };
        let url = match &pg {
            Some(db) => db.url(),
            None => format!("sqlite://{}/bench.db", dir.path().display()),
        };
        let timing = Arc::new(Timing::default());
        let (tx, outcomes) = mpsc::unbounded_channel();
        let builder = rt.block_on(async {
            let tokens = stack::sf_tokens(&sf);
            let rest: Arc<dyn sf_rest::OrderApi> = Arc::new(
                sf_rest::RestOrderApi::new(tokens, sf_rest::RestConfig::default()).unwrap(),
            );
            let whmcs_api: Arc<dyn whmcs_client::WhmcsApi> =
                Arc::new(whmcs_client::HttpWhmcsClient::new(stack::whmcs_config(&whmcs)).unwrap());
            let master = field_crypto::MasterKey::from_config(MASTER_KEY).unwrap();
            let store = Arc::new(
                SqlStore::open(&url, &master, StoreOptions::default())
                    .await
                    .unwrap(),
            );
            let config = EngineConfig {
                order_ref_fields: Some(REF_FIELD.into()),
                concurrency: s.concurrency,
                reconcile_interval: Duration::from_secs(24 * 3600),
                ..EngineConfig::default()
            };
            EngineBuilder::new(
                Arc::new(TimedOrders {
                    inner: rest,
                    timing: Arc::clone(&timing),
                    activated: config.statuses.provisioned.clone(),
                }),
                Arc::new(TimedWhmcs {
                    inner: whmcs_api,
                    timing: Arc::clone(&timing),
                }),
                Arc::clone(&store) as Arc<dyn Store>,
                Arc::clone(&store) as Arc<dyn audit::AuditLog>,
                Arc::new(security::SecurityMonitor::new(
                    Arc::new(security::LogSink),
                    security::Thresholds::default(),
                )),
            )
            .config(config)
            .outcomes(tx)
        });
        let RunningEngine { engine, handle, .. } = {
            let _guard = rt.enter();
            builder.start()
        };
        // Let the engine's tasks subscribe to its shutdown signal before anything can send it:
        // a shutdown sent before they first run is never seen by the reconcile and key-rotation
        // loops, and `EngineHandle::shutdown` then waits forever.
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        Some(Stack {
            sandbox_rt,
            rt,
            sf,
            whmcs,
            product,
            timing,
            engine,
            handle: Some(handle),
            outcomes,
            next: AtomicU64::new(0),
            pg,
            _dir: dir,
        })
    }

    /// Seeds `n` approved Orders, each with its own Active WHMCS client; returns their ids.
    fn seed(&self, n: usize) -> Vec<(String, String)> {
        self.whmcs.clear_requests();
        let mut ledger = self.timing.0.lock().unwrap();
        ledger.downstream.clear();
        ledger.activated.clear();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.next.fetch_add(1, Ordering::Relaxed) + 1;
            let client_id = self.whmcs.seed_client(Client::active(
                &format!("Customer{k}"),
                &format!("c{k}@example.com"),
            ));
            let order_id = salesforce_id("801", k);
            let customer = format!("C-{k:07}");
            let mut order = SfOrder::new(order_id.clone(), "Approved");
            order.customer_number = Some(customer.clone());
            order.whmcs_client_id = serde_json::json!(client_id.to_string());
            self.sf.insert_order(order);
            self.sf.insert_order_item(SfOrderItem {
                id: salesforce_id("802", k),
                order_id: order_id.clone(),
                quantity: 1.0,
                whmcs_product_id: serde_json::json!(self.product as f64),
                billing_cycle: Some("monthly".into()),
                config_options: None,
            });
            ledger.client_order.insert(client_id, order_id.clone());
            out.push((order_id, customer));
        }
        out
    }

    /// Provisions a fresh batch of `n` orders; `rate` paces the intake (orders/s), `None`
    /// hands them over as fast as intake takes them.
    fn run_batch(&mut self, n: usize, rate: Option<f64>, stats: &mut Stats) -> Duration {
        let orders = self.seed(n);
        let (cpu0, sb0) = cpu_seconds();
        let engine = self.engine.clone();
        let base = self.next.load(Ordering::Relaxed);
        let outcomes = &mut self.outcomes;
        let (elapsed, intake_at, failed) = self.rt.block_on(async move {
            let start = Instant::now();
            let feeder = tokio::spawn(async move {
                // Like the subscriber: what has arrived (here: is due) goes in as one batch, at
                // most one fetch's credit (SF_PUBSUB_BATCH, default 100).
                let mut at = Vec::with_capacity(orders.len());
                let mut pending = orders.into_iter().enumerate().peekable();
                while pending.peek().is_some() {
                    if let (Some(rate), Some((i, _))) = (rate, pending.peek()) {
                        tokio::time::sleep_until(
                            (start + Duration::from_secs_f64(*i as f64 / rate)).into(),
                        )
                        .await;
                    }
                    let due = match rate {
                        None => usize::MAX,
                        Some(rate) => (start.elapsed().as_secs_f64() * rate) as usize + 1,
                    };
                    let mut items = Vec::new();
                    let mut ids = Vec::new();
                    while items.len() < FETCH_CREDIT {
                        let Some((i, _)) = pending.peek() else { break };
                        if *i >= due {
                            break;
                        }
                        let Some((i, (order_id, customer))) = pending.next() else {
                            break;
                        };
                        items.push(IntakeItem::Event {
                            event_id: uuid::Uuid::new_v4().to_string(),
                            replay_id: (base + i as u64).to_be_bytes().to_vec(),
                            payload: Vec::new(),
                            decoded: Ok(EventFields {
                                order_id: order_id.clone(),
                                customer_number: customer,
                                account_id: None,
                            }),
                        });
                        ids.push(order_id);
                    }
                    let t = Instant::now();
                    let results = engine.intake_batch(items).await.unwrap();
                    assert!(results.iter().all(|r| *r == IntakeResult::Enqueued));
                    at.extend(ids.into_iter().map(|id| (id, t)));
                }
                at
            });
            // Retries and lease hand-overs come back later; count only settled jobs.
            let (mut settled, mut failed) = (0, 0);
            while settled < n {
                let (_, outcome) = outcomes.recv().await.unwrap();
                match outcome {
                    JobOutcome::Provisioned { .. } => settled += 1,
                    JobOutcome::AlreadyProvisioned
                    | JobOutcome::Refused { .. }
                    | JobOutcome::Failed { .. } => {
                        settled += 1;
                        failed += 1;
                    }
                    _ => {}
                }
            }
            let elapsed = start.elapsed();
            (elapsed, feeder.await.unwrap(), failed)
        });
        let (cpu1, sb1) = cpu_seconds();
        let ledger = self.timing.0.lock().unwrap();
        for (order_id, t) in intake_at {
            if let Some(done) = ledger.activated.get(&order_id) {
                let downstream = ledger
                    .downstream
                    .get(&order_id)
                    .copied()
                    .unwrap_or_default();
                stats.added.push((*done - t).saturating_sub(downstream));
            }
        }
        stats.orders += n;
        stats.elapsed += elapsed;
        stats.cpu_total += cpu1 - cpu0;
        stats.cpu_sandbox += sb1 - sb0;
        stats.failed += failed;
        elapsed
    }

    fn shutdown(mut self) {
        if let Some(handle) = self.handle.take() {
            self.rt.block_on(handle.shutdown());
        }
        let Stack {
            sandbox_rt,
            rt,
            engine,
            pg,
            sf,
            whmcs,
            ..
        } = self;
        drop(engine);
        if let Some(db) = pg {
            rt.block_on(db.close());
        }
        drop(rt);
        drop((sf, whmcs));
        drop(sandbox_rt);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, stats: &mut Stats, rss: f64) {
    stats.added.sort();
    let orders = stats.orders.max(1) as f64;
    println!(
        "SUMMARY {name}: {:.0} orders/s over {} orders ({} not done), added latency \
         p50 {:.2} ms p99 {:.2} ms, CPU {:.3} ms/order engine side ({:.3} incl. sandboxes), \
         peak RSS {:.1} MiB",
        stats.orders as f64 / stats.elapsed.as_secs_f64().max(1e-9),
        stats.orders,
        stats.failed,
        percentile(&stats.added, 50.0).as_secs_f64() * 1e3,
        percentile(&stats.added, 99.0).as_secs_f64() * 1e3,
        (stats.cpu_total - stats.cpu_sandbox) * 1e3 / orders,
        stats.cpu_total * 1e3 / orders,
        rss,
    );
}

fn scenario(c: &mut Criterion, s: &Scenario) {
    let rss_reset = reset_peak_rss();
    // A first stack checks that the database is reachable.
    let Some(probe) = Stack::build(s) else {
        return;
    };
    probe.shutdown();
    let mut stats = Stats::default();
    {
        let mut group = c.benchmark_group("e2e");
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(5))
            .throughput(Throughput::Elements(s.batch as u64));
        group.bench_function(s.name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // A fresh stack per batch, built and torn down outside the clock: the
                    // sandboxes answer lookups by scanning every record they hold.
                    let mut stack = Stack::build(s).expect("database reachable");
                    total += stack.run_batch(s.batch, None, &mut stats);
                    stack.shutdown();
                }
                total
            });
        });
        group.finish();
    }
    let rss = peak_rss_mib();
    summary(
        &format!(
            "{} burst of {} (concurrency {}{})",
            s.name,
            s.batch,
            s.concurrency,
            if rss_reset { "" } else { ", RSS since start" }
        ),
        &mut stats,
        rss,
    );
    for &(n, rate) in s.paced {
        let mut stack = Stack::build(s).expect("database reachable");
        let mut paced = Stats::default();
        stack.run_batch(n, Some(rate), &mut paced);
        stack.shutdown();
        summary(
            &format!("{} paced at {rate:.0}/s offered, {n} orders", s.name),
            &mut paced,
            peak_rss_mib(),
        );
    }
}

fn e2e(c: &mut Criterion) {
    let scenarios = [
        Scenario {
            name: "sqlite_zero_latency",
            db: Db::Sqlite,
            accept_latency: Duration::ZERO,
            concurrency: std::env::var("E2E_CONCURRENCY")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(16),
            batch: 2000,
            paced: &[(2000, 1000.0), (2000, 500.0)],
        },
        Scenario {
            name: "sqlite_accept_200ms_c64",
            db: Db::Sqlite,
            accept_latency: Duration::from_millis(200),
            concurrency: 64,
            batch: 1000,
            paced: &[],
        },
        Scenario {
            name: "postgres_zero_latency",
            db: Db::Postgres,
            accept_latency: Duration::ZERO,
            concurrency: 16,
            batch: 1000,
            paced: &[(1000, 500.0), (1000, 150.0)],
        },
    ];
    for s in &scenarios {
        scenario(c, s);
    }
}

criterion_group!(benches, e2e);
criterion_main!(benches);
