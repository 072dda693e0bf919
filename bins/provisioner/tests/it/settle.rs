//! Issue 15, "no duplicate under any timing", through the processes: `sf-sandbox` holds a
//! WHMCS AddOrder or AcceptOrder past the provisioner's client timeout and commits it all the
//! same (a slow module, a slow table), and the settle rule (`WHMCS_SETTLE`: an unknown outcome
//! is repeated only after a lookup made no earlier than sent + timeout + settle finds nothing)
//! keeps it to one WHMCS order and one module create, also when the instance that sent the
//! call is paused (SIGSTOP) and another takes its job over.
//!
//! Every hold here commits before sent + timeout + settle and after the timeout, so without
//! the rule each test sees the duplicate: a second AddOrder or AcceptOrder made while the first
//! one is still held, committed next to it. No assertion waits on timing: the tests wait for
//! what the sandbox records (the held call's arrival and sender, the Order's status, every
//! hold committed) and for the processes' exits.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use test_support::pg::PgTempDb;
use test_support::process::{Captured, PATIENCE, free_port, sigcont, sigstop};
use test_support::sf_sandbox::SfSandbox;
use tokio::time::Instant;

use crate::processes::sf_sandbox_bin;
use crate::support::{CapturedProvisioner as _, MASTER_KEY, PORTAL_TOKEN, wait_healthy};

/// The client timeout of both WHMCS calls in these tests.
const TIMEOUT: &str = "3s";
/// The settle time: a held call may still commit until sent + 3 s + 4 s.
const SETTLE: &str = "4s";

/// The one seeded Order (customer 1, Order 1).
fn sf_order() -> String {
    sandbox::salesforce::salesforce_id("801", 1)
}

/// `sf-sandbox` with one customer and one published Order, requests recorded, plus `extra`.
async fn start_sandbox(extra: &[&str]) -> SfSandbox {
    let mut args = vec![
        "--customers",
        "1",
        "--orders-per-customer",
        "1",
        "--publish",
        "--record-requests",
    ];
    args.extend_from_slice(extra);
    SfSandbox::start(&sf_sandbox_bin().await, &args, PATIENCE).await
}

