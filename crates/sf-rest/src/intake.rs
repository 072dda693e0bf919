//! Order intake: the Order the portal places, its SOQL and the one composite request that
//! creates it with its OrderItems all-or-none.

use std::fmt;

use chrono::NaiveDate;
use serde_json::{Value, json};

use crate::model::{MAX_QUANTITY, soql_quote, text};
use crate::{Action, Error, OrderId, Result};

/// Most OrderItems one [`NewOrder`] may have: a composite request holds at most 25
/// subrequests, one of them the Order.
pub const MAX_ORDER_ITEMS: usize = 24;

/// Longest `Portal_Request_Id__c` (a Text(255) field).
pub const MAX_REQUEST_ID_CHARS: usize = 255;

/// The `referenceId` of the Order in the composite request; items are `refItem0`, `refItem1`, ...
pub const ORDER_REFERENCE: &str = "refOrder";

/// The account query up to the id literal.
pub const ACCOUNT_QUERY: &str = "SELECT Id, Customer_Number__c FROM Account WHERE Id = ";

/// The price book entry query up to the price book id literal.
pub const PRICEBOOK_ENTRY_QUERY: &str =
    "SELECT Id, UnitPrice, Product2.WHMCS_Product_Id__c FROM PricebookEntry WHERE Pricebook2Id = ";

/// The query for an Order by its `Portal_Request_Id__c`, up to the literal.
pub const ORDER_BY_REQUEST_ID_QUERY: &str =
    "SELECT Id, OrderNumber, Status FROM Order WHERE Portal_Request_Id__c = ";

/// A product's price in a price book.
#[derive(Clone, Debug, PartialEq)]
pub struct PricebookEntry {
    /// `Id` (key prefix `01u`).
    pub id: String,
    /// `UnitPrice`.
    pub unit_price: f64,
    /// The product's `WHMCS_Product_Id__c` (the WHMCS `pid`).
    pub whmcs_product_id: u64,
}

/// An Order as created (or found by its request id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedOrder {
    /// `Id`, 18 characters.
    pub id: OrderId,
    /// `OrderNumber`.
    pub order_number: String,
    /// `Status`.
    pub status: String,
}

/// The Order the portal places.
#[derive(Clone, Debug, PartialEq)]
pub struct NewOrder {
    /// `AccountId`.
    pub account_id: String,
    /// `EffectiveDate`.
    pub effective_date: NaiveDate,
    /// `Status`: a Draft-category value such as `Pending Review`.
    pub status: String,
    /// `Pricebook2Id`: every item's entry must be an active entry of this price book.
    pub pricebook_id: String,
    /// `Portal_Request_Id__c`: the unique external id that makes the create idempotent.
    pub request_id: String,
    /// The OrderItems, 1 to [`MAX_ORDER_ITEMS`].
    pub items: Vec<NewOrderItem>,
}

/// One OrderItem of a [`NewOrder`].
#[derive(Clone, PartialEq)]
pub struct NewOrderItem {
    /// `PricebookEntryId`.
    pub pricebook_entry_id: String,
    /// `Quantity`, 1 to [`MAX_QUANTITY`].
    pub quantity: u32,
    /// `UnitPrice`.
    pub unit_price: f64,
    /// `Billing_Cycle__c`, a WHMCS cycle name such as `monthly`.
    pub billing_cycle: String,
    /// `Config_Options__c`: JSON object text (empty for none). Sensitive values must already be
    /// encrypted; it is still never logged nor shown by `Debug`.
    pub config_options_json: String,
}

impl fmt::Debug for NewOrderItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewOrderItem")
            .field("pricebook_entry_id", &self.pricebook_entry_id)
            .field("quantity", &self.quantity)
            .field("unit_price", &self.unit_price)
            .field("billing_cycle", &self.billing_cycle)
            .field(
                "config_options_json",
                &format_args!("<{} bytes>", self.config_options_json.len()),
            )
            .finish()
    }
}

/// The SOQL for one Account's customer number.
pub fn account_soql(id: &OrderId) -> String {
    format!("{ACCOUNT_QUERY}'{id}'")
}

/// The SOQL for the active entries of `pricebook` whose product has one of `whmcs_product_ids`
/// (not empty: SOQL refuses an empty `IN ()`).
pub fn pricebook_entries_soql(pricebook: &OrderId, whmcs_product_ids: &[u64]) -> String {
    let ids: Vec<String> = whmcs_product_ids.iter().map(u64::to_string).collect();
    format!(
        "{PRICEBOOK_ENTRY_QUERY}'{pricebook}' AND IsActive = true AND Product2.WHMCS_Product_Id__c IN ({})",
        ids.join(", ")
    )
}

