//! Order intake against the real loopback Salesforce sandbox and a real SQLite store: one key,
//! one Order (sequential, 20 at once, after a lost answer), another body refused, keys per
//! customer, another customer's Account refused, an unknown product leaving nothing behind,
//! and sensitive options reaching Salesforce only sealed.

use std::sync::Arc;
use std::time::Duration;

use field_crypto::{FieldContext, Keyring, MasterKey};
use provisioner_core::order_intake::{
    DEFAULT_ORDER_RATE, IntakeAnswer, IntakeConfig, OptionSealer, OrderIntake,
    SENSITIVE_OPTION_KIND,
};
use provisioner_core::{ProvisionLimit, SystemClock};
use provisioner_store::{SqlStore, StoreOptions};
use sandbox::salesforce::{FaultKind, Route, SalesforceConfig, SalesforceSandbox};
use sandbox::seed::{Plan, Seeded};
use sandbox::whmcs::WhmcsSandbox;

use crate::stack::sf_tokens;

const SECRET: &str = "root-pw-canary-41d7";

/// Seals with a real keyring; fingerprints as hex (tests only: the service's are keyed).
struct TestSealer(Arc<Keyring>);

impl OptionSealer for TestSealer {
    fn seal(&self, external_id: &str, option_id: &str, value: &str) -> Result<String, String> {
        let ctx = FieldContext::new(SENSITIVE_OPTION_KIND, &format!("{external_id}#{option_id}"))
            .map_err(|e| e.to_string())?;
        self.0
            .encrypt(&ctx, value.as_bytes())
            .map_err(|e| e.to_string())
    }

