//! `POST /v1/orders` against a running service and the Salesforce sandbox: each answer
//! (201, 400, 401, 403, 404, 409, 422, 429) as the portal meets it, one Order per key, and a
//! created Order that, once approved, is provisioned with its sensitive option decrypted.

use std::time::Duration;

use sandbox::salesforce::{FaultKind, Route};
use test_support::process::free_port;

use crate::support::{World, spawn_logged, stop, wait_healthy};

const TOKEN: &str = "portal-token-for-tests-5b1d";

struct Portal {
    http: reqwest::Client,
    url: String,
}

impl Portal {
    fn new(port: u16) -> Self {
        Portal {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            url: format!("http://127.0.0.1:{port}/v1/orders"),
        }
    }

    /// POSTs `body` as `customer` with `key` (and `token`): status, `Retry-After`, JSON body.
    async fn post(
        &self,
        token: &str,
        customer: &str,
        key: Option<&str>,
        body: &serde_json::Value,
    ) -> (u16, Option<String>, serde_json::Value) {
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .header("x-customer-number", customer)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        (
            status,
            retry,
            serde_json::from_str(&text).unwrap_or_default(),
        )
    }
}

fn order(world: &World, account: &str, quantity: u32) -> serde_json::Value {
    serde_json::json!({
        "accountId": account,
        "lines": [{
            "whmcsProductId": world.seeded.product_id,
            "billingCycle": "monthly",
            "quantity": quantity,
            "configOptions": {"4": {"value": "intake-secret-3b9e", "sensitive": true}}
        }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_intake_answers_as_a_running_service() {
    let world = World::start(2, 1).await;
    let port = free_port();
    let mut env = world.env(port);
    env.insert("SF_PRICEBOOK_ID".into(), world.sf.pricebook_id());
    env.insert("CUSTOMER_ORDER_RATE".into(), "3/hour".into());
    let mut child = spawn_logged(&["run"], &env, &world.dir.path().join("run.log"));
    wait_healthy(port, Duration::from_secs(30)).await;
    let portal = Portal::new(port);
    let (c1, c2) = (&world.seeded.events[0], &world.seeded.events[1]);
    let (a1, a2) = (
        c1.account_id.clone().unwrap(),
        c2.account_id.clone().unwrap(),
    );
    let customer = c1.customer_number.as_str();
    let before = world.sf.order_count();

    // 401: no valid token (nothing counted against the customer's rate).
    let (status, _, _) = portal
        .post(
            "wrong",
            customer,
            Some("key-0000001"),
            &order(&world, &a1, 1),
        )
        .await;
    assert_eq!(status, 401);
    // 400: no Idempotency-Key; a bad body.
    let (status, _, body) = portal
        .post(TOKEN, customer, None, &order(&world, &a1, 1))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = portal
        .post(
            TOKEN,
            customer,
            Some("key-0000002"),
            &serde_json::json!({"accountId": a1, "lines": []}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );

    // 201, then the same answer for the same key; 422 for another body under it.
    let (status, _, created) = portal
        .post(TOKEN, customer, Some("key-0000003"), &order(&world, &a1, 1))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "pending_review");
    let (status, _, again) = portal
        .post(TOKEN, customer, Some("key-0000003"), &order(&world, &a1, 1))
        .await;
    assert_eq!((status, &again), (201, &created));
    let (status, _, body) = portal
        .post(TOKEN, customer, Some("key-0000003"), &order(&world, &a1, 2))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(world.sf.order_count(), before + 1);

    // 403: another customer's Account.
    let (status, _, body) = portal
        .post(TOKEN, customer, Some("key-0000004"), &order(&world, &a2, 1))
        .await;
    assert_eq!(status, 403, "{body}");

    // 409: the first request with a key is still running (its create answers late).
    world.sf.faults().fail_next(
        Route::Composite,
        1,
        FaultKind::DelayAnswer(Duration::from_secs(3)),
    );
    let slow = {
        let (http, url, body) = (
            portal.http.clone(),
            portal.url.clone(),
            order(&world, &a1, 3),
        );
        let customer = customer.to_owned();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(TOKEN)
                .header("x-customer-number", customer)
                .header("idempotency-key", "key-0000005")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while world.sf.faults().fired(Route::Composite) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow create never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, retry, body) = portal
        .post(TOKEN, customer, Some("key-0000005"), &order(&world, &a1, 3))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(retry.is_some());
    assert_eq!(slow.await.unwrap(), 201);
    assert_eq!(world.sf.order_count(), before + 2);

    // 429: the customer's order rate (3/hour: keys 3, 4 and 5 each started one) is spent;
    // another customer is not affected.
    let (status, retry, body) = portal
        .post(TOKEN, customer, Some("key-0000006"), &order(&world, &a1, 1))
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some());
    let (status, _, body) = portal
        .post(
            TOKEN,
            &c2.customer_number,
            Some("key-0000006"),
            &order(&world, &a2, 1),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    stop(&mut child).await;

    // 404: without SF_PRICEBOOK_ID the route is off.
    env.remove("SF_PRICEBOOK_ID");
    let mut child = spawn_logged(&["run"], &env, &world.dir.path().join("off.log"));
    wait_healthy(port, Duration::from_secs(30)).await;
    let (status, _, _) = portal
        .post(TOKEN, customer, Some("key-0000007"), &order(&world, &a1, 1))
        .await;
    assert_eq!(status, 404);
    stop(&mut child).await;
    // Nothing submitted is in the logs.
    for log in ["run.log", "off.log"] {
        let text = std::fs::read_to_string(world.dir.path().join(log)).unwrap();
        assert!(!text.contains("intake-secret-3b9e"), "{log}");
    }
}

/// Portal → Salesforce → approval → WHMCS: a sensitive option is stored in Salesforce only
/// sealed, survives a key rotation between order and approval, and reaches WHMCS decrypted; a
/// tampered sealed value fails its job before any WHMCS call and raises `integrity_failure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sealed_option_reaches_whmcs_decrypted_and_a_tampered_one_fails_the_job() {
    const SECRET: &str = "intake-root-pw-77c1";
    let world = World::start(1, 1).await;
    let port = free_port();
    let (hook, bodies) = crate::support::webhook().await;
    let mut env = world.env(port);
    env.insert("SF_PRICEBOOK_ID".into(), world.sf.pricebook_id());
    env.insert("SECURITY_ALERT_WEBHOOK".into(), hook);
    let log = world.dir.path().join("run.log");
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    let portal = Portal::new(port);
    let event = &world.seeded.events[0];
    let (customer, account) = (
        event.customer_number.as_str(),
        event.account_id.clone().unwrap(),
    );
    let body = |secret: &str| {
        serde_json::json!({
            "accountId": account,
            "lines": [{
                "whmcsProductId": world.seeded.product_id,
                "billingCycle": "monthly",
                "quantity": 1,
                "configOptions": {"4": {"value": secret, "sensitive": true}}
            }]
        })
    };
    let (status, _, good) = portal
        .post(TOKEN, customer, Some("key-seal-0001"), &body(SECRET))
        .await;
    assert_eq!(status, 201, "{good}");
    let (status, _, bad) = portal
        .post(
            TOKEN,
            customer,
            Some("key-seal-0002"),
            &body("another-secret-19"),
        )
        .await;
    assert_eq!(status, 201, "{bad}");
    let (good, bad) = (
        good["orderId"].as_str().unwrap().to_owned(),
        bad["orderId"].as_str().unwrap().to_owned(),
    );
    // Before its approval the status route answers `pending_review` to its customer only.
    let mut api = crate::status_api::StatusApi::new(port);
    let pending = api.status(&good, customer, TOKEN).await;
    assert_eq!(pending.status, 200, "{}", pending.body);
    assert_eq!(
        pending.json()["status"],
        "pending_review",
        "{}",
        pending.body
    );
    assert_eq!(pending.json()["whmcsOrderId"], serde_json::Value::Null);
    let theirs = api.status(&good, "CUST-99999", TOKEN).await;
    assert_eq!(theirs.status, 404, "{}", theirs.body);
    let stored = world.sf.order_items(&good)[0]
        .config_options
        .clone()
        .unwrap();
    assert!(!stored.contains(SECRET), "{stored}");
    // A rotation between the order and its approval.
    let (code, out) = crate::support::provisioner(&["keys", "rotate"], &env).await;
    assert_eq!(code, 0, "{out}");
    // Someone edits the second Order's sealed value (one character of the ciphertext).
    let item = world.sf.order_items(&bad)[0].clone();
    let mut options: serde_json::Value =
        serde_json::from_str(item.config_options.as_deref().unwrap()).unwrap();
    let sealed = options["4"].as_str().unwrap().to_owned();
    let last = sealed.chars().last().unwrap();
    let flipped = format!(
        "{}{}",
        &sealed[..sealed.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    options["4"] = serde_json::Value::String(flipped);
    assert!(
        world
            .sf
            .set_order_item_config_options(&item.id, Some(options.to_string()))
    );

    // Approval publishes the event, as the Flow does.
    world
        .sf
        .attach_pubsub(world.pubsub.publisher(), sf_pubsub::DEFAULT_TOPIC);
    world.sf.approve(&good).unwrap();
    world.sf.approve(&bad).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = |id: &str| world.sf.order(id).map(|o| o.status).unwrap_or_default();
        if status(&good) == "Activated" && status(&bad) == "Provisioning Failed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "good {} bad {}",
            status(&good),
            status(&bad)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // WHMCS got the decrypted value for the good Order, and nothing for the tampered one.
    let services = world.whmcs.services();
    assert_eq!(services.len(), 1, "{services:?}");
    assert_eq!(
        services[0]
            .config_options
            .get(&4)
            .and_then(|v| v.as_text())
            .as_deref(),
        Some(SECRET),
        "WHMCS got the decrypted value"
    );
    let failed = world.sf.order(&bad).unwrap();
    assert!(
        failed
            .provisioning_error
            .as_deref()
            .is_some_and(|e| e.contains("does not decrypt")),
        "{failed:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let alert = loop {
        if let Some(a) = crate::support::alerts(&bodies, "integrity_failure")
            .into_iter()
            .find(|a| a["details"]["order_id"] == bad.as_str())
        {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no integrity_failure alert"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(alert["details"]["check"], "field_decrypt", "{alert}");
    stop(&mut child).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(SECRET), "the secret is in the log");
}
