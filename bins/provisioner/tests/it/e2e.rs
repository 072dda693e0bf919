//! End-to-end tests of `provisioner run` and `provisioner config check` (issue 7): the real
//! binaries as processes configured only through environment variables, checked through the
//! real clients (Salesforce REST, WHMCS API) and the status API over loopback HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use secrecy::SecretString;
use sf_auth::{JwtBearer, JwtBearerConfig, TokenSource};
use sf_rest::{OrderApi as _, RestConfig, RestOrderApi};
use tokio::io::AsyncReadExt as _;
use tokio::time::{Instant, timeout};
use whmcs_client::{HttpWhmcsClient, WhmcsApi as _, WhmcsConfig};

use crate::support::{BIN, REF_FIELD, ROOT_PASSWORD, World, free_port, spawn, wait_healthy};

/// DESIGN §6: a stopped process exits within this bound.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(30);

/// Bound on anything that should happen "soon"; reached only when something hangs.
const PATIENCE: Duration = Duration::from_secs(90);

/// The token the portal presents in every test here.
const PORTAL_TOKEN: &str = "portal-canary-token-9c41e2";

/// The master key of every test here (a canary too).
const MASTER_KEY: &str = "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=";

/// Every variable of DESIGN §5, by the name a user sets.
const DESIGN_VARIABLES: &[&str] = &[
    "SF_EVENTS_ENABLED",
    "SF_PROVISION_EVENT_CHANNEL",
    "SF_EVENTS_REPLAY",
    "SF_LOGIN_URL",
    "SF_AUDIENCE",
    "SF_CLIENT_ID",
    "SF_USERNAME",
    "SF_PRIVATE_KEY",
    "SF_API_VERSION",
    "SF_PUBSUB_ENDPOINT",
    "SF_PUBSUB_CA_FILE",
    "SF_PUBSUB_BATCH",
    "SF_ORDER_STATUS_APPROVED",
    "SF_ORDER_STATUS_PROVISIONING",
    "SF_ORDER_STATUS_PROVISIONED",
    "SF_ORDER_STATUS_FAILED",
    "WHMCS_API_URL",
    "WHMCS_API_IDENTIFIER",
    "WHMCS_API_SECRET",
    "WHMCS_ACCESS_KEY",
    "WHMCS_PAYMENT_METHOD",
    "WHMCS_ORDER_REF_FIELD_ID",
    "WHMCS_SEND_EMAIL",
    "WHMCS_NO_INVOICE",
    "DATABASE_URL",
    "JOB_LEASE",
    "FIELD_ENCRYPTION_KEY",
    "ENCRYPTION_KEY_ROTATION_DAYS",
    "AUDIT_LOG_RETENTION_DAYS",
    "SECURITY_ALERT_WEBHOOK",
    "PROVISIONER_HTTP_ADDR",
    "PORTAL_API_TOKEN",
    "HTTP_ALLOWED_CIDRS",
    "PROVISIONER_CONCURRENCY",
    "CUSTOMER_PROVISION_RATE",
    "CUSTOMER_STATUS_RATE",
    "RECONCILE_INTERVAL",
    "LOG_FORMAT",
];

/// Sends SIGTERM to the child.
pub(crate) fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until every seeded Order is Activated in the Salesforce sandbox.
pub(crate) async fn wait_all_activated(world: &World, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let done = activated(world);
        if done == world.seeded.events.len() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done}/{} Orders activated",
            world.seeded.events.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many seeded Orders are Activated in the Salesforce sandbox.
