//! A whole provisioner stack on loopback: sandboxes, real clients, a store (a SQLite file, or a
//! fresh PostgreSQL database dropped at the end), the engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use provisioner_core::{Engine, EngineBuilder, EngineConfig, RetryPolicy};
use provisioner_store::{SqlStore, Store, StoreOptions};
use sandbox::pubsub::{PubSubConfig, PubSubSandbox};
use sandbox::salesforce::{
    SalesforceConfig, SalesforceSandbox, SfOrder, SfOrderItem, salesforce_id,
};
use sandbox::whmcs::{Client, Product, WhmcsSandbox};
use secrecy::SecretString;
use test_support::pg::PgTempDb;

pub(crate) const REF_FIELD: u64 = 1;
/// The stack's WHMCS client timeouts (short, so injected latency turns into real timeouts),
/// which its engines record with their intents.
pub(crate) const WHMCS_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const WHMCS_ACCEPT_TIMEOUT: Duration = Duration::from_secs(2);
/// The stack's `WHMCS_SETTLE`.
pub(crate) const WHMCS_SETTLE: Duration = Duration::from_millis(500);

pub(crate) struct Stack {
    pub(crate) sf: SalesforceSandbox,
    pub(crate) whmcs: WhmcsSandbox,
    pub(crate) pubsub: Option<PubSubSandbox>,
    pub(crate) pubsub_client: Option<Arc<dyn sf_pubsub::PubSubApi>>,
    pub(crate) store: Arc<SqlStore>,
    pub(crate) engine: Engine,
    pub(crate) orders: Vec<SeededOrder>,
    pub(crate) dir: tempfile::TempDir,
    pg: Option<PgTempDb>,
    rest: Arc<dyn sf_rest::OrderApi>,
    whmcs_api: Arc<dyn whmcs_client::WhmcsApi>,
    /// Every alert the engine raised.
    pub(crate) alerts: Arc<RecordedAlerts>,
}

/// The engine's alerts, recorded as `kind:order_id[:whmcs_order_id]`.
#[derive(Default)]
pub(crate) struct RecordedAlerts(std::sync::Mutex<Vec<String>>);

impl RecordedAlerts {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    /// The alerts so far.
    pub(crate) fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl provisioner_core::Alerts for RecordedAlerts {
    async fn integrity_failure(&self, order_id: &str) {
        self.push(format!("integrity_failure {order_id}"));
    }

    async fn order_refused(&self, order_id: &str, _customer: &str) {
        self.push(format!("order_refused:{order_id}"));
    }
    async fn provisioning_failed(&self, order_id: &str, _customer: &str) {
        self.push(format!("provisioning_failed:{order_id}"));
    }
    async fn approval_withdrawn(&self, order_id: &str, _customer: &str, whmcs: Option<u64>) {
        let whmcs = whmcs.map(|id| format!(":{id}")).unwrap_or_default();
        self.push(format!("approval_withdrawn:{order_id}{whmcs}"));
    }
    async fn writeback_stuck(&self, order_id: &str, _customer: &str, whmcs: Option<u64>) {
        let whmcs = whmcs.map(|id| format!(":{id}")).unwrap_or_default();
        self.push(format!("writeback_stuck:{order_id}{whmcs}"));
    }
    async fn ref_field_not_stored(&self, product_id: u64, field_id: u64) {
        self.push(format!("ref_field_not_stored:{product_id}:{field_id}"));
    }
}

#[derive(Clone, Debug)]
pub(crate) struct SeededOrder {
    pub(crate) order_id: String,
    pub(crate) customer: String,
    pub(crate) seq: usize,
}

/// Where a stack's store lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Db {
    /// A SQLite file in the stack's temporary directory.
    Sqlite,
    /// A fresh database on the local PostgreSQL server (`DATABASE_URL_TEST` names the admin
    /// database, default `postgres://postgres@127.0.0.1:5432/test`).
    Postgres,
}

pub(crate) async fn build_with(customers: usize, per_customer: usize, with_pubsub: bool) -> Stack {
    build_on(Db::Sqlite, customers, per_customer, with_pubsub).await
}

/// A stack whose store is `db`; call [`Stack::cleanup`] at the end.
pub(crate) async fn build_on(
    db: Db,
    customers: usize,
    per_customer: usize,
    with_pubsub: bool,
) -> Stack {
    build_tuned(db, customers, per_customer, with_pubsub, |_| {}).await
}

