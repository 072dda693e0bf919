//! The in-memory org: Accounts, Orders, OrderItems, products and price books, the SOQL queries
//! the provisioner and the order intake send, the Order PATCH with Salesforce's validation, and
//! (in [`intake`]) the all-or-none composite create of an Order with its OrderItems.

mod intake;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

use super::StatusRule;
use super::schema::Schema;
use crate::record_log::RecordLog;

pub use intake::{SfOrderItemPrice, SfPricebookEntry, SfProduct};

/// An Account record.
#[derive(Clone, Debug, PartialEq)]
pub struct SfAccount {
    /// 18-character id (key prefix `001`).
    pub id: String,
    /// `Name`.
    pub name: String,
    /// `Customer_Number__c`.
    pub customer_number: Option<String>,
    /// `WHMCS_Client_Id__c`: the customer's WHMCS client, a JSON string or number, or `null`.
    /// An Order created through the REST API takes it (and `Customer_Number__c`) from its
    /// Account, as the Order's formula fields of the same names do.
    pub whmcs_client_id: Value,
}

/// An Order record.
#[derive(Clone, Debug, PartialEq)]
pub struct SfOrder {
    /// 18-character id (key prefix `801`).
    pub id: String,
    /// `OrderNumber`.
    pub order_number: String,
    /// `Status` (picklist).
    pub status: String,
    /// `AccountId`.
    pub account_id: Option<String>,
    /// `Customer_Number__c`.
    pub customer_number: Option<String>,
    /// `WHMCS_Client_Id__c` as the org stores it: a JSON string (`"12"`, Text field) or number
    /// (`12.0`, Number field), or `null`.
    pub whmcs_client_id: Value,
    /// `WHMCS_Order_Id__c`.
    pub whmcs_order_id: Option<String>,
    /// `WHMCS_Service_Ids__c`.
    pub whmcs_service_ids: Option<String>,
    /// `Provisioned_At__c`.
    pub provisioned_at: Option<DateTime<Utc>>,
    /// `Provisioning_Error__c`.
    pub provisioning_error: Option<String>,
    /// `LastModifiedDate`; PATCH sets it to now.
    pub last_modified: DateTime<Utc>,
    /// `EffectiveDate` (set by a REST create).
    pub effective_date: Option<NaiveDate>,
    /// `Pricebook2Id` (set by a REST create).
    pub pricebook_id: Option<String>,
    /// `Portal_Request_Id__c`: the order intake's unique external id (case-sensitive).
    pub portal_request_id: Option<String>,
}

impl SfOrder {
    /// An Order with the given id and status, every other field empty.
    pub fn new(id: impl Into<String>, status: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            order_number: "00000100".into(),
            status: status.into(),
            account_id: None,
            customer_number: None,
            whmcs_client_id: Value::Null,
            whmcs_order_id: None,
            whmcs_service_ids: None,
            provisioned_at: None,
            provisioning_error: None,
            last_modified: Utc::now(),
            effective_date: None,
            pricebook_id: None,
            portal_request_id: None,
        }
    }
}

/// An OrderItem record.
#[derive(Clone, Debug, PartialEq)]
pub struct SfOrderItem {
    /// 18-character id (key prefix `802`).
    pub id: String,
    /// `OrderId`.
    pub order_id: String,
    /// `Quantity` (always sent as a JSON number such as `2.0`).
    pub quantity: f64,
    /// `WHMCS_Product_Id__c`: a JSON string or number, or `null`.
    pub whmcs_product_id: Value,
    /// `Billing_Cycle__c`.
    pub billing_cycle: Option<String>,
    /// `Config_Options__c`: JSON object text, may hold secrets.
    pub config_options: Option<String>,
}

/// One PATCH the sandbox received, whatever its outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedPatch {
    /// The id in the URL.
    pub order_id: String,
    /// The request body (JSON; `Value::Null` when it was not JSON).
    pub body: Value,
    /// The HTTP status the sandbox answered.
    pub status: u16,
    /// When it arrived.
    pub at: DateTime<Utc>,
    /// The user whose access token sent it (`None`: a token the sandbox did not issue).
    pub username: Option<String>,
}

/// A Salesforce REST error: HTTP status plus the `[{message, errorCode, fields}]` body.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) fields: Vec<String>,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    pub(crate) fn field(mut self, field: &str) -> Self {
        self.fields.push(field.to_owned());
        self
    }

    pub(crate) fn body(&self) -> Value {
        json!([{ "message": self.message, "errorCode": self.code, "fields": self.fields }])
    }
}

