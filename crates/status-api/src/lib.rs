#![doc = include_str!("../README.md")]

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