/// The SOQL for the Order with this `Portal_Request_Id__c` (quoted).
pub fn order_by_request_id_soql(request_id: &str) -> String {
    format!("{ORDER_BY_REQUEST_ID_QUERY}{}", soql_quote(request_id))
}

/// Checks a request id: 1 to [`MAX_REQUEST_ID_CHARS`] characters, none of them a control
/// character.
pub(crate) fn check_request_id(action: Action, request_id: &str) -> Result<()> {
    let reason = if request_id.is_empty() {
        Some("the request id is empty".to_owned())
    } else if request_id.chars().count() > MAX_REQUEST_ID_CHARS {
        Some(format!(
            "the request id is longer than {MAX_REQUEST_ID_CHARS} characters"
        ))
    } else if request_id.chars().any(char::is_control) {
        Some("the request id holds a control character".to_owned())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidRequest { action, reason }),
        None => Ok(()),
    }
}

impl NewOrder {
    /// Checks everything that can be checked before sending: ids, the request id, 1 to
    /// [`MAX_ORDER_ITEMS`] items, quantities, prices, config options that are a JSON object.
    pub fn validate(&self) -> Result<()> {
        let action = Action::CreateOrder;
        let invalid = |reason: String| Error::InvalidRequest { action, reason };
        OrderId::parse(&self.account_id)?;
        OrderId::parse(&self.pricebook_id)?;
        check_request_id(action, &self.request_id)?;
        if self.status.trim().is_empty() {
            return Err(invalid("the status is empty".into()));
        }
        if self.items.is_empty() {
            return Err(invalid("an order needs at least one item".into()));
        }
        if self.items.len() > MAX_ORDER_ITEMS {
            return Err(invalid(format!(
                "{} items are more than the {MAX_ORDER_ITEMS} one composite request can create with its order",
                self.items.len()
            )));
        }
        for (n, item) in self.items.iter().enumerate() {
            OrderId::parse(&item.pricebook_entry_id)?;
            if item.quantity == 0 || item.quantity > MAX_QUANTITY {
                return Err(invalid(format!(
                    "item {n}: quantity {} is not from 1 to {MAX_QUANTITY}",
                    item.quantity
                )));
            }
            if !item.unit_price.is_finite() || item.unit_price < 0.0 {
                return Err(invalid(format!(
                    "item {n}: the unit price is not a finite, non-negative number"
                )));
            }
            if !item.config_options_json.trim().is_empty()
                && !matches!(
                    serde_json::from_str::<Value>(&item.config_options_json),
                    Ok(Value::Object(_))
                )
            {
                return Err(invalid(format!(
                    "item {n}: config options are not a JSON object"
                )));
            }
        }
        Ok(())
    }

    /// The composite request body: the Order (`refOrder`), then each item (`refItem<n>`)
    /// pointing at it with `@{refOrder.id}`, all-or-none. `api_version` as in
    /// [`RestConfig::api_version`](crate::RestConfig::api_version), e.g. `v62.0`.
    pub fn composite_body(&self, api_version: &str) -> Value {
        let url = |kind: &str| format!("/services/data/{api_version}/sobjects/{kind}");
        let mut requests = vec![json!({
            "method": "POST",
            "url": url("Order"),
            "referenceId": ORDER_REFERENCE,
            "body": {
                "AccountId": self.account_id,
                "EffectiveDate": self.effective_date.format("%Y-%m-%d").to_string(),
                "Status": self.status,
                "Pricebook2Id": self.pricebook_id,
                "Portal_Request_Id__c": self.request_id,
            },
        })];
        for (n, item) in self.items.iter().enumerate() {
            let options = if item.config_options_json.trim().is_empty() {
                Value::Null
            } else {
                Value::String(item.config_options_json.clone())
            };
            requests.push(json!({
                "method": "POST",
                "url": url("OrderItem"),
                "referenceId": format!("refItem{n}"),
                "body": {
                    "OrderId": format!("@{{{ORDER_REFERENCE}.id}}"),
                    "PricebookEntryId": item.pricebook_entry_id,
                    "Quantity": item.quantity,
                    "UnitPrice": item.unit_price,
                    "Billing_Cycle__c": item.billing_cycle,
                    "Config_Options__c": options,
                },
            }));
        }
        json!({ "allOrNone": true, "compositeRequest": requests })
    }
}

