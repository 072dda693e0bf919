//! A whole provisioner stack on loopback: sandboxes, real clients, a SQLite store, the engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use provisioner_core::intake::{EventFields, IntakeItem};
use provisioner_core::{Engine, EngineConfig, Ports, RetryPolicy};
use provisioner_store::{SqlStore, Store, StoreOptions};
use sandbox::salesforce::{
    SalesforceConfig, SalesforceSandbox, SfOrder, SfOrderItem, salesforce_id, test_keys,
};
use sandbox::whmcs::{Client, Product, WhmcsSandbox};
use secrecy::SecretString;

pub(crate) const REF_FIELD: u64 = 1;

pub(crate) struct Stack {
    pub(crate) sf: SalesforceSandbox,
    pub(crate) whmcs: WhmcsSandbox,
    pub(crate) store: Arc<SqlStore>,
    pub(crate) engine: Engine,
    pub(crate) orders: Vec<SeededOrder>,
    pub(crate) _dir: tempfile::TempDir,
}

#[derive(Clone, Debug)]
pub(crate) struct SeededOrder {
    pub(crate) order_id: String,
    pub(crate) customer: String,
    pub(crate) seq: usize,
}

pub(crate) async fn build(customers: usize, per_customer: usize) -> Stack {
    let sf = SalesforceSandbox::start(SalesforceConfig::default())
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
            order.whmcs_client_id = serde_json::json!(clients[&c].to_string());
            sf.insert_order(order);
            sf.insert_order_item(SfOrderItem {
                id: salesforce_id("802", n),
                order_id: order_id.clone(),
                quantity: if n % 3 == 0 { 2.0 } else { 1.0 },
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

    let tokens = Arc::new(
        sf_auth::JwtBearer::new(sf_auth::JwtBearerConfig::new(
            sf.base_url(),
            sf.config().client_id.clone(),
            sf.config().usernames[0].clone(),
            SecretString::from(test_keys::PRIVATE_KEY_PEM.to_owned()),
        ))
        .unwrap(),
    );
    let rest = sf_rest::RestOrderApi::new(tokens, sf_rest::RestConfig::default()).unwrap();
    let mut whmcs_config = whmcs_client::WhmcsConfig::new(
        whmcs.api_url(),
        SecretString::from(whmcs.config().identifier.clone()),
        SecretString::from(whmcs.config().secret.clone()),
    );
    whmcs_config.read_timeout = Duration::from_secs(5);
    let whmcs_api = whmcs_client::HttpWhmcsClient::new(whmcs_config).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let master =
        field_crypto::MasterKey::from_config("base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=")
            .unwrap();
    let store = Arc::new(
        SqlStore::open(
            &format!("sqlite://{}/p.db", dir.path().display()),
            &master,
            StoreOptions::default(),
        )
        .await
        .unwrap(),
    );
    let monitor = security::SecurityMonitor::new(
        Arc::new(security::LogSink),
        security::Thresholds::default(),
    );
    let ports = Ports {
        orders: Arc::new(rest),
        whmcs: Arc::new(whmcs_api),
        store: Arc::clone(&store) as Arc<dyn Store>,
        audit: Arc::clone(&store) as Arc<dyn audit::AuditLog>,
        alerts: Arc::new(monitor),
    };
    let config = EngineConfig {
        order_ref_field_id: Some(REF_FIELD),
        concurrency: 16,
        lease: Duration::from_secs(10),
        retry: RetryPolicy {
            base: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
            max_attempts: 40,
            max_age: Duration::from_secs(600),
        },
        reconcile_interval: Duration::from_secs(3600),
        poll_interval: Duration::from_millis(20),
        ..EngineConfig::default()
    };
    let engine = Engine::new(ports, config, None);
    Stack {
        sf,
        whmcs,
        store,
        engine,
        orders,
        _dir: dir,
    }
}

impl Stack {
    pub(crate) fn event(&self, o: &SeededOrder, n: usize) -> IntakeItem {
        IntakeItem::Event {
            event_id: uuid::Uuid::new_v4().to_string(),
            replay_id: (n as u64).to_be_bytes().to_vec(),
            payload: vec![],
            decoded: Ok(EventFields {
                order_id: o.order_id.clone(),
                customer_number: o.customer.clone(),
                account_id: None,
            }),
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
    /// Order activated with its WHMCS ids, per-customer order kept, audit chain clean.
    pub(crate) async fn check_invariants(&self) {
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
        for (customer, mut list) in per_customer {
            list.sort();
            let ids: Vec<u64> = list.iter().map(|(_, id)| *id).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(
                ids, sorted,
                "customer {customer}: orders provisioned out of arrival order"
            );
        }
        let summary = audit::verify(&*self.store, self.store.audit_key())
            .await
            .unwrap();
        assert!(summary.records > self.orders.len() as u64);
    }
}
