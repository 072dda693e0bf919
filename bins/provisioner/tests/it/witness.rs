//! Issue 16, Done-when 1: the audit chain's head is witnessed outside the database (the log and
//! the alert webhook, on start and on shutdown), and `audit verify --expect-head` catches what
//! a plain verification cannot: a cut tail, wiped rows and a restored older database.

use std::collections::BTreeMap;
use std::time::Duration;

use test_support::process::free_port;

use crate::support::{
    World, alerts, provisioner, spawn_logged, stop, wait_all_activated, wait_healthy, webhook,
};

/// `env` pointed at another SQLite file.
fn on(env: &BTreeMap<String, String>, db: &std::path::Path) -> BTreeMap<String, String> {
    let mut env = env.clone();
    env.insert("DATABASE_URL".into(), format!("sqlite://{}", db.display()));
    env
}

/// The heads the service witnessed in its JSON log at `log`, in order.
fn witnessed_heads(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("audit chain head witnessed"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["head"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_tail_wiped_rows_or_an_older_backup_fail_the_witnessed_head() {
    let world = World::start(5, 1).await;
    let port = free_port();
    let (hook, bodies) = webhook().await;
    let mut env = world.env(port);
    env.insert("SECURITY_ALERT_WEBHOOK".into(), hook);
    let dir = world.dir.path();
    let log = dir.join("run.log");

    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    // An older copy, taken before any order (the one a rollback would restore).
    let old = dir.join("old.db");
    let (code, out) = provisioner(&["backup", "--to", old.to_str().unwrap()], &env).await;
    assert_eq!(code, 0, "{out}");
    world.publish_all();
    wait_all_activated(&world, Duration::from_secs(60)).await;
    stop(&mut child).await;

    // The witnesses: in the log (start and shutdown), the last one the head at shutdown.
    let heads = witnessed_heads(&log);
    assert!(
        heads.len() >= 2,
        "witnessed on start and on shutdown: {heads:?}"
    );
    let head = heads.last().unwrap().clone();
    let (seq, mac) = head.split_once(':').unwrap();
    // ... and at the webhook, as `audit_head` alerts.
    let alerts = alerts(&bodies, "audit_head");
    assert!(alerts.len() >= 2, "{alerts:?}");
    let last = alerts.last().unwrap();
    assert_eq!(last["severity"], "low");
    assert_eq!(last["details"]["audit_seq"], seq);
    assert_eq!(last["details"]["audit_mac"], mac);

    // The intact chain has that head.
    let (code, out) = provisioner(&["audit", "verify", "--expect-head", &head], &env).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("head {head}")), "{out}");

    // Consistent copies to tamper with.
    let copy = |name: &str| {
        let path = dir.join(name);
        let env = env.clone();
        async move {
            let (code, out) = provisioner(&["backup", "--to", path.to_str().unwrap()], &env).await;
            assert_eq!(code, 0, "{out}");
            path
        }
    };
    let cut = copy("cut.db").await;
    let wiped = copy("wiped.db").await;
    {
        let conn = rusqlite::Connection::open(&cut).unwrap();
        conn.execute(
            "DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)",
            [],
        )
        .unwrap();
        let conn = rusqlite::Connection::open(&wiped).unwrap();
        conn.execute("DELETE FROM audit_log", []).unwrap();
    }
    for (db, what) in [
        (&cut, "a cut tail"),
        (&wiped, "wiped rows"),
        (&old, "an older backup"),
    ] {
        // Without the witness, each still verifies: that is the gap.
        let (code, out) = provisioner(&["audit", "verify"], &on(&env, db)).await;
        assert_eq!(code, 0, "{what}: plain verify: {out}");
        let (code, out) =
            provisioner(&["audit", "verify", "--expect-head", &head], &on(&env, db)).await;
        assert_eq!(code, 1, "{what}: {out}");
        assert!(
            out.contains(&format!("witnessed record {seq}")),
            "{what}: {out}"
        );
    }
}

/// Every alert is also an audit record: an event for an Order that is not approved raises
/// `unapproved_order_event`, and the Order's audit trail shows `alert_raised` with that kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_is_an_audit_record_of_its_order() {
    let world = World::start(1, 1).await;
    let event = world.seeded.events[0].clone();
    world.sf.set_order_status(&event.order_id, "Draft").unwrap();
    let port = free_port();
    let env = world.env(port);
    let log = world.dir.path().join("run.log");
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    world.publish_all();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let trail = loop {
        let (code, out) = provisioner(&["jobs", "show", &event.order_id, "--json"], &env).await;
        if code == 0 {
            let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
            let records = shown["audit"].as_array().cloned().unwrap_or_default();
            if records.iter().any(|r| r["action"] == "alert_raised") {
                break records;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no alert_raised record: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop(&mut child).await;
    let alert = trail
        .iter()
        .find(|r| r["action"] == "alert_raised")
        .unwrap();
    assert_eq!(alert["actor"], "security", "{alert}");
    assert_eq!(
        alert["details"]["alert"], "unapproved_order_event",
        "{alert}"
    );
    assert!(
        trail.iter().any(|r| r["action"] == "order_refused"),
        "{trail:?}"
    );
}

/// The running service verifies its own audit chain: a record edited while it was stopped is
/// found by the verification at start, reported in the log and raised as a high
/// `integrity_failure` naming the record at the webhook (`integrity_failure` is no longer a
/// promise only `audit verify` keeps).
/// Scrapes `/metrics` on `port` until `provisioner_audit_chain_intact` is `want`.
async fn wait_chain_gauge(port: u16, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = crate::status_api::StatusApi::new(port)
            .get("/metrics", &[])
            .await;
        let samples = test_support::prometheus::parse(&answer.body).unwrap();
        let value = samples
            .iter()
            .find(|s| s.name == "provisioner_audit_chain_intact")
            .map(|s| s.value);
        if value == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "provisioner_audit_chain_intact is {value:?}, not {want}\n{}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edited_audit_record_raises_integrity_failure_in_the_running_service() {
    let world = World::start(2, 1).await;
    let port = free_port();
    let (hook, bodies) = webhook().await;
    let mut env = world.env(port);
    env.insert("SECURITY_ALERT_WEBHOOK".into(), hook);
    let dir = world.dir.path();

    let first_log = dir.join("first.log");
    let mut child = spawn_logged(&["run"], &env, &first_log);
    wait_healthy(port, Duration::from_secs(30)).await;
    world.publish_all();
    wait_all_activated(&world, Duration::from_secs(60)).await;
    wait_chain_gauge(port, 1.0).await;
    stop(&mut child).await;
    assert!(
        alerts(&bodies, "integrity_failure").is_empty(),
        "an intact chain raises nothing"
    );
    assert!(
        !std::fs::read_to_string(&first_log)
            .unwrap()
            .contains("audit chain failed verification")
    );

    // Someone with write access to the database turns a record's outcome around.
    const EDITED: u64 = 3;
    {
        let conn = rusqlite::Connection::open(dir.join("provisioner.db")).unwrap();
        let changed = conn
            .execute(
                "UPDATE audit_log SET record = json_set(record, '$.outcome', \
                 CASE json_extract(record, '$.outcome') WHEN 'failed' THEN 'success' \
                 ELSE 'failed' END) WHERE seq = ?1",
                [EDITED],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }

    let second_log = dir.join("second.log");
    let mut child = spawn_logged(&["run"], &env, &second_log);
    wait_healthy(port, Duration::from_secs(30)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let alert = loop {
        if let Some(alert) = alerts(&bodies, "integrity_failure").into_iter().next() {
            break alert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no integrity_failure at the webhook"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // ... and the metric the alerting rule watches.
    wait_chain_gauge(port, 0.0).await;
    stop(&mut child).await;
    assert_eq!(alert["severity"], "high", "{alert}");
    assert_eq!(alert["details"]["check"], "audit_mac", "{alert}");
    assert_eq!(alert["details"]["audit_seq"], EDITED.to_string(), "{alert}");
    let text = std::fs::read_to_string(&second_log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("audit chain failed verification"))
        .unwrap_or_else(|| panic!("not in the log: {text}"));
    assert!(line.contains(&format!("\"audit_seq\":{EDITED}")), "{line}");
    // `audit verify` agrees on the record.
    let (code, out) = provisioner(&["audit", "verify"], &env).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{EDITED}")), "{out}");
}

/// PostgreSQL keeps the audit log as several chains and the witness covers each: with chain 0
/// held by another session for the whole run (as a busy writer of another instance would),
/// every record goes to another chain; its head is witnessed as `CHAIN.SEQ:MAC`, verifies with
/// `--expect-head`, and a cut tail of that chain, which a plain verification cannot see,
/// fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_chain_head_is_witnessed_and_checked_on_postgres() {
    use sqlx::Connection as _;
    let db = test_support::pg::PgTempDb::create().await;
    let world = World::start(3, 2).await;
    let port = free_port();
    let mut env = world.env(port);
    env.insert("DATABASE_URL".into(), db.url());
    let log = world.dir.path().join("run.log");
    // Migrations first, so the lock below is the only thing holding chain 0.
    let (code, out) = provisioner(&["migrate"], &env).await;
    assert_eq!(code, 0, "{out}");
    let holder = test_support::pg::ChainZeroHolder::hold(&db.url()).await;

    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    world.publish_all();
    wait_all_activated(&world, Duration::from_secs(60)).await;
    stop(&mut child).await;
    let mut holder = holder.release().await;

    let heads: Vec<String> = witnessed_heads(&log)
        .into_iter()
        .filter(|h| h.split(':').next().is_some_and(|p| p.contains('.')))
        .collect();
    // The witnessed head furthest along its chain: which chains the run's units spread over,
    // and how far each got, is up to scheduling.
    let position = |h: &str| -> (i64, i64) {
        let (position, _) = h.split_once(':').unwrap();
        let (chain, seq) = position.split_once('.').unwrap();
        (chain.parse().unwrap(), seq.parse().unwrap())
    };
    let head = heads
        .iter()
        .max_by_key(|h| position(h).1)
        .expect("a witnessed head of a chain other than 0")
        .clone();
    let (chain, seq) = position(&head);
    assert!(chain > 0, "{head}");

    let (code, out) = provisioner(&["audit", "verify", "--expect-head", &head], &env).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("head {head}")), "{out}");

    // The chain's tail cut from the witnessed record on: each chain still verifies on its
    // own, the witness does not.
    sqlx::query("DELETE FROM audit_log WHERE chain = $1 AND seq >= $2")
        .bind(i32::try_from(chain).unwrap())
        .bind(seq)
        .execute(&mut holder)
        .await
        .unwrap();
    holder.close().await.unwrap();
    let (code, out) = provisioner(&["audit", "verify"], &env).await;
    assert_eq!(code, 0, "plain verify: {out}");
    let (code, out) = provisioner(&["audit", "verify", "--expect-head", &head], &env).await;
    assert_eq!(code, 1, "{out}");
    // A chain cut down to nothing is named as missing.
    let named = if seq > 1 {
        format!("witnessed record {seq}")
    } else {
        format!("witnessed chain {chain} is missing")
    };
    assert!(out.contains(&named), "{out}");
    db.close().await;
}