/// Reads one record of the price book entry query.
pub(crate) fn parse_entry(record: &Value) -> std::result::Result<PricebookEntry, String> {
    let id = text(record, "Id")?.ok_or("an entry has no Id")?;
    let unit_price = record
        .get("UnitPrice")
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("entry {id}: UnitPrice is missing or not a number"))?;
    let product = record
        .get("Product2")
        .ok_or_else(|| format!("entry {id}: Product2 is missing"))?;
    let whmcs_product_id = text(product, "WHMCS_Product_Id__c")?
        .and_then(|pid| pid.parse::<u64>().ok())
        .ok_or_else(|| format!("entry {id}: Product2.WHMCS_Product_Id__c is not a product id"))?;
    Ok(PricebookEntry {
        id,
        unit_price,
        whmcs_product_id,
    })
}

/// Reads one record of the request id query.
pub(crate) fn parse_created(record: &Value) -> std::result::Result<CreatedOrder, String> {
    let id = text(record, "Id")?.ok_or("an order has no Id")?;
    let id = OrderId::parse(&id)
        .and_then(|id| OrderId::parse(&id.to_18()))
        .map_err(|e| e.to_string())?;
    Ok(CreatedOrder {
        order_number: text(record, "OrderNumber")?.unwrap_or_default(),
        status: text(record, "Status")?.unwrap_or_default(),
        id,
    })
}

/// One entry of a composite answer.
#[derive(Debug)]
pub(crate) struct SubResponse {
    pub(crate) reference_id: String,
    pub(crate) status: u16,
    pub(crate) body: Value,
}

