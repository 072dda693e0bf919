//! `provisioner demo`: the whole flow against in-process sandboxes (Salesforce OAuth + REST,
//! Pub/Sub gRPC, WHMCS) with a temporary SQLite store: seed customers and Approved Orders,
//! publish their events, run the provisioner as `run` wires it (a configuration parsed from the
//! sandboxes' variables, then `run`'s own store, clients, engine and subscriber), show progress,
//! print a summary table and the audit verification. Exit 0 only if every order ended
//! provisioned.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use comfy_table::{Cell, Table};
use provisioner_core::subscriber::SubscriberConfig;
use provisioner_core::{EngineConfig, RetryPolicy};
use provisioner_store::{JobState, Store};
use sandbox::pubsub::{PubSubConfig, PubSubSandbox};
use sandbox::salesforce::{
    FaultKind, KeyPair, Route, SalesforceConfig, SalesforceSandbox, Trigger,
};
use sandbox::seed::{ConfigOptions, Plan};
use sandbox::whmcs::{Fault, WhmcsSandbox};
use secrecy::ExposeSecret as _;

use crate::app;
use crate::cli::{DemoArgs, Failure};
use crate::config::{self, Config};

const REF_FIELD: u64 = 1;

fn rt(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Runtime(e.into())
}

fn rand_key() -> [u8; 32] {
    let a = uuid::Uuid::new_v4().into_bytes();
    let b = uuid::Uuid::new_v4().into_bytes();
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(&a);
    key[16..].copy_from_slice(&b);
    key
}

/// The service configuration of the demo, parsed from variables like the real one: the
/// sandboxes' URLs and credentials (the private key of the pair generated for this run), a SQLite file in `dir` under a fresh random key, events
/// replayed from the earliest, and a provisioning rate the demo's bursts stay under. Nothing
/// comes from the process environment.
fn sandbox_config(
    sf: &SalesforceSandbox,
    whmcs: &WhmcsSandbox,
    ps: &PubSubSandbox,
    keys: &KeyPair,
    dir: &tempfile::TempDir,
) -> Result<Config, Failure> {
    // A fresh random key for the throwaway store.
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, rand_key());
    let vars = [
        ("SF_EVENTS_ENABLED", "true".to_owned()),
        ("SF_EVENTS_REPLAY", "EARLIEST".to_owned()),
        ("SF_LOGIN_URL", sf.base_url()),
        ("SF_CLIENT_ID", sf.config().client_id.clone()),
        ("SF_USERNAME", sf.config().usernames[0].clone()),
        (
            "SF_PRIVATE_KEY",
            keys.private_key_pem().expose_secret().to_owned(),
        ),
        ("SF_PUBSUB_ENDPOINT", ps.endpoint()),
        ("WHMCS_API_URL", whmcs.api_url()),
        ("WHMCS_API_IDENTIFIER", whmcs.config().identifier.clone()),
        ("WHMCS_API_SECRET", whmcs.config().secret.clone()),
        ("WHMCS_ORDER_REF_FIELD_ID", REF_FIELD.to_string()),
        (
            "DATABASE_URL",
            format!("sqlite://{}/demo.db", dir.path().display()),
        ),
        ("FIELD_ENCRYPTION_KEY", format!("base64:{key}")),
        // Every order of the largest demo at once (--orders is at most 10,000).
        ("CUSTOMER_PROVISION_RATE", "10000/second".to_owned()),
        // The in-process WHMCS answers at once: an AddOrder or AcceptOrder whose reply a
        // `--faults` run loses is given seconds, not minutes, before it may be repeated.
        ("WHMCS_TIMEOUT", "5s".to_owned()),
        ("WHMCS_ACCEPT_TIMEOUT", "5s".to_owned()),
        ("WHMCS_SETTLE", "1s".to_owned()),
    ];
    let sources = config::Sources::from_parts(
        None,
        vars.into_iter()
            .map(|(name, value)| (name.to_owned(), value)),
    );
    Config::parse(&sources)
        .map_err(|errors| rt(anyhow!("demo configuration: {}", errors.join("; "))))
}

/// Splits `orders` into customers of equal size (at most 5 customers).
fn shape(orders: u32) -> (u32, u32) {
    let customers = (1..=5u32.min(orders))
        .rev()
        .find(|c| orders.is_multiple_of(*c))
        .unwrap_or(1);
    (customers, orders / customers)
}

