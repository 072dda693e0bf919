//! The provisioner's HTTP face (the contract is the README's Status API section): order status
//! for the portal, health, readiness and Prometheus metrics for operators.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use secrecy::SecretString;
//! use security::{IpAllowlist, Rate};
//! use status_api::StatusApiState;
//!
//! # async fn demo(store: Arc<dyn provisioner_store::Store>) -> Result<(), Box<dyn std::error::Error>> {
//! let state = StatusApiState::builder(store, SecretString::from("a-long-random-portal-token"))
//!     .allowlist(IpAllowlist::parse("127.0.0.0/8,::1/128")?) // HTTP_ALLOWED_CIDRS
//!     .status_rate(Rate::parse("60/minute")?) // CUSTOMER_STATUS_RATE
//!     .subscriber_ready(|| true) // e.g. "connected, or another instance holds the subscriber"
//!     .build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?; // PROVISIONER_HTTP_ADDR
//! let shutdown = async {
//!     let _ = tokio::signal::ctrl_c().await;
//! };
//! status_api::serve(listener, status_api::router(state), shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! Routes:
//! - `GET /v1/orders/{orderId}/status` with `Authorization: Bearer <PORTAL_API_TOKEN>` and
//!   `X-Customer-Number`: 200 with [`OrderStatusBody`]; 404 `{"error":"not_found"}` alike for
//!   ids never seen, ids of another customer's order and strings that are not order ids; 401
//!   for a missing or wrong token (constant-time compare); 400 for a missing or malformed
//!   customer number; 429 with `Retry-After` over the customer's rate.
//! - `GET /healthz`: 200 while the process serves. `GET /readyz`: 200 when the store answers
//!   its ping and the subscriber probe says ready (the provisioner's probe: this instance's
//!   subscriber is connected, disabled, or held by another instance), else 503.
//! - `GET /metrics`: the Prometheus text of the process's recorder (404 without one).
//!
//! Every route, unknown paths included, sits behind the IP allowlist (403). Auth failures, 404s
//! and rate-limit refusals feed the [`security::SecurityMonitor`]. Responses carry ids, states
//! and sanitised errors only: no customer data, nothing echoed from the request.
//!
//! HTTPS is optional: [`ServeOptions::tls`] with a [`TlsConfig`] made from a PEM certificate
//! chain and key (rustls with the `ring` provider).
//!
//! This crate reads no environment variables: the binary passes the configured values in.

mod error;
mod listener;
mod metrics;
mod orders;
mod routes;
mod state;
mod status;
mod tls;

use std::future::Future;

pub use crate::error::{Error, Result};
pub use crate::metrics::{
    LOOKUPS_TOTAL, REQUEST_DURATION_SECONDS, REQUESTS_TOTAL, ROUTE_LABELS, describe_metrics,
};
pub use crate::orders::{
    DeskAnswer, IDEMPOTENCY_KEY_HEADER, MAX_ORDER_BODY_BYTES, ORDERS_ROUTE, OrderDesk,
};
pub use crate::routes::{
    CUSTOMER_NUMBER_HEADER, HEALTHZ_ROUTE, METRICS_ROUTE, PROMETHEUS_CONTENT_TYPE, READYZ_ROUTE,
    STATUS_ROUTE, router,
};
pub use crate::state::{
    DEFAULT_IP_RATE, DEFAULT_READINESS_TIMEOUT, DEFAULT_STATUS_RATE, StatusApiBuilder,
    StatusApiState, SubscriberProbe,
};
pub use crate::status::{
    MAX_CUSTOMER_NUMBER_LEN, MAX_ERROR_CHARS, OrderStatus, OrderStatusBody, canonical_order_id,
    is_customer_number, is_order_id,
};

pub use crate::tls::TlsConfig;

pub use crate::listener::{
    CONNECTIONS_REFUSED_TOTAL, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, ServeOptions,
    serve_with,
};

/// The default of `PROVISIONER_HTTP_ADDR`.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

/// Serves `router` on `listener` with [`ServeOptions::default`] until `shutdown` completes,
/// then lets in-flight requests finish.
///
/// Connections carry their peer address (`ConnectInfo<SocketAddr>`), which the allowlist needs.
///
/// # Errors
/// [`Error::Serve`] when the server stops with an I/O error.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with(listener, router, ServeOptions::default(), shutdown).await
}