/// The org's data plus what the sandbox recorded.
///
/// Orders are keyed by their id as inserted; the secondary indexes (kept in sync by
/// [`OrgData::insert_order`], [`OrgData::insert_item`] and the PATCH) make the provisioner's
/// per-Order calls O(log n): Order by 15- or 18-character id, its OrderItems, and the reconcile
/// sweep's `Status = .. AND LastModifiedDate < ..` range.
#[derive(Debug, Default)]
pub(crate) struct OrgData {
    pub(crate) accounts: BTreeMap<String, SfAccount>,
    orders: BTreeMap<String, SfOrder>,
    /// The 15-character form of every valid Order id -> the keys of `orders` with that form
    /// (one, unless an Order was inserted under both its 15- and 18-character id).
    order_keys: HashMap<String, BTreeSet<String>>,
    /// `(Status, LastModifiedDate, key)` of every Order.
    by_status: BTreeSet<(String, DateTime<Utc>, String)>,
    items: Vec<SfOrderItem>,
    /// The 15-character form of an `OrderId` -> positions in `items`, in insertion order.
    items_by_order: HashMap<String, Vec<usize>>,
    patches: RecordLog<RecordedPatch>,
    pages: BTreeMap<String, Vec<Value>>,
    next_locator: u64,
    /// Validation rules on `Status` ([`super::SalesforceConfig::status_rules`]).
    status_rules: Vec<StatusRule>,
    /// A validation rule a test turned on: `Status` may not change to its status at all.
    refused_status: Option<StatusRule>,
    /// `Portal_Request_Id__c` -> the key in `orders` (the field is unique).
    by_request_id: HashMap<String, String>,
    /// The highest numeric `OrderNumber` stored: the next created Order gets the one after.
    max_order_number: u64,
    /// Product2 records by id.
    products: BTreeMap<String, SfProduct>,
    /// Pricebook2 ids.
    pricebooks: BTreeSet<String>,
    /// PricebookEntry records by id.
    entries: BTreeMap<String, SfPricebookEntry>,
    /// OrderItem id -> its price book entry and unit price (items created through REST).
    item_prices: HashMap<String, SfOrderItemPrice>,
    /// Records created through REST so far (for fresh ids).
    created: u64,
    /// The sObjects and fields the integration user sees (describe, `INVALID_FIELD`).
    pub(crate) schema: Schema,
}

/// The fixed part of the provisioner's Order query (`sf-rest`'s `ORDER_QUERY`),
/// whitespace-normalised.
const ORDER_QUERY_PREFIX: &str = "SELECT Id, OrderNumber, Status, AccountId, Customer_Number__c, WHMCS_Client_Id__c, WHMCS_Order_Id__c, Portal_Request_Id__c, (SELECT Id, Quantity, WHMCS_Product_Id__c, Billing_Cycle__c, Config_Options__c FROM OrderItems) FROM Order WHERE Id = ";

/// The reconcile sweep's query (defined by `sf-rest`), whitespace-normalised.
const APPROVED_QUERY_PREFIX: &str =
    "SELECT Id, AccountId, Customer_Number__c, LastModifiedDate FROM Order WHERE Status = ";

/// Whether `id` looks like a Salesforce id (15 or 18 alphanumerics).
pub(crate) fn is_id(id: &str) -> bool {
    matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The case-sensitive 15-character form ids match on, when `id` is an id at all.
fn id15(id: &str) -> Option<&str> {
    if is_id(id) { id.get(..15) } else { None }
}

/// Salesforce ids match on their case-sensitive 15-character form.
#[cfg(test)]
pub(crate) fn same_id(a: &str, b: &str) -> bool {
    is_id(a) && is_id(b) && a[..15] == b[..15]
}

/// The 3-character suffix that makes a 15-character id case-insensitively unique.
pub(crate) fn id_checksum(id15: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    id15.as_bytes()
        .chunks(5)
        .map(|chunk| {
            let bits = chunk
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_ascii_uppercase())
                .fold(0usize, |acc, (i, _)| acc | (1 << i));
            char::from(ALPHABET[bits & 31])
        })
        .collect()
}

/// A valid 18-character id: a 3-character key prefix (`001` Account, `801` Order, `802`
/// OrderItem, `00D` org, `005` user), then `n` in base 62 (12 characters), then the checksum.
pub fn salesforce_id(key_prefix: &str, n: u64) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut body = [b'0'; 12];
    let mut v = n;
    for slot in body.iter_mut().rev() {
        *slot = DIGITS[(v % 62) as usize];
        v /= 62;
    }
    let mut id15: String = key_prefix.chars().chain(['0'; 3]).take(3).collect();
    id15.extend(body.iter().map(|b| char::from(*b)));
    let sum = id_checksum(&id15);
    id15 + &sum
}

