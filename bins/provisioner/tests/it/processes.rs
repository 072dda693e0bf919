//! `sf-sandbox` and `provisioner` as processes, configured only by the environment (issue 7,
//! done-when 2 and 3): orders provisioned, checked through the real clients and the status
//! API, and nothing secret in any byte either process wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sf_rest::{OrderApi as _, RestConfig, RestOrderApi};
use test_support::process::{Captured, PATIENCE, free_port};
use test_support::sf_sandbox::SfSandbox;
use tokio::time::{Instant, timeout};
use whmcs_client::{HttpWhmcsClient, WhmcsApi as _, WhmcsConfig};

use crate::logs::{
    assert_logs_nontrivial, assert_no_canary, encoded_forms, pem_body_lines, pii_canaries,
    whmcs_config_option_forms,
};
use crate::status_api::{StatusApi, assert_status_body};
use crate::support::{
    BIN, CapturedProvisioner as _, MASTER_KEY, PORTAL_TOKEN, REF_FIELD, wait_healthy,
};

/// The `sf-sandbox` binary of the same build as the provisioner under test, next to it in the
/// same target directory. `$CARGO build --locked -p sf-sandbox` runs first (once per test
/// process): it builds the binary when it is missing, and rebuilds it when it is older than
/// its sources (`cargo test -p provisioner` does not build other packages' binaries), and is
/// a quick no-op otherwise. `PP_SF_SANDBOX_BIN` names a binary to use instead.
pub(crate) async fn sf_sandbox_bin() -> PathBuf {
    static BUILT: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    BUILT.get_or_init(build_sf_sandbox).await.clone()
}

async fn build_sf_sandbox() -> PathBuf {
    // `cargo xtask ci` names the binary its `nextest run --workspace` has just built (every
    // package's binaries, with the workspace's features): no second, differently featured
    // build of sf-sandbox and its dependencies inside the test.
    if let Some(prebuilt) = std::env::var_os("PP_SF_SANDBOX_BIN") {
        let path = PathBuf::from(prebuilt);
        assert!(
            path.is_file(),
            "PP_SF_SANDBOX_BIN names {}, which is not a file",
            path.display()
        );
        return path;
    }
    let path = Path::new(BIN).with_file_name(format!("sf-sandbox{}", std::env::consts::EXE_SUFFIX));
    cargo_build(&["-p", "sf-sandbox"]).await;
    assert!(
        path.is_file(),
        "sf-sandbox was built, but not at {}",
        path.display()
    );
    path
}

/// `$CARGO build --locked <args>` into the profile and target directory of the binary under
/// test, from this package's directory; panics when it fails or takes over 20 minutes.
pub(crate) async fn cargo_build(args: &[&str]) {
    let profile_dir = Path::new(BIN)
        .parent()
        .expect("the binary is in a profile directory");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory name");
    let mut cmd =
        tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--locked"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .kill_on_drop(true);
    // Cargo sets these for the test process only; build scripts that watch them (ring's
    // does) would otherwise rebuild for this build and again for the next ordinary one.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_for_tests = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_",
            "CARGO_CRATE_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || ["OUT_DIR", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&&*key);
        if set_for_tests {
            cmd.env_remove(&*key);
        }
    }
    if profile != "debug" {
        cmd.args(["--profile", profile]);
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    let status = timeout(Duration::from_secs(1200), cmd.status())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`cargo build {}` took longer than 20 minutes",
                args.join(" ")
            )
        })
        .expect("cargo runs");
    assert!(status.success(), "`cargo build {}` failed", args.join(" "));
}

/// `(order id, customer number)` of the `n`-th seeded Order (from 1) when `per_customer`
/// Orders are seeded per customer (the `sandbox::seed` numbering).
fn seeded_order(n: u64, per_customer: u64) -> (String, String) {
    let customer = u32::try_from((n - 1) / per_customer + 1).unwrap();
    (
        sandbox::salesforce::salesforce_id("801", n),
        sandbox::seed::customer_number(customer),
    )
}

