//! `provisioner demo`: the whole flow against in-process sandboxes (Salesforce OAuth + REST,
//! Pub/Sub gRPC, WHMCS) with a temporary SQLite store, starting at the portal: seed customers
//! and a product, start the provisioner as `run` wires it (a configuration parsed from the
//! sandboxes' variables, then `run`'s own store, clients, engine, subscriber and status API),
//! place each order through `POST /v1/orders` (its root password a sensitive option), check
//! that the status route answers `pending_review`, approve each Order as an operator would
//! (the sandbox's Flow publishes the event), show progress, then print the path of every order
//! and the audit verification. Exit 0 only if every order ended provisioned, once, with its
//! sensitive value sealed in Salesforce and in clear in WHMCS.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use comfy_table::{Cell, Table};
use provisioner_core::order_intake::is_sealed;
use provisioner_core::subscriber::SubscriberConfig;
use provisioner_core::{EngineConfig, RetryPolicy};
use provisioner_store::{JobState, Store};
use sandbox::pubsub::{PubSubConfig, PubSubSandbox};
use sandbox::salesforce::{
    FaultKind, KeyPair, Route, SalesforceConfig, SalesforceSandbox, Trigger, salesforce_id,
};
use sandbox::seed::{ConfigOptions, Plan};
use sandbox::whmcs::{Fault, WhmcsSandbox};
use secrecy::{ExposeSecret as _, SecretString};

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
        ("CUSTOMER_ORDER_RATE", "10000/second".to_owned()),
        // The order intake creates Orders in the sandbox's price book.
        ("SF_PRICEBOOK_ID", sf.pricebook_id()),
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

/// The root password every demo order carries, as a sensitive option: sealed before it
/// leaves the status API, opened by the engine when it places the WHMCS order.
const SECRET_OPTION_ID: u64 = 4;
const SECRET_OPTION_VALUE: &str = "demo-root-password";

/// How many `POST /v1/orders` the demo's portal sends at once.
const PORTAL_CONCURRENCY: usize = 8;

/// The longest the demo's portal waits before it sends a request again (it honours shorter
/// `Retry-After` answers as they come).
const PORTAL_MAX_WAIT: Duration = Duration::from_millis(250);