fn activated(world: &World) -> usize {
    world
        .seeded
        .events
        .iter()
        .filter(|e| {
            world
                .sf
                .order(&e.order_id)
                .is_some_and(|o| o.status == "Activated")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_provisions_published_orders_and_stops_on_sigterm() {
    let world = World::start(2, 3).await;
    let port = free_port();
    let env = world.env(port);
    let mut child = spawn(&["run"], &env);
    wait_healthy(port, Duration::from_secs(30)).await;
    world.publish_all();
    wait_all_activated(&world, Duration::from_secs(60)).await;
    assert_eq!(world.whmcs.orders().len(), 6);
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within the shutdown bound")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Harness: captured children, the sf-sandbox process, the status API client, canaries.
// ---------------------------------------------------------------------------------------------

/// A child whose stdout and stderr are read to the end into memory (so it never blocks on a
/// full pipe, and every byte it writes can be searched afterwards).
struct Captured {
    name: &'static str,
    child: tokio::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Captured {
    fn new(name: &'static str, mut child: tokio::process::Child) -> Self {
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            drain(child.stdout.take().expect("stdout piped"), Arc::clone(&out)),
            drain(child.stderr.take().expect("stderr piped"), Arc::clone(&err)),
        ];
        Captured {
            name,
            child,
            out,
            err,
            readers,
        }
    }

    /// `provisioner <args>` with exactly `env`.
    fn provisioner(name: &'static str, args: &[&str], env: &BTreeMap<String, String>) -> Self {
        Self::new(name, spawn(args, env))
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Every byte written so far, stdout then stderr.
    fn bytes(&self) -> Vec<u8> {
        let mut all = self.out.lock().unwrap().clone();
        all.extend_from_slice(&self.err.lock().unwrap());
        all
    }

    /// The last few thousand characters of stderr, for panic messages.
    fn tail(&self) -> String {
        let err = self.stderr();
        let start = err.char_indices().rev().nth(4000).map_or(0, |(i, _)| i);
        format!("--- {} stderr (tail) ---\n{}", self.name, &err[start..])
    }

    /// SIGTERM, then the exit code; panics unless it exits within [`SHUTDOWN_BOUND`].
    async fn terminate(&mut self) -> Option<i32> {
        sigterm(&self.child);
        self.wait_exit(SHUTDOWN_BOUND).await
    }

    /// Waits for the exit (and for the pipes to be read to the end); panics after `limit`.
    async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let status = match timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "{} did not exit within {limit:?}\n{}",
                self.name,
                self.tail()
            ),
        };
        for reader in self.readers.drain(..) {
            timeout(PATIENCE, reader)
                .await
                .expect("the pipes close after exit")
                .unwrap();
        }
        status.code()
    }
}

fn drain(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    sink: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// The `sf-sandbox` binary of the same build as the provisioner under test, next to it in the
/// same target directory. `$CARGO build --locked -p sf-sandbox` runs first (once per test
/// process): it builds the binary when it is missing, and rebuilds it when it is older than
/// its sources (`cargo test -p provisioner` does not build other packages' binaries), and is
/// a quick no-op otherwise. `PP_SF_SANDBOX_BIN` names a binary to use instead.
async fn sf_sandbox_bin() -> PathBuf {
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
    let provisioner = Path::new(BIN);
    let path = provisioner.with_file_name(format!("sf-sandbox{}", std::env::consts::EXE_SUFFIX));
    let profile_dir = provisioner
        .parent()
        .expect("the binary is in a profile directory");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory name");
    let mut cmd =
        tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--locked", "-p", "sf-sandbox"])
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
        .expect("building sf-sandbox took longer than 20 minutes")
        .expect("cargo runs");
    assert!(status.success(), "`cargo build -p sf-sandbox` failed");
    assert!(
        path.is_file(),
        "sf-sandbox was built, but not at {}",
        path.display()
    );
    path
}

/// A running `sf-sandbox` process and the environment it printed.
struct SfSandbox {
    proc: Captured,
    env: BTreeMap<String, String>,
}

impl SfSandbox {
    /// Starts `sf-sandbox <args>` with an empty environment and reads its announcement.
    async fn start(args: &[&str]) -> Self {
        let bin = sf_sandbox_bin().await;
        let child = tokio::process::Command::new(bin)
            .args(args)
            .env_clear()
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let proc = Captured::new("sf-sandbox", child);
        let deadline = Instant::now() + PATIENCE;
        let announced = loop {
            let out = proc.stdout();
            if let Some(end) = out.find("\n# ready\n") {
                break out[..end].to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "sf-sandbox printed no `# ready` line\n{out}\n{}",
                proc.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let env = announced
            .lines()
            .map(|line| {
                let (k, v) = line
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not a KEY=value line: {line:?}"));
                (k.to_owned(), unquote(v))
            })
            .collect();
        SfSandbox { proc, env }
    }

    fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("sf-sandbox printed no {key}: {:?}", self.env))
    }

    /// A token source made only from the printed variables.
    fn tokens(&self) -> Arc<dyn TokenSource> {
        let pem = std::fs::read_to_string(self.var("SF_PRIVATE_KEY_FILE")).unwrap();
        let mut config = JwtBearerConfig::new(
            self.var("SF_LOGIN_URL"),
            self.var("SF_CLIENT_ID"),
            self.var("SF_USERNAME"),
            SecretString::from(pem),
        );
        config.audience = Some(self.var("SF_AUDIENCE").to_owned());
        Arc::new(JwtBearer::new(config).unwrap())
    }

    /// A WHMCS client made only from the printed variables.
    fn whmcs(&self) -> HttpWhmcsClient {
        HttpWhmcsClient::new(WhmcsConfig::new(
            self.var("WHMCS_API_URL"),
            SecretString::from(self.var("WHMCS_API_IDENTIFIER").to_owned()),
            SecretString::from(self.var("WHMCS_API_SECRET").to_owned()),
        ))
        .unwrap()
    }
}

/// Undoes the single quotes a POSIX shell would undo.
fn unquote(value: &str) -> String {
    match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace(r"'\''", "'"),
        None => value.to_owned(),
    }
}

/// One status API answer.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// A loopback client for the status API that keeps a transcript of every answer.
struct StatusApi {
    http: reqwest::Client,
    base: String,
    transcript: Vec<u8>,
}

impl StatusApi {
    fn new(port: u16) -> Self {
        StatusApi {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            transcript: Vec::new(),
        }
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.http.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = timeout(PATIENCE, request.send())
            .await
            .expect("the status API answers in time")
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        self.transcript
            .extend_from_slice(format!("{status} {path}\n").as_bytes());
        for (k, v) in &headers {
            self.transcript.extend_from_slice(k.as_str().as_bytes());
            self.transcript.extend_from_slice(b": ");
            self.transcript.extend_from_slice(v.as_bytes());
            self.transcript.push(b'\n');
        }
        self.transcript.extend_from_slice(body.as_bytes());
        self.transcript.push(b'\n');
        Answer {
            status,
            headers,
            body,
        }
    }

    /// `GET /v1/orders/{order}/status` as `customer` with `token`.
    async fn status(&mut self, order: &str, customer: &str, token: &str) -> Answer {
        let auth = format!("Bearer {token}");
        self.get(
            &format!("/v1/orders/{order}/status"),
            &[("authorization", &auth), ("x-customer-number", customer)],
        )
        .await
    }

    /// Polls `path` until anything answers (used where `/healthz` itself is refused).
    async fn wait_answering(&mut self, path: &str) -> Answer {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let sent = self
                .http
                .get(format!("{}{path}", self.base))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if sent.is_ok() {
                return self.get(path, &[]).await;
            }
            assert!(Instant::now() < deadline, "{} never answered", self.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Percent-encodes every byte outside the URL "unreserved" set, with upper- or lowercase hex
/// and spaces as `%20` or `+` (form encoding).
fn percent_encodings(text: &str) -> Vec<String> {
    let mut forms = Vec::new();
    for upper in [true, false] {
        for plus in [false, true] {
            let mut out = String::new();
            for b in text.bytes() {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    out.push(char::from(b));
                } else if b == b' ' && plus {
                    out.push('+');
                } else if upper {
                    out.push_str(&format!("%{b:02X}"));
                } else {
                    out.push_str(&format!("%{b:02x}"));
                }
            }
            forms.push(out);
        }
    }
    forms
}

/// `secret` as it may leak: raw, base64 (standard, URL-safe, padded or not) and
/// percent-encoded.
fn encoded_forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = vec![secret.to_owned()];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(engine.encode(secret));
    }
    forms.extend(percent_encodings(secret));
    forms.sort();
    forms.dedup();
    forms
}

/// The body lines of a PEM key (each a canary of its own).
fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .map(str::to_owned)
        .collect()
}

/// Config options as WHMCS receives them (`base64(serialize(...))`), raw and form-encoded.
fn whmcs_config_option_forms(json: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    let encoded = whmcs_client::ConfigOptions::from_json(&value)
        .unwrap()
        .encode();
    let mut forms = vec![encoded.clone()];
    forms.extend(percent_encodings(&encoded));
    forms
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &str) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
}

