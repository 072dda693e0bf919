//! `provisioner`: the service and its operator commands (see `shared/DESIGN.md` §6).

use std::process::ExitCode;

use clap::Parser;

/// Turns approved Salesforce Orders into provisioned WHMCS services.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("provisioner: no commands are available yet");
    ExitCode::from(2)
}
