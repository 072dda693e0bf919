//! [`HttpWhmcsClient`]: the [`WhmcsApi`] over HTTPS with [`http_call`] (hyper, rustls).

use std::time::Instant;

use async_trait::async_trait;
use http_call::http::header::{CONTENT_TYPE, HeaderValue};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::WhmcsApi;
use crate::catalog::{CatalogEnvelope, CatalogProduct, PaymentMethod, PaymentMethodsEnvelope};
use crate::config::{MAX_PAGE_SIZE, WhmcsConfig};
use crate::encoding::FormBody;
use crate::error::{Action, Error, Result};
use crate::model::{
    AcceptOrderRequest, AddClientEnvelope, ClientDetails, ClientDetailsEnvelope, ListPage,
    NewClient, NewOrder, Order, OrdersEnvelope, OrdersQuery, Page, PlacedOrder, ProductsEnvelope,
    ProductsQuery, Service, ServiceRef,
};

/// Largest reply body read; WHMCS replies are small, anything bigger is not WHMCS.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// How many times a read is sent when it fails transiently (see [`HttpWhmcsClient`]'s `call`).
pub(crate) const READ_ATTEMPTS: u32 = 2;

/// The pause before a read is sent again: short, because the caller waits meanwhile (a
/// provisioner's job holds its customer's queue through it); a longer outage is the caller's
/// to retry.
pub(crate) const READ_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Hard stop for list paging, in pages, against a server that keeps answering.
const MAX_PAGES: u64 = 10_000;

