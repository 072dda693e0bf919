//! The disaster-recovery drill (issue 8, Done-when 5): back up before 100 orders are
//! provisioned, provision them, restore the backup and restart. WHMCS already holds every
//! order; the external-ref lookup must find each one, so no duplicate is created and every
//! Salesforce Order converges to Activated.

use std::time::Duration;

use sandbox::salesforce::{FaultKind, Route, Trigger};

use test_support::process::free_port;

use crate::support::{World, spawn, spawn_logged, wait_healthy};

async fn provisioner(
    args: &[&str],
    env: &std::collections::BTreeMap<String, String>,
) -> (i32, String) {
    let child = spawn(args, env);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restoring_an_old_backup_creates_no_duplicate_and_converges() {
    // One order per customer: a customer's orders run one at a time, and the first one keeps
    // retrying its write-back below.
    let world = World::start(100, 1).await;
    let port = free_port();
    let mut env = world.env(port);
    // No intermediate PATCH, so the Orders stay Approved until the final write-back.
    env.insert("SF_ORDER_STATUS_PROVISIONING".into(), String::new());
    let db = world.dir.path().join("provisioner.db");
    let backup = world.dir.path().join("backup.db");

    let log = world.dir.path().join("run.log");
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    // The backup is taken while the service runs, before any order is provisioned.
    let (code, out) = provisioner(&["backup", "--to", backup.to_str().unwrap()], &env).await;
    assert_eq!(code, 0, "{out}");

    // Salesforce refuses every write-back for now: WHMCS gets the orders, Salesforce does not
    // hear about them yet.
    world
        .sf
        .faults()
        .inject(Route::Patch, FaultKind::Status(503), Trigger::Always);
    world.publish_all();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while world
        .whmcs
        .orders()
        .iter()
        .filter(|o| o.status == "Active")
        .count()
        < 100
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "WHMCS has {} active orders",
            world.whmcs.orders().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    test_support::process::sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        world
            .seeded
            .events
            .iter()
            .all(|e| world.sf.order(&e.order_id).unwrap().status == "Approved"),
        "no Order was written back while PATCH failed"
    );

    // Disaster: the database is lost; restore the backup (which knows no order at all).
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::copy(&backup, &db).unwrap();
    world.sf.faults().clear_all();

    // Restart: every event replays from EARLIEST; each order is found in WHMCS by its ref.
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    crate::support::wait_all_activated(&world, Duration::from_secs(90)).await;
    test_support::process::sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));

    assert_eq!(world.whmcs.orders().len(), 100, "no duplicate WHMCS order");
    for e in &world.seeded.events {
        let order = world.sf.order(&e.order_id).unwrap();
        let refs: Vec<u64> = world
            .whmcs
            .services()
            .iter()
            .filter(|s| s.custom_fields.get(&crate::support::REF_FIELD) == Some(&e.order_id))
            .map(|s| s.order_id)
            .collect();
        assert_eq!(refs.len(), 1, "{}: {refs:?}", e.order_id);
        assert_eq!(order.whmcs_order_id, Some(refs[0].to_string()));
    }
    // The lookups happened: AddOrder was called exactly once per order.
    assert_eq!(world.whmcs.requests_for("AddOrder").len(), 100);
    let (code, out) = provisioner(&["audit", "verify"], &env).await;
    assert_eq!(code, 0, "{out}");
}
