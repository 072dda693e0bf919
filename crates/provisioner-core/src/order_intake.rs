//! Order intake: the portal's order, validated, made idempotent through the store's ledger,
//! checked against the caller's Account, its sensitive options sealed, and created in
//! Salesforce as one all-or-none request. The HTTP route around it belongs to the status API;
//! this module decides every answer.
//!
//! One rule above all: **one key, one Order**. The ledger row is stored before anything is
//! sent; an attempt that ends without knowing whether its Order exists releases the row, and
//! the next attempt (or one that takes a crashed attempt's row over) looks the Order up by its
//! external id `<customer>:<key>` before it ever creates one. Salesforce's uniqueness of that
//! id turns a second create into `DUPLICATE_VALUE`, which is looked up too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit::{Action, Actor, DetailKey, NewAuditRecord, Outcome};
use provisioner_store::{OrderRequestAnswer, OrderRequestKey, OrderRequestStart, Store};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use sf_rest::{CreatedOrder, NewOrder, NewOrderItem, OrderIntakeApi};

use crate::Clock;

/// Most lines one order may have (one OrderItem each, one composite subrequest each).
pub const MAX_LINES: usize = sf_rest::MAX_ORDER_ITEMS;
/// Largest quantity of one line.
pub const MAX_QUANTITY: u32 = 100;
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The default of `CUSTOMER_ORDER_RATE`: 10 new orders an hour per customer, burst 10.
pub const DEFAULT_ORDER_RATE: security::Rate = security::Rate::new(
    match std::num::NonZeroU32::new(10) {
        Some(count) => count,
        None => panic!("10 is not zero"),
    },
    security::Period::Hour,
);

/// How long an attempt holds its key before another attempt may take it over.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(120);
/// The billing cycles WHMCS knows.
pub const BILLING_CYCLES: &[&str] = &[
    "free",
    "onetime",
    "monthly",
    "quarterly",
    "semiannually",
    "annually",
    "biennially",
    "triennially",
];
/// Field kind under which sensitive config options are sealed (the associated data adds the
/// Order's external id and the option id).
pub const SENSITIVE_OPTION_KIND: &str = "config_option";

/// Seals a sensitive config option and fingerprints request bodies, with keys the caller owns
/// (the provisioner's keyring). Implementations never log a value.
pub trait OptionSealer: Send + Sync {
    /// `value` encrypted for the Order with external id `external_id`, option `option_id`:
    /// text that names its key, so that a rotation keeps it readable.
    fn seal(&self, external_id: &str, option_id: &str, value: &str) -> Result<String, String>;

    /// A keyed fingerprint of `bytes` (so that a stored fingerprint of a body with secrets in
    /// it cannot be guessed back), as text.
    fn fingerprint(&self, bytes: &[u8]) -> Result<String, String>;
}

/// Opens what an [`OptionSealer`] sealed (the provisioner does, when it reads an Order's
/// items to place the WHMCS order).
pub trait OptionOpener: Send + Sync {
    /// The value of option `option_id` of the Order with external id `external_id`, or why it
    /// does not open (never the text itself).
    fn open(
        &self,
        external_id: &str,
        option_id: &str,
        sealed: &str,
    ) -> Result<SecretString, String>;
}

/// The prefix of a sealed value (field-crypto's text format, version 1).
pub const SEALED_PREFIX: &str = "pf1.";

/// Whether an option value is sealed.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// The default status of a new Order (`SF_ORDER_STATUS_NEW`): a value of the *Draft* status
/// category, as Salesforce requires of an Order being created.
pub const DEFAULT_NEW_STATUS: &str = "Pending Review";