/// The future a [`RetryPause`] returns.
pub type PauseFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How the client waits before it sends a read again ([`HttpWhmcsClient::with_pause`];
/// without one it sleeps). A service that bounds its callers' concurrency can lend the
/// caller's slot out meanwhile, as the provisioner does with a job's worker slot.
pub type RetryPause = std::sync::Arc<dyn Fn(std::time::Duration) -> PauseFuture + Send + Sync>;

/// The WHMCS External API client. Cheap to clone (shares the connection pool).
///
/// Nothing it logs contains request or response bodies: only the action, HTTP status, timing
/// and error class.
#[derive(Clone)]
pub struct HttpWhmcsClient {
    http: http_call::HttpClient,
    config: WhmcsConfig,
    /// `config.api_url`, parsed once: each request clones it (a reference count).
    uri: http_call::http::Uri,
    pause: Option<RetryPause>,
}

impl std::fmt::Debug for HttpWhmcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpWhmcsClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HttpWhmcsClient {
    /// A client for `config`. Fails on a URL that is not `http(s)://.../api.php`-shaped or
    /// when the TLS stack cannot start.
    pub fn new(config: WhmcsConfig) -> Result<Self> {
        let url = url::Url::parse(&config.api_url).map_err(|e| Error::InvalidInput {
            reason: format!("WHMCS_API_URL is not a valid url: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::InvalidInput {
                reason: "WHMCS_API_URL must be an http(s) url".to_owned(),
            });
        }
        if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(Error::InvalidInput {
                reason: "WHMCS_API_URL must not carry credentials or a query".to_owned(),
            });
        }
        if !url.path().ends_with("api.php") {
            tracing::warn!(
                "WHMCS_API_URL does not end in api.php; it should be the full .../includes/api.php url"
            );
        }
        if !(1..=MAX_PAGE_SIZE).contains(&config.page_size) {
            return Err(Error::InvalidInput {
                reason: format!(
                    "page size must be 1 to {MAX_PAGE_SIZE}, not {}",
                    config.page_size
                ),
            });
        }
        let uri =
            url.as_str()
                .parse::<http_call::http::Uri>()
                .map_err(|_| Error::InvalidInput {
                    reason: "WHMCS_API_URL is not a valid url".to_owned(),
                })?;
        // http_call follows no redirect: one would turn the POST into a GET and drop the form.
        let http = http_call::HttpClient::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!(
                "portal-provisioner-whmcs-client/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| Error::InvalidInput {
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            config,
            uri,
            pause: None,
        })
    }

    /// This client, waiting before a read is sent again with `pause` instead of sleeping.
    #[must_use]
    pub fn with_pause(mut self, pause: RetryPause) -> Self {
        self.pause = Some(pause);
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &WhmcsConfig {
        &self.config
    }

    /// Builds the body of `action` with the credential fields first.
    fn body(&self, action: Action) -> FormBody {
        let mut body = FormBody::new();
        body.push("action", action.as_str());
        body.push("identifier", self.config.identifier.expose_secret());
        body.push("secret", self.config.secret.expose_secret());
        if let Some(key) = &self.config.access_key {
            body.push("accesskey", key.expose_secret());
        }
        body.push("responsetype", "json");
        body
    }

    /// Sends `body` and returns the body of a success reply, or the classified error, in a
    /// `whmcs.api` span: the action and the HTTP status (never the form body: it holds the
    /// credentials and the customer's data).
    ///
    /// A read (an action that changes nothing) that fails transiently (a 5xx, an HTML page, a
    /// timeout, a dropped connection) is sent once more after [`READ_RETRY_PAUSE`]: a walk
    /// through many pages of GetClientsProducts would otherwise start over on any one page's
    /// fault. A write is sent once; its unknown outcome is the caller's to look up.
    async fn call(&self, action: Action, body: FormBody) -> Result<Vec<u8>> {
        self.call_until(action, body, None).await
    }

    /// [`Self::call`], given up at `deadline` at the latest and not sent once it has passed
    /// ([`NewOrder::deadline`]).
    async fn call_until(
        &self,
        action: Action,
        body: FormBody,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Vec<u8>> {
        self.call_with(action, body, deadline, |status, bytes| {
            interpret(action, status, &bytes).map(|()| bytes)
        })
        .await
    }

    /// [`Self::call`] with `check` in place of the envelope check: it gets the HTTP status
    /// and the body, and its error is retried as the envelope check's would be.
    async fn call_with<R>(
        &self,
        action: Action,
        body: FormBody,
        deadline: Option<tokio::time::Instant>,
        check: impl Fn(u16, Vec<u8>) -> Result<R> + Send + Sync,
    ) -> Result<R> {
        use tracing::Instrument as _;
        let encoded = zeroize::Zeroizing::new(body.to_urlencoded());
        drop(body);
        let attempts = if action.is_mutating() {
            1
        } else {
            READ_ATTEMPTS
        };
        let mut attempt = 1;
        loop {
            let span = tracing::info_span!(
                "whmcs.api",
                action = action.as_str(),
                attempt,
                http.response.status_code = tracing::field::Empty,
            );
            let result = self
                .call_in_span(action, String::clone(&encoded), deadline, &span, &check)
                .instrument(span.clone())
                .await;
            match result {
                Err(e) if attempt < attempts && e.class() == crate::ErrorClass::Transient => {
                    attempt += 1;
                    match &self.pause {
                        Some(pause) => pause(READ_RETRY_PAUSE).await,
                        None => tokio::time::sleep(READ_RETRY_PAUSE).await,
                    }
                }
                other => return other,
            }
        }
    }

    async fn call_in_span<R>(
        &self,
        action: Action,
        encoded: String,
        deadline: Option<tokio::time::Instant>,
        span: &tracing::Span,
        check: &(impl Fn(u16, Vec<u8>) -> Result<R> + Sync),
    ) -> Result<R> {
        let configured = if action.provisions() {
            self.config.provisioning_timeout
        } else {
            self.config.read_timeout
        };
        let Some(timeout) = http_call::time_left(deadline, configured) else {
            // Not sent: the caller's deadline passed before the request went out. The outcome
            // is "unknown" like any timeout, which is what a caller that recorded the intent
            // must assume anyway.
            tracing::warn!(
                action = action.as_str(),
                "whmcs call not sent: its deadline had passed"
            );
            return Err(classify_send_error(
                action,
                &http_call::Error::Timeout {
                    stage: http_call::Stage::BeforeHeaders,
                },
            ));
        };
        let started = Instant::now();
        let request_id = uuid::Uuid::new_v4().to_string();
        tracing::debug!(%action, %request_id, "whmcs request");

        let mut request = http_call::http::Request::new(http_call::Bytes::from(encoded));
        *request.method_mut() = http_call::http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        if let Ok(id) = HeaderValue::from_str(&request_id) {
            headers.insert("x-request-id", id);
        }
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let response = self.http.send(request, timeout).await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let err = classify_send_error(action, &e);
                tracing::warn!(
                    action = action.as_str(),
                    class = ?err.class(),
                    elapsed_ms = elapsed_ms(started),
                    "whmcs call failed before a reply"
                );
                return Err(err);
            }
        };
        let status = response.status().as_u16();
        span.record("http.response.status_code", status);
        let bytes = match read_body(response).await {
            Ok(b) => b,
            Err(reason) => {
                let err = Error::after_send(action, Some(status), reason);
                tracing::warn!(action = action.as_str(), status, class = ?err.class(), "whmcs reply unreadable");
                return Err(err);
            }
        };
        let result = check(status, bytes);
        metrics::histogram!(crate::REQUEST_SECONDS, "action" => action.as_str())
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => tracing::debug!(
                action = action.as_str(),
                status,
                elapsed_ms = elapsed_ms(started),
                "whmcs call succeeded"
            ),
            Err(err) => tracing::warn!(
                action = action.as_str(),
                status,
                class = ?err.class(),
                elapsed_ms = elapsed_ms(started),
                "whmcs call failed"
            ),
        }
        result
    }

    /// `GetProducts`: the catalog's products, or only product `pid`. An empty list when WHMCS
    /// has no such product. Only custom fields with "Show on Order Form" are listed (WHMCS's
    /// rule), so an admin-only field is missing from [`CatalogProduct::custom_fields`].
    /// Read-only and safe to retry.
    pub async fn get_products(&self, pid: Option<u64>) -> Result<Vec<CatalogProduct>> {
        let mut body = self.body(Action::GetProducts);
        if let Some(pid) = pid {
            body.push("pid", pid.to_string());
        }
        let env: CatalogEnvelope = self.call_typed(Action::GetProducts, body).await?;
        Ok(env.products)
    }

    /// `GetPaymentMethods`: the active payment gateways (AddOrder's `paymentmethod` must be
    /// one of their [`PaymentMethod::module`] names). Read-only and safe to retry.
    pub async fn payment_methods(&self) -> Result<Vec<PaymentMethod>> {
        let body = self.body(Action::GetPaymentMethods);
        let env: PaymentMethodsEnvelope = self.call_typed(Action::GetPaymentMethods, body).await?;
        Ok(env.methods)
    }

    async fn call_typed<T: DeserializeOwned>(&self, action: Action, body: FormBody) -> Result<T> {
        let bytes = self.call(action, body).await?;
        crate::reply::decode_typed(action, &bytes)
    }

    /// One page of GetClientsProducts, each item read as `T` ([`Service`], or the lean
    /// [`ServiceRef`]).
    async fn products_page<T: DeserializeOwned + Send>(
        &self,
        query: &ProductsQuery,
        page: Page,
    ) -> Result<ListPage<T>> {
        let mut body = self.body(Action::GetClientsProducts);
        query.write_form(&mut body);
        page.write_form(&mut body);
        let action = Action::GetClientsProducts;
        let checked = self
            .call_with(action, body, None, crate::reply::check_one_pass::<T>)
            .await?;
        let env: ProductsEnvelope<T> = match checked {
            crate::reply::Checked::Read(env) => env,
            crate::reply::Checked::Body(bytes) => crate::reply::decode_typed(action, &bytes)?,
        };
        Ok(crate::reply::products_page(env))
    }

    /// Every service of `client_id`, each read as `T`, from all pages of GetClientsProducts.
    async fn every_product<T: DeserializeOwned + Send + Identified>(
        &self,
        client_id: u64,
    ) -> Result<Vec<T>> {
        let mut all = Vec::new();
        self.walk_products(&ProductsQuery::client(client_id), |s: T| {
            all.push(s);
            false
        })
        .await?;
        Ok(all)
    }

    /// Walks every page of GetClientsProducts for `query`; `visit` returns `true` to stop.
    async fn walk_products<T: DeserializeOwned + Send + Identified>(
        &self,
        query: &ProductsQuery,
        mut visit: impl FnMut(T) -> bool + Send,
    ) -> Result<()> {
        let size = self.config.page_size;
        let mut start = 0_u64;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let page = self.products_page::<T>(query, Page { start, size }).await?;
            let got = page.items.len() as u64;
            let mut new_ids = 0_u64;
            for service in page.items {
                if seen.insert(service.service_id()) {
                    new_ids += 1;
                }
                if visit(service) {
                    return Ok(());
                }
            }
            start += got;
            let known_total = page.total_results > 0;
            if got == 0
                || (known_total && start >= page.total_results)
                || (!known_total && got < size)
            {
                return Ok(());
            }
            if new_ids == 0 {
                // A server that ignores `limitstart` would hand out the same page forever;
                // stopping quietly could hide an earlier attempt, so fail instead.
                return Err(Error::Transient {
                    action: Action::GetClientsProducts,
                    http_status: None,
                    reason: "paging does not advance (limitstart ignored?)".to_owned(),
                });
            }
        }
        Err(Error::Transient {
            action: Action::GetClientsProducts,
            http_status: None,
            reason: format!("paging did not end after {MAX_PAGES} pages"),
        })
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Classifies an error that happened before a reply's headers arrived.
fn classify_send_error(action: Action, e: &http_call::Error) -> Error {
    // The error's text holds no URL, header or body.
    let (kind, detail) = match e {
        http_call::Error::Connect { detail } => ("connection failed", detail.as_str()),
        http_call::Error::Timeout { .. } => ("timed out", "no reply within the timeout"),
        http_call::Error::Lost { detail, .. } => ("connection lost", detail.as_str()),
        _ => ("connection lost", "no detail"),
    };
    if e.is_connect() {
        // Nothing was sent: safe to retry for every action.
        Error::Transient {
            action,
            http_status: None,
            reason: format!("{kind}: {detail}"),
        }
    } else {
        Error::after_send(action, None, format!("{kind}: {detail}"))
    }
}