pub(crate) async fn demo(args: DemoArgs) -> Result<(), Failure> {
    if args.orders == 0 || args.orders > 10_000 {
        return Err(Failure::Usage(anyhow!("--orders must be 1 to 10000")));
    }
    // A key pair made for this run: the binary carries no private key.
    let keys = KeyPair::generate().map_err(rt)?;
    let sf = SalesforceSandbox::start(SalesforceConfig::trusting(keys.public_key_pem()))
        .await
        .map_err(rt)?;
    let whmcs = WhmcsSandbox::start().await.map_err(rt)?;
    let checker = sf.token_checker();
    let ps = PubSubSandbox::start(
        PubSubConfig::default()
            .token_validator(move |t| checker.is_valid(t))
            .keepalive_interval(Duration::from_secs(1)),
    )
    .await
    .map_err(|e| rt(anyhow!("{e}")))?;
    let (customers, per_customer) = shape(args.orders);
    let seeded = sandbox::seed::seed(
        &sf,
        &whmcs,
        &Plan {
            customers,
            orders_per_customer: per_customer,
            quantity: 1,
            billing_cycle: "monthly".into(),
            config_options: Some(ConfigOptions {
                ids: vec![4],
                json: r#"{"4":"demo-root-password"}"#.into(),
            }),
            status: "Approved".into(),
            order_ref_field_id: REF_FIELD,
            products: 1,
        },
    );

    if args.faults {
        let f = sf.faults();
        f.seed(42);
        for route in [Route::Query, Route::Patch] {
            f.inject(route, FaultKind::Status(503), Trigger::Probability(0.08));
            f.inject(route, FaultKind::DropConnection, Trigger::Probability(0.03));
        }
        f.inject(
            Route::Token,
            FaultKind::Status(503),
            Trigger::Probability(0.05),
        );
        for action in [
            "GetClientsDetails",
            "GetClientsProducts",
            "GetOrders",
            "AddOrder",
            "AcceptOrder",
        ] {
            whmcs.inject_fault_rate(action, Fault::Html500, 0.06, 42);
        }
        for action in ["AddOrder", "AcceptOrder"] {
            whmcs.inject_fault_rate(action, Fault::CommitThenDrop, 0.05, 42);
        }
        ps.faults().end_stream_every(7);
    }

    let dir = tempfile::tempdir()
        .context("creating a temporary directory")
        .map_err(rt)?;
    let config = sandbox_config(&sf, &whmcs, &ps, &keys, &dir)?;
    // From here on, the service's own wiring: the store, clients, engine and subscriber as
    // `run` builds them from its configuration.
    let store = app::open_store(&config, true, true).await.map_err(rt)?;
    let service = app::start(
        &config,
        Arc::clone(&store),
        EngineConfig {
            // Quick retries and polling: faults are absorbed in seconds, not minutes.
            retry: RetryPolicy {
                base: Duration::from_millis(50),
                max_delay: Duration::from_secs(1),
                max_attempts: 30,
                max_age: Duration::from_secs(600),
            },
            poll_interval: Duration::from_millis(50),
            instance: "demo".into(),
            ..app::engine_config(&config)
        },
        SubscriberConfig {
            watchdog: Duration::from_secs(10),
            restart_backoff: Duration::from_millis(200),
            ..app::subscriber_config(&config)
        },
    )
    .await?;
    // The operator approves: the Flow publishes one event per Order.
    for event in &seeded.events {
        ps.publish_order(sf_pubsub::DEFAULT_TOPIC, event)
            .map_err(|e| rt(anyhow!("{e}")))?;
    }

    let total = u64::from(args.orders);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} provisioning [{bar:40}] {pos}/{len} {msg}",
        )
        .map_err(rt)?
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(300);
    loop {
        let c = store.job_counts().await.map_err(rt)?;
        let finished = c.done + c.failed + c.refused;
        bar.set_position(finished);
        bar.set_message(format!("running {} pending {}", c.running, c.pending));
        if finished >= total && c.pending == 0 && c.running == 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            bar.abandon_with_message("timed out");
            break;
        }
        // With faults, sessions also expire now and then (re-minted after a 401).
        if args.faults && started.elapsed().as_millis() % 2000 < 100 {
            sf.expire_all_tokens();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    service.running.handle.shutdown().await;
    let elapsed = started.elapsed();

    let mut table = Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "order",
        "customer",
        "WHMCS order",
        "services",
        "status",
        "attempts",
    ]);
    let mut ok = true;
    let mut retries = 0u32;
    for event in &seeded.events {
        let job = store.job(&event.order_id).await.map_err(rt)?;
        let order = sf.order(&event.order_id);
        let status = order.as_ref().map(|o| o.status.clone()).unwrap_or_default();
        let (whmcs_order, services, attempts, state) = match &job {
            Some(j) => (
                j.whmcs_order_id.clone().unwrap_or_default(),
                j.service_ids.join(","),
                j.attempts,
                j.state,
            ),
            None => (String::new(), String::new(), 0, JobState::Pending),
        };
        retries += attempts.saturating_sub(1);
        let good = state == JobState::Done
            && status == "Activated"
            && order.as_ref().and_then(|o| o.whmcs_order_id.clone()) == Some(whmcs_order.clone());
        ok &= good;
        table.add_row(vec![
            Cell::new(&event.order_id),
            Cell::new(&event.customer_number),
            Cell::new(whmcs_order),
            Cell::new(services),
            Cell::new(if good {
                status
            } else {
                format!("{status} ({state})")
            }),
            Cell::new(attempts),
        ]);
    }
    let whmcs_orders = whmcs.orders().len();
    ok &= whmcs_orders == seeded.events.len();
    let audit = audit::verify(&*store, store.audit_key()).await;
    let mut text = format!("{table}\n");
    text.push_str(&format!(
        "{} orders for {} customers in {:.1?}; {} WHMCS orders (one per Salesforce Order: {}); {} retries absorbed{}\n",
        seeded.events.len(),
        customers,
        elapsed,
        whmcs_orders,
        if whmcs_orders == seeded.events.len() { "yes" } else { "NO" },
        retries,
        if args.faults { " (faults injected)" } else { "" },
    ));
    match &audit {
        Ok(s) => text.push_str(&format!(
            "audit verify: ok, {} records chained (seq {}..{})\n",
            s.records,
            s.first_seq.unwrap_or(0),
            s.last_seq.unwrap_or(0)
        )),
        Err(e) => {
            ok = false;
            text.push_str(&format!("audit verify: FAILED: {e}\n"));
        }
    }
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(rt)?;
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow!(
            "not every order ended provisioned"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::shape;

    #[test]
    fn orders_split_evenly() {
        assert_eq!(shape(20), (5, 4));
        assert_eq!(shape(7), (1, 7));
        assert_eq!(shape(12), (4, 3));
        assert_eq!(shape(1), (1, 1));
    }
}
