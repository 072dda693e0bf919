//! Order intake: products and price books, the intake's three SOQL queries, and the composite
//! resource creating an Order with its OrderItems all-or-none.
//!
//! Rules emulated (Salesforce's, as far as the intake uses them): an Order needs `AccountId`,
//! `EffectiveDate` (`YYYY-MM-DD`), `Status` (a picklist value, not `Activated`) and
//! `Pricebook2Id`; `Portal_Request_Id__c` is a unique, case-sensitive external id (a second
//! Order with the same value fails with `DUPLICATE_VALUE`); `OrderNumber` is an auto-number;
//! `Customer_Number__c` and `WHMCS_Client_Id__c` are formulas over the Account (copied at
//! create time here). An OrderItem needs `OrderId`, `PricebookEntryId` (an active entry of the
//! Order's price book, else `FIELD_INTEGRITY_EXCEPTION`), `Quantity` and `UnitPrice`; its
//! `WHMCS_Product_Id__c` is a formula over the entry's Product2.

use std::collections::HashMap;

use chrono::{NaiveDate, Utc};
use serde_json::{Map, Value, json};

use super::{
    ApiError, OrgData, SfOrder, SfOrderItem, attributes, id15, is_id, malformed, salesforce_id,
    soql_string, string_or_null,
};

/// Most subrequests one composite request may carry.
pub(crate) const MAX_SUBREQUESTS: usize = 25;

/// Longest `Config_Options__c` (a long text area).
const MAX_LONG_TEXT: usize = 131_072;

/// Longest Text(255) value.
const MAX_TEXT: usize = 255;

/// A Product2 record.
#[derive(Clone, Debug, PartialEq)]
pub struct SfProduct {
    /// 18-character id (key prefix `01t`).
    pub id: String,
    /// `Name`.
    pub name: String,
    /// `WHMCS_Product_Id__c` (a Number field: the WHMCS `pid`).
    pub whmcs_product_id: Option<u64>,
}

/// A PricebookEntry record: a product's price in one price book.
#[derive(Clone, Debug, PartialEq)]
pub struct SfPricebookEntry {
    /// 18-character id (key prefix `01u`).
    pub id: String,
    /// `Pricebook2Id` (key prefix `01s`).
    pub pricebook_id: String,
    /// `Product2Id`.
    pub product_id: String,
    /// `UnitPrice`.
    pub unit_price: f64,
    /// `IsActive`: only active entries can be ordered.
    pub is_active: bool,
}

/// The pricing fields of an OrderItem created through REST.
#[derive(Clone, Debug, PartialEq)]
pub struct SfOrderItemPrice {
    /// `PricebookEntryId`.
    pub pricebook_entry_id: String,
    /// `UnitPrice`.
    pub unit_price: f64,
}

const ENTRY_QUERY_PREFIX: &str =
    "SELECT Id, UnitPrice, Product2.WHMCS_Product_Id__c FROM PricebookEntry WHERE Pricebook2Id = ";
const ENTRY_QUERY_MIDDLE: &str = " AND IsActive = true AND Product2.WHMCS_Product_Id__c IN (";
const ACCOUNT_QUERY_PREFIX: &str = "SELECT Id, Customer_Number__c FROM Account WHERE Id = ";
const REQUEST_QUERY_PREFIX: &str =
    "SELECT Id, OrderNumber, Status FROM Order WHERE Portal_Request_Id__c = ";

/// The first id-valued key of `map` naming the same record as `id` (15-character match).
fn find_key<'a, T>(map: &'a std::collections::BTreeMap<String, T>, id: &str) -> Option<&'a str> {
    let short = id15(id)?;
    map.range(short.to_owned()..)
        .map(|(k, _)| k.as_str())
        .take_while(|k| k.starts_with(short))
        .find(|k| id15(k) == Some(short))
}

fn invalid_id(id: &str) -> ApiError {
    ApiError::new(
        400,
        "INVALID_QUERY_FILTER_OPERATOR",
        format!("invalid ID field: {id}"),
    )
}

/// One string literal and nothing after it.
fn only_string(rest: &str) -> Result<String, ApiError> {
    let (value, rest) = soql_string(rest).ok_or_else(|| malformed("unterminated string"))?;
    if !rest.trim().is_empty() {
        return Err(malformed(rest.trim()));
    }
    Ok(value)
}

impl OrgData {
    /// Adds or replaces a Product2.
    pub(crate) fn insert_product(&mut self, product: SfProduct) {
        self.products.insert(product.id.clone(), product);
    }

    /// Adds a Pricebook2 id.
    pub(crate) fn insert_pricebook(&mut self, id: String) {
        self.pricebooks.insert(id);
    }

    /// Adds or replaces a PricebookEntry.
    pub(crate) fn insert_entry(&mut self, entry: SfPricebookEntry) {
        self.entries.insert(entry.id.clone(), entry);
    }

    /// Sets `IsActive` of an entry; `false` when there is no such entry.
    pub(crate) fn set_entry_active(&mut self, id: &str, active: bool) -> bool {
        let Some(key) = find_key(&self.entries, id).map(str::to_owned) else {
            return false;
        };
        match self.entries.get_mut(&key) {
            Some(entry) => {
                entry.is_active = active;
                true
            }
            None => false,
        }
    }

    /// Every Product2, by id.
    pub(crate) fn products(&self) -> Vec<SfProduct> {
        self.products.values().cloned().collect()
    }

    /// Every PricebookEntry, by id.
    pub(crate) fn entries(&self) -> Vec<SfPricebookEntry> {
        self.entries.values().cloned().collect()
    }

    /// How many Orders are stored.
    pub(crate) fn order_count(&self) -> usize {
        self.orders.len()
    }

