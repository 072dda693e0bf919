//! The HTTP server: the [`WhmcsSandbox`] handle (seeding, settings, inspection), the accept
//! loop, connections that a fault can drop without a reply, and the API endpoint's checks of
//! IP, credentials and permissions before an action runs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State as AxumState};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt as _;

use super::actions::{self, Reply, text};
use super::faults::{Fault, take_fault};
use super::model::{Client, Order, Product, Service};
use super::php::{self, Array, Key, Value};
use super::state::State;

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
    /// Active payment gateways by module name (AddOrder `paymentmethod`, GetPaymentMethods;
    /// `banktransfer`, `paypal`, `mailin` and `stripe` get their WHMCS display names, any other
    /// module is shown under its own name).
    pub payment_methods: Vec<String>,
    /// More `(identifier, secret)` pairs accepted besides the main one: a credential per
    /// caller (one per provisioner instance), so that the request log tells who sent what.
    pub extra_credentials: Vec<(String, String)>,
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
            extra_credentials: Vec::new(),
        }
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
    /// The fault injected into this request, if any.
    pub fault: Option<Fault>,
    /// When it arrived.
    pub received_at: std::time::SystemTime,
}

impl RecordedRequest {
    /// The text of top-level parameter `name`.
    pub fn param(&self, name: &str) -> Option<String> {
        self.params.get_str(name).and_then(Value::as_text)
    }

    /// The API credential identifier it was sent with (who sent it).
    pub fn identifier(&self) -> Option<String> {
        self.param("identifier")
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

/// What the handle and the request handlers share.
pub(super) struct Shared {
    pub(super) config: WhmcsSandboxConfig,
    pub(super) state: Mutex<State>,
    /// Bumped by [`WhmcsSandbox::release_holds`]: every hold under way ends at once.
    releases: tokio::sync::watch::Sender<u64>,
}

/// Per-connection context handed to the handler.
#[derive(Clone)]
struct Connection {
    peer: SocketAddr,
    kill: Arc<Notify>,
}

/// A running WHMCS emulator. Dropping it stops the server.
pub struct WhmcsSandbox {
    pub(super) shared: Arc<Shared>,
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
            releases: tokio::sync::watch::Sender::new(0),
        });
        let router = super::admin::routes()
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

    /// Makes the server module of product `pid` fail every create with `message` (`None`:
    /// succeed again), as a provisioning module answers AcceptOrder.
    pub fn set_module_error(&self, pid: u64, message: Option<&str>) {
        if let Some(product) = self.shared.state.lock().products.get_mut(&pid) {
            product.module_error = message.map(str::to_owned);
        }
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

    /// Ends every [`Fault::HoldThenCommit`] under way now: each commits at once, as if its
    /// time were up. A hold whose request is already in [`WhmcsSandbox::requests`] is
    /// released for sure; later holds run their full time.
    pub fn release_holds(&self) {
        self.shared.releases.send_modify(|n| *n += 1);
    }

    /// How many calls a [`Fault::HoldThenCommit`] holds right now (0: every held call has
    /// committed or been refused).
    pub fn holding(&self) -> usize {
        self.shared.state.lock().holding
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

    let (fault, release) = {
        let mut state = shared.state.lock();
        let fault = take_fault(&mut state, &action_key);
        // Before the request is visible in the log, so that a release after a test saw it
        // reaches this hold.
        let release = shared.releases.subscribe();
        if matches!(fault, Some(Fault::HoldThenCommit(_))) {
            state.holding += 1;
        }
        if state.requests.enabled() {
            state.requests.push(RecordedRequest {
                action: action.clone(),
                params: post.clone(),
                content_type,
                query: uri.query().map(str::to_owned),
                fault: fault.clone(),
                received_at: std::time::SystemTime::now(),
            });
        }
        (fault, release)
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
        Some(Fault::HoldThenCommit(delay)) => {
            // A task of its own: a client that gives up drops this handler, not the commit.
            let (shared, connection) = (Arc::clone(&shared), connection.clone());
            let held = tokio::spawn(async move {
                let hold = Hold { delay, release };
                let reply = hold_then_commit(&shared, &connection, &post, &action_key, hold).await;
                let mut state = shared.state.lock();
                state.holding = state.holding.saturating_sub(1);
                reply
            });
            return match held.await {
                Ok(reply) => (reply.status, axum::Json(reply.body)).into_response(),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            };
        }
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

/// How long a held action waits, unless released first.
struct Hold {
    delay: std::time::Duration,
    release: tokio::sync::watch::Receiver<u64>,
}

/// A held action: what WHMCS reads when the request arrives is read at once (AcceptOrder
/// refuses an order that is not Pending right away), then nothing is held, not even a lock,
/// for `delay` (a module call, a slow table), then the action commits. Other actions, on
/// this order too, run meanwhile and see the state from before the commit.
async fn hold_then_commit(
    shared: &Shared,
    connection: &Connection,
    post: &Array,
    action: &str,
    mut hold: Hold,
) -> Reply {
    let accept = if action == "acceptorder" {
        let state = shared.state.lock();
        if let Some(refused) = refuse(shared, &state, connection, post, action) {
            return refused;
        }
        match actions::accept_start(&state, post) {
            Ok(start) => Some(start),
            Err(refused) => return refused,
        }
    } else {
        None
    };
    tokio::select! {
        () = tokio::time::sleep(hold.delay) => {}
        // `WhmcsSandbox::release_holds` (the sender lives in `shared`: no error while we run).
        _ = hold.release.changed() => {}
    }
    match accept {
        Some(start) => actions::accept_commit(&mut shared.state.lock(), start, post),
        None => handle(shared, connection, post, action),
    }
}

fn handle(shared: &Shared, connection: &Connection, post: &Array, action: &str) -> Reply {
    let mut state = shared.state.lock();
    if let Some(refused) = refuse(shared, &state, connection, post, action) {
        return refused;
    }
    actions::dispatch(&mut state, &shared.config, post, action)
}

/// The answer WHMCS gives before it runs an action: a denied IP, bad credentials, no action,
/// an action the credential's API role does not allow. `None`: the action may run.
fn refuse(
    shared: &Shared,
    state: &State,
    connection: &Connection,
    post: &Array,
    action: &str,
) -> Option<Reply> {
    let config = &shared.config;
    let access_key_ok = config
        .access_key
        .as_deref()
        .is_some_and(|key| !key.is_empty() && text(post, "accesskey") == key);
    if state.ip_denied && !access_key_ok {
        return Some(Reply::error(
            StatusCode::BAD_REQUEST,
            format!("Invalid IP {}", connection.peer.ip()),
        ));
    }
    let identifier = text(post, "identifier");
    let secret = text(post, "secret");
    if identifier.is_empty() || secret.is_empty() {
        return Some(Reply::error(
            StatusCode::FORBIDDEN,
            "Invalid or missing credentials",
        ));
    }
    let known = (identifier == config.identifier && secret == config.secret)
        || config
            .extra_credentials
            .iter()
            .any(|(i, s)| *i == identifier && *s == secret);
    if !known {
        return Some(Reply::error(StatusCode::FORBIDDEN, "Authentication Failed"));
    }
    if action.is_empty() {
        return Some(Reply::error(
            StatusCode::BAD_REQUEST,
            "Empty action request",
        ));
    }
    if let Some(allowed) = &state.allowed_actions
        && !allowed.contains(action)
    {
        return Some(Reply::error(
            StatusCode::FORBIDDEN,
            format!("Invalid Permissions: API action \"{action}\" is not allowed"),
        ));
    }
    None
}
