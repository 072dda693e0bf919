//! The disaster-recovery drill (issue 8, Done-when 5; issue 14, Done-when 3), with every
//! Order status at its default: back up before 100 orders are provisioned, provision them,
//! restore the backup and restart. The Orders already say Provisioning (this provisioner's own
//! unfinished work: resumed, never refused) and WHMCS already holds every order; the
//! external-ref lookup must find each one, so no duplicate is created and every Salesforce
//! Order converges to Activated.

use std::time::Duration;

use sandbox::whmcs::Fault;

use test_support::process::free_port;

use crate::support::{World, provisioner, spawn_logged, wait_healthy};

/// The database is lost: `backup` is put back at `db` (its WAL files removed).
fn restore(backup: &std::path::Path, db: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::copy(backup, db).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restoring_an_old_backup_creates_no_duplicate_and_converges() {
    // One order per customer: a customer's orders run one at a time, and the first one keeps
    // retrying its write-back below.
    let world = World::start(100, 1).await;
    let port = free_port();
    let env = world.env(port);
    assert!(
        !env.contains_key("SF_ORDER_STATUS_PROVISIONING"),
        "statuses at their defaults"
    );
    let db = world.dir.path().join("provisioner.db");
    let backup = world.dir.path().join("backup.db");

    let log = world.dir.path().join("run.log");
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    // The backup is taken while the service runs, before any order is provisioned.
    let (code, out) = provisioner(&["backup", "--to", backup.to_str().unwrap()], &env).await;
    assert_eq!(code, 0, "{out}");

    // A validation rule refuses every write-back for now (a permanent-looking error): WHMCS
    // gets the orders, the Orders say Provisioning and keep retrying their write-back.
    world.sf.reject_status_updates_to(Some("Activated"));
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
    crate::support::stop(&mut child).await;
    assert!(
        world
            .seeded
            .events
            .iter()
            .all(|e| world.sf.order(&e.order_id).unwrap().status == "Provisioning"),
        "every Order says Provisioning: none was written back, none marked failed"
    );

    // Disaster: the database is lost; restore the backup (which knows no order at all).
    restore(&backup, &db);
    world.sf.reject_status_updates_to(None);

    // Restart: every event replays from EARLIEST; each order is found in WHMCS by its ref.
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    crate::support::wait_all_activated(&world, Duration::from_secs(90)).await;
    crate::support::stop(&mut child).await;

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

/// Issue 14, Done-when 3: a backup taken before the event is restored while the Order sits in
/// Provisioning with a Pending WHMCS order (AcceptOrder kept failing) → the replayed event
/// resumes it: exactly one WHMCS order, accepted, Order Activated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restoring_while_a_whmcs_order_is_pending_accepts_it_once() {
    let world = World::start(1, 1).await;
    let port = free_port();
    let mut env = world.env(port);
    // An HTML 500 leaves AcceptOrder's outcome unknown: it is sent again only after its
    // timeout and the settle time, so both are short here.
    env.insert("WHMCS_ACCEPT_TIMEOUT".into(), "2s".into());
    env.insert("WHMCS_SETTLE".into(), "1s".into());
    let db = world.dir.path().join("provisioner.db");
    let backup = world.dir.path().join("backup.db");
    let log = world.dir.path().join("run.log");
    let order_id = world.seeded.events[0].order_id.clone();

    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    let (code, out) = provisioner(&["backup", "--to", backup.to_str().unwrap()], &env).await;
    assert_eq!(code, 0, "{out}");
    world
        .whmcs
        .inject_fault("AcceptOrder", Fault::Html500, None);
    world.publish_all();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while world.whmcs.requests_for("AcceptOrder").len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "AcceptOrder never tried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::support::stop(&mut child).await;
    let orders = world.whmcs.orders();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].status, "Pending");
    assert_eq!(world.sf.order(&order_id).unwrap().status, "Provisioning");

    restore(&backup, &db);
    world.whmcs.clear_faults();
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    crate::support::wait_all_activated(&world, Duration::from_secs(60)).await;
    crate::support::stop(&mut child).await;

    let orders = world.whmcs.orders();
    assert_eq!(orders.len(), 1, "exactly one WHMCS order");
    assert_eq!(orders[0].status, "Active");
    assert_eq!(world.whmcs.requests_for("AddOrder").len(), 1);
    let order = world.sf.order(&order_id).unwrap();
    assert_eq!(order.status, "Activated");
    assert_eq!(order.whmcs_order_id, Some(orders[0].id.to_string()));
}
