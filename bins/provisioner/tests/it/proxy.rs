//! Issue 16: the status API behind a reverse proxy (`HTTP_TRUSTED_PROXIES`) and a portal token
//! rotation (`PORTAL_API_TOKEN_PREVIOUS`), against a real `provisioner run`.
//!
//! The test client connects from 127.0.0.1. Named that a trusted proxy, the client address is
//! the rightmost `X-Forwarded-For` hop that is not a trusted proxy, and `HTTP_ALLOWED_CIDRS`,
//! `HTTP_IP_RATE` and the `rate_limit_abuse` alert all judge that address. Not named one, the
//! header changes nothing: 127.0.0.1 is judged and counted, whatever the header says.

use std::collections::BTreeMap;
use std::time::Duration;

use test_support::process::free_port;
use tokio::net::TcpSocket;

use crate::status_api::{Answer, StatusApi};
use crate::support::{
    World, alerts, spawn_logged, stop, unanswered, wait_alert_for_ip, wait_healthy,
    wait_healthy_with, webhook,
};

const XFF: &str = "x-forwarded-for";
/// `HTTP_IP_RATE`: a burst of three, and no new request allowed for twenty minutes, so that
/// no test here can see a refill however slowly it runs.
const IP_RATE: &str = "3/hour";
/// Refusals of one address that raise `rate_limit_abuse` (README, Security: 20 within 5 min).
const ABUSE_THRESHOLD: usize = 20;
/// How long an alert may take to reach the webhook.
const ALERT_PATIENCE: Duration = Duration::from_secs(30);

/// `GET` the status route, for an order no one has seen, with `token` and, unless `None`,
/// `X-Forwarded-For: xff`. Admitted, it is answered 404 `not_found` (the token checked, the
/// order looked up); refused by the guard in front of every route, 403 or 429.
async fn lookup(api: &mut StatusApi, customer: &str, token: &str, xff: Option<&str>) -> Answer {
    let order = sandbox::salesforce::salesforce_id("801", 999);
    let auth = format!("Bearer {token}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("x-customer-number", customer),
    ];
    if let Some(xff) = xff {
        headers.push((XFF, xff));
    }
    api.get(&format!("/v1/orders/{order}/status"), &headers)
        .await
}

/// Asserts `answer` is the status route's own 404: the request got past the allowlist, the
/// per-address rate and the token.
fn assert_admitted(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 404, "{what}: {}", answer.body);
    assert_eq!(answer.body, r#"{"error":"not_found"}"#, "{what}");
}

/// Asserts `answer` is the guard's 403.
fn assert_forbidden(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 403, "{what}: {}", answer.body);
    assert_eq!(answer.body, r#"{"error":"forbidden"}"#, "{what}");
}

/// Asserts `answer` is the per-address 429 with a `Retry-After`.
fn assert_rate_limited(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 429, "{what}: {}", answer.body);
    assert_eq!(answer.body, r#"{"error":"rate_limited"}"#, "{what}");
    let retry: u64 = answer
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .parse()
        .unwrap();
    assert!(retry >= 1, "{what}: Retry-After {retry}");
}

