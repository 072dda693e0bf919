//! `provisioner run` stops on SIGTERM with exit 0 (the command contract), also mid-run, and a restart
//! finishes the work without duplicates (issue 7, done-when 5).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use test_support::process::{Captured, PATIENCE, free_port, sigterm};
use tokio::time::Instant;

use crate::support::{
    CapturedProvisioner as _, REF_FIELD, World, activated, spawn, wait_all_activated, wait_healthy,
};

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
