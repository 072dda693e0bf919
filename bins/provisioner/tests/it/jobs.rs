//! `provisioner jobs list|show` as processes beside a running `provisioner run` (README,
//! "Operating: jobs"): on SQLite against the in-process sandboxes, text and `--json`, 18- and
//! 15-character ids, the exit codes; and on PostgreSQL against the `sf-sandbox` process, where
//! an Order re-approved and published again through the sandbox's admin route shows up in
//! `jobs show`'s audit records.

use std::collections::BTreeMap;

use serde_json::Value;
use test_support::pg::PgTempDb;
use test_support::process::{Captured, PATIENCE, free_port, sigkill};
use test_support::sf_sandbox::SfSandbox;

use crate::operate::eventually;
use crate::processes::sf_sandbox_bin;
use crate::support::{
    CapturedProvisioner as _, Logs, MASTER_KEY, PORTAL_TOKEN, World, spawn, wait_healthy,
};

/// `provisioner <args>` to its end: exit code, stdout, stderr.
pub(crate) async fn run(
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> (Option<i32>, String, String) {
    let out = tokio::time::timeout(PATIENCE, spawn(args, env).wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("provisioner {args:?} did not finish within {PATIENCE:?}"))
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `provisioner <args>` that must exit 0 and print one JSON document.
pub(crate) async fn run_json(args: &[&str], env: &BTreeMap<String, String>) -> Value {
    let (code, out, err) = run(args, env).await;
    assert_eq!(code, Some(0), "provisioner {args:?}:\n{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{out}"))
}

/// `provisioner <args>` that must exit 0; its stdout.
async fn run_text(args: &[&str], env: &BTreeMap<String, String>) -> String {
    let (code, out, err) = run(args, env).await;
    assert_eq!(code, Some(0), "provisioner {args:?}:\n{out}{err}");
    out
}

/// The `action`s of a `jobs show --json` document's audit records.
fn actions(shown: &Value) -> Vec<String> {
    shown["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect()
}

/// The value of the `name` line of `jobs show`'s text (`name  value`).
fn field<'a>(shown: &'a str, name: &str) -> &'a str {
    shown
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .filter(|rest| rest.starts_with("  "))
                .map(str::trim)
        })
        .unwrap_or_else(|| panic!("no {name} line in:\n{shown}"))
}

/// The order ids of a `jobs list --json` array.
fn order_ids(listed: &Value) -> Vec<&str> {
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["order_id"].as_str().unwrap())
        .collect()
}

