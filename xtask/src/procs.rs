//! `cargo xtask bench procs`: the product measured the way a user runs it.
//!
//! Each scenario starts a fresh `sf-sandbox` process (release build) and one or two `provisioner
//! run` processes (release build) on a fresh store (a SQLite file in a temporary directory, or
//! a PostgreSQL database `bench_procs_<pid>_<n>` created with `psql` on 127.0.0.1:5432, user
//! `postgres`, and dropped at the end, on failure too; the provisioners reach it through the
//! server's Unix socket in `/var/run/postgresql` when it has one, else over TCP, and the report
//! says which). They talk real gRPC (Pub/Sub) and HTTP on loopback. The harness watches from
//! outside only:
//!
//! - "done" and the latencies come from the sandbox: `GET $SF_LOGIN_URL/sandbox/stats` counts
//!   the Orders a PATCH moved to `Activated` (polled every [`POLL`]) and, at the end, the
//!   p50/p99 from each event's publish to that PATCH; `GET <whmcs>/sandbox/stats` counts WHMCS
//!   orders and duplicates (more than one WHMCS order carrying one Salesforce Order Id), read
//!   after the provisioners have stopped;
//! - CPU: utime+stime of `/proc/<pid>/stat` (clock ticks from `getconf CLK_TCK`, 100 if that
//!   fails), the provisioners' from their start (all instances summed), the sandbox's as the
//!   delta over the same interval, both read when the last Order is activated; for the
//!   `postgres-*` scenarios also the local server's CPU over the same interval ([`ServerCpu`]:
//!   every process named `postgres`, with what the postmaster collected from backends that
//!   exited), `n/a` when no such process is visible (a server on another machine); the CPUs
//!   busy: all of that CPU time over wall × the CPUs the harness may use
//!   (`available_parallelism`);
//! - peak RSS: `VmHWM` of `/proc/<pid>/status` at the end, the largest instance;
//! - serialized time: `provisioner_store_serialized_seconds` on each instance's
//!   `/metrics` (status API), summed; `n/a` when the provisioner does not export it;
//! - the last tenth: the poll at which 90% of the Orders were activated, and each instance's
//!   `provisioner_retries_total` by error code, summed (what a faulty run's tail waited for).
//!
//! Per-order time = wall × instances × `PROVISIONER_CONCURRENCY` / orders: the worker-slot time
//! each order had; the serialized share is serialized time per order over that.
//!
//! Provisioner settings are the defaults except: `PROVISIONER_CONCURRENCY=16` (the default,
//! pinned for the per-order time), `CUSTOMER_PROVISION_RATE=1000/second` (the default 30/hour
//! would hold 25 orders of one customer for an hour), and `WHMCS_TIMEOUT=2s`,
//! `WHMCS_ACCEPT_TIMEOUT=2s`, `WHMCS_SETTLE=1s` (the loopback WHMCS answers in milliseconds;
//! the same as the process tests), `RUST_LOG=warn`.
//!
//! The table goes to stdout and, with the raw numbers as JSON, to `<target dir>/bench-procs.md`
//! and `<target dir>/bench-procs.json`. Exit status: 0 when every scenario that ran drained
//! exactly once (a failed Done-when check is a measurement, not an error), 1 when a scenario
//! broke (a process died, an Order went unprovisioned, a duplicate WHMCS order); the temporary
//! directory of a scenario that did not drain or made duplicates is kept, with the processes'
//! logs, and named in the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// How often the sandbox's activation count is polled.
const POLL: Duration = Duration::from_millis(100);

/// `PROVISIONER_CONCURRENCY` of every instance (the binary's default, set explicitly).
const CONCURRENCY: u32 = 16;

/// How long a sandbox may take to seed and announce itself.
const SANDBOX_READY: Duration = Duration::from_secs(600);

/// How long a provisioner may take to stop after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// The PostgreSQL server the `postgres-*` scenarios use (trust auth).
const PG_HOST: &str = "127.0.0.1";
const PG_PORT: &str = "5432";
const PG_USER: &str = "postgres";

/// Where the local server's Unix socket lives (Debian's default).
const PG_SOCKET_DIR: &str = "/var/run/postgresql";

/// [`PG_SOCKET_DIR`] when the server listens there for [`PG_PORT`]: the provisioners connect
/// through the socket, as a provisioner on the database's machine would. Over TCP on loopback
/// the connection negotiates TLS (`sslmode=prefer`), which measured 11% more PostgreSQL CPU
/// and 8% more provisioner CPU per order for the same work.
fn pg_socket_dir() -> Option<&'static str> {
    Path::new(PG_SOCKET_DIR)
        .join(format!(".s.PGSQL.{PG_PORT}"))
        .exists()
        .then_some(PG_SOCKET_DIR)
}

/// The fault rate of the `faults-0.05` scenario.
const FAULT_RATE: f64 = 0.05;

/// Scenario names, in run order.
const SCENARIOS: [&str; 7] = [
    "sqlite-1",
    "postgres-1",
    "postgres-2",
    "backlog-100k",
    "paced-500",
    "clean-10k",
    "faults-0.05",
];

const USAGE: &str = "usage: cargo xtask bench procs [--only NAME[,NAME..]] [--orders N] \
    [--backlog-orders N] [--rate N] [--seconds N] [--fault-orders N] [--fault-cap SECS]\n\
    scenarios: sqlite-1, postgres-1, postgres-2 (--orders, default 5000, 25 per customer), \
    backlog-100k (--backlog-orders, default 100000, 10 per customer), paced-500 (--rate 500 \
    orders/s for --seconds 10, one per customer), clean-10k and faults-0.05 (--fault-orders, \
    default 10000, 100 customers; the faults run is given up after --fault-cap, default 600 s)";

/// The sizes, from the command line.
#[derive(Debug, Clone)]
struct Options {
    only: Option<Vec<String>>,
    orders: u32,
    backlog_orders: u32,
    rate: u32,
    seconds: u32,
    fault_orders: u32,
    fault_cap: Duration,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut options = Options {
            only: None,
            orders: 5_000,
            backlog_orders: 100_000,
            rate: 500,
            seconds: 10,
            fault_orders: 10_000,
            fault_cap: Duration::from_secs(600),
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                bail!("{USAGE}");
            }
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
            let count = || -> Result<u32> {
                value
                    .replace('_', "")
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("{flag} {value}: expected a positive number"))
            };
            match flag.as_str() {
                "--only" => {
                    let names: Vec<String> = value.split(',').map(str::to_owned).collect();
                    for name in &names {
                        if !SCENARIOS.contains(&name.as_str()) {
                            bail!(
                                "unknown scenario `{name}` (expected one of: {})",
                                SCENARIOS.join(", ")
                            );
                        }
                    }
                    options.only = Some(names);
                }
                "--orders" => options.orders = count()?,
                "--backlog-orders" => options.backlog_orders = count()?,
                "--rate" => options.rate = count()?,
                "--seconds" => options.seconds = count()?,
                "--fault-orders" => options.fault_orders = count()?,
                "--fault-cap" => options.fault_cap = Duration::from_secs(count()?.into()),
                other => bail!("unknown option `{other}`\n{USAGE}"),
            }
        }
        Ok(options)
    }

    fn wants(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == name))
    }
}

/// Where the provisioner keeps its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Sqlite,
    Postgres,
}

/// One scenario: what the sandbox seeds and how the provisioners run.
#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    store: Store,
    instances: u32,
    customers: u32,
    per_customer: u32,
    /// Publish paced at this many per second once subscribed (else all before the start).
    rate: Option<u32>,
    fault_rate: f64,
    /// Given up after this long (then "did not drain").
    cap: Duration,
}

impl Scenario {
    fn orders(&self) -> u64 {
        u64::from(self.customers) * u64::from(self.per_customer)
    }
}