/// Settings of [`OrderIntake`].
#[derive(Clone, Debug)]
pub struct IntakeConfig {
    /// The price book every Order uses (`SF_PRICEBOOK_ID`).
    pub pricebook_id: String,
    /// Status of a new Order (`SF_ORDER_STATUS_NEW`, default `Pending Review`).
    pub new_status: String,
    /// How long an attempt holds its key.
    pub hold: Duration,
    /// How long a price book lookup is kept.
    pub pricebook_ttl: Duration,
    /// New orders per customer (`CUSTOMER_ORDER_RATE`), held in this process (one instance)
    /// or in the store (every instance on a PostgreSQL database draws from one budget, scope
    /// [`ORDER_RATE_SCOPE`]): only a request that would create an Order counts, not a repeat
    /// of an answered one nor a refused body.
    pub order_limit: crate::ProvisionLimit,
}

/// The scope of the shared per-customer order rate in the store.
pub const ORDER_RATE_SCOPE: &str = "customer_order";

/// The answer to one intake request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntakeAnswer {
    /// HTTP status.
    pub status: u16,
    /// JSON body: ids and codes only.
    pub body: String,
    /// `Retry-After` seconds, for 409, 429 and 503.
    pub retry_after: Option<u64>,
}

impl IntakeAnswer {
    fn error(status: u16, code: &str) -> Self {
        Self {
            status,
            body: json!({ "error": code }).to_string(),
            retry_after: None,
        }
    }

    fn invalid(reason: &str) -> Self {
        Self {
            status: 400,
            body: json!({ "error": "invalid_request", "reason": reason }).to_string(),
            retry_after: None,
        }
    }

    fn later(status: u16, code: &str, after: Duration) -> Self {
        Self {
            retry_after: Some(after.as_secs().max(1)),
            ..Self::error(status, code)
        }
    }

    fn created(order: &CreatedOrder) -> Self {
        Self {
            status: 201,
            body: json!({
                "orderId": order.id.as_str(),
                "orderNumber": order.order_number,
                "status": "pending_review",
            })
            .to_string(),
            retry_after: None,
        }
    }
}

/// A config option's value as the portal sent it.
#[derive(Clone, Debug)]
pub enum OptionValue {
    /// Sent to Salesforce as it is.
    Plain(Value),
    /// Sealed before it leaves the process.
    Sensitive(SecretString),
}

/// One validated order line.
#[derive(Clone, Debug)]
pub struct OrderLine {
    /// WHMCS product id.
    pub whmcs_product_id: u64,
    /// WHMCS billing cycle.
    pub billing_cycle: String,
    /// 1 to [`MAX_QUANTITY`].
    pub quantity: u32,
    /// Options by WHMCS option id.
    pub config_options: BTreeMap<String, OptionValue>,
}

/// A validated intake request.
#[derive(Clone, Debug)]
pub struct OrderRequest {
    /// The Account the Order is for (15 or 18 characters).
    pub account_id: String,
    /// Its lines.
    pub lines: Vec<OrderLine>,
}

/// Whether `key` is a usable `Idempotency-Key`: 8 to 128 of `A-Z a-z 0-9 - _`.
pub fn is_idempotency_key(key: &str) -> bool {
    (8..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn only_keys(object: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), String> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) if unknown.len() <= 64 => Err(format!("unknown field {unknown:?} in {what}")),
        Some(_) => Err(format!("unknown field in {what}")),
        None => Ok(()),
    }
}

/// Parses and validates a request body. The error is a reason for a 400 answer: it names
/// fields, never a value.
pub fn parse_request(body: &[u8]) -> Result<OrderRequest, String> {
    if body.len() > MAX_BODY_BYTES {
        return Err(format!("body over {MAX_BODY_BYTES} bytes"));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("not JSON (line {}, column {})", e.line(), e.column()))?;
    let Value::Object(top) = value else {
        return Err("the body must be a JSON object".into());
    };
    only_keys(&top, &["accountId", "lines"], "the order")?;
    let account_id = match top.get("accountId") {
        Some(Value::String(id)) if sf_rest::OrderId::parse(id).is_ok() => id.clone(),
        Some(_) => return Err("accountId must be a 15 or 18 character Salesforce id".into()),
        None => return Err("accountId is missing".into()),
    };
    let lines = match top.get("lines") {
        Some(Value::Array(lines)) if lines.is_empty() => return Err("lines is empty".into()),
        Some(Value::Array(lines)) if lines.len() > MAX_LINES => {
            return Err(format!("more than {MAX_LINES} lines"));
        }
        Some(Value::Array(lines)) => lines,
        Some(_) => return Err("lines must be an array".into()),
        None => return Err("lines is missing".into()),
    };
    let lines = lines
        .iter()
        .enumerate()
        .map(|(i, line)| parse_line(i, line))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(OrderRequest { account_id, lines })
}

