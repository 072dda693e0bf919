//! Orders as the provisioner sees them, read leniently from Salesforce's JSON, and the SOQL
//! that selects them.

use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use crate::{Error, OrderId, Result};

/// The provisioner's Order query up to the id literal: the Order's status, customer, WHMCS client
/// and order ids, and its OrderItems' WHMCS product, billing cycle and config options. Keep the
/// text exact: the sandbox's Salesforce emulator recognises it by its text.
pub const ORDER_QUERY: &str = "SELECT Id, OrderNumber, Status, AccountId, Customer_Number__c, WHMCS_Client_Id__c, WHMCS_Order_Id__c, Portal_Request_Id__c, (SELECT Id, Quantity, WHMCS_Product_Id__c, Billing_Cycle__c, Config_Options__c FROM OrderItems) FROM Order WHERE Id = ";

/// The reconcile sweep's query up to the status literal.
pub const APPROVED_ORDERS_QUERY: &str =
    "SELECT Id, AccountId, Customer_Number__c, LastModifiedDate FROM Order WHERE Status = ";

/// Most order lines one OrderItem may ask for.
pub const MAX_QUANTITY: u32 = 1000;

/// The SOQL for one Order with its OrderItems. The id is validated, so quoting is plain.
pub fn order_soql(id: &OrderId) -> String {
    format!("{ORDER_QUERY}'{id}'")
}

/// The SOQL for every approved Order last modified before `cutoff`, oldest first. It has no
/// `LIMIT`: Salesforce answers in batches (2,000 by default) linked by `nextRecordsUrl`, so a
/// sweep reaches every approved Order however many have jobs already.
pub fn approved_orders_soql(status: &str, cutoff: DateTime<Utc>) -> String {
    format!(
        "{APPROVED_ORDERS_QUERY}{} AND LastModifiedDate < {} ORDER BY LastModifiedDate ASC, Id ASC",
        soql_quote(status),
        cutoff.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

/// A SOQL string literal: quotes, backslashes and control characters escaped.
pub fn soql_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// An Order with the fields [`ORDER_QUERY`] selects. Fields Salesforce may leave empty are `Option`s.
#[derive(Clone, Debug)]
pub struct Order {
    /// `Id`.
    pub id: OrderId,
    /// `OrderNumber`.
    pub order_number: Option<String>,
    /// `Status` (picklist API value).
    pub status: Option<String>,
    /// `AccountId`.
    pub account_id: Option<String>,
    /// `Customer_Number__c`.
    pub customer_number: Option<String>,
    /// `WHMCS_Client_Id__c`, read from Text (`"12"`) or Number (`12.0`) as `"12"`.
    pub whmcs_client_id: Option<String>,
    /// `WHMCS_Order_Id__c`, written back by an earlier provisioning (a replay or a restore).
    pub whmcs_order_id: Option<String>,
    /// `Portal_Request_Id__c`: `<customer number>:<Idempotency-Key>` for an Order the order
    /// intake created (its sealed config options are bound to it), else empty.
    pub request_id: Option<String>,
    /// The OrderItems (empty when Salesforce sends `null`).
    pub items: Vec<OrderItem>,
}

/// An OrderItem.
#[derive(Clone, Debug)]
pub struct OrderItem {
    /// `Id`.
    pub id: String,
    /// `Quantity` as a whole number (Salesforce sends `2.0`): this many order lines.
    pub quantity: u32,
    /// `WHMCS_Product_Id__c` (the WHMCS `pid`), Text or Number read as `"5"`.
    pub whmcs_product_id: Option<String>,
    /// `Billing_Cycle__c`, a WHMCS cycle name such as `monthly`.
    pub billing_cycle: Option<String>,
    /// `Config_Options__c`: JSON object text (checked to be one); may hold secrets.
    pub config_options: Option<SecretString>,
}

/// An Order found by the reconcile sweep (approved, or in the provisioning status).
#[derive(Clone, Debug, PartialEq)]
pub struct ApprovedOrder {
    /// `Id`.
    pub id: OrderId,
    /// `AccountId`.
    pub account_id: Option<String>,
    /// `Customer_Number__c`.
    pub customer_number: Option<String>,
    /// `LastModifiedDate`.
    pub last_modified: Option<DateTime<Utc>>,
}

/// The fields a PATCH sets; `None` fields are left out of the request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OrderUpdate {
    /// `Status` (picklist API value).
    pub status: Option<String>,
    /// `WHMCS_Order_Id__c`.
    pub whmcs_order_id: Option<String>,
    /// `WHMCS_Service_Ids__c`, sent comma-separated.
    pub whmcs_service_ids: Option<Vec<String>>,
    /// `Provisioned_At__c`, sent as ISO-8601 UTC.
    pub provisioned_at: Option<DateTime<Utc>>,
    /// `Provisioning_Error__c`, cut to 255 characters. Callers keep it free of PII and secrets.
    pub provisioning_error: Option<String>,
    /// Not a field: the moment after which the PATCH must not go out. The client gives up
    /// then (at the latest after its configured timeout) and sends no attempt, first or retry,
    /// once it has passed. A caller that may only write while it
    /// holds a lease sets it to the end of what it knows of the lease, so a paused worker
    /// cannot overwrite what the lease's next holder wrote (`Activated` with a
    /// `Provisioning` sent late).
    pub deadline: Option<tokio::time::Instant>,
}

/// Longest `Provisioning_Error__c`.
pub const MAX_PROVISIONING_ERROR_CHARS: usize = 255;

impl OrderUpdate {
    /// Whether no field is set ([`OrderUpdate::deadline`] is not a field).
    pub fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.whmcs_order_id.is_none()
            && self.whmcs_service_ids.is_none()
            && self.provisioned_at.is_none()
            && self.provisioning_error.is_none()
    }

    /// The PATCH body: only the fields that are set.
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        let mut put = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                body.insert(name.to_owned(), Value::String(v));
            }
        };
        put("Status", self.status.clone());
        put("WHMCS_Order_Id__c", self.whmcs_order_id.clone());
        put(
            "WHMCS_Service_Ids__c",
            self.whmcs_service_ids.as_ref().map(|ids| ids.join(",")),
        );
        put(
            "Provisioned_At__c",
            self.provisioned_at
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        );
        put(
            "Provisioning_Error__c",
            self.provisioning_error
                .as_ref()
                .map(|e| e.chars().take(MAX_PROVISIONING_ERROR_CHARS).collect()),
        );
        Value::Object(body)
    }
}

