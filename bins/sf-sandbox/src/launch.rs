//! Starting the sandboxes from the command line, and waiting for a signal.

use anyhow::Context as _;
use sandbox::pubsub::{PubSubConfig, PubSubSandbox};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sandbox::salesforce::{KeyPair, SalesforceConfig, SalesforceSandbox};
use sandbox::whmcs::{Fault, WhmcsSandbox, WhmcsSandboxConfig};
use secrecy::ExposeSecret as _;
use tempfile::TempPath;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::Cli;
use crate::faults::{self, FaultPlan};
use crate::forward::{self, Forwarder};
use sandbox::seed::{self, Plan};

/// SIGINT and SIGTERM, registered up front.
#[derive(Debug)]
pub(crate) struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Registers the handlers.
    pub(crate) fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// Waits for either; returns its name.
    pub(crate) async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Where the private key the sandbox trusts is: a file the caller gave, or the generated key
/// in a private temporary file, removed on drop.
#[derive(Debug)]
enum KeyFile {
    Given(PathBuf),
    Generated(TempPath),
}

impl KeyFile {
    fn path(&self) -> &Path {
        match self {
            Self::Given(path) => path,
            Self::Generated(temp) => temp,
        }
    }
}

/// The running sandboxes; everything stops (and a generated key file is removed) when dropped.
#[derive(Debug)]
pub(crate) struct Running {
    env: Vec<(&'static str, String)>,
    _forwarders: Vec<Forwarder>,
    _pacer: Option<Pacer>,
    _pubsub: Arc<PubSubSandbox>,
    _whmcs: WhmcsSandbox,
    _sf: Arc<SalesforceSandbox>,
    _key_file: KeyFile,
}

/// The task publishing `--publish-rate` events; stopped when dropped.
#[derive(Debug)]
struct Pacer(tokio::task::JoinHandle<()>);

impl Drop for Pacer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the pacer looks for the first subscriber.
const SUBSCRIBER_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Waits for the first Subscribe call on `pubsub`, then publishes `events` on `channel`, the
/// k-th at start + k/rate (no catching up in bursts beyond what the timer lost), noting each
/// publish in `sf` for its activation latency.
async fn pace(
    sf: Arc<SalesforceSandbox>,
    pubsub: Arc<PubSubSandbox>,
    channel: String,
    events: Vec<sf_pubsub::OrderProvisionRequested>,
    rate: u32,
) {
    while pubsub.stats().subscribe_calls == 0 {
        tokio::time::sleep(SUBSCRIBER_POLL).await;
    }
    tracing::info!(
        events = events.len(),
        rate,
        "a client subscribed; publishing paced"
    );
    let start = tokio::time::Instant::now();
    let interval = std::time::Duration::from_secs(1) / rate;
    for (k, event) in events.iter().enumerate() {
        let k = u32::try_from(k).unwrap_or(u32::MAX);
        tokio::time::sleep_until(start + interval.saturating_mul(k)).await;
        sf.note_published(&event.order_id);
        if let Err(e) = pubsub.publish_order(&channel, event) {
            tracing::error!(order = %event.order_id, error = %e, "paced publishing stopped");
            return;
        }
    }
    tracing::info!(
        events = events.len(),
        elapsed = ?start.elapsed(),
        "paced publishing done"
    );
}

impl Running {
    /// The environment a provisioner needs, in print order.
    pub(crate) fn env(&self) -> &[(&'static str, String)] {
        &self.env
    }
}

/// Starts, seeds, arms faults and publishes according to `cli`.
pub(crate) async fn start(cli: &Cli) -> anyhow::Result<Running> {
    // Fixed ports first, so a busy one fails before anything runs.
    let sf_front = fixed(cli.sf_port, "the Salesforce login endpoint").await?;
    let pubsub_front = fixed(cli.pubsub_port, "the Pub/Sub endpoint").await?;
    let whmcs_front = fixed(cli.whmcs_port, "the WHMCS API").await?;

    let (keys, key_file) = key_pair(cli.private_key_file.as_deref())?;
    let mut sf_config = SalesforceConfig {
        token_lifetime: cli.token_lifetime,
        ..SalesforceConfig::trusting(keys.public_key_pem())
    };
    if let Some(client_id) = &cli.client_id {
        sf_config.client_id.clone_from(client_id);
    }
    if let Some(username) = &cli.username {
        sf_config.usernames = vec![username.clone()];
    }
    sf_config
        .usernames
        .extend(cli.extra_usernames.iter().cloned());
    if !sf_config.statuses.contains(&cli.approved_status) {
        sf_config.statuses.push(cli.approved_status.clone());
    }
    let sf_login_url = match &sf_front {
        Some((_, addr)) => {
            let url = format!("http://{addr}");
            sf_config.audiences.push(url.clone());
            Some(url)
        }
        None => None,
    };
    let sf = Arc::new(
        SalesforceSandbox::start(sf_config)
            .await
            .context("starting the Salesforce sandbox")?,
    );
    let sf_login_url = sf_login_url.unwrap_or_else(|| sf.base_url());

    let checker = sf.token_checker();
    let mut pubsub_config =
        PubSubConfig::default().token_validator(move |token: &str| checker.is_valid(token));
    pubsub_config.topics = vec![cli.channel.clone()];
    let pubsub = Arc::new(
        PubSubSandbox::start(pubsub_config)
            .await
            .context("starting the Pub/Sub sandbox")?,
    );
    // `POST /sandbox/orders/{id}` with `"publish": true` publishes here, on the channel.
    sf.attach_pubsub(pubsub.publisher(), cli.channel.clone());

    let mut whmcs_config = WhmcsSandboxConfig::default();
    if let Some(identifier) = &cli.whmcs_identifier {
        whmcs_config.identifier.clone_from(identifier);
    }
    if let Some(secret) = &cli.whmcs_secret {
        whmcs_config.secret.clone_from(secret);
    }
    whmcs_config
        .extra_credentials
        .clone_from(&cli.whmcs_extra_credentials);
    let whmcs = WhmcsSandbox::start_with(whmcs_config)
        .await
        .context("starting the WHMCS sandbox")?;

    // Only the admin routes read the PATCH and request logs here, so they are switched off
    // unless asked for: a long-running sandbox draining a 100,000-Order backlog then keeps
    // only the org itself in memory.
    sf.set_record_patches(cli.record_requests);
    whmcs.set_record_requests(cli.record_requests);

    let mut forwarders = Vec::new();
    let mut front = |listener: Option<(tokio::net::TcpListener, std::net::SocketAddr)>,
                     target: std::net::SocketAddr| match listener {
        Some((listener, addr)) => {
            forwarders.push(Forwarder::spawn(listener, target));
            addr
        }
        None => target,
    };
    let sf_addr = front(sf_front, sf.addr());
    let pubsub_addr = front(pubsub_front, pubsub.addr());
    let whmcs_addr = front(whmcs_front, whmcs.addr());
    let pubsub_endpoint = format!("http://{pubsub_addr}");
    let whmcs_api_url = format!("http://{whmcs_addr}{}", sandbox::whmcs::API_PATH);
    tracing::info!(
        login = %sf_login_url,
        instance = %sf.base_url(),
        "salesforce sandbox (OAuth + REST) listening"
    );
    if sf_addr != sf.addr() {
        tracing::info!(
            "REST calls go to the instance URL the token response names, {}",
            sf.base_url()
        );
    }
    tracing::info!(
        url = %format!("{sf_login_url}/sandbox/orders/{{id}}"),
        "order admin route: POST {{\"status\": \"Approved\", \"publish\": true}} to change an Order and publish its event"
    );
    tracing::info!(endpoint = %pubsub_endpoint, topic = %cli.channel, "pub/sub sandbox listening");
    tracing::info!(url = %whmcs_api_url, "whmcs sandbox listening");
    tracing::info!(
        url = %format!("http://{whmcs_addr}/sandbox/"),
        "whmcs admin routes: POST/DELETE faults, GET orders, GET requests"
    );

    let plan = Plan {
        customers: cli.customers,
        orders_per_customer: cli.orders_per_customer,
        quantity: cli.quantity,
        billing_cycle: cli.billing_cycle.clone(),
        config_options: cli.item_config_options.clone(),
        status: cli.approved_status.clone(),
        order_ref_field_id: cli.order_ref_field_id,
        products: cli.products,
    };
    let seeded = seed::seed(&sf, &whmcs, &plan);
    tracing::info!(
        customers = cli.customers,
        orders = seeded.events.len(),
        whmcs_product_id = seeded.product_id,
        status = %cli.approved_status,
        "seeded the org"
    );
    let mut pacer = None;
    match (cli.publish, cli.publish_rate) {
        (true, Some(rate)) => {
            tracing::info!(
                events = seeded.events.len(),
                rate,
                "publishing paced once a client subscribes"
            );
            pacer = Some(Pacer(tokio::spawn(pace(
                sf.clone(),
                pubsub.clone(),
                cli.channel.clone(),
                seeded.events.clone(),
                rate,
            ))));
        }
        (true, None) => {
            for event in &seeded.events {
                sf.note_published(&event.order_id);
                pubsub
                    .publish_order(&cli.channel, event)
                    .with_context(|| format!("publishing the event of order {}", event.order_id))?;
            }
            tracing::info!(events = seeded.events.len(), topic = %cli.channel, "published");
        }
        (false, _) => {}
    }

    let fault_plan = FaultPlan {
        rate: cli.fault_rate,
        seed: cli.fault_seed,
        end_stream_every: cli.pubsub_end_stream_every,
    };
    faults::apply(&fault_plan, &sf, &whmcs, &pubsub);
    for (action, hold) in [
        ("AddOrder", cli.whmcs_hold_add_order),
        ("AcceptOrder", cli.whmcs_hold_accept_order),
    ] {
        if let Some(hold) = hold {
            whmcs.inject_fault(action, Fault::HoldThenCommit(hold.delay), hold.times);
            tracing::info!(action, delay = ?hold.delay, times = ?hold.times, "whmcs hold armed");
        }
    }
    if cli.fault_rate > 0.0 || fault_plan.end_stream_every() > 0 {
        tracing::info!(
            rate = cli.fault_rate,
            seed = cli.fault_seed,
            pubsub_end_stream_every = fault_plan.end_stream_every(),
            "faults armed"
        );
    }

    let env = vec![
        ("SF_LOGIN_URL", sf_login_url.clone()),
        ("SF_AUDIENCE", sf_login_url),
        ("SF_CLIENT_ID", sf.config().client_id.clone()),
        (
            "SF_USERNAME",
            sf.config().usernames.first().cloned().unwrap_or_default(),
        ),
        ("SF_PRIVATE_KEY_FILE", key_file.path().display().to_string()),
        ("SF_PUBSUB_ENDPOINT", pubsub_endpoint),
        ("SF_PROVISION_EVENT_CHANNEL", cli.channel.clone()),
        ("SF_EVENTS_REPLAY", "EARLIEST".to_owned()),
        ("SF_ORDER_STATUS_APPROVED", cli.approved_status.clone()),
        ("WHMCS_API_URL", whmcs_api_url),
        ("WHMCS_API_IDENTIFIER", whmcs.config().identifier.clone()),
        ("WHMCS_API_SECRET", whmcs.config().secret.clone()),
        ("WHMCS_ORDER_REF_FIELD_ID", seed::ref_field_setting(&seeded)),
    ];
    Ok(Running {
        env,
        _forwarders: forwarders,
        _pacer: pacer,
        _pubsub: pubsub,
        _whmcs: whmcs,
        _sf: sf,
        _key_file: key_file,
    })
}

async fn fixed(
    port: u16,
    what: &str,
) -> anyhow::Result<Option<(tokio::net::TcpListener, std::net::SocketAddr)>> {
    if port == 0 {
        return Ok(None);
    }
    let listener = forward::bind(port, what).await?;
    let addr = listener
        .local_addr()
        .with_context(|| format!("the address of {what}"))?;
    Ok(Some((listener, addr)))
}

/// The key pair the connected app trusts: read from `given`, or generated for this run and
/// written to a private temporary file (mode 0600), removed on exit.
fn key_pair(given: Option<&Path>) -> anyhow::Result<(KeyPair, KeyFile)> {
    use std::io::Write as _;
    if let Some(path) = given {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading the private key file {}", path.display()))?;
        let keys = KeyPair::from_private_key_pem(&pem)
            .with_context(|| format!("the private key file {}", path.display()))?;
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        return Ok((keys, KeyFile::Given(path)));
    }
    let started = std::time::Instant::now();
    let keys = KeyPair::generate().context("generating the connected app's key pair")?;
    tracing::debug!(elapsed = ?started.elapsed(), "generated an RSA key pair");
    let mut file = tempfile::Builder::new()
        .prefix("sf-sandbox-key-")
        .suffix(".pem")
        .tempfile()
        .context("creating the private key file")?;
    file.write_all(keys.private_key_pem().expose_secret().as_bytes())
        .and_then(|()| file.flush())
        .context("writing the private key file")?;
    Ok((keys, KeyFile::Generated(file.into_temp_path())))
}