fn scenarios(o: &Options) -> Vec<Scenario> {
    // Generous: the sandbox-side work alone is well under a millisecond per order.
    let cap = |orders: u32| Duration::from_secs(120) + Duration::from_millis(20) * orders;
    let split = |orders: u32, per: u32| ((orders / per).max(1), per.min(orders));
    let (c5, p5) = split(o.orders, 25);
    let (cb, pb) = split(o.backlog_orders, 10);
    let fault_customers = o.fault_orders.min(100);
    let fault_per = (o.fault_orders / fault_customers).max(1);
    let paced = o.rate.saturating_mul(o.seconds);
    let base = |name, store, instances, customers, per_customer| Scenario {
        name,
        store,
        instances,
        customers,
        per_customer,
        rate: None,
        fault_rate: 0.0,
        cap: cap(customers * per_customer),
    };
    vec![
        base("sqlite-1", Store::Sqlite, 1, c5, p5),
        base("postgres-1", Store::Postgres, 1, c5, p5),
        base("postgres-2", Store::Postgres, 2, c5, p5),
        base("backlog-100k", Store::Sqlite, 1, cb, pb),
        Scenario {
            rate: Some(o.rate),
            cap: cap(paced) + Duration::from_secs(o.seconds.into()),
            ..base("paced-500", Store::Sqlite, 1, paced, 1)
        },
        base("clean-10k", Store::Sqlite, 1, fault_customers, fault_per),
        Scenario {
            fault_rate: FAULT_RATE,
            cap: o.fault_cap,
            ..base("faults-0.05", Store::Sqlite, 1, fault_customers, fault_per)
        },
    ]
}

/// What one scenario measured.
#[derive(Debug, Clone, Default)]
struct Outcome {
    name: String,
    orders: u64,
    instances: u32,
    /// Provisioner start until the last Order was activated (or the cap).
    wall_s: f64,
    activated: u64,
    drained: bool,
    prov_cpu_ms: f64,
    /// The provisioners' CPU by thread name (all instances summed): where `prov_cpu_ms` went.
    prov_threads_ms: BTreeMap<String, f64>,
    sandbox_cpu_ms: f64,
    /// The PostgreSQL server's CPU over the run (`postgres-*` with a local server only).
    db_cpu_ms: Option<f64>,
    peak_rss_kib: u64,
    serialized_s: Option<f64>,
    /// PostgreSQL's batched fenced writes (all instances summed): statements sent, and the
    /// writes they committed (`None` when the binary does not export them).
    batch_statements: Option<f64>,
    batched_writes: Option<f64>,
    provisioned_metric: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Provisioner start until 90% of the Orders were activated: with `wall_s`, how long the
    /// last tenth took (the tail of a faulty run).
    wall_90_s: Option<f64>,
    /// Retries the provisioners scheduled (`provisioner_retries_total`), by error code, all
    /// instances summed: what the tail waited for.
    retries: BTreeMap<String, f64>,
    whmcs_orders: u64,
    duplicates: u64,
    refs: u64,
    /// Why the scenario broke, if it did.
    broken: Option<String>,
    /// Why it did not run, if it did not.
    skipped: Option<String>,
    /// The CPUs the processes could use (`available_parallelism` of the harness; 0: unknown).
    cpus: u32,
}

impl Outcome {
    #[allow(clippy::cast_precision_loss)]
    fn rate(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.activated as f64 / self.wall_s
        } else {
            0.0
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn per_order(&self, total: f64) -> f64 {
        total / (self.orders.max(1) as f64)
    }

    /// The provisioners' CPU ms per order (all instances).
    fn prov_ms_per_order(&self) -> f64 {
        self.per_order(self.prov_cpu_ms)
    }

    /// The sandbox's CPU ms per order.
    fn sandbox_ms_per_order(&self) -> f64 {
        self.per_order(self.sandbox_cpu_ms)
    }

    /// CPU ms per order of every process that did the work: the provisioners, the sandbox and,
    /// when measured, the PostgreSQL server.
    fn all_cpu_ms_per_order(&self) -> f64 {
        self.per_order(self.all_cpu_ms())
    }

    /// CPU ms of every process that did the work, over the whole run.
    fn all_cpu_ms(&self) -> f64 {
        self.prov_cpu_ms + self.sandbox_cpu_ms + self.db_cpu_ms.unwrap_or(0.0)
    }

    /// The share of the machine's CPUs that the measured processes (provisioners, sandbox,
    /// local PostgreSQL server) kept busy over the run: their CPU time over wall × CPUs. Near
    /// 100%, orders/s is the CPU budget divided by the CPU per Order, whatever the concurrency.
    fn cpus_busy(&self) -> Option<f64> {
        (self.cpus > 0 && self.wall_s > 0.0)
            .then(|| self.all_cpu_ms() / (self.wall_s * 1000.0 * f64::from(self.cpus)))
    }

    /// Serialized ms per order.
    fn serialized_ms_per_order(&self) -> Option<f64> {
        self.serialized_s.map(|s| self.per_order(s * 1000.0))
    }

    /// Worker-slot ms per order: wall × instances × concurrency / orders.
    fn slot_ms_per_order(&self) -> f64 {
        self.per_order(self.wall_s * 1000.0 * f64::from(self.instances * CONCURRENCY))
    }

    fn serialized_share(&self) -> Option<f64> {
        let slot = self.slot_ms_per_order();
        self.serialized_ms_per_order()
            .filter(|_| slot > 0.0)
            .map(|s| s / slot)
    }

    /// Fenced writes per batch statement, when any batch was sent.
    fn writes_per_batch(&self) -> Option<f64> {
        match (self.batch_statements, self.batched_writes) {
            (Some(statements), Some(writes)) if statements > 0.0 => Some(writes / statements),
            _ => None,
        }
    }

    fn exactly_once(&self) -> bool {
        self.drained && self.duplicates == 0 && self.whmcs_orders == self.orders
    }

    fn json(&self) -> Value {
        json!({
            "scenario": self.name,
            "orders": self.orders,
            "instances": self.instances,
            "wallSeconds": self.wall_s,
            "activated": self.activated,
            "drained": self.drained,
            "ordersPerSecond": self.rate(),
            "provisionerCpuMs": self.prov_cpu_ms,
            "sandboxCpuMs": self.sandbox_cpu_ms,
            "provisionerCpuMsPerOrder": self.prov_ms_per_order(),
            "provisionerThreadCpuMsPerOrder": self
                .prov_threads_ms
                .iter()
                .map(|(name, ms)| (name.clone(), json!(self.per_order(*ms))))
                .collect::<serde_json::Map<String, Value>>(),
            "sandboxCpuMsPerOrder": self.sandbox_ms_per_order(),
            "databaseCpuMs": self.db_cpu_ms,
            "databaseCpuMsPerOrder": self.db_cpu_ms.map(|ms| self.per_order(ms)),
            "allCpuMsPerOrder": self.all_cpu_ms_per_order(),
            "cpusBusy": self.cpus_busy(),
            "peakRssKiB": self.peak_rss_kib,
            "serializedSeconds": self.serialized_s,
            "serializedMsPerOrder": self.serialized_ms_per_order(),
            "slotMsPerOrder": self.slot_ms_per_order(),
            "serializedShare": self.serialized_share(),
            "batchStatements": self.batch_statements,
            "batchedWrites": self.batched_writes,
            "writesPerBatch": self.writes_per_batch(),
            "provisionedMetric": self.provisioned_metric,
            "p50Ms": self.p50_ms,
            "p99Ms": self.p99_ms,
            "wall90Seconds": self.wall_90_s,
            "retries": self.retries,
            "whmcsOrders": self.whmcs_orders,
            "whmcsRefs": self.refs,
            "duplicates": self.duplicates,
            "broken": self.broken,
            "skipped": self.skipped,
        })
    }
}

/// Entry point: `args` are what follows `bench procs`.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    crate::cargo(&[
        "build",
        "--release",
        "--locked",
        "-p",
        "sf-sandbox",
        "-p",
        "provisioner",
    ])?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bins = Bins {
        sandbox: target.join("release").join("sf-sandbox"),
        provisioner: target.join("release").join("provisioner"),
        ticks: clock_ticks(),
    };
    let cpus = std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
        .unwrap_or(0);
    let mut outcomes = Vec::new();
    for (n, scenario) in scenarios(&options).into_iter().enumerate() {
        if !options.wants(scenario.name) {
            continue;
        }
        eprintln!(
            "xtask: == procs {}: {} orders, {} instance(s)",
            scenario.name,
            scenario.orders(),
            scenario.instances
        );
        let mut outcome = match run_scenario(&bins, &scenario, n) {
            Ok(outcome) => outcome,
            Err(e) => Outcome {
                name: scenario.name.to_owned(),
                orders: scenario.orders(),
                instances: scenario.instances,
                broken: Some(format!("{e:#}")),
                ..Outcome::default()
            },
        };
        outcome.cpus = cpus;
        if let Some(why) = outcome.broken.as_ref().or(outcome.skipped.as_ref()) {
            eprintln!("xtask: procs {}: {why}", outcome.name);
        }
        outcomes.push(outcome);
    }
    let mut report = table(&outcomes);
    if outcomes
        .iter()
        .any(|o| o.skipped.is_none() && o.name.starts_with("postgres"))
    {
        let _ = writeln!(
            report,
            "\nPostgreSQL: {}",
            match pg_socket_dir() {
                Some(dir) => format!("Unix socket in {dir}"),
                None => format!("TCP {PG_HOST}:{PG_PORT}"),
            }
        );
        report.push_str(&batches(&outcomes));
    }
    report.push_str(&threads(&outcomes));
    report.push_str(&tails(&outcomes));
    report.push('\n');
    report.push_str(&checks(&outcomes));
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(report.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing the table")?;
    drop(stdout);
    std::fs::create_dir_all(&target).context("creating the target directory")?;
    let md = target.join("bench-procs.md");
    std::fs::write(&md, &report).with_context(|| format!("writing {}", md.display()))?;
    let raw = json!({
        "clockTicksPerSecond": bins.ticks,
        "concurrency": CONCURRENCY,
        "cpus": cpus,
        "scenarios": outcomes.iter().map(Outcome::json).collect::<Vec<_>>(),
    });
    let json_path = target.join("bench-procs.json");
    std::fs::write(&json_path, format!("{raw:#}\n"))
        .with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!("xtask: wrote {} and {}", md.display(), json_path.display());
    let broken: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.broken.is_some())
        .map(|o| o.name.as_str())
        .collect();
    if !broken.is_empty() {
        bail!("scenario(s) broke: {}", broken.join(", "));
    }
    Ok(())
}

