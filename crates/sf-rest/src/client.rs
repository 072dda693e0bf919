//! [`RestOrderApi`]: the REST implementation of [`OrderApi`] and [`OrderIntakeApi`] over
//! [`http_call`] (hyper, rustls).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use http_call::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http_call::http::{Method, StatusCode};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value;
use sf_auth::{AccessToken, TokenSource};

use crate::describe::{MAX_SOBJECT_NAME_CHARS, SObjectDescribe, valid_sobject_name};
use crate::intake::{
    account_soql, check_request_id, composite_error, order_by_request_id_soql, parse_composite,
    parse_created, parse_entry, pricebook_entries_soql,
};
use crate::model::{
    OrderAnswer, approved_orders_soql, order_soql, parse_approved, parse_order, text,
};
use crate::{
    Action, ApprovedOrder, CreatedOrder, Error, NewOrder, Order, OrderApi, OrderId, OrderIntakeApi,
    OrderUpdate, PricebookEntry, Result,
};

/// `SF_API_VERSION`'s default.
pub const DEFAULT_API_VERSION: &str = "v62.0";

/// How the client retries retryable errors ([`Error::is_retryable`]).
///
/// Attempt `n` (from 1) that fails retryably is followed, after
/// `min(initial_backoff * 2^(n-1), max_backoff)`, by attempt `n + 1`, up to `max_attempts` in
/// all; then the last error is returned. There is no jitter: callers are few and the
/// provisioner's job queue already spreads work. A 401 `INVALID_SESSION_ID` is not part of
/// this budget: it mints a new token and repeats the request once, inside the same attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// Wait before the second attempt.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 100 ms, 200 ms and 400 ms apart (0.7 s in all): a caller waits through
    /// them (a provisioner's job holds its customer's queue meanwhile), and a longer outage
    /// is its own retries' to ride out.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait after failed attempt `attempt` (from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// The future a [`RetryPause`] returns.
