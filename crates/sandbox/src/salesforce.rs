//! Salesforce emulator: the OAuth 2.0 JWT bearer token endpoint, REST query and Order PATCH.
//!
//! [`SalesforceSandbox::start`] binds `127.0.0.1:0` and serves, until the handle is dropped:
//!
//! - `POST /services/oauth2/token`: checks the assertion like Salesforce (app by `iss`, RS256
//!   signature against [`SalesforceConfig::public_key_pem`], `aud`, `exp`, user by `sub`) and
//!   answers the documented `{"error", "error_description"}` JSON on failure. Tokens live for
//!   [`SalesforceConfig::token_lifetime`]; afterwards REST answers 401 `INVALID_SESSION_ID`.
//! - `GET /services/data/{version}/query?q=`: the provisioner's Order query (`sf-rest`'s
//!   `ORDER_QUERY`, recognised by its text) and the reconcile sweep's approved-Orders query
//!   (with `nextRecordsUrl` paging), answered from the in-memory org in Salesforce's JSON shape.
//! - `PATCH /services/data/{version}/sobjects/Order/{id}`: validates the `Status` picklist and
//!   the writable fields, applies [`SalesforceConfig::status_rules`] (validation rules), answers
//!   204, records every write.
//! - `GET` and `POST /services/oauth2/userinfo` with `Authorization: Bearer`: the token's user
//!   (`sub`, `user_id`, `organization_id` matching the token response's `id` URL,
//!   `preferred_username`, `urls` with `{version}` placeholders, ...); a missing token is
//!   403 `Missing_OAuth_Token`, an unknown or expired one 403 `Bad_OAuth_Token` (plain text),
//!   as Salesforce answers on this endpoint (not the REST API's 401).
//! - `GET /services/data/{version}/sobjects/{sObject}/describe` for `Order`, `OrderItem`,
//!   `Account`, `Product2` and `PricebookEntry`: a subset of the DescribeSObjectResult (`name`,
//!   `label`, `queryable`, `createable`, `updateable`, `childRelationships`, `fields[]` with
//!   `name`, `type`, `length`, `createable`, `updateable`, `nillable`, `custom`, `unique`,
//!   `externalId`, `picklistValues`, `referenceTo`, `relationshipName`); the Order `Status`
//!   picklist lists [`SalesforceConfig::statuses`]. Any other sObject is 404 `NOT_FOUND`.
//!   [`SalesforceSandbox::remove_field`] and [`SalesforceSandbox::set_updateable`] change what
//!   the integration user sees; SOQL and PATCH follow (`INVALID_FIELD`,
//!   `INVALID_FIELD_FOR_INSERT_UPDATE`).
//! - For the order intake: the queries `SELECT Id, UnitPrice, Product2.WHMCS_Product_Id__c FROM
//!   PricebookEntry WHERE Pricebook2Id = '..' AND IsActive = true AND Product2.WHMCS_Product_Id__c
//!   IN (..)` (records carry a nested `Product2` with its own `attributes`), `SELECT Id,
//!   Customer_Number__c FROM Account WHERE Id = '..'` and `SELECT Id, OrderNumber, Status FROM
//!   Order WHERE Portal_Request_Id__c = '..'`; and `POST /services/data/{version}/composite`
//!   (`{"allOrNone", "compositeRequest": [..]}`, at most 25 subrequests) creating Orders and
//!   OrderItems (`POST .../sobjects/Order` and `.../sobjects/OrderItem`, `@{ref.id}` references).
//!   It answers 200 `{"compositeResponse": [{body, httpHeaders, httpStatusCode, referenceId}]}`;
//!   with `allOrNone` one failure rolls everything back: the failing subrequest carries its
//!   `[{message, errorCode, fields}]` (`REQUIRED_FIELD_MISSING`, `DUPLICATE_VALUE` for a second
//!   `Portal_Request_Id__c`, `FIELD_INTEGRITY_EXCEPTION` for a price book entry that is unknown,
//!   inactive or of another price book, ...), every other one `PROCESSING_HALTED` (400). A
//!   malformed request or more than 25 subrequests is refused as a whole (400, nothing run).
//!   Products and price books are seeded with [`SalesforceSandbox::seed_product`].
//!
//! - `GET` and `POST /sandbox/orders/{id}`: the sandbox's own admin route, not a Salesforce
//!   API (no token; the server only listens on loopback). `GET` answers the Order as stored;
//!   `POST` with a JSON body `{"status": "Approved", "publish": true}` (both optional) sets the
//!   `Status` like [`SalesforceSandbox::set_order_status`] and, with `publish`, publishes a new
//!   `OrderProvisionRequested__e` for the Order (a new event id) on the Pub/Sub sandbox given to
//!   [`SalesforceSandbox::attach_pubsub`], as the approval Flow would. It answers
//!   `{"order": {..}, "published": {"eventId", "replayId"} | null}` (`replayId` in base64);
//!   errors are `{"error": <code>, "message": ..}` with 400 (`invalid_request`,
//!   `invalid_status`), 404 (`unknown_order`), 409 (`no_pubsub`: nothing attached),
//!   422 (`no_customer_number`) or 500 (`publish_failed`). Checks come first: a refused
//!   request changes nothing.
//! - `GET /sandbox/patches` (admin route too): the recorded PATCHes, oldest first:
//!   `{"patches": [{"orderId", "username", "status", "body", "atMs"}]}`, `username` being the
//!   user whose token sent it (with several [`SalesforceConfig::usernames`], who wrote what).
//! - `GET /sandbox/stats[?latencies=true]` (admin route too): [`ActivationStats`] as
//!   `{"activated", "published", "latencies", "p50Ms", "p99Ms", "maxMs"}`: how many Orders a
//!   PATCH moved to [`ACTIVATED_STATUS`], and the time from each one's last publish (by the
//!   admin route, or noted with [`SalesforceSandbox::note_published`]) to that PATCH. Kept
//!   whether or not PATCHes are recorded; the percentiles (a sort) only when asked for.
//!
//! Every REST answer carries `Sforce-Limit-Info: api-usage=<used>/<limit>`. [`Faults`] injects
//! latency, 5xx/503, Salesforce error bodies and dropped connections per [`Route`];
//! [`SalesforceSandbox::pause`] holds requests at the door so tests can line up concurrency
//! without sleeping.
//!
//! ```no_run
//! use sandbox::salesforce::{KeyPair, SalesforceConfig, SalesforceSandbox, SfOrder, salesforce_id};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // A fresh key pair for the connected app: no key is built into the sandbox.
//! let keys = KeyPair::generate()?;
//! let sf = SalesforceSandbox::start(SalesforceConfig::trusting(keys.public_key_pem())).await?;
//! let order_id = salesforce_id("801", 1);
//! sf.insert_order(SfOrder::new(order_id.clone(), "Approved"));
//! // point SF_LOGIN_URL at sf.base_url(), sign with the private key of the trusted pair ...
//! assert!(sf.patches().is_empty());
//! # Ok(()) }
//! ```

mod activations;
mod fault;
mod key_pair;
mod oauth;
mod org;
mod schema;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use jsonwebtoken::DecodingKey;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