/// The world's environment with `port`, a webhook for alerts and `extra` on top.
async fn env_with(
    world: &World,
    port: u16,
    extra: &[(&str, &str)],
) -> (
    BTreeMap<String, String>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let (hook, bodies) = webhook().await;
    let mut env = world.env(port);
    env.insert("SECURITY_ALERT_WEBHOOK".into(), hook);
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    (env, bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_allowlisted_and_rate_limited() {
    const CLIENT_A: &str = "198.51.100.7";
    const CLIENT_B: &str = "198.51.100.8";
    const OUTSIDER: &str = "203.0.113.9";
    let world = World::start(1, 1).await;
    let customer = world.seeded.events[0].customer_number.clone();
    let port = free_port();
    let (env, bodies) = env_with(
        &world,
        port,
        &[
            ("HTTP_TRUSTED_PROXIES", "127.0.0.1/32"),
            // The proxy itself is not allowed: only the clients it forwards for.
            ("HTTP_ALLOWED_CIDRS", "198.51.100.0/24"),
            ("HTTP_IP_RATE", IP_RATE),
        ],
    )
    .await;
    let token = env["PORTAL_API_TOKEN"].clone();
    let mut child = spawn_logged(&["run"], &env, &world.dir.path().join("run.log"));
    // The proxy's health check, forwarded for an allowed address of its own (one request
    // counted against it, none against the clients below).
    wait_healthy_with(port, &[(XFF, "198.51.100.50")], Duration::from_secs(30)).await;
    let mut api = StatusApi::new(port);

    // The allowlist judges the forwarded client, not the proxy.
    assert_admitted(
        &lookup(&mut api, &customer, &token, Some(CLIENT_A)).await,
        "an allowed client",
    );
    assert_forbidden(
        &lookup(&mut api, &customer, &token, Some(OUTSIDER)).await,
        "a client outside the allowlist",
    );
    // A client that puts an allowed address in front of its own: the proxy appends the real
    // one, the rightmost untrusted hop, and that one is judged.
    assert_forbidden(
        &lookup(
            &mut api,
            &customer,
            &token,
            Some("198.51.100.7, 203.0.113.9"),
        )
        .await,
        "a spoofed chain",
    );
    // The proxy's own request (no header) is the proxy's, and the proxy is not allowed.
    assert_forbidden(
        &lookup(&mut api, &customer, &token, None).await,
        "the proxy itself",
    );
    // A header from a trusted proxy that names no address is refused, not passed through.
    assert_forbidden(
        &lookup(&mut api, &customer, &token, Some("unknown")).await,
        "an unusable header",
    );
    // Whatever a client claimed to the left is ignored, and trusted hops on the right are
    // skipped: both are CLIENT_A's requests (its second and third).
    assert_admitted(
        &lookup(
            &mut api,
            &customer,
            &token,
            Some("203.0.113.9, 198.51.100.7"),
        )
        .await,
        "an outsider's claim left of an allowed client",
    );
    assert_admitted(
        &lookup(&mut api, &customer, &token, Some("198.51.100.7, 127.0.0.1")).await,
        "an allowed client behind two trusted hops",
    );

    // CLIENT_A has spent its burst of three (refusals above were never counted); CLIENT_B,
    // through the same proxy, has not.
    assert_rate_limited(
        &lookup(&mut api, &customer, &token, Some(CLIENT_A)).await,
        "CLIENT_A's fourth request",
    );
    assert_admitted(
        &lookup(&mut api, &customer, &token, Some(CLIENT_B)).await,
        "CLIENT_B after CLIENT_A is limited",
    );

    // Enough refusals make a `rate_limit_abuse` alert, naming the client, not the proxy.
    for i in 1..ABUSE_THRESHOLD {
        assert_rate_limited(
            &lookup(&mut api, &customer, &token, Some(CLIENT_A)).await,
            &format!("CLIENT_A's refusal {}", i + 1),
        );
    }
    let alert = wait_alert_for_ip(&bodies, "rate_limit_abuse", CLIENT_A, ALERT_PATIENCE).await;
    assert_eq!(alert["severity"], "low", "{alert}");
    let about: Vec<serde_json::Value> = alerts(&bodies, "rate_limit_abuse")
        .iter()
        .map(|a| a["details"]["ip"].clone())
        .collect();
    assert_eq!(about, [CLIENT_A], "rate_limit_abuse alerts by address");

    // A peer that is neither allowed nor a trusted proxy is still closed at accept: trusting a
    // proxy did not open the listener to anyone else.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    unanswered(socket.connect(addr).await.unwrap()).await;

    stop(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn from_an_untrusted_peer_x_forwarded_for_is_ignored() {
    let world = World::start(1, 1).await;
    let customer = world.seeded.events[0].customer_number.clone();
    let port = free_port();
    // No HTTP_TRUSTED_PROXIES: no peer is a proxy.
    let (env, bodies) = env_with(
        &world,
        port,
        &[
            ("HTTP_ALLOWED_CIDRS", "127.0.0.0/8"),
            ("HTTP_IP_RATE", IP_RATE),
        ],
    )
    .await;
    let token = env["PORTAL_API_TOKEN"].clone();
    let mut child = spawn_logged(&["run"], &env, &world.dir.path().join("run.log"));
    // One request from 127.0.0.1, the first of its three.
    wait_healthy(port, Duration::from_secs(30)).await;
    let mut api = StatusApi::new(port);

    // An address outside the allowlist in the header: ignored, 127.0.0.1 is judged (the
    // second request of 127.0.0.1).
    assert_admitted(
        &lookup(&mut api, &customer, &token, Some("203.0.113.9")).await,
        "a header naming an address outside the allowlist",
    );
    // A fresh address in the header: still 127.0.0.1's third request ...
    assert_admitted(
        &lookup(&mut api, &customer, &token, Some("198.51.100.7")).await,
        "a header naming another address",
    );
    // ... and from now on every request is refused, whatever address the header names.
    let mut forwarded = vec![None, Some("198.51.100.8".to_owned())];
    forwarded.extend((1..ABUSE_THRESHOLD - 1).map(|i| Some(format!("192.0.2.{i}"))));
    assert_eq!(forwarded.len(), ABUSE_THRESHOLD);
    for xff in &forwarded {
        assert_rate_limited(
            &lookup(&mut api, &customer, &token, xff.as_deref()).await,
            &format!("127.0.0.1 over its rate, forwarded for {xff:?}"),
        );
    }
    // The refusals were 127.0.0.1's, and its alert names it.
    let alert = wait_alert_for_ip(&bodies, "rate_limit_abuse", "127.0.0.1", ALERT_PATIENCE).await;
    assert_eq!(alert["severity"], "low", "{alert}");
    let about: Vec<serde_json::Value> = alerts(&bodies, "rate_limit_abuse")
        .iter()
        .map(|a| a["details"]["ip"].clone())
        .collect();
    assert_eq!(about, ["127.0.0.1"], "rate_limit_abuse alerts by address");

    stop(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_tokens_work_during_a_rotation_and_the_old_one_stops_after_it() {
    const NEW: &str = "portal-token-new-4e7a0c91";
    const OLD: &str = "portal-token-old-b83d25f6";
    const OTHER: &str = "portal-token-other-0d9f3a";
    let world = World::start(1, 1).await;
    let customer = world.seeded.events[0].customer_number.clone();
    let log = world.dir.path().join("run.log");

    // During the rotation: the new token current, the old one previous.
    let port = free_port();
    let mut env = world.env(port);
    env.insert("PORTAL_API_TOKEN".into(), NEW.into());
    env.insert("PORTAL_API_TOKEN_PREVIOUS".into(), OLD.into());
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    let mut api = StatusApi::new(port);
    assert_admitted(
        &lookup(&mut api, &customer, NEW, None).await,
        "the new token",
    );
    assert_admitted(
        &lookup(&mut api, &customer, OLD, None).await,
        "the old token",
    );
    for (token, what) in [
        (OTHER, "a third token"),
        ("portal-token-old-b83d25f", "the old token cut short"),
        (
            "portal-token-new-4e7a0c91portal-token-old-b83d25f6",
            "both at once",
        ),
    ] {
        let answer = lookup(&mut api, &customer, token, None).await;
        assert_eq!(answer.status, 401, "{what}: {}", answer.body);
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{what}");
    }
    stop(&mut child).await;

    // After it: PORTAL_API_TOKEN_PREVIOUS unset, the old token is refused.
    let port = free_port();
    let mut env = world.env(port);
    env.insert("PORTAL_API_TOKEN".into(), NEW.into());
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    let mut api = StatusApi::new(port);
    assert_admitted(
        &lookup(&mut api, &customer, NEW, None).await,
        "the new token after the rotation",
    );
    for (token, what) in [
        (OLD, "the old token after the rotation"),
        (OTHER, "a third token"),
    ] {
        let answer = lookup(&mut api, &customer, token, None).await;
        assert_eq!(answer.status, 401, "{what}: {}", answer.body);
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{what}");
    }
    stop(&mut child).await;
}