    /// The OrderItems of the Order with this id, as stored, in insertion order.
    pub(crate) fn items_of(&self, order_id: &str) -> Vec<SfOrderItem> {
        id15(order_id)
            .and_then(|short| self.items_by_order.get(short))
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(|&n| self.items.get(n))
            .cloned()
            .collect()
    }

    /// The pricing of an OrderItem created through REST.
    pub(crate) fn item_price(&self, item_id: &str) -> Option<SfOrderItemPrice> {
        self.item_prices.get(item_id).cloned()
    }

    /// The Order whose `Portal_Request_Id__c` is exactly `request_id`.
    pub(crate) fn order_by_request_id(&self, request_id: &str) -> Option<&SfOrder> {
        self.by_request_id
            .get(request_id)
            .and_then(|key| self.orders.get(key))
    }

    /// A fresh id with `prefix` that no stored record of the kind uses.
    fn fresh_id(&mut self, prefix: &str) -> String {
        loop {
            self.created += 1;
            // Far above the small numbers tests and seeding use.
            let id = salesforce_id(prefix, 1_000_000_000_000 + self.created);
            let taken = match prefix {
                "801" => self.order(&id).is_some(),
                _ => self.items.iter().any(|i| i.id == id),
            };
            if !taken {
                return id;
            }
        }
    }

