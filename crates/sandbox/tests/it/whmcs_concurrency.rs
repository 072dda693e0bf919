//! The WHMCS sandbox runs actions concurrently, as a database with row locks would: a held
//! action (an AddOrder or AcceptOrder that commits after its client gave up) delays neither
//! other orders' actions nor reads, and reads see the state from before its commit. Each
//! action on one order reads and writes it atomically; a held AcceptOrder holds no lock, so a
//! second AcceptOrder of the same order runs the module again, as WHMCS's own would.
//!
//! Every hold here is 10 minutes long and ends only through `release_holds`: whether a call
//! "completed while the other was still held" never depends on timing.

use std::time::Duration;

use sandbox::whmcs::{Client, Fault, Product, WhmcsSandbox, WhmcsSandboxConfig};
use serde_json::Value;

/// A hold no test waits out.
const HELD: Duration = Duration::from_secs(600);

/// Bound on a call that must not be delayed by a hold.
const PROMPT: Duration = Duration::from_secs(30);

/// The ref field of the seeded product.
const REF_FIELD: u64 = 7;

struct World {
    whmcs: WhmcsSandbox,
    http: reqwest::Client,
    clients: [u64; 2],
    pid: u64,
}

async fn world() -> World {
    let whmcs = WhmcsSandbox::start().await.unwrap();
    let clients = [
        whmcs.seed_client(Client::active("Ada", "ada@example.com")),
        whmcs.seed_client(Client::active("Bob", "bob@example.com")),
    ];
    let pid = whmcs.seed_product(Product::new("VPS S").with_custom_field(
        REF_FIELD,
        "Salesforce Order",
        false,
    ));
    World {
        whmcs,
        http: reqwest::Client::new(),
        clients,
        pid,
    }
}

/// `base64(serialize([REF_FIELD => value]))`, percent-encoded by reqwest's form encoder.
fn ref_field(value: &str) -> String {
    use base64::Engine as _;
    let php = format!("a:1:{{i:{REF_FIELD};s:{}:\"{value}\";}}", value.len());
    base64::engine::general_purpose::STANDARD.encode(php)
}

impl World {
    /// One API call with the main credential; the JSON answer.
    async fn call(&self, action: &str, params: &[(&str, String)]) -> Value {
        call_as(
            self,
            &self.whmcs.config().identifier.clone(),
            action,
            params,
        )
        .await
    }

    async fn add_order(&self, client: u64, sf_order: &str) -> Value {
        self.call(
            "AddOrder",
            &[
                ("clientid", client.to_string()),
                ("paymentmethod", "banktransfer".into()),
                ("pid[0]", self.pid.to_string()),
                ("billingcycle[0]", "monthly".into()),
                ("customfields[0]", ref_field(sf_order)),
            ],
        )
        .await
    }

    async fn accept_order(&self, order: u64) -> Value {
        self.call(
            "AcceptOrder",
            &[("orderid", order.to_string()), ("autosetup", "1".into())],
        )
        .await
    }

