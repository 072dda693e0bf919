//! The routes of the status API and the guards in front of them.
//!
//! Every request first passes the IP allowlist (403 otherwise, on every path). The status route
//! then checks, in this order: the bearer token (401), the `X-Customer-Number` header (400),
//! the customer's rate (429 with `Retry-After`), the shape of the order id (404, no store
//! lookup; a 15-character id is looked up by its 18-character form) and finally the store (404 unless the order exists *and* is the customer's, 200
//! with the status otherwise). Refusals carry a small JSON body `{"error": "<code>"}` and
//! nothing a caller sent.

use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use security::{IpAllowlist, Subject};
use subtle::ConstantTimeEq;

use crate::StatusApiState;
use crate::status::{OrderStatusBody, canonical_order_id, is_customer_number};

/// The order status route.
pub const STATUS_ROUTE: &str = "/v1/orders/{orderId}/status";
/// Liveness.
pub const HEALTHZ_ROUTE: &str = "/healthz";
/// Readiness.
pub const READYZ_ROUTE: &str = "/readyz";
/// Prometheus text.
pub const METRICS_ROUTE: &str = "/metrics";

/// The header naming the customer a status lookup is made for.
pub const CUSTOMER_NUMBER_HEADER: HeaderName = HeaderName::from_static("x-customer-number");

/// The `Content-Type` of `/metrics`: Prometheus text exposition format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The router: the five routes behind the allowlist, with request metrics around everything.
///
/// Serve it with [`crate::serve`] (or with `into_make_service_with_connect_info::<SocketAddr>()`
/// yourself): the allowlist needs the peer address, and a request that arrives without one is
/// refused with 403.
pub fn router(state: StatusApiState) -> Router {
    Router::new()
        .route(STATUS_ROUTE, get(order_status))
        .route(crate::ORDERS_ROUTE, post(place_order))
        .route(HEALTHZ_ROUTE, get(healthz))
        .route(READYZ_ROUTE, get(readyz))
        .route(METRICS_ROUTE, get(metrics_text))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            allowlist_guard,
        ))
        .layer(middleware::from_fn(crate::metrics::observe))
        .with_state(state)
}

/// What a trusted proxy's `X-Forwarded-For` says about the client.
#[derive(Debug, PartialEq, Eq)]
enum Forwarded {
    /// No header: the proxy itself is the client (a health check).
    Absent,
    /// The rightmost address that is not a trusted proxy (or the leftmost, when all are).
    Client(IpAddr),
    /// An entry that is not an IP address.
    Malformed,
}

/// The client a chain of `X-Forwarded-For` headers names, read from the right: every hop a
/// trusted proxy appended is skipped, and the first address that is not a trusted proxy is
/// the client (whatever is left of it was written by the client and proves nothing).
fn forwarded_client(headers: &HeaderMap, trusted: &IpAllowlist) -> Forwarded {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return Forwarded::Malformed;
        };
        for hop in text.split(',') {
            let hop = hop.trim();
            // `1.2.3.4:5678` and `[::1]:5678` forms carry a port.
            let parsed = hop
                .parse::<IpAddr>()
                .ok()
                .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()));
            match parsed {
                Some(ip) => hops.push(ip.to_canonical()),
                None => return Forwarded::Malformed,
            }
        }
    }
    let Some(&leftmost) = hops.first() else {
        return Forwarded::Absent;
    };
    Forwarded::Client(
        hops.iter()
            .rev()
            .copied()
            .find(|ip| !trusted.allows(*ip))
            .unwrap_or(leftmost),
    )
}

/// The peer address, put into the request by [`allowlist_guard`] once it is allowed.
#[derive(Clone, Copy, Debug)]
struct Peer(IpAddr);