/// The binaries and the clock tick rate.
#[derive(Debug)]
struct Bins {
    sandbox: PathBuf,
    provisioner: PathBuf,
    ticks: u64,
}

/// `getconf CLK_TCK`, or 100 (Linux's USER_HZ) when that fails.
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// A child process killed (and reaped) when dropped, whatever path left the scope.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail when the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("waiting for a child")? {
            bail!(
                "{} exited ({status}); last log lines:\n{}",
                self.name,
                log_tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `within`; the exit code when it exited by itself.
    fn stop(&mut self, within: Duration) -> Option<i32> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.code();
        }
        // `kill` the command: no signal API without unsafe in std.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        eprintln!(
            "xtask: {} did not stop within {within:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A PostgreSQL database that exists until dropped.
#[derive(Debug)]
struct PgDb {
    name: String,
}

fn psql(sql: &str, db: &str) -> Result<String> {
    let out = Command::new("psql")
        .args([
            "-h",
            PG_HOST,
            "-p",
            PG_PORT,
            "-U",
            PG_USER,
            "-d",
            db,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!(
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl PgDb {
    /// Why PostgreSQL cannot be used here, if it cannot.
    fn unavailable() -> Option<String> {
        let found = Command::new("sh")
            .args(["-c", "command -v psql"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some("psql is not installed".to_owned());
        }
        match psql("SELECT 1", "postgres") {
            Ok(_) => None,
            Err(e) => Some(format!(
                "PostgreSQL at {PG_HOST}:{PG_PORT} (user {PG_USER}) is not reachable: {e:#}"
            )),
        }
    }

    /// Drops the databases of earlier runs whose harness is gone (interrupted before its
    /// guards ran: Ctrl-C kills the process without unwinding).
    fn drop_stale() {
        let Ok(names) = psql(
            r"SELECT datname FROM pg_database WHERE datname LIKE 'bench\_procs\_%'",
            "postgres",
        ) else {
            return;
        };
        for name in names.lines() {
            let pid = name
                .strip_prefix("bench_procs_")
                .and_then(|rest| rest.split('_').next());
            let alive = pid.is_some_and(|pid| Path::new("/proc").join(pid).exists());
            if !alive && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                eprintln!("xtask: dropping {name}, left by an interrupted run");
                let _ = psql(
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    "postgres",
                );
            }
        }
    }

    fn create(n: usize) -> Result<Self> {
        Self::drop_stale();
        let name = format!("bench_procs_{}_{n}", std::process::id());
        psql(&format!("DROP DATABASE IF EXISTS {name}"), "postgres")?;
        psql(&format!("CREATE DATABASE {name}"), "postgres")?;
        Ok(Self { name })
    }

    fn url(&self) -> String {
        match pg_socket_dir() {
            Some(dir) => format!(
                "postgres://{PG_USER}@localhost:{PG_PORT}/{}?host={dir}",
                self.name
            ),
            None => format!("postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{}", self.name),
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Err(e) = psql(
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            "postgres",
        ) {
            eprintln!("xtask: warning: dropping database {}: {e:#}", self.name);
        }
    }
}

/// The last `n` lines of a log file.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A `KEY=value` line as `sf-sandbox` prints it (single-quoted when the shell needs it).
fn parse_env_line(line: &str) -> Option<(String, String)> {
    let (key, value) = line.split_once('=')?;
    let value = match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(quoted) => quoted.replace(r"'\''", "'"),
        None => value.to_owned(),
    };
    Some((key.to_owned(), value))
}

/// Starts `sf-sandbox` and reads its announcement.
fn start_sandbox(
    bins: &Bins,
    scenario: &Scenario,
    dir: &Path,
) -> Result<(Proc, BTreeMap<String, String>)> {
    let mut args = vec![
        "--customers".to_owned(),
        scenario.customers.to_string(),
        "--orders-per-customer".to_owned(),
        scenario.per_customer.to_string(),
        "--publish".to_owned(),
    ];
    if let Some(rate) = scenario.rate {
        args.extend(["--publish-rate".to_owned(), rate.to_string()]);
    }
    if scenario.fault_rate > 0.0 {
        args.extend([
            "--fault-rate".to_owned(),
            scenario.fault_rate.to_string(),
            "--fault-seed".to_owned(),
            "1".to_owned(),
        ]);
    }
    let log = dir.join("sf-sandbox.log");
    let mut child = Command::new(&bins.sandbox)
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).context("creating the sandbox log")?)
        .spawn()
        .with_context(|| format!("starting {}", bins.sandbox.display()))?;
    let stdout = child.stdout.take().context("the sandbox's stdout")?;
    let mut proc = Proc {
        name: "sf-sandbox".to_owned(),
        child,
        log,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + SANDBOX_READY;
    let mut env = BTreeMap::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line == "# ready" => break,
            Ok(line) => {
                if let Some((k, v)) = parse_env_line(&line) {
                    env.insert(k, v);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                proc.check_alive()?;
                if Instant::now() > deadline {
                    bail!("sf-sandbox not ready within {SANDBOX_READY:?}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                proc.check_alive()?;
                bail!("sf-sandbox closed its stdout before `# ready`");
            }
        }
    }
    Ok((proc, env))
}

/// A free loopback port (bound, read, released).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr().context("a bound address")?.port())
}

/// `host:port` of an `http://host:port/...` URL.
fn authority(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url} is not an http:// URL"))?;
    Ok(rest.split('/').next().unwrap_or(rest).to_owned())
}

/// `GET http://<authority><path>` over HTTP/1.1: the status and the body.
fn http_get(authority: &str, path: &str) -> Result<(u16, String)> {
    let addr = authority
        .parse()
        .with_context(|| format!("{authority} is not host:port"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {authority}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .context("setting a read timeout")?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending GET {path}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: no HTTP header"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path}: no status"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// The payload of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn get_json(authority: &str, path: &str) -> Result<Value> {
    let (status, body) = http_get(authority, path)?;
    if status != 200 {
        bail!("GET {path}: {status} {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
}

/// utime+stime of a process, in clock ticks; `None` once it is gone.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_stat(&stat)?.ticks)
}

/// utime+stime of each thread of a process, in clock ticks, summed by thread name (a
/// runtime's workers share one); empty once the process is gone.
fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let stats = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| parse_stat(&stat));
    by_name(stats)
}

/// Ticks summed by command name.
fn by_name(stats: impl IntoIterator<Item = Stat>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for stat in stats {
        *out.entry(stat.comm).or_insert(0) += stat.ticks;
    }
    out
}

/// The CPU of the local PostgreSQL server, in clock ticks: each live process named `postgres`
/// (the postmaster, its backends and its background workers), and what the postmaster has
/// collected from its children that exited (a backend whose connection closed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServerCpu {
    /// utime+stime of each live `postgres` process, by pid and start time (a reused pid is
    /// another process).
    live: BTreeMap<(u32, u64), u64>,
    /// cutime+cstime of the postmaster: the `postgres` process whose parent is not one.
    reaped: u64,
}

impl ServerCpu {
    /// Reads `/proc`; `None` when no postmaster is visible (no local server).
    fn read() -> Option<Self> {
        let mut procs = BTreeMap::new();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue; // gone since the listing
            };
            if let Some(parsed) = parse_stat(&stat) {
                procs.insert(pid, parsed);
            }
        }
        Self::from_stats(&procs)
    }

    /// From parsed `/proc/<pid>/stat` lines, by pid.
    fn from_stats(procs: &BTreeMap<u32, Stat>) -> Option<Self> {
        let is_postgres = |pid: &u32| procs.get(pid).is_some_and(|p| p.comm == "postgres");
        let mut cpu = ServerCpu::default();
        let mut postmaster = false;
        for (pid, p) in procs.iter().filter(|(pid, _)| is_postgres(pid)) {
            cpu.live.insert((*pid, p.start), p.ticks);
            if !is_postgres(&p.ppid) {
                postmaster = true;
                cpu.reaped += p.children_ticks;
            }
        }
        postmaster.then_some(cpu)
    }

    /// Ticks the server used from `start` until `self`: what live processes added (all of it
    /// for those started since), plus what the postmaster collected since, less what the
    /// processes that exited in between had already used at `start`.
    fn since(&self, start: &ServerCpu) -> u64 {
        let live: u64 = self
            .live
            .iter()
            .map(|(key, ticks)| ticks.saturating_sub(start.live.get(key).copied().unwrap_or(0)))
            .sum();
        let exited_before: u64 = start
            .live
            .iter()
            .filter(|(key, _)| !self.live.contains_key(key))
            .map(|(_, ticks)| ticks)
            .sum();
        (live + self.reaped.saturating_sub(start.reaped)).saturating_sub(exited_before)
    }
}

