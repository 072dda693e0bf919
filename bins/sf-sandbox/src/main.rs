//! `sf-sandbox`: the loopback Salesforce (OAuth, REST, Pub/Sub) and WHMCS emulators of the
//! `sandbox` crate as one standalone process, for portal developers and manual tests.
//!
//! It starts the three servers on `127.0.0.1`, seeds an org from the flags (Accounts, Approved
//! Orders with OrderItems, matching WHMCS clients and a product with the external-ref custom
//! field), optionally publishes one `OrderProvisionRequested__e` per seeded Order and injects
//! faults, then prints the environment a provisioner needs as `KEY=value` lines followed by
//! `# ready`, and serves until SIGINT or SIGTERM (exit 0). Status goes to stderr. The connected
//! app trusts an RSA key pair generated at start (its private key in a temporary file named by
//! `SF_PRIVATE_KEY_FILE`, removed on exit), or the key of `--private-key-file`.
//!
//! While it runs, an Order can be changed and announced again, as a user re-approving it in
//! Salesforce would: `POST $SF_LOGIN_URL/sandbox/orders/{id}` with the JSON body
//! `{"status": "Approved", "publish": true}` (both optional) sets the Order's `Status` (bumping
//! `LastModifiedDate`) and publishes a new `OrderProvisionRequested__e` for it (a new event id)
//! on the channel; `GET` on the same path shows the Order. The route is the sandbox's own, on
//! loopback, without a token; `sandbox::salesforce` documents its answers.
//!
//! Thin: parse the command line, set up logging, run, map the outcome to an exit code
//! (0 ok, 1 runtime failure, 2 bad usage) and print error chains with `{:#}`.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

mod cli;
mod env;
mod faults;
mod forward;
mod launch;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sf-sandbox: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(cli))
}

/// Starts everything, announces the environment, and waits for a signal.
async fn serve(cli: cli::Cli) -> anyhow::Result<()> {
    // Listen for signals before announcing readiness, so an early SIGTERM is not lost.
    let mut signals = launch::Signals::install()?;
    let running = launch::start(&cli).await?;
    let rendered = env::render(running.env());
    let _state_file = match &cli.state_file {
        Some(path) => Some(env::StateFile::write(path, &rendered)?),
        None => None,
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(rendered.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing the environment to stdout")?;
    drop(stdout);
    tracing::info!("ready; stop with SIGTERM or Ctrl-C");
    let signal = signals.wait().await;
    tracing::info!(signal, "shutting down");
    drop(running);
    Ok(())
}
