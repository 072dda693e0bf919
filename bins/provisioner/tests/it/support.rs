//! Shared harness: in-process sandboxes with a seeded org, and the provisioner binary as a
//! child process configured only through environment variables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbox::pubsub::{PubSubConfig, PubSubSandbox};
use sandbox::salesforce::{SalesforceConfig, SalesforceSandbox};
use sandbox::seed::{ConfigOptions, Plan, Seeded};
use sandbox::whmcs::WhmcsSandbox;
use test_support::keys;
use test_support::process::Captured;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The provisioner binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_provisioner");

/// The custom field holding the Salesforce Order Id in the seeded WHMCS product.
pub(crate) const REF_FIELD: u64 = 1;

/// A known root password in every OrderItem's `Config_Options__c` (log-canary tests).
pub(crate) const ROOT_PASSWORD: &str = "canary-root-pw-7f3a91";

/// The token the portal presents in every test here.
pub(crate) const PORTAL_TOKEN: &str = "portal-canary-token-9c41e2";

/// The master key of every test here (a canary too).
pub(crate) const MASTER_KEY: &str = "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=";

/// Three sandboxes sharing one seeded org.
pub(crate) struct World {
    pub(crate) sf: SalesforceSandbox,
    pub(crate) whmcs: WhmcsSandbox,
    pub(crate) pubsub: PubSubSandbox,
    pub(crate) seeded: Seeded,
    pub(crate) dir: tempfile::TempDir,
    key_file: PathBuf,
}

impl World {
    /// Starts the sandboxes and seeds `customers` x `per_customer` Approved Orders (events
    /// are not published yet: see [`World::publish_all`]).
    pub(crate) async fn start(customers: u32, per_customer: u32) -> World {
        let sf = SalesforceSandbox::start(SalesforceConfig::trusting(keys::PUBLIC_KEY_PEM))
            .await
            .unwrap();
        let whmcs = WhmcsSandbox::start().await.unwrap();
        let checker = sf.token_checker();
        let pubsub = PubSubSandbox::start(
            PubSubConfig::default()
                .token_validator(move |t: &str| checker.is_valid(t))
                .keepalive_interval(Duration::from_millis(500)),
        )
        .await
        .unwrap();
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
                    json: format!(r#"{{"4":"{ROOT_PASSWORD}"}}"#),
                }),
                status: "Approved".into(),
                order_ref_field_id: REF_FIELD,
                products: 1,
            },
        );
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("sf-key.pem");
        std::fs::write(&key_file, keys::PRIVATE_KEY_PEM).unwrap();
        World {
            sf,
            whmcs,
            pubsub,
            seeded,
            dir,
            key_file,
        }
    }

    /// Publishes one event per seeded Order.
    pub(crate) fn publish_all(&self) {
        for event in &self.seeded.events {
            self.pubsub
                .publish_order(sf_pubsub::DEFAULT_TOPIC, event)
                .unwrap();
        }
    }

    /// The environment a provisioner needs to run against this world, with a SQLite store in
    /// the world's directory and an ephemeral-ish HTTP port chosen by the caller.
    pub(crate) fn env(&self, http_port: u16) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_owned(), v);
        };
        set("SF_LOGIN_URL", self.sf.base_url());
        set("SF_CLIENT_ID", self.sf.config().client_id.clone());
        set("SF_USERNAME", self.sf.config().usernames[0].clone());
        set("SF_PRIVATE_KEY_FILE", self.key_file.display().to_string());
        set("SF_PUBSUB_ENDPOINT", self.pubsub.endpoint());
        set("SF_EVENTS_REPLAY", "EARLIEST".into());
        set("WHMCS_API_URL", self.whmcs.api_url());
        set(
            "WHMCS_API_IDENTIFIER",
            self.whmcs.config().identifier.clone(),
        );
        set("WHMCS_API_SECRET", self.whmcs.config().secret.clone());
        set("WHMCS_ORDER_REF_FIELD_ID", REF_FIELD.to_string());
        // The loopback WHMCS answers in milliseconds: a call whose reply a fault or a kill
        // loses may be repeated seconds later (timeout + settle), not a minute or ten later.
        set("WHMCS_TIMEOUT", "2s".into());
        set("WHMCS_ACCEPT_TIMEOUT", "2s".into());
        set("WHMCS_SETTLE", "1s".into());
        set(
            "DATABASE_URL",
            format!("sqlite://{}/provisioner.db", self.dir.path().display()),
        );
        set(
            "FIELD_ENCRYPTION_KEY",
            "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=".into(),
        );
        set("PORTAL_API_TOKEN", "portal-token-for-tests-5b1d".into());
        set("PROVISIONER_HTTP_ADDR", format!("127.0.0.1:{http_port}"));
        set("CUSTOMER_PROVISION_RATE", "1000/second".into());
        // Tests poll the status API from one address many times a second.
        set("HTTP_IP_RATE", "100000/minute".into());
        set("LOG_FORMAT", "json".into());
        set("RUST_LOG", "info".into());
        env
    }
}

