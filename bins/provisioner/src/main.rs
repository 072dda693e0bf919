//! `provisioner`: the service and its operator commands (README, Operations).
//!
//! Thin: parse the command line and configuration, set up logging, run one command, map the
//! outcome to an exit code (0 ok, 1 runtime failure, 2 bad usage or configuration) and print
//! error chains with `{:#}`.

use std::process::ExitCode;

use clap::Parser;

mod app;
mod cli;
mod config;
mod demo;
mod doctor;
mod events;
mod intake;
mod jobs_cmd;
mod ops;
mod otel;

use cli::{Command, Failure};

/// mimalloc instead of the system allocator: the service allocates many small, short-lived
/// buffers from every worker thread (HTTP bodies, JSON, SQL arguments); with it the process
/// spends 11% less CPU per order, for 18-19 MiB more resident memory (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(err)) => {
            eprintln!("provisioner: configuration error: {err:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(err)) => {
            eprintln!("provisioner: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: cli::Cli) -> Result<(), Failure> {
    let sources = config::Sources::load(cli.config.as_deref());
    let command = cli.command.unwrap_or(Command::Run);
    let mut parsed = config::Config::parse(&sources);
    let threads = worker_threads();
    if let Err(e) = &threads {
        let problem = format!("{e:#}");
        match &mut parsed {
            Ok(_) => parsed = Err(vec![problem]),
            Err(errors) => errors.push(problem),
        }
    }
    if let Command::Config(cli::ConfigCommand::Check) = command {
        let set = threads.ok().flatten();
        return ops::config_check(&sources, parsed, |store_url| run_workers(set, store_url));
    }
    let config = parsed.map_err(|errors| Failure::Usage(anyhow::anyhow!(errors.join("; "))))?;
    let default_filter = match command {
        Command::Run => "info",
        Command::Demo(_) => "error",
        _ => "warn",
    };
    let set = threads.map_err(Failure::Usage)?;
    let (workers, one_thread) = if matches!(command, Command::Run) {
        let store_url = secrecy::ExposeSecret::expose_secret(&config.database_url);
        let n = run_workers(set, store_url).0;
        (Some(n), n == 1)
    } else {
        (set, false)
    };
    let runtime = build_runtime(workers, one_thread)
        .map_err(|e| Failure::Runtime(anyhow::Error::new(e).context("starting the runtime")))?;
    // Spans are exported by `run` only, and only with OTEL_EXPORTER_OTLP_ENDPOINT set; the
    // exporter's batch task lives on the runtime, so it is built inside it.
    let otel = match command {
        Command::Run => {
            let _entered = runtime.enter();
            otel::layer(config.otlp_endpoint.as_deref(), &config.service_name)
                .map_err(Failure::Usage)?
        }
        _ => None,
    };
    let (otel_layer, exporting) = otel.unzip();
    cli::init_logging(config.log_format, default_filter, otel_layer);
    if let Some(exporting) = &exporting {
        tracing::info!(
            service_name = %config.service_name,
            "exporting traces over OTLP to {}",
            exporting.endpoint()
        );
    }
    runtime.block_on(async move {
        let outcome = match command {
            Command::Run => app::run(config).await,
            Command::Demo(args) => demo::demo(args).await,
            Command::Events(cli::EventsCommand::Tail(args)) => events::tail(&config, args).await,
            Command::Audit(c) => ops::audit(&config, c).await,
            Command::Keys(c) => ops::keys(&config, c).await,
            Command::Dlq(c) => ops::dlq(&config, c).await,
            Command::Jobs(c) => jobs_cmd::jobs(&config, c).await,
            Command::Reconcile => ops::reconcile(&config).await,
            Command::Migrate => ops::migrate(&config).await,
            Command::Backup(args) => ops::backup(&config, args).await,
            Command::Doctor => doctor::doctor(&config).await,
            Command::Config(_) => Ok(()),
        };
        // The exporter's shutdown blocks until its export task, a task of this runtime, has
        // sent the last spans: it waits on a blocking thread while the runtime runs that task
        // (on a current-thread runtime, this thread runs it while awaiting).
        if let Some(exporting) = exporting
            && tokio::task::spawn_blocking(move || exporting.shutdown())
                .await
                .is_err()
        {
            tracing::warn!("OTLP exporter shutdown did not finish; some spans may be lost");
        }
        outcome
    })
}

/// The runtime a command runs on: with `one_thread`, a current-thread runtime, whose one
/// thread (the one that calls `block_on`, here the main thread) runs every task; else a
/// multi-thread runtime with `workers` worker threads (one per CPU when `None`).
///
/// `run` with one worker takes the current-thread runtime: a multi-thread runtime with one
/// worker has the same one thread for the tasks, plus the work-stealing scheduler's
/// bookkeeping and a main thread parked beside it. Measured (README, Performance), eight
/// alternating pairs of the process benchmark's SQLite run: 5% less CPU per order, 3.7% more
/// orders per second.
fn build_runtime(
    workers: Option<usize>,
    one_thread: bool,
) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if one_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = workers {
            builder.worker_threads(n);
        }
        builder
    };
    builder.enable_all().build()
}