pub type PauseFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How the client waits between attempts ([`RestOrderApi::with_pause`]; without one it
/// sleeps). A service that shares a bounded capacity among many callers can lend it out
/// meanwhile: the provisioner gives a job's worker slot to another job while the job waits,
/// and takes one back before the next attempt.
pub type RetryPause = Arc<dyn Fn(Duration) -> PauseFuture + Send + Sync>;

/// Settings of [`RestOrderApi`].
#[derive(Clone, Debug)]
pub struct RestConfig {
    /// `SF_API_VERSION`, e.g. `v62.0`.
    pub api_version: String,
    /// `SF_ORDER_STATUS_APPROVED`: what the reconcile sweep looks for.
    pub approved_status: String,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// Retries of retryable errors.
    pub retry: RetryPolicy,
}

impl Default for RestConfig {
    fn default() -> Self {
        Self {
            api_version: DEFAULT_API_VERSION.into(),
            approved_status: "Approved".into(),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

/// The last `Sforce-Limit-Info: api-usage=<used>/<limit>` seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiUsage {
    /// API requests used in the last 24 hours.
    pub used: u64,
    /// The org's 24-hour API request limit.
    pub limit: u64,
}

impl ApiUsage {
    /// Reads the `api-usage` entry of a `Sforce-Limit-Info` header value (other entries such as
    /// `per-app-api-usage=..` are ignored).
    pub fn parse(header: &str) -> Option<Self> {
        header.split(',').find_map(|entry| {
            let (used, limit) = entry.trim().strip_prefix("api-usage=")?.split_once('/')?;
            Some(Self {
                used: used.trim().parse().ok()?,
                limit: limit.trim().parse().ok()?,
            })
        })
    }
}

/// Salesforce REST error entry.
#[derive(Deserialize)]
struct ApiErrorEntry {
    #[serde(default)]
    message: String,
    #[serde(default, rename = "errorCode")]
    error_code: String,
    #[serde(default)]
    fields: Vec<String>,
}

/// The largest reply body read. A query page holds at most 2,000 records; anything near this
/// is not a Salesforce reply.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// [`OrderApi`] and [`OrderIntakeApi`] over Salesforce REST, authenticated by any
/// [`TokenSource`].
pub struct RestOrderApi {
    http: http_call::HttpClient,
    tokens: Arc<dyn TokenSource>,
    config: RestConfig,
    usage: Mutex<Option<ApiUsage>>,
    pause: Option<RetryPause>,
}

impl std::fmt::Debug for RestOrderApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestOrderApi")
            .field("config", &self.config)
            .field("usage", &*self.usage.lock())
            .finish_non_exhaustive()
    }
}

/// What one HTTP exchange produced.
struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl RestOrderApi {
    /// A client with its own HTTP client (rustls; each exchange bounded by
    /// `config.request_timeout`).
    pub fn new(tokens: Arc<dyn TokenSource>, config: RestConfig) -> Result<Self> {
        // The REST API answers where it is asked; a redirect (a proxy, a wrong instance URL)
        // is a configuration error to report, not a place to send the session token, and
        // following a 302 would turn a PATCH into a GET that seems to succeed: http_call
        // follows none.
        let http = http_call::HttpClient::builder()
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::Transport {
                action: Action::FetchOrder,
                timeout: false,
                reason: e.to_string(),
            })?;
        Ok(Self::with_http_client(tokens, config, http))
    }

    /// A client using `http` for its exchanges (each bounded by `config.request_timeout`).
    pub fn with_http_client(
        tokens: Arc<dyn TokenSource>,
        config: RestConfig,
        http: http_call::HttpClient,
    ) -> Self {
        Self {
            http,
            tokens,
            config,
            usage: Mutex::new(None),
            pause: None,
        }
    }

    /// This client, waiting between attempts with `pause` instead of sleeping.
    #[must_use]
    pub fn with_pause(mut self, pause: RetryPause) -> Self {
        self.pause = Some(pause);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &RestConfig {
        &self.config
    }

    /// The last `Sforce-Limit-Info` `api-usage` seen, if any response carried one.
    pub fn api_usage(&self) -> Option<ApiUsage> {
        *self.usage.lock()
    }

    fn data_url(&self, token: &AccessToken, path: &str) -> String {
        format!(
            "{}/services/data/{}/{path}",
            token.instance_url, self.config.api_version
        )
    }

    /// Runs `request` with retries for retryable errors.
    async fn call(&self, action: Action, request: &Request<'_>) -> Result<Reply> {
        let policy = &self.config.retry;
        let mut attempt = 1;
        loop {
            match self.call_once(action, request).await {
                Ok(reply) => return Ok(reply),
                Err(e) if e.is_retryable() && attempt < policy.max_attempts.max(1) => {
                    let wait = policy.backoff(attempt);
                    tracing::warn!(%action, attempt, wait_ms = wait.as_millis() as u64, error = %e, "salesforce call failed, retrying");
                    match &self.pause {
                        Some(pause) => pause(wait).await,
                        None => tokio::time::sleep(wait).await,
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt: a request, and on 401 `INVALID_SESSION_ID` one more with a new token.
    async fn call_once(&self, action: Action, request: &Request<'_>) -> Result<Reply> {
        let auth = |source| Error::Auth { action, source };
        let token = self.tokens.token().await.map_err(auth)?;
        let reply = self.send(action, request, &token).await?;
        if reply.status != StatusCode::UNAUTHORIZED {
            return self.check(action, request, reply);
        }
        tracing::info!(%action, generation = token.generation, "salesforce session expired or invalid, minting a new token");
        self.tokens.invalidate(&token);
        let fresh = self.tokens.token().await.map_err(auth)?;
        let reply = self.send(action, request, &fresh).await?;
        if reply.status == StatusCode::UNAUTHORIZED {
            self.tokens.invalidate(&fresh);
            return Err(Error::SessionRejected { action });
        }
        self.check(action, request, reply)
    }

    /// One HTTP request in a `salesforce.rest` span: the action and the reply's status (no
    /// URL, query or body: they carry record ids and customer data).
    async fn send(
        &self,
        action: Action,
        request: &Request<'_>,
        token: &AccessToken,
    ) -> Result<Reply> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "salesforce.rest",
            action = %action,
            http.response.status_code = tracing::field::Empty,
        );
        let reply = self
            .send_request(action, request, token)
            .instrument(span.clone())
            .await;
        if let Ok(reply) = &reply {
            span.record("http.response.status_code", reply.status.as_u16());
        }
        reply
    }

    async fn send_request(
        &self,
        action: Action,
        request: &Request<'_>,
        token: &AccessToken,
    ) -> Result<Reply> {
        let transport = |e: http_call::Error| Error::Transport {
            action,
            timeout: e.is_timeout(),
            reason: describe_transport(&e),
        };
        let (method, url, body) = match request {
            Request::Query { soql } => (
                Method::GET,
                format!("{}?q={}", self.data_url(token, "query"), query_param(soql)),
                None,
            ),
            Request::Next { path } => (Method::GET, format!("{}{path}", token.instance_url), None),
            Request::Patch { order_id, body, .. } => (
                Method::PATCH,
                self.data_url(token, &format!("sobjects/Order/{order_id}")),
                Some(body),
            ),
            Request::Composite { body, .. } => {
                (Method::POST, self.data_url(token, "composite"), Some(body))
            }
            Request::Describe { sobject } => (
                Method::GET,
                self.data_url(token, &format!("sobjects/{sobject}/describe")),
                None,
            ),
        };
        let invalid = |what: &str| Error::Transport {
            action,
            timeout: false,
            reason: format!("request failed: {what}"),
        };
        let uri = url.parse::<http_call::http::Uri>().map_err(|_| {
            invalid("the request url is not valid (check the instance URL the login returned)")
        })?;
        let mut http_request = http_call::http::Request::new(match body {
            Some(body) => http_call::Bytes::from(
                serde_json::to_vec(body).map_err(|_| invalid("cannot encode the body"))?,
            ),
            None => http_call::Bytes::new(),
        });
        *http_request.method_mut() = method;
        *http_request.uri_mut() = uri;
        // A request id per call, for correlating our logs with the org's.
        let request_id = uuid::Uuid::new_v4().to_string();
        tracing::debug!(%action, %request_id, request = %request.describe(), "salesforce rest request");
        let headers = http_request.headers_mut();
        // The formatted token is wiped when dropped; the header keeps its own copy, marked
        // sensitive (left out of its `Debug`).
        let authorization = secrecy::zeroize::Zeroizing::new(format!("Bearer {}", token.secret()));
        let mut bearer = HeaderValue::from_str(&authorization)
            .map_err(|_| invalid("the access token is not a valid header value"))?;
        bearer.set_sensitive(true);
        headers.insert(AUTHORIZATION, bearer);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Ok(id) = HeaderValue::from_str(&request_id) {
            headers.insert("x-request-id", id);
        }
        let Some(timeout) = http_call::time_left(request.deadline(), self.config.request_timeout)
        else {
            tracing::warn!(%action, "salesforce request not sent: its deadline had passed");
            return Err(Error::Transport {
                action,
                timeout: true,
                reason: "not sent: the caller's deadline had passed".to_owned(),
            });
        };
        let started = std::time::Instant::now();
        let sent = self.http.send(http_request, timeout).await;
        metrics::histogram!(crate::REQUEST_SECONDS, "action" => action.metric_label())
            .record(started.elapsed().as_secs_f64());
        let response = sent.map_err(transport)?;
        if let Some(usage) = response
            .headers()
            .get("Sforce-Limit-Info")
            .and_then(|v| v.to_str().ok())
            .and_then(ApiUsage::parse)
        {
            *self.usage.lock() = Some(usage);
        }
        let status = response.status();
        let body = response.bytes(MAX_REPLY_BYTES).await.map_err(transport)?;
        tracing::debug!(%action, status = status.as_u16(), "salesforce rest response");
        Ok(Reply { status, body })
    }

    fn check(&self, action: Action, request: &Request<'_>, reply: Reply) -> Result<Reply> {
        if reply.status.is_success() {
            return Ok(reply);
        }
        let status = reply.status.as_u16();
        if reply.status.is_redirection() {
            let err = Error::Api {
                action,
                status,
                code: String::new(),
                message: "Salesforce answered with a redirect, which is not followed: \
                          check the instance URL the login returned and any proxy in between"
                    .to_owned(),
                fields: Vec::new(),
            };
            tracing::warn!(%action, status, error = %err, "salesforce rest error");
            return Err(err);
        }
        let first = serde_json::from_slice::<Vec<ApiErrorEntry>>(&reply.body)
            .ok()
            .and_then(|v| v.into_iter().next());
        let (code, message, fields) = first.map_or_else(
            || {
                (
                    String::new(),
                    reply
                        .status
                        .canonical_reason()
                        .unwrap_or("error")
                        .to_owned(),
                    Vec::new(),
                )
            },
            |e| (e.error_code, e.message, e.fields),
        );
        if let (404, _) | (_, "NOT_FOUND") = (status, code.as_str()) {
            match request {
                Request::Patch { order_id, .. } => {
                    return Err(Error::NotFound {
                        action,
                        order_id: order_id.to_string(),
                    });
                }
                Request::Describe { sobject } => {
                    return Err(Error::UnknownSObject {
                        action,
                        sobject: sobject.clone(),
                    });
                }
                _ => {}
            }
        }
        let err = Error::Api {
            action,
            status,
            code,
            message,
            fields,
        };
        tracing::warn!(%action, status, error = %err, "salesforce rest error");
        Err(err)
    }

    async fn query_page(&self, action: Action, request: &Request<'_>) -> Result<Value> {
        let reply = self.call(action, request).await?;
        query_answer(action, &reply.body)
    }
}

/// The `q` parameter of a query URL: `soql` form-urlencoded (what a form or
/// `RequestBuilder::query` would send). The Order query's fixed text is encoded once per process.
fn query_param(soql: &str) -> String {
    use url::form_urlencoded::byte_serialize;
    static ORDER_QUERY_ENCODED: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| byte_serialize(crate::model::ORDER_QUERY.as_bytes()).collect());
    match soql.strip_prefix(crate::model::ORDER_QUERY) {
        Some(rest) => {
            let mut param = String::with_capacity(ORDER_QUERY_ENCODED.len() + 3 * rest.len());
            param.push_str(&ORDER_QUERY_ENCODED);
            param.extend(byte_serialize(rest.as_bytes()));
            param
        }
        None => byte_serialize(soql.as_bytes()).collect(),
    }
}

/// A query's answer as a generic JSON tree.
fn query_answer(action: Action, body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidResponse {
        action,
        reason: format!(
            "query answer is not json (line {} column {})",
            e.line(),
            e.column()
        ),
    })
}

/// One REST request, kept so it can be sent again.
impl Request<'_> {
    /// The caller's deadline, if the request has one ([`OrderUpdate::deadline`]).
    fn deadline(&self) -> Option<tokio::time::Instant> {
        match self {
            Request::Patch { deadline, .. } => *deadline,
            _ => None,
        }
    }
}

enum Request<'a> {
    Query {
        soql: String,
    },
    Next {
        path: String,
    },
    Patch {
        order_id: &'a OrderId,
        body: Value,
        /// [`OrderUpdate::deadline`].
        deadline: Option<tokio::time::Instant>,
    },
    /// A composite create; `items` is for logs (the body may carry encrypted secrets).
    Composite {
        body: Value,
        items: usize,
    },
    /// An sObject describe; the name was checked by `valid_sobject_name`.
    Describe {
        sobject: String,
    },
}