/// Asserts that the captured logs are worth searching: `ids` (order ids) all occur in them
/// through the same search the canaries go through, and so does trace-level output.
fn assert_logs_nontrivial(logs: &[u8], ids: &[&str]) {
    assert!(logs.len() > 10_000, "only {} bytes of logs", logs.len());
    for id in ids {
        assert!(find(logs, id).is_some(), "the logs never name order {id}");
    }
    assert!(find(logs, "TRACE").is_some(), "trace logging was on");
    eprintln!("searched {} bytes of logs", logs.len());
}

/// Asserts that none of `canaries` occurs in any of `haystacks` (name, bytes).
fn assert_no_canary(canaries: &[(String, String)], haystacks: &[(&str, &[u8])]) {
    let mut found = Vec::new();
    for (what, canary) in canaries {
        assert!(
            canary.len() >= 6,
            "canary {what} is too short to mean anything"
        );
        for (name, bytes) in haystacks {
            if let Some(at) = find(bytes, canary) {
                let from = at.saturating_sub(200);
                let to = (at + canary.len() + 200).min(bytes.len());
                found.push(format!(
                    "{what} in {name}: ...{}...",
                    String::from_utf8_lossy(&bytes[from..to])
                ));
            }
        }
    }
    assert!(found.is_empty(), "canaries leaked:\n{}", found.join("\n\n"));
}