async fn allowlist_guard(
    State(state): State<StatusApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_canonical());
    // Behind a trusted reverse proxy the client is the one it names; a header from anyone
    // else is ignored. A trusted proxy's header that names no usable address is refused.
    let peer = match peer {
        Some(ip) if state.trusted_proxies().allows(ip) => {
            match forwarded_client(request.headers(), state.trusted_proxies()) {
                Forwarded::Client(client) => Some(client),
                Forwarded::Absent => Some(ip),
                Forwarded::Malformed => {
                    tracing::debug!("status api: unusable X-Forwarded-For from a trusted proxy");
                    return refusal(StatusCode::FORBIDDEN, "forbidden");
                }
            }
        }
        other => other,
    };
    match peer {
        Some(ip) if state.allowlist().allows(ip) => {
            // Too many requests from one address, whatever they ask for (a scan, a loop).
            if let Err(retry) = state.ip_limiter().check(&ip) {
                state.monitor().rate_limited(Subject::ip(ip)).await;
                let mut response = refusal(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry.header_secs()));
                return response;
            }
            request.extensions_mut().insert(Peer(ip));
            next.run(request).await
        }
        Some(ip) => {
            tracing::debug!(peer = %ip, "status api: address not allowed");
            refusal(StatusCode::FORBIDDEN, "forbidden")
        }
        None => {
            tracing::warn!(
                "status api: request without a peer address refused; serve with connect info"
            );
            refusal(StatusCode::FORBIDDEN, "forbidden")
        }
    }
}

/// The guards of the portal's routes after the allowlist: the bearer token (401, and an
/// auth failure for the detectors), exactly one well-formed `X-Customer-Number` (400), and
/// the customer's rate on `limiter`, if any (429 with `Retry-After`). The customer, or the
/// refusal.
async fn portal_caller(
    state: &StatusApiState,
    headers: &HeaderMap,
    ip: IpAddr,
    limiter: Option<&security::KeyedRateLimiter<String>>,
) -> Result<String, Response> {
    let current = bearer_matches(headers, state.token());
    let previous = state
        .previous_token()
        .is_some_and(|previous| bearer_matches(headers, previous));
    if !(current | previous) {
        state.monitor().auth_failed(ip).await;
        let mut response = refusal(StatusCode::UNAUTHORIZED, "unauthorized");
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(response);
    }

    let Some(customer) = customer_number(headers) else {
        return Err(refusal(StatusCode::BAD_REQUEST, "invalid_customer_number"));
    };

    if let Some(Err(retry)) = limiter.map(|l| l.check(&customer)) {
        state
            .monitor()
            .rate_limited(Subject::customer(&customer))
            .await;
        let mut response = refusal(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry.header_secs()));
        return Err(response);
    }
    Ok(customer)
}

