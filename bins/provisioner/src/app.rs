//! Wiring: concrete adapters from the configuration, and the `run` service.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use provisioner_core::subscriber::SubscriberConfig;
use provisioner_core::{EngineBuilder, EngineConfig, RunningEngine};
use provisioner_store::{Backend, SqlStore, Store, StoreOptions};
use secrecy::ExposeSecret;

use crate::cli::Failure;
use crate::config::Config;

/// Opens the store (applying migrations when `migrate`).
pub(crate) async fn open_store(
    config: &Config,
    migrate: bool,
    exclusive: bool,
) -> anyhow::Result<Arc<SqlStore>> {
    let master = config.master_key()?;
    let store = SqlStore::open(
        config.database_url.expose_secret(),
        &master,
        StoreOptions {
            migrate,
            exclusive,
            ..StoreOptions::default()
        },
    )
    .await
    .context("opening DATABASE_URL")?;
    Ok(Arc::new(store))
}

/// The engine configuration from the service configuration.
pub(crate) fn engine_config(config: &Config) -> EngineConfig {
    EngineConfig {
        statuses: config.statuses.clone(),
        topic: config.channel.clone(),
        payment_method: config.payment_method.clone(),
        order_ref_fields: config.order_ref_fields.clone(),
        send_email: config.send_email,
        no_invoice: config.no_invoice,
        concurrency: config.concurrency,
        lease: config.job_lease,
        reconcile_interval: config.reconcile_interval,
        key_rotation_days: config.key_rotation_days,
        whmcs_timeout: config.whmcs_timeout,
        whmcs_accept_timeout: config.whmcs_accept_timeout,
        whmcs_settle: config.whmcs_settle,
        instance: hostname(),
        ..EngineConfig::default()
    }
}

/// The subscriber configuration from the service configuration.
pub(crate) fn subscriber_config(config: &Config) -> SubscriberConfig {
    SubscriberConfig {
        topic: config.channel.clone(),
        start: config.replay.clone(),
        batch: config.pubsub_batch,
        ..SubscriberConfig::default()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.len() <= 40)
        .unwrap_or_else(|| "provisioner".to_owned())
}

/// Everything `run` and the operator commands share.
pub(crate) struct Wired {
    /// The engine over the configured clients and the store, not yet built.
    pub(crate) engine: EngineBuilder,
    pub(crate) monitor: security::SecurityMonitor,
    pub(crate) tokens: Arc<sf_auth::JwtBearer>,
    /// The Salesforce REST client (also the order intake's).
    pub(crate) rest: Arc<sf_rest::RestOrderApi>,
    pub(crate) store: Arc<SqlStore>,
}

/// Builds the clients, the alert sink and the engine builder (with `engine` as its
/// configuration and the configured per-customer provisioning rate).
pub(crate) async fn wire(
    config: &Config,
    store: Arc<SqlStore>,
    engine: EngineConfig,
) -> anyhow::Result<Wired> {
    let tokens = Arc::new(
        sf_auth::JwtBearer::new(config.jwt_config()?).context("Salesforce JWT configuration")?,
    );
    let rest = sf_rest::RestOrderApi::new(
        Arc::clone(&tokens) as Arc<dyn sf_auth::TokenSource>,
        sf_rest::RestConfig {
            api_version: config.api_version.clone(),
            approved_status: config.statuses.approved.clone(),
            ..sf_rest::RestConfig::default()
        },
    )
    .context("Salesforce REST client")?
    // A job waiting between two attempts of a call lends its worker slot to another job.
    .with_pause(Arc::new(provisioner_core::pause_outside_slot));
    let rest = Arc::new(rest);
    let whmcs = whmcs_client::HttpWhmcsClient::new(config.whmcs_config()?)
        .context("WHMCS client")?
        .with_pause(Arc::new(provisioner_core::pause_outside_slot));
    let backend = store.backend();
    let sink = alert_sink(config, &store)?;
    let monitor = security::SecurityMonitor::new(sink, security::Thresholds::default());
    let engine = EngineBuilder::new(
        Arc::clone(&rest) as Arc<dyn sf_rest::OrderApi>,
        Arc::new(whmcs),
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::clone(&store) as Arc<dyn audit::AuditLog>,
        Arc::new(monitor.clone()),
    )
    .config(engine)
    .option_opener(Arc::new(crate::intake::KeyringSealer(Arc::clone(&store))));
    // On PostgreSQL every instance draws from one per-customer state in the database; one
    // SQLite process holds it in memory.
    let engine = match backend {
        Backend::Postgres => engine.shared_provision_rate(config.provision_rate),
        Backend::Sqlite => engine.provision_rate(config.provision_rate),
    };
    Ok(Wired {
        engine,
        monitor,
        tokens,
        rest,
        store,
    })
}