    async fn order_status(&self, order: u64) -> String {
        let answer = self.call("GetOrders", &[("id", order.to_string())]).await;
        answer["orders"]["order"][0]["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn services_of(&self, client: u64) -> usize {
        let answer = self
            .call("GetClientsProducts", &[("clientid", client.to_string())])
            .await;
        answer["totalresults"].as_str().unwrap().parse().unwrap()
    }

    /// Waits until `n` calls of `action` have arrived (the held one among them).
    async fn arrived(&self, action: &str, n: usize) {
        tokio::time::timeout(PROMPT, async {
            while self.whmcs.requests_for(action).len() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{action} never arrived"));
    }
}

async fn call_as(w: &World, identifier: &str, action: &str, params: &[(&str, String)]) -> Value {
    let secret = if identifier == w.whmcs.config().identifier {
        w.whmcs.config().secret.clone()
    } else {
        w.whmcs
            .config()
            .extra_credentials
            .iter()
            .find(|(i, _)| i == identifier)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    };
    let mut form: Vec<(&str, String)> = vec![
        ("action", action.to_owned()),
        ("identifier", identifier.to_owned()),
        ("secret", secret),
        ("responsetype", "json".to_owned()),
    ];
    form.extend(params.iter().cloned());
    let call = w.http.post(w.whmcs.api_url()).form(&form).send();
    tokio::time::timeout(PROMPT, call)
        .await
        .unwrap_or_else(|_| panic!("{action} was delayed"))
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn order_id(answer: &Value) -> u64 {
    answer["orderid"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_add_order_delays_no_other_order_and_stays_invisible_until_it_commits() {
    let w = std::sync::Arc::new(world().await);
    let [ada, bob] = w.clients;
    w.whmcs
        .inject_fault("AddOrder", Fault::HoldThenCommit(HELD), Some(1));
    let held = tokio::spawn({
        let w = w.clone();
        async move { w.add_order(ada, "801HELD").await }
    });
    w.arrived("AddOrder", 1).await;

    // Another client's order is placed and accepted while the first is held.
    let other = w.add_order(bob, "801OTHER").await;
    assert_eq!(other["result"], "success", "{other}");
    let accepted = w.accept_order(order_id(&other)).await;
    assert_eq!(accepted["result"], "success", "{accepted}");
    // Reads answer at once, without the held order's services or order.
    assert_eq!(w.services_of(ada).await, 0);
    assert_eq!(w.services_of(bob).await, 1);
    let listed = w.call("GetOrders", &[("userid", ada.to_string())]).await;
    assert_eq!(listed["totalresults"], 0, "{listed}");
    assert!(!held.is_finished(), "the held AddOrder is still held");
    assert_eq!(w.whmcs.orders().len(), 1);
    assert_eq!(w.whmcs.holding(), 1);

    w.whmcs.release_holds();
    let placed = held.await.unwrap();
    assert_eq!(placed["result"], "success", "{placed}");
    // The reply names the services under both of WHMCS's names.
    let services = w.whmcs.order(order_id(&placed)).unwrap().service_ids;
    assert_eq!(services.len(), 1);
    assert_eq!(placed["serviceids"], services[0].to_string());
    assert_eq!(placed["productids"], services[0].to_string());
    assert_eq!(w.services_of(ada).await, 1);
    assert_eq!(w.whmcs.orders().len(), 2);
    assert_eq!(w.whmcs.holding(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_accept_order_keeps_its_order_pending_and_delays_no_other_order() {
    let w = std::sync::Arc::new(world().await);
    let [ada, bob] = w.clients;
    let first = order_id(&w.add_order(ada, "801FIRST").await);
    let second = order_id(&w.add_order(bob, "801SECOND").await);
    w.whmcs
        .inject_fault("AcceptOrder", Fault::HoldThenCommit(HELD), Some(1));
    let held = tokio::spawn({
        let w = w.clone();
        async move { w.accept_order(first).await }
    });
    w.arrived("AcceptOrder", 1).await;

    assert_eq!(w.order_status(first).await, "Pending");
    let other = w.accept_order(second).await;
    assert_eq!(other["result"], "success", "{other}");
    assert_eq!(w.order_status(second).await, "Active");
    assert_eq!(w.order_status(first).await, "Pending");
    assert!(!held.is_finished(), "the held AcceptOrder is still held");
    let service = w.whmcs.order(first).unwrap().service_ids[0];
    assert_eq!(w.whmcs.service(service).unwrap().module_creates, 0);

    w.whmcs.release_holds();
    assert_eq!(held.await.unwrap()["result"], "success");
    assert_eq!(w.order_status(first).await, "Active");
    let order = w.whmcs.order(first).unwrap();
    assert_eq!(order.accepts, 1);
    assert_eq!(w.whmcs.service(service).unwrap().module_creates, 1);
}

/// The window the settle rule closes on AcceptOrder: WHMCS holds no lock while the module of
/// a held AcceptOrder runs, so a second AcceptOrder of the same order finds it Pending and
/// runs the module again; both commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_accept_order_during_a_held_one_runs_the_module_again() {
    let w = std::sync::Arc::new(world().await);
    let order = order_id(&w.add_order(w.clients[0], "801TWICE").await);
    w.whmcs
        .inject_fault("AcceptOrder", Fault::HoldThenCommit(HELD), Some(1));
    let held = tokio::spawn({
        let w = w.clone();
        async move { w.accept_order(order).await }
    });
    w.arrived("AcceptOrder", 1).await;

    let again = w.accept_order(order).await;
    assert_eq!(again["result"], "success", "{again}");
    assert!(!held.is_finished());
    w.whmcs.release_holds();
    assert_eq!(held.await.unwrap()["result"], "success");
    let service = w.whmcs.order(order).unwrap().service_ids[0];
    assert_eq!(w.whmcs.order(order).unwrap().accepts, 2);
    assert_eq!(w.whmcs.service(service).unwrap().module_creates, 2);

    // Once Active, a held AcceptOrder is refused on arrival, without waiting.
    w.whmcs
        .inject_fault("AcceptOrder", Fault::HoldThenCommit(HELD), Some(1));
    let refused = w.accept_order(order).await;
    assert_eq!(
        refused["message"], "Order ID not found or Status not Pending",
        "{refused}"
    );
}

/// Unheld actions on one order are atomic: of many AcceptOrders sent at once, one commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accept_orders_of_one_order_commit_once() {
    let w = std::sync::Arc::new(world().await);
    let order = order_id(&w.add_order(w.clients[0], "801RACE").await);
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let w = w.clone();
            tokio::spawn(async move { w.accept_order(order).await })
        })
        .collect();
    let mut successes = 0;
    for call in calls {
        let answer = call.await.unwrap();
        if answer["result"] == "success" {
            successes += 1;
        } else {
            assert_eq!(
                answer["message"], "Order ID not found or Status not Pending",
                "{answer}"
            );
        }
    }
    assert_eq!(successes, 1);
    let service = w.whmcs.order(order).unwrap().service_ids[0];
    assert_eq!(w.whmcs.order(order).unwrap().accepts, 1);
    assert_eq!(w.whmcs.service(service).unwrap().module_creates, 1);
}

/// Extra credentials are accepted and recorded, so the log tells who sent each call; the
/// admin routes arm a fault and show requests (without secrets) and orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_credentials_and_the_admin_routes() {
    let whmcs = WhmcsSandbox::start_with(WhmcsSandboxConfig {
        extra_credentials: vec![("instance-b".into(), "secret-b".into())],
        ..WhmcsSandboxConfig::default()
    })
    .await
    .unwrap();
    let ada = whmcs.seed_client(Client::active("Ada", "ada@example.com"));
    let pid = whmcs.seed_product(Product::new("VPS S").with_custom_field(
        REF_FIELD,
        "Salesforce Order",
        false,
    ));
    let w = std::sync::Arc::new(World {
        whmcs,
        http: reqwest::Client::new(),
        clients: [ada, ada],
        pid,
    });
    let admin = w.whmcs.base_url();

    let arm = |body: &'static str| {
        w.http
            .post(format!("{admin}/sandbox/faults"))
            .body(body)
            .send()
    };
    let armed = arm(r#"{"action":"AddOrder","fault":"hold","ms":600000,"times":1}"#)
        .await
        .unwrap();
    assert_eq!(armed.status().as_u16(), 200);
    for bad in [
        r#"{"action":"AddOrder","fault":"hold"}"#,
        r#"{"action":"AddOrder","fault":"melt","ms":1}"#,
        r#"{"action":"AddOrder","fault":"html500","times":0}"#,
        r#"{"action":"","fault":"html500"}"#,
        "not json",
    ] {
        let answer = arm(bad).await.unwrap();
        assert_eq!(answer.status().as_u16(), 400, "{bad}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "invalid_fault", "{bad}");
    }

    let held = tokio::spawn({
        let w = w.clone();
        async move {
            call_as(
                &w,
                "instance-b",
                "AddOrder",
                &[
                    ("clientid", ada.to_string()),
                    ("paymentmethod", "banktransfer".into()),
                    ("pid[0]", w.pid.to_string()),
                    ("customfields[0]", ref_field("801ADMIN")),
                ],
            )
            .await
        }
    });
    w.arrived("AddOrder", 1).await;
    let get = async |path: &str| -> Value {
        let answer = w.http.get(format!("{admin}{path}")).send().await.unwrap();
        answer.json().await.unwrap()
    };
    let requests = get("/sandbox/requests").await;
    let listed = requests["requests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{requests}");
    assert_eq!(listed[0]["action"], "AddOrder");
    assert_eq!(listed[0]["identifier"], "instance-b");
    assert_eq!(listed[0]["clientid"], ada.to_string());
    assert_eq!(listed[0]["fault"], "hold");
    assert!(!requests.to_string().contains("secret-b"), "{requests}");
    assert_eq!(
        w.whmcs.requests()[0].identifier().as_deref(),
        Some("instance-b")
    );

    w.whmcs.release_holds();
    let placed = held.await.unwrap();
    assert_eq!(placed["result"], "success", "{placed}");
    let accepted = w.accept_order(order_id(&placed)).await;
    assert_eq!(accepted["result"], "success", "{accepted}");
    let orders = get("/sandbox/orders").await;
    let order = &orders["orders"][0];
    assert_eq!(order["id"], order_id(&placed), "{orders}");
    assert_eq!(order["clientId"], ada);
    assert_eq!(order["status"], "Active");
    assert_eq!(order["accepts"], 1);
    assert_eq!(order["services"][0]["moduleCreates"], 1);
    assert_eq!(
        order["services"][0]["customFields"][REF_FIELD.to_string()],
        "801ADMIN"
    );

    // A wrong secret for a known extra identifier is refused like any other.
    let form = [
        ("action", "GetOrders"),
        ("identifier", "instance-b"),
        ("secret", "wrong"),
        ("responsetype", "json"),
    ];
    let answer = w.http.post(w.whmcs.api_url()).form(&form).send().await;
    let refused: Value = answer.unwrap().json().await.unwrap();
    assert_eq!(refused["message"], "Authentication Failed");

    let cleared = w
        .http
        .delete(format!("{admin}/sandbox/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status().as_u16(), 200);
}
