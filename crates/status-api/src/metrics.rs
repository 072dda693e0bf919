//! What the status API itself records with the `metrics` macros, and the names it uses.
//!
//! The binary installs the Prometheus recorder and hands its handle to
//! [`crate::StatusApiBuilder::metrics`]; `/metrics` then renders everything the process
//! recorded, these series included. Labels come from fixed sets, so cardinality stays bounded
//! whatever clients send.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Counter: requests answered, labelled `route` (see [`ROUTE_LABELS`]) and `code` (the HTTP
/// status, such as `200` or `429`).
pub const REQUESTS_TOTAL: &str = "status_api_requests_total";

/// Histogram: seconds from receiving a request to having its response, labelled `route`.
pub const REQUEST_DURATION_SECONDS: &str = "status_api_request_duration_seconds";

/// Counter: status lookups that reached the store, labelled `result`: `found` (answered 200),
/// `not_found` (never seen, or another customer's order) or `error` (the store failed).
pub const LOOKUPS_TOTAL: &str = "status_api_lookups_total";

/// The values of the `route` label: the four routes, and `unmatched` for every other path.
pub const ROUTE_LABELS: [&str; 5] = [
    crate::routes::STATUS_ROUTE,
    crate::routes::HEALTHZ_ROUTE,
    crate::routes::READYZ_ROUTE,
    crate::routes::METRICS_ROUTE,
    "unmatched",
];

/// Registers descriptions for the series above with the installed recorder, so `/metrics`
/// carries `# HELP` lines for them. Call once after installing the recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Status API requests answered, by route and HTTP status code"
    );
    metrics::describe_histogram!(
        REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Status API request handling time, by route"
    );
    metrics::describe_counter!(
        LOOKUPS_TOTAL,
        "Order status lookups that reached the store, by result"
    );
}

/// The `route` label of a request: its route template, never the concrete path.
fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    let path = matched.map(MatchedPath::as_str);
    ROUTE_LABELS[..4]
        .iter()
        .copied()
        .find(|route| Some(*route) == path)
        .unwrap_or("unmatched")
}

/// Middleware: counts every answered request and times it (refusals by the allowlist too).
pub(crate) async fn observe(request: Request, next: Next) -> Response {
    let route = route_label(request.extensions().get::<MatchedPath>());
    let started = Instant::now();
    let response = next.run(request).await;
    let code = response.status().as_u16().to_string();
    metrics::counter!(REQUESTS_TOTAL, "route" => route, "code" => code).increment(1);
    metrics::histogram!(REQUEST_DURATION_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
    tracing::debug!(
        route,
        status = response.status().as_u16(),
        "status api request"
    );
    response
}

/// Counts one store lookup.
pub(crate) fn lookup(result: &'static str) {
    metrics::counter!(LOOKUPS_TOTAL, "result" => result).increment(1);
}