/// The alert sink of the service. With `SECURITY_ALERT_WEBHOOK`: alerts kept in the store's
/// outbox (each with its `alert_raised` audit record, in one transaction) until the webhook
/// takes them, so they survive restarts and outages. Without: each alert audited, then logged.
fn alert_sink(
    config: &Config,
    store: &Arc<SqlStore>,
) -> anyhow::Result<Arc<dyn security::AlertSink>> {
    let webhook = config
        .alert_webhook
        .as_ref()
        .map(|s| s.expose_secret().trim())
        .filter(|url| !url.is_empty());
    Ok(match webhook {
        Some(url) => {
            let outbox = provisioner_core::StoreOutbox::new(
                Arc::clone(store) as Arc<dyn Store>,
                Arc::new(provisioner_core::SystemClock::new()),
                config.alert_outbox_max,
            );
            let delivery = security::WebhookConfig {
                max_backoff: config.alert_max_backoff,
                ..security::WebhookConfig::default()
            };
            Arc::new(
                security::WebhookSink::with_outbox(url, delivery, Arc::new(outbox))
                    .context("SECURITY_ALERT_WEBHOOK")?,
            )
        }
        None => Arc::new(provisioner_core::AuditedSink::new(
            Arc::new(security::LogSink),
            Arc::clone(store) as Arc<dyn audit::AuditLog>,
        )),
    })
}

/// The provisioner as `run` starts it (and `demo`, over its sandboxes).
pub(crate) struct Service {
    /// The engine, its handle and the subscriber's status.
    pub(crate) running: RunningEngine,
    pub(crate) monitor: security::SecurityMonitor,
    /// `POST /v1/orders`' desk, when `SF_PRICEBOOK_ID` is set.
    pub(crate) order_desk: Option<Arc<dyn status_api::OrderDesk>>,
}

/// The order intake over the wired clients, when `SF_PRICEBOOK_ID` names a price book.
fn order_desk(config: &Config, wired: &Wired) -> Option<Arc<dyn status_api::OrderDesk>> {
    let pricebook_id = config.pricebook_id.clone()?;
    let intake = provisioner_core::order_intake::OrderIntake::new(
        Arc::clone(&wired.rest) as Arc<dyn sf_rest::OrderIntakeApi>,
        Arc::clone(&wired.store) as Arc<dyn Store>,
        Arc::new(crate::intake::KeyringSealer(Arc::clone(&wired.store))),
        Arc::new(provisioner_core::SystemClock::new()),
        provisioner_core::order_intake::IntakeConfig {
            pricebook_id,
            new_status: config.new_order_status.clone(),
            hold: provisioner_core::order_intake::DEFAULT_HOLD,
            pricebook_ttl: Duration::from_secs(300),
            // Like the provisioning rate: one budget in the database on PostgreSQL.
            order_limit: match wired.store.backend() {
                Backend::Postgres => provisioner_core::ProvisionLimit::shared(config.order_rate),
                Backend::Sqlite => provisioner_core::ProvisionLimit::process(config.order_rate),
            },
        },
    );
    Some(Arc::new(crate::intake::Desk(Arc::new(intake))))
}