/// How many runtime worker threads `run` starts, and why: `set` (`TOKIO_WORKER_THREADS`) when
/// given; else one per CPU but one, at least one, with a SQLite store or a PostgreSQL server on
/// this machine; else one per CPU.
///
/// A SQLite store's writer is busy whenever jobs are: with more than one worker it runs on a
/// thread of its own (`sqlite-writer`), and a worker per CPU beside it made the threads take
/// CPUs from each other and wake each other across CPUs. Measured on 2 CPUs (one worker
/// instead of two), the service spent 8-19% less CPU per order at the same or higher
/// throughput (README, Performance); with that one worker the writer is a task on it (see
/// the store's docs), a further 5-22% (median 9%), and the runtime a current-thread one
/// ([`build_runtime`]), 5% more. A PostgreSQL server on this machine (a Unix socket, a
/// loopback address or `localhost`) is busy whenever jobs are as well: on 2 CPUs one worker
/// instead of two spent 13-18% less CPU per order, at the same orders per second for one
/// instance and 6% more for two. A server elsewhere leaves every CPU to the workers.
pub(crate) fn run_workers(set: Option<usize>, store_url: &str) -> (usize, &'static str) {
    if let Some(n) = set {
        return (n, "TOKIO_WORKER_THREADS");
    }
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let but_one = cpus.saturating_sub(1).max(1);
    if store_url.starts_with("sqlite://") {
        (but_one, "one per CPU but one, for the SQLite writer")
    } else if postgres_on_this_machine(store_url) {
        (
            but_one,
            "one per CPU but one, for the PostgreSQL server on this machine",
        )
    } else {
        (cpus, "one per CPU")
    }
}

/// Whether `url` names a PostgreSQL server on this machine: its host (after the `host`
/// parameter and `PGHOST`, as the connection will see it) a Unix socket directory, a loopback
/// address or `localhost`. A URL that does not parse is not (the store reports it).
fn postgres_on_this_machine(url: &str) -> bool {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return false;
    }
    let Ok(options) = url.parse::<sqlx::postgres::PgConnectOptions>() else {
        return false;
    };
    let host = options.get_host();
    options.get_socket().is_some()
        || host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `TOKIO_WORKER_THREADS`: how many worker threads the runtime runs (unset: one per CPU). The
/// runtime would read it itself and panic on a value that is not a positive number; read here,
/// such a value is a configuration error that names it.
fn worker_threads() -> anyhow::Result<Option<usize>> {
    const NAME: &str = "TOKIO_WORKER_THREADS";
    match std::env::var(NAME) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("{NAME}: must be a number of threads from 1 to 1024, or unset")
        }
        Ok(text) => text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .map(Some)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{NAME}: {text:?} must be a number of threads from 1 to 1024, or unset (one per CPU)"
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::runtime::RuntimeFlavor;

    use super::*;

    #[test]
    fn one_thread_runs_every_task_on_the_thread_that_blocks_on_the_runtime() {
        let runtime = build_runtime(Some(1), true).unwrap();
        assert_eq!(
            runtime.handle().runtime_flavor(),
            RuntimeFlavor::CurrentThread
        );
        // What the SQLite store reads to run its writer as a task.
        assert_eq!(runtime.metrics().num_workers(), 1);
        let here = std::thread::current().id();
        let spawned_on = runtime
            .block_on(async { tokio::spawn(async { std::thread::current().id() }).await })
            .unwrap();
        assert_eq!(spawned_on, here);
        // A blocking wait for a task of the runtime (as the OTLP exporter's shutdown does)
        // finishes when it waits on a blocking thread while the runtime runs the task.
        let (tx, rx) = std::sync::mpsc::channel::<u8>();
        let answer = runtime.block_on(async move {
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                tx.send(7).unwrap();
            });
            tokio::task::spawn_blocking(move || rx.recv().unwrap())
                .await
                .unwrap()
        });
        assert_eq!(answer, 7);
    }

    #[test]
    fn a_postgresql_server_on_this_machine_is_told_from_one_elsewhere() {
        for local in [
            "postgres://u@localhost:5432/db",
            "postgres://u@LOCALHOST/db",
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@127.0.0.2/db",
            "postgres://u@[::1]:5432/db",
            "postgres://u@localhost:5432/db?host=/var/run/postgresql",
            "postgresql://u@db.example.com/db?host=/tmp",
        ] {
            assert!(postgres_on_this_machine(local), "{local}");
        }
        for elsewhere in [
            "postgres://u@db.example.com:5432/db",
            "postgres://u@10.0.0.5/db",
            "postgres://u@[2001:db8::1]:5432/db",
            "postgres://u@localhost:5432/db?host=db.example.com",
            "sqlite:///var/lib/provisioner/p.db",
            "not a url",
        ] {
            assert!(!postgres_on_this_machine(elsewhere), "{elsewhere}");
        }
    }

    #[test]
    fn more_workers_or_none_set_is_a_multi_thread_runtime() {
        let runtime = build_runtime(Some(2), false).unwrap();
        assert_eq!(
            runtime.handle().runtime_flavor(),
            RuntimeFlavor::MultiThread
        );
        assert_eq!(runtime.metrics().num_workers(), 2);
        let runtime = build_runtime(None, false).unwrap();
        assert_eq!(
            runtime.handle().runtime_flavor(),
            RuntimeFlavor::MultiThread
        );
        assert_eq!(
            runtime.metrics().num_workers(),
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        );
    }
}
