//! The in-memory org: Accounts, Orders, OrderItems, the two SOQL queries the provisioner sends,
//! and the Order PATCH with Salesforce's validation.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// An Account record.
#[derive(Clone, Debug, PartialEq)]
pub struct SfAccount {
    /// 18-character id (key prefix `001`).
    pub id: String,
    /// `Name`.
    pub name: String,
    /// `Customer_Number__c`.
    pub customer_number: Option<String>,
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

    fn field(mut self, field: &str) -> Self {
        self.fields.push(field.to_owned());
        self
    }

    pub(crate) fn body(&self) -> Value {
        json!([{ "message": self.message, "errorCode": self.code, "fields": self.fields }])
    }
}

/// The org's data plus what the sandbox recorded.
#[derive(Debug, Default)]
pub(crate) struct OrgData {
    pub(crate) accounts: BTreeMap<String, SfAccount>,
    pub(crate) orders: BTreeMap<String, SfOrder>,
    pub(crate) items: Vec<SfOrderItem>,
    pub(crate) patches: Vec<RecordedPatch>,
    pub(crate) pages: BTreeMap<String, Vec<Value>>,
    next_locator: u64,
}

/// The fixed part of DESIGN §3's Order query, whitespace-normalised.
const ORDER_QUERY_PREFIX: &str = "SELECT Id, OrderNumber, Status, AccountId, Customer_Number__c, WHMCS_Client_Id__c, WHMCS_Order_Id__c, (SELECT Id, Quantity, WHMCS_Product_Id__c, Billing_Cycle__c, Config_Options__c FROM OrderItems) FROM Order WHERE Id = ";

/// The reconcile sweep's query (defined by `sf-rest`), whitespace-normalised.
const APPROVED_QUERY_PREFIX: &str =
    "SELECT Id, AccountId, Customer_Number__c, LastModifiedDate FROM Order WHERE Status = ";

/// Whether `id` looks like a Salesforce id (15 or 18 alphanumerics).
pub(crate) fn is_id(id: &str) -> bool {
    matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Salesforce ids match on their case-sensitive 15-character form.
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
    /// Answers a SOQL query, or the error Salesforce would give.
    pub(crate) fn query(
        &mut self,
        soql: &str,
        version: &str,
        page_size: usize,
    ) -> Result<Value, ApiError> {
        let normalised = soql.split_whitespace().collect::<Vec<_>>().join(" ");
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
            self.orders
                .values()
                .filter(|o| same_id(&o.id, &id))
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
            let limit = rest
                .strip_prefix("ORDER BY LastModifiedDate ASC, Id ASC LIMIT ")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| malformed(rest))?;
            let mut matching: Vec<&SfOrder> = self
                .orders
                .values()
                .filter(|o| o.status == status && o.last_modified < cutoff)
                .collect();
            matching.sort_by(|a, b| (a.last_modified, &a.id).cmp(&(b.last_modified, &b.id)));
            matching
                .into_iter()
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
        let items: Vec<Value> = self
            .items
            .iter()
            .filter(|i| same_id(&i.order_id, &o.id))
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
            "OrderItems": order_items,
        })
    }

    /// Applies a PATCH to an Order; records it whatever the outcome.
    pub(crate) fn patch_order(
        &mut self,
        id: &str,
        body: &[u8],
        statuses: &[String],
    ) -> Result<(), ApiError> {
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let result = self.apply_patch(id, &parsed, statuses);
        self.patches.push(RecordedPatch {
            order_id: id.to_owned(),
            body: parsed,
            status: result.as_ref().map_or_else(|e| e.status, |()| 204),
            at: Utc::now(),
        });
        result
    }

    fn apply_patch(&mut self, id: &str, body: &Value, statuses: &[String]) -> Result<(), ApiError> {
        let Some(key) = self.orders.keys().find(|k| same_id(k, id)).cloned() else {
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
        for (name, value) in fields {
            apply_field(&mut updated, name, value, statuses)?;
        }
        updated.last_modified = Utc::now();
        self.orders.insert(key, updated);
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
        org.orders.insert(id.clone(), order);
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
            org.orders.insert(id, order);
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
}