/// A field read as text: strings as they are, whole numbers without `.0`; `null`/empty = None.
pub(crate) fn text(
    record: &impl Fields,
    field: &str,
) -> std::result::Result<Option<String>, String> {
    match record.field(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i.to_string()))
            } else if let Some(u) = n.as_u64() {
                Ok(Some(u.to_string()))
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                        Ok(Some(format!("{}", f as i64)))
                    }
                    _ => Err(format!("{field} is not a whole number")),
                }
            }
        }
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(format!("{field} is not a text or number value")),
    }
}

fn quantity(item: &impl Fields) -> std::result::Result<u32, String> {
    let value = match item.field("Quantity") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or("Quantity is missing or not a number")?;
    if value.fract() != 0.0 || value < 1.0 || value > f64::from(MAX_QUANTITY) {
        return Err(format!(
            "Quantity {value} is not a whole number from 1 to {MAX_QUANTITY}"
        ));
    }
    Ok(value as u32)
}

fn config_options(item: &impl Fields) -> std::result::Result<Option<SecretString>, String> {
    let raw = match item.field("Config_Options__c") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => SecretString::from(s.clone()),
        Some(Value::Object(o)) => SecretString::from(Value::Object(o.clone()).to_string()),
        Some(_) => return Err("Config_Options__c is not JSON object text".into()),
    };
    match serde_json::from_str::<JsonObject>(raw.expose_secret()) {
        Ok(JsonObject) => Ok(Some(raw)),
        Err(_) => Err("Config_Options__c is not a JSON object".into()),
    }
}

/// Deserializes from any JSON object, and only from one, keeping nothing: checks that a text
/// is an object without building its tree.
struct JsonObject;