/// The provisioner's environment: what the sandbox printed, the store, key, token and port,
/// and the WHMCS timeouts and settle time of these tests.
fn provisioner_env(sandbox: &SfSandbox, database_url: &str, port: u16) -> BTreeMap<String, String> {
    let mut env = sandbox.env.clone();
    for (key, value) in [
        ("DATABASE_URL", database_url.to_owned()),
        ("FIELD_ENCRYPTION_KEY", MASTER_KEY.to_owned()),
        ("PORTAL_API_TOKEN", PORTAL_TOKEN.to_owned()),
        ("PROVISIONER_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("HTTP_IP_RATE", "100000/minute".to_owned()),
        ("WHMCS_TIMEOUT", TIMEOUT.to_owned()),
        ("WHMCS_ACCEPT_TIMEOUT", TIMEOUT.to_owned()),
        ("WHMCS_SETTLE", SETTLE.to_owned()),
        ("CUSTOMER_PROVISION_RATE", "1000/second".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ] {
        env.insert(key.to_owned(), value);
    }
    env
}

/// The sandbox's admin routes, as the tests read them.
struct Admin {
    http: reqwest::Client,
    sf: String,
    whmcs: String,
}

impl Admin {
    fn of(sandbox: &SfSandbox) -> Admin {
        let whmcs = sandbox
            .var("WHMCS_API_URL")
            .strip_suffix(sandbox::whmcs::API_PATH)
            .expect("the WHMCS API URL ends with the API path")
            .to_owned();
        Admin {
            http: reqwest::Client::new(),
            sf: sandbox.var("SF_LOGIN_URL").to_owned(),
            whmcs,
        }
    }

    async fn get(&self, url: String) -> Value {
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `{"orders": [..], "holding": n}` of the WHMCS sandbox.
    async fn whmcs_orders(&self) -> Value {
        self.get(format!("{}/sandbox/orders", self.whmcs)).await
    }

    /// The WHMCS calls received, oldest first: `{action, identifier, fault, ..}`.
    async fn whmcs_requests(&self) -> Vec<Value> {
        let answer = self.get(format!("{}/sandbox/requests", self.whmcs)).await;
        answer["requests"].as_array().unwrap().clone()
    }

    /// The Order PATCHes received, oldest first: `{orderId, username, body, ..}`.
    async fn patches(&self) -> Vec<Value> {
        let answer = self.get(format!("{}/sandbox/patches", self.sf)).await;
        answer["patches"].as_array().unwrap().clone()
    }

    /// The Salesforce Order as stored.
    async fn sf_order(&self, id: &str) -> Value {
        let answer = self.get(format!("{}/sandbox/orders/{id}", self.sf)).await;
        answer["order"].clone()
    }

    /// Arms a WHMCS fault on the running sandbox.
    async fn arm(&self, body: Value) {
        let response = self
            .http
            .post(format!("{}/sandbox/faults", self.whmcs))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{body}");
    }

    /// Waits until `ready` holds for what `read` answers; returns that answer.
    async fn until<T: std::fmt::Debug>(
        &self,
        what: &str,
        read: impl AsyncFn(&Admin) -> T,
        ready: impl Fn(&T) -> bool,
        tail: impl Fn() -> String,
    ) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = read(self).await;
            if ready(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: still {value:?}\n{}",
                tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the Order is Activated, then until no WHMCS call is held any more (a
    /// duplicate would have committed by then); returns the Order.
    async fn activated_and_settled(&self, tail: impl Fn() -> String) -> Value {
        let id = sf_order();
        let order = self
            .until(
                "the Order is Activated",
                async |a| a.sf_order(&id).await,
                |o| o["Status"] == "Activated",
                &tail,
            )
            .await;
        self.until(
            "every held WHMCS call committed",
            async |a| a.whmcs_orders().await,
            |o| o["holding"] == 0,
            &tail,
        )
        .await;
        order
    }

    /// The one WHMCS order of the seeded Order (by the ref on its services), checked against
    /// what the Order says; panics unless there is exactly one.
    async fn the_one_whmcs_order(&self, sf: &Value) -> Value {
        let id = sf_order();
        let orders = self.whmcs_orders().await;
        let matching: Vec<&Value> = orders["orders"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| {
                o["services"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["customFields"]["1"] == id.as_str())
            })
            .collect();
        assert_eq!(matching.len(), 1, "one WHMCS order for {id}: {orders}");
        assert_eq!(
            orders["orders"].as_array().unwrap().len(),
            1,
            "no other WHMCS order: {orders}"
        );
        let order = matching[0].clone();
        assert_eq!(order["status"], "Active", "{order}");
        assert_eq!(
            sf["WHMCS_Order_Id__c"],
            order["id"].as_u64().unwrap().to_string(),
            "{sf}"
        );
        order
    }
}

/// Asserts one committed AcceptOrder and one module create per service.
fn accepted_once(order: &Value) {
    assert_eq!(order["accepts"], 1, "one committed AcceptOrder: {order}");
    for service in order["services"].as_array().unwrap() {
        assert_eq!(service["moduleCreates"], 1, "one module create: {order}");
    }
}

/// How many recorded calls of `action` there are.
fn count(requests: &[Value], action: &str) -> usize {
    requests.iter().filter(|r| r["action"] == action).count()
}

/// One `provisioner run` on SQLite against a sandbox started with `extra` (and `fault` armed
/// through the admin route before the provisioner starts), until the Order is Activated and
/// no WHMCS call is held any more: one WHMCS order, accepted once. Returns the WHMCS calls.
async fn provision_once(extra: &[&str], fault: Option<Value>) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = start_sandbox(extra).await;
    let admin = Admin::of(&sandbox);
    if let Some(fault) = fault {
        admin.arm(fault).await;
    }
    let port = free_port();
    let database = format!("sqlite://{}/provisioner.db", dir.path().display());
    let env = provisioner_env(&sandbox, &database, port);
    let mut provisioner = Captured::provisioner("provisioner", &["run"], &env);
    wait_healthy(port, PATIENCE).await;
    let tail = || format!("{}\n{}", provisioner.tail(), sandbox.proc.tail());

    let sf = admin.activated_and_settled(tail).await;
    let order = admin.the_one_whmcs_order(&sf).await;
    accepted_once(&order);
    let requests = admin.whmcs_requests().await;
    assert_eq!(count(&requests, "AddOrder"), 1, "{requests:?}");
    let code = provisioner.terminate().await;
    assert_eq!(code, Some(0), "{}", provisioner.tail());
    requests
}

/// The fault of the first recorded call of `action`.
fn first_fault<'a>(requests: &'a [Value], action: &str) -> &'a Value {
    &requests
        .iter()
        .find(|r| r["action"] == action)
        .unwrap_or_else(|| panic!("no {action} in {requests:?}"))["fault"]
}

/// Test 5a: AddOrder held 5 s (past the 3 s timeout, before 3 s + 4 s of settle), then
/// committed: one WHMCS order, the Order Activated. Without the rule the provisioner looks
/// up at once, finds nothing and orders again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_order_that_commits_after_the_timeout_is_not_ordered_again() {
    let requests = provision_once(&["--whmcs-hold-add-order", "5sx1"], None).await;
    assert_eq!(first_fault(&requests, "AddOrder"), "hold");
}

/// Test 5b: AcceptOrder (the module) held 5 s, armed at run time through the admin route:
/// one committed AcceptOrder, one module create, the Order Activated. Without the rule the
/// provisioner finds the order still Pending and accepts it again, which WHMCS runs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_order_that_commits_after_the_timeout_runs_the_module_once() {
    let hold =
        serde_json::json!({"action": "AcceptOrder", "fault": "hold", "ms": 5000, "times": 1});
    let requests = provision_once(&[], Some(hold)).await;
    assert_eq!(first_fault(&requests, "AcceptOrder"), "hold");
}

