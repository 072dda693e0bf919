//! Command line and environment (DESIGN §5, §6).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

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
    #[command(flatten)]
    pub(crate) salesforce: SalesforceArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Salesforce platform events.
    #[command(subcommand)]
    Events(EventsCommand),
}

#[derive(Subcommand, Debug)]
pub(crate) enum EventsCommand {
    /// Subscribe and print decoded events (an operator's debugging tool).
    Tail(TailArgs),
}

#[derive(Args, Debug)]
pub(crate) struct TailArgs {
    /// Where to start: `LATEST`, `EARLIEST` or `CUSTOM:<base64 replay id>`.
    #[arg(long, default_value = "LATEST")]
    pub(crate) replay: String,
    /// Stop after this many events.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Print one JSON object per line.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Salesforce connection settings (environment variables of DESIGN §5).
#[derive(Args, Debug)]
pub(crate) struct SalesforceArgs {
    /// Pub/Sub API endpoint; `http://` means plaintext (sandbox only).
    #[arg(
        long,
        env = "SF_PUBSUB_ENDPOINT",
        default_value = "https://api.pubsub.salesforce.com:7443",
        global = true
    )]
    pub(crate) pubsub_endpoint: String,
    /// Extra trusted root certificate for the Pub/Sub endpoint, PEM.
    #[arg(long, env = "SF_PUBSUB_CA_FILE", global = true)]
    pub(crate) pubsub_ca_file: Option<PathBuf>,
    /// Topic of the provisioning events.
    #[arg(long, env = "SF_PROVISION_EVENT_CHANNEL", default_value = sf_pubsub::DEFAULT_TOPIC, global = true)]
    pub(crate) event_channel: String,
    /// `num_requested` credit per Subscribe stream (1..100).
    #[arg(long, env = "SF_PUBSUB_BATCH", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100), global = true)]
    pub(crate) pubsub_batch: u32,
    /// Token endpoint base.
    #[arg(
        long,
        env = "SF_LOGIN_URL",
        default_value = "https://login.salesforce.com",
        global = true
    )]
    pub(crate) login_url: String,
    /// JWT `aud` (defaults to the login URL).
    #[arg(long, env = "SF_AUDIENCE", global = true)]
    pub(crate) audience: Option<String>,
    /// Connected app consumer key (JWT `iss`).
    #[arg(long, env = "SF_CLIENT_ID", global = true)]
    pub(crate) client_id: Option<String>,
    /// Integration user (JWT `sub`).
    #[arg(long, env = "SF_USERNAME", global = true)]
    pub(crate) username: Option<String>,
    /// RSA private key, PEM (prefer SF_PRIVATE_KEY_FILE).
    #[arg(long, env = "SF_PRIVATE_KEY", hide_env_values = true, global = true)]
    pub(crate) private_key: Option<SecretString>,
    /// File holding the RSA private key, PEM.
    #[arg(long, env = "SF_PRIVATE_KEY_FILE", global = true)]
    pub(crate) private_key_file: Option<PathBuf>,
}

impl SalesforceArgs {
    /// The JWT bearer configuration, or what is missing.
    pub(crate) fn jwt_config(&self) -> anyhow::Result<sf_auth::JwtBearerConfig> {
        let client_id = self.client_id.clone().context("SF_CLIENT_ID is not set")?;
        let username = self.username.clone().context("SF_USERNAME is not set")?;
        let key = match (&self.private_key, &self.private_key_file) {
            (Some(key), _) => key.clone(),
            (None, Some(path)) => SecretString::from(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading SF_PRIVATE_KEY_FILE {}", path.display()))?,
            ),
            (None, None) => anyhow::bail!("SF_PRIVATE_KEY or SF_PRIVATE_KEY_FILE must be set"),
        };
        let mut config = sf_auth::JwtBearerConfig::new(&self.login_url, client_id, username, key);
        config.audience.clone_from(&self.audience);
        Ok(config)
    }
}

/// Logs go to stderr: `LOG_FORMAT=json|pretty` (default pretty on a terminal), `RUST_LOG`
/// filter (default `warn`).
pub(crate) fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let json = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok(_) => false,
        Err(_) => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
