//! Operating the service, as the README describes it: a PostgreSQL standby is ready, and the
//! operator commands work beside a running service on a SQLite file while a second service on
//! that file is refused.

use std::time::Duration;

use serde_json::Value;
use test_support::pg::PgTempDb;
use test_support::process::{free_port, sigkill};

use crate::jobs::{run, run_json};
use crate::support::{Logs, World, run_to_end, spawn, wait_healthy};

/// Bound on anything that should happen soon; reached only when something hangs.
const PATIENCE: Duration = Duration::from_secs(60);

/// The log line of the instance that takes the subscriber.
const HOLDS_SUBSCRIBER: &str = "this instance runs the subscriber";

/// `GET http://127.0.0.1:port{path}`: status code and body.
async fn get(port: u16, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Polls `done` every 50 ms until it holds, or panics naming `what` after [`PATIENCE`].
pub(crate) async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two `provisioner run` on one PostgreSQL database: one holds the subscriber, the other is a
/// standby that claims jobs and serves the status API, so its `/readyz` answers 200 (README,
/// "Scaling out to PostgreSQL" and "Status API").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_standby_without_the_subscriber_is_ready() {
    let db = PgTempDb::create().await;
    let world = World::start(1, 1).await;
    let ports = [free_port(), free_port()];
    let mut children = Vec::new();
    let mut logs = Vec::new();
    for &port in &ports {
        let mut env = world.env(port);
        env.insert("DATABASE_URL".into(), db.url());
        let mut child = spawn(&["run"], &env);
        logs.push(Logs::capture(&mut child));
        wait_healthy(port, PATIENCE).await;
        children.push(child);
    }
    eventually("an instance takes the subscriber", async || {
        logs.iter().any(|l| l.contains(HOLDS_SUBSCRIBER))
    })
    .await;
    let holder = logs
        .iter()
        .position(|l| l.contains(HOLDS_SUBSCRIBER))
        .unwrap();
    let standby = 1 - holder;

    let (code, body) = get(ports[standby], "/readyz").await;
    assert_eq!(code, 200, "standby /readyz: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"status": "ready", "store": "ok", "subscriber": "ok"})
    );
    // It answered as a standby: the advisory lock is the holder's while the holder lives.
    assert!(
        !logs[standby].contains(HOLDS_SUBSCRIBER),
        "both instances hold the subscriber:\n{}",
        logs[standby].text()
    );
    // The holder is ready once its subscription delivers (keepalives every 500 ms).
    eventually("the subscriber holder's /readyz answers 200", async || {
        get(ports[holder], "/readyz").await.0 == 200
    })
    .await;

    for child in &mut children {
        sigkill(child).await;
    }
    db.close().await;
}