impl Request<'_> {
    /// For logs: the SOQL or path, never a body (bodies may carry values worth keeping out).
    fn describe(&self) -> String {
        match self {
            Request::Query { soql } => format!("query {soql}"),
            Request::Next { path } => format!("query more {path}"),
            Request::Patch { order_id, body, .. } => {
                let fields: Vec<&str> = body
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                format!("patch Order {order_id} fields {}", fields.join(","))
            }
            Request::Composite { items, .. } => {
                format!("composite create of an Order with {items} OrderItems")
            }
            Request::Describe { sobject } => format!("describe {sobject}"),
        }
    }
}

fn describe_transport(e: &http_call::Error) -> String {
    match e {
        http_call::Error::Timeout { .. } => "request timed out".to_owned(),
        http_call::Error::Connect { detail } => format!("connect failed: {detail}"),
        http_call::Error::Lost { detail, .. } => format!("request failed: {detail}"),
        other => format!("request failed: {other}"),
    }
}

impl RestOrderApi {
    /// `GET /services/data/vXX.X/sobjects/{sobject}/describe`: the object's fields and the
    /// integration user's access to them, with the same token handling (one new token on 401)
    /// and retries as every other call. [`Error::InvalidRequest`] (nothing sent) for a name
    /// that cannot be an sObject API name; [`Error::UnknownSObject`] when the org has no such
    /// object or the user cannot see it.
    pub async fn describe(&self, sobject: &str) -> Result<SObjectDescribe> {
        let action = Action::Describe;
        if !valid_sobject_name(sobject) {
            return Err(Error::InvalidRequest {
                action,
                reason: format!(
                    "{:?} is not an sobject api name (letters, digits and underscores, at most {MAX_SOBJECT_NAME_CHARS})",
                    sobject
                        .chars()
                        .take(MAX_SOBJECT_NAME_CHARS)
                        .collect::<String>()
                ),
            });
        }
        let request = Request::Describe {
            sobject: sobject.to_owned(),
        };
        let reply = self.call(action, &request).await?;
        serde_json::from_slice(&reply.body).map_err(|e| Error::InvalidResponse {
            action,
            reason: format!(
                "describe answer does not have the expected shape ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        })
    }

    /// The records of a query that fits one page (the intake's queries select by id, a unique
    /// field or a handful of products).
    async fn query_records(&self, action: Action, soql: String) -> Result<Vec<Value>> {
        let page = self.query_page(action, &Request::Query { soql }).await?;
        Ok(records(&page, action)?.clone())
    }
}

fn records(page: &Value, action: Action) -> Result<&Vec<Value>> {
    page.get("records")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::InvalidResponse {
            action,
            reason: "query answer has no records array".into(),
        })
}

#[async_trait]
impl OrderApi for RestOrderApi {
    async fn fetch_order(&self, order_id: &str) -> Result<Order> {
        let action = Action::FetchOrder;
        let id = OrderId::parse(order_id)?;
        let not_found = || Error::NotFound {
            action,
            order_id: id.to_string(),
        };
        let reply = self
            .call(
                action,
                &Request::Query {
                    soql: order_soql(&id),
                },
            )
            .await?;
        // The answer of the expected shape is read straight into its fields; any other is read
        // generically, whose errors say what is wrong with it.
        if let Ok(answer) = serde_json::from_slice::<OrderAnswer>(&reply.body) {
            let record = answer.records.first().ok_or_else(not_found)?;
            return parse_order(record, &id);
        }
        let page = query_answer(action, &reply.body)?;
        let record = records(&page, action)?.first().ok_or_else(not_found)?;
        parse_order(record, &id)
    }

    async fn update_order(&self, order_id: &str, update: &OrderUpdate) -> Result<()> {
        let action = Action::UpdateOrder;
        let id = OrderId::parse(order_id)?;
        if update.is_empty() {
            return Ok(());
        }
        let reply = self
            .call(
                action,
                &Request::Patch {
                    order_id: &id,
                    body: update.to_json(),
                    deadline: update.deadline,
                },
            )
            .await?;
        if reply.status != StatusCode::NO_CONTENT {
            tracing::debug!(
                status = reply.status.as_u16(),
                "order patch answered other than 204"
            );
        }
        Ok(())
    }

    async fn list_approved_orders(&self, older_than: Duration) -> Result<Vec<ApprovedOrder>> {
        self.list_orders_in_status(&self.config.approved_status, older_than)
            .await
    }

    async fn list_orders_in_status(
        &self,
        status: &str,
        older_than: Duration,
    ) -> Result<Vec<ApprovedOrder>> {
        let action = Action::ListApprovedOrders;
        let age = chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let cutoff = Utc::now()
            .checked_sub_signed(age)
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        let mut request = Request::Query {
            soql: approved_orders_soql(status, cutoff),
        };
        let mut found = Vec::new();
        loop {
            let page = self.query_page(action, &request).await?;
            for record in records(&page, action)? {
                found.push(
                    parse_approved(record)
                        .map_err(|reason| Error::InvalidResponse { action, reason })?,
                );
            }
            match page.get("nextRecordsUrl").and_then(Value::as_str) {
                Some(next) if page.get("done") != Some(&Value::Bool(true)) => {
                    if !next.starts_with("/services/data/") {
                        return Err(Error::InvalidResponse {
                            action,
                            reason: "nextRecordsUrl is not a /services/data/ path".into(),
                        });
                    }
                    request = Request::Next {
                        path: next.to_owned(),
                    };
                }
                _ => return Ok(found),
            }
        }
    }
}

#[async_trait]
impl OrderIntakeApi for RestOrderApi {
    async fn account_customer_number(&self, account_id: &str) -> Result<Option<String>> {
        let action = Action::ReadAccount;
        let id = OrderId::parse(account_id)?;
        let records = self.query_records(action, account_soql(&id)).await?;
        let Some(record) = records.first() else {
            return Ok(None);
        };
        text(record, "Customer_Number__c")
            .map_err(|reason| Error::InvalidResponse { action, reason })
    }

    async fn pricebook_entries(
        &self,
        pricebook_id: &str,
        whmcs_product_ids: &[u64],
    ) -> Result<Vec<PricebookEntry>> {
        let action = Action::ListPricebookEntries;
        let pricebook = OrderId::parse(pricebook_id)?;
        let mut wanted = whmcs_product_ids.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let soql = pricebook_entries_soql(&pricebook, &wanted);
        self.query_records(action, soql)
            .await?
            .iter()
            .map(|r| parse_entry(r).map_err(|reason| Error::InvalidResponse { action, reason }))
            .collect()
    }

    async fn find_order_by_request_id(&self, request_id: &str) -> Result<Option<CreatedOrder>> {
        let action = Action::FindOrderByRequestId;
        check_request_id(action, request_id)?;
        let records = self
            .query_records(action, order_by_request_id_soql(request_id))
            .await?;
        records
            .first()
            .map(|r| parse_created(r).map_err(|reason| Error::InvalidResponse { action, reason }))
            .transpose()
    }

    async fn create_order(&self, order: &NewOrder) -> Result<CreatedOrder> {
        let action = Action::CreateOrder;
        order.validate()?;
        let request = Request::Composite {
            body: order.composite_body(&self.config.api_version),
            items: order.items.len(),
        };
        // One attempt only (a 401 is still renewed once): a create that may have happened is
        // resolved by the caller through the request id, never repeated blindly here.
        let reply = match self.call_once(action, &request).await {
            Ok(reply) => reply,
            Err(Error::Transport { reason, .. }) if !reason.starts_with("connect failed") => {
                return Err(Error::UnknownOutcome { action, reason });
            }
            Err(e) => return Err(e),
        };
        let results = parse_composite(&reply.body).map_err(|reason| Error::UnknownOutcome {
            action,
            reason: format!("unreadable answer: {reason}"),
        })?;
        if results.is_empty() || results.iter().any(|r| !(200..300).contains(&r.status)) {
            let err = composite_error(&results);
            tracing::warn!(%action, error = %err, "salesforce refused the order create");
            return Err(err);
        }
        let created_id = results
            .iter()
            .find(|r| r.reference_id == crate::intake::ORDER_REFERENCE)
            .and_then(|r| r.body.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        tracing::info!(%action, order_id = created_id.as_deref().unwrap_or("?"), items = order.items.len(), "order created in salesforce");
        // The composite answer has no OrderNumber: read it back by the unique request id.
        match self.find_order_by_request_id(&order.request_id).await {
            Ok(Some(created)) => Ok(created),
            Ok(None) => Err(Error::UnknownOutcome {
                action,
                reason: "the order was created but is not found by its request id".into(),
            }),
            Err(e) => Err(Error::UnknownOutcome {
                action,
                reason: format!("the order was created but reading it back failed: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_query_parameter_is_encoded_as_a_form_would_encode_it() {
        let id = OrderId::parse("801A0000006Vm9rIAC").unwrap();
        for soql in [
            order_soql(&id),
            approved_orders_soql("Appro'ved & 100%", chrono::DateTime::UNIX_EPOCH),
            "SELECT Id FROM Order WHERE Name = 'a+b=c/d?é'".to_owned(),
        ] {
            let mut expected = url::Url::parse("https://x.example/q").unwrap();
            expected.query_pairs_mut().append_pair("q", &soql);
            assert_eq!(
                Some(format!("q={}", query_param(&soql)).as_str()),
                expected.query()
            );
        }
    }

    #[test]
    fn limit_info_reads_only_the_api_usage_entry() {
        assert_eq!(
            ApiUsage::parse("api-usage=18/15000"),
            Some(ApiUsage {
                used: 18,
                limit: 15000
            })
        );
        assert_eq!(
            ApiUsage::parse("per-app-api-usage=17/250(appName=x), api-usage=19/15000"),
            Some(ApiUsage {
                used: 19,
                limit: 15000
            })
        );
        assert_eq!(ApiUsage::parse("per-app-api-usage=17/250"), None);
        assert_eq!(ApiUsage::parse("api-usage=x/1"), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let waits: Vec<u128> = (1..=5).map(|a| policy.backoff(a).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 500, 500]);
    }

    /// The default waits 0.7 s in all between its 4 attempts: its caller (a provisioner job,
    /// holding its customer's queue) is not held for seconds by one transient fault.
    #[test]
    fn the_default_policy_waits_under_a_second_in_all() {
        let policy = RetryPolicy::default();
        let waits: Vec<u128> = (1..policy.max_attempts)
            .map(|a| policy.backoff(a).as_millis())
            .collect();
        assert_eq!(waits, vec![100, 200, 400]);
    }
}