/// What the harness reads of `/proc/<pid>/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    comm: String,
    ppid: u32,
    /// utime+stime.
    ticks: u64,
    /// cutime+cstime: the children it has waited for.
    children_ticks: u64,
    /// Start time after boot, in ticks.
    start: u64,
}

/// Parses a `/proc/<pid>/stat` line (the command name is in parentheses and may hold spaces
/// and parentheses itself).
fn parse_stat(stat: &str) -> Option<Stat> {
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    // After the name: state (field 3), ppid (4), ..., utime (14), stime (15), cutime (16),
    // cstime (17), ..., starttime (22).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        comm,
        ppid: u32::try_from(num(1)?).ok()?,
        ticks: num(11)? + num(12)?,
        children_ticks: num(13)? + num(14)?,
        start: num(19)?,
    })
}

/// A `kB` field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// The samples of `name` in a Prometheus text exposition, as (the labels inside the braces,
/// empty when there are none; the value). Comments, other names and unreadable values are
/// skipped.
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let value = value.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((labels, value))
        })
}

/// The samples of `name` summed by the value of their label `key` (samples without it left
/// out).
fn metric_by_label(text: &str, name: &str, key: &str) -> BTreeMap<String, f64> {
    let mut by = BTreeMap::new();
    for (labels, value) in samples(text, name) {
        let found = labels.split(',').find_map(|pair| {
            let (k, quoted) = pair.split_once('=')?;
            (k.trim() == key).then(|| quoted.trim().trim_matches('"').to_owned())
        });
        if let Some(label) = found {
            *by.entry(label).or_insert(0.0) += value;
        }
    }
    by
}

/// The sum of every sample of `name` (with `labels` inside its braces, if given) in a
/// Prometheus text exposition; `None` when there is none.
fn metric_sum(text: &str, name: &str, labels: Option<&str>) -> Option<f64> {
    samples(text, name)
        .filter(|(series, _)| labels.is_none_or(|want| series.contains(want)))
        .map(|(_, value)| value)
        .reduce(|a, b| a + b)
}

#[allow(clippy::cast_precision_loss)]
fn ticks_to_ms(ticks: u64, per_second: u64) -> f64 {
    ticks as f64 * 1000.0 / per_second as f64
}