/// `POST /v1/orders`: the guards, then the body (at most [`crate::MAX_ORDER_BODY_BYTES`]) to
/// the order desk, which also keeps the customer's order rate (only a request that would
/// create an Order counts; a repeat of an answered one does not). A 429 of the desk counts
/// toward the customer's `rate_limit_abuse` detector, like the status route's.
async fn place_order(State(state): State<StatusApiState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(&Peer(ip)) = parts.extensions.get::<Peer>() else {
        return refusal(StatusCode::FORBIDDEN, "forbidden");
    };
    let Some(desk) = state.order_desk().cloned() else {
        return refusal(StatusCode::NOT_FOUND, "not_found");
    };
    let customer = match portal_caller(&state, &parts.headers, ip, None).await {
        Ok(customer) => customer,
        Err(refused) => return refused,
    };
    let mut keys = parts.headers.get_all(crate::IDEMPOTENCY_KEY_HEADER).iter();
    let key = match (keys.next().map(HeaderValue::to_str), keys.next()) {
        (Some(Ok(key)), None) => key.to_owned(),
        _ => {
            return json_response(
                StatusCode::BAD_REQUEST,
                br#"{"error":"invalid_request","reason":"exactly one Idempotency-Key header (8 to 128 of A-Z a-z 0-9 - _)"}"#.to_vec(),
            );
        }
    };
    let Ok(bytes) = axum::body::to_bytes(body, crate::MAX_ORDER_BODY_BYTES).await else {
        return json_response(
            StatusCode::BAD_REQUEST,
            format!(
                r#"{{"error":"invalid_request","reason":"body over {} bytes"}}"#,
                crate::MAX_ORDER_BODY_BYTES
            )
            .into_bytes(),
        );
    };
    let answer = desk.place(&customer, &key, &bytes).await;
    // The desk keeps the customer's order rate; its refusals feed the same detector as the
    // status route's.
    if answer.status == StatusCode::TOO_MANY_REQUESTS.as_u16() {
        state
            .monitor()
            .rate_limited(Subject::customer(&customer))
            .await;
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, answer.body.into_bytes());
    if let Some(secs) = answer.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

async fn order_status(State(state): State<StatusApiState>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let Some(&Peer(ip)) = parts.extensions.get::<Peer>() else {
        return refusal(StatusCode::FORBIDDEN, "forbidden");
    };
    let customer = match portal_caller(&state, &parts.headers, ip, Some(state.limiter())).await {
        Ok(customer) => customer,
        Err(refused) => return refused,
    };

    let path: Result<Path<String>, PathRejection> =
        <Path<String> as FromRequestParts<()>>::from_request_parts(&mut parts, &()).await;
    let Some(order_id) = path.ok().and_then(|Path(id)| canonical_order_id(&id)) else {
        return not_found(&state, &customer, ip).await;
    };

    let found = match state.store().job(&order_id).await {
        Ok(Some(job)) if job.customer_number == customer => {
            Ok(Some(OrderStatusBody::from_job(&job)))
        }
        // No job (yet): an Order the portal placed here that waits for its approval.
        Ok(None) => match state.store().order_request_customer(&order_id).await {
            Ok(Some((owner, at))) if owner == customer => {
                Ok(Some(OrderStatusBody::pending_review(&order_id, at)))
            }
            Ok(_) => Ok(None),
            Err(error) => Err(error),
        },
        Ok(Some(_)) => Ok(None),
        Err(error) => Err(error),
    };
    match found {
        Ok(Some(body)) => {
            crate::metrics::lookup("found");
            match serde_json::to_vec(&body) {
                Ok(json) => json_response(StatusCode::OK, json),
                Err(error) => {
                    tracing::error!(%error, "status api: could not encode a status");
                    refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            }
        }
        Ok(_) => {
            crate::metrics::lookup("not_found");
            not_found(&state, &customer, ip).await
        }
        Err(error) => {
            crate::metrics::lookup("error");
            tracing::warn!(%error, retryable = error.is_retryable(), "status api: store lookup failed");
            refusal(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}

/// The one 404 of the status route: never seen, someone else's, or not an order id at all
/// look exactly alike.
async fn not_found(state: &StatusApiState, customer: &str, ip: IpAddr) -> Response {
    state.monitor().status_not_found(customer, ip).await;
    refusal(StatusCode::NOT_FOUND, "not_found")
}

/// `Authorization: Bearer <token>`, exactly one such header, compared in constant time.
fn bearer_matches(headers: &HeaderMap, expected: &[u8]) -> bool {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some((scheme, token)) = value.as_bytes().split_first_chunk::<7>() else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    token_matches(expected, token.trim_ascii())
}

/// Constant-time comparison: the work depends on the length of the expected token only, and
/// no byte of either side decides an early exit.
fn token_matches(expected: &[u8], given: &[u8]) -> bool {
    let mut equal = (expected.len() as u64).ct_eq(&(given.len() as u64));
    for (i, byte) in expected.iter().enumerate() {
        equal &= byte.ct_eq(given.get(i).unwrap_or(&0));
    }
    equal.into()
}

/// Exactly one well-formed `X-Customer-Number`.
fn customer_number(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(CUSTOMER_NUMBER_HEADER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let number = value.to_str().ok()?;
    is_customer_number(number).then(|| number.to_owned())
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

async fn readyz(State(state): State<StatusApiState>) -> Response {
    let store_ok = match tokio::time::timeout(state.readiness_timeout(), state.store().ping()).await
    {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: store ping failed");
            false
        }
        Err(_) => {
            tracing::warn!(timeout = ?state.readiness_timeout(), "readiness: store ping timed out");
            false
        }
    };
    let subscriber_ok = state.subscriber_ready();
    let body = serde_json::json!({
        "status": if store_ok && subscriber_ok { "ready" } else { "not_ready" },
        "store": if store_ok { "ok" } else { "unreachable" },
        "subscriber": if subscriber_ok { "ok" } else { "disconnected" },
    });
    let code = if store_ok && subscriber_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(code, body.to_string().into_bytes())
}

async fn metrics_text(State(state): State<StatusApiState>) -> Response {
    match state.metrics() {
        Some(handle) => (
            [(
                CONTENT_TYPE,
                HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
            )],
            handle.render(),
        )
            .into_response(),
        None => refusal(StatusCode::NOT_FOUND, "not_found"),
    }
}

async fn fallback() -> Response {
    refusal(StatusCode::NOT_FOUND, "not_found")
}

/// `{"error":"<code>"}` with `status`; `code` is one of a fixed set of snake_case words.
fn refusal(status: StatusCode, code: &'static str) -> Response {
    json_response(status, format!(r#"{{"error":"{code}"}}"#).into_bytes())
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let trusted = IpAllowlist::parse("10.0.0.0/8").unwrap();
        let ip = |s: &str| Forwarded::Client(s.parse().unwrap());
        // The client's own claim (left) proves nothing; the proxies' hops are skipped.
        assert_eq!(
            forwarded_client(&forwarded(&["1.1.1.1, 203.0.113.7, 10.0.0.2"]), &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_client(&forwarded(&["1.1.1.1", "203.0.113.7:4711"]), &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_client(&forwarded(&["[2001:db8::1]:443"]), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            forwarded_client(&forwarded(&["::ffff:203.0.113.7"]), &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_client(&forwarded(&["10.0.0.9, 10.0.0.2"]), &trusted),
            ip("10.0.0.9")
        );
        assert_eq!(
            forwarded_client(&forwarded(&[]), &trusted),
            Forwarded::Absent
        );
        assert_eq!(
            forwarded_client(&forwarded(&["unknown, 10.0.0.2"]), &trusted),
            Forwarded::Malformed
        );
    }

    fn auth(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn token_compare() {
        assert!(token_matches(b"s3cret-token", b"s3cret-token"));
        assert!(!token_matches(b"s3cret-token", b"s3cret-tokeN"));
        assert!(!token_matches(b"s3cret-token", b"s3cret-token-and-more"));
        assert!(!token_matches(b"s3cret-token", b"s3cret"));
        assert!(!token_matches(b"s3cret-token", b""));
    }

    #[test]
    fn bearer_header_parsing() {
        let token = b"s3cret-token";
        assert!(bearer_matches(&auth(&[b"Bearer s3cret-token"]), token));
        assert!(bearer_matches(&auth(&[b"bearer s3cret-token"]), token));
        assert!(bearer_matches(&auth(&[b"BEARER  s3cret-token "]), token));
        assert!(!bearer_matches(&auth(&[]), token));
        assert!(!bearer_matches(&auth(&[b"Basic s3cret-token"]), token));
        assert!(!bearer_matches(&auth(&[b"Bearers3cret-token"]), token));
        assert!(!bearer_matches(&auth(&[b"s3cret-token"]), token));
        assert!(!bearer_matches(&auth(&[b"Bearer wrong"]), token));
        assert!(!bearer_matches(
            &auth(&[b"Bearer s3cret-token", b"Bearer s3cret-token"]),
            token
        ));
    }

    #[test]
    fn customer_header_parsing() {
        let mut headers = HeaderMap::new();
        assert_eq!(customer_number(&headers), None);
        headers.insert(CUSTOMER_NUMBER_HEADER, HeaderValue::from_static("C-000123"));
        assert_eq!(customer_number(&headers).as_deref(), Some("C-000123"));
        headers.append(CUSTOMER_NUMBER_HEADER, HeaderValue::from_static("C-000124"));
        assert_eq!(customer_number(&headers), None);
        headers.insert(
            CUSTOMER_NUMBER_HEADER,
            HeaderValue::from_static("j@example.com"),
        );
        assert_eq!(customer_number(&headers), None);
    }
}