pub use activations::{ACTIVATED_STATUS, ActivationStats};
pub use fault::{FaultKind, Faults, Route, Trigger};
pub use key_pair::{KEY_BITS, KeyPair, KeyPairError};
pub use org::{
    RecordedPatch, SfAccount, SfOrder, SfOrderItem, SfOrderItemPrice, SfPricebookEntry, SfProduct,
    salesforce_id,
};

use activations::Activations;
use org::{ApiError, OrgData};

use crate::pubsub::{PubSubSandboxError, PublishedEvent, Publisher};

/// The connected app, users and org the sandbox emulates.
#[derive(Clone, Debug)]
pub struct SalesforceConfig {
    /// The connected app's consumer key (expected JWT `iss`).
    pub client_id: String,
    /// Pre-authorised usernames (accepted JWT `sub`); anybody else gets
    /// `user hasn't approved this consumer`.
    pub usernames: Vec<String>,
    /// Accepted JWT `aud` values besides the sandbox's own base URL, which is always accepted.
    pub audiences: Vec<String>,
    /// The certificate's public key, PEM, that assertions must verify with. Empty (the
    /// default) trusts no key: every assertion is refused as `invalid assertion`. Use
    /// [`SalesforceConfig::trusting`] with a [`KeyPair`] (or a test key) to accept tokens.
    pub public_key_pem: String,
    /// How long an issued access token works.
    pub token_lifetime: Duration,
    /// Tolerance for an `exp` slightly in the past.
    pub assertion_leeway: Duration,
    /// The org id (18 characters) in token responses.
    pub org_id: String,
    /// Allowed values of the Order `Status` picklist.
    pub statuses: Vec<String>,
    /// The daily API request limit shown in `Sforce-Limit-Info`.
    pub api_limit: u64,
    /// Records per query page before `nextRecordsUrl` is used (Salesforce: 2000).
    pub query_page_size: usize,
    /// Validation rules on the Order `Status`, as the provisioner's Salesforce setup installs
    /// them: by default, [`StatusRule::provisioning`] and [`StatusRule::failed`].
    pub status_rules: Vec<StatusRule>,
}

/// A validation rule on Order: a PATCH may change `Status` to [`StatusRule::status`] only
/// from one of [`StatusRule::from`]; a PATCH that leaves it as it is passes. Otherwise 400
/// `FIELD_CUSTOM_VALIDATION_EXCEPTION`, nothing written: the compare-and-set that keeps a
/// writer from overwriting a change it has not seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRule {
    /// The guarded status.
    pub status: String,
    /// The statuses it may be reached from.
    pub from: Vec<String>,
}

impl StatusRule {
    /// `Provisioning` only from `Approved` (or `Provisioning Failed`, which an operator's
    /// retry provisions again): a withdrawal that lands between the provisioner's check and
    /// its PATCH is not overwritten.
    pub fn provisioning() -> Self {
        Self {
            status: "Provisioning".into(),
            from: vec!["Approved".into(), "Provisioning Failed".into()],
        }
    }

    /// `Provisioning Failed` only from `Approved` or `Provisioning`: a failure that finds the
    /// Order withdrawn (or provisioned) meanwhile does not overwrite that status.
    pub fn failed() -> Self {
        Self {
            status: "Provisioning Failed".into(),
            from: vec!["Approved".into(), "Provisioning".into()],
        }
    }
}

impl Default for SalesforceConfig {
    fn default() -> Self {
        Self {
            client_id: "3MVG9SANDBOX.client.id".into(),
            usernames: vec!["integration@example.com".into()],
            audiences: vec![
                "https://login.salesforce.com".into(),
                "https://test.salesforce.com".into(),
            ],
            public_key_pem: String::new(),
            token_lifetime: Duration::from_secs(2 * 60 * 60),
            assertion_leeway: Duration::ZERO,
            org_id: salesforce_id("00D", 1),
            statuses: [
                "Draft",
                "Pending Review",
                "Approved",
                "Provisioning",
                "Activated",
                "Provisioning Failed",
            ]
            .map(String::from)
            .to_vec(),
            api_limit: 15_000,
            query_page_size: 2000,
            status_rules: vec![StatusRule::provisioning(), StatusRule::failed()],
        }
    }
}

impl SalesforceConfig {
    /// The default connected app, users and org, trusting `public_key_pem` (e.g.
    /// [`KeyPair::public_key_pem`] of a freshly generated pair).
    pub fn trusting(public_key_pem: impl Into<String>) -> Self {
        Self {
            public_key_pem: public_key_pem.into(),
            ..Self::default()
        }
    }
}

/// One request to the token endpoint, as received.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRequest {
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The form's `grant_type`.
    pub grant_type: Option<String>,
    /// The form's `assertion` (the signed JWT).
    pub assertion: Option<String>,
    /// `Ok(username)` or the OAuth `error_description` answered.
    pub outcome: Result<String, String>,
}

/// Which access tokens the sandbox has issued and whether they still work; cheap to clone,
/// for other emulators (Pub/Sub) that accept the same tokens.
#[derive(Clone, Debug, Default)]
pub struct TokenChecker {
    tokens: Arc<Mutex<HashMap<String, Instant>>>,
}

impl TokenChecker {
    /// Whether `token` was issued by this sandbox and has not expired.
    pub fn is_valid(&self, token: &str) -> bool {
        self.tokens
            .lock()
            .get(token)
            .is_some_and(|expires| Instant::now() < *expires)
    }
}

struct Gate {
    paused: watch::Sender<bool>,
    waiting: watch::Sender<usize>,
}

impl Gate {
    fn new() -> Self {
        Self {
            paused: watch::Sender::new(false),
            waiting: watch::Sender::new(0),
        }
    }
}

/// Why [`SalesforceSandbox::set_order_status`] or [`SalesforceSandbox::publish_order_event`]
/// changed nothing (the admin route answers each with its own status code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrderChangeError {
    /// No Order has this id (15 or 18 characters).
    #[error("no order {0}")]
    UnknownOrder(String),
    /// The status is not a value of [`SalesforceConfig::statuses`].
    #[error("status `{0}` is not a value of the order status picklist")]
    InvalidStatus(String),
    /// No Pub/Sub sandbox is attached ([`SalesforceSandbox::attach_pubsub`]).
    #[error("no pub/sub sandbox is attached to publish on")]
    NoPubSub,
    /// The Order has no `Customer_Number__c`, which the event requires.
    #[error("order {0} has no customer number to publish")]
    NoCustomerNumber(String),
    /// The Pub/Sub sandbox refused the event.
    #[error("publishing the event failed")]
    Publish(#[source] PubSubSandboxError),
}

struct Shared {
    config: SalesforceConfig,
    /// `None`: [`SalesforceConfig::public_key_pem`] is empty, no assertion verifies.
    key: Option<DecodingKey>,
    base_url: String,
    org: Mutex<OrgData>,
    tokens: TokenChecker,
    issued: Mutex<Vec<String>>,
    /// Issued access token -> the user it was issued to (who sent a PATCH).
    token_users: Mutex<HashMap<String, String>>,
    token_log: Mutex<Vec<TokenRequest>>,
    faults: Faults,
    counts: Mutex<HashMap<Route, u64>>,
    total: AtomicU64,
    gates: HashMap<Route, Gate>,
    api_usage: AtomicU64,
    next_token: AtomicU64,
    /// Where `publish` of the admin route goes: a Pub/Sub sandbox and the topic.
    pubsub: Mutex<Option<(Publisher, String)>>,
    /// Publish and activation times, for `GET /sandbox/stats`.
    activations: Mutex<Activations>,
}