/// The status body keys of DESIGN §7, every one always present.
fn assert_status_body(answer: &Answer, order_id: &str, whmcs_order_id: &str) {
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    let object = body.as_object().expect("a JSON object");
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "orderId",
            "status",
            "whmcsOrderId",
            "serviceIds",
            "updatedAt",
            "error"
        ]),
        "{body}"
    );
    assert_eq!(body["orderId"], order_id, "{body}");
    assert_eq!(body["status"], "provisioned", "{body}");
    assert_eq!(body["whmcsOrderId"], whmcs_order_id, "{body}");
    let services = body["serviceIds"]
        .as_array()
        .expect("serviceIds is an array");
    assert!(!services.is_empty(), "{body}");
    assert!(services.iter().all(serde_json::Value::is_string), "{body}");
    chrono::DateTime::parse_from_rfc3339(body["updatedAt"].as_str().expect("a string"))
        .unwrap_or_else(|e| panic!("updatedAt is not RFC 3339 ({e}): {body}"));
    assert!(body["error"].is_null(), "{body}");
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
    let mut sandbox = SfSandbox::start(&[
        "--customers",
        "3",
        "--orders-per-customer",
        "2",
        "--publish",
        "--item-config-options",
        &config_options,
        "--state-file",
        state_file.to_str().unwrap(),
    ])
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
    let whmcs = sandbox.whmcs();
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

    // 403 from an address the allowlist does not hold: a second provisioner that allows only
    // 10.0.0.0/8, asked from loopback (no traffic to any other address).
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
    let mut denied_api = StatusApi::new(denied_port);
    let first = denied_api.wait_answering("/healthz").await;
    assert_eq!(first.status, 403, "{}", first.body);
    for path in ["/readyz", "/metrics", "/nowhere"] {
        let answer = denied_api.get(path, &[]).await;
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
    }
    let answer = denied_api.status(o1, c1, PORTAL_TOKEN).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(answer.body, r#"{"error":"forbidden"}"#);

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
            ("status API answers (denied)", &denied_api.transcript),
        ],
    );
}