/// Starts the provisioner over `store`: leases of a previous SQLite process taken over, the
/// workers, the reconcile sweep, key rotation and, with `SF_EVENTS_ENABLED`, the subscriber.
/// `engine` and `subscriber` are the settings derived from `config` ([`engine_config`],
/// [`subscriber_config`]), possibly with settings no variable names changed (the demo's).
pub(crate) async fn start(
    config: &Config,
    store: Arc<SqlStore>,
    engine: EngineConfig,
    subscriber: SubscriberConfig,
) -> Result<Service, Failure> {
    if store.backend() == Backend::Sqlite {
        let taken = store
            .take_over_leases(chrono::Utc::now())
            .await
            .context("taking over leases")
            .map_err(Failure::Runtime)?;
        if taken > 0 {
            tracing::info!(
                jobs = taken,
                "resuming jobs left running by the previous process"
            );
        }
    }
    let wired = wire(config, store, engine).await.map_err(Failure::Usage)?;
    let desk = order_desk(config, &wired);
    let mut builder = wired.engine;
    if config.events_enabled {
        let pubsub = pubsub_client(
            config,
            Arc::clone(&wired.tokens) as Arc<dyn sf_auth::TokenSource>,
        )
        .map_err(Failure::Usage)?;
        builder = builder.subscriber(pubsub, subscriber);
    }
    Ok(Service {
        running: builder.start(),
        monitor: wired.monitor,
        order_desk: desk,
    })
}

/// The Pub/Sub client.
pub(crate) fn pubsub_client(
    config: &Config,
    tokens: Arc<dyn sf_auth::TokenSource>,
) -> anyhow::Result<Arc<dyn sf_pubsub::PubSubApi>> {
    let mut client_config = sf_pubsub::ClientConfig::new(&config.pubsub_endpoint);
    if let Some(path) = &config.pubsub_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading SF_PUBSUB_CA_FILE {}", path.display()))?;
        client_config = client_config.with_ca_pem(pem);
    }
    let client =
        sf_pubsub::PubSubClient::new(client_config, tokens).context("SF_PUBSUB_ENDPOINT")?;
    Ok(Arc::new(client))
}

/// Gauge: 1 while this instance's Pub/Sub subscription is open and delivering, else 0 (only
/// with `SF_EVENTS_ENABLED`; refreshed every 5 s).
pub(crate) const SUBSCRIBER_CONNECTED: &str = "provisioner_subscriber_connected";
/// Gauge: 1 while this instance holds the subscriber (the others wait), else 0.
pub(crate) const SUBSCRIBER_LEADER: &str = "provisioner_subscriber_leader";
/// Gauge: 1 after the running service's last check of its audit chain passed, 0 after one
/// found a record that fails (the `integrity_failure` alert); a check that could not read the
/// chain leaves it as it was.
pub(crate) const AUDIT_CHAIN_INTACT: &str = "provisioner_audit_chain_intact";

/// Gauge: the runtime's worker threads (`TOKIO_WORKER_THREADS`, else the default of `run`: one
/// per CPU, but one less with a SQLite store, whose writer is busy whenever jobs are).
pub(crate) const RUNTIME_WORKERS: &str = "provisioner_runtime_workers";