    /// Answers the intake's queries; `Ok(None)` when `soql` is none of them.
    pub(super) fn intake_query(
        &self,
        soql: &str,
        version: &str,
    ) -> Result<Option<Vec<Value>>, ApiError> {
        if let Some(rest) = soql.strip_prefix(ENTRY_QUERY_PREFIX) {
            let (pricebook, rest) =
                soql_string(rest).ok_or_else(|| malformed("unterminated string"))?;
            let list = rest
                .strip_prefix(ENTRY_QUERY_MIDDLE)
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| malformed(rest.trim()))?;
            let wanted = list
                .split(',')
                .map(|n| n.trim().parse::<u64>().map_err(|_| malformed(n.trim())))
                .collect::<Result<Vec<u64>, ApiError>>()?;
            if !is_id(&pricebook) {
                return Err(invalid_id(&pricebook));
            }
            let records = self
                .entries
                .values()
                .filter(|e| e.is_active && id15(&e.pricebook_id) == id15(&pricebook))
                .filter_map(|e| {
                    let product = find_key(&self.products, &e.product_id)
                        .and_then(|k| self.products.get(k))?;
                    let pid = product.whmcs_product_id?;
                    wanted.contains(&pid).then(|| {
                        json!({
                            "attributes": attributes("PricebookEntry", &e.id, version),
                            "Id": e.id,
                            "UnitPrice": e.unit_price,
                            "Product2": {
                                "attributes": attributes("Product2", &product.id, version),
                                "WHMCS_Product_Id__c": pid as f64,
                            },
                        })
                    })
                })
                .collect();
            return Ok(Some(records));
        }
        if let Some(rest) = soql.strip_prefix(ACCOUNT_QUERY_PREFIX) {
            let id = only_string(rest)?;
            if !is_id(&id) {
                return Err(invalid_id(&id));
            }
            let records = find_key(&self.accounts, &id)
                .and_then(|k| self.accounts.get(k))
                .map(|a| {
                    json!({
                        "attributes": attributes("Account", &a.id, version),
                        "Id": a.id,
                        "Customer_Number__c": string_or_null(&a.customer_number),
                    })
                })
                .into_iter()
                .collect();
            return Ok(Some(records));
        }
        if let Some(rest) = soql.strip_prefix(REQUEST_QUERY_PREFIX) {
            let request = only_string(rest)?;
            let records = self
                .order_by_request_id(&request)
                .map(|o| {
                    json!({
                        "attributes": attributes("Order", &o.id, version),
                        "Id": o.id,
                        "OrderNumber": o.order_number,
                        "Status": o.status,
                    })
                })
                .into_iter()
                .collect();
            return Ok(Some(records));
        }
        Ok(None)
    }

    /// `POST /services/data/{version}/composite`: runs the subrequests, commits their records
    /// (with `allOrNone`, only if every one succeeded) and answers `{"compositeResponse": [..]}`;
    /// `Err` is a refusal of the whole request (nothing run).
    pub(crate) fn composite(
        &mut self,
        body: &[u8],
        statuses: &[String],
    ) -> Result<Value, ApiError> {
        let request = parse_composite(body)?;
        let mut staged = Staged::default();
        let mut results: Vec<SubResult> = Vec::with_capacity(request.subrequests.len());
        let mut failed = false;
        for sub in &request.subrequests {
            if failed && request.all_or_none {
                results.push(SubResult::halted(&sub.reference_id));
                continue;
            }
            let outcome = resolve(sub, &results).and_then(|(url, body)| {
                self.run_subrequest(&sub.method, &url, &body, statuses, &mut staged)
            });
            let result = match outcome {
                Ok((kind, id)) => {
                    SubResult::created(&sub.reference_id, &kind, &id, &url_version(&sub.url))
                }
                Err(e) => {
                    failed = true;
                    SubResult::failed(&sub.reference_id, &e)
                }
            };
            results.push(result);
        }
        if failed && request.all_or_none {
            // Rolled back: every subrequest but the failing one reports PROCESSING_HALTED.
            for result in &mut results {
                if result.ok {
                    *result = SubResult::halted(&result.reference_id);
                }
            }
        } else {
            self.commit(staged);
        }
        let responses: Vec<Value> = results.into_iter().map(|r| r.json).collect();
        Ok(json!({ "compositeResponse": responses }))
    }

    fn commit(&mut self, staged: Staged) {
        for order in staged.orders {
            self.insert_order(order);
        }
        for (item, price) in staged.items {
            self.item_prices.insert(item.id.clone(), price);
            self.insert_item(item);
        }
    }

    /// Runs one subrequest against the org plus what this request staged; returns the created
    /// record's type and id.
    fn run_subrequest(
        &mut self,
        method: &str,
        url: &str,
        body: &Value,
        statuses: &[String],
        staged: &mut Staged,
    ) -> Result<(String, String), ApiError> {
        let kind = url
            .strip_prefix("/services/data/")
            .and_then(|r| r.split_once('/'))
            .filter(|(version, _)| crate::salesforce::version_ok(version))
            .and_then(|(_, r)| r.strip_prefix("sobjects/"))
            .filter(|kind| matches!(*kind, "Order" | "OrderItem"));
        let (Some(kind), "POST") = (kind, method) else {
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
        for name in fields.keys().filter(|k| *k != "attributes") {
            self.schema.check_create(kind, name)?;
        }
        let id = match kind {
            "Order" => {
                let order = self.new_order(fields, statuses, staged)?;
                let id = order.id.clone();
                staged.orders.push(order);
                id
            }
            _ => {
                let (item, price) = self.new_item(fields, staged)?;
                let id = item.id.clone();
                staged.items.push((item, price));
                id
            }
        };
        Ok((kind.to_owned(), id))
    }

    fn new_order(
        &mut self,
        fields: &Map<String, Value>,
        statuses: &[String],
        staged: &Staged,
    ) -> Result<SfOrder, ApiError> {
        let values = check_fields(
            "Order",
            fields,
            &[
                "AccountId",
                "EffectiveDate",
                "Status",
                "Pricebook2Id",
                "Portal_Request_Id__c",
            ],
            &[
                "Id",
                "OrderNumber",
                "Customer_Number__c",
                "WHMCS_Client_Id__c",
                "LastModifiedDate",
                "TotalAmount",
            ],
        )?;
        required(
            &values,
            &["AccountId", "EffectiveDate", "Status", "Pricebook2Id"],
        )?;
        let text = |name: &str| values.get(name).and_then(|v| v.as_deref());
        let account_id = text("AccountId").unwrap_or_default();
        if !is_id(account_id) {
            return Err(malformed_id("Account", "AccountId", account_id));
        }
        let account = find_key(&self.accounts, account_id)
            .and_then(|k| self.accounts.get(k))
            .cloned()
            .ok_or_else(|| cross_reference("AccountId"))?;
        let date = text("EffectiveDate").unwrap_or_default();
        let effective_date = NaiveDate::parse_from_str(date, "%Y-%m-%d")
            .ok()
            .filter(|_| date.len() == 10)
            .ok_or_else(|| {
                ApiError::new(
                    400,
                    "JSON_PARSER_ERROR",
                    format!("Cannot deserialize instance of date from VALUE_STRING value {date} or request may be missing a required field"),
                )
                .field("EffectiveDate")
            })?;
        let status = text("Status").unwrap_or_default();
        if !statuses.iter().any(|s| s == status) {
            return Err(ApiError::new(
                400,
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                format!("Status: bad value for restricted picklist field: {status}"),
            )
            .field("Status"));
        }
        if status == "Activated" {
            return Err(ApiError::new(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "You can't create an activated order: create it with a Draft status, add products, then activate it",
            )
            .field("Status"));
        }
        let pricebook = text("Pricebook2Id").unwrap_or_default();
        if !is_id(pricebook) {
            return Err(malformed_id("Price Book", "Pricebook2Id", pricebook));
        }
        let pricebook = self
            .pricebooks
            .iter()
            .find(|p| id15(p) == id15(pricebook))
            .cloned()
            .ok_or_else(|| cross_reference("Pricebook2Id"))?;
        let request_id = text("Portal_Request_Id__c").map(str::to_owned);
        if let Some(request) = &request_id {
            if request.chars().count() > MAX_TEXT {
                return Err(too_long(
                    "Portal Request Id",
                    "Portal_Request_Id__c",
                    MAX_TEXT,
                ));
            }
            let existing = self
                .order_by_request_id(request)
                .map(|o| o.id.clone())
                .or_else(|| {
                    staged
                        .orders
                        .iter()
                        .find(|o| o.portal_request_id.as_ref() == Some(request))
                        .map(|o| o.id.clone())
                });
            if let Some(existing) = existing {
                return Err(ApiError::new(
                    400,
                    "DUPLICATE_VALUE",
                    format!(
                        "duplicate value found: Portal_Request_Id__c duplicates value on record with id: {existing}"
                    ),
                ));
            }
        }
        let id = self.fresh_id("801");
        let mut order = SfOrder::new(id, status);
        order.order_number = format!(
            "{:08}",
            self.max_order_number + 1 + staged.orders.len() as u64
        );
        order.account_id = Some(account.id.clone());
        order.customer_number = account.customer_number.clone();
        order.whmcs_client_id = account.whmcs_client_id.clone();
        order.effective_date = Some(effective_date);
        order.pricebook_id = Some(pricebook);
        order.portal_request_id = request_id;
        order.last_modified = Utc::now();
        Ok(order)
    }

    fn new_item(
        &mut self,
        fields: &Map<String, Value>,
        staged: &Staged,
    ) -> Result<(SfOrderItem, SfOrderItemPrice), ApiError> {
        let numbers = ["Quantity", "UnitPrice"];
        let values = check_fields(
            "OrderItem",
            &strings_only(fields, &numbers),
            &[
                "OrderId",
                "PricebookEntryId",
                "Billing_Cycle__c",
                "Config_Options__c",
            ],
            &["Id", "WHMCS_Product_Id__c", "TotalPrice", "ListPrice"],
        )?;
        let mut present = values.clone();
        for name in &numbers {
            if fields.get(*name).is_some_and(|v| !v.is_null()) {
                present.insert((*name).to_owned(), Some(String::new()));
            }
        }
        required(
            &present,
            &["OrderId", "PricebookEntryId", "Quantity", "UnitPrice"],
        )?;
        let text = |name: &str| values.get(name).and_then(|v| v.as_deref());
        let number = |name: &str| -> Result<f64, ApiError> {
            fields.get(name).and_then(Value::as_f64).ok_or_else(|| {
                ApiError::new(
                    400,
                    "JSON_PARSER_ERROR",
                    format!("Cannot deserialize instance of double from {name}"),
                )
                .field(name)
            })
        };
        let quantity = number("Quantity")?;
        let unit_price = number("UnitPrice")?;
        if quantity <= 0.0 {
            return Err(ApiError::new(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "field integrity exception: Quantity (must be positive)",
            )
            .field("Quantity"));
        }
        if unit_price < 0.0 {
            return Err(ApiError::new(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "field integrity exception: UnitPrice (must not be negative)",
            )
            .field("UnitPrice"));
        }
        let order_id = text("OrderId").unwrap_or_default();
        if !is_id(order_id) {
            return Err(malformed_id("Order", "OrderId", order_id));
        }
        let order = staged
            .orders
            .iter()
            .find(|o| id15(&o.id) == id15(order_id))
            .or_else(|| self.order(order_id))
            .cloned()
            .ok_or_else(|| cross_reference("OrderId"))?;
        if order.status == "Activated" {
            return Err(ApiError::new(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                "You can't add products to an activated order",
            )
            .field("OrderId"));
        }
        let entry_id = text("PricebookEntryId").unwrap_or_default();
        if !is_id(entry_id) {
            return Err(malformed_id(
                "Price Book Entry",
                "PricebookEntryId",
                entry_id,
            ));
        }
        let integrity = |why: &str| {
            ApiError::new(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                format!("field integrity exception: PricebookEntryId ({why})"),
            )
            .field("PricebookEntryId")
        };
        let entry = find_key(&self.entries, entry_id)
            .and_then(|k| self.entries.get(k))
            .cloned()
            .ok_or_else(|| integrity("no such pricebook entry"))?;
        if order.pricebook_id.as_deref().and_then(id15) != id15(&entry.pricebook_id) {
            return Err(integrity(
                "pricebook entry is in a different pricebook than the one assigned to the order, or the order has no pricebook assigned",
            ));
        }
        if !entry.is_active {
            return Err(integrity("pricebook entry is inactive"));
        }
        let billing_cycle = text("Billing_Cycle__c").map(str::to_owned);
        if billing_cycle
            .as_ref()
            .is_some_and(|c| c.chars().count() > MAX_TEXT)
        {
            return Err(too_long("Billing Cycle", "Billing_Cycle__c", MAX_TEXT));
        }
        let config_options = text("Config_Options__c").map(str::to_owned);
        if config_options
            .as_ref()
            .is_some_and(|c| c.chars().count() > MAX_LONG_TEXT)
        {
            return Err(too_long(
                "Config Options",
                "Config_Options__c",
                MAX_LONG_TEXT,
            ));
        }
        let whmcs_product_id = find_key(&self.products, &entry.product_id)
            .and_then(|k| self.products.get(k))
            .and_then(|p| p.whmcs_product_id)
            .map_or(Value::Null, |pid| json!(pid as f64));
        let item = SfOrderItem {
            id: self.fresh_id("802"),
            order_id: order.id.clone(),
            quantity,
            whmcs_product_id,
            billing_cycle,
            config_options,
        };
        let price = SfOrderItemPrice {
            pricebook_entry_id: entry.id.clone(),
            unit_price,
        };
        Ok((item, price))
    }
}