/// Three customers with one Order each; the first one's WHMCS client is not Active, so its
/// Order fails. With `provisioner run` on a SQLite file, `jobs list` and `jobs show` (text and
/// `--json`) tell each job's state, WHMCS ids and audit trail, and exit 1 or 2 as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_list_and_show_beside_a_running_sqlite_service() {
    let world = World::start(3, 1).await;
    world.whmcs.set_client_status(1, "Inactive");
    let ids: Vec<String> = world
        .seeded
        .events
        .iter()
        .map(|e| e.order_id.clone())
        .collect();
    let (failing, provisioned) = (&ids[0], &ids[1..]);
    world.publish_all();
    let port = free_port();
    let env = world.env(port);
    let mut service = spawn(&["run"], &env);
    let service_logs = Logs::capture(&mut service);
    wait_healthy(port, PATIENCE).await;

    // Poll the command itself: a job is done once its end is stored, after the write-back.
    eventually("two jobs provisioned and one failed", async || {
        let done = run_json(&["jobs", "list", "--state", "provisioned", "--json"], &env).await;
        let failed = run_json(&["jobs", "list", "--state", "failed", "--json"], &env).await;
        done.as_array().unwrap().len() == 2 && failed.as_array().unwrap().len() == 1
    })
    .await;

    // --json: the provisioned jobs, with the WHMCS ids Salesforce got.
    let done = run_json(&["jobs", "list", "--state", "provisioned", "--json"], &env).await;
    assert_eq!(order_ids(&done), provisioned);
    for job in done.as_array().unwrap() {
        let id = job["order_id"].as_str().unwrap();
        let sf = world.sf.order(id).unwrap();
        assert_eq!(job["view"], "provisioned", "{job}");
        assert_eq!(job["state"], "done", "{job}");
        assert_eq!(job["step"], "done", "{job}");
        assert_eq!(job["source"], "event", "{job}");
        assert_eq!(
            job["whmcs_order_id"].as_str(),
            sf.whmcs_order_id.as_deref(),
            "{job}"
        );
        let services: Vec<&str> = job["service_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(Some(services.join(",")), sf.whmcs_service_ids, "{job}");
        assert!(job["seq"].is_i64() && job["attempts"].is_u64(), "{job}");
    }
    let failed = run_json(&["jobs", "list", "--state", "failed", "--json"], &env).await;
    assert_eq!(order_ids(&failed), [failing.as_str()]);
    assert!(
        failed[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("not Active"),
        "{failed}"
    );
    assert!(
        run_json(&["jobs", "list", "--state", "received", "--json"], &env)
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    let customer = sandbox::seed::customer_number(2);
    let of_customer = run_json(&["jobs", "list", "--customer", &customer, "--json"], &env).await;
    assert_eq!(order_ids(&of_customer), [ids[1].as_str()]);

    // Text: a header, one row per job with its view and raw state.
    let listed = run_text(&["jobs", "list"], &env).await;
    let lines: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 4, "{listed}");
    assert_eq!(lines[0][..4], ["SEQ", "ORDER", "STATE", "RAW"], "{listed}");
    for (row, id) in lines[1..].iter().zip(&ids) {
        let (view, raw) = if id == failing {
            ("failed", "failed/")
        } else {
            ("provisioned", "done/done")
        };
        assert_eq!(row[1..3], [id.as_str(), view], "{listed}");
        assert!(row[3].starts_with(raw), "{listed}");
    }
    // A page of one says where the next one starts.
    let (code, out, err) = run(&["jobs", "list", "--limit", "1"], &env).await;
    assert_eq!((code, out.lines().count()), (Some(0), 2), "{out}{err}");
    assert!(err.contains("--after"), "{err}");

    // `jobs show`, text: the fields and the audit trail of the Order.
    let id = &provisioned[0];
    let sf = world.sf.order(id).unwrap();
    let shown = run_text(&["jobs", "show", id], &env).await;
    assert_eq!(field(&shown, "order"), id.as_str());
    assert_eq!(
        field(&shown, "state"),
        "provisioned (state done, step done)"
    );
    assert_eq!(
        Some(field(&shown, "whmcs_order")),
        sf.whmcs_order_id.as_deref()
    );
    assert_eq!(
        Some(field(&shown, "services")),
        sf.whmcs_service_ids.as_deref()
    );
    assert_eq!(field(&shown, "last_reason"), "-");
    assert_eq!(field(&shown, "customer"), sandbox::seed::customer_number(2));
    for action in ["event_received", "step_succeeded", "order_provisioned"] {
        assert!(
            shown
                .lines()
                .any(|l| l.split_whitespace().nth(3) == Some(action)),
            "{action} in:\n{shown}"
        );
    }
    let failed_shown = run_text(&["jobs", "show", failing], &env).await;
    assert!(
        failed_shown.contains("failed (state failed") && failed_shown.contains("not Active"),
        "{failed_shown}"
    );

    // `jobs show --json` by the 15-character id: the job and its records, oldest first.
    let shown = run_json(&["jobs", "show", &id[..15], "--json"], &env).await;
    assert_eq!(shown["job"]["order_id"], id.as_str());
    assert_eq!(shown["job"]["view"], "provisioned");
    assert_eq!(
        shown["job"]["whmcs_order_id"].as_str(),
        sf.whmcs_order_id.as_deref()
    );
    let trail = actions(&shown);
    assert_eq!(
        trail.first().map(String::as_str),
        Some("event_received"),
        "{trail:?}"
    );
    assert_eq!(
        trail.last().map(String::as_str),
        Some("order_provisioned"),
        "{trail:?}"
    );
    let records = shown["audit"].as_array().unwrap();
    assert!(
        records.iter().all(|r| r["order_id"] == id.as_str()),
        "{shown}"
    );
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let failed_json = run_json(&["jobs", "show", failing, "--json"], &env).await;
    let failed_actions = actions(&failed_json);
    assert!(
        failed_actions.iter().any(|a| a == "order_failed"),
        "{failed_actions:?}"
    );

    // An Order without a job: exit 1. Not an Order id, or no such state: usage, exit 2.
    let unknown = sandbox::salesforce::salesforce_id("801", 999);
    let (code, out, err) = run(&["jobs", "show", &unknown], &env).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains(&format!("no job for order {unknown}")),
        "{err}"
    );
    for args in [
        &["jobs", "show", "not-an-order-id"][..],
        &["jobs", "show", &format!("{}XYZ", &id[..15])],
        &["jobs", "list", "--state", "pending"],
    ] {
        let (code, out, err) = run(args, &env).await;
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }

    // The service went on through all of it.
    assert!(
        service.try_wait().unwrap().is_none(),
        "the service exited:\n{}",
        service_logs.text()
    );
    sigkill(&mut service).await;
}