/// Describes the series the binary itself records, and registers at 0 the counters alert rules
/// watch, so that `increase()` sees their first step and the series exist before anything
/// happened.
fn describe_binary_metrics() {
    metrics::describe_gauge!(
        SUBSCRIBER_CONNECTED,
        "1 while the Pub/Sub subscription is open and delivering"
    );
    metrics::describe_gauge!(
        SUBSCRIBER_LEADER,
        "1 while this instance holds the subscriber"
    );
    metrics::describe_gauge!(
        AUDIT_CHAIN_INTACT,
        "1 when the last audit chain check passed, 0 when a record failed it"
    );
    metrics::describe_gauge!(RUNTIME_WORKERS, "worker threads of the async runtime");
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(RUNTIME_WORKERS).set(runtime.metrics().num_workers() as f64);
    }
    use provisioner_core::metrics as m;
    for kind in ["event", "job"] {
        metrics::counter!(m::DEAD_LETTERS_TOTAL, "kind" => kind).increment(0);
    }
    for outcome in ["provisioned", "failed"] {
        metrics::counter!(m::JOBS_TOTAL, "outcome" => outcome).increment(0);
    }
    for outcome in ["queued", "sent", "dropped"] {
        metrics::counter!(m::ALERTS_TOTAL, "outcome" => outcome).increment(0);
    }
    for scope in ["process", "shared"] {
        metrics::counter!(m::RATE_DELAYED_TOTAL, "scope" => scope).increment(0);
    }
    metrics::counter!(m::AUDIT_FAILURES_TOTAL).increment(0);
}

/// Histogram buckets (seconds) of every latency `/metrics` shows: step durations include
/// WHMCS `AcceptOrder`, which may run for tens of seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// SIGTERM or SIGINT (Ctrl-C elsewhere). The handlers are installed when this is *called*, not
/// when the future is first polled: a signal that arrives while the service is still starting
/// is kept, and shuts it down gracefully once it is up, instead of killing it.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Publishes each audit chain's head (seq, MAC) to the log and, as an `audit_head` alert, to
/// the webhook: a copy outside the database that `audit verify --expect-head` checks later.
/// Chain 0's head is `SEQ:MAC`, another chain's `CHAIN.SEQ:MAC`.
pub(crate) async fn witness_audit_head(store: &SqlStore, monitor: &security::SecurityMonitor) {
    let chains = match store.audit_chains().await {
        Ok(chains) => chains,
        Err(e) => {
            tracing::warn!(error = %e, "could not list the audit chains to witness their heads");
            return;
        }
    };
    for chain in chains {
        match audit::AuditLog::head(&chain).await {
            // An empty chain other than the first has nothing to witness.
            Ok(head) if head.seq == 0 && chain.chain() > 0 => {}
            Ok(head) => {
                let mac = head.mac.to_hex();
                let position = security::chain_position(chain.chain(), head.seq);
                tracing::info!(
                    audit_chain = chain.chain(),
                    audit_seq = head.seq,
                    audit_mac = %mac,
                    head = %format!("{position}:{mac}"),
                    "audit chain head witnessed"
                );
                monitor
                    .audit_chain_head(chain.chain(), head.seq, &mac)
                    .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read an audit chain head to witness it");
            }
        }
    }
}

/// How often the running service verifies the whole audit chain again; in between, each
/// witness tick verifies only the records appended since the last verified head.
const FULL_AUDIT_VERIFY_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// The running service's check of its own audit chains: all of them at start and once a day,
/// the records appended since at every witness tick. A record that fails (edited, removed,
/// out of place) raises `integrity_failure` naming it.
pub(crate) struct ChainWatch {
    /// How often the whole log is verified again.
    full_every: Duration,
    /// Each chain's head as the last successful verification ended at.
    verified: std::collections::BTreeMap<u32, audit::ChainHead>,
    /// When the whole log was last verified.
    full_at: Option<tokio::time::Instant>,
}

impl ChainWatch {
    /// A watch that verifies the whole log first and then every `full_every`.
    pub(crate) fn new(full_every: Duration) -> Self {
        ChainWatch {
            full_every,
            verified: std::collections::BTreeMap::new(),
            full_at: None,
        }
    }