async fn read_body(response: http_call::Response) -> Result<Vec<u8>, String> {
    response.bytes(MAX_BODY_BYTES).await.map_err(|e| match e {
        http_call::Error::TooLarge { .. } => "reply body too large".to_owned(),
        http_call::Error::Lost { detail, .. } => {
            format!("connection lost while reading the reply: {detail}")
        }
        other => other.to_string(),
    })
}

/// The envelope fields of a WHMCS reply. Everything else is skipped without being built into
/// values: the typed reading of a success reply parses the body once more, straight into its
/// model. A page of services is never held as a JSON tree, and the service passwords WHMCS
/// includes in it are never copied out of the reply's bytes.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    status: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    warning: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

impl Envelope {
    /// A JSON object's envelope; `None` for anything else (a derived struct would also read a
    /// JSON array by position).
    fn parse(bytes: &[u8]) -> Option<Envelope> {
        if !opens_object(bytes) {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }
}

/// Whether an envelope's `result` and `status` say success: one of them `success` (trimmed,
/// any case) and neither `error`.
pub(crate) fn envelope_success(result: &Option<Value>, status: &Option<Value>) -> bool {
    // Compared in place: this runs on every reply, and lowercased copies would allocate.
    let says = |value: &Option<Value>, word: &str| {
        value
            .as_ref()
            .and_then(Value::as_str)
            .is_some_and(|s| s.trim().eq_ignore_ascii_case(word))
    };
    let is_error = says(result, "error") || says(status, "error");
    let is_success = says(result, "success") || says(status, "success");
    is_success && !is_error
}

/// Whether a body's first byte that is not whitespace opens a JSON object (a derived struct
/// would also read a JSON array by position).
pub(crate) fn opens_object(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Reads the WHMCS envelope from a reply of any HTTP status: business errors come with HTTP 200,
/// auth and IP errors with 400/403 and still a JSON body; a body that is not JSON (an HTML
/// page from a proxy or a PHP fatal error) is a transport error. `Ok` means a success reply,
/// to be read as the action's type.
pub(crate) fn interpret(action: Action, status: u16, bytes: &[u8]) -> Result<()> {
    if (300..400).contains(&status) {
        // The redirect was not followed (it would turn the POST into a GET): the URL is wrong.
        return Err(Error::Configuration {
            action,
            http_status: status,
            message: "WHMCS_API_URL answers with a redirect; configure the final api.php url"
                .to_owned(),
        });
    }
    let Some(envelope) = Envelope::parse(bytes) else {
        // HTML from a WAF, proxy or PHP fatal error.
        let reason = format!("http {status} with a reply that is not a whmcs json object");
        return Err(if status >= 500 || action.is_mutating() && status < 400 {
            // The server may have run (part of) the action before failing.
            Error::after_send(action, Some(status), reason)
        } else {
            Error::Transient {
                action,
                http_status: Some(status),
                reason,
            }
        });
    };
    if !envelope_success(&envelope.result, &envelope.status) {
        let message = [&envelope.message, &envelope.warning, &envelope.error]
            .into_iter()
            .find_map(|v| v.as_ref().and_then(Value::as_str))
            .unwrap_or("error reply without a message");
        return Err(Error::from_envelope(action, status, message));
    }
    Ok(())
}

#[async_trait]
impl WhmcsApi for HttpWhmcsClient {
    async fn get_client_details(&self, client_id: u64) -> Result<ClientDetails> {
        let mut body = self.body(Action::GetClientsDetails);
        body.push("clientid", client_id.to_string());
        let env: ClientDetailsEnvelope = self.call_typed(Action::GetClientsDetails, body).await?;
        crate::reply::client_details(env)
    }

    async fn get_clients_products(
        &self,
        query: &ProductsQuery,
        page: Page,
    ) -> Result<ListPage<Service>> {
        self.products_page(query, page).await
    }

    async fn all_client_services(&self, client_id: u64) -> Result<Vec<Service>> {
        self.every_product(client_id).await
    }

    async fn client_service_refs(&self, client_id: u64) -> Result<Vec<ServiceRef>> {
        self.every_product(client_id).await
    }

    async fn find_service_by_custom_field(
        &self,
        client_id: u64,
        field_id: u64,
        value: &str,
    ) -> Result<Option<Service>> {
        let mut found = None;
        self.walk_products(&ProductsQuery::client(client_id), |s: Service| {
            if s.custom_field(field_id) == Some(value) {
                found = Some(s);
                true
            } else {
                false
            }
        })
        .await?;
        Ok(found)
    }

    async fn add_order(&self, order: &NewOrder) -> Result<PlacedOrder> {
        if order.lines.is_empty() {
            return Err(Error::InvalidInput {
                reason: "an order needs at least one line".to_owned(),
            });
        }
        let mut body = self.body(Action::AddOrder);
        order.write_form(&self.config.payment_method, &mut body);
        let bytes = self
            .call_until(Action::AddOrder, body, order.deadline)
            .await?;
        crate::reply::decode_typed(Action::AddOrder, &bytes)
    }

    async fn accept_order(&self, request: &AcceptOrderRequest) -> Result<()> {
        let mut body = self.body(Action::AcceptOrder);
        request.write_form(&mut body);
        self.call_until(Action::AcceptOrder, body, request.deadline)
            .await
            .map(drop)
    }

    async fn get_orders(&self, query: &OrdersQuery, page: Page) -> Result<ListPage<Order>> {
        let mut body = self.body(Action::GetOrders);
        query.write_form(&mut body);
        page.write_form(&mut body);
        let env: OrdersEnvelope = self.call_typed(Action::GetOrders, body).await?;
        Ok(crate::reply::orders_page(env))
    }

    async fn get_order(&self, order_id: u64) -> Result<Option<Order>> {
        let page = self
            .get_orders(&OrdersQuery::order(order_id), Page::first(1))
            .await?;
        Ok(page.items.into_iter().find(|o| o.id == order_id))
    }

    async fn module_create(&self, service_id: u64) -> Result<()> {
        let mut body = self.body(Action::ModuleCreate);
        body.push("serviceid", service_id.to_string());
        self.call(Action::ModuleCreate, body).await.map(drop)
    }

    async fn add_client(&self, client: &NewClient) -> Result<u64> {
        let mut body = self.body(Action::AddClient);
        client.write_form(&mut body);
        let env: AddClientEnvelope = self.call_typed(Action::AddClient, body).await?;
        Ok(env.client_id)
    }
}

/// A GetClientsProducts item's service id, which the walk uses to notice a server that
/// ignores `limitstart`.
trait Identified {
    fn service_id(&self) -> u64;
}

impl Identified for Service {
    fn service_id(&self) -> u64 {
        self.id
    }
}

impl Identified for ServiceRef {
    fn service_id(&self) -> u64 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::error::ErrorClass;

    fn class(action: Action, status: u16, body: &str) -> Option<ErrorClass> {
        interpret(action, status, body.as_bytes())
            .err()
            .map(|e| e.class())
    }

    #[test]
    fn envelope_rules() {
        use ErrorClass::*;
        let a = Action::GetClientsDetails;
        assert_eq!(class(a, 200, r#"{"result":"success"}"#), None);
        assert_eq!(class(a, 200, r#"{"status":"success"}"#), None);
        assert_eq!(
            class(a, 200, r#"{"result":"error","message":"Client Not Found"}"#),
            Some(Business)
        );
        assert_eq!(
            class(
                a,
                200,
                r#"{"status":"error","message":"Client ID Not Found"}"#
            ),
            Some(Business)
        );
        assert_eq!(
            class(
                a,
                200,
                r#"{"warning":"Invalid or Missing Payment Information - Please Reload and Try Again"}"#
            ),
            Some(Business)
        );
        assert_eq!(
            class(a, 200, r#"{"result":"success","status":"error"}"#),
            Some(Business)
        );
        assert_eq!(
            class(
                a,
                403,
                r#"{"result":"error","message":"Authentication Failed"}"#
            ),
            Some(Configuration)
        );
        assert_eq!(
            class(
                a,
                400,
                r#"{"result":"error","message":"Invalid IP 10.0.0.9"}"#
            ),
            Some(Configuration)
        );
        assert_eq!(
            class(a, 403, "<html><body>403 Forbidden</body></html>"),
            Some(Transient)
        );
        assert_eq!(class(a, 500, "<html>500</html>"), Some(Transient));
        assert_eq!(class(a, 200, r#"["success"]"#), Some(Transient));
        // Only the envelope's own fields decide; the rest is skipped, but must be JSON.
        assert_eq!(
            class(
                a,
                200,
                r#" {"client":{"status":"error","result":"error"},"result":"success","status":"Active","stats":[1,{"a":null}]}"#
            ),
            None
        );
        assert_eq!(
            class(a, 200, r#"{"result":"success","client":{"id":1}} trailing"#),
            Some(Transient)
        );
        assert_eq!(
            class(a, 200, r#"{"result":"success","client":{"id":1}"#),
            Some(Transient)
        );
        assert_eq!(
            class(Action::AddOrder, 500, "<html>500</html>"),
            Some(UnknownOutcome)
        );
        assert_eq!(
            class(
                Action::AddOrder,
                200,
                "Notice: undefined index {\"result\":"
            ),
            Some(UnknownOutcome)
        );
        assert_eq!(
            class(Action::AddOrder, 403, "<html>waf</html>"),
            Some(Transient)
        );
        assert_eq!(class(Action::AddOrder, 301, ""), Some(Configuration));
        assert_eq!(class(a, 302, "<html>moved</html>"), Some(Configuration));
    }

    #[test]
    fn error_message_is_kept() {
        let err = interpret(
            Action::AcceptOrder,
            200,
            br#"{"result":"error","message":"Order ID not found or Status not Pending"}"#,
        )
        .unwrap_err();
        assert!(err.is_order_not_pending());
        assert_eq!(err.action(), Some(Action::AcceptOrder));
    }
}
