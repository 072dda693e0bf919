//! Issue 15, per-product external-ref fields, through the process: a two-product catalogue
//! with a field id per product and a lost AddOrder response on the second product gives
//! exactly one WHMCS order; a third product without a mapping gives no AddOrder and an Order
//! failed with a reason naming the product.

use std::time::Duration;

use sandbox::salesforce::{SfOrder, SfOrderItem, salesforce_id};
use sandbox::whmcs::{Fault, Product};
use serde_json::Value;
use sf_pubsub::OrderProvisionRequested;
use test_support::process::{PATIENCE, free_port};
use tokio::time::Instant;

use crate::support::{REF_FIELD, World, spawn_logged, wait_healthy};

/// An Approved Order `n` of the seeded customer ordering one `pid`, and its event.
fn order_of_product(world: &World, n: u64, pid: u64) -> OrderProvisionRequested {
    let customer = sandbox::seed::customer_number(1);
    let account_id = salesforce_id("001", 1);
    let client_id = world.whmcs.clients()[0].id;
    let order_id = salesforce_id("801", 900 + n);
    let mut order = SfOrder::new(order_id.clone(), "Approved");
    order.order_number = format!("{:08}", 900 + n);
    order.account_id = Some(account_id.clone());
    order.customer_number = Some(customer.clone());
    order.whmcs_client_id = Value::String(client_id.to_string());
    world.sf.insert_order(order);
    world.sf.insert_order_item(SfOrderItem {
        id: salesforce_id("802", 900 + n),
        order_id: order_id.clone(),
        quantity: 1.0,
        whmcs_product_id: Value::String(pid.to_string()),
        billing_cycle: Some("monthly".into()),
        config_options: None,
    });
    OrderProvisionRequested {
        created_date: 0,
        created_by_id: salesforce_id("005", 1),
        order_id,
        customer_number: customer,
        account_id: Some(account_id),
    }
}

/// Waits until Order `order_id` has status `status`; returns it.
async fn wait_status(world: &World, order_id: &str, status: &str) -> sandbox::salesforce::SfOrder {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(order) = world.sf.order(order_id)
            && order.status == status
        {
            return order;
        }
        assert!(
            Instant::now() < deadline,
            "{order_id} never became {status}: {:?}",
            world.sf.order(order_id).map(|o| o.status)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_product_ref_fields_keep_a_lost_add_order_single_and_stop_unmapped_products() {
    // The seeded product keeps field REF_FIELD; product two's ref field is 21, product three's
    // 31 (not mapped).
    let world = World::start(1, 0).await;
    let first = world.seeded.product_id;
    let second = world
        .whmcs
        .seed_product(Product::new("VPS M").with_custom_field(21, "Salesforce Order Id", false));
    let third = world
        .whmcs
        .seed_product(Product::new("VPS L").with_custom_field(31, "Salesforce Order Id", false));
    let port = free_port();
    let mut env = world.env(port);
    env.insert(
        "WHMCS_ORDER_REF_FIELD_ID".into(),
        format!("{first}:{REF_FIELD},{second}:21"),
    );
    let log = world.dir.path().join("run.log");
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, PATIENCE).await;
    let publish = |event: &OrderProvisionRequested| {
        world
            .pubsub
            .publish_order(sf_pubsub::DEFAULT_TOPIC, event)
            .unwrap();
    };

    let a = order_of_product(&world, 1, first);
    publish(&a);
    wait_status(&world, &a.order_id, "Activated").await;

    // The second product's AddOrder commits, then its response is lost.
    world
        .whmcs
        .inject_fault("AddOrder", Fault::CommitThenDrop, Some(1));
    let b = order_of_product(&world, 2, second);
    publish(&b);
    let b_order = wait_status(&world, &b.order_id, "Activated").await;
    let with_b_ref: Vec<_> = world
        .whmcs
        .services()
        .into_iter()
        .filter(|s| s.custom_fields.get(&21) == Some(&b.order_id))
        .collect();
    assert_eq!(with_b_ref.len(), 1, "product two's field holds the ref");
    assert_eq!(
        b_order.whmcs_order_id.as_deref(),
        Some(with_b_ref[0].order_id.to_string().as_str()),
        "found by its own product's field, not ordered again"
    );
    assert_eq!(
        world.whmcs.orders().len(),
        2,
        "exactly one WHMCS order each"
    );
    assert_eq!(world.whmcs.requests_for("AddOrder").len(), 2);

    let c = order_of_product(&world, 3, third);
    publish(&c);
    let c_order = wait_status(&world, &c.order_id, "Provisioning Failed").await;
    let reason = c_order.provisioning_error.unwrap_or_default();
    assert!(
        reason.contains(&format!("WHMCS product {third}")),
        "{reason}"
    );
    assert_eq!(
        world.whmcs.requests_for("AddOrder").len(),
        2,
        "no AddOrder for it"
    );
    assert_eq!(world.whmcs.orders().len(), 2);

    crate::support::stop(&mut child).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("no_ref_field_for_product"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("retrying") && l.contains("AddOrder")),
        "the lost AddOrder response was retried: {text}"
    );
    assert!(
        !text.contains("WHMCS did not store the external ref"),
        "both mapped products store their ref: {text}"
    );
}