/// Secrets and PII of a run against `sf-sandbox` (whose key file is gone by now, so the key
/// comes from the sandbox crate, which wrote it).
fn process_canaries(env: &BTreeMap<String, String>, config_options: &str) -> Vec<(String, String)> {
    let mut canaries = Vec::new();
    for line in pem_body_lines(sandbox::salesforce::test_keys::PRIVATE_KEY_PEM) {
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

/// The seeded customers' names and email addresses.
fn pii_canaries(customers: u32) -> Vec<(String, String)> {
    let mut canaries = Vec::new();
    for c in 1..=customers {
        canaries.push(("email".into(), format!("customer{c}@example.com")));
        canaries.push(("client name".into(), format!("Customer{c}")));
        canaries.push(("account name".into(), format!("Customer {c} Ltd")));
    }
    canaries
}

// ---------------------------------------------------------------------------------------------
// Done-when 3 again, at trace level for every crate, with the access tokens as canaries.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_secret_or_personal_leaks_at_trace_level_for_every_crate() {
    let world = World::start(2, 2).await;
    let port = free_port();
    let mut env = world.env(port);
    env.insert("PORTAL_API_TOKEN".into(), PORTAL_TOKEN.into());
    env.insert("FIELD_ENCRYPTION_KEY".into(), MASTER_KEY.into());
    env.insert("RUST_LOG".into(), "trace".into());
    env.insert("LOG_FORMAT".into(), "pretty".into());
    let mut provisioner = Captured::provisioner("provisioner", &["run"], &env);
    wait_healthy(port, PATIENCE).await;
    world.publish_all();
    wait_all_activated(&world, PATIENCE).await;

    let mut api = StatusApi::new(port);
    for event in &world.seeded.events {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer = api
                .status(&event.order_id, &event.customer_number, PORTAL_TOKEN)
                .await;
            if answer.status == 200 && answer.json()["status"] == "provisioned" {
                break;
            }
            assert!(Instant::now() < deadline, "{}", answer.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        api.status(&world.seeded.events[0].order_id, "CUST-00002", PORTAL_TOKEN)
            .await
            .status,
        404
    );
    assert_eq!(
        api.status(&world.seeded.events[0].order_id, "CUST-00001", "wrong")
            .await
            .status,
        401
    );
    assert_eq!(api.get("/metrics", &[]).await.status, 200);
    assert_eq!(api.get("/readyz", &[]).await.status, 200);
    assert_eq!(
        provisioner.terminate().await,
        Some(0),
        "{}",
        provisioner.tail()
    );

    let logs = provisioner.bytes();
    let ids: Vec<&str> = world
        .seeded
        .events
        .iter()
        .map(|e| e.order_id.as_str())
        .collect();
    assert_logs_nontrivial(&logs, &ids);
    let mut canaries = Vec::new();
    for line in pem_body_lines(sandbox::salesforce::test_keys::PRIVATE_KEY_PEM) {
        canaries.push(("private key line".to_owned(), line));
    }
    canaries.push((
        "WHMCS_API_SECRET".into(),
        world.whmcs.config().secret.clone(),
    ));
    canaries.push((
        "WHMCS_API_IDENTIFIER".into(),
        world.whmcs.config().identifier.clone(),
    ));
    canaries.push(("portal token".into(), PORTAL_TOKEN.into()));
    canaries.push((
        "FIELD_ENCRYPTION_KEY".into(),
        MASTER_KEY.trim_start_matches("base64:").into(),
    ));
    let issued = world.sf.issued_tokens();
    assert!(!issued.is_empty(), "the provisioner logged in");
    for token in issued {
        canaries.push(("Salesforce access token".into(), token));
    }
    let config_options = format!(r#"{{"4":"{ROOT_PASSWORD}"}}"#);
    for form in encoded_forms(ROOT_PASSWORD) {
        canaries.push(("root password".into(), form));
    }
    for form in whmcs_config_option_forms(&config_options) {
        canaries.push(("WHMCS configoptions".into(), form));
    }
    canaries.extend(pii_canaries(2));
    assert_no_canary(
        &canaries,
        &[
            ("provisioner output", &logs),
            ("status API answers", &api.transcript),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Done-when 4: `provisioner config check`.
// ---------------------------------------------------------------------------------------------

/// A complete, valid environment that needs no running sandbox (nothing is contacted).
fn complete_env(dir: &Path) -> BTreeMap<String, String> {
    let key_file = dir.join("sf-key.pem");
    std::fs::write(&key_file, sandbox::salesforce::test_keys::PRIVATE_KEY_PEM).unwrap();
    [
        ("SF_LOGIN_URL", "http://127.0.0.1:9"),
        ("SF_CLIENT_ID", "3MVG9-client-id"),
        ("SF_USERNAME", "integration@example.com"),
        ("SF_PRIVATE_KEY_FILE", key_file.to_str().unwrap()),
        ("SF_PUBSUB_ENDPOINT", "http://127.0.0.1:9"),
        ("SF_PUBSUB_BATCH", "42"),
        ("WHMCS_API_URL", "http://127.0.0.1:9/includes/api.php"),
        ("WHMCS_API_IDENTIFIER", "whmcs-ident-canary-11aa"),
        ("WHMCS_API_SECRET", "whmcs-secret-canary-22bb"),
        ("WHMCS_ACCESS_KEY", "whmcs-access-canary-33cc"),
        ("WHMCS_ORDER_REF_FIELD_ID", "7"),
        ("DATABASE_URL", "sqlite:///nonexistent/never-opened.db"),
        ("FIELD_ENCRYPTION_KEY", MASTER_KEY),
        (
            "SECURITY_ALERT_WEBHOOK",
            "http://127.0.0.1:9/hook?key=webhook-canary-44dd",
        ),
        ("PORTAL_API_TOKEN", PORTAL_TOKEN),
        ("PROVISIONER_HTTP_ADDR", "127.0.0.1:0"),
        ("CUSTOMER_STATUS_RATE", "5/second"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

async fn config_check(env: &BTreeMap<String, String>) -> (Option<i32>, String, String) {
    let mut check = Captured::provisioner("provisioner config check", &["config", "check"], env);
    let code = check.wait_exit(PATIENCE).await;
    (code, check.stdout(), check.stderr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_names_every_problem_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        "whmcs-ident-canary-11aa",
        "whmcs-secret-canary-22bb",
        "whmcs-access-canary-33cc",
        "webhook-canary-44dd",
        PORTAL_TOKEN,
        MASTER_KEY.trim_start_matches("base64:"),
    ];
    let pem_lines = pem_body_lines(sandbox::salesforce::test_keys::PRIVATE_KEY_PEM);

    // Complete: exit 0, every DESIGN §5 variable shown, the secrets redacted.
    let env = complete_env(dir.path());
    let (code, stdout, stderr) = config_check(&env).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in DESIGN_VARIABLES {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{name}="))),
            "{name} not shown:\n{stdout}"
        );
    }
    for name in [
        "SF_PRIVATE_KEY",
        "WHMCS_API_IDENTIFIER",
        "WHMCS_API_SECRET",
        "WHMCS_ACCESS_KEY",
        "FIELD_ENCRYPTION_KEY",
        "PORTAL_API_TOKEN",
        "SECURITY_ALERT_WEBHOOK",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{name}=[REDACTED]"))),
            "{name} not redacted:\n{stdout}"
        );
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("SF_PUBSUB_BATCH=42")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("SF_API_VERSION=v62.0")),
        "{stdout}"
    );
    for secret in secrets
        .iter()
        .copied()
        .chain(pem_lines.iter().map(String::as_str))
    {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} shown"
        );
    }

    // Missing and malformed variables: exit 2, each one named on stderr, no secret shown.
    let mut bad = complete_env(dir.path());
    for missing in ["SF_CLIENT_ID", "WHMCS_API_URL", "PORTAL_API_TOKEN"] {
        bad.remove(missing);
    }
    let malformed = [
        ("SF_PUBSUB_BATCH", "500"),
        ("JOB_LEASE", "soon"),
        ("HTTP_ALLOWED_CIDRS", "10.0.0.0/33"),
        ("CUSTOMER_STATUS_RATE", "5/fortnight"),
        ("PROVISIONER_HTTP_ADDR", "localhost"),
        ("DATABASE_URL", "mysql://db/provisioner"),
        ("WHMCS_SEND_EMAIL", "maybe"),
        ("SF_EVENTS_REPLAY", "YESTERDAY"),
    ];
    for (k, v) in malformed {
        bad.insert(k.to_owned(), v.to_owned());
    }
    let (code, stdout, stderr) = config_check(&bad).await;
    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in malformed.iter().map(|(k, _)| *k).chain([
        "SF_CLIENT_ID",
        "WHMCS_API_URL",
        "PORTAL_API_TOKEN",
    ]) {
        assert!(stderr.contains(name), "{name} not named:\n{stderr}");
    }
    for secret in secrets
        .iter()
        .copied()
        .chain(pem_lines.iter().map(String::as_str))
    {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} shown"
        );
    }

    // A malformed secret is named without its value.
    let mut bad_key = complete_env(dir.path());
    bad_key.insert("FIELD_ENCRYPTION_KEY".into(), "tiny-canary".into());
    bad_key.insert(
        "SF_PRIVATE_KEY_FILE".into(),
        dir.path().join("absent.pem").display().to_string(),
    );
    let (code, stdout, stderr) = config_check(&bad_key).await;
    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("FIELD_ENCRYPTION_KEY"), "{stderr}");
    assert!(stderr.contains("SF_PRIVATE_KEY_FILE"), "{stderr}");
    assert!(!stdout.contains("tiny-canary") && !stderr.contains("tiny-canary"));
}

// ---------------------------------------------------------------------------------------------
// Done-when 5: SIGTERM during a run, then a restart finishes the work without duplicates.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_run_exits_0_and_a_restart_finishes_without_duplicates() {
    let world = World::start(12, 5).await;
    let total = world.seeded.events.len();
    assert_eq!(total, 60);
    // Slow WHMCS down so that the signal lands while orders are in flight.
    world.whmcs.inject_fault(
        "AcceptOrder",
        sandbox::whmcs::Fault::Latency(Duration::from_millis(150)),
        None,
    );
    let port = free_port();
    let mut env = world.env(port);
    env.insert("PROVISIONER_CONCURRENCY".into(), "4".into());
    let mut first = Captured::provisioner("provisioner (first run)", &["run"], &env);
    wait_healthy(port, PATIENCE).await;
    world.publish_all();

    let deadline = Instant::now() + PATIENCE;
    while activated(&world) < 6 {
        assert!(Instant::now() < deadline, "no progress\n{}", first.tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at_signal = activated(&world);
    assert!(
        at_signal < total,
        "the signal must land mid-run (all {total} were done already)"
    );
    assert_eq!(first.terminate().await, Some(0), "{}", first.tail());
    let after_first = activated(&world);
    let placed = world.whmcs.orders().len();
    let unaccepted = world
        .whmcs
        .orders()
        .iter()
        .filter(|o| o.status != "Active")
        .count();
    eprintln!(
        "SIGTERM with {at_signal}/{total} Orders activated; {after_first} when the first run \
         exited; {placed} WHMCS orders placed, {unaccepted} of them not accepted"
    );
    assert!(
        after_first < total,
        "work was left for the restart ({after_first}/{total})"
    );
    assert!(
        first.stderr().contains("shutting down"),
        "the first run logged its shutdown\n{}",
        first.tail()
    );

    world.whmcs.clear_faults();
    let mut second = Captured::provisioner("provisioner (restart)", &["run"], &env);
    wait_healthy(port, PATIENCE).await;
    wait_all_activated(&world, PATIENCE).await;

    // Exactly one WHMCS order per Salesforce Order, and the Order names it.
    let deadline = Instant::now() + PATIENCE;
    loop {
        // The job settles just after the write-back; wait until WHMCS is quiet too.
        let pending = world
            .whmcs
            .orders()
            .iter()
            .filter(|o| o.status != "Active")
            .count();
        if pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} WHMCS orders never accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut orders_by_ref: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for service in world.whmcs.services() {
        let reference = service
            .custom_fields
            .get(&REF_FIELD)
            .cloned()
            .unwrap_or_else(|| panic!("service {} has no external ref", service.id));
        orders_by_ref
            .entry(reference)
            .or_default()
            .insert(service.order_id);
    }
    assert_eq!(orders_by_ref.len(), total, "services for every Order");
    for event in &world.seeded.events {
        let whmcs_orders = &orders_by_ref[&event.order_id];
        assert_eq!(
            whmcs_orders.len(),
            1,
            "{}: {whmcs_orders:?}",
            event.order_id
        );
        let sf = world.sf.order(&event.order_id).unwrap();
        assert_eq!(sf.status, "Activated");
        assert_eq!(
            sf.whmcs_order_id.as_deref(),
            Some(whmcs_orders.first().unwrap().to_string().as_str()),
            "{}",
            event.order_id
        );
    }
    assert_eq!(
        world.whmcs.orders().len(),
        total,
        "no duplicate WHMCS order"
    );
    assert_eq!(world.whmcs.services().len(), total, "no duplicate service");

    assert_eq!(second.terminate().await, Some(0), "{}", second.tail());
    let mut verify = Captured::provisioner("provisioner audit verify", &["audit", "verify"], &env);
    let code = verify.wait_exit(PATIENCE).await;
    assert_eq!(code, Some(0), "{}\n{}", verify.stdout(), verify.tail());
    assert!(
        verify.stdout().contains("audit chain ok"),
        "{}",
        verify.stdout()
    );
}

// ---------------------------------------------------------------------------------------------
// Done-when 6: `/metrics` is valid Prometheus text and moves as orders flow.
// ---------------------------------------------------------------------------------------------

/// One parsed sample line.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses Prometheus text exposition format 0.0.4, panicking on any malformed line.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match words.next() {
                Some("HELP") => {
                    let name = words.next().unwrap_or_default();
                    assert!(is_metric_name(name), "line {n}: bad HELP {line:?}");
                }
                Some("TYPE") => {
                    let name = words.next().unwrap_or_default();
                    let kind = words.next().unwrap_or_default();
                    assert!(is_metric_name(name), "line {n}: bad TYPE {line:?}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "line {n}: bad TYPE {line:?}"
                    );
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "line {n}: second TYPE for {name}"
                    );
                }
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("line {n}: no value: {line:?}"));
        let name = &line[..name_end];
        assert!(is_metric_name(name), "line {n}: bad name {line:?}");
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let close = loop {
                while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                    chars.next();
                }
                if let Some((i, '}')) = chars.peek().copied() {
                    break i;
                }
                let mut label = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    label.push(c);
                }
                assert!(
                    is_label_name(&label),
                    "line {n}: bad label {label:?} in {line:?}"
                );
                assert_eq!(
                    chars.next().map(|(_, c)| c),
                    Some('"'),
                    "line {n}: {line:?}"
                );
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            other => panic!("line {n}: bad escape {other:?} in {line:?}"),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => panic!("line {n}: unterminated label value in {line:?}"),
                    }
                }
                labels.insert(label, value);
            };
            rest = &inner[close + 1..];
        }
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .unwrap_or_else(|| panic!("line {n}: no value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("line {n}: value {value:?} is not a float"));
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("line {n}: bad timestamp in {line:?}"));
        }
        assert!(
            fields.next().is_none(),
            "line {n}: trailing text in {line:?}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix).filter(|base| {
                    matches!(
                        types.get(*base).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                })
            })
            .unwrap_or(name);
        if let Some(kind) = types.get(family) {
            if kind == "histogram" && name.ends_with("_bucket") {
                assert!(
                    labels.contains_key("le"),
                    "line {n}: bucket without le: {line:?}"
                );
            }
            if kind == "counter" {
                assert!(value >= 0.0, "line {n}: negative counter {line:?}");
            }
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels: labels.into_iter().collect(),
            value,
        });
    }
    samples
}