/// With `provisioner run` on a SQLite file, `dlq list`, `keys status` and `audit verify` work
/// beside it (exit 0; they open the store without the one-service lock), while a second `run`
/// on the same file exits 1 (README, Operations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_work_beside_a_running_sqlite_service() {
    let world = World::start(2, 1).await;
    // The first customer's WHMCS client is not Active: its Order fails into a dead letter.
    world.whmcs.set_client_status(1, "Inactive");
    let (failing, provisioned) = (&world.seeded.events[0], &world.seeded.events[1]);
    assert_eq!(failing.customer_number, sandbox::seed::customer_number(1));
    world.publish_all();

    let port = free_port();
    let env = world.env(port);
    let mut service = spawn(&["run"], &env);
    let service_logs = Logs::capture(&mut service);
    wait_healthy(port, PATIENCE).await;
    let status = |id: &str| world.sf.order(id).map(|o| o.status).unwrap_or_default();
    eventually("one Order Activated, the other failed", async || {
        status(&provisioned.order_id) == "Activated"
            && status(&failing.order_id) == "Provisioning Failed"
    })
    .await;

    let (code, out) = run_to_end(&["dlq", "list"], &env, PATIENCE).await;
    assert_eq!(code, Some(0), "dlq list beside run:\n{out}");
    assert!(
        out.contains(&format!("order={}", failing.order_id)) && out.contains("not Active"),
        "the failed Order's dead letter is listed:\n{out}"
    );
    let (code, out) = run_to_end(&["keys", "status"], &env, PATIENCE).await;
    assert_eq!(code, Some(0), "keys status beside run:\n{out}");
    assert!(out.contains("primary"), "{out}");
    let (code, out) = run_to_end(&["audit", "verify"], &env, PATIENCE).await;
    assert_eq!(code, Some(0), "audit verify beside run:\n{out}");
    assert!(out.contains("audit chain ok"), "{out}");
    // The same listings as JSON documents, with their documented fields.
    let letters = run_json(&["dlq", "list", "--json"], &env).await;
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["order_id"], failing.order_id.as_str());
    assert_eq!(letters[0]["state"], "open");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not Active")
    );
    assert!(letters[0]["id"].is_string() && letters[0]["attempts"].is_u64());
    let keys = run_json(&["keys", "status", "--json"], &env).await;
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["primary"], true);
    assert!(
        keys[0]["id"].is_string() || keys[0]["id"].is_u64(),
        "{keys:?}"
    );
    assert!(keys[0]["created_at"].is_string(), "{keys:?}");
    let verified = run_json(&["audit", "verify", "--json"], &env).await;
    assert_eq!(verified["ok"], true, "{verified}");
    let head = verified["head"]["seq"].as_u64().unwrap();
    assert!(head >= verified["records"].as_u64().unwrap(), "{verified}");
    assert_eq!(verified["head"]["mac"].as_str().unwrap().len(), 64);
    assert_eq!(verified["witness"], Value::Null);
    // A witness that does not match: `ok` false with the reason, exit 1.
    let wrong = format!("{head}:{}", "0".repeat(64));
    let (code, out, _) = run(
        &["audit", "verify", "--expect-head", &wrong, "--json"],
        &env,
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    let refused: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("differs"),
        "{refused}"
    );

    // A second service on the same file is refused.
    let mut second = env.clone();
    second.insert(
        "PROVISIONER_HTTP_ADDR".into(),
        format!("127.0.0.1:{}", free_port()),
    );
    let (code, out) = run_to_end(&["run"], &second, PATIENCE).await;
    assert_eq!(code, Some(1), "a second run on one SQLite file:\n{out}");
    assert!(
        out.contains("in use by another provisioner process"),
        "{out}"
    );

    // The cause is fixed and the operator retries the dead letter (issue 14, Done-when 2): the
    // Order still says Provisioning Failed, and the job provisions it exactly once.
    world.whmcs.set_client_status(1, "Active");
    let (_, out) = run_to_end(&["dlq", "list"], &env, PATIENCE).await;
    let letter = out
        .lines()
        .find(|l| l.contains(&format!("order={}", failing.order_id)))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no dead letter listed:\n{out}"))
        .to_owned();
    let (code, out) = run_to_end(&["dlq", "retry", &letter], &env, PATIENCE).await;
    assert_eq!(code, Some(0), "dlq retry beside run:\n{out}");
    eventually("the retried Order is Activated", async || {
        status(&failing.order_id) == "Activated"
    })
    .await;
    assert_eq!(world.whmcs.orders().len(), 2, "one WHMCS order per Order");
    let (code, out) = run_to_end(&["dlq", "list"], &env, PATIENCE).await;
    assert_eq!(code, Some(0));
    assert!(
        !out.contains(&letter),
        "the dead letter is no longer open:\n{out}"
    );
    let (code, out) = run_to_end(&["dlq", "retry", &letter], &env, PATIENCE).await;
    assert_eq!(code, Some(2), "a done job is not retried:\n{out}");

    // The service went on through all of it.
    assert!(
        service.try_wait().unwrap().is_none(),
        "the service exited:\n{}",
        service_logs.text()
    );
    assert_eq!(get(port, "/healthz").await.0, 200);
    sigkill(&mut service).await;
}