    /// Verifies what is due and raises `integrity_failure` when a record fails.
    pub(crate) async fn check(&mut self, store: &SqlStore, monitor: &security::SecurityMonitor) {
        let now = tokio::time::Instant::now();
        let full_due = self
            .full_at
            .is_none_or(|at| now.duration_since(at) >= self.full_every);
        let chains = match store.audit_chains().await {
            Ok(chains) => chains,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the audit chains to verify them");
                return;
            }
        };
        let mut whole = true;
        for chain in chains {
            match self.check_chain(&chain, full_due, store.audit_key()).await {
                Ok((summary, full)) => {
                    whole &= full;
                    self.verified.insert(chain.chain(), summary.head);
                }
                Err(audit::Error::Tampered { seq, reason }) => {
                    self.verified.clear();
                    metrics::gauge!(AUDIT_CHAIN_INTACT).set(0.0);
                    tracing::error!(
                        audit_chain = chain.chain(),
                        audit_seq = seq,
                        reason = %reason,
                        "audit chain failed verification: run `provisioner audit verify`"
                    );
                    monitor.audit_chain_broken_in(chain.chain(), seq).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not verify the audit chain");
                    return;
                }
            }
        }
        if whole {
            self.full_at = Some(now);
        }
        metrics::gauge!(AUDIT_CHAIN_INTACT).set(1.0);
    }

    /// One chain: what was appended since its last verified head, or all of it (when due, the
    /// first time, or when the short check failed); `true` with the summary when all of it was
    /// verified.
    async fn check_chain(
        &self,
        chain: &provisioner_store::AuditChain<'_>,
        full_due: bool,
        key: &audit::AuditKey,
    ) -> audit::Result<(audit::VerifySummary, bool)> {
        if let Some(head) = self.verified.get(&chain.chain()).filter(|_| !full_due) {
            // A failure is not yet alarming: a retention purge (`audit purge`, another
            // process) may have moved the chain's start past the last head; all of it decides.
            if let Ok(summary) = audit::verify_after(chain, key, *head).await {
                return Ok((summary, false));
            }
        }
        verify_whole(chain, key).await.map(|s| (s, true))
    }
}

/// [`audit::verify`] of one chain, once more when a concurrent purge moved its start under it.
async fn verify_whole(
    chain: &provisioner_store::AuditChain<'_>,
    key: &audit::AuditKey,
) -> audit::Result<audit::VerifySummary> {
    let before = audit::AuditLog::anchor(chain).await?;
    match audit::verify(chain, key).await {
        Err(audit::Error::Tampered { .. })
            if audit::AuditLog::anchor(chain)
                .await
                .is_ok_and(|a| a != before) =>
        {
            audit::verify(chain, key).await
        }
        result => result,
    }
}