/// A running Salesforce emulator; stops when dropped.
pub struct SalesforceSandbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for SalesforceSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceSandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SalesforceSandbox {
    /// Starts the emulator on `127.0.0.1` with an ephemeral port. A
    /// [`SalesforceConfig::public_key_pem`] that is not empty must be an RSA public key.
    pub async fn start(config: SalesforceConfig) -> std::io::Result<Self> {
        let key = if config.public_key_pem.is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_rsa_pem(config.public_key_pem.as_bytes())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            )
        };
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let gates = [
            Route::Token,
            Route::Query,
            Route::Patch,
            Route::Composite,
            Route::Describe,
            Route::UserInfo,
        ]
        .into_iter()
        .map(|r| (r, Gate::new()))
        .collect();
        let org = OrgData::with_pricebook(standard_pricebook_id(), config.status_rules.clone());
        let shared = Arc::new(Shared {
            config,
            key,
            base_url: format!("http://{addr}"),
            org: Mutex::new(org),
            tokens: TokenChecker::default(),
            issued: Mutex::new(Vec::new()),
            token_users: Mutex::new(HashMap::new()),
            token_log: Mutex::new(Vec::new()),
            faults: Faults::default(),
            counts: Mutex::new(HashMap::new()),
            total: AtomicU64::new(0),
            gates,
            api_usage: AtomicU64::new(0),
            next_token: AtomicU64::new(1),
            pubsub: Mutex::new(None),
            activations: Mutex::new(Activations::default()),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(serve(listener, router(shared.clone()), shutdown_rx));
        tracing::debug!(%addr, "salesforce sandbox listening");
        Ok(Self {
            shared,
            addr,
            _shutdown: shutdown,
        })
    }

    /// `http://127.0.0.1:<port>`: the login URL and the instance URL alike.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration the sandbox runs with.
    pub fn config(&self) -> &SalesforceConfig {
        &self.shared.config
    }

    /// The org id in token responses.
    pub fn org_id(&self) -> &str {
        &self.shared.config.org_id
    }

    /// Adds or replaces an Account.
    pub fn insert_account(&self, account: SfAccount) {
        self.shared
            .org
            .lock()
            .accounts
            .insert(account.id.clone(), account);
    }

    /// Adds or replaces an Order (stored under its `id`).
    pub fn insert_order(&self, order: SfOrder) {
        self.shared.org.lock().insert_order(order);
    }

    /// Adds an OrderItem.
    pub fn insert_order_item(&self, item: SfOrderItem) {
        self.shared.org.lock().insert_item(item);
    }

    /// Overwrites an OrderItem's `Config_Options__c` as someone with edit access to the org
    /// could (tests of tampered values); whether the item exists.
    pub fn set_order_item_config_options(&self, item_id: &str, json: Option<String>) -> bool {
        self.shared
            .org
            .lock()
            .set_item_config_options(item_id, json)
    }

    /// Adds many Orders and OrderItems under one lock (faster seeding of large orgs).
    pub fn insert_orders(
        &self,
        orders: impl IntoIterator<Item = SfOrder>,
        items: impl IntoIterator<Item = SfOrderItem>,
    ) {
        let mut org = self.shared.org.lock();
        for order in orders {
            org.insert_order(order);
        }
        for item in items {
            org.insert_item(item);
        }
    }

    /// The Order with this id (15 or 18 characters), as stored now.
    pub fn order(&self, id: &str) -> Option<SfOrder> {
        self.shared.org.lock().order(id).cloned()
    }

    /// Sets the `Status` of the Order with this id (15 or 18 characters), as a user editing
    /// it in Salesforce would: the value must be one of [`SalesforceConfig::statuses`];
    /// `LastModifiedDate` moves to now (strictly later than before), so the reconcile sweep
    /// sees the change; the change is not recorded as a PATCH. Returns the Order as stored now.
    pub fn set_order_status(&self, id: &str, status: &str) -> Result<SfOrder, OrderChangeError> {
        if !self.shared.config.statuses.iter().any(|s| s == status) {
            return Err(OrderChangeError::InvalidStatus(status.to_owned()));
        }
        self.shared
            .org
            .lock()
            .set_status(id, status)
            .ok_or_else(|| OrderChangeError::UnknownOrder(id.to_owned()))
    }

    /// Makes `publish` of `POST /sandbox/orders/{id}` (and
    /// [`SalesforceSandbox::publish_order_event`]) publish on `topic` through `publisher`.
    pub fn attach_pubsub(&self, publisher: Publisher, topic: impl Into<String>) {
        *self.shared.pubsub.lock() = Some((publisher, topic.into()));
    }

    /// Publishes a new `OrderProvisionRequested__e` for the Order with this id (its
    /// `Customer_Number__c` and `AccountId` as stored now, a new event id) on the attached
    /// Pub/Sub sandbox, as the approval Flow would.
    pub fn publish_order_event(&self, id: &str) -> Result<PublishedEvent, OrderChangeError> {
        let order = self
            .order(id)
            .ok_or_else(|| OrderChangeError::UnknownOrder(id.to_owned()))?;
        publish_event(&self.shared, &order)
    }

    /// Notes that the event of the Order with this id (15 or 18 characters) was published
    /// now, by whoever published it (events published through [`SalesforceSandbox::attach_pubsub`]'s
    /// publisher by this sandbox are noted already): its activation's latency is counted from
    /// here. See [`SalesforceSandbox::activation_stats`].
    pub fn note_published(&self, id: &str) {
        let now = Instant::now();
        let key = self.shared.org.lock().order(id).map(|o| o.id.clone());
        self.shared
            .activations
            .lock()
            .published(key.as_deref().unwrap_or(id), now);
    }

    /// How many Orders a PATCH has moved to [`ACTIVATED_STATUS`], and (with `latencies`) the
    /// percentiles of the time from each one's last noted publish to that PATCH, as `GET
    /// /sandbox/stats` answers them.
    pub fn activation_stats(&self, latencies: bool) -> ActivationStats {
        self.shared.activations.lock().stats(latencies)
    }

    /// Every Account.
    pub fn accounts(&self) -> Vec<SfAccount> {
        self.shared.org.lock().accounts.values().cloned().collect()
    }

    /// The id of the price book every seeded product is priced in (the org's standard price
    /// book, key prefix `01s`): what `SF_PRICEBOOK_ID` names.
    pub fn pricebook_id(&self) -> String {
        standard_pricebook_id()
    }

    /// Adds a Product2 with `WHMCS_Product_Id__c = whmcs_product_id` and an active
    /// PricebookEntry for it in [`SalesforceSandbox::pricebook_id`] at `unit_price`; returns the
    /// entry's id (key prefix `01u`).
    pub fn seed_product(&self, whmcs_product_id: u64, unit_price: f64) -> String {
        let mut org = self.shared.org.lock();
        let n = org.products().len() as u64 + 1;
        let product_id = salesforce_id("01t", 1_000 + n);
        org.insert_product(SfProduct {
            id: product_id.clone(),
            name: format!("WHMCS product {whmcs_product_id}"),
            whmcs_product_id: Some(whmcs_product_id),
        });
        let entry_id = salesforce_id("01u", 1_000 + org.entries().len() as u64 + 1);
        org.insert_entry(SfPricebookEntry {
            id: entry_id.clone(),
            pricebook_id: standard_pricebook_id(),
            product_id,
            unit_price,
            is_active: true,
        });
        entry_id
    }

    /// Adds or replaces a Product2.
    pub fn insert_product(&self, product: SfProduct) {
        self.shared.org.lock().insert_product(product);
    }

    /// Adds a price book (Pricebook2) with this id, e.g. `salesforce_id("01s", 2)`.
    pub fn insert_pricebook(&self, id: impl Into<String>) {
        self.shared.org.lock().insert_pricebook(id.into());
    }

    /// Adds or replaces a PricebookEntry (its price book must exist for Orders to use it).
    pub fn insert_pricebook_entry(&self, entry: SfPricebookEntry) {
        self.shared.org.lock().insert_entry(entry);
    }

    /// Sets `IsActive` of the PricebookEntry with this id; `false` when there is none.
    pub fn set_pricebook_entry_active(&self, id: &str, active: bool) -> bool {
        self.shared.org.lock().set_entry_active(id, active)
    }

    /// Every Product2.
    pub fn products(&self) -> Vec<SfProduct> {
        self.shared.org.lock().products()
    }

    /// Every PricebookEntry.
    pub fn pricebook_entries(&self) -> Vec<SfPricebookEntry> {
        self.shared.org.lock().entries()
    }

    /// How many Orders the org holds (an all-or-none create that failed leaves none behind).
    pub fn order_count(&self) -> usize {
        self.shared.org.lock().order_count()
    }

    /// The OrderItems of the Order with this id (15 or 18 characters) exactly as stored, e.g.
    /// to check that a sensitive config option reached Salesforce only as ciphertext.
    pub fn order_items(&self, order_id: &str) -> Vec<SfOrderItem> {
        self.shared.org.lock().items_of(order_id)
    }

    /// `PricebookEntryId` and `UnitPrice` of an OrderItem created through REST.
    pub fn order_item_price(&self, item_id: &str) -> Option<SfOrderItemPrice> {
        self.shared.org.lock().item_price(item_id)
    }

    /// The Order whose `Portal_Request_Id__c` is exactly `request_id`.
    pub fn order_by_request_id(&self, request_id: &str) -> Option<SfOrder> {
        self.shared
            .org
            .lock()
            .order_by_request_id(request_id)
            .cloned()
    }

    /// Approves the Order as a Salesforce user would: sets `Status` to `Approved` and publishes
    /// a new `OrderProvisionRequested__e` for it on the attached Pub/Sub sandbox, as the approval
    /// Flow does (what `POST /sandbox/orders/{id}` with `{"status": "Approved", "publish": true}`
    /// does). Checks come first: a refusal (no such Order, `Approved` not in the picklist, no
    /// Pub/Sub attached, no `Customer_Number__c`) changes nothing.
    pub fn approve(&self, order_id: &str) -> Result<PublishedEvent, OrderChangeError> {
        const APPROVED: &str = "Approved";
        let current = self
            .order(order_id)
            .ok_or_else(|| OrderChangeError::UnknownOrder(order_id.to_owned()))?;
        if !self.shared.config.statuses.iter().any(|s| s == APPROVED) {
            return Err(OrderChangeError::InvalidStatus(APPROVED.to_owned()));
        }
        if self.shared.pubsub.lock().is_none() {
            return Err(OrderChangeError::NoPubSub);
        }
        if current.customer_number.is_none() {
            return Err(OrderChangeError::NoCustomerNumber(current.id));
        }
        let order = self.set_order_status(order_id, APPROVED)?;
        publish_event(&self.shared, &order)
    }

    /// Every PATCH received, in order, whatever its outcome: the most recent
    /// [`crate::DEFAULT_RECORD_LIMIT`] unless changed with
    /// [`SalesforceSandbox::set_patch_log_limit`], none while recording is off.
    pub fn patches(&self) -> Vec<RecordedPatch> {
        self.shared.org.lock().patches()
    }

    /// Turns the recording of PATCHes on (the default) or off; what was recorded stays.
    /// A long-running sandbox that nobody inspects should turn it off.
    pub fn set_record_patches(&self, record: bool) {
        self.shared.org.lock().set_record_patches(record);
    }

    /// Keeps at most `limit` recorded PATCHes, dropping the oldest (0 records nothing).
    pub fn set_patch_log_limit(&self, limit: usize) {
        self.shared.org.lock().set_patch_log_limit(limit);
    }

    /// Forgets the recorded PATCHes.
    pub fn clear_patches(&self) {
        self.shared.org.lock().clear_patches();
    }

    /// Emulates a validation rule on Order besides [`SalesforceConfig::status_rules`]: while
    /// set, a PATCH changing `Status` to `status` is refused with 400
    /// `FIELD_CUSTOM_VALIDATION_EXCEPTION` (an error that looks permanent); other PATCHes go
    /// through. `None` removes the rule.
    pub fn reject_status_updates_to(&self, status: Option<&str>) {
        self.shared
            .org
            .lock()
            .set_rejected_status(status.map(str::to_owned));
    }

    /// The fault table.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Requests received on `route` (faulted ones included).
    pub fn requests(&self, route: Route) -> u64 {
        self.shared.counts.lock().get(&route).copied().unwrap_or(0)
    }

    /// Requests received on any path.
    pub fn total_requests(&self) -> u64 {
        self.shared.total.load(Ordering::SeqCst)
    }

    /// Requests received by the token endpoint.
    pub fn token_requests(&self) -> u64 {
        self.requests(Route::Token)
    }

    /// The token endpoint's requests that got past fault injection, with their outcome.
    pub fn token_log(&self) -> Vec<TokenRequest> {
        self.shared.token_log.lock().clone()
    }

    /// Every access token issued so far (for tests that check tokens never leak).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.issued.lock().clone()
    }

    /// Whether `token` was issued here and has not expired.
    pub fn is_token_valid(&self, token: &str) -> bool {
        self.shared.tokens.is_valid(token)
    }

    /// A cheap handle to check tokens from another emulator.
    pub fn token_checker(&self) -> TokenChecker {
        self.shared.tokens.clone()
    }

    /// Ends every issued token's life now, as a session timeout would.
    pub fn expire_all_tokens(&self) {
        let now = Instant::now();
        for expires in self.shared.tokens.tokens.lock().values_mut() {
            *expires = now;
        }
    }

    /// Takes `field` off `sobject` (`Order`, `OrderItem`, `Account`, `Product2`,
    /// `PricebookEntry`), as if it were deleted or hidden from the integration user: describe
    /// leaves it out, SOQL naming it fails with 400 `INVALID_FIELD`, and so do a PATCH and a
    /// composite create setting it. `false` (and nothing changed) when the sandbox has no such
    /// field.
    pub fn remove_field(&self, sobject: &str, field: &str) -> bool {
        self.shared.org.lock().schema.remove_field(sobject, field)
    }

    /// Gives back a field taken away by [`SalesforceSandbox::remove_field`]; `false` when the
    /// sandbox has no such field.
    pub fn restore_field(&self, sobject: &str, field: &str) -> bool {
        self.shared.org.lock().schema.restore_field(sobject, field)
    }

    /// Grants or takes away the integration user's edit access to `field` of `sobject`:
    /// describe shows `updateable` accordingly and a PATCH of a field without access fails
    /// with 400 `INVALID_FIELD_FOR_INSERT_UPDATE`. `false` when there is no such field.
    pub fn set_updateable(&self, sobject: &str, field: &str, updateable: bool) -> bool {
        self.shared
            .org
            .lock()
            .schema
            .set_field_updateable(sobject, field, updateable)
    }

    /// Grants or takes away the integration user's edit access to the whole `sobject`
    /// (describe's object-level `updateable`, and every field's); `false` when the sandbox does
    /// not describe that object.
    pub fn set_object_updateable(&self, sobject: &str, updateable: bool) -> bool {
        self.shared
            .org
            .lock()
            .schema
            .set_object_updateable(sobject, updateable)
    }

    /// The `api-usage` count so far.
    pub fn api_usage(&self) -> u64 {
        self.shared.api_usage.load(Ordering::SeqCst)
    }

    /// Holds new requests on `route` at the door until [`SalesforceSandbox::resume`].
    pub fn pause(&self, route: Route) {
        if let Some(gate) = self.shared.gates.get(&route) {
            gate.paused.send_replace(true);
        }
    }

    /// Lets held and new requests on `route` through.
    pub fn resume(&self, route: Route) {
        if let Some(gate) = self.shared.gates.get(&route) {
            gate.paused.send_replace(false);
        }
    }

    /// Requests held at the door of `route` right now.
    pub fn waiting(&self, route: Route) -> usize {
        self.shared
            .gates
            .get(&route)
            .map_or(0, |g| *g.waiting.borrow())
    }

    /// Waits until at least `n` requests are held at the door of `route`.
    pub async fn wait_until_waiting(&self, route: Route, n: usize) {
        if let Some(gate) = self.shared.gates.get(&route) {
            let mut rx = gate.waiting.subscribe();
            // The sender lives as long as `self`, so this only ends when the count is reached.
            let _ = rx.wait_for(|count| *count >= n).await;
        }
    }
}