/// What one composite request staged before it commits (or rolls back).
#[derive(Default)]
struct Staged {
    orders: Vec<SfOrder>,
    items: Vec<(SfOrderItem, SfOrderItemPrice)>,
}

/// One subrequest as sent.
struct Subrequest {
    method: String,
    url: String,
    reference_id: String,
    body: Value,
}

/// A parsed composite request.
struct CompositeRequest {
    all_or_none: bool,
    subrequests: Vec<Subrequest>,
}

/// One entry of `compositeResponse`.
struct SubResult {
    reference_id: String,
    ok: bool,
    /// For `ok` results: the created record's id (what `@{ref.id}` resolves to).
    id: Option<String>,
    json: Value,
}

impl SubResult {
    fn created(reference_id: &str, kind: &str, id: &str, version: &str) -> Self {
        Self {
            reference_id: reference_id.to_owned(),
            ok: true,
            id: Some(id.to_owned()),
            json: json!({
                "body": { "id": id, "success": true, "errors": [] },
                "httpHeaders": { "Location": format!("/services/data/{version}/sobjects/{kind}/{id}") },
                "httpStatusCode": 201,
                "referenceId": reference_id,
            }),
        }
    }

    fn failed(reference_id: &str, e: &ApiError) -> Self {
        Self {
            reference_id: reference_id.to_owned(),
            ok: false,
            id: None,
            json: json!({
                "body": e.body(),
                "httpHeaders": {},
                "httpStatusCode": e.status,
                "referenceId": reference_id,
            }),
        }
    }

    fn halted(reference_id: &str) -> Self {
        let e = ApiError::new(
            400,
            "PROCESSING_HALTED",
            "The transaction was rolled back since another operation in the same transaction failed.",
        );
        Self::failed(reference_id, &e)
    }
}