/// The sum of `name`'s samples whose labels include every pair of `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Scrapes `/metrics` until `jobs_total{outcome="provisioned"}` reaches `want`.
async fn scrape_until_provisioned(api: &mut StatusApi, want: f64) -> (String, Vec<Sample>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = api.get("/metrics", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let content_type = answer.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let samples = parse_prometheus(&answer.body);
        let provisioned = total(
            &samples,
            "provisioner_jobs_total",
            &[("outcome", "provisioned")],
        );
        if provisioned >= want {
            assert_eq!(
                provisioned, want,
                "no order is provisioned twice\n{}",
                answer.body
            );
            return (answer.body, samples);
        }
        assert!(
            Instant::now() < deadline,
            "provisioned stayed at {provisioned} (want {want})\n{}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_are_valid_prometheus_text_and_move_as_orders_flow() {
    let world = World::start(2, 3).await;
    let port = free_port();
    let env = world.env(port);
    let mut provisioner = Captured::provisioner("provisioner", &["run"], &env);
    wait_healthy(port, PATIENCE).await;
    let mut api = StatusApi::new(port);

    // Half the orders, then a scrape; the other half, then another.
    let (early, late) = world.seeded.events.split_at(3);
    for event in early {
        world
            .pubsub
            .publish_order(sf_pubsub::DEFAULT_TOPIC, event)
            .unwrap();
    }
    let (text1, first) = scrape_until_provisioned(&mut api, 3.0).await;
    for event in late {
        world
            .pubsub
            .publish_order(sf_pubsub::DEFAULT_TOPIC, event)
            .unwrap();
    }
    let (text2, second) = scrape_until_provisioned(&mut api, 6.0).await;
    wait_all_activated(&world, PATIENCE).await;

    let events1 = total(&first, "provisioner_events_total", &[]);
    let events2 = total(&second, "provisioner_events_total", &[]);
    assert!(events1 >= 3.0, "{text1}");
    assert!(
        events2 >= events1 + 3.0,
        "events moved: {events1} -> {events2}\n{text2}"
    );
    assert_eq!(
        total(
            &second,
            "provisioner_events_total",
            &[("outcome", "enqueued")]
        ),
        6.0
    );
    // Step latencies are recorded per step, and the status API counts its own requests.
    let steps: BTreeSet<&str> = second
        .iter()
        .filter(|s| s.name.starts_with("provisioner_step_duration_seconds"))
        .filter_map(|s| s.labels.get("step").map(String::as_str))
        .collect();
    assert!(
        steps.len() >= 3,
        "step latencies by step: {steps:?}\n{text2}"
    );
    // ... as histograms: cumulative buckets, the `+Inf` one equal to the count.
    assert!(
        text2.contains("# TYPE provisioner_step_duration_seconds histogram"),
        "{text2}"
    );
    for step in &steps {
        let with = [("step", *step)];
        let count = total(&second, "provisioner_step_duration_seconds_count", &with);
        assert!(count >= 6.0, "{step}: {count}");
        let mut buckets: Vec<(f64, f64)> = second
            .iter()
            .filter(|s| s.name == "provisioner_step_duration_seconds_bucket")
            .filter(|s| s.labels.get("step").map(String::as_str) == Some(*step))
            .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() > 1, "{step}: buckets {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        assert_eq!(buckets.last().copied(), Some((f64::INFINITY, count)));
    }
    for name in ["provisioner_jobs_total", "provisioner_events_total"] {
        assert!(
            text2.contains(&format!("# TYPE {name} counter")),
            "{name} is a counter\n{text2}"
        );
    }
    assert!(
        total(&second, "status_api_requests_total", &[])
            > total(&first, "status_api_requests_total", &[]),
        "status API requests are counted\n{text2}"
    );
    // Token refreshes and per-call downstream latencies.
    assert!(
        total(&second, "salesforce_token_requests_total", &[]) >= 1.0,
        "token requests are counted\n{text2}"
    );
    for (name, action) in [
        ("salesforce_request_duration_seconds_count", "fetch_order"),
        ("whmcs_request_duration_seconds_count", "AddOrder"),
    ] {
        let calls: f64 = second
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                s.labels
                    .get("action")
                    .is_some_and(|a| a.eq_ignore_ascii_case(action))
            })
            .map(|s| s.value)
            .sum();
        assert!(calls >= 6.0, "{name}{{action={action}}}: {calls}\n{text2}");
    }
    assert_eq!(
        provisioner.terminate().await,
        Some(0),
        "{}",
        provisioner.tail()
    );
}
