//! WHMCS External API emulator: `POST /includes/api.php` on `127.0.0.1`.
//!
//! It reads the form as PHP's `$_POST` does ([`php::parse_form`]: `name[i]` arrays, a bare
//! repeated key keeps its last value, `+` is a space), checks the API credentials like WHMCS
//! (HTTP 403 + `{"result":"error","message":"Authentication Failed"}`), and applies WHMCS's
//! rules to seeded clients, products, orders and services: AddOrder validates the client and
//! the array parameters and creates a Pending order with Pending services whose custom fields
//! and config options are decoded from `customfields[i]`/`configoptions[i]`
//! (`unserialize(base64_decode(...))`); AcceptOrder works only on Pending orders; list actions
//! page with `limitstart`/`limitnum`. Replies copy WHMCS's inconsistent number types and its
//! `""` for empty lists.
//!
//! Every request is recorded (action and decoded parameters) for tests to inspect: the most
//! recent [`crate::DEFAULT_RECORD_LIMIT`] by default, see [`WhmcsSandbox::set_record_requests`]
//! and [`WhmcsSandbox::set_request_log_limit`]. Clients by email, and services and orders by
//! client, are indexed, so per-client calls stay O(log n) with 100,000+ records. Faults can
//! be injected per action: latency, an HTML HTTP 500, and "commit then drop the connection"
//! (the change is applied, then the TCP connection is closed with no reply at all).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use sandbox::whmcs::{Client, Fault, Product, WhmcsSandbox};
//! let whmcs = WhmcsSandbox::start().await?;
//! let client_id = whmcs.seed_client(Client::active("Ada", "ada@example.com"));
//! let pid = whmcs.seed_product(Product::new("VPS S"));
//! whmcs.inject_fault("AddOrder", Fault::CommitThenDrop, Some(1));
//! println!("{} {client_id} {pid}", whmcs.api_url());
//! # Ok(())
//! # }
//! ```

pub mod php;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State as AxumState};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt as _;

use php::{Array, Key, Value};

use crate::record_log::RecordLog;

/// The path WHMCS serves its External API on.
pub const API_PATH: &str = "/includes/api.php";

/// Credentials and settings of the emulated WHMCS.
#[derive(Debug, Clone)]
pub struct WhmcsSandboxConfig {
    /// API credential identifier.
    pub identifier: String,
    /// API credential secret.
    pub secret: String,
    /// `$api_access_key`; a matching `accesskey` skips the IP allow-list.
    pub access_key: Option<String>,
    /// Active payment gateways (AddOrder `paymentmethod`).
    pub payment_methods: Vec<String>,
}

impl Default for WhmcsSandboxConfig {
    fn default() -> Self {
        Self {
            identifier: "sandbox-identifier".to_owned(),
            secret: "sandbox-secret".to_owned(),
            access_key: None,
            payment_methods: vec![
                "banktransfer".to_owned(),
                "paypal".to_owned(),
                "mailin".to_owned(),
            ],
        }
    }
}

/// A WHMCS client (customer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Client id (assigned when seeded).
    pub id: u64,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Company name.
    pub company_name: String,
    /// Email.
    pub email: String,
    /// `Active`, `Inactive` or `Closed`.
    pub status: String,
    /// Client custom fields by id.
    pub custom_fields: BTreeMap<u64, String>,
}

impl Client {
    /// An Active client.
    pub fn active(first_name: &str, email: &str) -> Self {
        Self {
            id: 0,
            first_name: first_name.to_owned(),
            last_name: "Tester".to_owned(),
            company_name: String::new(),
            email: email.to_owned(),
            status: "Active".to_owned(),
            custom_fields: BTreeMap::new(),
        }
    }

    /// The same client with another status.
    pub fn with_status(mut self, status: &str) -> Self {
        status.clone_into(&mut self.status);
        self
    }
}

/// A product custom field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductCustomField {
    /// Custom field id (`tblcustomfields.id`, unique across products).
    pub id: u64,
    /// Field name.
    pub name: String,
    /// Whether AddOrder must carry a value.
    pub required: bool,
}

/// A configurable option of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductConfigOption {
    /// Configurable option id.
    pub id: u64,
    /// Option name.
    pub name: String,
    /// `dropdown`, `radio`, `yesno`, `quantity`, `text`.
    pub kind: String,
}

/// A product (what can be ordered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Product id, `pid` (assigned when seeded).
    pub id: u64,
    /// Name.
    pub name: String,
    /// Group name.
    pub group_name: String,
    /// Custom fields.
    pub custom_fields: Vec<ProductCustomField>,
    /// Configurable options.
    pub config_options: Vec<ProductConfigOption>,
    /// When set, the module's create action fails with this message (AcceptOrder with
    /// autosetup and ModuleCreate).
    pub module_error: Option<String>,
}

impl Product {
    /// A product without fields or options.
    pub fn new(name: &str) -> Self {
        Self {
            id: 0,
            name: name.to_owned(),
            group_name: "Servers".to_owned(),
            custom_fields: Vec::new(),
            config_options: Vec::new(),
            module_error: None,
        }
    }

    /// Adds a custom field.
    pub fn with_custom_field(mut self, id: u64, name: &str, required: bool) -> Self {
        self.custom_fields.push(ProductCustomField {
            id,
            name: name.to_owned(),
            required,
        });
        self
    }

    /// Adds a configurable option.
    pub fn with_config_option(mut self, id: u64, name: &str, kind: &str) -> Self {
        self.config_options.push(ProductConfigOption {
            id,
            name: name.to_owned(),
            kind: kind.to_owned(),
        });
        self
    }
}

/// An order.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// Order id.
    pub id: u64,
    /// Order number (random-looking, 10 digits).
    pub order_num: u64,
    /// Client id.
    pub client_id: u64,
    /// `Pending` or `Active`.
    pub status: String,
    /// Gateway.
    pub payment_method: String,
    /// Services created by the order, in line order.
    pub service_ids: Vec<u64>,
    /// Invoice id, 0 when `noinvoice` was set.
    pub invoice_id: u64,
    /// Whether `noemail` was truthy.
    pub no_email: bool,
    /// Whether AcceptOrder asked for welcome emails (`sendemail`).
    pub send_email: Option<bool>,
}