/// A plain value that looks sealed would be taken for one (and fail) when the Order is
/// provisioned: refused up front.
fn sealed_lookalike(i: usize, id: &str) -> String {
    format!("lines[{i}].configOptions.{id}: a plain value may not start with {SEALED_PREFIX:?}")
}

fn parse_line(i: usize, line: &Value) -> Result<OrderLine, String> {
    let Value::Object(line) = line else {
        return Err(format!("lines[{i}] must be an object"));
    };
    only_keys(
        line,
        &[
            "whmcsProductId",
            "billingCycle",
            "quantity",
            "configOptions",
        ],
        &format!("lines[{i}]"),
    )?;
    let whmcs_product_id = line
        .get("whmcsProductId")
        .and_then(Value::as_u64)
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("lines[{i}].whmcsProductId must be a positive integer"))?;
    let billing_cycle = line
        .get("billingCycle")
        .and_then(Value::as_str)
        .filter(|c| BILLING_CYCLES.contains(c))
        .ok_or_else(|| {
            format!(
                "lines[{i}].billingCycle must be one of {}",
                BILLING_CYCLES.join(", ")
            )
        })?
        .to_owned();
    let quantity = line
        .get("quantity")
        .and_then(Value::as_u64)
        .and_then(|q| u32::try_from(q).ok())
        .filter(|q| (1..=MAX_QUANTITY).contains(q))
        .ok_or_else(|| {
            format!("lines[{i}].quantity must be an integer from 1 to {MAX_QUANTITY}")
        })?;
    let mut config_options = BTreeMap::new();
    match line.get("configOptions") {
        None => {}
        Some(Value::Object(options)) => {
            for (id, option) in options {
                if id.is_empty() || id.len() > 16 || !id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("lines[{i}].configOptions: option ids are numbers"));
                }
                let value = match option {
                    Value::Object(o) => {
                        only_keys(
                            o,
                            &["value", "sensitive"],
                            &format!("lines[{i}].configOptions.{id}"),
                        )?;
                        let sensitive = match o.get("sensitive") {
                            None => false,
                            Some(Value::Bool(b)) => *b,
                            Some(_) => {
                                return Err(format!(
                                    "lines[{i}].configOptions.{id}.sensitive must be true or false"
                                ));
                            }
                        };
                        match (o.get("value"), sensitive) {
                            (Some(Value::String(s)), true) => {
                                OptionValue::Sensitive(SecretString::from(s.clone()))
                            }
                            (Some(Value::Number(n)), true) => {
                                OptionValue::Sensitive(SecretString::from(n.to_string()))
                            }
                            (Some(Value::String(s)), false) if is_sealed(s) => {
                                return Err(sealed_lookalike(i, id));
                            }
                            (
                                Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))),
                                false,
                            ) => OptionValue::Plain(v.clone()),
                            _ => {
                                return Err(format!(
                                    "lines[{i}].configOptions.{id}.value must be a string, number or boolean"
                                ));
                            }
                        }
                    }
                    Value::String(s) if is_sealed(s) => return Err(sealed_lookalike(i, id)),
                    v @ (Value::String(_) | Value::Number(_) | Value::Bool(_)) => {
                        OptionValue::Plain(v.clone())
                    }
                    _ => {
                        return Err(format!(
                            "lines[{i}].configOptions.{id} must be a value or {{\"value\", \"sensitive\"}}"
                        ));
                    }
                };
                config_options.insert(id.clone(), value);
            }
        }
        Some(_) => return Err(format!("lines[{i}].configOptions must be an object")),
    }
    Ok(OrderLine {
        whmcs_product_id,
        billing_cycle,
        quantity,
        config_options,
    })
}

