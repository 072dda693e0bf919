//! `provisioner doctor` as a process against the sandboxes: every check `ok` on a sound setup,
//! then one broken thing at a time fails exactly its own line (exit 1), and no output ever holds
//! a secret. Nothing is written: no Order changes, no WHMCS order, no alert body.

use std::collections::BTreeMap;

use test_support::process::free_port;

use crate::support::{PORTAL_TOKEN, ROOT_PASSWORD, World, provisioner, webhook};

/// The check lines of a doctor run (`ok`/`warn`/`fail  <check>: ...`): `(level, check)`.
fn checks(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|line| {
            let (level, rest) = line.split_once("  ")?;
            let level = level.trim();
            if !["ok", "warn", "fail"].contains(&level) {
                return None;
            }
            let (check, _) = rest.trim_start().split_once(": ")?;
            Some((level.to_owned(), check.to_owned()))
        })
        .collect()
}

/// Runs doctor with `env`, checks that nothing secret is in its output, and returns the exit
/// code and the failed checks.
async fn doctor(env: &BTreeMap<String, String>, world: &World) -> (i32, Vec<String>, String) {
    let (code, out) = provisioner(&["doctor"], env).await;
    let secrets = [
        world.whmcs.config().secret.clone(),
        world.whmcs.config().identifier.clone(),
        env["FIELD_ENCRYPTION_KEY"]
            .trim_start_matches("base64:")
            .to_owned(),
        env["PORTAL_API_TOKEN"].clone(),
        PORTAL_TOKEN.to_owned(),
        ROOT_PASSWORD.to_owned(),
        env.get("SECURITY_ALERT_WEBHOOK")
            .cloned()
            .unwrap_or_default(),
        "/hook".to_owned(),
    ];
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(
            !out.contains(secret.as_str()),
            "doctor printed a secret:\n{out}"
        );
    }
    for line in test_support::keys::PRIVATE_KEY_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
    {
        assert!(
            !out.contains(line),
            "doctor printed the private key:\n{out}"
        );
    }
    let failed = checks(&out)
        .into_iter()
        .filter(|(level, _)| level == "fail")
        .map(|(_, check)| check)
        .collect();
    (code, failed, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_sound_setup_and_fails_exactly_the_broken_check() {
    let world = World::start(1, 1).await;
    let (hook, bodies) = webhook().await;
    let mut env = world.env(free_port());
    env.insert("SECURITY_ALERT_WEBHOOK".into(), hook);
    let (code, out) = provisioner(&["migrate"], &env).await;
    assert_eq!(code, 0, "{out}");
    let patches_before = world.sf.order(&world.seeded.events[0].order_id).unwrap();

    // Sound: every line ok, exit 0.
    let (code, failed, out) = doctor(&env, &world).await;
    assert_eq!(code, 0, "{out}");
    assert!(failed.is_empty(), "{out}");
    let lines = checks(&out);
    assert_eq!(
        lines.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
        [
            "salesforce login",
            "platform event topic",
            "Order fields",
            "OrderItem fields",
            "Order Status values",
            "whmcs credentials",
            "whmcs payment method",
            "whmcs products",
            "database",
            "alert webhook",
        ],
        "{out}"
    );
    assert!(lines.iter().all(|(level, _)| level == "ok"), "{out}");

    // One broken thing at a time: exactly its line fails, exit 1.
    // A field the code writes is missing from Order.
    assert!(world.sf.remove_field("Order", "WHMCS_Order_Id__c"));
    let (code, failed, out) = doctor(&env, &world).await;
    assert_eq!(
        (code, failed),
        (1, vec!["Order fields".to_owned()]),
        "{out}"
    );
    assert!(out.contains("Order.WHMCS_Order_Id__c is missing"), "{out}");
    assert!(world.sf.restore_field("Order", "WHMCS_Order_Id__c"));

    // A configured status the picklist does not hold.
    let mut broken = env.clone();
    broken.insert("SF_ORDER_STATUS_FAILED".into(), "Failed Forever".into());
    let (code, failed, out) = doctor(&broken, &world).await;
    assert_eq!(
        (code, failed),
        (1, vec!["Order Status values".to_owned()]),
        "{out}"
    );

    // A wrong WHMCS secret: the credential line fails; what needs it is not checked.
    let mut broken = env.clone();
    broken.insert("WHMCS_API_SECRET".into(), "not-the-secret-0000".into());
    let (code, failed, out) = doctor(&broken, &world).await;
    assert_eq!(
        (code, failed),
        (1, vec!["whmcs credentials".to_owned()]),
        "{out}"
    );
    assert!(!out.contains("not-the-secret-0000"), "{out}");

    // A product in the ref map that WHMCS does not have.
    let mut broken = env.clone();
    let pid = world.seeded.product_id;
    broken.insert(
        "WHMCS_ORDER_REF_FIELD_ID".into(),
        format!("{pid}:1,9999:11"),
    );
    let (code, failed, out) = doctor(&broken, &world).await;
    assert_eq!(
        (code, failed),
        (1, vec!["whmcs products".to_owned()]),
        "{out}"
    );
    assert!(out.contains("9999"), "{out}");

    // An alert webhook nobody listens on.
    let mut broken = env.clone();
    broken.insert(
        "SECURITY_ALERT_WEBHOOK".into(),
        format!("http://127.0.0.1:{}/hook", free_port()),
    );
    let (code, failed, out) = doctor(&broken, &world).await;
    assert_eq!(
        (code, failed),
        (1, vec!["alert webhook".to_owned()]),
        "{out}"
    );

    // The event's schema lost a field the subscriber decodes.
    let topic = sf_pubsub::DEFAULT_TOPIC;
    let without: serde_json::Value = {
        let mut schema: serde_json::Value =
            serde_json::from_str(sf_pubsub::OrderProvisionRequested::SCHEMA_JSON).unwrap();
        schema["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "CustomerNumber__c");
        schema
    };
    world
        .pubsub
        .register_schema(topic, &without.to_string())
        .unwrap();
    let (code, failed, out) = doctor(&env, &world).await;
    assert_eq!(
        (code, failed),
        (1, vec!["platform event topic".to_owned()]),
        "{out}"
    );
    assert!(out.contains("CustomerNumber__c"), "{out}");
    world
        .pubsub
        .register_schema(topic, sf_pubsub::OrderProvisionRequested::SCHEMA_JSON)
        .unwrap();

    // Read-only: the Order is as it was, WHMCS has no order, the webhook got no alert.
    let after = world.sf.order(&world.seeded.events[0].order_id).unwrap();
    assert_eq!(after.status, patches_before.status);
    assert_eq!(after.last_modified, patches_before.last_modified);
    assert!(world.whmcs.orders().is_empty());
    assert!(
        bodies.lock().unwrap().iter().all(String::is_empty),
        "the webhook got a body"
    );
}