// ---------------------------------------------------------------------------------------------
// Done-when 2 and 3: sf-sandbox + provisioner as processes, configured only by the environment.
// ---------------------------------------------------------------------------------------------

/// The root password of the process e2e: characters that every encoding changes.
const PROCESS_ROOT_PASSWORD: &str = "Canary Root+Pw/7f3a=91&x";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_configured_by_env_provision_and_serve_status_without_leaking() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("sandbox.env");
    let config_options = serde_json::json!({ "4": PROCESS_ROOT_PASSWORD }).to_string();
    let mut sandbox = SfSandbox::start(
        &sf_sandbox_bin().await,
        &[
            "--customers",
            "3",
            "--orders-per-customer",
            "2",
            "--publish",
            "--item-config-options",
            &config_options,
            "--state-file",
            state_file.to_str().unwrap(),
        ],
        PATIENCE,
    )
    .await;
    assert!(state_file.is_file(), "the state file is written");

    // The provisioner's environment: what sf-sandbox printed, plus the store, key, token, port.
    let port = free_port();
    let mut env = sandbox.env.clone();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_owned(), v.to_owned());
    };
    set(
        "DATABASE_URL",
        &format!("sqlite://{}/provisioner.db", dir.path().display()),
    );
    set("FIELD_ENCRYPTION_KEY", MASTER_KEY);
    set("PORTAL_API_TOKEN", PORTAL_TOKEN);
    set("PROVISIONER_HTTP_ADDR", &format!("127.0.0.1:{port}"));
    set("CUSTOMER_STATUS_RATE", "3/minute");
    set("HTTP_IP_RATE", "100000/minute");
    set("LOG_FORMAT", "json");
    set(
        "RUST_LOG",
        "trace,h2=info,hyper=info,hyper_util=info,tonic=info,tower=info,reqwest=info,sqlx=info",
    );
    let mut provisioner = Captured::provisioner("provisioner", &["run"], &env);
    wait_healthy(port, PATIENCE).await;

    // Salesforce writes, read back through REST with the printed credentials.
    let orders: Vec<(String, String)> = (1..=6).map(|n| seeded_order(n, 2)).collect();
    let rest = RestOrderApi::new(sandbox.tokens(), RestConfig::default()).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let sf_orders = loop {
        let mut fetched = Vec::new();
        for (id, _) in &orders {
            fetched.push(rest.fetch_order(id).await.unwrap());
        }
        if fetched
            .iter()
            .all(|o| o.status.as_deref() == Some("Activated") && o.whmcs_order_id.is_some())
        {
            break fetched;
        }
        let statuses: Vec<_> = fetched.iter().map(|o| o.status.clone()).collect();
        assert!(
            Instant::now() < deadline,
            "Orders not all Activated: {statuses:?}\n{}",
            provisioner.tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut whmcs_order_of = BTreeMap::new();
    let mut client_of = BTreeMap::new();
    for ((id, customer), order) in orders.iter().zip(&sf_orders) {
        assert_eq!(order.id.to_18(), *id);
        assert_eq!(order.customer_number.as_deref(), Some(customer.as_str()));
        let whmcs_order: u64 = order
            .whmcs_order_id
            .as_deref()
            .unwrap()
            .parse()
            .expect("WHMCS_Order_Id__c is a WHMCS order id");
        whmcs_order_of.insert(id.clone(), whmcs_order);
        let client: u64 = order.whmcs_client_id.as_deref().unwrap().parse().unwrap();
        client_of.insert(id.clone(), client);
    }
    let distinct: BTreeSet<u64> = whmcs_order_of.values().copied().collect();
    assert_eq!(distinct.len(), 6, "one WHMCS order per Salesforce Order");

    // WHMCS state through the API with the printed credentials: every service carries its
    // Salesforce Order Id, one accepted order per Salesforce Order, nothing else.
    let (url, identifier, secret) = sandbox.whmcs_credentials();
    let whmcs = HttpWhmcsClient::new(WhmcsConfig::new(url, identifier, secret)).unwrap();
    let clients: BTreeSet<u64> = client_of.values().copied().collect();
    assert_eq!(clients.len(), 3);
    let mut services_by_ref: BTreeMap<String, Vec<whmcs_client::Service>> = BTreeMap::new();
    for client in &clients {
        for service in whmcs.all_client_services(*client).await.unwrap() {
            let reference = service
                .custom_field(REF_FIELD)
                .unwrap_or_else(|| panic!("service {} has no external ref", service.id))
                .to_owned();
            services_by_ref.entry(reference).or_default().push(service);
        }
    }
    assert_eq!(
        services_by_ref.keys().cloned().collect::<BTreeSet<_>>(),
        whmcs_order_of.keys().cloned().collect::<BTreeSet<_>>(),
        "services exist for exactly the seeded Orders"
    );
    for (id, services) in &services_by_ref {
        assert_eq!(services.len(), 1, "quantity 1 gives one service: {id}");
        let service = &services[0];
        assert_eq!(service.order_id, whmcs_order_of[id], "{id}");
        assert_eq!(service.client_id, client_of[id], "{id}");
        assert_eq!(service.status, "Active", "{id}");
        let order = whmcs
            .get_order(service.order_id)
            .await
            .unwrap()
            .expect("the WHMCS order exists");
        assert!(order.is_active(), "WHMCS order of {id} accepted: {order:?}");
        assert_eq!(order.client_id, client_of[id]);
    }

    // The status API.
    let mut api = StatusApi::new(port);
    let (o1, c1) = &orders[0];
    let (o2, c2) = &orders[2];
    let (o3, c3) = &orders[4];
    let (o3b, _) = &orders[5];
    let unknown = sandbox::salesforce::salesforce_id("801", 999);
    // 200 for the owner, with exactly the contract's keys.
    let owner = api.status(o1, c1, PORTAL_TOKEN).await;
    assert_status_body(&owner, o1, &whmcs_order_of[o1].to_string());
    let services: Vec<String> = owner.json()["serviceIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        services,
        vec![services_by_ref[o1][0].id.to_string()],
        "serviceIds are the WHMCS services"
    );
    // 404 for someone else's order and for an unknown id: the same answer.
    let foreign = api.status(o1, c2, PORTAL_TOKEN).await;
    let never_seen = api.status(&unknown, c2, PORTAL_TOKEN).await;
    let never_seen_owner = api.status(&unknown, c1, PORTAL_TOKEN).await;
    for answer in [&foreign, &never_seen, &never_seen_owner] {
        assert_eq!(answer.status, 404, "{}", answer.body);
        assert_eq!(answer.body, foreign.body, "404 bodies are identical");
        assert_eq!(
            answer.header("content-type"),
            foreign.header("content-type")
        );
    }
    assert!(!foreign.body.contains(o1.as_str()), "{}", foreign.body);
    assert_status_body(
        &api.status(o2, c2, PORTAL_TOKEN).await,
        o2,
        &whmcs_order_of[o2].to_string(),
    );
    // 401 for a bad or missing token (and before the rate limit: these are not counted).
    for token in ["portal-canary-token-9c41e3", "", "x"] {
        let answer = api.status(o3, c3, token).await;
        assert_eq!(answer.status, 401, "{token:?}: {}", answer.body);
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    }
    let no_auth = api
        .get(
            &format!("/v1/orders/{o3}/status"),
            &[("x-customer-number", c3)],
        )
        .await;
    assert_eq!(no_auth.status, 401, "{}", no_auth.body);
    // 429 with Retry-After once the customer's burst (3/minute) is spent.
    assert_status_body(
        &api.status(o3, c3, PORTAL_TOKEN).await,
        o3,
        &whmcs_order_of[o3].to_string(),
    );
    assert_status_body(
        &api.status(o3b, c3, PORTAL_TOKEN).await,
        o3b,
        &whmcs_order_of[o3b].to_string(),
    );
    assert_eq!(api.status(&unknown, c3, PORTAL_TOKEN).await.status, 404);
    let limited = api.status(o3, c3, PORTAL_TOKEN).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    let retry_after: u64 = limited
        .header("retry-after")
        .expect("429 carries Retry-After")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    // Another customer is not limited by the first one's use.
    assert_eq!(api.status(o1, c1, PORTAL_TOKEN).await.status, 200);

    // From an address the allowlist does not hold, the connection is closed before anything
    // is read: a second provisioner that allows only 10.0.0.0/8, asked from loopback (no
    // traffic to any other address).
    let denied_port = free_port();
    let mut denied_env = env.clone();
    denied_env.insert(
        "DATABASE_URL".into(),
        format!("sqlite://{}/denied.db", dir.path().display()),
    );
    denied_env.insert(
        "PROVISIONER_HTTP_ADDR".into(),
        format!("127.0.0.1:{denied_port}"),
    );
    denied_env.insert("HTTP_ALLOWED_CIDRS".into(), "10.0.0.0/8".into());
    denied_env.insert("SF_EVENTS_ENABLED".into(), "false".into());
    let mut denied = Captured::provisioner("provisioner (10.0.0.0/8 only)", &["run"], &denied_env);
    // Listening (the port accepts), yet no path answers.
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(("127.0.0.1", denied_port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the denied provisioner never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = reqwest::Client::new();
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/nowhere",
        &format!("/v1/orders/{o1}/status"),
    ] {
        let sent = client
            .get(format!("http://127.0.0.1:{denied_port}{path}"))
            .bearer_auth(PORTAL_TOKEN)
            .header("X-Customer-Number", c1)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        assert!(
            sent.is_err(),
            "{path}: answered {:?}",
            sent.map(|r| r.status())
        );
    }

    // Both stop on SIGTERM with exit 0; so does the sandbox.
    assert_eq!(denied.terminate().await, Some(0), "{}", denied.tail());
    assert_eq!(
        provisioner.terminate().await,
        Some(0),
        "{}",
        provisioner.tail()
    );
    assert_eq!(
        sandbox.proc.terminate().await,
        Some(0),
        "{}",
        sandbox.proc.tail()
    );
    assert!(!state_file.exists(), "sf-sandbox removes its state file");

    // Log canary (Done-when 3): every byte both provisioners wrote and every status answer.
    let logs = provisioner.bytes();
    let ids: Vec<&str> = orders.iter().map(|(id, _)| id.as_str()).collect();
    assert_logs_nontrivial(&logs, &ids);
    let mut canaries = process_canaries(&sandbox.env, &config_options);
    canaries.push(("portal token".into(), PORTAL_TOKEN.into()));
    let denied_logs = denied.bytes();
    assert_no_canary(
        &canaries,
        &[
            ("provisioner output", &logs),
            ("second provisioner output", &denied_logs),
            ("status API answers", &api.transcript),
        ],
    );
}

/// Secrets and PII of a run against `sf-sandbox` (started with the test key of
/// `test_support::keys`).
fn process_canaries(env: &BTreeMap<String, String>, config_options: &str) -> Vec<(String, String)> {
    let mut canaries = Vec::new();
    for line in pem_body_lines(test_support::keys::PRIVATE_KEY_PEM) {
        canaries.push(("private key line".into(), line));
    }
    for name in ["WHMCS_API_SECRET", "WHMCS_API_IDENTIFIER"] {
        canaries.push((name.into(), env[name].clone()));
    }
    canaries.push((
        "FIELD_ENCRYPTION_KEY".into(),
        MASTER_KEY.trim_start_matches("base64:").into(),
    ));
    for form in encoded_forms(PROCESS_ROOT_PASSWORD) {
        canaries.push(("root password".into(), form));
    }
    for form in encoded_forms(config_options) {
        canaries.push(("Config_Options__c".into(), form));
    }
    for form in whmcs_config_option_forms(config_options) {
        canaries.push(("WHMCS configoptions".into(), form));
    }
    canaries.extend(pii_canaries(3));
    canaries
}
