//! `sf-sandbox` as a process: start it, read the environment it prints, and use exactly that
//! environment with the real clients (JWT bearer, REST, WHMCS, Pub/Sub).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sf_auth::TokenSource;
use sf_pubsub::{
    ClientConfig, Message, OrderProvisionRequested, PubSubClient, ReplayStart, SubscribeConfig,
};
use sf_rest::{OrderApi as _, RestConfig, RestOrderApi, RetryPolicy};
use test_support::sf_sandbox::SfSandbox;
use tokio::process::Command;
use tokio::time::timeout;
use whmcs_client::{
    CustomFields, HttpWhmcsClient, NewOrder, OrderLine, WhmcsApi as _, WhmcsConfig,
};

const BIN: &str = env!("CARGO_BIN_EXE_sf-sandbox");

/// Bound on anything the sandbox does; reached only when something hangs.
const PATIENCE: Duration = Duration::from_secs(60);

/// Starts the binary with `args`, the test key and an empty environment, and reads its
/// announcement. The child is killed when dropped (a failed assertion included), so no test
/// leaves one behind.
async fn start(args: &[&str]) -> SfSandbox {
    SfSandbox::start(Path::new(BIN), args, PATIENCE).await
}

/// A WHMCS client made only from the printed variables.
fn whmcs(sandbox: &SfSandbox) -> HttpWhmcsClient {
    let (url, identifier, secret) = sandbox.whmcs_credentials();
    HttpWhmcsClient::new(WhmcsConfig::new(url, identifier, secret)).unwrap()
}