/// The `vXX.X` of a subrequest URL (for the `Location` header).
fn url_version(url: &str) -> String {
    url.strip_prefix("/services/data/")
        .and_then(|r| r.split('/').next())
        .unwrap_or("v62.0")
        .to_owned()
}

fn parser_error(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "JSON_PARSER_ERROR", message)
}

fn parse_composite(body: &[u8]) -> Result<CompositeRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| parser_error(format!("The request body is not valid JSON: {e}")))?;
    let Some(top) = value.as_object() else {
        return Err(parser_error("The request body is not a JSON object"));
    };
    for key in top.keys() {
        if !matches!(
            key.as_str(),
            "allOrNone" | "collateSubrequests" | "compositeRequest"
        ) {
            return Err(parser_error(format!(
                "Unrecognized field \"{key}\" (not marked as ignorable)"
            )));
        }
    }
    let all_or_none = match top.get("allOrNone") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(parser_error("allOrNone must be a boolean")),
    };
    let list = top
        .get("compositeRequest")
        .and_then(Value::as_array)
        .ok_or_else(|| parser_error("'compositeRequest' is a required field."))?;
    if list.is_empty() {
        return Err(parser_error(
            "'compositeRequest' must hold at least one subrequest.",
        ));
    }
    if list.len() > MAX_SUBREQUESTS {
        return Err(ApiError::new(
            400,
            "LIMIT_EXCEEDED",
            format!(
                "A composite request can hold at most {MAX_SUBREQUESTS} subrequests; this one has {}.",
                list.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut subrequests = Vec::with_capacity(list.len());
    for sub in list {
        let Some(sub) = sub.as_object() else {
            return Err(parser_error("A subrequest is not a JSON object"));
        };
        for key in sub.keys() {
            if !matches!(
                key.as_str(),
                "method" | "url" | "referenceId" | "body" | "httpHeaders"
            ) {
                return Err(parser_error(format!(
                    "Unrecognized field \"{key}\" (not marked as ignorable)"
                )));
            }
        }
        let field = |name: &str| {
            sub.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| parser_error(format!("'{name}' is a required field.")))
        };
        let reference_id = field("referenceId")?;
        if reference_id.is_empty()
            || !reference_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(parser_error(format!(
                "Invalid reference id: {reference_id}. Reference ids can only contain alphanumeric characters and underscores."
            )));
        }
        if !seen.insert(reference_id.clone()) {
            return Err(parser_error(format!(
                "Duplicate reference id: {reference_id}. Reference ids must be unique within a composite request."
            )));
        }
        subrequests.push(Subrequest {
            method: field("method")?,
            url: field("url")?,
            reference_id,
            body: sub.get("body").cloned().unwrap_or(Value::Null),
        });
    }
    Ok(CompositeRequest {
        all_or_none,
        subrequests,
    })
}

/// The subrequest's URL and body with every `@{ref.id}` replaced by the id an earlier,
/// successful subrequest created.
fn resolve(sub: &Subrequest, earlier: &[SubResult]) -> Result<(String, Value), ApiError> {
    let ids: HashMap<&str, Option<&str>> = earlier
        .iter()
        .map(|r| (r.reference_id.as_str(), r.id.as_deref()))
        .collect();
    let url = substitute(&sub.url, &ids)?;
    let body = substitute_value(&sub.body, &ids)?;
    Ok((url, body))
}

fn substitute_value(value: &Value, ids: &HashMap<&str, Option<&str>>) -> Result<Value, ApiError> {
    Ok(match value {
        Value::String(s) => Value::String(substitute(s, ids)?),
        Value::Array(list) => Value::Array(
            list.iter()
                .map(|v| substitute_value(v, ids))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute_value(v, ids)?)))
                .collect::<Result<_, ApiError>>()?,
        ),
        other => other.clone(),
    })
}

fn substitute(text: &str, ids: &HashMap<&str, Option<&str>>) -> Result<String, ApiError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("@{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| parser_error(format!("Unterminated reference in {text}")))?;
        let reference = &after[..end];
        let (name, field) = reference.split_once('.').unwrap_or((reference, ""));
        let value = match (ids.get(name), field) {
            (Some(Some(id)), "id") => *id,
            _ => {
                return Err(ApiError::new(
                    400,
                    "PROCESSING_HALTED",
                    format!(
                        "Invalid reference specified. No value for {reference} found in {name}. Provided referenceId ('{name}') is invalid."
                    ),
                ));
            }
        };
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a record's fields: every key createable (else `INVALID_FIELD_FOR_INSERT_UPDATE` for a
/// read-only field, `INVALID_FIELD` for an unknown one), every value a string or `null`.
/// Returns the values by field name (`None` for `null` or empty text).
fn check_fields(
    kind: &str,
    fields: &Map<String, Value>,
    createable: &[&str],
    read_only: &[&str],
) -> Result<HashMap<String, Option<String>>, ApiError> {
    let mut values = HashMap::new();
    for (name, value) in fields {
        if name == "attributes" {
            continue;
        }
        if read_only.contains(&name.as_str()) {
            return Err(ApiError::new(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                format!("Unable to create/update fields: {name}. Please check the security settings of this field and verify that it is read/write for your profile or permission set."),
            )
            .field(name));
        }
        if !createable.contains(&name.as_str()) {
            return Err(ApiError::new(
                400,
                "INVALID_FIELD",
                format!("No such column '{name}' on sobject of type {kind}"),
            ));
        }
        let text = match value {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s.clone()),
            other => {
                return Err(ApiError::new(
                    400,
                    "JSON_PARSER_ERROR",
                    format!("Cannot deserialize instance of string from {other} value"),
                )
                .field(name));
            }
        };
        values.insert(name.clone(), text);
    }
    Ok(values)
}

