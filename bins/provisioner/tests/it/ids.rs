//! Issue 14, Done-when 5, through the processes: an event with the 15-character id and one
//! with the 18-character id of the same Order → one job, one WHMCS order, and the status API
//! answers the same for both forms.

use std::time::Duration;

use test_support::process::{PATIENCE, free_port};
use tokio::time::Instant;

use crate::status_api::StatusApi;
use crate::support::{PORTAL_TOKEN, World, spawn_logged, wait_all_activated, wait_healthy};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_id_forms_reach_one_job_and_one_status_answer() {
    let world = World::start(1, 1).await;
    let port = free_port();
    let mut env = world.env(port);
    env.insert("PORTAL_API_TOKEN".into(), PORTAL_TOKEN.into());
    let event = world.seeded.events[0].clone();
    let long = event.order_id.clone();
    let short = long[..15].to_owned();
    let mut first = event.clone();
    first.order_id = short.clone();
    world
        .pubsub
        .publish_order(sf_pubsub::DEFAULT_TOPIC, &first)
        .unwrap();
    world
        .pubsub
        .publish_order(sf_pubsub::DEFAULT_TOPIC, &event)
        .unwrap();

    let log = world.dir.path().join("run.log");
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, PATIENCE).await;
    wait_all_activated(&world, PATIENCE).await;
    let mut api = StatusApi::new(port);
    let deadline = Instant::now() + PATIENCE;
    let answer = loop {
        let answer = api
            .status(&short, &event.customer_number, PORTAL_TOKEN)
            .await;
        if answer.status == 200 && answer.json()["status"] == "provisioned" {
            break answer;
        }
        assert!(Instant::now() < deadline, "{}", answer.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let other = api
        .status(&long, &event.customer_number, PORTAL_TOKEN)
        .await;
    assert_eq!(other.status, 200);
    assert_eq!(answer.body, other.body, "the same answer for both forms");
    assert_eq!(answer.json()["orderId"], long.as_str());
    crate::support::stop(&mut child).await;

    assert_eq!(world.whmcs.orders().len(), 1, "one WHMCS order");
    assert_eq!(world.whmcs.requests_for("AddOrder").len(), 1);
}