#[derive(Clone)]
struct ConnKill(Arc<Notify>);

async fn serve(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "salesforce sandbox accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let app = app.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let kill = Arc::new(Notify::new());
            let marker = ConnKill(kill.clone());
            let service = tower::ServiceExt::map_request(
                app,
                move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(marker.clone());
                    req
                },
            );
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            );
            tokio::select! {
                _ = connection => {}
                _ = kill.notified() => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/sandbox/orders/{id}",
            get(admin_order).post(admin_change_order),
        )
        .route("/sandbox/patches", get(admin_patches))
        .route("/sandbox/stats", get(admin_stats))
        .route("/services/oauth2/token", post(token))
        .route("/services/data/{version}/query", get(query))
        .route("/services/data/{version}/query/{locator}", get(query_more))
        .route("/services/oauth2/userinfo", get(userinfo).post(userinfo))
        .route(
            "/services/data/{version}/sobjects/{sobject}/{id}",
            get(describe).patch(patch_record),
        )
        .route("/services/data/{version}/composite", post(composite))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), intercept))
        .with_state(shared)
}

fn route_of(method: &Method, path: &str) -> Option<Route> {
    if path == "/services/oauth2/token" && method == Method::POST {
        Some(Route::Token)
    } else if path.starts_with("/services/data/") && path.contains("/query") {
        Some(Route::Query)
    } else if path.contains("/sobjects/Order/") && method == Method::PATCH {
        Some(Route::Patch)
    } else if path.starts_with("/services/data/")
        && path.contains("/sobjects/")
        && path.ends_with("/describe")
        && method == Method::GET
    {
        Some(Route::Describe)
    } else if path == "/services/oauth2/userinfo" {
        Some(Route::UserInfo)
    } else if path.starts_with("/services/data/")
        && path.ends_with("/composite")
        && method == Method::POST
    {
        Some(Route::Composite)
    } else {
        None
    }
}