/// Reads a SOQL string literal starting at `s[0] == '\''`; returns its value and the rest.
fn soql_string(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('\'')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                let (_, escaped) = chars.next()?;
                out.push(match escaped {
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    other => other,
                });
            }
            '\'' => return Some((out, &s[i + 2..])),
            other => out.push(other),
        }
    }
    None
}

fn malformed(detail: &str) -> ApiError {
    ApiError::new(
        400,
        "MALFORMED_QUERY",
        format!("unexpected token: {detail}"),
    )
}

/// Salesforce's REST date-time format: `2024-05-01T12:34:56.000+0000`.
pub(crate) fn sf_datetime(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

fn string_or_null(v: &Option<String>) -> Value {
    v.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

impl OrgData {
    /// An empty org with one price book and the validation rules `status_rules`.
    pub(crate) fn with_pricebook(pricebook_id: String, status_rules: Vec<StatusRule>) -> Self {
        let mut org = Self {
            status_rules,
            ..Self::default()
        };
        org.insert_pricebook(pricebook_id);
        org
    }

    /// Adds or replaces the Order stored under its id, keeping the indexes in sync.
    pub(crate) fn insert_order(&mut self, order: SfOrder) {
        let key = order.id.clone();
        if let Some(old) = self.orders.get(&key) {
            self.by_status
                .remove(&(old.status.clone(), old.last_modified, key.clone()));
            if let Some(request) = &old.portal_request_id
                && self.by_request_id.get(request) == Some(&key)
            {
                self.by_request_id.remove(request);
            }
        }
        if let Some(request) = &order.portal_request_id {
            self.by_request_id.insert(request.clone(), key.clone());
        }
        if let Ok(number) = order.order_number.parse::<u64>() {
            self.max_order_number = self.max_order_number.max(number);
        }
        if let Some(short) = id15(&key) {
            self.order_keys
                .entry(short.to_owned())
                .or_default()
                .insert(key.clone());
        }
        self.by_status
            .insert((order.status.clone(), order.last_modified, key.clone()));
        self.orders.insert(key, order);
    }

    /// Adds an OrderItem.
    pub(crate) fn insert_item(&mut self, item: SfOrderItem) {
        if let Some(short) = id15(&item.order_id) {
            self.items_by_order
                .entry(short.to_owned())
                .or_default()
                .push(self.items.len());
        }
        self.items.push(item);
    }

    /// Replaces the stored `Config_Options__c` of the OrderItem `item_id`; whether it existed.
    pub(crate) fn set_item_config_options(&mut self, item_id: &str, json: Option<String>) -> bool {
        match self.items.iter_mut().find(|i| i.id == item_id) {
            Some(item) => {
                item.config_options = json;
                true
            }
            None => false,
        }
    }

    /// The Orders whose id matches `id` on the 15-character form, in key order.
    fn matching_orders<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a SfOrder> + 'a {
        id15(id)
            .and_then(|short| self.order_keys.get(short))
            .into_iter()
            .flatten()
            .filter_map(|key| self.orders.get(key))
    }

    /// The first Order (in key order) whose id matches `id` (15 or 18 characters).
    pub(crate) fn order(&self, id: &str) -> Option<&SfOrder> {
        self.matching_orders(id).next()
    }

    /// Sets an Order's `Status` (no picklist check here) and bumps its `LastModifiedDate`
    /// (strictly later than before), keeping the status index right; returns the Order as
    /// stored now, or `None` when there is no such Order.
    pub(crate) fn set_status(&mut self, id: &str, status: &str) -> Option<SfOrder> {
        let mut order = self.order(id)?.clone();
        order.status = status.to_owned();
        order.last_modified =
            Utc::now().max(order.last_modified + chrono::Duration::milliseconds(1));
        self.insert_order(order.clone());
        Some(order)
    }

    /// Every PATCH recorded, oldest first.
    pub(crate) fn patches(&self) -> Vec<RecordedPatch> {
        self.patches.to_vec()
    }

    /// Turns PATCH recording on or off.
    pub(crate) fn set_record_patches(&mut self, record: bool) {
        self.patches.set_enabled(record);
    }

    /// Keeps at most `limit` recorded PATCHes (the most recent).
    pub(crate) fn set_patch_log_limit(&mut self, limit: usize) {
        self.patches.set_limit(limit);
    }

    /// Forgets the recorded PATCHes.
    pub(crate) fn clear_patches(&mut self) {
        self.patches.clear();
    }

    /// Answers a SOQL query, or the error Salesforce would give.
    pub(crate) fn query(
        &mut self,
        soql: &str,
        version: &str,
        page_size: usize,
    ) -> Result<Value, ApiError> {
        let normalised = soql.split_whitespace().collect::<Vec<_>>().join(" ");
        self.schema.check_soql(&normalised)?;
        let records = if let Some(rest) = normalised.strip_prefix(ORDER_QUERY_PREFIX) {
            let (id, rest) = soql_string(rest).ok_or_else(|| malformed("unterminated string"))?;
            if !rest.trim().is_empty() {
                return Err(malformed(rest.trim()));
            }
            if !is_id(&id) {
                return Err(ApiError::new(
                    400,
                    "INVALID_QUERY_FILTER_OPERATOR",
                    format!("invalid ID field: {id}"),
                ));
            }
            self.matching_orders(&id)
                .map(|o| self.order_record(o, version))
                .collect::<Vec<_>>()
        } else if let Some(rest) = normalised.strip_prefix(APPROVED_QUERY_PREFIX) {
            let (status, rest) =
                soql_string(rest).ok_or_else(|| malformed("unterminated string"))?;
            let rest = rest
                .strip_prefix(" AND LastModifiedDate < ")
                .ok_or_else(|| malformed(rest))?;
            let (cutoff, rest) = rest.split_once(' ').ok_or_else(|| malformed(rest))?;
            let cutoff = DateTime::parse_from_rfc3339(cutoff)
                .map_err(|_| malformed(cutoff))?
                .with_timezone(&Utc);
            let limit = match rest.strip_prefix("ORDER BY LastModifiedDate ASC, Id ASC") {
                Some("") => usize::MAX,
                Some(tail) => tail
                    .strip_prefix(" LIMIT ")
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| malformed(rest))?,
                None => return Err(malformed(rest)),
            };
            // Ascending (LastModifiedDate, Id) within the status, thanks to the index.
            let from = (status.clone(), DateTime::<Utc>::MIN_UTC, String::new());
            let to = (status, cutoff, String::new());
            self.by_status
                .range(from..to)
                .filter_map(|(_, _, key)| self.orders.get(key))
                .take(limit)
                .map(|o| {
                    json!({
                        "attributes": attributes("Order", &o.id, version),
                        "Id": o.id,
                        "AccountId": string_or_null(&o.account_id),
                        "Customer_Number__c": string_or_null(&o.customer_number),
                        "LastModifiedDate": sf_datetime(&o.last_modified),
                    })
                })
                .collect()
        } else if let Some(records) = self.intake_query(&normalised, version)? {
            records
        } else {
            return Err(malformed(&normalised));
        };
        Ok(self.page(records, version, page_size.max(1)))
    }

    /// The next page of an earlier query (`nextRecordsUrl`).
    pub(crate) fn query_more(
        &mut self,
        locator: &str,
        version: &str,
        page_size: usize,
    ) -> Result<Value, ApiError> {
        let records = self
            .pages
            .remove(locator)
            .ok_or_else(|| ApiError::new(400, "INVALID_QUERY_LOCATOR", "invalid query locator"))?;
        Ok(self.page(records, version, page_size.max(1)))
    }

    fn page(&mut self, mut records: Vec<Value>, version: &str, page_size: usize) -> Value {
        let total = records.len();
        if records.len() <= page_size {
            return json!({ "totalSize": total, "done": true, "records": records });
        }
        let rest = records.split_off(page_size);
        self.next_locator += 1;
        let locator = format!("01gSANDBOX{:08}-{page_size}", self.next_locator);
        self.pages.insert(locator.clone(), rest);
        json!({
            "totalSize": total,
            "done": false,
            "nextRecordsUrl": format!("/services/data/{version}/query/{locator}"),
            "records": records,
        })
    }

    fn order_record(&self, o: &SfOrder, version: &str) -> Value {
        let positions = id15(&o.id)
            .and_then(|short| self.items_by_order.get(short))
            .map_or(&[][..], Vec::as_slice);
        let items: Vec<Value> = positions
            .iter()
            .filter_map(|&n| self.items.get(n))
            .map(|i| {
                json!({
                    "attributes": attributes("OrderItem", &i.id, version),
                    "Id": i.id,
                    "Quantity": i.quantity,
                    "WHMCS_Product_Id__c": i.whmcs_product_id,
                    "Billing_Cycle__c": string_or_null(&i.billing_cycle),
                    "Config_Options__c": string_or_null(&i.config_options),
                })
            })
            .collect();
        let order_items = if items.is_empty() {
            Value::Null
        } else {
            json!({ "totalSize": items.len(), "done": true, "records": items })
        };
        json!({
            "attributes": attributes("Order", &o.id, version),
            "Id": o.id,
            "OrderNumber": o.order_number,
            "Status": o.status,
            "AccountId": string_or_null(&o.account_id),
            "Customer_Number__c": string_or_null(&o.customer_number),
            "WHMCS_Client_Id__c": o.whmcs_client_id,
            "WHMCS_Order_Id__c": string_or_null(&o.whmcs_order_id),
            "Portal_Request_Id__c": string_or_null(&o.portal_request_id),
            "OrderItems": order_items,
        })
    }

    /// Installs (or with `None` removes) a validation rule refusing `Status = status`.
    pub(crate) fn set_rejected_status(&mut self, status: Option<String>) {
        self.refused_status = status.map(|status| StatusRule {
            status,
            from: Vec::new(),
        });
    }

    /// Applies a PATCH to an Order sent with no known user.
    #[cfg(test)]
    pub(crate) fn patch_order(
        &mut self,
        id: &str,
        body: &[u8],
        statuses: &[String],
    ) -> Result<(), ApiError> {
        self.patch_order_as(id, body, statuses, None)
    }

    /// Applies a PATCH that `username` sent to an Order; records it whatever the outcome.
    pub(crate) fn patch_order_as(
        &mut self,
        id: &str,
        body: &[u8],
        statuses: &[String],
        username: Option<String>,
    ) -> Result<(), ApiError> {
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let result = self.apply_patch(id, &parsed, statuses);
        self.patches.push(RecordedPatch {
            order_id: id.to_owned(),
            body: parsed,
            status: result.as_ref().map_or_else(|e| e.status, |()| 204),
            at: Utc::now(),
            username,
        });
        result
    }

    fn apply_patch(&mut self, id: &str, body: &Value, statuses: &[String]) -> Result<(), ApiError> {
        let Some(key) = self.order(id).map(|o| o.id.clone()) else {
            return Err(ApiError::new(
                404,
                "NOT_FOUND",
                "The requested resource does not exist",
            ));
        };
        let Some(fields) = body.as_object() else {
            return Err(ApiError::new(
                400,
                "JSON_PARSER_ERROR",
                "The request body is not a JSON object",
            ));
        };
        let mut updated = self.orders.get(&key).cloned().ok_or_else(|| {
            ApiError::new(404, "NOT_FOUND", "The requested resource does not exist")
        })?;
        if let Some(Value::String(status)) = fields.get("Status")
            && *status != updated.status
            && let Some(rule) = self
                .status_rules
                .iter()
                .chain(&self.refused_status)
                .find(|r| r.status == *status && !r.from.contains(&updated.status))
        {
            let message = if rule.from.is_empty() {
                format!("Status cannot be set to {status} (validation rule)")
            } else {
                format!(
                    "Status can be set to {status} only from {} (validation rule)",
                    rule.from.join(" or ")
                )
            };
            return Err(ApiError::new(
                400,
                "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                message,
            ));
        }
        for (name, value) in fields {
            self.schema.check_update("Order", name)?;
            apply_field(&mut updated, name, value, statuses)?;
        }
        updated.last_modified = Utc::now();
        self.insert_order(updated);
        Ok(())
    }
}