/// Subscribes from EARLIEST and returns the first `n` decoded events.
async fn events(
    sandbox: &SfSandbox,
    tokens: Arc<dyn TokenSource>,
    n: usize,
) -> Vec<OrderProvisionRequested> {
    let client =
        PubSubClient::new(ClientConfig::new(sandbox.var("SF_PUBSUB_ENDPOINT")), tokens).unwrap();
    assert_eq!(sandbox.var("SF_EVENTS_REPLAY"), "EARLIEST");
    let mut subscription = client.subscribe::<OrderProvisionRequested>(
        SubscribeConfig::new(sandbox.var("SF_PROVISION_EVENT_CHANNEL"))
            .start(ReplayStart::Earliest),
    );
    let mut events = Vec::new();
    while events.len() < n {
        let message = timeout(PATIENCE, subscription.next())
            .await
            .expect("events in time")
            .expect("the subscription goes on")
            .unwrap();
        if let Message::Event(event) = message {
            events.push(event.record.unwrap());
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_environment_reaches_every_seeded_service() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("sandbox.env");
    // The sandbox generates its key pair, as it does for a developer.
    let started = std::time::Instant::now();
    let sandbox = SfSandbox::start_generating_key(
        Path::new(BIN),
        &[
            "--customers",
            "2",
            "--orders-per-customer",
            "2",
            "--publish",
            "--state-file",
            state_file.to_str().unwrap(),
        ],
        PATIENCE,
    )
    .await;
    eprintln!(
        "sf-sandbox with a generated key ready in {:?}",
        started.elapsed()
    );

    // The announcement: every variable, `# ready` last, and the same text in the state file.
    let keys: BTreeSet<&str> = sandbox.env.keys().map(String::as_str).collect();
    for key in [
        "SF_LOGIN_URL",
        "SF_AUDIENCE",
        "SF_CLIENT_ID",
        "SF_USERNAME",
        "SF_PRIVATE_KEY_FILE",
        "SF_PUBSUB_ENDPOINT",
        "SF_PROVISION_EVENT_CHANNEL",
        "SF_EVENTS_REPLAY",
        "WHMCS_API_URL",
        "WHMCS_API_IDENTIFIER",
        "WHMCS_API_SECRET",
        "WHMCS_ORDER_REF_FIELD_ID",
    ] {
        assert!(keys.contains(key), "{key} missing from {:?}", sandbox.lines);
    }
    assert_eq!(sandbox.lines.last().map(String::as_str), Some("# ready"));
    let mut announced = sandbox.lines.join("\n");
    announced.push('\n');
    assert_eq!(std::fs::read_to_string(&state_file).unwrap(), announced);
    for key in ["SF_LOGIN_URL", "SF_PUBSUB_ENDPOINT", "WHMCS_API_URL"] {
        assert!(sandbox.var(key).starts_with("http://127.0.0.1:"), "{key}");
    }
    assert_eq!(
        sandbox.var("SF_PROVISION_EVENT_CHANNEL"),
        sf_pubsub::DEFAULT_TOPIC
    );
    let key_file = std::path::PathBuf::from(sandbox.var("SF_PRIVATE_KEY_FILE"));
    let generated = std::fs::read_to_string(&key_file).unwrap();
    assert!(generated.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_ne!(
        generated,
        test_support::keys::PRIVATE_KEY_PEM,
        "a fresh key"
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key file is private: {mode:o}");
    }

    // (a) A token through the JWT bearer flow with the printed key, client id, user, audience.
    let tokens = sandbox.tokens();
    let token = tokens.token().await.unwrap();
    assert!(token.instance_url.starts_with("http://127.0.0.1:"));
    assert_eq!(token.org_id.len(), 18);

    // (d) The four published events, decoded, from EARLIEST.
    let events = events(&sandbox, tokens.clone(), 4).await;
    let order_ids: BTreeSet<&str> = events.iter().map(|e| e.order_id.as_str()).collect();
    assert_eq!(order_ids.len(), 4, "{events:?}");
    let customers: BTreeSet<&str> = events.iter().map(|e| e.customer_number.as_str()).collect();
    assert_eq!(customers.len(), 2, "{events:?}");

    // (b) Each Order through REST: Approved, the event's customer and account, a WHMCS client,
    // one OrderItem with a WHMCS product.
    let rest = RestOrderApi::new(tokens.clone(), RestConfig::default()).unwrap();
    let mut client_of = BTreeMap::new();
    let mut product_id = None;
    for event in &events {
        let order = rest.fetch_order(&event.order_id).await.unwrap();
        assert_eq!(order.id.to_18(), event.order_id);
        assert_eq!(order.status.as_deref(), Some("Approved"));
        assert_eq!(
            order.customer_number.as_deref(),
            Some(event.customer_number.as_str())
        );
        assert_eq!(order.account_id, event.account_id);
        assert!(order.order_number.is_some());
        let client_id: u64 = order.whmcs_client_id.as_deref().unwrap().parse().unwrap();
        let previous = client_of.insert(event.customer_number.clone(), client_id);
        assert!(
            previous.is_none_or(|p| p == client_id),
            "one client per customer"
        );
        assert_eq!(order.items.len(), 1);
        let item = &order.items[0];
        assert_eq!(item.quantity, 1);
        assert_eq!(item.billing_cycle.as_deref(), Some("monthly"));
        product_id = Some(
            item.whmcs_product_id
                .as_deref()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    let client_ids: BTreeSet<u64> = client_of.values().copied().collect();
    assert_eq!(
        client_ids.len(),
        2,
        "each customer has its own WHMCS client"
    );

    // (c) WHMCS with the printed credentials: the clients exist and are Active, and the product
    // carries the printed external-ref custom field.
    let whmcs = whmcs(&sandbox);
    for client_id in &client_ids {
        let details = whmcs.get_client_details(*client_id).await.unwrap();
        assert_eq!(details.id, *client_id);
        assert!(details.is_active(), "{details:?}");
    }
    let ref_field: u64 = sandbox.var("WHMCS_ORDER_REF_FIELD_ID").parse().unwrap();
    let client_id = *client_ids.first().unwrap();
    let mut line = OrderLine::new(product_id.unwrap(), "monthly");
    line.custom_fields = CustomFields::new().with(ref_field, events[0].order_id.as_str());
    let mut order = NewOrder::new(client_id, vec![line]);
    order.no_email = true;
    whmcs.add_order(&order).await.unwrap();
    let found = whmcs
        .find_service_by_custom_field(client_id, ref_field, &events[0].order_id)
        .await
        .unwrap();
    let service = found.expect("the service carries the external ref");
    let field = service
        .custom_fields
        .iter()
        .find(|f| f.id == ref_field)
        .unwrap();
    // A field the product defines is listed with its name; an undefined one has none.
    assert_eq!(field.name, "Salesforce Order Id");

    // SIGTERM: exit 0, and the key file and state file are gone.
    assert!(key_file.exists());
    assert_eq!(sandbox.terminate().await, Some(0));
    assert!(
        !key_file.exists(),
        "the private key file is removed on exit"
    );
    assert!(!state_file.exists(), "the state file is removed on exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_rate_one_fails_rest_and_whmcs_but_not_login_or_pubsub() {
    let sandbox = start(&[
        "--customers",
        "1",
        "--publish",
        "--fault-rate",
        "1",
        "--pubsub-end-stream-every",
        "0",
    ])
    .await;
    let tokens = sandbox.tokens();
    tokens.token().await.unwrap();
    let events = events(&sandbox, tokens.clone(), 1).await;
    let rest = RestOrderApi::new(
        tokens,
        RestConfig {
            retry: RetryPolicy::none(),
            ..RestConfig::default()
        },
    )
    .unwrap();
    let err = rest.fetch_order(&events[0].order_id).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let err = whmcs(&sandbox).get_client_details(1).await.unwrap_err();
    assert!(
        matches!(err.class(), whmcs_client::ErrorClass::Transient),
        "{err}"
    );
    assert_eq!(sandbox.terminate().await, Some(0));
}

/// `POST $SF_LOGIN_URL/sandbox/orders/{id}`: status code and JSON answer.
async fn admin_post(sandbox: &SfSandbox, id: &str, body: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/sandbox/orders/{id}",
            sandbox.var("SF_LOGIN_URL")
        ))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A portal developer re-approves an Order by hand while a provisioner would run: the admin
/// route sets the Status (seen through REST) and publishes a new event for the Order (seen
/// through a subscription), as `--help` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_route_re_approves_an_order_and_publishes_its_event() {
    let sandbox = start(&["--customers", "1", "--orders-per-customer", "2"]).await;
    let tokens = sandbox.tokens();
    let rest = RestOrderApi::new(tokens.clone(), RestConfig::default()).unwrap();
    let order_id = sandbox::salesforce::salesforce_id("801", 2);
    let status = async |id: &str| rest.fetch_order(id).await.unwrap().status;

    let (code, body) = admin_post(&sandbox, &order_id, r#"{"status": "Draft"}"#).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["published"], serde_json::Value::Null);
    assert_eq!(status(&order_id).await.as_deref(), Some("Draft"));

    let approve = r#"{"status": "Approved", "publish": true}"#;
    let (code, body) = admin_post(&sandbox, &order_id[..15], approve).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["order"]["Status"], "Approved");
    assert_eq!(status(&order_id).await.as_deref(), Some("Approved"));
    let event_id = body["published"]["eventId"].as_str().unwrap().to_owned();
    // Nothing was published at start, so the first event on the channel is this one.
    let first = events(&sandbox, tokens.clone(), 1).await;
    assert_eq!(first[0].order_id, order_id);
    assert_eq!(first[0].customer_number, sandbox::seed::customer_number(1));
    // Again: a new event id.
    let (code, body) = admin_post(&sandbox, &order_id, r#"{"publish": true}"#).await;
    assert_eq!(code, 200, "{body}");
    assert_ne!(
        body["published"]["eventId"].as_str(),
        Some(event_id.as_str())
    );
    let both = events(&sandbox, tokens, 2).await;
    assert_eq!(both[1].order_id, order_id);

    let (code, body) = admin_post(&sandbox, &order_id, r#"{"status": "Shipped"}"#).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("invalid_status"))
    );
    assert_eq!(sandbox.terminate().await, Some(0));

    let help = timeout(
        PATIENCE,
        Command::new(BIN).arg("--help").env_clear().output(),
    )
    .await
    .unwrap()
    .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("/sandbox/orders/"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_private_key_is_trusted_printed_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("app.key");
    std::fs::write(&key_file, test_support::keys::OTHER_PRIVATE_KEY_PEM).unwrap();
    let key_arg = key_file.to_str().unwrap();
    let sandbox =
        SfSandbox::start_generating_key(Path::new(BIN), &["--private-key-file", key_arg], PATIENCE)
            .await;
    assert_eq!(sandbox.var("SF_PRIVATE_KEY_FILE"), key_arg);
    // The key is trusted: a token with it (its public key derived by the sandbox).
    sandbox.tokens().token().await.unwrap();
    assert_eq!(sandbox.terminate().await, Some(0));
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        test_support::keys::OTHER_PRIVATE_KEY_PEM,
        "a given key file is the caller's: left as it was"
    );

    // Not a private key: exit 1, naming the file, not echoing its text.
    let not_a_key = dir.path().join("public.pem");
    std::fs::write(&not_a_key, test_support::keys::PUBLIC_KEY_PEM).unwrap();
    let out = timeout(
        PATIENCE,
        Command::new(BIN)
            .args(["--private-key-file", not_a_key.to_str().unwrap()])
            .env_clear()
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("public.pem"), "{stderr}");
    assert!(stderr.contains("not an RSA private key"), "{stderr}");
    let body = test_support::keys::PUBLIC_KEY_PEM.lines().nth(1).unwrap();
    assert!(!stderr.contains(body), "{stderr}");
}

#[tokio::test]
async fn bad_flags_exit_2_naming_the_flag() {
    for args in [
        &["--fault-rate", "2"][..],
        &["--token-lifetime", "soon"],
        &["--item-config-options", r#"{"pw":"x"}"#],
    ] {
        let out = timeout(
            PATIENCE,
            Command::new(BIN)
                .args(args)
                .env_clear()
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_product_catalogue_prints_a_ref_field_per_product() {
    let sandbox = start(&["--products", "3", "--customers", "1"]).await;
    assert_eq!(sandbox.var("WHMCS_ORDER_REF_FIELD_ID"), "1:11,2:21,3:31");
    let one = start(&["--order-ref-field-id", "7"]).await;
    assert_eq!(one.var("WHMCS_ORDER_REF_FIELD_ID"), "7");
}

/// `GET <base><path>` as JSON.
async fn get_json(base: &str, path: &str) -> serde_json::Value {
    reqwest::get(format!("{base}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The WHMCS orders the admin route shows, once `ready` holds for them.
async fn whmcs_orders_when(
    base: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let orders = get_json(base, "/sandbox/orders").await;
        if ready(&orders) {
            return orders;
        }
        assert!(tokio::time::Instant::now() < deadline, "{orders}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 15's tools for process tests: a hold armed by flag commits after the client gave up,
/// a fault armed at run time through the admin route hits the next call, and the admin routes
/// tell which credential sent each WHMCS call and which user each PATCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_runtime_faults_and_who_sent_what() {
    let sandbox = start(&[
        "--customers",
        "1",
        "--record-requests",
        "--whmcs-hold-add-order",
        "1sx1",
        "--whmcs-extra-credential",
        "instance-b:secret-b",
        "--extra-username",
        "b@example.com",
    ])
    .await;
    let whmcs_base = sandbox
        .var("WHMCS_API_URL")
        .strip_suffix(sandbox::whmcs::API_PATH)
        .unwrap()
        .to_owned();
    let sf_base = sandbox.var("SF_LOGIN_URL").to_owned();
    let mut config = WhmcsConfig::new(
        sandbox.var("WHMCS_API_URL"),
        secrecy::SecretString::from("instance-b"),
        secrecy::SecretString::from("secret-b"),
    );
    config.read_timeout = Duration::from_millis(200);
    let b = HttpWhmcsClient::new(config).unwrap();
    let sf_order = sandbox::salesforce::salesforce_id("801", 1);
    let mut line = OrderLine::new(1, "monthly");
    line.custom_fields = CustomFields::new().with(1, &sf_order);

    // Held past the client's timeout: unknown to the client, committed all the same.
    let err = b
        .add_order(&NewOrder::new(1, vec![line]))
        .await
        .unwrap_err();
    assert_eq!(
        err.class(),
        whmcs_client::ErrorClass::UnknownOutcome,
        "{err}"
    );
    let orders = whmcs_orders_when(&whmcs_base, |o| o["orders"][0]["id"].is_u64()).await;
    let order_id = orders["orders"][0]["id"].as_u64().unwrap();
    assert_eq!(orders["orders"][0]["status"], "Pending");
    assert_eq!(
        orders["orders"][0]["services"][0]["customFields"]["1"],
        sf_order.as_str()
    );

    // Armed at run time: the next AcceptOrder gets an HTML 500, the one after goes through.
    let armed = reqwest::Client::new()
        .post(format!("{whmcs_base}/sandbox/faults"))
        .body(r#"{"action": "AcceptOrder", "fault": "html500", "times": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(armed.status().as_u16(), 200);
    let accept = whmcs_client::AcceptOrderRequest::provision(order_id, false);
    assert!(b.accept_order(&accept).await.is_err());
    b.accept_order(&accept).await.unwrap();
    let orders = get_json(&whmcs_base, "/sandbox/orders").await;
    assert_eq!(orders["orders"][0]["status"], "Active");
    assert_eq!(orders["orders"][0]["accepts"], 1);
    assert_eq!(orders["orders"][0]["services"][0]["moduleCreates"], 1);
    let requests = get_json(&whmcs_base, "/sandbox/requests").await;
    let seen: Vec<(String, String, String)> = requests["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
            (text("action"), text("identifier"), text("fault"))
        })
        .collect();
    let b_id = || "instance-b".to_owned();
    assert_eq!(
        seen,
        [
            ("AddOrder".to_owned(), b_id(), "hold".to_owned()),
            ("AcceptOrder".to_owned(), b_id(), "html500".to_owned()),
            ("AcceptOrder".to_owned(), b_id(), "-".to_owned()),
        ]
    );
    assert!(!requests.to_string().contains("secret-b"));

    // A PATCH by the extra user is recorded with its name.
    let pem = std::fs::read_to_string(sandbox.var("SF_PRIVATE_KEY_FILE")).unwrap();
    let mut jwt = sf_auth::JwtBearerConfig::new(
        &sf_base,
        sandbox.var("SF_CLIENT_ID"),
        "b@example.com",
        secrecy::SecretString::from(pem),
    );
    jwt.audience = Some(sandbox.var("SF_AUDIENCE").to_owned());
    let rest = RestOrderApi::new(
        Arc::new(sf_auth::JwtBearer::new(jwt).unwrap()),
        RestConfig::default(),
    )
    .unwrap();
    let update = sf_rest::OrderUpdate {
        status: Some("Provisioning".into()),
        ..sf_rest::OrderUpdate::default()
    };
    rest.update_order(&sf_order, &update).await.unwrap();
    let patches = get_json(&sf_base, "/sandbox/patches").await;
    assert_eq!(patches["patches"][0]["orderId"], sf_order.as_str());
    assert_eq!(patches["patches"][0]["username"], "b@example.com");
    assert_eq!(patches["patches"][0]["status"], 204);
    assert_eq!(sandbox.terminate().await, Some(0));

    let help = Command::new(BIN).arg("--help").env_clear().output();
    let help = timeout(PATIENCE, help).await.unwrap().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "/sandbox/faults",
        "/sandbox/requests",
        "/sandbox/patches",
        "--whmcs-hold-add-order",
        "--whmcs-hold-accept-order",
        "DURxN",
        "--whmcs-extra-credential",
        "--extra-username",
        "--record-requests",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

/// `--publish-rate`: nothing is published before a client subscribes; then every event comes,
/// and `GET /sandbox/stats` counts the publishes, the PATCHes to `Activated` and their latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_publishing_starts_with_the_first_subscriber_and_stats_follow_activations() {
    let sandbox = start(&[
        "--customers",
        "3",
        "--orders-per-customer",
        "2",
        "--publish",
        "--publish-rate",
        "200",
    ])
    .await;
    let login = sandbox.var("SF_LOGIN_URL").to_owned();
    let before = get_json(&login, "/sandbox/stats").await;
    assert_eq!(before["published"], 0, "nobody subscribed yet: {before}");
    assert_eq!(before["activated"], 0, "{before}");

    let tokens = sandbox.tokens();
    let events = events(&sandbox, tokens.clone(), 6).await;
    let ids: BTreeSet<&str> = events.iter().map(|e| e.order_id.as_str()).collect();
    assert_eq!(ids.len(), 6, "{events:?}");
    assert_eq!(get_json(&login, "/sandbox/stats").await["published"], 6);

    let rest = RestOrderApi::new(tokens, RestConfig::default()).unwrap();
    let activate = sf_rest::OrderUpdate {
        status: Some("Activated".to_owned()),
        ..sf_rest::OrderUpdate::default()
    };
    for event in &events[..4] {
        rest.update_order(&event.order_id, &activate).await.unwrap();
    }
    // The same PATCH again is no second activation.
    rest.update_order(&events[0].order_id, &activate)
        .await
        .unwrap();
    let stats = get_json(&login, "/sandbox/stats?latencies=true").await;
    assert_eq!(stats["activated"], 4, "{stats}");
    assert_eq!(stats["latencies"], 4, "{stats}");
    assert!(stats["p99Ms"].as_f64().unwrap() >= stats["p50Ms"].as_f64().unwrap());

    // No WHMCS order yet, so none twice.
    let whmcs_base = sandbox
        .var("WHMCS_API_URL")
        .trim_end_matches("/includes/api.php")
        .to_owned();
    let whmcs_stats = get_json(&whmcs_base, "/sandbox/stats").await;
    assert_eq!(whmcs_stats["orders"], 0, "{whmcs_stats}");
    assert_eq!(whmcs_stats["duplicates"], 0, "{whmcs_stats}");
    assert_eq!(sandbox.terminate().await, Some(0));
}

#[tokio::test]
async fn a_publish_rate_needs_publish() {
    let out = Command::new(BIN)
        .args(["--publish-rate", "10"])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--publish"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