/// Counts, holds paused requests, and applies injected faults, before any handler runs.
async fn intercept(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    shared.total.fetch_add(1, Ordering::SeqCst);
    let Some(route) = route_of(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    *shared.counts.lock().entry(route).or_default() += 1;
    if let Some(gate) = shared.gates.get(&route) {
        let mut paused = gate.paused.subscribe();
        if *paused.borrow_and_update() {
            gate.waiting.send_modify(|n| *n += 1);
            let _ = paused.wait_for(|p| !*p).await;
            gate.waiting.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
    let kill = req.extensions().get::<ConnKill>().cloned();
    let mut after = Vec::new();
    for fault in shared.faults.take(route) {
        match fault {
            FaultKind::CommitThenDrop | FaultKind::DelayAnswer(_) => after.push(fault),
            FaultKind::Latency(delay) => tokio::time::sleep(delay).await,
            FaultKind::Status(status) => return status_fault(route, status),
            FaultKind::Redirect(location) => {
                let mut response = StatusCode::FOUND.into_response();
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                return response;
            }
            FaultKind::SalesforceError {
                status,
                error_code,
                message,
            } => {
                let body = json!([{ "message": message, "errorCode": error_code, "fields": [] }]);
                return json_response(status, &body);
            }
            FaultKind::DropConnection => {
                if let Some(kill) = req.extensions().get::<ConnKill>() {
                    kill.0.notify_one();
                    std::future::pending::<()>().await;
                }
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        }
    }
    let response = next.run(req).await;
    for fault in after {
        match fault {
            FaultKind::DelayAnswer(delay) => tokio::time::sleep(delay).await,
            _ => {
                if let Some(kill) = &kill {
                    kill.0.notify_one();
                    std::future::pending::<()>().await;
                }
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        }
    }
    response
}

fn status_fault(route: Route, status: u16) -> Response {
    let body = match (route, status) {
        (Route::Token, _) => {
            json!({ "error": "server_error", "error_description": "internal server error" })
        }
        (_, 503) => json!([{
            "message": "Server is temporarily unavailable",
            "errorCode": "SERVER_UNAVAILABLE",
            "fields": []
        }]),
        _ => json!([{
            "message": "An unexpected error occurred. Please include this ErrorId if you contact support: 1234567890-12345 (-1234567890)",
            "errorCode": "UNKNOWN_EXCEPTION",
            "fields": []
        }]),
    };
    json_response(status, &body)
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
}

async fn not_found() -> Response {
    json_response(
        404,
        &ApiError::new(404, "NOT_FOUND", "The requested resource does not exist").body(),
    )
}

fn form_fields(body: &[u8]) -> HashMap<String, String> {
    url_decode_form(&String::from_utf8_lossy(body))
}

/// Decodes `application/x-www-form-urlencoded` (`+` = space, `%XX`).
fn url_decode_form(text: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |c: u8| char::from(c).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(hi), Some(lo)) => {
                            out.push((hi * 16 + lo) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let form = form_fields(&body);
    let grant_type = form.get("grant_type").cloned();
    let assertion = form.get("assertion").cloned();
    let outcome = if grant_type.as_deref() != Some(oauth::JWT_BEARER_GRANT) {
        Err(oauth::UNSUPPORTED_GRANT)
    } else {
        let mut audiences = shared.config.audiences.clone();
        audiences.push(shared.base_url.clone());
        let now_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expect = oauth::Expectation {
            client_id: &shared.config.client_id,
            usernames: &shared.config.usernames,
            audiences: &audiences,
            key: shared.key.as_ref(),
            leeway_secs: shared.config.assertion_leeway.as_secs(),
            now_secs,
        };
        oauth::verify(assertion.as_deref().unwrap_or_default(), &expect)
    };
    shared.token_log.lock().push(TokenRequest {
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        grant_type,
        assertion,
        outcome: outcome.clone().map_err(|e| e.description.to_owned()),
    });
    let username = match outcome {
        Ok(username) => username,
        Err(e) => {
            return json_response(
                400,
                &json!({ "error": e.error, "error_description": e.description }),
            );
        }
    };
    let n = shared.next_token.fetch_add(1, Ordering::SeqCst);
    let org15 = shared.config.org_id.get(..15).unwrap_or("00D000000000000");
    let token = format!(
        "{org15}!AQ{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    shared
        .tokens
        .tokens
        .lock()
        .insert(token.clone(), Instant::now() + shared.config.token_lifetime);
    shared.issued.lock().push(token.clone());
    shared
        .token_users
        .lock()
        .insert(token.clone(), username.clone());
    let user_id = user_id_of(&shared.config, &username);
    let issued_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    tracing::debug!(n, %username, "salesforce sandbox issued a token");
    json_response(
        200,
        &json!({
            "access_token": token,
            "scope": "api",
            "instance_url": shared.base_url,
            "id": format!("{}/id/{}/{}", shared.base_url, shared.config.org_id, user_id),
            "token_type": "Bearer",
            "issued_at": issued_at.to_string(),
        }),
    )
}

/// The User id of `username`: `005` ids numbered in the order of
/// [`SalesforceConfig::usernames`].
fn user_id_of(config: &SalesforceConfig, username: &str) -> String {
    let index = config
        .usernames
        .iter()
        .position(|u| u == username)
        .unwrap_or(0);
    salesforce_id("005", index as u64 + 1)
}

/// The bearer token of a request ("" when there is none).
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
}

/// The 401 answer when the bearer token is missing, unknown or expired; otherwise counts
/// the call against the API limit.
fn refuse_session(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    if !shared.tokens.is_valid(bearer(headers)) {
        return Some(json_response(
            401,
            &json!([{ "message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID" }]),
        ));
    }
    shared.api_usage.fetch_add(1, Ordering::SeqCst);
    None
}

fn with_limit_info(shared: &Shared, mut response: Response) -> Response {
    let value = format!(
        "api-usage={}/{}",
        shared.api_usage.load(Ordering::SeqCst),
        shared.config.api_limit
    );
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert("Sforce-Limit-Info", value);
    }
    response
}

fn version_ok(version: &str) -> bool {
    version
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && major
                    .bytes()
                    .chain(minor.bytes())
                    .all(|b| b.is_ascii_digit())
        })
}

fn rest_answer(shared: &Shared, result: Result<Response, ApiError>) -> Response {
    let response = result.unwrap_or_else(|e| json_response(e.status, &e.body()));
    with_limit_info(shared, response)
}

async fn query(
    State(shared): State<Arc<Shared>>,
    Path(version): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = refuse_session(&shared, &headers) {
        return denied;
    }
    let result = if !version_ok(&version) {
        Err(ApiError::new(
            404,
            "NOT_FOUND",
            "The requested resource does not exist",
        ))
    } else {
        match params.get("q") {
            None => Err(ApiError::new(
                400,
                "MALFORMED_QUERY",
                "A query string has to be specified",
            )),
            Some(q) => shared
                .org
                .lock()
                .query(q, &version, shared.config.query_page_size)
                .map(|v| json_response(200, &v)),
        }
    };
    rest_answer(&shared, result)
}

async fn query_more(
    State(shared): State<Arc<Shared>>,
    Path((version, locator)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = refuse_session(&shared, &headers) {
        return denied;
    }
    let result = shared
        .org
        .lock()
        .query_more(&locator, &version, shared.config.query_page_size)
        .map(|v| json_response(200, &v));
    rest_answer(&shared, result)
}

/// The event of `order` on the attached Pub/Sub sandbox.
fn publish_event(shared: &Shared, order: &SfOrder) -> Result<PublishedEvent, OrderChangeError> {
    let Some((publisher, topic)) = shared.pubsub.lock().clone() else {
        return Err(OrderChangeError::NoPubSub);
    };
    let now_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
    )
    .unwrap_or(i64::MAX);
    let event = crate::seed::provision_event(order, now_ms)
        .ok_or_else(|| OrderChangeError::NoCustomerNumber(order.id.clone()))?;
    shared
        .activations
        .lock()
        .published(&order.id, Instant::now());
    publisher
        .publish_order(&topic, &event)
        .map_err(OrderChangeError::Publish)
}

/// An Order as the admin route shows it, with Salesforce's field names.
fn admin_order_json(order: &SfOrder) -> Value {
    json!({
        "Id": order.id,
        "OrderNumber": order.order_number,
        "Status": order.status,
        "AccountId": order.account_id,
        "Customer_Number__c": order.customer_number,
        "WHMCS_Client_Id__c": order.whmcs_client_id,
        "WHMCS_Order_Id__c": order.whmcs_order_id,
        "WHMCS_Service_Ids__c": order.whmcs_service_ids,
        "Provisioned_At__c": order.provisioned_at.as_ref().map(org::sf_datetime),
        "Provisioning_Error__c": order.provisioning_error,
        "LastModifiedDate": org::sf_datetime(&order.last_modified),
        "EffectiveDate": order.effective_date.map(|d| d.format("%Y-%m-%d").to_string()),
        "Pricebook2Id": order.pricebook_id,
        "Portal_Request_Id__c": order.portal_request_id,
    })
}

fn admin_error(status: u16, code: &str, message: impl std::fmt::Display) -> Response {
    json_response(
        status,
        &json!({ "error": code, "message": message.to_string() }),
    )
}

fn admin_refusal(e: &OrderChangeError) -> Response {
    let (status, code) = match e {
        OrderChangeError::UnknownOrder(_) => (404, "unknown_order"),
        OrderChangeError::InvalidStatus(_) => (400, "invalid_status"),
        OrderChangeError::NoPubSub => (409, "no_pubsub"),
        OrderChangeError::NoCustomerNumber(_) => (422, "no_customer_number"),
        OrderChangeError::Publish(_) => (500, "publish_failed"),
    };
    let message = match e {
        OrderChangeError::Publish(source) => format!("{e}: {source}"),
        other => other.to_string(),
    };
    admin_error(status, code, message)
}

/// `GET /sandbox/orders/{id}`.
async fn admin_order(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let order = shared.org.lock().order(&id).cloned();
    match order {
        Some(order) => json_response(200, &json!({ "order": admin_order_json(&order) })),
        None => admin_refusal(&OrderChangeError::UnknownOrder(id)),
    }
}

/// `GET /sandbox/patches`: the recorded PATCHes, oldest first, with who sent each.
async fn admin_patches(State(shared): State<Arc<Shared>>) -> Response {
    let patches: Vec<Value> = shared
        .org
        .lock()
        .patches()
        .iter()
        .map(|p| {
            json!({
                "orderId": p.order_id,
                "username": p.username,
                "status": p.status,
                "body": p.body,
                "atMs": p.at.timestamp_millis(),
            })
        })
        .collect();
    json_response(200, &json!({ "patches": patches }))
}

/// The query of `GET /sandbox/stats`.
#[derive(serde::Deserialize)]
struct StatsQuery {
    #[serde(default)]
    latencies: bool,
}

/// `GET /sandbox/stats[?latencies=true]`: [`ActivationStats`] as JSON.
async fn admin_stats(State(shared): State<Arc<Shared>>, Query(q): Query<StatsQuery>) -> Response {
    let stats = shared.activations.lock().stats(q.latencies);
    json_response(200, &json!(stats))
}

/// The body of `POST /sandbox/orders/{id}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderChange {
    status: Option<String>,
    #[serde(default)]
    publish: bool,
}

/// `POST /sandbox/orders/{id}`: checks everything first, then sets the status, then publishes.
async fn admin_change_order(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let change: OrderChange = if body.iter().all(u8::is_ascii_whitespace) {
        OrderChange {
            status: None,
            publish: false,
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(change) => change,
            Err(e) => {
                return admin_error(
                    400,
                    "invalid_request",
                    format!("expected {{\"status\": \"..\", \"publish\": true}}: {e}"),
                );
            }
        }
    };
    let Some(current) = shared.org.lock().order(&id).cloned() else {
        return admin_refusal(&OrderChangeError::UnknownOrder(id));
    };
    if let Some(status) = &change.status
        && !shared.config.statuses.contains(status)
    {
        return admin_refusal(&OrderChangeError::InvalidStatus(status.clone()));
    }
    if change.publish {
        if shared.pubsub.lock().is_none() {
            return admin_refusal(&OrderChangeError::NoPubSub);
        }
        if current.customer_number.is_none() {
            return admin_refusal(&OrderChangeError::NoCustomerNumber(current.id));
        }
    }
    let order = match &change.status {
        Some(status) => match shared.org.lock().set_status(&id, status) {
            Some(order) => order,
            None => return admin_refusal(&OrderChangeError::UnknownOrder(id)),
        },
        None => current,
    };
    let published = if change.publish {
        match publish_event(&shared, &order) {
            Ok(event) => json!({
                "eventId": event.event_id,
                "replayId": base64::engine::general_purpose::STANDARD.encode(&event.replay_id),
            }),
            Err(e) => return admin_refusal(&e),
        }
    } else {
        Value::Null
    };
    tracing::info!(
        order = %order.id,
        status = %order.status,
        published = change.publish,
        "salesforce sandbox: order changed through the admin route"
    );
    json_response(
        200,
        &json!({ "order": admin_order_json(&order), "published": published }),
    )
}

/// `POST /services/data/{version}/composite`.
async fn composite(
    State(shared): State<Arc<Shared>>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(denied) = refuse_session(&shared, &headers) {
        return denied;
    }
    let result = if !version_ok(&version) {
        Err(ApiError::new(
            404,
            "NOT_FOUND",
            "The requested resource does not exist",
        ))
    } else {
        shared
            .org
            .lock()
            .composite(&body, &shared.config.statuses)
            .map(|v| json_response(200, &v))
    };
    rest_answer(&shared, result)
}

/// The id of the price book the sandbox starts with (the standard price book).
fn standard_pricebook_id() -> String {
    salesforce_id("01s", 1)
}

/// `PATCH /services/data/{version}/sobjects/{sObject}/{id}`: Orders only.
async fn patch_record(
    State(shared): State<Arc<Shared>>,
    Path((version, sobject, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if sobject != "Order" {
        return not_found().await;
    }
    patch_order(&shared, &version, &id, &headers, &body)
}

/// `GET /services/data/{version}/sobjects/{sObject}/describe` (reading a record by id is not
/// emulated: 404).
async fn describe(
    State(shared): State<Arc<Shared>>,
    Path((version, sobject, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = refuse_session(&shared, &headers) {
        return denied;
    }
    let not_found = || ApiError::new(404, "NOT_FOUND", "The requested resource does not exist");
    let result = if !version_ok(&version) || id != "describe" {
        Err(not_found())
    } else {
        shared
            .org
            .lock()
            .schema
            .describe(&sobject, &version, &shared.config.statuses)
            .map(|v| json_response(200, &v))
    };
    rest_answer(&shared, result)
}

/// `GET`/`POST /services/oauth2/userinfo`: the token's user, as OpenID Connect's UserInfo;
/// Salesforce answers a missing or bad token with 403 and a plain-text code.
async fn userinfo(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let token = bearer(&headers);
    let refusal = if token.is_empty() {
        Some("Missing_OAuth_Token")
    } else if !shared.tokens.is_valid(token) {
        Some("Bad_OAuth_Token")
    } else {
        None
    };
    if let Some(code) = refusal {
        let mut response = (StatusCode::FORBIDDEN, code).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain;charset=UTF-8"),
        );
        return response;
    }
    let username = shared
        .token_users
        .lock()
        .get(token)
        .cloned()
        .unwrap_or_default();
    json_response(200, &userinfo_json(&shared, &username))
}

/// The UserInfo answer for `username` (ids consistent with the token response's `id` URL).
fn userinfo_json(shared: &Shared, username: &str) -> Value {
    let base = &shared.base_url;
    let org = &shared.config.org_id;
    let user_id = user_id_of(&shared.config, username);
    let nickname = username.split('@').next().unwrap_or(username);
    let data = format!("{base}/services/data/v{{version}}");
    json!({
        "sub": format!("{base}/id/{org}/{user_id}"),
        "user_id": user_id,
        "organization_id": org,
        "preferred_username": username,
        "nickname": nickname,
        "name": nickname,
        "given_name": "",
        "family_name": nickname,
        "email": username,
        "email_verified": true,
        "zoneinfo": "Europe/London",
        "locale": "en_GB",
        "language": "en_US",
        "utcOffset": 0,
        "active": true,
        "user_type": "STANDARD",
        "is_app_installed": true,
        "profile": format!("{base}/{user_id}"),
        "picture": format!("{base}/img/userprofile/default_profile_200_v2.png"),
        "photos": {
            "picture": format!("{base}/img/userprofile/default_profile_200_v2.png"),
            "thumbnail": format!("{base}/img/userprofile/default_profile_45_v2.png"),
        },
        "urls": {
            "enterprise": format!("{base}/services/Soap/c/{{version}}/{org}"),
            "metadata": format!("{base}/services/Soap/m/{{version}}/{org}"),
            "partner": format!("{base}/services/Soap/u/{{version}}/{org}"),
            "rest": format!("{data}/"),
            "sobjects": format!("{data}/sobjects/"),
            "search": format!("{data}/search/"),
            "query": format!("{data}/query/"),
            "recent": format!("{data}/recent/"),
            "tooling_soap": format!("{base}/services/Soap/T/{{version}}/{org}"),
            "tooling_rest": format!("{data}/tooling/"),
            "profile": format!("{base}/{user_id}"),
            "custom_domain": base,
        },
        "updated_at": "2026-01-05T09:00:00Z",
    })
}

fn patch_order(
    shared: &Shared,
    version: &str,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if let Some(denied) = refuse_session(shared, headers) {
        return denied;
    }
    let result = if !version_ok(version) {
        Err(ApiError::new(
            404,
            "NOT_FOUND",
            "The requested resource does not exist",
        ))
    } else {
        let username = shared.token_users.lock().get(bearer(headers)).cloned();
        let mut org = shared.org.lock();
        let before = org
            .order(id)
            .map(|o| (o.id.clone(), o.status == ACTIVATED_STATUS));
        let result = org.patch_order_as(id, body, &shared.config.statuses, username);
        if let (Ok(()), Some((key, false))) = (&result, before)
            && org
                .order(&key)
                .is_some_and(|o| o.status == ACTIVATED_STATUS)
        {
            shared.activations.lock().activated(&key, Instant::now());
        }
        drop(org);
        result.map(|()| StatusCode::NO_CONTENT.into_response())
    };
    rest_answer(shared, result)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn form_decoding_handles_escapes() {
        let form =
            url_decode_form("grant_type=urn%3Aietf%3Aparams&assertion=a.b-c_d&x=1+2&bad=%zz");
        assert_eq!(form["grant_type"], "urn:ietf:params");
        assert_eq!(form["assertion"], "a.b-c_d");
        assert_eq!(form["x"], "1 2");
        assert_eq!(form["bad"], "%zz");
    }

    #[test]
    fn versions_look_like_v62_0() {
        assert!(version_ok("v62.0"));
        assert!(!version_ok("62.0"));
        assert!(!version_ok("v62"));
        assert!(!version_ok("vX.0"));
    }

    /// `POST /sandbox/orders/{id}` with `body`: status code and JSON answer.
    async fn admin_post(sf: &SalesforceSandbox, id: &str, body: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/sandbox/orders/{id}", sf.base_url()))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    #[tokio::test]
    async fn the_admin_route_sets_the_status_and_publishes_a_new_event() {
        let sf = SalesforceSandbox::start(SalesforceConfig::default())
            .await
            .unwrap();
        let pubsub = crate::pubsub::PubSubSandbox::start(crate::pubsub::PubSubConfig::default())
            .await
            .unwrap();
        let id = salesforce_id("801", 1);
        let mut order = SfOrder::new(id.clone(), "Activated");
        order.customer_number = Some("CUST-00001".into());
        sf.insert_order(order);
        let mut bare = SfOrder::new(salesforce_id("801", 2), "Draft");
        bare.customer_number = None;
        sf.insert_order(bare);
        let status = |id: &str| sf.order(id).unwrap().status;

        // Refusals change nothing.
        let approve = r#"{"status": "Approved", "publish": true}"#;
        let (code, body) = admin_post(&sf, &id, approve).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (409, Some("no_pubsub")),
            "{body}"
        );
        assert_eq!(status(&id), "Activated");
        sf.attach_pubsub(pubsub.publisher(), sf_pubsub::DEFAULT_TOPIC);
        let (unknown, bare) = (salesforce_id("801", 3), salesforce_id("801", 2));
        for (order, body, code, error) in [
            (
                id.as_str(),
                r#"{"status": "Shipped"}"#,
                400,
                "invalid_status",
            ),
            (id.as_str(), r#"{"status": 1}"#, 400, "invalid_request"),
            (
                id.as_str(),
                r#"{"stat": "Approved"}"#,
                400,
                "invalid_request",
            ),
            (unknown.as_str(), approve, 404, "unknown_order"),
            (bare.as_str(), approve, 422, "no_customer_number"),
        ] {
            let (got, answer) = admin_post(&sf, order, body).await;
            assert_eq!(
                (got, answer["error"].as_str()),
                (code, Some(error)),
                "{body}: {answer}"
            );
        }
        assert_eq!(status(&id), "Activated");
        assert_eq!(status(&bare), "Draft");

        // Re-approve and publish, by the 15-character id.
        let before = sf.order(&id).unwrap().last_modified;
        let (code, body) = admin_post(&sf, &id[..15], approve).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["order"]["Id"], id.as_str());
        assert_eq!(body["order"]["Status"], "Approved");
        assert_eq!(status(&id), "Approved");
        assert!(sf.order(&id).unwrap().last_modified > before);
        let replay = base64::engine::general_purpose::STANDARD
            .decode(body["published"]["replayId"].as_str().unwrap())
            .unwrap();
        assert_eq!(crate::pubsub::seq_of(&replay), Some(1));
        let first_event = body["published"]["eventId"].as_str().unwrap().to_owned();
        // Publishing again gives a new event; no status keeps the status.
        let (code, body) = admin_post(&sf, &id, r#"{"publish": true}"#).await;
        assert_eq!(code, 200, "{body}");
        assert_ne!(
            body["published"]["eventId"].as_str(),
            Some(first_event.as_str())
        );
        assert_eq!(body["order"]["Status"], "Approved");
        // No body: nothing changes, nothing is published.
        let (code, body) = admin_post(&sf, &id, "").await;
        assert_eq!((code, &body["published"]), (200, &Value::Null));
        let got: Value = reqwest::get(format!("{}/sandbox/orders/{id}", sf.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["order"]["Status"], "Approved");
        assert_eq!(got["order"]["Customer_Number__c"], "CUST-00001");
        // The library call publishes the same event.
        let event = sf.publish_order_event(&id).unwrap();
        assert_eq!(crate::pubsub::seq_of(&event.replay_id), Some(3));
        assert!(sf.patches().is_empty(), "the admin route is no PATCH");
        assert!(matches!(
            sf.set_order_status(&id, "Shipped"),
            Err(OrderChangeError::InvalidStatus(_))
        ));
    }

    #[test]
    fn routes_are_recognised() {
        assert_eq!(
            route_of(&Method::POST, "/services/oauth2/token"),
            Some(Route::Token)
        );
        assert_eq!(
            route_of(&Method::GET, "/services/data/v62.0/query"),
            Some(Route::Query)
        );
        assert_eq!(
            route_of(&Method::PATCH, "/services/data/v62.0/sobjects/Order/x"),
            Some(Route::Patch)
        );
        assert_eq!(
            route_of(&Method::POST, "/services/data/v62.0/composite"),
            Some(Route::Composite)
        );
        assert_eq!(
            route_of(&Method::GET, "/services/data/v62.0/composite"),
            None
        );
        assert_eq!(route_of(&Method::GET, "/"), None);
    }

    #[tokio::test]
    async fn approve_sets_approved_and_publishes_or_changes_nothing() {
        let sf = SalesforceSandbox::start(SalesforceConfig::default())
            .await
            .unwrap();
        let id = salesforce_id("801", 1);
        let mut order = SfOrder::new(id.clone(), "Pending Review");
        order.customer_number = Some("CUST-00001".into());
        sf.insert_order(order);
        assert!(matches!(sf.approve(&id), Err(OrderChangeError::NoPubSub)));
        assert_eq!(sf.order(&id).unwrap().status, "Pending Review");
        assert!(matches!(
            sf.approve(&salesforce_id("801", 2)),
            Err(OrderChangeError::UnknownOrder(_))
        ));
        let pubsub = crate::pubsub::PubSubSandbox::start(crate::pubsub::PubSubConfig::default())
            .await
            .unwrap();
        sf.attach_pubsub(pubsub.publisher(), sf_pubsub::DEFAULT_TOPIC);
        let event = sf.approve(&id[..15]).unwrap();
        assert_eq!(crate::pubsub::seq_of(&event.replay_id), Some(1));
        assert_eq!(sf.order(&id).unwrap().status, "Approved");
        assert!(sf.patches().is_empty(), "approving is no PATCH");
    }
}
