//! `provisioner`: the service and its operator commands (see `shared/DESIGN.md` §6).
//!
//! Thin: parse the command line and environment, set up logging, run one command, map the
//! outcome to an exit code (0 ok, 1 runtime failure, 2 bad usage or configuration) and print
//! error chains with `{:#}`.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod events;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(cli::Failure::Usage(err)) => {
            eprintln!("provisioner: configuration error: {err:#}");
            ExitCode::from(2)
        }
        Err(cli::Failure::Runtime(err)) => {
            eprintln!("provisioner: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: cli::Cli) -> Result<(), cli::Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            cli::Failure::Runtime(anyhow::Error::new(e).context("starting the runtime"))
        })?;
    match cli.command {
        cli::Command::Events(cli::EventsCommand::Tail(args)) => {
            runtime.block_on(events::tail(&cli.salesforce, args))
        }
    }
}