/// The request in one canonical form (sorted keys, one spelling of each value), the input of
/// its fingerprint: the same order sent twice, however formatted, has one fingerprint.
fn canonical(request: &OrderRequest) -> Vec<u8> {
    let lines: Vec<Value> = request
        .lines
        .iter()
        .map(|l| {
            let options: Map<String, Value> = l
                .config_options
                .iter()
                .map(|(id, v)| {
                    let v = match v {
                        OptionValue::Plain(v) => json!({ "plain": v }),
                        OptionValue::Sensitive(s) => json!({ "sensitive": s.expose_secret() }),
                    };
                    (id.clone(), v)
                })
                .collect();
            json!([l.whmcs_product_id, l.billing_cycle, l.quantity, options])
        })
        .collect();
    let account = sf_rest::OrderId::parse(&request.account_id)
        .map(|id| id.to_18())
        .unwrap_or_else(|_| request.account_id.clone());
    json!([account, lines]).to_string().into_bytes()
}

/// The order intake service.
pub struct OrderIntake {
    sf: Arc<dyn OrderIntakeApi>,
    store: Arc<dyn Store>,
    sealer: Arc<dyn OptionSealer>,
    clock: Arc<dyn Clock>,
    config: IntakeConfig,
    /// WHMCS product id -> (entry, fetched at).
    entries: Mutex<HashMap<u64, (sf_rest::PricebookEntry, tokio::time::Instant)>>,
}