    fn fingerprint(&self, bytes: &[u8]) -> Result<String, String> {
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

struct Desk {
    sf: SalesforceSandbox,
    _whmcs: WhmcsSandbox,
    seeded: Seeded,
    intake: Arc<OrderIntake>,
    keyring: Arc<Keyring>,
    _dir: tempfile::TempDir,
}

const MASTER_KEY: &str = "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=";

async fn desk() -> Desk {
    desk_on(None, ProvisionLimit::process(DEFAULT_ORDER_RATE)).await
}

/// The sandboxes and one intake over a store at `url` (default: a SQLite file in a temporary
/// directory) with the customer order rate held by `limit`.
async fn desk_on(url: Option<String>, limit: ProvisionLimit) -> Desk {
    let sf = SalesforceSandbox::start(SalesforceConfig::trusting(
        test_support::keys::PUBLIC_KEY_PEM,
    ))
    .await
    .unwrap();
    let whmcs = WhmcsSandbox::start().await.unwrap();
    let seeded = sandbox::seed::seed(
        &sf,
        &whmcs,
        &Plan {
            customers: 2,
            orders_per_customer: 1,
            quantity: 1,
            billing_cycle: "monthly".into(),
            config_options: None,
            status: "Draft".into(),
            order_ref_field_id: 1,
            products: 2,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let url = url.unwrap_or_else(|| format!("sqlite://{}/intake.db", dir.path().display()));
    let store = open_store(&url).await;
    let keyring = Arc::new(Keyring::create(&master(), chrono::Utc::now()).unwrap());
    let intake = intake_over(&sf, store, Arc::clone(&keyring), limit);
    Desk {
        sf,
        _whmcs: whmcs,
        seeded,
        intake: Arc::new(intake),
        keyring,
        _dir: dir,
    }
}

fn master() -> MasterKey {
    MasterKey::from_config(MASTER_KEY).unwrap()
}

async fn open_store(url: &str) -> Arc<SqlStore> {
    Arc::new(
        SqlStore::open(url, &master(), StoreOptions::default())
            .await
            .unwrap(),
    )
}

/// An intake (as one instance runs it) over `store`, talking to `sf`.
fn intake_over(
    sf: &SalesforceSandbox,
    store: Arc<SqlStore>,
    keyring: Arc<Keyring>,
    limit: ProvisionLimit,
) -> OrderIntake {
    let rest = sf_rest::RestOrderApi::new(
        sf_tokens(sf),
        sf_rest::RestConfig {
            request_timeout: Duration::from_secs(2),
            ..sf_rest::RestConfig::default()
        },
    )
    .unwrap();
    OrderIntake::new(
        Arc::new(rest),
        store,
        Arc::new(TestSealer(keyring)),
        Arc::new(SystemClock::new()),
        IntakeConfig {
            pricebook_id: sf.pricebook_id(),
            new_status: "Pending Review".into(),
            hold: Duration::from_secs(120),
            pricebook_ttl: Duration::from_secs(300),
            order_limit: limit,
        },
    )
}

impl Desk {
    /// Customer `i` (from 1): number and Account id.
    fn customer(&self, i: usize) -> (String, String) {
        let event = &self.seeded.events[i - 1];
        (
            event.customer_number.clone(),
            event.account_id.clone().unwrap(),
        )
    }

    fn body(&self, account: &str, quantity: u32) -> Vec<u8> {
        let pid = self.seeded.pricebook_entries[0].0;
        serde_json::json!({
            "accountId": account,
            "lines": [{
                "whmcsProductId": pid,
                "billingCycle": "monthly",
                "quantity": quantity,
                "configOptions": {"41": {"value": SECRET, "sensitive": true}, "42": 7}
            }]
        })
        .to_string()
        .into_bytes()
    }
}

fn json(answer: &IntakeAnswer) -> serde_json::Value {
    serde_json::from_str(&answer.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_one_order_sequentially_and_twenty_at_once() {
    let d = desk().await;
    let (customer, account) = d.customer(1);
    let before = d.sf.order_count();
    let body = d.body(&account, 2);
    let first = d.intake.place(&customer, "key-seq-0001", &body).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(json(&first)["status"], "pending_review");
    let again = d.intake.place(&customer, "key-seq-0001", &body).await;
    assert_eq!(again, first, "the same answer");
    assert_eq!(d.sf.order_count(), before + 1);

    // Twenty at once with a new key: one Order; each answer is that Order or "in progress".
    let calls = (0..20).map(|_| {
        let (intake, customer, body) = (d.intake.clone(), customer.clone(), body.clone());
        tokio::spawn(async move { intake.place(&customer, "key-par-0002", &body).await })
    });
    let answers: Vec<IntakeAnswer> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        d.sf.order_count(),
        before + 2,
        "one more Order for twenty requests"
    );
    let created: Vec<_> = answers.iter().filter(|a| a.status == 201).collect();
    assert!(!created.is_empty());
    assert!(created.iter().all(|a| a.body == created[0].body));
    assert!(
        answers
            .iter()
            .all(|a| a.status == 201 || (a.status == 409 && a.retry_after.is_some())),
        "{answers:?}"
    );
    // Same key, another body: refused, still no new Order.
    let other = d
        .intake
        .place(&customer, "key-seq-0001", &d.body(&account, 3))
        .await;
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(d.sf.order_count(), before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_answer_is_found_by_external_id_and_never_creates_twice() {
    let d = desk().await;
    let (customer, account) = d.customer(1);
    let before = d.sf.order_count();
    let body = d.body(&account, 1);
    // The create commits; its answer is lost (and the lookup right after finds it).
    d.sf.faults()
        .fail_next(Route::Composite, 1, FaultKind::CommitThenDrop);
    let first = d.intake.place(&customer, "key-lost-0001", &body).await;
    let retried = if first.status == 201 {
        first
    } else {
        assert_eq!(first.status, 503, "{}", first.body);
        assert!(first.retry_after.is_some());
        d.intake.place(&customer, "key-lost-0001", &body).await
    };
    assert_eq!(retried.status, 201, "{}", retried.body);
    assert_eq!(
        d.sf.faults().fired(Route::Composite),
        1,
        "the answer was lost"
    );
    assert_eq!(d.sf.order_count(), before + 1, "exactly one Order");
    let order_id = json(&retried)["orderId"].as_str().unwrap().to_owned();
    assert_eq!(
        d.sf.order_by_request_id(&format!("{customer}:key-lost-0001"))
            .map(|o| o.id),
        Some(order_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_are_per_customer_and_another_customers_account_is_refused() {
    let d = desk().await;
    let (c1, a1) = d.customer(1);
    let (c2, a2) = d.customer(2);
    let before = d.sf.order_count();
    let one = d.intake.place(&c1, "key-shared-01", &d.body(&a1, 1)).await;
    let two = d.intake.place(&c2, "key-shared-01", &d.body(&a2, 1)).await;
    assert_eq!((one.status, two.status), (201, 201));
    assert_ne!(json(&one)["orderId"], json(&two)["orderId"]);
    // Customer 1 naming customer 2's Account.
    let theirs = d.intake.place(&c1, "key-theirs-01", &d.body(&a2, 1)).await;
    assert_eq!(theirs.status, 403, "{}", theirs.body);
    assert_eq!(d.sf.order_count(), before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_and_unknown_products_leave_no_order() {
    let d = desk().await;
    let (customer, account) = d.customer(1);
    let before = d.sf.order_count();
    for (body, what) in [
        (
            serde_json::json!({"accountId": account, "lines": []}),
            "empty lines",
        ),
        (
            serde_json::json!({"accountId": account, "lines": [], "x": 1}),
            "unknown field",
        ),
        (
            serde_json::json!({"accountId": account, "lines": [{"whmcsProductId": 1, "billingCycle": "weekly", "quantity": 1}]}),
            "bad cycle",
        ),
        (
            serde_json::json!({"accountId": account, "lines": [{"whmcsProductId": 1, "billingCycle": "monthly", "quantity": 101}]}),
            "quantity",
        ),
    ] {
        let answer = d
            .intake
            .place(&customer, "key-bad-00001", body.to_string().as_bytes())
            .await;
        assert_eq!(answer.status, 400, "{what}: {}", answer.body);
    }
    let huge = vec![b' '; 70 * 1024];
    assert_eq!(
        d.intake
            .place(&customer, "key-bad-00002", &huge)
            .await
            .status,
        400
    );
    assert_eq!(
        d.intake
            .place(&customer, "short", &d.body(&account, 1))
            .await
            .status,
        400
    );
    let unknown = serde_json::json!({"accountId": account, "lines": [
        {"whmcsProductId": d.seeded.pricebook_entries[0].0, "billingCycle": "monthly", "quantity": 1},
        {"whmcsProductId": 9999, "billingCycle": "monthly", "quantity": 1}
    ]});
    let answer = d
        .intake
        .place(&customer, "key-bad-00003", unknown.to_string().as_bytes())
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(json(&answer)["error"], "unknown_product");
    assert_eq!(d.sf.order_count(), before, "nothing created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sensitive_option_reaches_salesforce_only_sealed() {
    let d = desk().await;
    let (customer, account) = d.customer(1);
    let answer = d
        .intake
        .place(&customer, "key-secret-01", &d.body(&account, 1))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let order_id = json(&answer)["orderId"].as_str().unwrap().to_owned();
    let items = d.sf.order_items(&order_id);
    assert_eq!(items.len(), 1);
    let stored = items[0].config_options.clone().unwrap();
    assert!(
        !stored.contains(SECRET),
        "plaintext in Salesforce: {stored}"
    );
    let options: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(options["42"], 7, "plain values stay plain");
    let sealed = options["41"].as_str().unwrap();
    let ctx = FieldContext::new(
        SENSITIVE_OPTION_KIND,
        &format!("{customer}:key-secret-01#41"),
    )
    .unwrap();
    let opened = d.keyring.decrypt(&ctx, sealed).unwrap();
    assert_eq!(opened.expose(), SECRET.as_bytes());
    // Bound to its Order and option: under another option id it does not open.
    let elsewhere = FieldContext::new(
        SENSITIVE_OPTION_KIND,
        &format!("{customer}:key-secret-01#42"),
    )
    .unwrap();
    assert!(d.keyring.decrypt(&elsewhere, sealed).is_err());
}

/// On PostgreSQL the customer order rate is one budget for every instance: two intakes (two
/// connection pools, as two processes have) taking turns admit 3 new Orders at 3/hour, not 6;
/// the refused ones get 429 with `Retry-After` and create nothing; another customer has a
/// budget of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgres_share_one_customers_order_rate() {
    let db = test_support::pg::PgTempDb::create().await;
    let limit = ProvisionLimit::shared(security::Rate::parse("3/hour").unwrap());
    let d = desk_on(Some(db.url()), limit.clone()).await;
    let other = intake_over(
        &d.sf,
        open_store(&db.url()).await,
        Arc::clone(&d.keyring),
        limit,
    );
    let (c1, a1) = d.customer(1);
    let (c2, a2) = d.customer(2);
    let before = d.sf.order_count();
    let mut statuses = Vec::new();
    for n in 0..6 {
        let intake = if n % 2 == 0 {
            d.intake.as_ref()
        } else {
            &other
        };
        let answer = intake
            .place(&c1, &format!("key-rate-{n:02}"), &d.body(&a1, 1))
            .await;
        if answer.status == 429 {
            assert!(answer.retry_after.is_some_and(|s| s >= 1), "{answer:?}");
        }
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429, 429]);
    assert_eq!(d.sf.order_count(), before + 3);
    // A refused key stays free: the same request later is not answered 422.
    let again = other.place(&c1, "key-rate-03", &d.body(&a1, 1)).await;
    assert_eq!(again.status, 429, "{}", again.body);
    assert_eq!(
        other
            .place(&c2, "key-rate-00", &d.body(&a2, 1))
            .await
            .status,
        201
    );
    drop((d, other));
    db.close().await;
}