/// A service (a client's product).
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Service id (assigned when created).
    pub id: u64,
    /// Client id.
    pub client_id: u64,
    /// Order id (0 for seeded services).
    pub order_id: u64,
    /// Product id.
    pub product_id: u64,
    /// Billing cycle as sent.
    pub billing_cycle: String,
    /// Domain.
    pub domain: String,
    /// `Pending` or `Active`.
    pub status: String,
    /// Custom field values by field id, as decoded from `customfields[i]`.
    pub custom_fields: BTreeMap<u64, String>,
    /// Config option values by option id, as decoded from `configoptions[i]`.
    pub config_options: BTreeMap<u64, Value>,
    /// How many times the module's create ran successfully.
    pub module_creates: u32,
}

impl Service {
    /// A Pending service of `client_id` for `product_id`, for seeding.
    pub fn new(client_id: u64, product_id: u64) -> Self {
        Self {
            id: 0,
            client_id,
            order_id: 0,
            product_id,
            billing_cycle: "monthly".to_owned(),
            domain: String::new(),
            status: "Pending".to_owned(),
            custom_fields: BTreeMap::new(),
            config_options: BTreeMap::new(),
            module_creates: 0,
        }
    }

    /// The same service with custom field `id` set.
    pub fn with_custom_field(mut self, id: u64, value: &str) -> Self {
        self.custom_fields.insert(id, value.to_owned());
        self
    }
}

/// A request as the sandbox received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The `action` field as sent (empty if missing).
    pub action: String,
    /// `$_POST` as PHP would see it.
    pub params: Array,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The URL query string, if any.
    pub query: Option<String>,
}

impl RecordedRequest {
    /// The text of top-level parameter `name`.
    pub fn param(&self, name: &str) -> Option<String> {
        self.params.get_str(name).and_then(Value::as_text)
    }

    /// The element `name[index]` of an array parameter, as text.
    pub fn indexed(&self, name: &str, index: i64) -> Option<String> {
        self.params
            .get_str(name)
            .and_then(Value::as_array)
            .and_then(|a| a.get(&Key::Int(index)))
            .and_then(Value::as_text)
    }
}

/// A fault to inject into one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long before handling the request.
    Latency(Duration),
    /// Answer HTTP 500 with an HTML page, without handling the request.
    Html500,
    /// Handle the request (commit its changes), then close the connection without replying.
    CommitThenDrop,
}

struct FaultEntry {
    fault: Fault,
    remaining: Option<u32>,
}

/// The emulated installation. `clients`, `orders` and `services` change only through
/// [`State::insert_client`], [`State::insert_order`] and [`State::insert_service`] (or in ways
/// that leave the indexed fields alone: status, module creates), which keep the indexes in sync.
#[derive(Default)]
struct State {
    clients: BTreeMap<u64, Client>,
    products: BTreeMap<u64, Product>,
    orders: BTreeMap<u64, Order>,
    services: BTreeMap<u64, Service>,
    /// ASCII-lowercased email -> ids of the clients with it (WHMCS compares emails
    /// case-insensitively; seeding may repeat one).
    clients_by_email: HashMap<String, BTreeSet<u64>>,
    /// Client id -> ids of its services.
    services_by_client: HashMap<u64, BTreeSet<u64>>,
    /// Client id -> ids of its orders.
    orders_by_client: HashMap<u64, BTreeSet<u64>>,
    next_client: u64,
    next_product: u64,
    next_order: u64,
    next_service: u64,
    next_invoice: u64,
    requests: RecordLog<RecordedRequest>,
    faults: HashMap<String, Vec<FaultEntry>>,
    rate_faults: HashMap<String, Vec<(Fault, f64)>>,
    rng: Option<rand::rngs::StdRng>,
    ip_denied: bool,
    allowed_actions: Option<HashSet<String>>,
}

