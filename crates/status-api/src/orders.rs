//! `POST /v1/orders`: the portal's order intake. The route checks what every route checks
//! (address, token, customer number, the customer's order rate) and hands the body to an
//! [`OrderDesk`], which decides the answer (the provisioner's is `provisioner-core`'s order
//! intake).

use async_trait::async_trait;

/// The order intake route.
pub const ORDERS_ROUTE: &str = "/v1/orders";

/// The header carrying the request's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Largest body read; a longer one is answered 400 without being read further.
pub const MAX_ORDER_BODY_BYTES: usize = 64 * 1024;

/// One answer of an [`OrderDesk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeskAnswer {
    /// HTTP status.
    pub status: u16,
    /// JSON body (ids and codes only, never a submitted value).
    pub body: String,
    /// `Retry-After` in seconds, when the caller should try again later.
    pub retry_after: Option<u64>,
}

/// What places an order for a customer whose request passed the route's guards.
#[async_trait]
pub trait OrderDesk: Send + Sync {
    /// Answers the request of `customer` with `idempotency_key` (as sent; the desk validates
    /// it) and `body` (at most [`MAX_ORDER_BODY_BYTES`]).
    async fn place(&self, customer: &str, idempotency_key: &str, body: &[u8]) -> DeskAnswer;
}