fn run_scenario(bins: &Bins, scenario: &Scenario, n: usize) -> Result<Outcome> {
    let mut outcome = Outcome {
        name: scenario.name.to_owned(),
        orders: scenario.orders(),
        instances: scenario.instances,
        ..Outcome::default()
    };
    // Dropped in reverse: provisioners, then the sandbox, then the database, then the files.
    let dir = tempfile::Builder::new()
        .prefix("bench-procs-")
        .tempdir()
        .context("creating a temporary directory")?;
    let db = match scenario.store {
        Store::Sqlite => None,
        Store::Postgres => {
            if let Some(why) = PgDb::unavailable() {
                outcome.skipped = Some(why);
                return Ok(outcome);
            }
            Some(PgDb::create(n)?)
        }
    };
    let database_url = match &db {
        Some(db) => db.url(),
        None => format!("sqlite://{}/provisioner.db", dir.path().display()),
    };
    let seeding = Instant::now();
    let (mut sandbox, sandbox_env) = start_sandbox(bins, scenario, dir.path())?;
    eprintln!(
        "xtask: procs {}: sandbox seeded and ready in {:.1} s",
        scenario.name,
        seeding.elapsed().as_secs_f64()
    );
    let var = |key: &str| {
        sandbox_env
            .get(key)
            .cloned()
            .with_context(|| format!("sf-sandbox did not print {key}"))
    };
    let sf = authority(&var("SF_LOGIN_URL")?)?;
    let whmcs = authority(&var("WHMCS_API_URL")?)?;

    let mut ports = Vec::new();
    let mut provisioners: Vec<Proc> = Vec::new();
    let sandbox_cpu_before = cpu_ticks(sandbox.pid()).context("the sandbox's CPU time")?;
    let server_before = db.as_ref().and_then(|_| ServerCpu::read());
    let started = Instant::now();
    for i in 0..scenario.instances {
        let port = free_port()?;
        ports.push(port);
        let log = dir.path().join(format!("provisioner-{i}.log"));
        let child = Command::new(&bins.provisioner)
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&sandbox_env)
            .env("DATABASE_URL", &database_url)
            .env(
                "FIELD_ENCRYPTION_KEY",
                "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=",
            )
            .env("PORTAL_API_TOKEN", "bench-procs-portal-token-5b1d")
            .env("PROVISIONER_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("PROVISIONER_CONCURRENCY", CONCURRENCY.to_string())
            .env("CUSTOMER_PROVISION_RATE", "1000/second")
            .env("WHMCS_TIMEOUT", "2s")
            .env("WHMCS_ACCEPT_TIMEOUT", "2s")
            .env("WHMCS_SETTLE", "1s")
            .env("HTTP_IP_RATE", "100000/minute")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(File::create(&log).context("creating a provisioner log")?)
            .stderr(
                File::options()
                    .append(true)
                    .open(&log)
                    .context("opening a provisioner log")?,
            )
            .spawn()
            .with_context(|| format!("starting {}", bins.provisioner.display()))?;
        provisioners.push(Proc {
            name: format!("provisioner {i}"),
            child,
            log,
        });
    }

    // Poll until every Order is Activated, a process dies, or the cap.
    let total = scenario.orders();
    let deadline = started + scenario.cap;
    let mut last_report = Instant::now();
    loop {
        sandbox.check_alive()?;
        for p in &mut provisioners {
            p.check_alive()?;
        }
        let stats = get_json(&sf, "/sandbox/stats")?;
        outcome.activated = stats["activated"].as_u64().unwrap_or(0);
        if outcome.wall_90_s.is_none() && outcome.activated * 10 >= total * 9 {
            outcome.wall_90_s = Some(started.elapsed().as_secs_f64());
        }
        if outcome.activated >= total {
            outcome.drained = true;
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "xtask: procs {}: {}/{total} activated after {:.0} s",
                scenario.name,
                outcome.activated,
                started.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(POLL);
    }
    outcome.wall_s = started.elapsed().as_secs_f64();

    // Measured before anything stops.
    let mut prov_ticks = 0;
    for p in &provisioners {
        prov_ticks += cpu_ticks(p.pid()).context("a provisioner's CPU time")?;
        for (name, ticks) in thread_ticks(p.pid()) {
            *outcome.prov_threads_ms.entry(name).or_insert(0.0) += ticks_to_ms(ticks, bins.ticks);
        }
        outcome.peak_rss_kib = outcome
            .peak_rss_kib
            .max(status_kib(p.pid(), "VmHWM").unwrap_or(0));
    }
    let sandbox_ticks = cpu_ticks(sandbox.pid())
        .context("the sandbox's CPU time")?
        .saturating_sub(sandbox_cpu_before);
    outcome.prov_cpu_ms = ticks_to_ms(prov_ticks, bins.ticks);
    outcome.sandbox_cpu_ms = ticks_to_ms(sandbox_ticks, bins.ticks);
    outcome.db_cpu_ms = server_before
        .and_then(|before| Some(ServerCpu::read()?.since(&before)))
        .map(|ticks| ticks_to_ms(ticks, bins.ticks));
    for port in &ports {
        let (status, text) = http_get(&format!("127.0.0.1:{port}"), "/metrics")?;
        if status != 200 {
            bail!("GET /metrics of the provisioner on port {port}: {status}");
        }
        for (code, n) in metric_by_label(&text, "provisioner_retries_total", "error") {
            *outcome.retries.entry(code).or_insert(0.0) += n;
        }
        if let Some(s) = metric_sum(&text, "provisioner_store_serialized_seconds", None) {
            *outcome.serialized_s.get_or_insert(0.0) += s;
        }
        if let Some(v) = metric_sum(&text, "provisioner_store_batch_statements_total", None) {
            *outcome.batch_statements.get_or_insert(0.0) += v;
        }
        if let Some(v) = metric_sum(&text, "provisioner_store_batched_writes_total", None) {
            *outcome.batched_writes.get_or_insert(0.0) += v;
        }
        if let Some(v) = metric_sum(
            &text,
            "provisioner_jobs_total",
            Some(r#"outcome="provisioned""#),
        ) {
            *outcome.provisioned_metric.get_or_insert(0.0) += v;
        }
    }
    let latencies = get_json(&sf, "/sandbox/stats?latencies=true")?;
    if scenario.rate.is_some() {
        outcome.p50_ms = latencies["p50Ms"].as_f64();
        outcome.p99_ms = latencies["p99Ms"].as_f64();
    }

    // Stop the provisioners, then count WHMCS orders: anything committed while stopping shows.
    let mut exits = Vec::new();
    for p in &mut provisioners {
        exits.push(p.stop(STOP_WITHIN));
    }
    let counts = get_json(&whmcs, "/sandbox/stats")?;
    outcome.whmcs_orders = counts["orders"].as_u64().unwrap_or(0);
    outcome.refs = counts["refs"].as_u64().unwrap_or(0);
    outcome.duplicates = counts["duplicates"].as_u64().unwrap_or(0);
    let _ = sandbox.stop(STOP_WITHIN);

    let mut problems = Vec::new();
    if !outcome.drained {
        problems.push(format!(
            "did not drain: {}/{total} in {:.0} s",
            outcome.activated, outcome.wall_s
        ));
    }
    if outcome.duplicates > 0 {
        problems.push(format!("{} duplicate WHMCS order(s)", outcome.duplicates));
    }
    if outcome.drained && outcome.whmcs_orders != total {
        problems.push(format!(
            "{} WHMCS orders for {total} Salesforce Orders",
            outcome.whmcs_orders
        ));
    }
    for (i, code) in exits.iter().enumerate() {
        if *code != Some(0) {
            problems.push(format!("provisioner {i} stopped with {code:?}"));
        }
    }
    drop(provisioners);
    drop(sandbox);
    drop(db);
    if problems.is_empty() {
        drop(dir);
    } else {
        // The logs and the SQLite file of a broken run are worth a look.
        let kept = dir.keep();
        problems.push(format!("logs kept in {}", kept.display()));
        outcome.broken = Some(problems.join("; "));
    }
    Ok(outcome)
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
}

/// A share as a whole percentage, `n/a` when unknown.
fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "n/a".to_owned(), |s| format!("{:.0}%", s * 100.0))
}

/// How much more (or less) CPU per Order the sandbox used in `two` (two instances) than in
/// `one`, as `+34% (0.570 -> 0.764 ms)`. The sandbox answers the same requests per Order
/// however many provisioners send them, so a change in it comes from the machine (more
/// processes sharing its CPUs), not from work the second instance asked of the sandbox.
fn sandbox_rise(one: &Outcome, two: &Outcome) -> String {
    let (a, b) = (one.sandbox_ms_per_order(), two.sandbox_ms_per_order());
    if a > 0.0 {
        format!("{:+.0}% ({a:.3} -> {b:.3} ms)", (b / a - 1.0) * 100.0)
    } else {
        "n/a".to_owned()
    }
}

/// The markdown table.
fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | orders | wall s | orders/s | prov CPU ms/order | sandbox CPU ms/order | \
         prov/sandbox CPU | PostgreSQL CPU ms/order | all CPU ms/order | CPUs busy | \
         prov peak RSS MiB | serialized ms/order (share) | p50 / p99 ms | duplicates |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        if let Some(why) = &o.skipped {
            let _ = writeln!(
                out,
                "| {} | {} | skipped: {why} ||||||||||||",
                o.name, o.orders
            );
            continue;
        }
        if o.wall_s <= 0.0 {
            let why = o.broken.as_deref().unwrap_or("did not run");
            let _ = writeln!(
                out,
                "| {} | {} | broke: {} ||||||||||||",
                o.name,
                o.orders,
                why.lines().next().unwrap_or(why)
            );
            continue;
        }
        let prov = o.prov_ms_per_order();
        let sandbox = o.sandbox_ms_per_order();
        let ratio = if sandbox > 0.0 {
            format!("{:.2}", prov / sandbox)
        } else {
            "n/a".to_owned()
        };
        let rate = if o.drained {
            format!("{:.0}", o.rate())
        } else {
            format!(
                "did not drain: {}/{} in {:.0} s",
                o.activated, o.orders, o.wall_s
            )
        };
        let serialized = match (o.serialized_ms_per_order(), o.serialized_share()) {
            (Some(ms), Some(share)) => format!("{ms:.3} ({:.1}%)", share * 100.0),
            _ => "n/a".to_owned(),
        };
        let latency = if o.p50_ms.is_some() || o.p99_ms.is_some() {
            format!("{} / {}", opt(o.p50_ms, 1), opt(o.p99_ms, 1))
        } else {
            String::new()
        };
        let db = match o.db_cpu_ms {
            Some(ms) => format!("{:.3}", o.per_order(ms)),
            None if o.name.starts_with("postgres") => "n/a".to_owned(),
            None => String::new(),
        };
        let all = o.all_cpu_ms_per_order();
        let busy = percent(o.cpus_busy());
        #[allow(clippy::cast_precision_loss)]
        let rss = o.peak_rss_kib as f64 / 1024.0;
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {rate} | {prov:.3} | {sandbox:.3} | {ratio} | {db} | {all:.3} | \
             {busy} | {rss:.1} | {serialized} | {latency} | {} |",
            o.name, o.orders, o.wall_s, o.duplicates
        );
    }
    out
}

