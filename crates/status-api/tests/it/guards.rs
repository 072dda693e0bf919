//! The guards in front of the routes: allowlist (403), bearer token (401), rate limit (429).

use security::{AlertKind, IpAllowlist, Rate};

use crate::support::{OTHER, OWNER, Server, TOKEN, TestStore, builder, eager_monitor, parts};

const ORDER: &str = "801000000000001AAA";

#[tokio::test]
async fn a_missing_or_wrong_token_is_unauthorized_and_reported() {
    let db = TestStore::open().await;
    db.provisioned(ORDER, OWNER).await;
    let (monitor, alerts) = eager_monitor();
    let server = Server::start(builder(db.dyn_store()).monitor(monitor).build().unwrap()).await;

    let wrong = format!("{TOKEN}x");
    let short = &TOKEN[..TOKEN.len() - 1];
    for token in [
        None,
        Some(""),
        Some("nope"),
        Some(wrong.as_str()),
        Some(short),
    ] {
        let response = server.status(ORDER, Some(OWNER), token).await;
        assert_eq!(
            response.headers()["www-authenticate"].to_str().unwrap(),
            "Bearer"
        );
        let (status, body) = parts(response).await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(body, r#"{"error":"unauthorized"}"#);
    }
    // Another scheme carrying the right token is still refused.
    let basic = server
        .client
        .get(server.url(&format!("/v1/orders/{ORDER}/status")))
        .header("X-Customer-Number", OWNER)
        .header("Authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);

    assert_eq!(alerts.kinds().first(), Some(&AlertKind::AuthFailureBurst));
    assert!(alerts.alerts()[0].to_json().contains("127.0.0.1"));
    assert!(
        alerts
            .kinds()
            .iter()
            .all(|k| *k == AlertKind::AuthFailureBurst)
    );
    // The right token works, and no failed attempt consumed the customer's rate.
    assert_eq!(server.lookup(ORDER, OWNER).await.status(), 200);
}

#[tokio::test]
async fn a_disallowed_address_is_forbidden_on_every_route() {
    let db = TestStore::open().await;
    db.provisioned(ORDER, OWNER).await;
    let (monitor, alerts) = eager_monitor();
    let state = builder(db.dyn_store())
        .allowlist(IpAllowlist::parse("10.0.0.0/8").unwrap())
        .monitor(monitor)
        .build()
        .unwrap();
    let server = Server::start(state).await;

    // Even a fully valid request: the allowlist comes before everything else.
    let (status, body) = parts(server.lookup(ORDER, OWNER).await).await;
    assert_eq!((status, body.as_str()), (403, r#"{"error":"forbidden"}"#));
    // A bad token from a disallowed address is not even an auth failure.
    assert_eq!(
        server
            .status(ORDER, Some(OWNER), Some("bad"))
            .await
            .status(),
        403
    );
    for path in ["/healthz", "/readyz", "/metrics", "/no/such/route"] {
        let (status, body) = parts(server.get(path).await).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(body, r#"{"error":"forbidden"}"#, "{path}");
    }
    assert_eq!(alerts.kinds(), []);
}

#[tokio::test]
async fn the_default_allowlist_admits_loopback() {
    let db = TestStore::open().await;
    let server = Server::start(builder(db.dyn_store()).build().unwrap()).await;
    assert_eq!(server.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn over_the_rate_a_customer_gets_429_with_retry_after() {
    let db = TestStore::open().await;
    db.provisioned(ORDER, OWNER).await;
    let (monitor, alerts) = eager_monitor();
    let state = builder(db.dyn_store())
        .status_rate(Rate::parse("3/minute").unwrap())
        .monitor(monitor)
        .build()
        .unwrap();
    let server = Server::start(state).await;

    for _ in 0..3 {
        assert_eq!(server.lookup(ORDER, OWNER).await.status(), 200);
    }
    let limited = server.lookup(ORDER, OWNER).await;
    // One lookup comes back every 20 s at 3/minute.
    let retry = retry_after(&limited);
    assert!((1..=20).contains(&retry), "Retry-After: {retry}");
    assert_eq!(limited.text().await.unwrap(), r#"{"error":"rate_limited"}"#);
    assert_eq!(alerts.kinds(), [AlertKind::RateLimitAbuse]);
    assert!(alerts.alerts()[0].to_json().contains(OWNER));

    // Another customer has a budget of its own (and gets its 404).
    assert_eq!(server.lookup(ORDER, OTHER).await.status(), 404);
}

/// Token rotation without downtime: during the switch both the new token and the previous one
/// work; anything else is still refused.
#[tokio::test]
async fn the_previous_token_works_beside_the_new_one_during_a_rotation() {
    let db = TestStore::open().await;
    db.provisioned(ORDER, OWNER).await;
    let previous = "the-old-portal-token-7c2e";
    let state = builder(db.dyn_store())
        .previous_token(secrecy::SecretString::from(previous.to_owned()))
        .build()
        .unwrap();
    let server = Server::start(state).await;
    for token in [TOKEN, previous] {
        let (status, _) = parts(server.status(ORDER, Some(OWNER), Some(token)).await).await;
        assert_eq!(status, 200, "{token}");
    }
    for token in ["the-old-portal-token-7c2", "nope", ""] {
        let (status, _) = parts(server.status(ORDER, Some(OWNER), Some(token)).await).await;
        assert_eq!(status, 401, "{token}");
    }
    // Without a previous token configured, the old one is refused.
    let server = Server::start(builder(db.dyn_store()).build().unwrap()).await;
    let (status, _) = parts(server.status(ORDER, Some(OWNER), Some(previous)).await).await;
    assert_eq!(status, 401);
}

/// Too many requests from one address (`HTTP_IP_RATE`), on any route: 429 with `Retry-After`
/// and a `rate_limit_abuse` alert naming the address.
#[tokio::test]
async fn too_many_requests_from_one_address_are_limited_and_reported() {
    let db = TestStore::open().await;
    let (monitor, alerts) = eager_monitor();
    let state = builder(db.dyn_store())
        .monitor(monitor)
        .ip_rate(Rate::parse("5/minute").unwrap())
        .build()
        .unwrap();
    let server = Server::start(state).await;
    for path in ["/healthz", "/readyz", "/metrics", "/nowhere", "/healthz"] {
        assert_ne!(server.get(path).await.status(), 429, "{path}");
    }
    let limited = server.get("/healthz").await;
    let retry = retry_after(&limited);
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(parts(limited).await.1, r#"{"error":"rate_limited"}"#);
    assert_eq!(alerts.kinds(), [AlertKind::RateLimitAbuse]);
    assert!(alerts.alerts()[0].to_json().contains("127.0.0.1"));
}

/// A 429 answer's `Retry-After` seconds.
fn retry_after(limited: &reqwest::Response) -> u64 {
    assert_eq!(limited.status(), 429);
    limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Behind a trusted reverse proxy the allowlist and the per-address rate use the address
/// `X-Forwarded-For` names; from a peer that is not a trusted proxy the header is ignored.
#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_client() {
    let db = TestStore::open().await;
    let (monitor, alerts) = eager_monitor();
    let state = builder(db.dyn_store())
        .monitor(monitor)
        .allowlist(IpAllowlist::parse("203.0.113.7/32,203.0.113.8/32").unwrap())
        .trusted_proxies(IpAllowlist::parse("127.0.0.1/32").unwrap())
        .ip_rate(Rate::parse("3/minute").unwrap())
        .build()
        .unwrap();
    let server = Server::start(state).await;
    let via_proxy = |client: &str| {
        server
            .client
            .get(server.url("/healthz"))
            .header("X-Forwarded-For", format!("198.51.100.1, {client}"))
            .send()
    };
    // The proxy itself (no header) and a forwarded client outside the allowlist: forbidden.
    assert_eq!(server.get("/healthz").await.status(), 403);
    assert_eq!(via_proxy("198.51.100.9").await.unwrap().status(), 403);
    // An allowed client, up to its own rate; another allowed client is not limited by it.
    for _ in 0..3 {
        assert_eq!(via_proxy("203.0.113.7").await.unwrap().status(), 200);
    }
    let limited = via_proxy("203.0.113.7").await.unwrap();
    retry_after(&limited);
    assert_eq!(via_proxy("203.0.113.8").await.unwrap().status(), 200);
    assert!(alerts.alerts()[0].to_json().contains("203.0.113.7"));

    // From 127.0.0.2, not a trusted proxy, the header is ignored: the spoofed allowed address
    // does not help.
    let untrusted = reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let spoofed = untrusted
        .get(server.url("/healthz"))
        .header("X-Forwarded-For", "203.0.113.8")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 403);
}

/// A desk that answers every request with `status` (and a `Retry-After` of 30 s on 429),
/// counting the requests it saw.
struct FixedDesk {
    status: u16,
    seen: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl status_api::OrderDesk for FixedDesk {
    async fn place(&self, _customer: &str, _key: &str, _body: &[u8]) -> status_api::DeskAnswer {
        self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        status_api::DeskAnswer {
            status: self.status,
            body: if self.status == 429 {
                r#"{"error":"rate_limited"}"#.to_owned()
            } else {
                r#"{"orderId":"801000000000001AAA"}"#.to_owned()
            },
            retry_after: (self.status == 429).then_some(30),
        }
    }
}

async fn post_order(server: &Server, customer: &str) -> reqwest::Response {
    server
        .client
        .post(server.url(status_api::ORDERS_ROUTE))
        .bearer_auth(TOKEN)
        .header("X-Customer-Number", customer)
        .header(status_api::IDEMPOTENCY_KEY_HEADER, "key-00000001")
        .body("{}")
        .send()
        .await
        .unwrap()
}

/// The order desk's own rate refusals (`CUSTOMER_ORDER_RATE`) reach the customer as 429 with
/// `Retry-After` and count toward `rate_limit_abuse` for that customer, as the status route's
/// do; its other answers do not.
#[tokio::test]
async fn an_order_desk_429_counts_toward_rate_limit_abuse() {
    for (status, alerted) in [(429, true), (201, false)] {
        let db = TestStore::open().await;
        let (monitor, alerts) = eager_monitor();
        let desk = std::sync::Arc::new(FixedDesk {
            status,
            seen: std::sync::atomic::AtomicUsize::new(0),
        });
        let state = builder(db.dyn_store())
            .order_desk(desk.clone())
            .monitor(monitor)
            .build()
            .unwrap();
        let server = Server::start(state).await;

        let answer = post_order(&server, OWNER).await;
        assert_eq!(answer.status(), status);
        assert_eq!(desk.seen.load(std::sync::atomic::Ordering::SeqCst), 1);
        if alerted {
            assert_eq!(retry_after(&answer), 30);
            assert_eq!(alerts.kinds(), [AlertKind::RateLimitAbuse]);
            assert!(alerts.alerts()[0].to_json().contains(OWNER));
        } else {
            assert_eq!(alerts.kinds(), []);
        }
    }
}