fn apply_field(
    order: &mut SfOrder,
    name: &str,
    value: &Value,
    statuses: &[String],
) -> Result<(), ApiError> {
    let text = match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => {
            return Err(ApiError::new(
                400,
                "JSON_PARSER_ERROR",
                format!("Cannot deserialize instance of string from {other} value"),
            ));
        }
    };
    match name {
        "Status" => match text {
            Some(s) if statuses.contains(&s) => order.status = s,
            other => {
                return Err(ApiError::new(
                    400,
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    format!(
                        "Status: bad value for restricted picklist field: {}",
                        other.unwrap_or_default()
                    ),
                )
                .field("Status"));
            }
        },
        "WHMCS_Order_Id__c" => order.whmcs_order_id = text,
        "WHMCS_Service_Ids__c" => order.whmcs_service_ids = text,
        "Provisioned_At__c" => {
            order.provisioned_at = match text {
                None => None,
                Some(s) => Some(
                    DateTime::parse_from_rfc3339(&s)
                        .map_err(|_| {
                            ApiError::new(
                                400,
                                "JSON_PARSER_ERROR",
                                format!(
                                    "Cannot deserialize instance of datetime from VALUE_STRING value {s}"
                                ),
                            )
                        })?
                        .with_timezone(&Utc),
                ),
            }
        }
        "Provisioning_Error__c" => {
            if text.as_ref().is_some_and(|s| s.chars().count() > 255) {
                return Err(ApiError::new(
                    400,
                    "STRING_TOO_LONG",
                    "Provisioning Error: data value too large (max length=255)",
                )
                .field("Provisioning_Error__c"));
            }
            order.provisioning_error = text;
        }
        other => {
            return Err(ApiError::new(
                400,
                "INVALID_FIELD",
                format!("No such column '{other}' on sobject of type Order"),
            ));
        }
    }
    Ok(())
}