/// [`build_on`] with the engine configuration changed by `tune`.
pub(crate) async fn build_tuned(
    db: Db,
    customers: usize,
    per_customer: usize,
    with_pubsub: bool,
    tune: impl FnOnce(&mut EngineConfig),
) -> Stack {
    let sf = SalesforceSandbox::start(SalesforceConfig::trusting(
        test_support::keys::PUBLIC_KEY_PEM,
    ))
    .await
    .unwrap();
    let whmcs = WhmcsSandbox::start().await.unwrap();
    let pid = whmcs.seed_product(Product::new("VPS").with_custom_field(
        REF_FIELD,
        "External Order Ref",
        false,
    ));

    let mut orders = Vec::new();
    let mut clients = BTreeMap::new();
    for c in 0..customers {
        let client_id = whmcs.seed_client(Client::active(
            &format!("Customer{c}"),
            &format!("c{c}@example.com"),
        ));
        clients.insert(c, client_id);
    }
    let mut n = 0u64;
    for round in 0..per_customer {
        for c in 0..customers {
            n += 1;
            let order_id = salesforce_id("801", n);
            let customer = format!("C-{c:04}");
            let mut order = SfOrder::new(order_id.clone(), "Approved");
            order.customer_number = Some(customer.clone());
            // Approved a while ago (the reconcile sweep only looks at Orders older than a minute
            // boundary).
            order.last_modified = chrono::Utc::now() - chrono::Duration::hours(1);
            order.whmcs_client_id = serde_json::json!(clients[&c].to_string());
            sf.insert_order(order);
            sf.insert_order_item(SfOrderItem {
                id: salesforce_id("802", n),
                order_id: order_id.clone(),
                quantity: if n.is_multiple_of(3) { 2.0 } else { 1.0 },
                whmcs_product_id: serde_json::json!(pid as f64),
                billing_cycle: Some("monthly".into()),
                config_options: None,
            });
            orders.push(SeededOrder {
                order_id,
                customer,
                seq: round * customers + c,
            });
        }
    }

    let tokens = sf_tokens(&sf);
    let (pubsub, pubsub_client) = if with_pubsub {
        let checker = sf.token_checker();
        let ps = PubSubSandbox::start(
            PubSubConfig::default()
                .token_validator(move |t| checker.is_valid(t))
                .keepalive_interval(Duration::from_millis(200)),
        )
        .await
        .unwrap();
        let client = sf_pubsub::PubSubClient::new(
            sf_pubsub::ClientConfig::new(ps.endpoint()),
            Arc::clone(&tokens) as Arc<dyn sf_auth::TokenSource>,
        )
        .unwrap();
        (
            Some(ps),
            Some(Arc::new(client) as Arc<dyn sf_pubsub::PubSubApi>),
        )
    } else {
        (None, None)
    };
    let rest: Arc<dyn sf_rest::OrderApi> = Arc::new(
        sf_rest::RestOrderApi::new(
            tokens,
            // Short, so injected latency turns into real client timeouts.
            sf_rest::RestConfig {
                request_timeout: Duration::from_secs(1),
                ..sf_rest::RestConfig::default()
            },
        )
        .unwrap()
        // As the provisioner wires them: a job waiting to send a call again lends its slot.
        .with_pause(Arc::new(provisioner_core::pause_outside_slot)),
    );
    let mut whmcs_config = whmcs_config(&whmcs);
    whmcs_config.read_timeout = WHMCS_TIMEOUT;
    whmcs_config.provisioning_timeout = WHMCS_ACCEPT_TIMEOUT;
    let whmcs_api: Arc<dyn whmcs_client::WhmcsApi> = Arc::new(
        whmcs_client::HttpWhmcsClient::new(whmcs_config)
            .unwrap()
            .with_pause(Arc::new(provisioner_core::pause_outside_slot)),
    );

    let dir = tempfile::tempdir().unwrap();
    let pg = match db {
        Db::Sqlite => None,
        Db::Postgres => Some(PgTempDb::create().await),
    };
    let url = match &pg {
        Some(pg) => pg.url(),
        None => sqlite_url(&dir, "p.db"),
    };
    let alerts = Arc::new(RecordedAlerts::default());
    let (store, engine) =
        engine_tuned(&url, &rest, &whmcs_api, Arc::clone(&alerts) as _, tune).await;
    Stack {
        sf,
        whmcs,
        pubsub,
        pubsub_client,
        store,
        engine,
        orders,
        dir,
        pg,
        rest,
        whmcs_api,
        alerts,
    }
}