/// `provisioner run` on PostgreSQL against the `sf-sandbox` process: `jobs show` reads the
/// provisioned job beside it; a portal developer then re-approves the Order and publishes it
/// again through the sandbox's admin route, and the new event appears in the Order's audit
/// records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_show_on_postgres_sees_an_order_published_again() {
    let db = PgTempDb::create().await;
    let sandbox = SfSandbox::start(
        &sf_sandbox_bin().await,
        &[
            "--customers",
            "1",
            "--orders-per-customer",
            "1",
            "--publish",
        ],
        PATIENCE,
    )
    .await;
    let port = free_port();
    let mut env = sandbox.env.clone();
    for (key, value) in [
        ("DATABASE_URL", db.url()),
        ("FIELD_ENCRYPTION_KEY", MASTER_KEY.to_owned()),
        ("PORTAL_API_TOKEN", PORTAL_TOKEN.to_owned()),
        ("PROVISIONER_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("HTTP_IP_RATE", "100000/minute".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
    ] {
        env.insert(key.to_owned(), value);
    }
    let mut provisioner = Captured::provisioner("provisioner", &["run"], &env);
    wait_healthy(port, PATIENCE).await;
    let id = sandbox::salesforce::salesforce_id("801", 1);
    let show = ["jobs", "show", id.as_str(), "--json"];

    eventually("the Order's job is provisioned", async || {
        let (code, out, _) = run(&show, &env).await;
        code == Some(0)
            && serde_json::from_str::<Value>(&out)
                .is_ok_and(|shown| shown["job"]["view"] == "provisioned")
    })
    .await;
    let shown = run_json(&show, &env).await;
    let before = actions(&shown);
    assert!(
        before.iter().any(|a| a == "event_received")
            && before.iter().any(|a| a == "order_provisioned"),
        "{before:?}"
    );
    let listed = run_json(&["jobs", "list", "--json"], &env).await;
    assert_eq!(order_ids(&listed), [id.as_str()]);

    // Re-approved in the sandbox and announced again, as a user and the Flow would.
    let response = reqwest::Client::new()
        .post(format!(
            "{}/sandbox/orders/{id}",
            sandbox.var("SF_LOGIN_URL")
        ))
        .body(r#"{"status": "Approved", "publish": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    let event_id = answer["published"]["eventId"].as_str().unwrap().to_owned();
    eventually("the new event is audited under the Order", async || {
        let shown = run_json(&show, &env).await;
        shown["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["details"]["event_id"] == event_id.as_str())
    })
    .await;
    provisioner.terminate().await;
    drop(sandbox);
    db.close().await;
}