/// Removes `id` from the set under `key`, dropping the set when it empties.
fn unindex<K: std::hash::Hash + Eq>(index: &mut HashMap<K, BTreeSet<u64>>, key: &K, id: u64) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(&id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

impl State {
    /// Adds or replaces the client stored under `client.id`.
    fn insert_client(&mut self, client: Client) {
        let id = client.id;
        if let Some(old) = self.clients.get(&id) {
            let key = old.email.to_ascii_lowercase();
            unindex(&mut self.clients_by_email, &key, id);
        }
        self.clients_by_email
            .entry(client.email.to_ascii_lowercase())
            .or_default()
            .insert(id);
        self.clients.insert(id, client);
    }

    /// The client with the lowest id whose email equals `email` ignoring ASCII case.
    fn client_by_email(&self, email: &str) -> Option<&Client> {
        self.clients_by_email
            .get(&email.to_ascii_lowercase())
            .and_then(|ids| ids.first())
            .and_then(|id| self.clients.get(id))
    }

    /// Adds or replaces the service stored under `service.id`.
    fn insert_service(&mut self, service: Service) {
        let id = service.id;
        if let Some(old) = self.services.get(&id) {
            let key = old.client_id;
            unindex(&mut self.services_by_client, &key, id);
        }
        self.services_by_client
            .entry(service.client_id)
            .or_default()
            .insert(id);
        self.services.insert(id, service);
    }

    /// Adds or replaces the order stored under `order.id`.
    fn insert_order(&mut self, order: Order) {
        let id = order.id;
        if let Some(old) = self.orders.get(&id) {
            let key = old.client_id;
            unindex(&mut self.orders_by_client, &key, id);
        }
        self.orders_by_client
            .entry(order.client_id)
            .or_default()
            .insert(id);
        self.orders.insert(id, order);
    }

    /// The services of `client_id`, by id.
    fn services_of(&self, client_id: u64) -> impl Iterator<Item = &Service> {
        self.services_by_client
            .get(&client_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.services.get(id))
    }

    /// The orders of `client_id`, by id.
    fn orders_of(&self, client_id: u64) -> impl Iterator<Item = &Order> {
        self.orders_by_client
            .get(&client_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.orders.get(id))
    }
}

struct Shared {
    config: WhmcsSandboxConfig,
    state: Mutex<State>,
}

/// Per-connection context handed to the handler.
#[derive(Clone)]
struct Connection {
    peer: SocketAddr,
    kill: Arc<Notify>,
}

/// A running WHMCS emulator. Dropping it stops the server.
pub struct WhmcsSandbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for WhmcsSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhmcsSandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl WhmcsSandbox {
    /// Starts with [`WhmcsSandboxConfig::default`] on `127.0.0.1:0`.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(WhmcsSandboxConfig::default()).await
    }

    /// Starts with `config` on `127.0.0.1:0`.
    pub async fn start_with(config: WhmcsSandboxConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State::default()),
        });
        let router = Router::new()
            .route(API_PATH, any(api))
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(accept_loop(listener, router));
        Ok(Self { shared, addr, task })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port>/includes/api.php`, the value for `WHMCS_API_URL`.
    pub fn api_url(&self) -> String {
        format!("{}{API_PATH}", self.base_url())
    }

    /// The configuration (credentials for clients under test).
    pub fn config(&self) -> &WhmcsSandboxConfig {
        &self.shared.config
    }

    /// Adds a client, returning its new id.
    pub fn seed_client(&self, mut client: Client) -> u64 {
        let mut state = self.shared.state.lock();
        state.next_client += 1;
        client.id = state.next_client;
        state.insert_client(client);
        state.next_client
    }

    /// Adds a product, returning its new pid.
    pub fn seed_product(&self, mut product: Product) -> u64 {
        let mut state = self.shared.state.lock();
        state.next_product += 1;
        product.id = state.next_product;
        state.products.insert(product.id, product);
        state.next_product
    }

    /// Adds a service directly (not through an order), returning its new id.
    pub fn seed_service(&self, mut service: Service) -> u64 {
        let mut state = self.shared.state.lock();
        state.next_service += 1;
        service.id = state.next_service;
        state.insert_service(service);
        state.next_service
    }

    /// Changes a client's status.
    pub fn set_client_status(&self, client_id: u64, status: &str) {
        if let Some(client) = self.shared.state.lock().clients.get_mut(&client_id) {
            status.clone_into(&mut client.status);
        }
    }

    /// When `true`, calls without a valid access key get `Invalid IP 127.0.0.1`.
    pub fn set_ip_denied(&self, denied: bool) {
        self.shared.state.lock().ip_denied = denied;
    }

    /// Limits the credential to these actions (an API role); `None` allows all.
    pub fn set_allowed_actions(&self, actions: Option<&[&str]>) {
        self.shared.state.lock().allowed_actions =
            actions.map(|a| a.iter().map(|s| s.to_ascii_lowercase()).collect());
    }

    /// Injects `fault` into `action` (case-insensitive) for the next `times` calls, or for
    /// every call when `times` is `None`. Faults queue up in the order injected.
    pub fn inject_fault(&self, action: &str, fault: Fault, times: Option<u32>) {
        self.shared
            .state
            .lock()
            .faults
            .entry(action.to_ascii_lowercase())
            .or_default()
            .push(FaultEntry {
                fault,
                remaining: times,
            });
    }

    /// Injects `fault` into each call of `action` with `probability` (0.0..=1.0), drawn from a
    /// random generator seeded with `seed` so runs repeat. Queued faults of
    /// [`WhmcsSandbox::inject_fault`] take precedence.
    pub fn inject_fault_rate(&self, action: &str, fault: Fault, probability: f64, seed: u64) {
        use rand::SeedableRng;
        let mut state = self.shared.state.lock();
        if state.rng.is_none() {
            state.rng = Some(rand::rngs::StdRng::seed_from_u64(seed));
        }
        state
            .rate_faults
            .entry(action.to_ascii_lowercase())
            .or_default()
            .push((fault, probability.clamp(0.0, 1.0)));
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        let mut state = self.shared.state.lock();
        state.faults.clear();
        state.rate_faults.clear();
    }

    /// All clients.
    pub fn clients(&self) -> Vec<Client> {
        self.shared.state.lock().clients.values().cloned().collect()
    }

    /// All orders, by id.
    pub fn orders(&self) -> Vec<Order> {
        self.shared.state.lock().orders.values().cloned().collect()
    }

    /// One order.
    pub fn order(&self, id: u64) -> Option<Order> {
        self.shared.state.lock().orders.get(&id).cloned()
    }

    /// All services, by id.
    pub fn services(&self) -> Vec<Service> {
        self.shared
            .state
            .lock()
            .services
            .values()
            .cloned()
            .collect()
    }

    /// One service.
    pub fn service(&self, id: u64) -> Option<Service> {
        self.shared.state.lock().services.get(&id).cloned()
    }

    /// Every request received, oldest first: the most recent [`crate::DEFAULT_RECORD_LIMIT`]
    /// unless changed with [`WhmcsSandbox::set_request_log_limit`], none while recording is
    /// off.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().requests.to_vec()
    }

    /// Turns the recording of requests on (the default) or off; what was recorded stays.
    /// A long-running sandbox that nobody inspects should turn it off.
    pub fn set_record_requests(&self, record: bool) {
        self.shared.state.lock().requests.set_enabled(record);
    }

    /// Keeps at most `limit` recorded requests, dropping the oldest (0 records nothing).
    pub fn set_request_log_limit(&self, limit: usize) {
        self.shared.state.lock().requests.set_limit(limit);
    }

    /// The requests whose action matches `action` (case-insensitive).
    pub fn requests_for(&self, action: &str) -> Vec<RecordedRequest> {
        self.shared
            .state
            .lock()
            .requests
            .iter()
            .filter(|r| r.action.eq_ignore_ascii_case(action))
            .cloned()
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.state.lock().requests.clear();
    }
}

impl Drop for WhmcsSandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                connections.spawn(serve_connection(stream, peer, router.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one HTTP/1.1 connection; a handler can close it without a reply through
/// [`Connection::kill`] (dropping the hyper connection drops the socket).
async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, router: Router) {
    let kill = Arc::new(Notify::new());
    let connection = Connection {
        peer,
        kill: Arc::clone(&kill),
    };
    let service = hyper::service::service_fn(
        move |mut request: axum::extract::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(connection.clone());
            let router = router.clone();
            async move {
                let response: Result<Response, Infallible> = router.oneshot(request).await;
                response
            }
        },
    );
    let serving =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = serving => {}
        () = kill.notified() => {
            tracing::debug!(%peer, "whmcs sandbox dropped a connection on purpose");
        }
    }
}

/// An API reply: HTTP status and JSON body.
struct Reply {
    status: StatusCode,
    body: Json,
}

impl Reply {
    fn ok(body: Json) -> Self {
        Self {
            status: StatusCode::OK,
            body,
        }
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"result": "error", "message": message.into()}),
        }
    }

    fn business(message: impl Into<String>) -> Self {
        Self::error(StatusCode::OK, message)
    }
}

async fn api(
    AxumState(shared): AxumState<Arc<Shared>>,
    Extension(connection): Extension<Connection>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // PHP fills $_POST only from form bodies.
    let is_form = content_type.as_deref().is_some_and(|c| {
        c.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let post = if is_form {
        php::parse_form(&body)
    } else {
        Array::default()
    };
    let action = text(&post, "action");
    let action_key = action.to_ascii_lowercase();
    tracing::debug!(action = %action, "whmcs sandbox request");

    let fault = {
        let mut state = shared.state.lock();
        if state.requests.enabled() {
            state.requests.push(RecordedRequest {
                action: action.clone(),
                params: post.clone(),
                content_type,
                query: uri.query().map(str::to_owned),
            });
        }
        take_fault(&mut state, &action_key)
    };
    let mut drop_after = false;
    match fault {
        Some(Fault::Latency(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Html500) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><head><title>500 Internal Server Error</title></head><body><h1>Internal Server Error</h1></body></html>",
            )
                .into_response();
        }
        Some(Fault::CommitThenDrop) => drop_after = true,
        None => {}
    }

    let reply = handle(&shared, &connection, &post, &action_key);

    if drop_after {
        connection.kill.notify_one();
        // The connection task drops this future together with the socket.
        std::future::pending::<()>().await;
    }
    (reply.status, axum::Json(reply.body)).into_response()
}

fn take_fault(state: &mut State, action_key: &str) -> Option<Fault> {
    if let Some(queued) = take_queued_fault(state, action_key) {
        return Some(queued);
    }
    let State {
        rate_faults, rng, ..
    } = state;
    let rng = rng.as_mut()?;
    for (fault, p) in rate_faults.get(action_key)? {
        if rand::Rng::random::<f64>(rng) < *p {
            return Some(fault.clone());
        }
    }
    None
}

fn take_queued_fault(state: &mut State, action_key: &str) -> Option<Fault> {
    let queue = state.faults.get_mut(action_key)?;
    let entry = queue.first_mut()?;
    let fault = entry.fault.clone();
    if let Some(remaining) = entry.remaining.as_mut() {
        *remaining = remaining.saturating_sub(1);
        if *remaining == 0 {
            queue.remove(0);
        }
    }
    Some(fault)
}

fn handle(shared: &Shared, connection: &Connection, post: &Array, action: &str) -> Reply {
    let config = &shared.config;
    let mut state = shared.state.lock();

    let access_key_ok = config
        .access_key
        .as_deref()
        .is_some_and(|key| !key.is_empty() && text(post, "accesskey") == key);
    if state.ip_denied && !access_key_ok {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            format!("Invalid IP {}", connection.peer.ip()),
        );
    }
    let identifier = text(post, "identifier");
    let secret = text(post, "secret");
    if identifier.is_empty() || secret.is_empty() {
        return Reply::error(StatusCode::FORBIDDEN, "Invalid or missing credentials");
    }
    if identifier != config.identifier || secret != config.secret {
        return Reply::error(StatusCode::FORBIDDEN, "Authentication Failed");
    }
    if action.is_empty() {
        return Reply::error(StatusCode::BAD_REQUEST, "Empty action request");
    }
    if let Some(allowed) = &state.allowed_actions
        && !allowed.contains(action)
    {
        return Reply::error(
            StatusCode::FORBIDDEN,
            format!("Invalid Permissions: API action \"{action}\" is not allowed"),
        );
    }
    match action {
        "getclientsdetails" => get_clients_details(&state, post),
        "getclientsproducts" => get_clients_products(&state, post),
        "addorder" => add_order(&mut state, config, post),
        "acceptorder" => accept_order(&mut state, post),
        "getorders" => get_orders(&state, post),
        "modulecreate" => module_create(&mut state, post),
        "addclient" => add_client(&mut state, post),
        _ => Reply::business("Command Not Found"),
    }
}

// ---------------------------------------------------------------------------------------------
// parameter helpers

fn text(post: &Array, name: &str) -> String {
    post.get_str(name)
        .and_then(Value::as_text)
        .unwrap_or_default()
}

fn number(post: &Array, name: &str) -> Option<u64> {
    text(post, name).trim().parse().ok()
}

fn truthy(post: &Array, name: &str) -> bool {
    post.get_str(name).is_some_and(Value::truthy)
}

fn paging(post: &Array) -> (usize, usize) {
    let start = number(post, "limitstart").unwrap_or(0);
    let num = number(post, "limitnum").unwrap_or(25);
    (
        usize::try_from(start).unwrap_or(usize::MAX),
        usize::try_from(num).unwrap_or(usize::MAX),
    )
}

fn cycle_display(cycle: &str) -> String {
    let mut chars = cycle.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn display_value(value: &Value) -> String {
    match value {
        Value::Array(a) => a
            .get_str("qty")
            .and_then(Value::as_text)
            .unwrap_or_default(),
        other => other.as_text().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// actions

fn client_json(client: &Client) -> Json {
    let custom: Vec<Json> = client
        .custom_fields
        .iter()
        .map(|(id, value)| json!({"id": id, "value": value}))
        .collect();
    json!({
        "userid": client.id,
        "client_id": client.id,
        "id": client.id,
        "uuid": format!("00000000-0000-4000-8000-{:012}", client.id),
        "firstname": client.first_name,
        "lastname": client.last_name,
        "fullname": format!("{} {}", client.first_name, client.last_name),
        "companyname": client.company_name,
        "email": client.email,
        "status": client.status,
        "currency": 1,
        "currency_code": "USD",
        "groupid": 0,
        "notes": "",
        "customfields": custom,
    })
}

fn get_clients_details(state: &State, post: &Array) -> Reply {
    let email = text(post, "email");
    let client = match number(post, "clientid") {
        Some(id) => state.clients.get(&id),
        None if !email.is_empty() => state.client_by_email(&email),
        None => return Reply::business("Either clientid Or email Is Required"),
    };
    let Some(client) = client else {
        return Reply::business("Client Not Found");
    };
    let details = client_json(client);
    let mut body = json!({"result": "success", "client": details.clone()});
    // WHMCS also copies the client's fields to the top level (deprecated).
    if let (Some(top), Json::Object(fields)) = (body.as_object_mut(), details) {
        for (k, v) in fields {
            top.entry(k).or_insert(v);
        }
    }
    Reply::ok(body)
}

fn service_json(state: &State, service: &Service) -> Json {
    let product = state.products.get(&service.product_id);
    let custom: Vec<Json> = match product {
        Some(p) => p
            .custom_fields
            .iter()
            .map(|f| {
                json!({
                    "id": f.id,
                    "name": f.name,
                    "translated_name": f.name,
                    "value": service.custom_fields.get(&f.id).cloned().unwrap_or_default(),
                })
            })
            .collect(),
        // Fields of unknown products are still shown by id.
        None => service
            .custom_fields
            .iter()
            .map(|(id, v)| json!({"id": id, "name": "", "translated_name": "", "value": v}))
            .collect(),
    };
    // Fields set on the service but not defined on the product (seeded) are shown too.
    let mut custom = custom;
    if let Some(p) = product {
        for (id, v) in &service.custom_fields {
            if !p.custom_fields.iter().any(|f| f.id == *id) {
                custom.push(json!({"id": id, "name": "", "translated_name": "", "value": v}));
            }
        }
    }
    let options: Vec<Json> = service
        .config_options
        .iter()
        .map(|(id, value)| {
            let def = product.and_then(|p| p.config_options.iter().find(|o| o.id == *id));
            json!({
                "id": id,
                "option": def.map(|d| d.name.clone()).unwrap_or_default(),
                "type": def.map(|d| d.kind.clone()).unwrap_or_default(),
                "value": display_value(value),
            })
        })
        .collect();
    let order_num = state
        .orders
        .get(&service.order_id)
        .map_or(0, |o| o.order_num);
    json!({
        "id": service.id,
        "qty": 1,
        "clientid": service.client_id,
        "orderid": service.order_id,
        "ordernumber": order_num.to_string(),
        "pid": service.product_id,
        "regdate": "2026-01-01",
        "name": product.map(|p| p.name.clone()).unwrap_or_default(),
        "translated_name": product.map(|p| p.name.clone()).unwrap_or_default(),
        "groupname": product.map(|p| p.group_name.clone()).unwrap_or_default(),
        "domain": service.domain,
        "dedicatedip": "",
        "serverid": 0,
        "servername": "",
        "firstpaymentamount": "0.00",
        "recurringamount": "0.00",
        "paymentmethod": "banktransfer",
        "billingcycle": cycle_display(&service.billing_cycle),
        "nextduedate": "0000-00-00",
        "status": service.status,
        "username": "",
        "password": "",
        "subscriptionid": "",
        "notes": "",
        "customfields": if custom.is_empty() { json!("") } else { json!({"customfield": custom}) },
        "configoptions": if options.is_empty() { json!("") } else { json!({"configoption": options}) },
    })
}

fn get_clients_products(state: &State, post: &Array) -> Reply {
    let client_id = number(post, "clientid");
    let service_id = number(post, "serviceid");
    let pid = number(post, "pid");
    let domain = text(post, "domain");
    // The narrowest index first; the filters below still check every condition.
    let candidates: Box<dyn Iterator<Item = &Service>> = match (service_id, client_id) {
        (Some(id), _) => Box::new(state.services.get(&id).into_iter()),
        (None, Some(c)) => Box::new(state.services_of(c)),
        (None, None) => Box::new(state.services.values()),
    };
    let matching: Vec<&Service> = candidates
        .filter(|s| client_id.is_none_or(|c| s.client_id == c))
        .filter(|s| service_id.is_none_or(|id| s.id == id))
        .filter(|s| pid.is_none_or(|p| s.product_id == p))
        .filter(|s| domain.is_empty() || s.domain.eq_ignore_ascii_case(&domain))
        .collect();
    let (start, num) = paging(post);
    let page: Vec<Json> = matching
        .iter()
        .skip(start)
        .take(num)
        .map(|s| service_json(state, s))
        .collect();
    let echo = |name: &str| {
        let t = text(post, name);
        if t.is_empty() {
            Json::Null
        } else {
            Json::String(t)
        }
    };
    Reply::ok(json!({
        "result": "success",
        "clientid": echo("clientid"),
        "serviceid": echo("serviceid"),
        "pid": echo("pid"),
        "domain": echo("domain"),
        "totalresults": matching.len().to_string(),
        "startnumber": start,
        "numreturned": page.len(),
        "products": if page.is_empty() { json!("") } else { json!({"product": page}) },
    }))
}

/// One validated AddOrder line.
struct Line {
    product_id: u64,
    billing_cycle: String,
    domain: String,
    custom_fields: BTreeMap<u64, String>,
    config_options: BTreeMap<u64, Value>,
}

const ADD_ORDER_ARRAYS: &[&str] = &[
    "pid",
    "qty",
    "domain",
    "billingcycle",
    "domaintype",
    "regperiod",
    "customfields",
    "configoptions",
    "priceoverride",
    "addons",
];

fn id_keyed(array: &Array) -> BTreeMap<u64, Value> {
    array
        .0
        .iter()
        .filter_map(|(k, v)| match k {
            Key::Int(n) => u64::try_from(*n).ok().map(|id| (id, v.clone())),
            Key::Str(s) => s.parse::<u64>().ok().map(|id| (id, v.clone())),
        })
        .collect()
}

fn element<'a>(post: &'a Array, name: &str, key: &Key) -> Option<&'a Value> {
    post.get_str(name)
        .and_then(Value::as_array)
        .and_then(|a| a.get(key))
}

fn add_order(state: &mut State, config: &WhmcsSandboxConfig, post: &Array) -> Reply {
    let client = number(post, "clientid").and_then(|id| state.clients.get(&id));
    let Some(client) = client else {
        return Reply::business("Client ID Not Found");
    };
    if client.status.eq_ignore_ascii_case("closed") {
        return Reply::business("Unable to add order when client status is Closed");
    }
    let client_id = client.id;
    let payment_method = text(post, "paymentmethod");
    if !config.payment_methods.contains(&payment_method) {
        return Reply::business(format!(
            "Invalid Payment Method. Valid options include {}",
            config.payment_methods.join(",")
        ));
    }
    for name in ADD_ORDER_ARRAYS {
        if let Some(value) = post.get_str(name)
            && value.as_array().is_none()
        {
            return Reply::business(format!("Expecting parameter '{name}' to be an array"));
        }
    }
    let pids = post
        .get_str("pid")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut lines = Vec::new();
    for (key, pid) in &pids.0 {
        let Some(product) = pid
            .as_text()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .and_then(|id| state.products.get(&id))
        else {
            continue;
        };
        let custom_fields: BTreeMap<u64, String> = element(post, "customfields", key)
            .and_then(Value::as_text)
            .and_then(|b64| php::decode_serialized_base64(b64.as_bytes()))
            .map(|a| {
                id_keyed(&a)
                    .into_iter()
                    .map(|(id, v)| (id, v.as_text().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        for field in product.custom_fields.iter().filter(|f| f.required) {
            if custom_fields.get(&field.id).is_none_or(String::is_empty) {
                return Reply::business(format!(
                    "You did not provide required custom field value for {}",
                    field.name
                ));
            }
        }
        let config_options = element(post, "configoptions", key)
            .and_then(Value::as_text)
            .and_then(|b64| php::decode_serialized_base64(b64.as_bytes()))
            .map(|a| id_keyed(&a))
            .unwrap_or_default();
        let billing_cycle = element(post, "billingcycle", key)
            .and_then(Value::as_text)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "monthly".to_owned());
        lines.push(Line {
            product_id: product.id,
            billing_cycle,
            domain: element(post, "domain", key)
                .and_then(Value::as_text)
                .unwrap_or_default(),
            custom_fields,
            config_options,
        });
    }
    if lines.is_empty() {
        return Reply::business("No items added to cart so order cannot proceed");
    }

    state.next_order += 1;
    let order_id = state.next_order;
    let invoice_id = if truthy(post, "noinvoice") {
        0
    } else {
        state.next_invoice += 1;
        state.next_invoice
    };
    let mut service_ids = Vec::new();
    for line in lines {
        state.next_service += 1;
        let id = state.next_service;
        service_ids.push(id);
        state.insert_service(Service {
            id,
            client_id,
            order_id,
            product_id: line.product_id,
            billing_cycle: line.billing_cycle,
            domain: line.domain,
            status: "Pending".to_owned(),
            custom_fields: line.custom_fields,
            config_options: line.config_options,
            module_creates: 0,
        });
    }
    state.insert_order(Order {
        id: order_id,
        order_num: 1_000_000_000 + order_id * 7_919,
        client_id,
        status: "Pending".to_owned(),
        payment_method,
        service_ids: service_ids.clone(),
        invoice_id,
        no_email: truthy(post, "noemail"),
        send_email: None,
    });
    let ids: Vec<String> = service_ids.iter().map(u64::to_string).collect();
    Reply::ok(json!({
        "result": "success",
        "orderid": order_id.to_string(),
        "serviceids": ids.join(","),
        "addonids": "",
        "domainids": "",
        "invoiceid": invoice_id,
    }))
}

/// Runs the module create of `service_id`; `Err` carries the module's message.
fn run_module_create(state: &mut State, service_id: u64) -> Result<(), String> {
    let product_id = state
        .services
        .get(&service_id)
        .map(|s| s.product_id)
        .ok_or_else(|| "Service ID not found".to_owned())?;
    if let Some(message) = state
        .products
        .get(&product_id)
        .and_then(|p| p.module_error.clone())
    {
        return Err(message);
    }
    if let Some(service) = state.services.get_mut(&service_id) {
        "Active".clone_into(&mut service.status);
        service.module_creates += 1;
    }
    Ok(())
}

fn accept_order(state: &mut State, post: &Array) -> Reply {
    let pending = number(post, "orderid")
        .and_then(|id| state.orders.get(&id))
        .filter(|o| o.status.eq_ignore_ascii_case("pending"))
        .map(|o| (o.id, o.service_ids.clone()));
    let Some((order_id, service_ids)) = pending else {
        return Reply::business("Order ID not found or Status not Pending");
    };
    if let Some(order) = state.orders.get_mut(&order_id) {
        "Active".clone_into(&mut order.status);
        order.send_email = Some(truthy(post, "sendemail"));
    }
    if truthy(post, "autosetup") {
        for id in service_ids {
            if let Err(message) = run_module_create(state, id) {
                return Reply::business(message);
            }
        }
    }
    Reply::ok(json!({"result": "success"}))
}

fn order_json(state: &State, order: &Order) -> Json {
    let items: Vec<Json> = order
        .service_ids
        .iter()
        .filter_map(|id| state.services.get(id))
        .map(|s| {
            let product = state.products.get(&s.product_id);
            json!({
                "type": "product",
                "relid": s.id,
                "producttype": "Server/VPS",
                "product": product.map(|p| p.name.clone()).unwrap_or_default(),
                "domain": s.domain,
                "billingcycle": cycle_display(&s.billing_cycle),
                "amount": "$0.00 USD",
                "status": s.status,
            })
        })
        .collect();
    json!({
        "id": order.id,
        "ordernum": order.order_num,
        "userid": order.client_id,
        "contactid": 0,
        "requestor_id": 0,
        "admin_requestor_id": 0,
        "date": "2026-01-01 00:00:00",
        "promocode": "",
        "amount": "0.00",
        "paymentmethod": order.payment_method,
        "invoiceid": order.invoice_id,
        "status": order.status,
        "ipaddress": "127.0.0.1",
        "notes": "",
        "paymentstatus": if order.invoice_id == 0 { "" } else { "Unpaid" },
        "lineitems": if items.is_empty() { json!("") } else { json!({"lineitem": items}) },
    })
}

fn get_orders(state: &State, post: &Array) -> Reply {
    let id = number(post, "id");
    let user = number(post, "userid");
    let status = text(post, "status");
    // The narrowest index first; the filters below still check every condition.
    let candidates: Box<dyn Iterator<Item = &Order>> = match (id, user) {
        (Some(i), _) => Box::new(state.orders.get(&i).into_iter()),
        (None, Some(u)) => Box::new(state.orders_of(u)),
        (None, None) => Box::new(state.orders.values()),
    };
    let matching: Vec<&Order> = candidates
        .filter(|o| id.is_none_or(|i| o.id == i))
        .filter(|o| user.is_none_or(|u| o.client_id == u))
        .filter(|o| status.is_empty() || o.status.eq_ignore_ascii_case(&status))
        .collect();
    let (start, num) = paging(post);
    let page: Vec<Json> = matching
        .iter()
        .skip(start)
        .take(num)
        .map(|o| order_json(state, o))
        .collect();
    Reply::ok(json!({
        "result": "success",
        "totalresults": matching.len(),
        "startnumber": start,
        "numreturned": page.len(),
        "orders": if page.is_empty() { json!("") } else { json!({"order": page}) },
    }))
}

fn module_create(state: &mut State, post: &Array) -> Reply {
    let raw = match text(post, "serviceid") {
        s if s.is_empty() => text(post, "accountid"),
        s => s,
    };
    if raw.is_empty() {
        return Reply::business("Service ID is required");
    }
    let Some(service_id) = raw.trim().parse::<u64>().ok() else {
        return Reply::business("Service ID not found");
    };
    match run_module_create(state, service_id) {
        Ok(()) => Reply::ok(json!({"result": "success"})),
        Err(message) => Reply::business(message),
    }
}

fn add_client(state: &mut State, post: &Array) -> Reply {
    let email = text(post, "email");
    if !truthy(post, "skipvalidation") {
        for (field, what) in [
            ("firstname", "first name"),
            ("lastname", "last name"),
            ("email", "email address"),
            ("address1", "address (line 1)"),
            ("city", "city"),
            ("state", "state"),
            ("postcode", "postcode"),
            ("country", "country"),
            ("phonenumber", "phone number"),
        ] {
            if text(post, field).trim().is_empty() {
                return Reply::business(format!("You did not enter your {what}"));
            }
        }
    }
    if email.trim().is_empty() {
        return Reply::business("You did not enter your email address");
    }
    if state.client_by_email(&email).is_some() {
        return Reply::business("A user already exists with that email address");
    }
    // A single base64 string; an array (`customfields[0]`) is not understood.
    let custom_fields = match post.get_str("customfields") {
        Some(Value::Str(b64)) => php::decode_serialized_base64(b64)
            .map(|a| {
                id_keyed(&a)
                    .into_iter()
                    .map(|(id, v)| (id, v.as_text().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default(),
        _ => BTreeMap::new(),
    };
    state.next_client += 1;
    let id = state.next_client;
    state.insert_client(Client {
        id,
        first_name: text(post, "firstname"),
        last_name: text(post, "lastname"),
        company_name: text(post, "companyname"),
        email,
        status: "Active".to_owned(),
        custom_fields,
    });
    Reply::ok(json!({"result": "success", "clientid": id.to_string()}))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// 200 clients (one repeating another's email in other case), services and orders of
    /// clients spread out over the id space.
    fn busy_state() -> State {
        let mut state = State::default();
        for n in 1..=200u64 {
            state.next_client += 1;
            let mut client = Client::active(&format!("C{n}"), &format!("c{n}@Example.com"));
            client.id = state.next_client;
            state.insert_client(client);
        }
        state.next_client += 1;
        let mut twin = Client::active("Twin", "C17@EXAMPLE.com");
        twin.id = state.next_client;
        state.insert_client(twin);
        for pid in 1..=3u64 {
            let mut product = Product::new(&format!("P{pid}"));
            product.id = pid;
            state.products.insert(pid, product);
        }
        for k in 0..900u64 {
            state.next_service += 1;
            let mut service = Service::new((k * 37) % 201 + 1, k % 3 + 1);
            service.id = state.next_service;
            service.domain = format!("d{}.example", k % 4);
            state.insert_service(service);
        }
        for k in 0..500u64 {
            state.next_order += 1;
            let id = state.next_order;
            state.insert_order(Order {
                id,
                order_num: id,
                client_id: (k * 53) % 201 + 1,
                status: if k % 2 == 0 { "Pending" } else { "Active" }.to_owned(),
                payment_method: "banktransfer".to_owned(),
                service_ids: Vec::new(),
                invoice_id: 0,
                no_email: false,
                send_email: None,
            });
        }
        state
    }

    fn form(pairs: &[(&str, String)]) -> Array {
        let mut body = String::from("limitnum=100000");
        for (k, v) in pairs {
            body.push_str(&format!("&{k}={v}"));
        }
        php::parse_form(body.as_bytes())
    }

    fn ids_of(list: &Json, key: &str, id: &str) -> Vec<u64> {
        match list {
            Json::String(s) if s.is_empty() => Vec::new(),
            other => other[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e[id].as_u64().unwrap())
                .collect(),
        }
    }

    #[test]
    fn indexed_clients_products_answer_like_a_scan() {
        let state = busy_state();
        let scan = |c: Option<u64>, s: Option<u64>, p: Option<u64>, d: &str| -> Vec<u64> {
            state
                .services
                .values()
                .filter(|x| c.is_none_or(|c| x.client_id == c))
                .filter(|x| s.is_none_or(|s| x.id == s))
                .filter(|x| p.is_none_or(|p| x.product_id == p))
                .filter(|x| d.is_empty() || x.domain.eq_ignore_ascii_case(d))
                .map(|x| x.id)
                .collect()
        };
        /// `clientid`, `serviceid`, `pid`, `domain`.
        type Case<'a> = (Option<u64>, Option<u64>, Option<u64>, &'a str);
        let mut cases: Vec<Case<'_>> = Vec::new();
        for c in [1, 2, 17, 100, 201, 202, 999] {
            cases.push((Some(c), None, None, ""));
            cases.push((Some(c), None, Some(2), ""));
            cases.push((Some(c), None, None, "D1.example"));
        }
        for s in [1, 450, 900, 901] {
            cases.push((None, Some(s), None, ""));
            cases.push((Some(state.services[&450].client_id), Some(s), None, ""));
        }
        cases.push((None, None, Some(3), ""));
        cases.push((None, None, None, "d2.example"));
        cases.push((None, None, None, ""));
        let mut nonempty = 0;
        for (c, s, p, d) in cases {
            let mut pairs = Vec::new();
            let mut add = |k: &'static str, v: Option<u64>| {
                if let Some(v) = v {
                    pairs.push((k, v.to_string()));
                }
            };
            add("clientid", c);
            add("serviceid", s);
            add("pid", p);
            if !d.is_empty() {
                pairs.push(("domain", d.to_owned()));
            }
            let reply = get_clients_products(&state, &form(&pairs));
            let want = scan(c, s, p, d);
            let got = ids_of(&reply.body["products"], "product", "id");
            assert_eq!(got, want, "{c:?} {s:?} {p:?} {d:?}");
            assert_eq!(reply.body["totalresults"], want.len().to_string());
            nonempty += usize::from(!want.is_empty());
        }
        assert!(nonempty > 10);
        // Paging within one client's services keeps the id order.
        let all = scan(Some(17), None, None, "");
        assert!(all.len() > 3);
        let post = php::parse_form(b"clientid=17&limitstart=1&limitnum=2");
        let reply = get_clients_products(&state, &post);
        assert_eq!(ids_of(&reply.body["products"], "product", "id"), all[1..3]);
        assert_eq!(reply.body["totalresults"], all.len().to_string());
    }

    #[test]
    fn indexed_get_orders_answer_like_a_scan() {
        let state = busy_state();
        let scan = |i: Option<u64>, u: Option<u64>, st: &str| -> Vec<u64> {
            state
                .orders
                .values()
                .filter(|o| i.is_none_or(|i| o.id == i))
                .filter(|o| u.is_none_or(|u| o.client_id == u))
                .filter(|o| st.is_empty() || o.status.eq_ignore_ascii_case(st))
                .map(|o| o.id)
                .collect()
        };
        let mut cases: Vec<(Option<u64>, Option<u64>, &str)> = Vec::new();
        for i in [1, 2, 250, 500, 501] {
            cases.push((Some(i), None, ""));
            cases.push((Some(i), Some(state.orders[&250].client_id), ""));
        }
        for u in [1, 54, 107, 201, 300] {
            cases.push((None, Some(u), ""));
            cases.push((None, Some(u), "pending"));
        }
        cases.push((None, None, "Active"));
        cases.push((None, None, ""));
        for (i, u, st) in cases {
            let mut pairs = Vec::new();
            if let Some(i) = i {
                pairs.push(("id", i.to_string()));
            }
            if let Some(u) = u {
                pairs.push(("userid", u.to_string()));
            }
            if !st.is_empty() {
                pairs.push(("status", st.to_owned()));
            }
            let reply = get_orders(&state, &form(&pairs));
            let want = scan(i, u, st);
            assert_eq!(
                ids_of(&reply.body["orders"], "order", "id"),
                want,
                "{i:?} {u:?} {st}"
            );
            assert_eq!(reply.body["totalresults"], want.len());
        }
    }

    #[test]
    fn new_orders_services_and_clients_are_indexed() {
        let mut state = busy_state();
        let config = WhmcsSandboxConfig::default();
        let post = php::parse_form(
            b"clientid=42&paymentmethod=banktransfer&pid[0]=1&pid[1]=2&domain[1]=x.example",
        );
        let reply = add_order(&mut state, &config, &post);
        let order_id: u64 = reply.body["orderid"].as_str().unwrap().parse().unwrap();
        let by_id = get_orders(&state, &form(&[("id", order_id.to_string())]));
        assert_eq!(ids_of(&by_id.body["orders"], "order", "userid"), vec![42]);
        let by_user = get_orders(&state, &form(&[("userid", "42".to_owned())]));
        assert_eq!(
            ids_of(&by_user.body["orders"], "order", "id").last(),
            Some(&order_id)
        );
        let services = get_clients_products(&state, &form(&[("clientid", "42".to_owned())]));
        let ids = ids_of(&services.body["products"], "product", "id");
        assert_eq!(
            ids[ids.len() - 2..],
            state.orders[&order_id].service_ids[..]
        );
        let accept = accept_order(&mut state, &form(&[("orderid", order_id.to_string())]));
        assert_eq!(accept.body["result"], "success");
        assert_eq!(state.orders_of(42).last().unwrap().status, "Active");

        // Emails match ignoring ASCII case; the lowest id wins when repeated.
        let details =
            get_clients_details(&state, &form(&[("email", "C17@example.COM".to_owned())]));
        assert_eq!(details.body["client"]["id"], 17);
        let signup = |email: &str| {
            php::parse_form(format!("skipvalidation=1&firstname=N&email={email}").as_bytes())
        };
        let dup = add_client(&mut state, &signup("c5@EXAMPLE.COM"));
        assert_eq!(
            dup.body["message"],
            "A user already exists with that email address"
        );
        let added = add_client(&mut state, &signup("New@Example.com"));
        let new_id: u64 = added.body["clientid"].as_str().unwrap().parse().unwrap();
        let found = get_clients_details(&state, &form(&[("email", "new@example.com".to_owned())]));
        assert_eq!(found.body["client"]["id"], new_id);
        let missing =
            get_clients_details(&state, &form(&[("email", "nobody@example.com".to_owned())]));
        assert_eq!(missing.body["message"], "Client Not Found");
    }
}