/// `provisioner <args>` with exactly `env` (nothing inherited but PATH), killed when dropped.
fn command(args: &[&str], env: &BTreeMap<String, String>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs a short `provisioner` command to its end (a minute at most): exit code, stdout and
/// stderr together.
pub(crate) async fn provisioner(args: &[&str], env: &BTreeMap<String, String>) -> (i32, String) {
    provisioner_within(args, env, Duration::from_secs(60)).await
}

/// [`provisioner`] for a command that may run up to `limit`.
pub(crate) async fn provisioner_within(
    args: &[&str],
    env: &BTreeMap<String, String>,
    limit: Duration,
) -> (i32, String) {
    let child = spawn(args, env);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .expect("command finished")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Starts `provisioner <args>` with exactly `env` (nothing inherited but PATH), stdout and
/// stderr piped; the child is killed when dropped.
pub(crate) fn spawn(args: &[&str], env: &BTreeMap<String, String>) -> tokio::process::Child {
    command(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `provisioner <args>` as a [`Captured`] child.
pub(crate) trait CapturedProvisioner {
    /// `provisioner <args>` with exactly `env`; `name` labels its panics.
    fn provisioner(name: &'static str, args: &[&str], env: &BTreeMap<String, String>) -> Self;
}

impl CapturedProvisioner for Captured {
    fn provisioner(name: &'static str, args: &[&str], env: &BTreeMap<String, String>) -> Self {
        Captured::new(name, spawn(args, env))
    }
}

/// Waits until `GET http://127.0.0.1:port/healthz` answers 200, or panics after `limit`.
pub(crate) async fn wait_healthy(port: u16, limit: Duration) {
    wait_healthy_with(port, &[], limit).await;
}

/// [`wait_healthy`] with extra request `headers` (an `X-Forwarded-For` behind a trusted
/// proxy). Attempts before the process listens fail to connect; the first answer that
/// reaches the router ends the wait if it is 200 (so with a per-address rate, one request).
pub(crate) async fn wait_healthy_with(port: u16, headers: &[(&str, &str)], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let client = reqwest::Client::new();
    loop {
        let mut request = client.get(format!("http://127.0.0.1:{port}/healthz"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Ok(r) = request.send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "provisioner never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
pub(crate) fn activated(world: &World) -> usize {
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

/// The lines a child writes to stdout and stderr, collected in the background so that the
/// pipes never fill up.
#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    /// Takes the child's stdout and stderr and collects their lines until it exits.
    pub(crate) fn capture(child: &mut tokio::process::Child) -> Logs {
        use tokio::io::AsyncBufReadExt as _;
        let logs = Logs::default();
        fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(r: Option<R>, logs: &Logs) {
            if let Some(r) = r {
                let logs = logs.clone();
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        logs.0.lock().unwrap().push(line);
                    }
                });
            }
        }
        pump(child.stdout.take(), &logs);
        pump(child.stderr.take(), &logs);
        logs
    }

    /// Whether some line contains `needle`.
    pub(crate) fn contains(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Everything collected so far, one line each.
    pub(crate) fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// Runs `provisioner <args>` to completion with `env` and returns its exit code and output.
pub(crate) async fn run_to_end(
    args: &[&str],
    env: &BTreeMap<String, String>,
    limit: Duration,
) -> (Option<i32>, String) {
    let child = spawn(args, env);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("provisioner {args:?} did not finish within {limit:?}"))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Like [`spawn`], but stdout and stderr go to `log` (appended), so a long run can never
/// block on a full pipe; read the file afterwards.
pub(crate) fn spawn_logged(
    args: &[&str],
    env: &BTreeMap<String, String>,
    log: &std::path::Path,
) -> tokio::process::Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let err = file.try_clone().unwrap();
    command(args, env)
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap()
}

/// The invariants of done-when 2: one WHMCS order per Salesforce Order (by the external ref on
/// its services), every Order Activated with its WHMCS order id, and the per-customer order
/// the product keeps: a customer's Orders reach WHMCS in approval order, except that a later
/// Order may pass an earlier one that waited for a retry or a settle point meanwhile (a
/// `step_failed` record in its audit trail, read with `provisioner jobs show` under `env`).
pub(crate) async fn check_invariants(world: &World, env: &BTreeMap<String, String>) {
    let mut by_ref: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for s in world.whmcs.services() {
        let r = s.custom_fields.get(&REF_FIELD).cloned().unwrap_or_default();
        by_ref.entry(r).or_default().insert(s.order_id);
    }
    assert_eq!(
        world.whmcs.orders().len(),
        world.seeded.events.len(),
        "one WHMCS order per Salesforce Order"
    );
    // Seeded events are per customer, in the order the customer approved them.
    let mut per_customer: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for e in &world.seeded.events {
        let ids = by_ref
            .get(&e.order_id)
            .unwrap_or_else(|| panic!("no WHMCS order for {}", e.order_id));
        assert_eq!(ids.len(), 1, "{} has WHMCS orders {ids:?}", e.order_id);
        let whmcs_id = *ids.iter().next().unwrap();
        let order = world.sf.order(&e.order_id).unwrap();
        assert_eq!(order.status, "Activated", "{}", e.order_id);
        assert_eq!(
            order.whmcs_order_id.as_deref(),
            Some(whmcs_id.to_string().as_str()),
            "{}",
            e.order_id
        );
        assert_eq!(world.whmcs.order(whmcs_id).unwrap().status, "Active");
        per_customer
            .entry(&e.customer_number)
            .or_default()
            .push((e.order_id.as_str(), whmcs_id));
    }
    let mut passed = 0;
    for (customer, orders) in per_customer {
        for (i, &(earlier, earlier_id)) in orders.iter().enumerate() {
            let Some(&(later, later_id)) = orders[i + 1..].iter().find(|(_, id)| *id < earlier_id)
            else {
                continue;
            };
            let shown = crate::jobs::run_json(&["jobs", "show", earlier, "--json"], env).await;
            let waited = shown["audit"]
                .as_array()
                .is_some_and(|records| records.iter().any(|r| r["action"] == "step_failed"));
            assert!(
                waited,
                "customer {customer}: {later} (WHMCS order {later_id}) passed {earlier} (WHMCS \
                 order {earlier_id}), which never waited for a retry; its trail: {}",
                shown["audit"]
            );
            passed += 1;
        }
    }
    eprintln!("invariants hold; {passed} Orders were passed while they waited for a retry");
}

/// Runs `provisioner audit verify` with `env` and asserts a clean chain.
pub(crate) async fn audit_verify_clean(env: &BTreeMap<String, String>) {
    let (code, out) = run_to_end(&["audit", "verify"], env, Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "audit verify failed:\n{out}");
}

/// SIGTERM, then exit 0 within the shutdown bound.
pub(crate) async fn stop(child: &mut tokio::process::Child) {
    test_support::process::sigterm(child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A loopback alert webhook (`SECURITY_ALERT_WEBHOOK`) that answers 200 and keeps every
/// request body: its URL and the bodies.
pub(crate) async fn webhook() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = Arc::clone(&bodies);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = Arc::clone(&kept);
            tokio::spawn(async move {
                if let Some(body) = read_request(&mut stream).await {
                    kept.lock().unwrap().push(body);
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                }
            });
        }
    });
    (url, bodies)
}

/// One HTTP/1.1 request's body (by its content-length).
pub(crate) async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length = text[..end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            })
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return Some(text[end + 4..end + 4 + length].to_owned());
        }
    }
}

/// A whole request on `stream` gets no answer at all: the server closed it unread.
pub(crate) async fn unanswered(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: provisioner\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
}

/// The alerts of kind `kind` that `bodies` (from [`webhook`]) has received, as JSON.
pub(crate) fn alerts(bodies: &Mutex<Vec<String>>, kind: &str) -> Vec<serde_json::Value> {
    bodies
        .lock()
        .unwrap()
        .iter()
        .filter_map(|b| serde_json::from_str(b).ok())
        .filter(|a: &serde_json::Value| a["alert"] == kind)
        .collect()
}

/// Waits until `bodies` (from [`webhook`]) holds an alert of kind `kind` whose `details.ip` is
/// `ip`, and returns it; panics after `limit`.
pub(crate) async fn wait_alert_for_ip(
    bodies: &Mutex<Vec<String>>,
    kind: &str,
    ip: &str,
    limit: Duration,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(alert) = alerts(bodies, kind)
            .into_iter()
            .find(|a| a["details"]["ip"] == ip)
        {
            return alert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} alert for {ip}: {:?}",
            bodies.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
