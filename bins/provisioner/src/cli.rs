//! Command line (the README's Operations table lists every command). Configuration comes from
//! the environment (and `--config FILE`), see [`crate::config`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// How a command failed, which decides the exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad usage or configuration: exit 2.
    Usage(anyhow::Error),
    /// Something failed while running: exit 1.
    Runtime(anyhow::Error),
}

/// Turns approved Salesforce Orders into provisioned WHMCS services.
#[derive(Parser, Debug)]
#[command(version, about)]
pub(crate) struct Cli {
    /// A TOML file of configuration variables (`NAME = "value"`); the environment wins.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// What to do (default: `run`).
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the service: subscriber, workers, status API (the default).
    Run,
    /// The whole flow against an in-process sandbox with a temporary SQLite store.
    Demo(DemoArgs),
    /// Salesforce platform events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Field-encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Dead letters: events and jobs that could not be processed.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Jobs: one per Salesforce Order, with its state and audit trail.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Enqueue approved Orders that have no job (one sweep, now).
    Reconcile,
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Apply database migrations.
    Migrate,
    /// Write a consistent copy of the SQLite database (PostgreSQL: use pg_dump).
    Backup(BackupArgs),
    /// Read-only pre-flight checks of the org, WHMCS, the database and the alert webhook: one
    /// line each (`ok`, `warn`, `fail` with what to do); exit 1 when a check fails.
    Doctor,
}

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// How many orders.
    #[arg(long, default_value_t = 20)]
    pub(crate) orders: u32,
    /// Inject faults in every sandbox; the summary shows the retries that absorbed them.
    #[arg(long)]
    pub(crate) faults: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum EventsCommand {
    /// Subscribe and print decoded events (an operator's debugging tool).
    Tail(TailArgs),
}

#[derive(Args, Debug)]
pub(crate) struct TailArgs {
    /// Where to start: `LATEST`, `EARLIEST` or `CUSTOM:<base64 replay id>` (default:
    /// SF_EVENTS_REPLAY).
    #[arg(long)]
    pub(crate) replay: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Print one JSON object per line.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Verify the whole chain and print its head (`SEQ:MAC`); exit 1 naming the first bad
    /// record.
    Verify {
        /// A head witnessed earlier (the service logs it and sends it to the alert webhook as
        /// `audit_head`): that record must still be in the chain with that MAC, which catches a
        /// cut tail, wiped rows and a restored older database.
        #[arg(long, value_name = "SEQ:MAC")]
        expect_head: Option<String>,
        /// Print one JSON object: `ok`, `records`, `first_seq`, `last_seq`,
        /// `purged_before_anchor`, `anchor_seq`, `head` (`seq`, `mac`), `witness` (`matched`
        /// or null) and, when `ok` is false, `error`.
        #[arg(long)]
        json: bool,
    },
    /// Remove records older than AUDIT_LOG_RETENTION_DAYS, keeping an anchor.
    Purge,
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// List data keys and which is primary.
    Status {
        /// Print one JSON array of `{id, created_at, primary}`.
        #[arg(long)]
        json: bool,
    },
    /// Make a new data key primary now.
    Rotate,
    /// Re-encrypt stored data under the primary key.
    Reencrypt,
}

#[derive(Subcommand, Debug)]
pub(crate) enum DlqCommand {
    /// List open dead letters.
    List {
        /// Show retried and discarded ones too.
        #[arg(long)]
        all: bool,
        /// Print one JSON array of dead letters (the fields `dlq show` prints).
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter (payload only with --payload).
    Show {
        /// Its id.
        id: String,
        /// Print the decrypted payload (hex); it may hold personal data.
        #[arg(long)]
        payload: bool,
    },
    /// Enqueue the dead letter's order again.
    Retry {
        /// Its id.
        id: String,
    },
    /// Mark the dead letter discarded.
    Discard {
        /// Its id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum JobsCommand {
    /// List jobs in arrival order: view state, raw state/step, customer, WHMCS ids, attempts.
    List(JobsListArgs),
    /// Show one job and the audit records of its Order.
    Show(JobsShowArgs),
}

#[derive(Args, Debug)]
pub(crate) struct JobsListArgs {
    /// Only jobs in this state, as the status API reports it.
    #[arg(long, value_name = "STATE", value_parser = job_view_parser())]
    pub(crate) state: Option<provisioner_store::JobView>,
    /// Only jobs of this customer number.
    #[arg(long, value_name = "NUMBER")]
    pub(crate) customer: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) limit: u32,
    /// Only jobs after this sequence number (the next page: the last `seq` shown).
    #[arg(long, value_name = "SEQ", default_value_t = 0,
          value_parser = clap::value_parser!(i64).range(0..))]
    pub(crate) after: i64,
    /// Print one JSON array.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct JobsShowArgs {
    /// The Salesforce Order Id, 15 or 18 characters.
    pub(crate) order_id: sf_rest::OrderId,
    /// Print one JSON object: `job` and `audit`.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--state`: the names of `provisioner_store::JobView`, listed in `--help`.
fn job_view_parser() -> impl clap::builder::TypedValueParser<Value = provisioner_store::JobView> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(
        provisioner_store::JobView::ALL.map(provisioner_store::JobView::as_str),
    )
    .try_map(|name| {
        provisioner_store::JobView::from_name(&name).ok_or_else(|| format!("unknown state {name}"))
    })
}

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Print the effective configuration (secrets redacted); exit 2 on any problem.
    Check,
}

#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    /// Target file (must not exist).
    #[arg(long)]
    pub(crate) to: PathBuf,
}

/// Logs go to stderr: `LOG_FORMAT=json|pretty` (default pretty on a terminal, else json),
/// `RUST_LOG` filter (default `info`). `otel`, when given, is a second layer beside the log
/// lines with its own filter (see `otel::layer`), so `RUST_LOG` does not limit the exported spans.
pub(crate) fn init_logging(
    format: Option<crate::config::LogFormat>,
    default_filter: &str,
    otel: Option<crate::otel::BoxedLayer>,
) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let json = match format {
        Some(crate::config::LogFormat::Json) => true,
        Some(crate::config::LogFormat::Pretty) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // `RUST_LOG` filters the log lines only; the OpenTelemetry layer has its own filter.
    let fmt = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let layers: Vec<crate::otel::BoxedLayer> = std::iter::once(fmt).chain(otel).collect();
    let _ = tracing_subscriber::registry().with(layers).try_init();
}