/// A JWT bearer token source for the Salesforce sandbox's first user.
pub(crate) fn sf_tokens(sf: &SalesforceSandbox) -> Arc<sf_auth::JwtBearer> {
    Arc::new(
        sf_auth::JwtBearer::new(sf_auth::JwtBearerConfig::new(
            sf.base_url(),
            sf.config().client_id.clone(),
            sf.config().usernames[0].clone(),
            SecretString::from(test_support::keys::PRIVATE_KEY_PEM),
        ))
        .unwrap(),
    )
}

/// The WHMCS client configuration for the WHMCS sandbox's API credentials.
pub(crate) fn whmcs_config(whmcs: &WhmcsSandbox) -> whmcs_client::WhmcsConfig {
    whmcs_client::WhmcsConfig::new(
        whmcs.api_url(),
        SecretString::from(whmcs.config().identifier.clone()),
        SecretString::from(whmcs.config().secret.clone()),
    )
}

fn sqlite_url(dir: &tempfile::TempDir, file: &str) -> String {
    format!("sqlite://{}/{file}", dir.path().display())
}

/// A store in `dir/file` and an engine over it and the given clients.
pub(crate) async fn engine_on(
    dir: &tempfile::TempDir,
    file: &str,
    rest: &Arc<dyn sf_rest::OrderApi>,
    whmcs_api: &Arc<dyn whmcs_client::WhmcsApi>,
) -> (Arc<SqlStore>, Engine) {
    engine_at(&sqlite_url(dir, file), rest, whmcs_api).await
}

/// A store at `url` and an engine over it and the given clients.
pub(crate) async fn engine_at(
    url: &str,
    rest: &Arc<dyn sf_rest::OrderApi>,
    whmcs_api: &Arc<dyn whmcs_client::WhmcsApi>,
) -> (Arc<SqlStore>, Engine) {
    let monitor = security::SecurityMonitor::new(
        Arc::new(security::LogSink),
        security::Thresholds::default(),
    );
    engine_tuned(url, rest, whmcs_api, Arc::new(monitor), |_| {}).await
}

/// [`engine_at`] with these alerts and the configuration changed by `tune`.
pub(crate) async fn engine_tuned(
    url: &str,
    rest: &Arc<dyn sf_rest::OrderApi>,
    whmcs_api: &Arc<dyn whmcs_client::WhmcsApi>,
    alerts: Arc<dyn provisioner_core::Alerts>,
    tune: impl FnOnce(&mut EngineConfig),
) -> (Arc<SqlStore>, Engine) {
    let master =
        field_crypto::MasterKey::from_config("base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=")
            .unwrap();
    let store = Arc::new(
        SqlStore::open(url, &master, StoreOptions::default())
            .await
            .unwrap(),
    );
    let mut config = EngineConfig {
        order_ref_fields: Some(REF_FIELD.into()),
        concurrency: 16,
        lease: Duration::from_secs(10),
        retry: RetryPolicy {
            base: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
            max_attempts: 40,
            max_age: Duration::from_secs(600),
        },
        reconcile_interval: Duration::from_secs(3600),
        reconcile_min_age: Duration::ZERO,
        poll_interval: Duration::from_millis(20),
        whmcs_timeout: WHMCS_TIMEOUT,
        whmcs_accept_timeout: WHMCS_ACCEPT_TIMEOUT,
        whmcs_settle: WHMCS_SETTLE,
        ..EngineConfig::default()
    };
    tune(&mut config);
    let engine = EngineBuilder::new(
        Arc::clone(rest),
        Arc::clone(whmcs_api),
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::clone(&store) as Arc<dyn audit::AuditLog>,
        alerts,
    )
    .config(config)
    .build();
    (store, engine)
}

impl Stack {
    /// Drops the stack's PostgreSQL database, if it has one.
    pub(crate) async fn cleanup(self) {
        let Stack {
            store, engine, pg, ..
        } = self;
        // Whatever connections remain, DROP ... WITH (FORCE) closes them.
        drop((engine, store));
        if let Some(pg) = pg {
            pg.close().await;
        }
    }

    /// A second engine over a new, empty store (a restore from nothing), same sandboxes.
    pub(crate) async fn fresh_engine(&self, file: &str) -> (Arc<SqlStore>, Engine) {
        engine_on(&self.dir, file, &self.rest, &self.whmcs_api).await
    }