/// PostgreSQL's batched fenced writes, one line per scenario that sent any: how many writes a
/// statement carried on average.
fn batches(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        if let (Some(per), Some(statements)) = (o.writes_per_batch(), o.batch_statements) {
            let _ = writeln!(
                out,
                "- {}: {per:.2} fenced writes per batch statement ({statements:.0} statements)",
                o.name
            );
        }
    }
    out
}

/// The provisioners' CPU per Order by thread, one line per scenario that ran: which part of
/// the process (the runtime's workers, the SQLite writer, ...) the CPU of check (1) went to.
fn threads(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for o in outcomes.iter().filter(|o| !o.prov_threads_ms.is_empty()) {
        let parts: Vec<String> = o
            .prov_threads_ms
            .iter()
            .filter(|(_, ms)| **ms > 0.0)
            .map(|(name, ms)| format!("{name} {:.3}", o.per_order(*ms)))
            .collect();
        if out.is_empty() {
            out.push_str(
                "\nProvisioner CPU ms/order by thread (threads that used none left out):\n",
            );
        }
        let _ = writeln!(out, "- {}: {}", o.name, parts.join(", "));
    }
    out
}

/// How each scenario's last tenth went, one line per scenario that ran: when 90% of its
/// Orders were activated against when all were, and the retries the provisioners scheduled
/// by error code. A faulty run's tail is its Orders that lost several answers in a row;
/// the codes say whether they waited for a retry's backoff or for the settle rule.
fn tails(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for o in outcomes
        .iter()
        .filter(|o| o.skipped.is_none() && o.wall_s > 0.0)
    {
        let Some(ninety) = o.wall_90_s else {
            continue;
        };
        if out.is_empty() {
            out.push_str(
                "\nThe last tenth (90% of the Orders activated at, all at; retries scheduled by \
                 error code):\n",
            );
        }
        let mut codes: Vec<(&String, &f64)> = o.retries.iter().filter(|(_, n)| **n > 0.0).collect();
        codes.sort_by(|a, b| b.1.total_cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let retries = if codes.is_empty() {
            "no retries".to_owned()
        } else {
            codes
                .iter()
                .map(|(code, n)| format!("{code} {n:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "- {}: 90% at {ninety:.1} s, all at {:.1} s; {retries}",
            o.name, o.wall_s
        );
    }
    out
}

/// The Done-when checks, one PASS/FAIL/N/A line each.
fn checks(outcomes: &[Outcome]) -> String {
    let get = |name: &str| {
        outcomes
            .iter()
            .find(|o| o.name == name && o.skipped.is_none() && o.wall_s > 0.0)
    };
    let mut out = String::new();
    let mut line = |n: u32, text: &str, verdict: Option<bool>| {
        let word = match verdict {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "N/A ",
        };
        let _ = writeln!(out, "{word} ({n}) {text}");
    };
    let sqlite = get("sqlite-1");
    let pg1 = get("postgres-1");
    let pg2 = get("postgres-2");
    match sqlite {
        Some(s) => line(
            1,
            &format!(
                "sqlite-1: provisioner CPU/order {:.3} ms <= sandbox CPU/order {:.3} ms",
                s.prov_ms_per_order(),
                s.sandbox_ms_per_order()
            ),
            Some(s.drained && s.prov_cpu_ms <= s.sandbox_cpu_ms),
        ),
        None => line(
            1,
            "sqlite-1 provisioner CPU/order <= sandbox CPU/order",
            None,
        ),
    }
    match (sqlite, pg1) {
        (Some(s), Some(p)) => line(
            2,
            &format!(
                "postgres-1 {:.0}/s >= 60% of sqlite-1 {:.0}/s ({:.0}%)",
                p.rate(),
                s.rate(),
                100.0 * p.rate() / s.rate().max(f64::MIN_POSITIVE)
            ),
            Some(p.drained && s.drained && p.rate() >= 0.6 * s.rate()),
        ),
        _ => line(2, "postgres-1 >= 60% of sqlite-1 orders/s", None),
    }
    match (pg1, pg2) {
        (Some(p1), Some(p2)) => {
            let share = p2.serialized_share();
            line(
                3,
                &format!(
                    "postgres-2 {:.0}/s >= postgres-1 {:.0}/s, serialized {} of per-order time \
                     (<= 5%); CPUs busy {} and {}; sandbox CPU/order {}",
                    p2.rate(),
                    p1.rate(),
                    share.map_or_else(|| "n/a".to_owned(), |s| format!("{:.1}%", s * 100.0)),
                    percent(p2.cpus_busy()),
                    percent(p1.cpus_busy()),
                    sandbox_rise(p1, p2),
                ),
                share.map(|s| p2.drained && p2.rate() >= p1.rate() && s <= 0.05),
            );
        }
        _ => line(
            3,
            "postgres-2 >= postgres-1 orders/s and serialized <= 5%",
            None,
        ),
    }
    match get("backlog-100k") {
        Some(b) => {
            #[allow(clippy::cast_precision_loss)]
            let mib = b.peak_rss_kib as f64 / 1024.0;
            line(
                4,
                &format!(
                    "backlog-100k ({} orders): exactly once {}, {:.0}/s >= 1000/s, peak RSS \
                     {mib:.1} MiB <= 64 MiB",
                    b.orders,
                    if b.exactly_once() { "yes" } else { "NO" },
                    b.rate()
                ),
                Some(b.exactly_once() && b.rate() >= 1000.0 && b.peak_rss_kib <= 64 * 1024),
            );
        }
        None => line(4, "backlog-100k exactly once, >= 1000/s, <= 64 MiB", None),
    }
    match get("paced-500") {
        Some(p) => line(
            5,
            &format!("paced-500: p99 {} ms <= 25 ms", opt(p.p99_ms, 1)),
            p.p99_ms.map(|v| p.drained && v <= 25.0),
        ),
        None => line(5, "paced-500 p99 <= 25 ms", None),
    }
    match (get("clean-10k"), get("faults-0.05")) {
        (Some(c), Some(f)) => line(
            6,
            &format!(
                "faults-0.05 {}/s >= 50% of clean-10k {:.0}/s ({}), duplicates {}",
                if f.drained {
                    format!("{:.0}", f.rate())
                } else {
                    format!("did not drain ({}/{})", f.activated, f.orders)
                },
                c.rate(),
                if c.rate() > 0.0 {
                    format!("{:.0}%", 100.0 * f.rate() / c.rate())
                } else {
                    "n/a".to_owned()
                },
                f.duplicates
            ),
            Some(f.drained && c.drained && f.duplicates == 0 && f.rate() >= 0.5 * c.rate()),
        ),
        _ => line(
            6,
            "faults-0.05 >= 50% of clean-10k orders/s, 0 duplicates",
            None,
        ),
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn env_lines_are_unquoted_like_a_shell_would() {
        assert_eq!(
            parse_env_line("SF_LOGIN_URL=http://127.0.0.1:4000"),
            Some(("SF_LOGIN_URL".into(), "http://127.0.0.1:4000".into()))
        );
        assert_eq!(
            parse_env_line(r"WHMCS_API_SECRET='it'\''s a $ecret'"),
            Some(("WHMCS_API_SECRET".into(), "it's a $ecret".into()))
        );
        assert_eq!(
            parse_env_line("EMPTY=''"),
            Some(("EMPTY".into(), String::new()))
        );
        assert_eq!(parse_env_line("# ready"), None);
    }

    #[test]
    fn metrics_are_summed_over_series_and_filtered_by_label() {
        let text = "# HELP provisioner_jobs_total jobs\n\
                    # TYPE provisioner_jobs_total counter\n\
                    provisioner_jobs_total{outcome=\"provisioned\"} 4990\n\
                    provisioner_jobs_total{outcome=\"failed\"} 3\n\
                    provisioner_jobs_total_other 7\n\
                    provisioner_store_serialized_seconds{op=\"claim\"} 1.5\n\
                    provisioner_store_serialized_seconds{op=\"intake\"} 0.25\n";
        assert_eq!(
            metric_sum(
                text,
                "provisioner_jobs_total",
                Some(r#"outcome="provisioned""#)
            ),
            Some(4990.0)
        );
        assert_eq!(
            metric_sum(text, "provisioner_jobs_total", None),
            Some(4993.0)
        );
        assert_eq!(
            metric_sum(text, "provisioner_store_serialized_seconds", None),
            Some(1.75)
        );
        assert_eq!(metric_sum(text, "absent_total", None), None);
        assert_eq!(
            metric_sum("plain_total 2\n", "plain_total", None),
            Some(2.0)
        );
    }

    #[test]
    fn chunked_bodies_are_reassembled() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
        assert_eq!(dechunk("zz\r\n"), "");
    }

    #[test]
    fn options_set_sizes_and_pick_scenarios() {
        let args: Vec<String> = ["--orders", "1_000", "--only", "sqlite-1,paced-500"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let o = Options::parse(&args).unwrap();
        assert!(o.wants("sqlite-1") && o.wants("paced-500") && !o.wants("postgres-1"));
        let all = scenarios(&o);
        let sqlite = all.iter().find(|s| s.name == "sqlite-1").unwrap();
        assert_eq!((sqlite.customers, sqlite.per_customer), (40, 25));
        let paced = all.iter().find(|s| s.name == "paced-500").unwrap();
        assert_eq!((paced.orders(), paced.rate), (5_000, Some(500)));
        let faults = all.iter().find(|s| s.name == "faults-0.05").unwrap();
        assert_eq!((faults.customers, faults.per_customer), (100, 100));
        assert!(Options::parse(&["--only".to_owned(), "nope".to_owned()]).is_err());
        assert!(Options::parse(&["--orders".to_owned(), "0".to_owned()]).is_err());
        assert!(Options::parse(&["--orders".to_owned()]).is_err());
    }

    #[test]
    fn per_order_time_and_serialized_share() {
        let o = Outcome {
            orders: 1_000,
            instances: 2,
            wall_s: 1.0,
            activated: 1_000,
            drained: true,
            serialized_s: Some(1.6),
            ..Outcome::default()
        };
        // 1 s × 2 instances × 16 slots / 1,000 orders = 32 ms of slot time per order
        assert!((o.slot_ms_per_order() - 32.0).abs() < 1e-9);
        assert!((o.serialized_ms_per_order().unwrap() - 1.6).abs() < 1e-9);
        assert!((o.serialized_share().unwrap() - 0.05).abs() < 1e-9);
        assert!((o.rate() - 1_000.0).abs() < 1e-9);
    }

    #[test]
    fn checks_say_fail_for_a_missed_bar_and_na_for_what_did_not_run() {
        let run = |name: &str, rate_wall: f64, prov: f64, sandbox: f64| Outcome {
            name: name.to_owned(),
            orders: 1_000,
            instances: 1,
            wall_s: rate_wall,
            activated: 1_000,
            drained: true,
            whmcs_orders: 1_000,
            prov_cpu_ms: prov,
            sandbox_cpu_ms: sandbox,
            ..Outcome::default()
        };
        let text = checks(&[
            run("sqlite-1", 1.0, 500.0, 400.0),
            run("postgres-1", 1.5, 500.0, 400.0),
        ]);
        assert!(text.contains("FAIL (1)"), "{text}");
        assert!(text.contains("PASS (2)"), "{text}");
        assert!(text.contains("N/A  (3)"), "{text}");
        assert!(text.contains("N/A  (6)"), "{text}");
    }

    fn stat(comm: &str, ppid: u32, ticks: u64, children: u64, start: u64) -> Stat {
        Stat {
            comm: comm.to_owned(),
            ppid,
            ticks,
            children_ticks: children,
            start,
        }
    }

    #[test]
    fn batches_are_reported_as_writes_per_statement() {
        let metrics = "provisioner_store_batch_statements_total 400\n\
                       provisioner_store_batched_writes_total 920\n";
        let pg = Outcome {
            name: "postgres-1".to_owned(),
            batch_statements: metric_sum(metrics, "provisioner_store_batch_statements_total", None),
            batched_writes: metric_sum(metrics, "provisioner_store_batched_writes_total", None),
            ..Outcome::default()
        };
        assert!((pg.writes_per_batch().unwrap() - 2.3).abs() < 1e-9);
        let none_sent = Outcome {
            name: "postgres-2".to_owned(),
            batch_statements: Some(0.0),
            batched_writes: Some(0.0),
            ..Outcome::default()
        };
        assert_eq!(none_sent.writes_per_batch(), None);
        let text = batches(&[pg.clone(), none_sent, Outcome::default()]);
        assert_eq!(
            text,
            "- postgres-1: 2.30 fenced writes per batch statement (400 statements)\n"
        );
        assert_eq!(pg.json()["writesPerBatch"], json!(pg.writes_per_batch()));
    }

    #[test]
    fn the_last_tenth_is_reported_with_the_retries_by_code() {
        let metrics = "# TYPE provisioner_retries_total counter\n\
                       provisioner_retries_total{error=\"whmcs_transient\"} 51\n\
                       provisioner_retries_total{error=\"outcome_settling\",x=\"1\"} 1051\n\
                       provisioner_retries_total{error=\"whmcs_unknown_outcome\"} 1509\n\
                       provisioner_retries_total{error=\"whmcs_transient\"} 9\n\
                       provisioner_retries_total 7\n\
                       provisioner_retries_totally{error=\"no\"} 3\n";
        let retries = metric_by_label(metrics, "provisioner_retries_total", "error");
        assert_eq!(
            retries.into_iter().collect::<Vec<_>>(),
            vec![
                ("outcome_settling".to_owned(), 1051.0),
                ("whmcs_transient".to_owned(), 60.0),
                ("whmcs_unknown_outcome".to_owned(), 1509.0),
            ]
        );
        let faults = Outcome {
            name: "faults-0.05".to_owned(),
            wall_s: 23.5,
            wall_90_s: Some(11.94),
            retries: metric_by_label(metrics, "provisioner_retries_total", "error"),
            ..Outcome::default()
        };
        let clean = Outcome {
            name: "clean-10k".to_owned(),
            wall_s: 15.7,
            wall_90_s: Some(13.9),
            ..Outcome::default()
        };
        let unfinished = Outcome {
            name: "sqlite-1".to_owned(),
            wall_s: 3.0,
            ..Outcome::default()
        };
        let text = tails(&[clean, faults.clone(), unfinished]);
        assert!(
            text.ends_with(
                "- clean-10k: 90% at 13.9 s, all at 15.7 s; no retries\n\
                 - faults-0.05: 90% at 11.9 s, all at 23.5 s; whmcs_unknown_outcome 1509, \
                 outcome_settling 1051, whmcs_transient 60\n"
            ),
            "{text}"
        );
        assert_eq!(faults.json()["retries"]["outcome_settling"], json!(1051.0));
        assert_eq!(faults.json()["wall90Seconds"], json!(11.94));
        assert_eq!(tails(&[Outcome::default()]), "");
    }

    #[test]
    fn threads_are_summed_by_name_and_reported_per_order() {
        let ticks = by_name([
            stat("tokio-rt-worker", 1, 30, 0, 5),
            stat("sqlite-writer", 1, 20, 0, 5),
            stat("tokio-rt-worker", 1, 12, 0, 6),
            stat("provisioner", 1, 0, 0, 4),
        ]);
        assert_eq!(ticks["tokio-rt-worker"], 42);
        assert_eq!(ticks["sqlite-writer"], 20);
        assert_eq!(ticks["provisioner"], 0);
        // This process's own threads are readable, and at least one of them has a name.
        assert!(!thread_ticks(std::process::id()).is_empty());
        let o = Outcome {
            name: "sqlite-1".to_owned(),
            orders: 1_000,
            prov_threads_ms: ticks
                .iter()
                .map(|(name, t)| (name.clone(), ticks_to_ms(*t, 100)))
                .collect(),
            ..Outcome::default()
        };
        let text = threads(&[o.clone(), Outcome::default()]);
        assert!(
            text.contains("- sqlite-1: sqlite-writer 0.200, tokio-rt-worker 0.420\n"),
            "{text}"
        );
        assert_eq!(text.matches("\n- ").count(), 1, "{text}");
        assert_eq!(
            o.json()["provisionerThreadCpuMsPerOrder"]["sqlite-writer"],
            json!(0.2)
        );
    }

    #[test]
    fn stat_lines_are_read_past_a_name_with_spaces_and_parentheses() {
        let line = "4242 (odd) name) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    30 12 5 2 20 0 1 0 98765 1000 200 18446744073709551615";
        assert_eq!(parse_stat(line), Some(stat("odd) name", 17, 42, 7, 98765)));
        assert_eq!(parse_stat("4242 (short) S 1 2"), None);
        assert_eq!(parse_stat("no parentheses"), None);
    }

    #[test]
    fn the_server_cpu_counts_backends_that_came_and_went_during_the_run() {
        let procs = |list: &[(u32, Stat)]| list.iter().cloned().collect::<BTreeMap<_, _>>();
        let before = ServerCpu::from_stats(&procs(&[
            (1, stat("systemd", 0, 999, 999, 1)),
            (100, stat("postgres", 1, 50, 400, 10)), // the postmaster
            (101, stat("postgres", 100, 30, 0, 11)), // a background writer
            (102, stat("postgres", 100, 20, 0, 12)), // a backend that will exit
            (103, stat("postgres", 100, 5, 0, 13)),  // its pid will be reused
            (200, stat("sf-sandbox", 1, 777, 0, 20)),
        ]))
        .unwrap();
        let after = ServerCpu::from_stats(&procs(&[
            (1, stat("systemd", 0, 1999, 1999, 1)),
            (100, stat("postgres", 1, 51, 400 + 25 + 9, 10)), // reaped 102 (25) and 103 (9)
            (101, stat("postgres", 100, 34, 0, 11)),
            (103, stat("postgres", 100, 3, 0, 50)), // another process with pid 103
            (104, stat("postgres", 100, 60, 0, 51)), // a backend of the run
        ]))
        .unwrap();
        // postmaster +1, writer +4, 102 +5 (25 - 20), old 103 +4 (9 - 5), new 103 3, 104 60
        assert_eq!(after.since(&before), 1 + 4 + 5 + 4 + 3 + 60);
        // Nothing named postgres, or no postmaster among them: no local server to measure.
        assert_eq!(
            ServerCpu::from_stats(&procs(&[(1, stat("systemd", 0, 1, 1, 1))])),
            None
        );
        assert_eq!(
            ServerCpu::from_stats(&procs(&[
                (100, stat("postgres", 101, 1, 1, 1)),
                (101, stat("postgres", 100, 1, 1, 1)),
            ])),
            None
        );
    }

    #[test]
    fn the_table_shows_the_server_cpu_the_sum_of_every_process_and_the_cpus_busy() {
        let run = |name: &str, db: Option<f64>| Outcome {
            name: name.to_owned(),
            orders: 1_000,
            instances: 1,
            wall_s: 2.0,
            activated: 1_000,
            drained: true,
            whmcs_orders: 1_000,
            prov_cpu_ms: 1_000.0,
            sandbox_cpu_ms: 800.0,
            db_cpu_ms: db,
            cpus: 2,
            ..Outcome::default()
        };
        let unknown_cpus = Outcome {
            cpus: 0,
            ..run("postgres-2", None)
        };
        let skipped = Outcome {
            skipped: Some("no server".to_owned()),
            ..run("postgres-2", None)
        };
        let text = table(&[
            run("sqlite-1", None),
            run("postgres-1", Some(1_600.0)),
            unknown_cpus,
            skipped,
        ]);
        let rows: Vec<&str> = text.lines().collect();
        fn cells(row: &str) -> Vec<&str> {
            row.split('|').map(str::trim).collect()
        }
        assert_eq!(cells(rows[0])[8], "PostgreSQL CPU ms/order");
        assert_eq!(cells(rows[0])[9], "all CPU ms/order");
        assert_eq!(cells(rows[0])[10], "CPUs busy");
        assert_eq!(cells(rows[0])[11], "prov peak RSS MiB");
        assert!(
            rows.iter().all(|r| cells(r).len() == cells(rows[0]).len()),
            "{text}"
        );
        // 1,800 ms of CPU in 2 s on 2 CPUs: 45%; with the server's 1,600 ms, 85%.
        assert_eq!(&cells(rows[2])[8..11], ["", "1.800", "45%"]);
        assert_eq!(&cells(rows[3])[8..11], ["1.600", "3.400", "85%"]);
        assert_eq!(&cells(rows[4])[8..11], ["n/a", "1.800", "n/a"]);
        assert!(cells(rows[5])[3].starts_with("skipped"), "{text}");
    }

    #[test]
    fn check_3_says_how_busy_the_cpus_were_and_how_the_sandbox_cost_moved() {
        let run = |name: &str, instances: u32, wall_s: f64, db: f64| Outcome {
            name: name.to_owned(),
            orders: 1_000,
            instances,
            wall_s,
            activated: 1_000,
            drained: true,
            whmcs_orders: 1_000,
            prov_cpu_ms: 500.0,
            sandbox_cpu_ms: 600.0,
            db_cpu_ms: Some(db),
            serialized_s: Some(0.0),
            cpus: 2,
            ..Outcome::default()
        };
        // One instance: 1,640 ms in 1 s on 2 CPUs (82%); two: 2,050 ms in 1.25 s (82%), slower,
        // and the sandbox's 600 ms became 750 ms for the same Orders (+25%).
        let text = checks(&[
            run("postgres-1", 1, 1.0, 540.0),
            Outcome {
                prov_cpu_ms: 350.0,
                sandbox_cpu_ms: 750.0,
                ..run("postgres-2", 2, 1.25, 950.0)
            },
        ]);
        let line = text
            .lines()
            .find(|l| l.contains("(3)"))
            .expect("a line for check 3");
        assert!(
            line.starts_with("FAIL (3) postgres-2 800/s >= postgres-1 1000/s"),
            "{line}"
        );
        assert!(
            line.ends_with("; CPUs busy 82% and 82%; sandbox CPU/order +25% (0.600 -> 0.750 ms)"),
            "{line}"
        );
        let idle = Outcome {
            sandbox_cpu_ms: 0.0,
            ..run("postgres-1", 1, 1.0, 540.0)
        };
        assert_eq!(sandbox_rise(&idle, &run("postgres-2", 2, 1.0, 0.0)), "n/a");
        assert_eq!(
            sandbox_rise(&run("postgres-1", 1, 1.0, 0.0), &idle),
            "-100% (0.600 -> 0.000 ms)"
        );
        let o = run("postgres-1", 1, 1.0, 540.0);
        assert!((o.cpus_busy().unwrap() - 0.82).abs() < 1e-9);
        assert_eq!(Outcome { wall_s: 0.0, ..o }.cpus_busy(), None);
    }
}