fn attributes(kind: &str, id: &str, version: &str) -> Value {
    json!({ "type": kind, "url": format!("/services/data/{version}/sobjects/{kind}/{id}") })
}

/// Renders a date-time the way the reconcile query writes it, for tests.
#[cfg(test)]
pub(crate) fn soql_datetime(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn checksum_matches_known_ids() {
        // Published examples: 15-character id -> 18-character id.
        assert_eq!(id_checksum("001A0000006Vm9r"), "IAC");
        assert_eq!(id_checksum("003A0000005QB3A"), "IAW");
        let id = salesforce_id("801", 123_456_789);
        assert_eq!(id.len(), 18);
        assert_eq!(&id[15..], id_checksum(&id[..15]));
        assert!(id.starts_with("801"));
    }

    #[test]
    fn soql_strings_unescape() {
        assert_eq!(
            soql_string(r"'a\'b\\c' rest"),
            Some((r"a'b\c".to_owned(), " rest"))
        );
        assert_eq!(soql_string("'open"), None);
    }

    fn org_with_order() -> (OrgData, String) {
        let mut org = OrgData::default();
        let id = salesforce_id("801", 1);
        let mut order = SfOrder::new(id.clone(), "Approved");
        order.whmcs_client_id = json!(12.0);
        org.insert_order(order);
        (org, id)
    }

    #[test]
    fn order_query_answers_with_null_order_items_when_there_are_none() {
        let (mut org, id) = org_with_order();
        let q = format!("{ORDER_QUERY_PREFIX}'{id}'");
        let answer = org.query(&q, "v62.0", 2000).unwrap();
        assert_eq!(answer["totalSize"], 1);
        assert_eq!(answer["records"][0]["OrderItems"], Value::Null);
        assert_eq!(answer["records"][0]["WHMCS_Client_Id__c"], json!(12.0));
        // A 15-character id finds the same record.
        let q15 = format!("{ORDER_QUERY_PREFIX}'{}'", &id[..15]);
        assert_eq!(org.query(&q15, "v62.0", 2000).unwrap()["totalSize"], 1);
    }

    #[test]
    fn injected_filters_are_refused() {
        let (mut org, _) = org_with_order();
        let q = format!("{ORDER_QUERY_PREFIX}'x' OR Id != ''");
        let err = org.query(&q, "v62.0", 2000).unwrap_err();
        assert_eq!(err.code, "MALFORMED_QUERY");
        let q = format!("{ORDER_QUERY_PREFIX}'x\\' OR Id != \\''");
        let err = org.query(&q, "v62.0", 2000).unwrap_err();
        assert_eq!(err.code, "INVALID_QUERY_FILTER_OPERATOR");
    }

    #[test]
    fn approved_query_pages_through_results() {
        let mut org = OrgData::default();
        for n in 0..5 {
            let id = salesforce_id("801", n);
            let mut order = SfOrder::new(id.clone(), "Approved");
            order.last_modified = DateTime::from_timestamp(1_700_000_000 + n as i64, 0).unwrap();
            org.insert_order(order);
        }
        let cutoff = soql_datetime(&DateTime::from_timestamp(1_700_000_004, 0).unwrap());
        let q = format!(
            "{APPROVED_QUERY_PREFIX}'Approved' AND LastModifiedDate < {cutoff} ORDER BY LastModifiedDate ASC, Id ASC LIMIT 10"
        );
        let first = org.query(&q, "v62.0", 3).unwrap();
        assert_eq!(first["totalSize"], 4);
        assert_eq!(first["done"], false);
        let next = first["nextRecordsUrl"].as_str().unwrap();
        let locator = next.rsplit('/').next().unwrap();
        let second = org.query_more(locator, "v62.0", 3).unwrap();
        assert_eq!(second["done"], true);
        assert_eq!(second["records"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn patch_validates_the_picklist_and_records_every_write() {
        let (mut org, id) = org_with_order();
        let statuses = vec!["Approved".to_owned(), "Activated".to_owned()];
        let err = org
            .patch_order(&id, br#"{"Status":"Bogus"}"#, &statuses)
            .unwrap_err();
        assert_eq!(err.code, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
        assert_eq!(err.fields, vec!["Status".to_owned()]);
        org.patch_order(
            &id,
            br#"{"Status":"Activated","WHMCS_Order_Id__c":"77"}"#,
            &statuses,
        )
        .unwrap();
        assert_eq!(org.orders[&id].status, "Activated");
        assert_eq!(org.orders[&id].whmcs_order_id.as_deref(), Some("77"));
        assert_eq!(
            org.patches.iter().map(|p| p.status).collect::<Vec<_>>(),
            vec![400, 204]
        );
    }

    /// A mixed org: 18-character Orders, one stored under its 15-character id only, one stored
    /// under both forms, a non-id key, and items spread out of order (some pointing at the
    /// 15-character form, some at nothing).
    fn mixed_org() -> OrgData {
        let mut org = OrgData::default();
        for n in 0..300u64 {
            let mut order = SfOrder::new(
                salesforce_id("801", n),
                if n % 3 == 0 { "Approved" } else { "Draft" },
            );
            order.last_modified =
                DateTime::from_timestamp(1_700_000_000 + (n % 17) as i64, 0).unwrap();
            org.insert_order(order);
        }
        let short_only = salesforce_id("801", 1_000)[..15].to_owned();
        org.insert_order(SfOrder::new(short_only, "Approved"));
        let both = salesforce_id("801", 7);
        org.insert_order(SfOrder::new(both[..15].to_owned(), "Approved"));
        org.insert_order(SfOrder::new("not-an-id", "Approved"));
        for k in 0..600u64 {
            let n = (k * 7) % 301;
            let order_id = match k % 5 {
                0 => salesforce_id("801", n)[..15].to_owned(),
                4 => "junk".to_owned(),
                _ => salesforce_id("801", n),
            };
            org.insert_item(SfOrderItem {
                id: salesforce_id("802", k),
                order_id,
                quantity: 1.0,
                whmcs_product_id: json!("5"),
                billing_cycle: Some("monthly".into()),
                config_options: None,
            });
        }
        org.insert_item(SfOrderItem {
            id: salesforce_id("802", 9_999),
            order_id: salesforce_id("801", 1_000),
            quantity: 2.0,
            whmcs_product_id: json!(5.0),
            billing_cycle: None,
            config_options: None,
        });
        org
    }

    /// What the Order query answered before the indexes: every Order and OrderItem scanned.
    fn scanned(org: &OrgData, id: &str) -> Vec<(String, Vec<String>)> {
        org.orders
            .values()
            .filter(|o| same_id(&o.id, id))
            .map(|o| {
                let items = org
                    .items
                    .iter()
                    .filter(|i| same_id(&i.order_id, &o.id))
                    .map(|i| i.id.clone())
                    .collect();
                (o.id.clone(), items)
            })
            .collect()
    }

    fn answered(org: &mut OrgData, id: &str) -> Vec<(String, Vec<String>)> {
        let answer = org
            .query(&format!("{ORDER_QUERY_PREFIX}'{id}'"), "v62.0", 100_000)
            .unwrap();
        let records = answer["records"].as_array().unwrap();
        assert_eq!(answer["totalSize"], records.len());
        records
            .iter()
            .map(|r| {
                let items = match &r["OrderItems"] {
                    Value::Null => Vec::new(),
                    list => {
                        let items = list["records"].as_array().unwrap();
                        assert_eq!(list["totalSize"], items.len());
                        items
                            .iter()
                            .map(|i| i["Id"].as_str().unwrap().to_owned())
                            .collect()
                    }
                };
                (r["Id"].as_str().unwrap().to_owned(), items)
            })
            .collect()
    }

    #[test]
    fn indexed_order_query_answers_like_a_scan_for_15_and_18_character_ids() {
        let mut org = mixed_org();
        let mut ids: Vec<String> = org.orders.keys().cloned().collect();
        ids.extend(
            org.orders
                .keys()
                .filter(|k| is_id(k))
                .map(|k| k[..15].to_owned()),
        );
        let short_only = salesforce_id("801", 1_000);
        ids.push(short_only.clone());
        ids.push(salesforce_id("801", 5_000));
        ids.push(salesforce_id("801", 3).to_lowercase());
        let mut multi = 0;
        for id in &ids {
            if !is_id(id) {
                continue;
            }
            let want = scanned(&org, id);
            let got = answered(&mut org, id);
            assert_eq!(got, want, "{id}");
            multi += usize::from(want.len() > 1);
        }
        assert!(
            multi >= 2,
            "the Order stored under both forms is found twice"
        );
        // An 18-character id finds the Order stored under its 15-character id, with its items.
        let found = answered(&mut org, &short_only);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, short_only[..15]);
        assert_eq!(found[0].1, vec![salesforce_id("802", 9_999)]);
        assert!(answered(&mut org, &salesforce_id("801", 5_000)).is_empty());
        assert_eq!(
            org.order(&short_only).map(|o| o.id.clone()),
            Some(short_only[..15].to_owned())
        );
    }

    #[test]
    fn patch_by_15_character_id_updates_the_first_matching_order_and_the_indexes() {
        let mut org = mixed_org();
        let statuses = vec![
            "Approved".to_owned(),
            "Activated".to_owned(),
            "Draft".to_owned(),
        ];
        let cutoff = soql_datetime(&DateTime::from_timestamp(4_000_000_000, 0).unwrap());
        let sweep = |org: &mut OrgData, status: &str| -> Vec<String> {
            let q = format!(
                "{APPROVED_QUERY_PREFIX}'{status}' AND LastModifiedDate < {cutoff} ORDER BY LastModifiedDate ASC, Id ASC LIMIT 100000"
            );
            let answer = org.query(&q, "v62.0", 100_000).unwrap();
            answer["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["Id"].as_str().unwrap().to_owned())
                .collect()
        };
        let scan_sweep = |org: &OrgData, status: &str| -> Vec<String> {
            let mut matching: Vec<&SfOrder> =
                org.orders.values().filter(|o| o.status == status).collect();
            matching.sort_by(|a, b| (a.last_modified, &a.id).cmp(&(b.last_modified, &b.id)));
            matching.into_iter().map(|o| o.id.clone()).collect()
        };
        for n in [0u64, 3, 7, 42, 299] {
            let id18 = salesforce_id("801", n);
            let want_key = org
                .orders
                .keys()
                .find(|k| same_id(k, &id18))
                .cloned()
                .unwrap();
            org.patch_order(
                &id18[..15],
                br#"{"Status":"Activated","WHMCS_Order_Id__c":"9"}"#,
                &statuses,
            )
            .unwrap();
            assert_eq!(org.orders[&want_key].status, "Activated", "{n}");
            assert_eq!(org.orders[&want_key].whmcs_order_id.as_deref(), Some("9"));
            for status in ["Approved", "Activated", "Draft"] {
                assert_eq!(
                    sweep(&mut org, status),
                    scan_sweep(&org, status),
                    "{status}"
                );
            }
        }
        // Stored under both forms: the 15-character key sorts first and is the one patched.
        assert_eq!(
            org.orders[&salesforce_id("801", 7)[..15]].status,
            "Activated"
        );
        assert_eq!(org.orders[&salesforce_id("801", 7)].status, "Draft");
        let err = org
            .patch_order(
                &salesforce_id("801", 5_000)[..15],
                br#"{"Status":"Activated"}"#,
                &statuses,
            )
            .unwrap_err();
        assert_eq!(err.status, 404);
        assert_eq!(org.patches().len(), 6);
        assert!(org.patches()[..5].iter().all(|p| p.status == 204));
    }

    #[test]
    fn the_patch_log_is_bounded_and_can_be_switched_off() {
        let (mut org, id) = org_with_order();
        let statuses = vec!["Approved".to_owned()];
        org.set_patch_log_limit(2);
        for _ in 0..3 {
            org.patch_order(&id, br#"{"Status":"Approved"}"#, &statuses)
                .unwrap();
        }
        org.patch_order(&id, b"{}", &statuses).unwrap();
        assert_eq!(org.patches().len(), 2);
        org.set_record_patches(false);
        org.patch_order(&id, br#"{"Status":"Bogus"}"#, &statuses)
            .unwrap_err();
        assert_eq!(
            org.patches()
                .iter()
                .map(|p| p.body.clone())
                .collect::<Vec<_>>(),
            vec![json!({"Status":"Approved"}), json!({})]
        );
        org.clear_patches();
        assert!(org.patches().is_empty());
    }

    #[test]
    fn set_status_bumps_last_modified_and_moves_the_order_between_sweeps() {
        let (mut org, id) = org_with_order();
        let sweep = |org: &mut OrgData, status: &str| -> Vec<String> {
            let q = format!(
                "{APPROVED_QUERY_PREFIX}'{status}' AND LastModifiedDate < 2999-01-01T00:00:00Z \
                 ORDER BY LastModifiedDate ASC, Id ASC LIMIT 10"
            );
            org.query(&q, "v62.0", 10).unwrap()["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["Id"].as_str().unwrap().to_owned())
                .collect()
        };
        let before = org.order(&id).unwrap().clone();
        let activated = org.set_status(&id[..15], "Activated").unwrap();
        assert_eq!(activated.status, "Activated");
        assert!(activated.last_modified > before.last_modified);
        assert_eq!(org.order(&id), Some(&activated));
        assert!(sweep(&mut org, &before.status).is_empty());
        assert_eq!(sweep(&mut org, "Activated"), [id.as_str()]);
        let again = org.set_status(&id, &before.status).unwrap();
        assert!(again.last_modified > activated.last_modified);
        assert_eq!(sweep(&mut org, &before.status), [id.as_str()]);
        assert!(sweep(&mut org, "Activated").is_empty());
        assert_eq!(org.set_status(&salesforce_id("801", 77), "Activated"), None);
        assert!(org.patches().is_empty(), "not a PATCH");
    }
}