/// Reads `{"compositeResponse": [..]}`.
pub(crate) fn parse_composite(body: &[u8]) -> std::result::Result<Vec<SubResponse>, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("composite answer is not json (line {})", e.line()))?;
    let list = value
        .get("compositeResponse")
        .and_then(Value::as_array)
        .ok_or("composite answer has no compositeResponse array")?;
    list.iter()
        .map(|entry| {
            let status = entry
                .get("httpStatusCode")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .ok_or("a subrequest result has no httpStatusCode")?;
            Ok(SubResponse {
                reference_id: entry
                    .get("referenceId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                status,
                body: entry.get("body").cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// The error a failed composite create means: the first subrequest error that is not
/// `PROCESSING_HALTED` (the cause), mapped to [`Error::Duplicate`] for a duplicate request id
/// and to [`Error::Api`] naming the subrequest otherwise. Messages come from Salesforce; the
/// request body is never part of it.
pub(crate) fn composite_error(results: &[SubResponse]) -> Error {
    let action = Action::CreateOrder;
    let failed: Vec<(&SubResponse, &Value)> = results
        .iter()
        .filter(|r| !(200..300).contains(&r.status))
        .map(|r| {
            let first = r
                .body
                .as_array()
                .and_then(|a| a.first())
                .unwrap_or(&Value::Null);
            (r, first)
        })
        .collect();
    let code = |e: &Value| {
        e.get("errorCode")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let cause = failed
        .iter()
        .find(|(_, e)| code(e) != "PROCESSING_HALTED")
        .or_else(|| failed.first());
    let Some((result, error)) = cause else {
        return Error::InvalidResponse {
            action,
            reason: "the composite answer reports no error and no created order".into(),
        };
    };
    let code = code(error);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let fields: Vec<String> = error
        .get("fields")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    const REQUEST_FIELD: &str = "Portal_Request_Id__c";
    if code == "DUPLICATE_VALUE"
        && result.reference_id == ORDER_REFERENCE
        && (fields.iter().any(|f| f == REQUEST_FIELD) || message.contains(REQUEST_FIELD))
    {
        return Error::Duplicate {
            action,
            field: REQUEST_FIELD.into(),
        };
    }
    Error::Api {
        action,
        status: result.status,
        code,
        message: format!("subrequest {}: {message}", result.reference_id),
        fields,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn order(items: usize) -> NewOrder {
        NewOrder {
            account_id: "001A0000006Vm9rIAC".into(),
            effective_date: NaiveDate::from_ymd_opt(2026, 12, 3).unwrap(),
            status: "Pending Review".into(),
            pricebook_id: "01s000000000001AAA".into(),
            request_id: "C-1:key-1".into(),
            items: (0..items)
                .map(|n| NewOrderItem {
                    pricebook_entry_id: "01u000000000001AAA".into(),
                    quantity: 1 + n as u32,
                    unit_price: 9.5,
                    billing_cycle: "monthly".into(),
                    config_options_json: if n == 0 {
                        r#"{"41":"enc:hunter2"}"#.into()
                    } else {
                        String::new()
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn the_queries_are_exact_and_quote_the_request_id() {
        let id = OrderId::parse("001A0000006Vm9rIAC").unwrap();
        assert_eq!(
            account_soql(&id),
            "SELECT Id, Customer_Number__c FROM Account WHERE Id = '001A0000006Vm9rIAC'"
        );
        let book = OrderId::parse("01s000000000001AAA").unwrap();
        assert_eq!(
            pricebook_entries_soql(&book, &[5, 11]),
            "SELECT Id, UnitPrice, Product2.WHMCS_Product_Id__c FROM PricebookEntry WHERE \
             Pricebook2Id = '01s000000000001AAA' AND IsActive = true AND \
             Product2.WHMCS_Product_Id__c IN (5, 11)"
        );
        assert_eq!(
            order_by_request_id_soql("C-1:x' OR Id != '"),
            "SELECT Id, OrderNumber, Status FROM Order WHERE Portal_Request_Id__c = 'C-1:x\\' OR Id != \\''"
        );
    }

    #[test]
    fn the_composite_body_references_the_order_and_is_all_or_none() {
        let body = order(2).composite_body("v62.0");
        assert_eq!(body["allOrNone"], true);
        let requests = body["compositeRequest"].as_array().unwrap();
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[0]["referenceId"], "refOrder");
        assert_eq!(requests[0]["url"], "/services/data/v62.0/sobjects/Order");
        assert_eq!(requests[0]["body"]["EffectiveDate"], "2026-12-03");
        assert_eq!(requests[0]["body"]["Portal_Request_Id__c"], "C-1:key-1");
        assert_eq!(requests[1]["referenceId"], "refItem0");
        assert_eq!(
            requests[1]["url"],
            "/services/data/v62.0/sobjects/OrderItem"
        );
        assert_eq!(requests[1]["body"]["OrderId"], "@{refOrder.id}");
        assert_eq!(requests[1]["body"]["Quantity"], 1);
        assert_eq!(
            requests[1]["body"]["Config_Options__c"],
            r#"{"41":"enc:hunter2"}"#
        );
        assert_eq!(requests[2]["body"]["Config_Options__c"], Value::Null);
    }

    #[test]
    fn bad_orders_are_refused_before_sending() {
        assert!(order(24).validate().is_ok());
        let check = |o: NewOrder, want: &str| {
            let err = o.validate().unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        };
        check(order(25), "25 items are more than the 24");
        check(order(0), "at least one item");
        let mut o = order(1);
        o.items[0].quantity = 0;
        check(o, "quantity 0");
        let mut o = order(1);
        o.items[0].config_options_json = "[\"hunter2\"]".into();
        check(o, "not a JSON object");
        let mut o = order(1);
        o.request_id = "a\nb".into();
        check(o, "control character");
        let mut o = order(1);
        o.account_id = "001' OR Id != '".into();
        assert!(matches!(o.validate(), Err(Error::InvalidId { .. })));
        assert!(!format!("{:?}", order(1)).contains("hunter2"));
    }

    #[test]
    fn the_cause_of_a_rollback_is_reported_not_the_halts() {
        let halted = |r: &str| SubResponse {
            reference_id: r.into(),
            status: 400,
            body: json!([{"errorCode": "PROCESSING_HALTED", "message": "rolled back"}]),
        };
        let results = vec![
            halted("refOrder"),
            SubResponse {
                reference_id: "refItem0".into(),
                status: 400,
                body: json!([{"errorCode": "FIELD_INTEGRITY_EXCEPTION",
                    "message": "field integrity exception: PricebookEntryId (pricebook entry is inactive)",
                    "fields": ["PricebookEntryId"]}]),
            },
            halted("refItem1"),
        ];
        match composite_error(&results) {
            Error::Api {
                code,
                message,
                fields,
                status,
                ..
            } => {
                assert_eq!(code, "FIELD_INTEGRITY_EXCEPTION");
                assert_eq!(status, 400);
                assert!(message.starts_with("subrequest refItem0: "), "{message}");
                assert_eq!(fields, ["PricebookEntryId"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let duplicate = vec![SubResponse {
            reference_id: "refOrder".into(),
            status: 400,
            body: json!([{"errorCode": "DUPLICATE_VALUE",
                "message": "duplicate value found: Portal_Request_Id__c duplicates value on record with id: 801000000000001AAA",
                "fields": []}]),
        }];
        assert!(matches!(
            composite_error(&duplicate),
            Error::Duplicate { field, .. } if field == "Portal_Request_Id__c"
        ));
    }
}