/// How many times the demo's portal sends one request before it gives up.
const PORTAL_MAX_TRIES: u32 = 60;

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
    // The approval Flow: an Order set to Approved publishes its event on the topic.
    sf.attach_pubsub(ps.publisher(), sf_pubsub::DEFAULT_TOPIC);
    let (customers, per_customer) = shape(args.orders);
    // Customers (Accounts and WHMCS clients) and the product with its price; the Orders come
    // from the portal.
    let seeded = sandbox::seed::seed(
        &sf,
        &whmcs,
        &Plan {
            customers,
            orders_per_customer: 0,
            quantity: 1,
            billing_cycle: "monthly".into(),
            config_options: Some(ConfigOptions {
                ids: vec![SECRET_OPTION_ID],
                json: "{}".into(),
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
        // Some Orders are created but the answer is lost: the portal sends the request
        // again and the intake finds the Order by its request id instead of creating another.
        f.inject(
            Route::Composite,
            FaultKind::CommitThenDrop,
            Trigger::Probability(0.1),
        );
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
    let api = StatusApi::start(&store, &service).await?;
    let portal = Portal::new(&api)?;

    // 1. The portal places every order.
    let started = std::time::Instant::now();
    let mut requests = Vec::new();
    for customer in 1..=customers {
        for n in 1..=per_customer {
            requests.push(OrderRequest {
                customer_number: sandbox::seed::customer_number(customer),
                account_id: salesforce_id("001", u64::from(customer)),
                idempotency_key: format!("demo-{customer:05}-{n:05}"),
                product_id: seeded.product_id,
            });
        }
    }
    let placed = portal.place_all(requests).await?;
    // 2. Before approval the portal sees its orders waiting for review.
    let mut before = Vec::with_capacity(placed.len());
    for order in &placed {
        before.push(portal.status(order).await?);
    }
    // 3. The operator approves each Order; the Flow publishes its event.
    for order in &placed {
        sf.approve(&order.order_id)
            .map_err(|e| rt(anyhow!("approving {}: {e}", order.order_id)))?;
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
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
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

    // 4. What the portal sees now, and where everything went.
    let mut table = Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "order",
        "customer",
        "POST /v1/orders",
        "before approval",
        "WHMCS order",
        "services",
        "Salesforce",
        "portal",
        "attempts",
    ]);
    let mut ok = true;
    let mut retries = 0u32;
    let mut resent = 0u32;
    let mut sealed = 0usize;
    let mut delivered = 0usize;
    let services = whmcs.services();
    for (order, before) in placed.iter().zip(&before) {
        let job = store.job(&order.order_id).await.map_err(rt)?;
        let sf_order = sf.order(&order.order_id);
        let status = sf_order
            .as_ref()
            .map(|o| o.status.clone())
            .unwrap_or_default();
        let portal_now = portal.status(order).await?;
        let (whmcs_order, service_ids, attempts, state) = match &job {
            Some(j) => (
                j.whmcs_order_id.clone().unwrap_or_default(),
                j.service_ids.clone(),
                j.attempts,
                j.state,
            ),
            None => (String::new(), Vec::new(), 0, JobState::Pending),
        };
        retries += attempts.saturating_sub(1);
        resent += order.tries - 1;
        // The sensitive option: sealed in every stored OrderItem, in clear in WHMCS.
        let items = sf.order_items(&order.order_id);
        let sealed_here = !items.is_empty()
            && items.iter().all(|item| {
                let stored = item.config_options.as_deref().unwrap_or_default();
                let option = serde_json::from_str::<serde_json::Value>(stored)
                    .ok()
                    .and_then(|o| {
                        o.get(SECRET_OPTION_ID.to_string())
                            .and_then(serde_json::Value::as_str)
                            .map(str::to_owned)
                    });
                option.as_deref().is_some_and(is_sealed) && !stored.contains(SECRET_OPTION_VALUE)
            });
        let in_whmcs = !service_ids.is_empty()
            && service_ids.iter().all(|id| {
                services.iter().any(|s| {
                    s.id.to_string() == *id
                        && s.config_options.get(&SECRET_OPTION_ID)
                            == Some(&sandbox::whmcs::php::Value::Str(
                                SECRET_OPTION_VALUE.as_bytes().to_vec(),
                            ))
                })
            });
        sealed += usize::from(sealed_here);
        delivered += usize::from(in_whmcs);
        let good = state == JobState::Done
            && status == "Activated"
            && sf_order.as_ref().and_then(|o| o.whmcs_order_id.clone())
                == Some(whmcs_order.clone())
            && before == "pending_review"
            && portal_now == "provisioned"
            && sealed_here
            && in_whmcs;
        ok &= good;
        table.add_row(vec![
            Cell::new(&order.order_id),
            Cell::new(&order.customer_number),
            Cell::new(if order.tries == 1 {
                format!("201 {}", order.order_number)
            } else {
                format!("201 {} ({} tries)", order.order_number, order.tries)
            }),
            Cell::new(before),
            Cell::new(whmcs_order),
            Cell::new(service_ids.join(",")),
            Cell::new(if good {
                status
            } else {
                format!("{status} ({state})")
            }),
            Cell::new(portal_now),
            Cell::new(attempts),
        ]);
    }
    api.stop().await;
    let orders = placed.len();
    let whmcs_orders = whmcs.orders().len();
    let sf_orders = sf.order_count();
    ok &= whmcs_orders == orders && sf_orders == orders;
    let once = |n: usize| if n == orders { "yes" } else { "NO" };
    let audit = store.verify_audit().await;
    let mut text = format!("{table}\n");
    text.push_str(&format!(
        "{orders} orders for {customers} customers placed through POST /v1/orders, approved and provisioned in {elapsed:.1?}\n\
         {sf_orders} Salesforce Orders (one per request: {}); {whmcs_orders} WHMCS orders (one per Salesforce Order: {})\n\
         the root password: sealed in {sealed}/{orders} Salesforce OrderItems, in clear in {delivered}/{orders} WHMCS services\n\
         {resent} requests sent again by the portal, {retries} provisioning retries absorbed{}\n",
        once(sf_orders),
        once(whmcs_orders),
        if args.faults { " (faults injected)" } else { "" },
    ));
    match &audit {
        Ok(s) => text.push_str(&format!(
            "audit verify: ok, {} records chained in {} chain(s)\n",
            s.records(),
            s.chains
                .iter()
                .filter(|c| c.summary.records > 0)
                .count()
                .max(1)
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

/// The status API of the demo's service on a loopback port, with its order desk, a bearer
/// token made for this run, and rates the demo's bursts stay under.
struct StatusApi {
    base: String,
    token: SecretString,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<status_api::Result<()>>,
}

impl StatusApi {
    async fn start(
        store: &Arc<provisioner_store::SqlStore>,
        service: &app::Service,
    ) -> Result<Self, Failure> {
        let token = SecretString::from(uuid::Uuid::new_v4().simple().to_string());
        let desk = service
            .order_desk
            .clone()
            .ok_or_else(|| rt(anyhow!("the demo's order desk is not configured")))?;
        let fast = security::Rate::parse("100000/second").map_err(|e| rt(anyhow!("{e}")))?;
        let state =
            status_api::StatusApiState::builder(Arc::clone(store) as Arc<dyn Store>, token.clone())
                .order_desk(desk)
                .status_rate(fast)
                .ip_rate(fast)
                .monitor(service.monitor.clone())
                .build()
                .map_err(|e| rt(anyhow::Error::new(e)))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the demo's status API")
            .map_err(rt)?;
        let addr = listener.local_addr().map_err(rt)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(status_api::serve(
            listener,
            status_api::router(state),
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            base: format!("http://{addr}"),
            token,
            stop,
            server,
        })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// One order the demo's portal places.
struct OrderRequest {
    customer_number: String,
    account_id: String,
    idempotency_key: String,
    product_id: u64,
}

/// An Order the status API created.
struct Placed {
    customer_number: String,
    order_id: String,
    order_number: String,
    /// How many times the portal sent the request until it was answered 201.
    tries: u32,
}

/// The demo's customer portal: a client of the status API as a portal backend would be.
#[derive(Clone)]
struct Portal {
    client: reqwest::Client,
    base: String,
    token: SecretString,
}

impl Portal {
    fn new(api: &StatusApi) -> Result<Self, Failure> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(rt)?;
        Ok(Self {
            client,
            base: api.base.clone(),
            token: api.token.clone(),
        })
    }

    /// Places every request, [`PORTAL_CONCURRENCY`] at a time; in request order.
    async fn place_all(&self, requests: Vec<OrderRequest>) -> Result<Vec<Placed>, Failure> {
        let gate = Arc::new(tokio::sync::Semaphore::new(PORTAL_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for (n, request) in requests.into_iter().enumerate() {
            let (portal, gate) = (self.clone(), Arc::clone(&gate));
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await;
                (n, portal.place(request).await)
            });
        }
        let mut placed = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (n, answer) = joined.map_err(rt)?;
            placed.push((n, answer?));
        }
        placed.sort_by_key(|(n, _)| *n);
        Ok(placed.into_iter().map(|(_, p)| p).collect())
    }

    /// `POST /v1/orders`, sent again with the same `Idempotency-Key` after an answer that
    /// asks for it (409, 429, 503 with `Retry-After`) or a lost connection, until 201.
    async fn place(&self, request: OrderRequest) -> Result<Placed, Failure> {
        let body = serde_json::json!({
            "accountId": request.account_id,
            "lines": [{
                "whmcsProductId": request.product_id,
                "billingCycle": "monthly",
                "quantity": 1,
                "configOptions": {
                    SECRET_OPTION_ID.to_string(): {"value": SECRET_OPTION_VALUE, "sensitive": true},
                },
            }],
        });
        let mut last = String::new();
        for tries in 1..=PORTAL_MAX_TRIES {
            let sent = self
                .client
                .post(format!("{}{}", self.base, status_api::ORDERS_ROUTE))
                .bearer_auth(self.token.expose_secret())
                .header(status_api::CUSTOMER_NUMBER_HEADER, &request.customer_number)
                .header(status_api::IDEMPOTENCY_KEY_HEADER, &request.idempotency_key)
                .json(&body)
                .send()
                .await;
            let wait = match sent {
                Ok(response) if response.status().as_u16() == 201 => {
                    let answer: serde_json::Value = response.json().await.map_err(rt)?;
                    let field = |name: &str| {
                        answer
                            .get(name)
                            .and_then(serde_json::Value::as_str)
                            .map(str::to_owned)
                            .ok_or_else(|| rt(anyhow!("201 without {name}: {answer}")))
                    };
                    return Ok(Placed {
                        customer_number: request.customer_number,
                        order_id: field("orderId")?,
                        order_number: field("orderNumber")?,
                        tries,
                    });
                }
                Ok(response) if matches!(response.status().as_u16(), 409 | 429 | 503) => {
                    let after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map_or(PORTAL_MAX_WAIT, Duration::from_secs);
                    last = format!("{}", response.status());
                    after.min(PORTAL_MAX_WAIT)
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    return Err(rt(anyhow!(
                        "POST /v1/orders for {}: {status} {text}",
                        request.customer_number
                    )));
                }
                Err(e) => {
                    last = e.to_string();
                    PORTAL_MAX_WAIT
                }
            };
            tokio::time::sleep(wait).await;
        }
        Err(rt(anyhow!(
            "POST /v1/orders for {}: no 201 after {PORTAL_MAX_TRIES} tries (last: {last})",
            request.customer_number
        )))
    }

    /// The order's `status` as the status route answers it.
    async fn status(&self, order: &Placed) -> Result<String, Failure> {
        let path = status_api::STATUS_ROUTE.replace("{orderId}", &order.order_id);
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.token.expose_secret())
            .header(status_api::CUSTOMER_NUMBER_HEADER, &order.customer_number)
            .send()
            .await
            .map_err(rt)?;
        let code = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        Ok(answer
            .get("status")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| format!("HTTP {code}"), str::to_owned))
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