/// `provisioner run`: the service, until SIGTERM/SIGINT.
pub(crate) async fn run(config: Config) -> Result<(), Failure> {
    let missing = config.missing_for_run();
    if !missing.is_empty() {
        return Err(Failure::Usage(anyhow::anyhow!(missing.join("; "))));
    }
    let runtime = Failure::Runtime;
    // From here on SIGTERM/SIGINT mean a graceful stop, even while starting.
    let shutdown = shutdown_signal();
    // Latencies as Prometheus histograms (buckets aggregate across instances; the
    // exporter's default, summaries, would not).
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .context("metrics buckets")
        .map_err(runtime)?
        .install_recorder()
        .context("installing the metrics recorder")
        .map_err(runtime)?;
    status_api::describe_metrics();
    provisioner_core::metrics::describe();
    metrics::describe_counter!(
        sf_auth::TOKEN_REQUESTS_TOTAL,
        "Salesforce token requests (JWT bearer exchanges)"
    );
    metrics::describe_histogram!(
        sf_rest::REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Salesforce REST call latency by action"
    );
    metrics::describe_histogram!(
        whmcs_client::REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "WHMCS External API call latency by action"
    );
    describe_binary_metrics();

    // Bind first: a port in use is a configuration problem, found before any work starts.
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("PROVISIONER_HTTP_ADDR {} cannot be bound", config.http_addr))
        .map_err(Failure::Usage)?;
    let store = open_store(&config, true, true).await.map_err(runtime)?;
    let service = start(
        &config,
        Arc::clone(&store),
        engine_config(&config),
        subscriber_config(&config),
    )
    .await?;
    let ready = service.running.subscriber.clone();
    let portal_token = config
        .portal_token
        .clone()
        .ok_or_else(|| Failure::Usage(anyhow::anyhow!("PORTAL_API_TOKEN: required")))?;
    let mut state =
        status_api::StatusApiState::builder(Arc::clone(&store) as Arc<dyn Store>, portal_token);
    if let Some(previous) = config.portal_token_previous.clone() {
        state = state.previous_token(previous);
    }
    if let Some(desk) = service.order_desk.clone() {
        state = state.order_desk(desk);
    }
    let state = state
        .allowlist(config.allowed_cidrs.clone())
        .status_rate(config.status_rate)
        .ip_rate(config.ip_rate)
        .trusted_proxies(config.trusted_proxies.clone())
        .monitor(service.monitor.clone())
        // Ready when the subscriber is disabled, connected, or held by another instance.
        .subscriber_ready(move || {
            ready
                .as_ref()
                .is_none_or(|s| s.is_connected() || !s.is_leader())
        })
        .metrics(metrics.clone())
        .build()
        .map_err(|e| Failure::Usage(anyhow::Error::new(e)))?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(status_api::serve_with(
        listener,
        status_api::router(state),
        status_api::ServeOptions {
            max_connections: config.http_max_connections,
            header_read_timeout: config.http_read_timeout,
            // At accept: the allowed addresses and the trusted proxies (whose forwarded
            // clients the router checks against the allowlist).
            allowlist: Some(security::IpAllowlist::from_nets(
                config
                    .allowed_cidrs
                    .nets()
                    .iter()
                    .chain(config.trusted_proxies.nets())
                    .copied(),
            )),
            tls: config.tls.clone(),
        },
        async move {
            let _ = http_stopped.await;
        },
    ));
    let upkeep = tokio::spawn({
        let subscriber = service.running.subscriber.clone();
        let store = Arc::clone(&store);
        let outbox = config
            .alert_webhook
            .as_ref()
            .is_some_and(|s| !s.expose_secret().trim().is_empty());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            let flag = |on: bool| if on { 1.0 } else { 0.0 };
            loop {
                tick.tick().await;
                if let Some(s) = &subscriber {
                    metrics::gauge!(SUBSCRIBER_CONNECTED).set(flag(s.is_connected()));
                    metrics::gauge!(SUBSCRIBER_LEADER).set(flag(s.is_leader()));
                }
                // The outbox sets the gauge itself only when it is flushed.
                if outbox && let Ok(n) = store.waiting_alerts().await {
                    #[allow(clippy::cast_precision_loss)]
                    metrics::gauge!(provisioner_core::metrics::ALERTS_WAITING).set(n as f64);
                }
                metrics.run_upkeep();
            }
        }
    });
    // Deduplication windows that ended send their summaries; idle detector keys are dropped.
    let housekeeping = service
        .monitor
        .spawn_housekeeping(Duration::from_secs(30))
        .context("alert housekeeping")
        .map_err(runtime)?;
    // The audit chain's head, published now, every AUDIT_WITNESS_INTERVAL and at shutdown;
    // after each witness the chain is verified (all of it at start and daily, else what was
    // appended since), and a failing record raises `integrity_failure`.
    let witness = tokio::spawn({
        let (store, monitor) = (Arc::clone(&store), service.monitor.clone());
        let every = config.audit_witness_interval;
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut watch = ChainWatch::new(FULL_AUDIT_VERIFY_EVERY);
            loop {
                tick.tick().await;
                witness_audit_head(&store, &monitor).await;
                watch.check(&store, &monitor).await;
            }
        }
    });
    tracing::info!(
        addr = %config.http_addr,
        tls = config.tls.is_some(),
        events = config.events_enabled,
        "provisioner running"
    );

    shutdown.await;
    tracing::info!("shutting down: no new work; finishing in-flight steps");
    let _ = stop_http.send(());
    service.running.handle.shutdown().await;
    upkeep.abort();
    witness.abort();
    housekeeping.abort();
    witness_audit_head(&store, &service.monitor).await;
    service.monitor.flush().await;
    // The last alerts (that witness among them) leave before the process does.
    service.monitor.drain(Duration::from_secs(5)).await;
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "status API stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "status API task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex;

    use security::{Alert, AlertKind, AlertSink, DetailKey, DetailValue, SecurityMonitor};

    use super::*;

    /// Keeps every alert it is given.
    #[derive(Default)]
    struct Kept(Mutex<Vec<Alert>>);

    #[async_trait::async_trait]
    impl AlertSink for Kept {
        async fn send(&self, alert: Alert) {
            self.0.lock().unwrap().push(alert);
        }
    }

    impl Kept {
        /// The `audit_seq` of each integrity failure so far.
        fn broken(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.kind == AlertKind::IntegrityFailure)
                .filter_map(|a| match a.details.get(DetailKey::AuditSeq) {
                    Some(DetailValue::Id(id)) => Some(id.as_str().to_owned()),
                    _ => None,
                })
                .collect()
        }
    }

    async fn append(store: &SqlStore, n: usize) {
        for _ in 0..n {
            audit::AuditLog::append(
                store,
                audit::NewAuditRecord::new(
                    audit::Actor::ENGINE,
                    audit::Action::STEP_SUCCEEDED,
                    audit::Outcome::Success,
                ),
            )
            .await
            .unwrap();
        }
    }

    fn edit(db: &std::path::Path, seq: u64) {
        let conn = rusqlite::Connection::open(db).unwrap();
        let changed = conn
            .execute(
                "UPDATE audit_log SET record = json_set(record, '$.outcome', 'failed') \
                 WHERE seq = ?1",
                [seq],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }

    /// A store on a new SQLite file at `db`, and a monitor whose alerts `Kept` holds.
    async fn watched(
        db: &std::path::Path,
        master: &field_crypto::MasterKey,
    ) -> (SqlStore, Arc<Kept>, SecurityMonitor) {
        let store = SqlStore::open(
            &format!("sqlite://{}", db.display()),
            master,
            StoreOptions::default(),
        )
        .await
        .unwrap();
        let kept = Arc::new(Kept::default());
        let monitor = SecurityMonitor::new(kept.clone(), security::Thresholds::default());
        (store, kept, monitor)
    }

    /// Between full verifications each check covers what was appended since the last one:
    /// an edit there is found at once, naming the record; an edit of a record verified
    /// before waits for the next full verification, which finds it.
    #[tokio::test]
    async fn each_check_covers_the_new_records_and_a_full_check_all_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let master =
            field_crypto::MasterKey::from_config("a passphrase for the watch test").unwrap();
        let (store, kept, monitor) = watched(&db, &master).await;
        let mut watch = ChainWatch::new(Duration::from_secs(3600));

        append(&store, 5).await;
        watch.check(&store, &monitor).await;
        assert!(kept.broken().is_empty(), "an intact chain");

        // Appended since the last check, then edited: the next check finds it.
        append(&store, 3).await;
        edit(&db, 7);
        watch.check(&store, &monitor).await;
        assert_eq!(kept.broken(), ["7"]);

        // On another chain, edit a record checked before: the checks in between do not read
        // it again ...
        let mut watch = ChainWatch::new(Duration::from_secs(3600));
        let fresh = dir.path().join("fresh.db");
        let (store, kept, monitor) = watched(&fresh, &master).await;
        append(&store, 5).await;
        watch.check(&store, &monitor).await;
        edit(&fresh, 2);
        append(&store, 2).await;
        watch.check(&store, &monitor).await;
        assert!(kept.broken().is_empty(), "only the new records were read");
        // ... and the next full verification finds it.
        watch.full_every = Duration::ZERO;
        watch.check(&store, &monitor).await;
        assert_eq!(kept.broken(), ["2"]);
    }
}