/// `fields` without the number-valued ones (checked separately).
fn strings_only(fields: &Map<String, Value>, numbers: &[&str]) -> Map<String, Value> {
    fields
        .iter()
        .filter(|(k, _)| !numbers.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn required(values: &HashMap<String, Option<String>>, names: &[&str]) -> Result<(), ApiError> {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| values.get(*n).is_none_or(Option::is_none))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut e = ApiError::new(
        400,
        "REQUIRED_FIELD_MISSING",
        format!("Required fields are missing: [{}]", missing.join(", ")),
    );
    for name in missing {
        e = e.field(name);
    }
    Err(e)
}

fn malformed_id(label: &str, field: &str, value: &str) -> ApiError {
    ApiError::new(
        400,
        "MALFORMED_ID",
        format!("{label} ID: id value of incorrect type: {value}"),
    )
    .field(field)
}

fn cross_reference(field: &str) -> ApiError {
    ApiError::new(
        400,
        "INVALID_CROSS_REFERENCE_KEY",
        "invalid cross reference id",
    )
    .field(field)
}

fn too_long(label: &str, field: &str, max: usize) -> ApiError {
    ApiError::new(
        400,
        "STRING_TOO_LONG",
        format!("{label}: data value too large (max length={max})"),
    )
    .field(field)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::salesforce::SfAccount;

    fn statuses() -> Vec<String> {
        ["Draft", "Pending Review", "Approved", "Activated"]
            .map(String::from)
            .to_vec()
    }

    /// An org with one Account, one price book and two products (pid 5 and 6) priced in it.
    fn org() -> (OrgData, String, String, [String; 2]) {
        let book = salesforce_id("01s", 1);
        let mut org = OrgData::with_pricebook(book.clone(), Vec::new());
        let account = salesforce_id("001", 1);
        org.accounts.insert(
            account.clone(),
            SfAccount {
                id: account.clone(),
                name: "Acme".into(),
                customer_number: Some("C-1".into()),
                whmcs_client_id: json!("12"),
            },
        );
        let entries = [5u64, 6].map(|pid| {
            let product = salesforce_id("01t", pid);
            org.insert_product(SfProduct {
                id: product.clone(),
                name: format!("P{pid}"),
                whmcs_product_id: Some(pid),
            });
            let entry = salesforce_id("01u", pid);
            org.insert_entry(SfPricebookEntry {
                id: entry.clone(),
                pricebook_id: book.clone(),
                product_id: product,
                unit_price: pid as f64,
                is_active: true,
            });
            entry
        });
        (org, book, account, entries)
    }

    fn order_request(account: &str, book: &str, request_id: &str) -> Value {
        json!({
            "method": "POST",
            "url": "/services/data/v62.0/sobjects/Order",
            "referenceId": "refOrder",
            "body": {"AccountId": account, "EffectiveDate": "2026-12-03", "Status": "Pending Review",
                     "Pricebook2Id": book, "Portal_Request_Id__c": request_id},
        })
    }

    fn item_request(n: usize, entry: &str) -> Value {
        json!({
            "method": "POST",
            "url": "/services/data/v62.0/sobjects/OrderItem",
            "referenceId": format!("refItem{n}"),
            "body": {"OrderId": "@{refOrder.id}", "PricebookEntryId": entry, "Quantity": 2,
                     "UnitPrice": 5.0, "Billing_Cycle__c": "monthly",
                     "Config_Options__c": "{\"41\":\"enc:v1:abc\"}"},
        })
    }

    fn run(org: &mut OrgData, all_or_none: bool, requests: Vec<Value>) -> Result<Value, ApiError> {
        let body = json!({"allOrNone": all_or_none, "compositeRequest": requests});
        org.composite(body.to_string().as_bytes(), &statuses())
    }

    fn codes(answer: &Value) -> Vec<(u64, String)> {
        answer["compositeResponse"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let code = r["body"][0]["errorCode"].as_str().unwrap_or("").to_owned();
                (r["httpStatusCode"].as_u64().unwrap(), code)
            })
            .collect()
    }

    #[test]
    fn references_resolve_to_the_created_order_and_everything_commits() {
        let (mut org, book, account, entries) = org();
        let answer = run(
            &mut org,
            true,
            vec![
                order_request(&account, &book, "C-1:k1"),
                item_request(0, &entries[0]),
                item_request(1, &entries[1]),
            ],
        )
        .unwrap();
        let results = answer["compositeResponse"].as_array().unwrap();
        assert_eq!(codes(&answer), vec![(201, String::new()); 3]);
        let order_id = results[0]["body"]["id"].as_str().unwrap();
        assert_eq!(results[0]["body"]["success"], true);
        assert_eq!(results[0]["referenceId"], "refOrder");
        assert_eq!(
            results[0]["httpHeaders"]["Location"],
            format!("/services/data/v62.0/sobjects/Order/{order_id}")
        );
        let order = org.order(order_id).unwrap().clone();
        assert_eq!(order.status, "Pending Review");
        assert_eq!(order.customer_number.as_deref(), Some("C-1"));
        assert_eq!(order.whmcs_client_id, json!("12"));
        assert_eq!(order.order_number.len(), 8);
        assert_eq!(org.order_by_request_id("C-1:k1").unwrap().id, order_id);
        let items = org.items_of(order_id);
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i.order_id == order_id));
        assert_eq!(items[1].whmcs_product_id, json!(6.0));
        assert_eq!(
            items[0].config_options.as_deref(),
            Some("{\"41\":\"enc:v1:abc\"}")
        );
        let price = org.item_price(&items[1].id).unwrap();
        assert_eq!(price.pricebook_entry_id, entries[1]);
        // The provisioner's Order query shows the items.
        let q = format!("{}'{order_id}'", super::super::ORDER_QUERY_PREFIX);
        let answer = org.query(&q, "v62.0", 2000).unwrap();
        assert_eq!(answer["records"][0]["OrderItems"]["totalSize"], 2);
        assert_eq!(
            answer["records"][0]["OrderItems"]["records"][0]["WHMCS_Product_Id__c"],
            json!(5.0)
        );
        // Order numbers increase.
        run(
            &mut org,
            true,
            vec![order_request(&account, &book, "C-1:k2")],
        )
        .unwrap();
        let second = org.order_by_request_id("C-1:k2").unwrap();
        assert!(second.order_number > order.order_number);
    }

    #[test]
    fn one_failure_rolls_everything_back_and_halts_the_others() {
        let (mut org, book, account, entries) = org();
        org.set_entry_active(&entries[1], false);
        let before = org.order_count();
        let answer = run(
            &mut org,
            true,
            vec![
                order_request(&account, &book, "C-1:k1"),
                item_request(0, &entries[0]),
                item_request(1, &entries[1]),
                item_request(2, &entries[0]),
            ],
        )
        .unwrap();
        assert_eq!(
            codes(&answer),
            vec![
                (400, "PROCESSING_HALTED".to_owned()),
                (400, "PROCESSING_HALTED".to_owned()),
                (400, "FIELD_INTEGRITY_EXCEPTION".to_owned()),
                (400, "PROCESSING_HALTED".to_owned()),
            ]
        );
        let failing = &answer["compositeResponse"][2]["body"][0];
        assert_eq!(failing["fields"], json!(["PricebookEntryId"]));
        assert!(failing["message"].as_str().unwrap().contains("inactive"));
        assert_eq!(org.order_count(), before);
        assert!(org.order_by_request_id("C-1:k1").is_none());
        assert!(org.items.is_empty());

        // An entry of another price book, an unknown entry, a missing field.
        let other_book = salesforce_id("01s", 2);
        org.insert_pricebook(other_book.clone());
        org.insert_entry(SfPricebookEntry {
            id: salesforce_id("01u", 77),
            pricebook_id: other_book,
            product_id: salesforce_id("01t", 5),
            unit_price: 1.0,
            is_active: true,
        });
        for (entry, code) in [
            (salesforce_id("01u", 77), "FIELD_INTEGRITY_EXCEPTION"),
            (salesforce_id("01u", 999), "FIELD_INTEGRITY_EXCEPTION"),
            ("nope".to_owned(), "MALFORMED_ID"),
        ] {
            let answer = run(
                &mut org,
                true,
                vec![
                    order_request(&account, &book, "C-1:k1"),
                    item_request(0, &entry),
                ],
            )
            .unwrap();
            assert_eq!(codes(&answer)[1], (400, code.to_owned()), "{entry}");
            assert_eq!(codes(&answer)[0].1, "PROCESSING_HALTED");
        }
        let mut missing = order_request(&account, &book, "C-1:k1");
        missing["body"]
            .as_object_mut()
            .unwrap()
            .remove("EffectiveDate");
        let answer = run(&mut org, true, vec![missing]).unwrap();
        assert_eq!(codes(&answer)[0].1, "REQUIRED_FIELD_MISSING");
        assert_eq!(
            answer["compositeResponse"][0]["body"][0]["fields"],
            json!(["EffectiveDate"])
        );
        assert_eq!(org.order_count(), before);
    }

    #[test]
    fn a_second_order_with_the_same_request_id_is_a_duplicate() {
        let (mut org, book, account, entries) = org();
        let requests = vec![
            order_request(&account, &book, "C-1:k1"),
            item_request(0, &entries[0]),
        ];
        run(&mut org, true, requests.clone()).unwrap();
        let first = org.order_by_request_id("C-1:k1").unwrap().id.clone();
        let answer = run(&mut org, true, requests).unwrap();
        assert_eq!(codes(&answer)[0], (400, "DUPLICATE_VALUE".to_owned()));
        let message = answer["compositeResponse"][0]["body"][0]["message"]
            .as_str()
            .unwrap();
        assert!(message.contains("Portal_Request_Id__c"), "{message}");
        assert!(message.contains(&first), "{message}");
        assert_eq!(org.order_count(), 1);
        assert_eq!(org.items_of(&first).len(), 1);
        // The same request id twice in one request.
        let answer = run(
            &mut org,
            true,
            vec![
                order_request(&account, &book, "C-1:k9"),
                json!({"method": "POST", "url": "/services/data/v62.0/sobjects/Order",
                       "referenceId": "refOrder2",
                       "body": order_request(&account, &book, "C-1:k9")["body"].clone()}),
            ],
        )
        .unwrap();
        assert_eq!(codes(&answer)[1].1, "DUPLICATE_VALUE");
        assert_eq!(org.order_count(), 1);
    }

    #[test]
    fn a_removed_field_fails_the_create_and_rolls_everything_back() {
        let (mut org, book, account, entries) = org();
        assert!(org.schema.remove_field("OrderItem", "Billing_Cycle__c"));
        let answer = run(
            &mut org,
            true,
            vec![
                order_request(&account, &book, "C-1:k1"),
                item_request(0, &entries[0]),
            ],
        )
        .unwrap();
        let got = codes(&answer);
        assert_eq!(got[1], (400, "INVALID_FIELD".to_owned()), "{answer}");
        assert_eq!(got[0].1, "PROCESSING_HALTED");
        assert_eq!(org.order_count(), 0);
    }

    #[test]
    fn without_all_or_none_successes_commit_and_dependents_halt() {
        let (mut org, book, account, entries) = org();
        let mut bad_order = order_request(&account, &book, "C-1:k1");
        bad_order["body"]["Status"] = json!("Shipped");
        let answer = run(
            &mut org,
            false,
            vec![
                bad_order,
                item_request(0, &entries[0]),
                json!({"method": "POST", "url": "/services/data/v62.0/sobjects/Order",
                       "referenceId": "refOther",
                       "body": order_request(&account, &book, "C-1:k2")["body"].clone()}),
            ],
        )
        .unwrap();
        assert_eq!(
            codes(&answer),
            vec![
                (400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST".to_owned()),
                (400, "PROCESSING_HALTED".to_owned()),
                (201, String::new()),
            ]
        );
        assert_eq!(org.order_count(), 1);
    }

    #[test]
    fn malformed_requests_and_more_than_25_subrequests_are_refused_whole() {
        let (mut org, book, account, entries) = org();
        let mut requests = vec![order_request(&account, &book, "C-1:k1")];
        requests.extend((0..25).map(|n| item_request(n, &entries[0])));
        let err = run(&mut org, true, requests.clone()).unwrap_err();
        assert_eq!((err.status, err.code), (400, "LIMIT_EXCEEDED"));
        assert_eq!(org.order_count(), 0);
        requests.pop();
        let answer = run(&mut org, true, requests).unwrap();
        assert_eq!(answer["compositeResponse"].as_array().unwrap().len(), 25);
        assert_eq!(org.items.len(), 24);

        let check = |body: &str, code: &str| {
            let (mut org, ..) = self::org();
            let err = org.composite(body.as_bytes(), &statuses()).unwrap_err();
            assert_eq!(err.code, code, "{body}");
        };
        check("not json", "JSON_PARSER_ERROR");
        check(r#"{"compositeRequest": []}"#, "JSON_PARSER_ERROR");
        check(
            r#"{"allOrNone": true, "extra": 1, "compositeRequest": [{}]}"#,
            "JSON_PARSER_ERROR",
        );
        check(
            r#"{"compositeRequest": [{"method": "POST", "url": "/x", "body": {}}]}"#,
            "JSON_PARSER_ERROR",
        );
        check(
            r#"{"compositeRequest": [{"method": "POST", "url": "/x", "referenceId": "a-b"}]}"#,
            "JSON_PARSER_ERROR",
        );
        check(
            r#"{"compositeRequest": [{"method": "POST", "url": "/x", "referenceId": "a"},
                                     {"method": "POST", "url": "/y", "referenceId": "a"}]}"#,
            "JSON_PARSER_ERROR",
        );
        // Unsupported subrequests fail inside the composite answer.
        let answer = run(
            &mut org,
            true,
            vec![
                json!({"method": "DELETE", "url": "/services/data/v62.0/sobjects/Order/x",
                        "referenceId": "del"}),
            ],
        )
        .unwrap();
        assert_eq!(codes(&answer), vec![(404, "NOT_FOUND".to_owned())]);
    }

    #[test]
    fn the_intake_queries_answer_like_soql() {
        let (mut org, book, account, entries) = org();
        org.set_entry_active(&entries[1], false);
        let q = format!("{ENTRY_QUERY_PREFIX}'{book}'{ENTRY_QUERY_MIDDLE}5, 6, 7)");
        let answer = org.query(&q, "v62.0", 2000).unwrap();
        assert_eq!(answer["totalSize"], 1);
        let record = &answer["records"][0];
        assert_eq!(record["Id"], entries[0].as_str());
        assert_eq!(record["UnitPrice"], json!(5.0));
        assert_eq!(record["Product2"]["WHMCS_Product_Id__c"], json!(5.0));
        assert_eq!(record["Product2"]["attributes"]["type"], "Product2");
        for bad in [
            format!("{ENTRY_QUERY_PREFIX}'{book}'{ENTRY_QUERY_MIDDLE})"),
            format!("{ENTRY_QUERY_PREFIX}'{book}'{ENTRY_QUERY_MIDDLE}'5')"),
            format!(
                "{ENTRY_QUERY_PREFIX}'{book}' AND IsActive = false AND Product2.WHMCS_Product_Id__c IN (5)"
            ),
            format!("{ACCOUNT_QUERY_PREFIX}'{account}' OR Id != ''"),
        ] {
            assert_eq!(
                org.query(&bad, "v62.0", 10).unwrap_err().code,
                "MALFORMED_QUERY",
                "{bad}"
            );
        }
        let q = format!("{ACCOUNT_QUERY_PREFIX}'{}'", &account[..15]);
        let answer = org.query(&q, "v62.0", 10).unwrap();
        assert_eq!(answer["records"][0]["Customer_Number__c"], "C-1");
        let q = format!("{ACCOUNT_QUERY_PREFIX}'{}'", salesforce_id("001", 9));
        assert_eq!(org.query(&q, "v62.0", 10).unwrap()["totalSize"], 0);
        run(
            &mut org,
            true,
            vec![order_request(&account, &book, "C-1:it's")],
        )
        .unwrap();
        let q = format!("{REQUEST_QUERY_PREFIX}'C-1:it\\'s'");
        let answer = org.query(&q, "v62.0", 10).unwrap();
        assert_eq!(answer["records"][0]["Status"], "Pending Review");
        let q = format!("{REQUEST_QUERY_PREFIX}'C-1:IT\\'S'");
        assert_eq!(org.query(&q, "v62.0", 10).unwrap()["totalSize"], 0);
    }
}