/// When the paused instance of test 3 runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wake {
    /// Once the survivor is in its second claim (its AcceptOrder arrived): the job is never
    /// free to claim again while the paused instance runs, so every WHMCS call or PATCH it
    /// makes after waking would come from its stale claim.
    WhileTheSurvivorAccepts,
    /// As soon as the survivor took the job over, while it waits out the settle time with the
    /// job given back: the woken instance may claim the job again itself, but only as a new
    /// claim after the settle point, never from its stale claim.
    WhileTheSurvivorSettles,
}

/// Test 3: two instances on one PostgreSQL database (`JOB_LEASE=3s`). The instance whose
/// AddOrder the sandbox holds (6 s; it may commit until 3 s + 4 s after it was sent) is paused
/// with SIGSTOP; the other takes the job over once the lease lapsed, finds nothing, waits for
/// the settle point and finds the held order committed; the paused one runs on (SIGCONT) at
/// `wake`. One WHMCS order, one AcceptOrder, the Order Activated, and no WHMCS call or PATCH
/// from the paused instance's own claim after the takeover.
async fn paused_instance_and_takeover(wake: Wake) {
    let db = PgTempDb::create().await;
    let names = ["a", "b"];
    let sandbox = start_sandbox(&[
        "--whmcs-hold-add-order",
        "6sx1",
        "--whmcs-extra-credential",
        "instance-a:secret-a",
        "--whmcs-extra-credential",
        "instance-b:secret-b",
        "--extra-username",
        "a@example.com",
        "--extra-username",
        "b@example.com",
    ])
    .await;
    let admin = Admin::of(&sandbox);
    let mut instances = Vec::new();
    for name in names {
        let port = free_port();
        let mut env = provisioner_env(&sandbox, &db.url(), port);
        for (key, value) in [
            ("WHMCS_API_IDENTIFIER", format!("instance-{name}")),
            ("WHMCS_API_SECRET", format!("secret-{name}")),
            ("SF_USERNAME", format!("{name}@example.com")),
            ("JOB_LEASE", "3s".to_owned()),
        ] {
            env.insert(key.to_owned(), value);
        }
        let name = if name == "a" {
            "instance a"
        } else {
            "instance b"
        };
        instances.push(Captured::provisioner(name, &["run"], &env));
        // One after the other: the first applies the migrations.
        wait_healthy(port, PATIENCE).await;
    }
    let tail = |instances: &[Captured]| {
        format!(
            "{}\n{}\n{}",
            instances[0].tail(),
            instances[1].tail(),
            sandbox.proc.tail()
        )
    };

    // Whoever claimed the job sends the AddOrder the sandbox holds: that one is paused.
    let requests = admin
        .until(
            "the held AddOrder arrives",
            async |a| a.whmcs_requests().await,
            |r| r.iter().any(|r| r["action"] == "AddOrder"),
            || tail(&instances),
        )
        .await;
    assert_eq!(first_fault(&requests, "AddOrder"), "hold");
    let held = requests.iter().find(|r| r["action"] == "AddOrder").unwrap();
    let paused_identifier = held["identifier"].as_str().unwrap().to_owned();
    let paused = names
        .iter()
        .position(|n| paused_identifier == format!("instance-{n}"))
        .unwrap_or_else(|| panic!("AddOrder from {paused_identifier}"));
    let survivor = 1 - paused;
    let paused_user = format!("{}@example.com", names[paused]);
    let survivor_identifier = format!("instance-{}", names[survivor]);
    sigstop(instances[paused].child());
    // From here on the paused instance sends nothing until SIGCONT, so this is all it sent.
    let by_paused = |requests: &[Value]| {
        requests
            .iter()
            .filter(|r| r["identifier"] == paused_identifier.as_str())
            .cloned()
            .collect::<Vec<_>>()
    };
    let patches_by = |patches: &[Value], user: &str| {
        patches
            .iter()
            .filter(|p| p["username"] == user)
            .cloned()
            .collect::<Vec<_>>()
    };
    let before = admin.whmcs_requests().await;
    let sent_before = by_paused(&before);
    let patched_before = patches_by(&admin.patches().await, &paused_user);
    assert_eq!(count(&sent_before, "AddOrder"), 1);
    let by_survivor = |requests: &[Value]| {
        requests
            .iter()
            .filter(|r| r["identifier"] == survivor_identifier.as_str())
            .count()
    };
    let survivor_before = by_survivor(&before);

    // The survivor takes the job over once the lease lapsed: its next WHMCS call.
    admin
        .until(
            "the other instance takes the job over",
            async |a| a.whmcs_requests().await,
            |r| by_survivor(r) > survivor_before,
            || tail(&instances),
        )
        .await;
    if wake == Wake::WhileTheSurvivorAccepts {
        admin
            .until(
                "the survivor accepts the held order",
                async |a| a.whmcs_requests().await,
                |r| {
                    r.iter().any(|r| {
                        r["identifier"] == survivor_identifier.as_str()
                            && r["action"] == "AcceptOrder"
                    })
                },
                || tail(&instances),
            )
            .await;
    }
    sigcont(instances[paused].child());

    let sf = admin.activated_and_settled(|| tail(&instances)).await;
    // The paused instance ends whatever it resumed with before it exits.
    let code = instances[paused].terminate().await;
    assert_eq!(code, Some(0), "{}", tail(&instances));
    let code = instances[survivor].terminate().await;
    assert_eq!(code, Some(0), "{}", tail(&instances));

    let requests = admin.whmcs_requests().await;
    let patches = admin.patches().await;
    let sent_after: Vec<Value> = by_paused(&requests)[sent_before.len()..].to_vec();
    let patched_after: Vec<Value> =
        patches_by(&patches, &paused_user)[patched_before.len()..].to_vec();
    let activated: Vec<&Value> = patches
        .iter()
        .filter(|p| p["body"]["Status"] == "Activated")
        .collect();
    assert_eq!(activated.len(), 1, "{patches:?}");
    match wake {
        Wake::WhileTheSurvivorAccepts => {
            assert_eq!(
                sent_after,
                Vec::<Value>::new(),
                "no WHMCS call from the paused instance after the takeover\n{}",
                tail(&instances)
            );
            assert_eq!(
                patched_after,
                Vec::<Value>::new(),
                "no PATCH from the paused instance after the takeover"
            );
            assert_eq!(
                activated[0]["username"],
                format!("{}@example.com", names[survivor]),
                "the survivor activated the Order"
            );
        }
        Wake::WhileTheSurvivorSettles => {
            // Its stale claim would call at once on waking (3 s after the AddOrder); a new
            // claim can only begin at the settle point, 7 s after it.
            let held_at = sent_before
                .iter()
                .find(|r| r["action"] == "AddOrder")
                .and_then(|r| r["receivedAtMs"].as_u64())
                .unwrap();
            let settle_point = held_at + 7_000;
            for call in &sent_after {
                let at = call["receivedAtMs"].as_u64().unwrap();
                assert!(
                    at + 500 >= settle_point,
                    "{call} from the paused instance's stale claim, before the settle point \
                     {settle_point}\n{}",
                    tail(&instances)
                );
                assert_ne!(call["action"], "AddOrder", "{call}");
            }
            for patch in &patched_after {
                let at = patch["atMs"].as_u64().unwrap();
                assert!(at + 500 >= settle_point, "{patch} before the settle point");
            }
        }
    }
    let order = admin.the_one_whmcs_order(&sf).await;
    accepted_once(&order);
    assert_eq!(count(&requests, "AddOrder"), 1, "{requests:?}");
    drop(sandbox);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_woken_while_the_survivor_accepts_makes_no_call() {
    paused_instance_and_takeover(Wake::WhileTheSurvivorAccepts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_woken_while_the_survivor_settles_orders_nothing_again() {
    paused_instance_and_takeover(Wake::WhileTheSurvivorSettles).await;
}