impl std::fmt::Debug for OrderIntake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderIntake")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OrderIntake {
    /// The service over its ports.
    pub fn new(
        sf: Arc<dyn OrderIntakeApi>,
        store: Arc<dyn Store>,
        sealer: Arc<dyn OptionSealer>,
        clock: Arc<dyn Clock>,
        config: IntakeConfig,
    ) -> Self {
        Self {
            sf,
            store,
            sealer,
            clock,
            config,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Answers one request of `customer` with `idempotency_key` and `body`. The caller has
    /// checked the address, the token and the customer number's shape.
    pub async fn place(&self, customer: &str, idempotency_key: &str, body: &[u8]) -> IntakeAnswer {
        if !is_idempotency_key(idempotency_key) {
            return IntakeAnswer::invalid("Idempotency-Key must be 8 to 128 of A-Z a-z 0-9 - _");
        }
        let request = match parse_request(body) {
            Ok(r) => r,
            Err(reason) => return IntakeAnswer::invalid(&reason),
        };
        let key = OrderRequestKey {
            customer_number: customer.to_owned(),
            idempotency_key: idempotency_key.to_owned(),
        };
        let fingerprint = match self.sealer.fingerprint(&canonical(&request)) {
            Ok(fingerprint) => fingerprint,
            Err(e) => {
                tracing::error!(error = %e, "order intake: fingerprinting failed");
                return IntakeAnswer::later(503, "unavailable", Duration::from_secs(5));
            }
        };
        let start = match self
            .store
            .begin_order_request(&key, &fingerprint, self.config.hold, self.clock.now())
            .await
        {
            Ok(start) => start,
            Err(e) => {
                tracing::warn!(error = %e, "order intake: the store failed");
                return IntakeAnswer::later(503, "unavailable", Duration::from_secs(5));
            }
        };
        let taken_over = match start {
            OrderRequestStart::Answered(answer) => {
                return IntakeAnswer {
                    status: answer.status,
                    body: answer.body,
                    retry_after: None,
                };
            }
            OrderRequestStart::Mismatch => {
                return IntakeAnswer::error(422, "idempotency_key_reused");
            }
            OrderRequestStart::InFlight { retry_after } => {
                return IntakeAnswer::later(409, "request_in_progress", retry_after);
            }
            OrderRequestStart::Started { taken_over } => taken_over,
        };
        // Every attempt that may create an Order counts (a take-over too: a released,
        // rate-limited request must not get round the rate by being sent again).
        let limited = self
            .config
            .order_limit
            .take(
                self.store.as_ref(),
                ORDER_RATE_SCOPE,
                &key.customer_number,
                self.clock.now(),
            )
            .await;
        if !matches!(limited, Ok(None)) {
            // The key stays free for the same body later.
            let _ = self
                .store
                .release_order_request(&key, Vec::new(), self.clock.now())
                .await;
            return match limited {
                Ok(wait) => IntakeAnswer {
                    retry_after: Some(security::RetryAfter(wait.unwrap_or_default()).header_secs()),
                    ..IntakeAnswer::error(429, "rate_limited")
                },
                Err(e) => {
                    tracing::warn!(error = %e, "order intake: the shared order rate could not be read");
                    IntakeAnswer::later(503, "unavailable", Duration::from_secs(5))
                }
            };
        }
        match self.create(&key, &request, taken_over).await {
            Step::Final(answer, order) => {
                let record = self.record(&key, &answer, order.as_ref());
                let stored = OrderRequestAnswer {
                    status: answer.status,
                    body: answer.body.clone(),
                    order_id: order.map(|o| o.id.as_str().to_owned()),
                };
                if let Err(e) = self
                    .store
                    .answer_order_request(
                        &key,
                        stored,
                        record.into_iter().collect(),
                        self.clock.now(),
                    )
                    .await
                {
                    // The Order may exist: the retry takes the row over and looks it up.
                    tracing::warn!(error = %e, "order intake: the answer could not be stored");
                    return IntakeAnswer::later(503, "unavailable", Duration::from_secs(5));
                }
                answer
            }
            Step::Unknown(after) => {
                let _ = self
                    .store
                    .release_order_request(&key, Vec::new(), self.clock.now())
                    .await;
                IntakeAnswer::later(503, "unavailable", after)
            }
        }
    }

    async fn create(
        &self,
        key: &OrderRequestKey,
        request: &OrderRequest,
        taken_over: bool,
    ) -> Step {
        let external_id = key.external_id();
        // 1. The Account is the caller's own.
        match self.sf.account_customer_number(&request.account_id).await {
            Ok(Some(number)) if number == key.customer_number => {}
            Ok(_) => return Step::Final(IntakeAnswer::error(403, "forbidden"), None),
            Err(e) if e.is_retryable() => return Step::unknown(&e),
            Err(e) => {
                tracing::warn!(error = %e, "order intake: the Account could not be read");
                return Step::Final(IntakeAnswer::error(403, "forbidden"), None);
            }
        }
        // 2. An earlier attempt may have created it.
        if taken_over {
            match self.sf.find_order_by_request_id(&external_id).await {
                Ok(Some(order)) => return Step::created(order),
                Ok(None) => {}
                Err(e) => return Step::unknown(&e),
            }
        }
        // 3. Prices, and the items with sensitive values sealed.
        let entries = match self.entries(request).await {
            Ok(entries) => entries,
            Err(step) => return step,
        };
        let mut items = Vec::with_capacity(request.lines.len());
        for line in &request.lines {
            let Some(entry) = entries.get(&line.whmcs_product_id) else {
                return Step::Final(
                    IntakeAnswer {
                        status: 400,
                        body: json!({
                            "error": "unknown_product",
                            "whmcsProductId": line.whmcs_product_id,
                        })
                        .to_string(),
                        retry_after: None,
                    },
                    None,
                );
            };
            let mut options = Map::new();
            for (id, value) in &line.config_options {
                let value = match value {
                    OptionValue::Plain(v) => v.clone(),
                    OptionValue::Sensitive(secret) => {
                        match self.sealer.seal(&external_id, id, secret.expose_secret()) {
                            Ok(sealed) => Value::String(sealed),
                            Err(e) => {
                                tracing::error!(error = %e, "order intake: sealing failed");
                                return Step::Unknown(Duration::from_secs(5));
                            }
                        }
                    }
                };
                options.insert(id.clone(), value);
            }
            items.push(NewOrderItem {
                pricebook_entry_id: entry.id.clone(),
                quantity: line.quantity,
                unit_price: entry.unit_price,
                billing_cycle: line.billing_cycle.clone(),
                config_options_json: Value::Object(options).to_string(),
            });
        }
        let order = NewOrder {
            account_id: request.account_id.clone(),
            effective_date: self.clock.now().date_naive(),
            status: self.config.new_status.clone(),
            pricebook_id: self.config.pricebook_id.clone(),
            request_id: external_id.clone(),
            items,
        };
        // 4. Create, all or none; a duplicate or an unknown outcome is looked up.
        match self.sf.create_order(&order).await {
            Ok(created) => Step::created(created),
            Err(sf_rest::Error::Duplicate { .. }) => self.look_up(&external_id).await,
            Err(e) if e.is_unknown_outcome() => self.look_up(&external_id).await,
            Err(e) if e.is_retryable() => Step::unknown(&e),
            Err(e) => {
                tracing::warn!(error = %e, "order intake: salesforce refused the Order");
                Step::Final(IntakeAnswer::error(502, "order_not_created"), None)
            }
        }
    }

    async fn look_up(&self, external_id: &str) -> Step {
        match self.sf.find_order_by_request_id(external_id).await {
            Ok(Some(order)) => Step::created(order),
            // Not there (yet): the next attempt looks again before it creates.
            Ok(None) => Step::Unknown(Duration::from_secs(5)),
            Err(e) => Step::unknown(&e),
        }
    }

    /// The price book entries of the request's products (cached for `pricebook_ttl`).
    async fn entries(
        &self,
        request: &OrderRequest,
    ) -> Result<HashMap<u64, sf_rest::PricebookEntry>, Step> {
        let now = tokio::time::Instant::now();
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            for line in &request.lines {
                match cache.get(&line.whmcs_product_id) {
                    Some((entry, at)) if now.duration_since(*at) < self.config.pricebook_ttl => {
                        found.insert(line.whmcs_product_id, entry.clone());
                    }
                    _ => missing.push(line.whmcs_product_id),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(found);
        }
        let fetched = self
            .sf
            .pricebook_entries(&self.config.pricebook_id, &missing)
            .await
            .map_err(|e| Step::unknown(&e))?;
        let mut cache = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for entry in fetched {
            cache.insert(entry.whmcs_product_id, (entry.clone(), now));
            found.insert(entry.whmcs_product_id, entry);
        }
        Ok(found)
    }

    fn record(
        &self,
        key: &OrderRequestKey,
        answer: &IntakeAnswer,
        order: Option<&CreatedOrder>,
    ) -> Option<NewAuditRecord> {
        let outcome = match answer.status {
            201 => Outcome::Success,
            400..=499 => Outcome::Refused,
            _ => Outcome::Failed,
        };
        let mut record = NewAuditRecord::new(Actor::PORTAL, Action::ORDER_INTAKE, outcome);
        if let Some(order) = order {
            record = record.order_id(order.id.as_str()).ok()?;
        }
        if audit::SubjectId::new(key.customer_number.as_str()).is_ok() {
            record = record.customer_number(key.customer_number.as_str()).ok()?;
        }
        if answer.status != 201 {
            record = record
                .detail(DetailKey::ErrorCode, format!("http_{}", answer.status))
                .ok()?;
        }
        Some(record)
    }
}

/// How an attempt ended.
enum Step {
    /// A final answer (stored; a repeat gets it), and the Order when one exists.
    Final(IntakeAnswer, Option<CreatedOrder>),
    /// Not known whether an Order exists, or a passing failure: released, try again after.
    Unknown(Duration),
}

impl Step {
    fn created(order: CreatedOrder) -> Self {
        Step::Final(IntakeAnswer::created(&order), Some(order))
    }

    fn unknown(e: &sf_rest::Error) -> Self {
        tracing::warn!(error = %e, "order intake: salesforce did not answer usably; the key is free for a retry");
        Step::Unknown(Duration::from_secs(5))
    }
}
