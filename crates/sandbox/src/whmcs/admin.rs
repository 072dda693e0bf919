//! The sandbox's own admin routes beside the API (not WHMCS's; no credentials, loopback only),
//! so that a test can arm faults in a sandbox running in another process and read what
//! happened:
//!
//! - `POST /sandbox/faults` with `{"action": "AddOrder", "fault": "hold", "ms": 8000,
//!   "times": 1}` arms a fault like [`WhmcsSandbox::inject_fault`]: `fault` is `hold`
//!   ([`Fault::HoldThenCommit`], needs `ms`), `latency` ([`Fault::Latency`], needs `ms`),
//!   `html500` or `commit_then_drop`; without `times` it hits every call. Answers 200
//!   `{"armed": <the body>}`, or 400 `{"error": "invalid_fault", "message": ..}`.
//!   `DELETE /sandbox/faults` removes every fault (200 `{"cleared": true}`).
//! - `GET /sandbox/requests`: the recorded requests, oldest first, without their secrets:
//!   `{"requests": [{"action", "identifier", "clientid", "orderid", "fault", "receivedAtMs"}]}`
//!   (`clientid`/`orderid` as sent, or null; `fault` as named above, or null).
//! - `GET /sandbox/orders`: `{"orders": [{"id", "clientId", "status", "accepts",
//!   "services": [{"id", "productId", "status", "moduleCreates", "customFields":
//!   {"<field id>": value}}]}], "holding": n}`, by id (`accepts`: AcceptOrder calls that
//!   committed; `holding`: calls a hold has not committed or refused yet).
//! - `GET /sandbox/stats`: counts cheap enough to poll, for a benchmark watching from outside:
//!   `{"orders": n, "refs": d, "duplicates": k, "withoutRef": m, "accepted": a}`. An order's
//!   refs are the custom field values of its services (the provisioner writes the Salesforce
//!   Order Id there); `refs` counts distinct values, `duplicates` the orders beyond the first
//!   carrying each value (0 when every Salesforce Order has one WHMCS order), `withoutRef` the
//!   orders with no custom field value, `accepted` the orders with at least one committed
//!   AcceptOrder.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value as Json, json};

use super::faults::Fault;
use super::server::{RecordedRequest, Shared, WhmcsSandbox};

/// The admin routes, to be merged beside the API route.
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/sandbox/faults", axum::routing::post(arm).delete(clear))
        .route("/sandbox/requests", get(requests))
        .route("/sandbox/orders", get(orders))
        .route("/sandbox/stats", get(stats))
}

/// The body of `POST /sandbox/faults`.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ArmFault {
    action: String,
    fault: String,
    ms: Option<u64>,
    times: Option<u32>,
}

impl ArmFault {
    fn fault(&self) -> Result<Fault, String> {
        let ms = || {
            self.ms
                .map(Duration::from_millis)
                .ok_or_else(|| format!("fault {:?} needs \"ms\"", self.fault))
        };
        match self.fault.as_str() {
            "hold" => ms().map(Fault::HoldThenCommit),
            "latency" => ms().map(Fault::Latency),
            "html500" => Ok(Fault::Html500),
            "commit_then_drop" => Ok(Fault::CommitThenDrop),
            other => Err(format!(
                "unknown fault {other:?} (hold, latency, html500, commit_then_drop)"
            )),
        }
    }
}

/// The name a fault has in the admin routes.
fn fault_name(fault: &Fault) -> &'static str {
    match fault {
        Fault::Latency(_) => "latency",
        Fault::Html500 => "html500",
        Fault::CommitThenDrop => "commit_then_drop",
        Fault::HoldThenCommit(_) => "hold",
    }
}

fn invalid(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": "invalid_fault", "message": message.into()})),
    )
        .into_response()
}

async fn arm(AxumState(shared): AxumState<Arc<Shared>>, body: Bytes) -> Response {
    let request: ArmFault = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return invalid(format!(
                "expected {{\"action\", \"fault\", \"ms\", \"times\"}}: {e}"
            ));
        }
    };
    if request.action.trim().is_empty() {
        return invalid("\"action\" is empty");
    }
    if request.times == Some(0) {
        return invalid("\"times\" must be at least 1 (leave it out for every call)");
    }
    let fault = match request.fault() {
        Ok(fault) => fault,
        Err(message) => return invalid(message),
    };
    WhmcsSandbox::inject_into(&shared, &request.action, fault, request.times);
    tracing::info!(
        action = %request.action,
        fault = %request.fault,
        times = ?request.times,
        "whmcs sandbox: fault armed through the admin route"
    );
    axum::Json(json!({ "armed": request })).into_response()
}

async fn clear(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    WhmcsSandbox::clear_in(&shared);
    axum::Json(json!({ "cleared": true })).into_response()
}

fn request_json(request: &RecordedRequest) -> Json {
    let param = |name: &str| request.param(name).map_or(Json::Null, Json::String);
    let at_ms = request
        .received_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    json!({
        "action": request.action,
        "identifier": param("identifier"),
        "clientid": param("clientid"),
        "orderid": param("orderid"),
        "fault": request.fault.as_ref().map(fault_name),
        "receivedAtMs": at_ms,
    })
}

async fn requests(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    let listed: Vec<Json> = shared
        .state
        .lock()
        .requests
        .iter()
        .map(request_json)
        .collect();
    axum::Json(json!({ "requests": listed })).into_response()
}

async fn orders(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    let state = shared.state.lock();
    let listed: Vec<Json> = state
        .orders
        .values()
        .map(|order| {
            let services: Vec<Json> = order
                .service_ids
                .iter()
                .filter_map(|id| state.services.get(id))
                .map(|s| {
                    let fields: serde_json::Map<String, Json> = s
                        .custom_fields
                        .iter()
                        .map(|(id, v)| (id.to_string(), Json::String(v.clone())))
                        .collect();
                    json!({
                        "id": s.id,
                        "productId": s.product_id,
                        "status": s.status,
                        "moduleCreates": s.module_creates,
                        "customFields": fields,
                    })
                })
                .collect();
            json!({
                "id": order.id,
                "clientId": order.client_id,
                "status": order.status,
                "accepts": order.accepts,
                "services": services,
            })
        })
        .collect();
    let holding = state.holding;
    drop(state);
    axum::Json(json!({ "orders": listed, "holding": holding })).into_response()
}

/// `GET /sandbox/stats`.
async fn stats(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    let state = shared.state.lock();
    let mut by_ref: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut without_ref = 0_u64;
    let mut accepted = 0_u64;
    for order in state.orders.values() {
        if order.accepts > 0 {
            accepted += 1;
        }
        let refs: std::collections::BTreeSet<&str> = order
            .service_ids
            .iter()
            .filter_map(|id| state.services.get(id))
            .flat_map(|s| s.custom_fields.values())
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .collect();
        if refs.is_empty() {
            without_ref += 1;
        }
        for r in refs {
            *by_ref.entry(r).or_default() += 1;
        }
    }
    let duplicates: u64 = by_ref.values().map(|n| n - 1).sum();
    let body = json!({
        "orders": state.orders.len(),
        "refs": by_ref.len(),
        "duplicates": duplicates,
        "withoutRef": without_ref,
        "accepted": accepted,
    });
    drop(state);
    axum::Json(body).into_response()
}