    /// Publishes the Pub/Sub event of a seeded order.
    pub(crate) fn publish(&self, o: &SeededOrder) {
        self.pubsub
            .as_ref()
            .unwrap()
            .publish_order(
                sf_pubsub::DEFAULT_TOPIC,
                &sf_pubsub::OrderProvisionRequested {
                    created_date: 1_700_000_000_000,
                    created_by_id: "005000000000001AAA".into(),
                    order_id: o.order_id.clone(),
                    customer_number: o.customer.clone(),
                    account_id: None,
                },
            )
            .unwrap();
    }

    /// Waits until `n` jobs are done, or panics after `limit`.
    pub(crate) async fn drain_count(&self, n: u64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let c = self.store.job_counts().await.unwrap();
            if c.done >= n && c.pending == 0 && c.running == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "jobs did not drain: {c:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every job is final, or panics after `limit`.
    pub(crate) async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let c = self.store.job_counts().await.unwrap();
            if c.pending == 0 && c.running == 0 && c.done + c.failed + c.refused > 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "jobs did not drain: {c:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The invariants every run must end with: one WHMCS order per Salesforce Order, every
    /// Order activated with its WHMCS ids, per-customer arrival order kept except past an
    /// Order that waited for a retry, audit chain clean.
    pub(crate) async fn check_invariants(&self) {
        self.check_invariants_of(&self.store).await;
    }

    pub(crate) async fn check_invariants_of(&self, store: &SqlStore) {
        let services = self.whmcs.services();
        let mut by_ref: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
        for s in &services {
            let r = s.custom_fields.get(&REF_FIELD).cloned().unwrap_or_default();
            by_ref.entry(r).or_default().insert(s.order_id);
        }
        assert_eq!(
            self.whmcs.orders().len(),
            self.orders.len(),
            "one WHMCS order per Salesforce Order"
        );
        let mut per_customer: BTreeMap<String, Vec<(usize, u64)>> = BTreeMap::new();
        for o in &self.orders {
            let whmcs_orders = by_ref
                .get(&o.order_id)
                .unwrap_or_else(|| panic!("no WHMCS order for {}", o.order_id));
            assert_eq!(whmcs_orders.len(), 1, "{} has {whmcs_orders:?}", o.order_id);
            let whmcs_id = *whmcs_orders.iter().next().unwrap();
            let sf = self.sf.order(&o.order_id).unwrap();
            assert_eq!(sf.status, "Activated", "{}", o.order_id);
            assert_eq!(
                sf.whmcs_order_id.as_deref(),
                Some(whmcs_id.to_string().as_str())
            );
            assert!(sf.provisioned_at.is_some());
            let whmcs_order = self.whmcs.order(whmcs_id).unwrap();
            assert_eq!(whmcs_order.status, "Active");
            per_customer
                .entry(o.customer.clone())
                .or_default()
                .push((o.seq, whmcs_id));
        }
        // A customer's Orders are provisioned in arrival order, except that a later one may
        // pass an earlier one that waited for a retry or a settle point (a `step_failed`
        // record) while it waited.
        for (customer, mut list) in per_customer {
            list.sort();
            for (i, &(seq, id)) in list.iter().enumerate() {
                for &(later_seq, later_id) in &list[i + 1..] {
                    if later_id > id {
                        continue;
                    }
                    let order = &self.orders.iter().find(|o| o.seq == seq).unwrap().order_id;
                    let waited = provisioner_store::Store::audit_for_order(store, order, 1000)
                        .await
                        .unwrap()
                        .iter()
                        .any(|r| r.record.action == audit::Action::STEP_FAILED);
                    assert!(
                        waited,
                        "customer {customer}: Order #{later_seq} (WHMCS {later_id}) passed \
                         #{seq} (WHMCS {id}), which never waited"
                    );
                }
            }
        }
        let summary = store.verify_audit().await.unwrap();
        assert!(summary.records() > self.orders.len() as u64);
    }
}

/// A subscriber from the earliest retained event, quick to reconnect (for the sandboxes).
pub(crate) fn fast_subscriber() -> provisioner_core::subscriber::SubscriberConfig {
    provisioner_core::subscriber::SubscriberConfig {
        start: sf_pubsub::ReplayStart::Earliest,
        watchdog: Duration::from_secs(10),
        restart_backoff: Duration::from_millis(50),
        reconnect_backoff: (Duration::from_millis(20), Duration::from_millis(500)),
        leadership_poll: Duration::from_millis(100),
        ..provisioner_core::subscriber::SubscriberConfig::default()
    }
}
