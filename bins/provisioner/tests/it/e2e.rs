//! End-to-end tests of `provisioner run` (issue 7).

use std::time::Duration;

use crate::support::{World, free_port, spawn, wait_healthy};

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
        let done = world
            .seeded
            .events
            .iter()
            .filter(|e| {
                world
                    .sf
                    .order(&e.order_id)
                    .is_some_and(|o| o.status == "Activated")
            })
            .count();
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