impl<'de> serde::Deserialize<'de> for JsonObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = JsonObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<JsonObject, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(JsonObject)
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// A record read field by field: a generic JSON object, or one of the typed records below.
pub(crate) trait Fields {
    /// The field `name`; `None` when it is absent (a `null` may be either).
    fn field(&self, name: &str) -> Option<&Value>;
}

impl Fields for Value {
    fn field(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// [`ORDER_QUERY`]'s answer read straight into its fields (the generic tree costs a map and a
/// string per field of every record). An answer of another shape fails to read this way and
/// is read generically instead, which names what is wrong with it.
#[derive(serde::Deserialize)]
pub(crate) struct OrderAnswer {
    pub(crate) records: Vec<OrderRecord>,
}

/// One Order of [`OrderAnswer`]: the selected fields, each as Salesforce sent it.
#[derive(serde::Deserialize)]
pub(crate) struct OrderRecord {
    #[serde(rename = "Id")]
    id: Option<Value>,
    #[serde(rename = "OrderNumber")]
    order_number: Option<Value>,
    #[serde(rename = "Status")]
    status: Option<Value>,
    #[serde(rename = "AccountId")]
    account_id: Option<Value>,
    #[serde(rename = "Customer_Number__c")]
    customer_number: Option<Value>,
    #[serde(rename = "WHMCS_Client_Id__c")]
    whmcs_client_id: Option<Value>,
    #[serde(rename = "WHMCS_Order_Id__c")]
    whmcs_order_id: Option<Value>,
    #[serde(rename = "Portal_Request_Id__c")]
    request_id: Option<Value>,
    #[serde(rename = "OrderItems")]
    items: Option<ItemsAnswer>,
}

/// The OrderItems subquery of an [`OrderRecord`].
#[derive(serde::Deserialize)]
struct ItemsAnswer {
    done: Option<Value>,
    records: Vec<ItemRecord>,
}

/// One OrderItem of [`ItemsAnswer`].
#[derive(serde::Deserialize)]
struct ItemRecord {
    #[serde(rename = "Id")]
    id: Option<Value>,
    #[serde(rename = "Quantity")]
    quantity: Option<Value>,
    #[serde(rename = "WHMCS_Product_Id__c")]
    whmcs_product_id: Option<Value>,
    #[serde(rename = "Billing_Cycle__c")]
    billing_cycle: Option<Value>,
    #[serde(rename = "Config_Options__c")]
    config_options: Option<Value>,
}

impl Fields for OrderRecord {
    fn field(&self, name: &str) -> Option<&Value> {
        match name {
            "Id" => self.id.as_ref(),
            "OrderNumber" => self.order_number.as_ref(),
            "Status" => self.status.as_ref(),
            "AccountId" => self.account_id.as_ref(),
            "Customer_Number__c" => self.customer_number.as_ref(),
            "WHMCS_Client_Id__c" => self.whmcs_client_id.as_ref(),
            "WHMCS_Order_Id__c" => self.whmcs_order_id.as_ref(),
            "Portal_Request_Id__c" => self.request_id.as_ref(),
            _ => None,
        }
    }
}

impl Fields for ItemRecord {
    fn field(&self, name: &str) -> Option<&Value> {
        match name {
            "Id" => self.id.as_ref(),
            "Quantity" => self.quantity.as_ref(),
            "WHMCS_Product_Id__c" => self.whmcs_product_id.as_ref(),
            "Billing_Cycle__c" => self.billing_cycle.as_ref(),
            "Config_Options__c" => self.config_options.as_ref(),
            _ => None,
        }
    }
}

/// An Order record with its OrderItems subquery.
pub(crate) trait OrderFields: Fields {
    /// The OrderItems, or why they cannot be read.
    fn order_items(&self) -> std::result::Result<Vec<OrderItem>, String>;
}

impl OrderFields for Value {
    fn order_items(&self) -> std::result::Result<Vec<OrderItem>, String> {
        match self.get("OrderItems") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(sub) => {
                if sub.get("done") == Some(&Value::Bool(false)) {
                    return Err("more OrderItems than one query page holds".to_owned());
                }
                sub.get("records")
                    .and_then(Value::as_array)
                    .ok_or("OrderItems has no records array")?
                    .iter()
                    .map(parse_item)
                    .collect()
            }
        }
    }
}

impl OrderFields for OrderRecord {
    fn order_items(&self) -> std::result::Result<Vec<OrderItem>, String> {
        match &self.items {
            None => Ok(Vec::new()),
            Some(sub) => {
                if sub.done == Some(Value::Bool(false)) {
                    return Err("more OrderItems than one query page holds".to_owned());
                }
                sub.records.iter().map(parse_item).collect()
            }
        }
    }
}

/// Reads one Order record of [`ORDER_QUERY`]'s answer.
pub(crate) fn parse_order(record: &impl OrderFields, requested: &OrderId) -> Result<Order> {
    let invalid = |reason: String| Error::InvalidRecord {
        order_id: requested.to_string(),
        reason,
    };
    let id = text(record, "Id")
        .map_err(&invalid)?
        .ok_or_else(|| invalid("Id is missing".into()))?;
    let id = OrderId::parse(&id).map_err(|e| invalid(e.to_string()))?;
    if !id.same_record(requested) {
        return Err(invalid(format!(
            "salesforce answered with another order ({id})"
        )));
    }
    let items = record.order_items().map_err(&invalid)?;
    Ok(Order {
        id,
        order_number: text(record, "OrderNumber").map_err(&invalid)?,
        status: text(record, "Status").map_err(&invalid)?,
        account_id: text(record, "AccountId").map_err(&invalid)?,
        customer_number: text(record, "Customer_Number__c").map_err(&invalid)?,
        whmcs_client_id: text(record, "WHMCS_Client_Id__c").map_err(&invalid)?,
        whmcs_order_id: text(record, "WHMCS_Order_Id__c").map_err(&invalid)?,
        request_id: text(record, "Portal_Request_Id__c").map_err(&invalid)?,
        items,
    })
}

fn parse_item(item: &impl Fields) -> std::result::Result<OrderItem, String> {
    let id = text(item, "Id")?.ok_or("an OrderItem has no Id")?;
    let with_id = |e: String| format!("OrderItem {id}: {e}");
    Ok(OrderItem {
        quantity: quantity(item).map_err(with_id)?,
        whmcs_product_id: text(item, "WHMCS_Product_Id__c").map_err(with_id)?,
        billing_cycle: text(item, "Billing_Cycle__c").map_err(with_id)?,
        config_options: config_options(item).map_err(with_id)?,
        id,
    })
}

/// Salesforce's REST date-time (`2024-05-01T12:34:56.000+0000`) or RFC 3339.
pub(crate) fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Reads one record of [`APPROVED_ORDERS_QUERY`]'s answer.
pub(crate) fn parse_approved(record: &Value) -> std::result::Result<ApprovedOrder, String> {
    let id = text(record, "Id")?.ok_or("a record has no Id")?;
    let id = OrderId::parse(&id).map_err(|e| e.to_string())?;
    Ok(ApprovedOrder {
        account_id: text(record, "AccountId")?,
        customer_number: text(record, "Customer_Number__c")?,
        last_modified: text(record, "LastModifiedDate")?
            .as_deref()
            .and_then(parse_datetime),
        id,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn id() -> OrderId {
        OrderId::parse("801A0000006Vm9rIAC").unwrap()
    }

    /// The query selects `WHMCS_Order_Id__c`: an Order already in the provisioned status with a
    /// `WHMCS_Order_Id__c` is recorded as done, not refused, and that rule needs the field; and
    /// `Portal_Request_Id__c`, which options sealed by the order intake are bound to.
    #[test]
    fn the_order_query_is_design_section_3_plus_the_whmcs_order_id() {
        assert_eq!(
            order_soql(&id()),
            "SELECT Id, OrderNumber, Status, AccountId, Customer_Number__c, WHMCS_Client_Id__c, WHMCS_Order_Id__c, Portal_Request_Id__c, \
             (SELECT Id, Quantity, WHMCS_Product_Id__c, Billing_Cycle__c, Config_Options__c FROM OrderItems) \
             FROM Order WHERE Id = '801A0000006Vm9rIAC'"
        );
    }

    #[test]
    fn approved_query_quotes_the_status() {
        let cutoff = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(
            approved_orders_soql("Appro'ved\\", cutoff),
            "SELECT Id, AccountId, Customer_Number__c, LastModifiedDate FROM Order WHERE Status = 'Appro\\'ved\\\\' \
             AND LastModifiedDate < 2023-11-14T22:13:20Z ORDER BY LastModifiedDate ASC, Id ASC"
        );
    }

    #[test]
    fn reads_numbers_and_text_leniently() {
        let record = json!({
            "attributes": {"type": "Order"},
            "Id": "801A0000006Vm9rIAC",
            "Status": "Approved",
            "WHMCS_Client_Id__c": 12.0,
            "OrderItems": {"totalSize": 2, "done": true, "records": [
                {"Id": "802A", "Quantity": 2.0, "WHMCS_Product_Id__c": "5", "Billing_Cycle__c": "monthly",
                 "Config_Options__c": "{\"7\":\"hunter2\"}"},
                {"Id": "802B", "Quantity": 1, "WHMCS_Product_Id__c": 6}
            ]}
        });
        let order = parse_order(&record, &id()).unwrap();
        assert_eq!(order.whmcs_client_id.as_deref(), Some("12"));
        assert_eq!(order.order_number, None);
        assert_eq!(order.items.len(), 2);
        assert_eq!(order.items[0].quantity, 2);
        assert_eq!(order.items[1].whmcs_product_id.as_deref(), Some("6"));
        assert_eq!(
            order.items[0]
                .config_options
                .as_ref()
                .unwrap()
                .expose_secret(),
            "{\"7\":\"hunter2\"}"
        );
        assert!(!format!("{order:?}").contains("hunter2"));
        let no_items =
            json!({"Id": "801A0000006Vm9r", "OrderItems": null, "WHMCS_Client_Id__c": "12"});
        let order = parse_order(&no_items, &id()).unwrap();
        assert!(order.items.is_empty());
        assert_eq!(order.whmcs_client_id.as_deref(), Some("12"));
    }

    #[test]
    fn refuses_data_it_cannot_provision_without_echoing_secrets() {
        let check = |item: Value, want: &str| {
            let record = json!({"Id": "801A0000006Vm9rIAC", "OrderItems": {"done": true, "records": [item]}});
            let err = parse_order(&record, &id()).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(want), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        };
        check(json!({"Id": "802A", "Quantity": 1.5}), "Quantity 1.5");
        check(json!({"Id": "802A", "Quantity": 0.0}), "Quantity 0");
        check(
            json!({"Id": "802A", "Quantity": 1.0, "Config_Options__c": "[\"hunter2\"]"}),
            "not a JSON object",
        );
        check(
            json!({"Id": "802A", "Quantity": 1.0, "Config_Options__c": "hunter2"}),
            "not a JSON object",
        );
        let other = json!({"Id": "801000000000001AAA"});
        assert!(parse_order(&other, &id()).is_err());
    }

    /// What a reading of an Order says, secrets included (for comparing two readings).
    fn reading(result: Result<Order>) -> String {
        match result {
            Ok(order) => {
                let options: Vec<Option<String>> = order
                    .items
                    .iter()
                    .map(|i| {
                        i.config_options
                            .as_ref()
                            .map(|c| c.expose_secret().to_owned())
                    })
                    .collect();
                format!("{order:?} {options:?}")
            }
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn the_typed_reading_of_an_order_agrees_with_the_generic_one() {
        let item = json!({"attributes": {"type": "OrderItem"}, "Id": "802A", "Quantity": 2.0,
            "WHMCS_Product_Id__c": "5", "Billing_Cycle__c": "monthly",
            "Config_Options__c": "{\"7\":\"hunter2\"}"});
        let records = [
            json!({"attributes": {"type": "Order", "url": "/x"}, "Id": "801A0000006Vm9rIAC",
                   "OrderNumber": "00000100", "Status": "Approved", "AccountId": "001A0000001abcd",
                   "Customer_Number__c": "C-1", "WHMCS_Client_Id__c": 12.0,
                   "WHMCS_Order_Id__c": null, "Portal_Request_Id__c": "",
                   "OrderItems": {"totalSize": 1, "done": true, "records": [item.clone()]}}),
            json!({"Id": "801A0000006Vm9r", "OrderItems": null, "WHMCS_Client_Id__c": "12"}),
            json!({"Id": "801A0000006Vm9r", "Status": true, "WHMCS_Order_Id__c": 7}),
            json!({"Id": "801A0000006Vm9r", "OrderItems": {"done": true, "records": [
                {"Id": "802B", "Quantity": "3", "WHMCS_Product_Id__c": 6,
                 "Config_Options__c": {"7": "x"}},
                {"Id": "802C", "Quantity": 1, "Config_Options__c": " "}]}}),
            // Refused readings: both must refuse the same way.
            json!({"Id": "801A0000006Vm9r", "OrderItems": {"done": false, "records": []}}),
            json!({"Id": "801A0000006Vm9r", "OrderItems": {"done": true, "records": [
                {"Id": "802A", "Quantity": 1.5}]}}),
            json!({"Id": "801A0000006Vm9r", "OrderItems": {"done": true, "records": [
                {"Id": "802A", "Quantity": 1, "Config_Options__c": "[1]"}]}}),
            json!({"Id": "801A0000006Vm9r", "OrderItems": {"done": true, "records": [
                {"Quantity": 1}]}}),
            json!({"Id": "801000000000001AAA"}),
            json!({"Status": "Approved"}),
            json!({"Id": "801A0000006Vm9r", "Status": 1.5}),
        ];
        for record in records {
            let answer = json!({"totalSize": 1, "done": true, "records": [record.clone()]});
            let typed: OrderAnswer = serde_json::from_value(answer)
                .unwrap_or_else(|e| panic!("the typed reading failed on {record}: {e}"));
            assert_eq!(
                reading(parse_order(&typed.records[0], &id())),
                reading(parse_order(&record, &id())),
                "{record}"
            );
        }
        // An answer of another shape is not read the typed way (the generic reading names
        // what is wrong with it).
        for odd in [
            json!({"records": {}}),
            json!({"records": [{"Id": "801A0000006Vm9r", "OrderItems": {"done": true}}]}),
            json!({"records": [{"Id": "801A0000006Vm9r", "OrderItems": []}]}),
            json!({"records": ["801A0000006Vm9r"]}),
        ] {
            assert!(
                serde_json::from_value::<OrderAnswer>(odd.clone()).is_err(),
                "{odd}"
            );
        }
    }

    #[test]
    fn config_options_are_checked_to_be_one_json_object() {
        let item = |options: &str| json!({"Config_Options__c": options});
        assert!(config_options(&item("{}")).unwrap().is_some());
        assert!(
            config_options(&item(r#"{"a": [1, {"b": null}], "c": "d"}"#))
                .unwrap()
                .is_some()
        );
        for bad in [
            "[]",
            "{",
            r#"{"a": 1} {}"#,
            r#"{"a" 1}"#,
            "1",
            "\"{}\"",
            "{} x",
        ] {
            assert!(config_options(&item(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn update_sends_only_the_fields_set() {
        let update = OrderUpdate {
            status: Some("Activated".into()),
            whmcs_service_ids: Some(vec!["10".into(), "11".into()]),
            provisioned_at: DateTime::from_timestamp(1_700_000_000, 0),
            ..OrderUpdate::default()
        };
        assert_eq!(
            update.to_json(),
            json!({"Status": "Activated", "WHMCS_Service_Ids__c": "10,11",
                   "Provisioned_At__c": "2023-11-14T22:13:20.000Z"})
        );
        let long = OrderUpdate {
            provisioning_error: Some("é".repeat(300)),
            ..OrderUpdate::default()
        };
        let sent = long.to_json()["Provisioning_Error__c"]
            .as_str()
            .unwrap()
            .chars()
            .count();
        assert_eq!(sent, 255);
        assert!(OrderUpdate::default().is_empty());
    }

    #[test]
    fn datetimes_in_salesforce_format_parse() {
        let t = parse_datetime("2023-11-14T22:13:20.000+0000").unwrap();
        assert_eq!(t.timestamp(), 1_700_000_000);
        assert_eq!(
            parse_datetime("2023-11-14T22:13:20Z").unwrap().timestamp(),
            1_700_000_000
        );
        assert!(parse_datetime("yesterday").is_none());
    }
}
