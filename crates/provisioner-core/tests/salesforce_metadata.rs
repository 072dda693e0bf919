//! The Salesforce metadata in `salesforce/` (SFDX source format) checked against the code that
//! talks to the org.
//!
//! The fields are not listed here: they come from the code itself, the SOQL `sf-rest` sends
//! (its query functions), the bodies it sends (`OrderUpdate::to_json`, `NewOrder::composite_body`)
//! and the event fields `sf-pubsub` decodes. So a field removed from `salesforce/`, or renamed in
//! a query or a request, fails here. The statuses are the engine's and the order intake's
//! defaults. This test lives in provisioner-core because it is the lowest crate that sees all of
//! them (sf-rest, sf-pubsub and the statuses) without a new dependency edge.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use provisioner_core::OrderStatuses;
use provisioner_core::order_intake::{BILLING_CYCLES, DEFAULT_NEW_STATUS};
use roxmltree::{Document, Node};
use serde_json::Value;
use sf_pubsub::OrderProvisionRequested;
use sf_rest::{
    DEFAULT_API_VERSION, MAX_PROVISIONING_ERROR_CHARS, MAX_QUANTITY, MAX_REQUEST_ID_CHARS,
    NewOrder, NewOrderItem, OrderId, OrderUpdate,
};

// ---------------------------------------------------------------------------------------------
// Files

/// The repository root (this crate is `crates/provisioner-core`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the repository root")
        .to_path_buf()
}

/// The package deployed as it is.
fn app() -> PathBuf {
    repo().join("salesforce/force-app/main/default")
}

/// The templates an operator edits before deploying (profile, connected app).
fn access() -> PathBuf {
    repo().join("salesforce/access/main/default")
}

/// A parsed XML file, or `None` when it does not exist. The text is leaked: a test process.
fn xml(path: &Path) -> Option<Document<'static>> {
    let text = std::fs::read_to_string(path).ok()?;
    let text: &'static str = Box::leak(text.into_boxed_str());
    Some(Document::parse(text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn xml_required(path: &Path) -> Document<'static> {
    xml(path).unwrap_or_else(|| panic!("{} is missing", path.display()))
}

/// The child elements named `name`.
fn children<'a>(node: Node<'a, 'a>, name: &'a str) -> impl Iterator<Item = Node<'a, 'a>> {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// The trimmed text of the first child element named `name`.
fn text<'a>(node: Node<'a, 'a>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
        .and_then(|c| c.text())
        .map(str::trim)
}

fn flag(node: Node<'_, '_>, name: &str) -> bool {
    text(node, name) == Some("true")
}

// ---------------------------------------------------------------------------------------------
// The metadata's fields

/// One custom field as `objects/<object>/fields/<name>.field-meta.xml` defines it.
#[derive(Debug)]
struct Field {
    kind: String,
    length: Option<usize>,
    scale: Option<u32>,
    formula: bool,
    external_id: bool,
    unique: bool,
    case_sensitive: bool,
    picklist: Vec<String>,
}

impl Field {
    fn load(object: &str, name: &str) -> Option<Field> {
        let path = app()
            .join("objects")
            .join(object)
            .join("fields")
            .join(format!("{name}.field-meta.xml"));
        let doc = xml(&path)?;
        let root = doc.root_element();
        assert_eq!(text(root, "fullName"), Some(name), "{}", path.display());
        let picklist = children(root, "valueSet")
            .flat_map(|v| children(v, "valueSetDefinition"))
            .flat_map(|d| children(d, "value"))
            .filter_map(|v| text(v, "fullName").map(str::to_owned))
            .collect();
        Some(Field {
            kind: text(root, "type").unwrap_or_default().to_owned(),
            length: text(root, "length").and_then(|l| l.parse().ok()),
            scale: text(root, "scale").and_then(|s| s.parse().ok()),
            formula: text(root, "formula").is_some(),
            external_id: flag(root, "externalId"),
            unique: flag(root, "unique"),
            case_sensitive: flag(root, "caseSensitive"),
            picklist,
        })
    }

    fn is_text(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "Text" | "TextArea" | "LongTextArea" | "Picklist"
        )
    }

    fn is_whole_number(&self) -> bool {
        self.kind == "Number" && self.scale.unwrap_or(0) == 0
    }

    /// Characters a text field holds (a Text formula and a picklist value: 255 at most, but a
    /// formula cannot be written anyway).
    fn capacity(&self) -> usize {
        match self.kind.as_str() {
            "TextArea" => 255,
            _ => self.length.unwrap_or(255),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The code's use of fields

/// How the code uses a field.
#[derive(Debug, Clone)]
enum Use {
    /// Selected, read with the lenient text reader (text, or a whole number as text).
    Read,
    /// Compared in a `WHERE` with a literal: a number or a string.
    Filter { numeric: bool },
    /// Sent in a request body with this value.
    Write(Value),
}

/// Every custom field the code uses: `(object, field)` to its uses, each with where it is from.
type Uses = BTreeMap<(String, String), Vec<(Use, String)>>;

/// The object behind a relationship name: a standard lookup's relationship is named like its
/// object (`Product2`, `Account`); a child relationship is the object's plural (`OrderItems`).
fn related_object(relationship: &str) -> String {
    match relationship.strip_suffix('s') {
        Some(single) if single.ends_with("Item") => single.to_owned(),
        _ => relationship.to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str,
    Num,
    Punct(char),
}

fn tokens(soql: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = soql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => break,
                    _ => {}
                }
            }
            out.push(Token::Str);
        } else if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-'))
            {
                chars.next();
            }
            out.push(Token::Num);
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || c == '_' || c == '.' {
                    word.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token::Word(word));
        } else {
            out.push(Token::Punct(c));
            chars.next();
        }
    }
    out
}

/// One `SELECT` (the query, or a subquery) being read.
#[derive(Default)]
struct Frame {
    selected: Vec<String>,
    object: Option<String>,
    after_from: bool,
    filters: Vec<(String, bool)>,
}

/// The custom fields a SOQL statement selects and filters on, by object, and the objects it
/// reads (`FROM`, subqueries, relationship paths).
fn soql_uses(soql: &str, source: &str, uses: &mut Uses, read_objects: &mut BTreeSet<String>) {
    let toks = tokens(soql);
    let mut frames: Vec<Frame> = Vec::new();
    // For each open parenthesis: whether it opened a subquery.
    let mut parens: Vec<bool> = Vec::new();
    let mut finish = |frame: Frame, uses: &mut Uses| {
        let object = frame.object.expect("a SELECT without FROM");
        read_objects.insert(object.clone());
        let mut add = |path: &str, usage: Use| {
            let (object, field) = match path.rsplit_once('.') {
                Some((rel, field)) => (related_object(rel), field),
                None => (object.clone(), path),
            };
            read_objects.insert(object.clone());
            if field.ends_with("__c") {
                uses.entry((object, field.to_owned()))
                    .or_default()
                    .push((usage, source.to_owned()));
            }
        };
        for path in &frame.selected {
            add(path, Use::Read);
        }
        for (path, numeric) in &frame.filters {
            add(path, Use::Filter { numeric: *numeric });
        }
    };
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Token::Word(w) if w.eq_ignore_ascii_case("SELECT") => frames.push(Frame::default()),
            Token::Word(w) if w.eq_ignore_ascii_case("FROM") => {
                let frame = frames.last_mut().expect("FROM outside a SELECT");
                if let Some(Token::Word(object)) = toks.get(i + 1) {
                    frame.object = Some(related_object(object));
                    frame.after_from = true;
                    i += 1;
                }
            }
            Token::Word(w) => {
                let frame = frames.last_mut().expect("a word outside a SELECT");
                if !frame.after_from {
                    frame.selected.push(w.clone());
                } else if w.contains("__c") {
                    // `field <op> literal`, `field IN (literal, ...)`
                    let literal = toks[i + 1..]
                        .iter()
                        .find(|t| matches!(t, Token::Str | Token::Num))
                        .expect("a filter without a literal");
                    frame.filters.push((w.clone(), *literal == Token::Num));
                }
            }
            Token::Punct('(') => {
                let sub = matches!(toks.get(i + 1), Some(Token::Word(w)) if w.eq_ignore_ascii_case("SELECT"));
                parens.push(sub);
            }
            Token::Punct(')') => {
                let closes_subquery = parens.pop() == Some(true);
                if closes_subquery {
                    let frame = frames.pop().expect("a subquery");
                    finish(frame, uses);
                }
            }
            _ => {}
        }
        i += 1;
    }
    let frame = frames.pop().expect("a SELECT");
    assert!(frames.is_empty(), "unbalanced SOQL: {soql}");
    finish(frame, uses);
}

/// The custom fields of a request body (`__c` keys), as written by the code.
fn body_uses(object: &str, body: &Value, source: &str, uses: &mut Uses) {
    let body = body.as_object().expect("a JSON object body");
    for (key, value) in body {
        if key.ends_with("__c") {
            uses.entry((object.to_owned(), key.clone()))
                .or_default()
                .push((Use::Write(value.clone()), source.to_owned()));
        }
    }
}

fn id(prefix: &str) -> OrderId {
    OrderId::parse(&format!("{prefix}A0000006Vm9rIAC")).expect("an id")
}

/// What the code does with the org: the uses of every custom field, the objects it reads, the
/// objects it creates, and the object it updates.
struct CodeUse {
    uses: Uses,
    read: BTreeSet<String>,
    created: BTreeSet<String>,
    updated: BTreeSet<String>,
    /// The field the order intake looks an Order up by (its idempotency key).
    request_id_field: String,
}

fn code_use() -> CodeUse {
    let mut uses = Uses::new();
    let mut read = BTreeSet::new();
    let statuses = OrderStatuses::default();
    let cutoff = Utc
        .timestamp_opt(1_700_000_000, 0)
        .single()
        .expect("a time");
    let queries = [
        ("ORDER_QUERY", sf_rest::order_soql(&id("801"))),
        (
            "APPROVED_ORDERS_QUERY",
            sf_rest::approved_orders_soql(&statuses.approved, cutoff),
        ),
        ("ACCOUNT_QUERY", sf_rest::account_soql(&id("001"))),
        (
            "PRICEBOOK_ENTRY_QUERY",
            sf_rest::pricebook_entries_soql(&id("01s"), &[5, 11]),
        ),
        (
            "ORDER_BY_REQUEST_ID_QUERY",
            sf_rest::order_by_request_id_soql("C-1:key"),
        ),
    ];
    for (name, soql) in &queries {
        soql_uses(soql, name, &mut uses, &mut read);
    }
    let mut by_request = Uses::new();
    soql_uses(
        &sf_rest::order_by_request_id_soql("C-1:key"),
        "",
        &mut by_request,
        &mut BTreeSet::new(),
    );
    let request_id_field = by_request
        .iter()
        .find(|(_, u)| u.iter().any(|(u, _)| matches!(u, Use::Filter { .. })))
        .map(|((_, f), _)| f.clone())
        .expect("the request id query filters on a custom field");

    // The PATCH of a provisioned Order, every field set to its longest value.
    let update = OrderUpdate {
        status: Some(statuses.provisioned.clone()),
        whmcs_order_id: Some(u32::MAX.to_string()),
        // One service per order line of a full OrderItem.
        whmcs_service_ids: Some(vec!["1234567".to_owned(); MAX_QUANTITY as usize]),
        provisioned_at: Some(cutoff),
        provisioning_error: Some("x".repeat(MAX_PROVISIONING_ERROR_CHARS + 10)),
        deadline: None,
    };
    body_uses("Order", &update.to_json(), "OrderUpdate", &mut uses);
    let mut updated = BTreeSet::from(["Order".to_owned()]);

    // The order intake's create: one item per billing cycle, longest request id, sealed options.
    let order = NewOrder {
        account_id: id("001").to_string(),
        effective_date: NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date"),
        status: DEFAULT_NEW_STATUS.to_owned(),
        pricebook_id: id("01s").to_string(),
        request_id: "r".repeat(MAX_REQUEST_ID_CHARS),
        items: BILLING_CYCLES
            .iter()
            .map(|cycle| NewOrderItem {
                pricebook_entry_id: id("01u").to_string(),
                quantity: 1,
                unit_price: 10.0,
                billing_cycle: (*cycle).to_owned(),
                config_options_json: format!(r#"{{"7":"pf1.k1.{}"}}"#, "A".repeat(4000)),
            })
            .collect(),
    };
    order.validate().expect("a valid sample order");
    let composite = order.composite_body(DEFAULT_API_VERSION);
    let mut created = BTreeSet::new();
    for request in composite["compositeRequest"]
        .as_array()
        .expect("subrequests")
    {
        let url = request["url"].as_str().expect("a url");
        let object = url.rsplit('/').next().expect("an sObject").to_owned();
        assert_eq!(request["method"], "POST", "{url}");
        body_uses(&object, &request["body"], "NewOrder", &mut uses);
        created.insert(object);
    }
    // Creating a child (OrderItem) edits its parent.
    if created.contains("OrderItem") {
        updated.insert("Order".to_owned());
    }
    CodeUse {
        uses,
        read,
        created,
        updated,
        request_id_field,
    }
}

/// Why `field` does not suit `usage`, if it does not.
fn unsuitable(field: &Field, usage: &Use) -> Option<String> {
    match usage {
        Use::Read if !(field.is_text() || field.is_whole_number()) => Some(format!(
            "is {} (scale {:?}): read as text or a whole number",
            field.kind, field.scale
        )),
        Use::Filter { numeric: true } if !field.is_whole_number() => {
            Some(format!("is {}: compared with a number literal", field.kind))
        }
        Use::Filter { numeric: false } if !matches!(field.kind.as_str(), "Text" | "Picklist") => {
            Some(format!(
                "is {}: compared with a string literal (long text cannot be filtered)",
                field.kind
            ))
        }
        Use::Write(_) if field.formula => Some("is a formula: the code writes it".into()),
        Use::Write(Value::Null) => None,
        Use::Write(Value::String(s)) if DateTime::parse_from_rfc3339(s).is_ok() => {
            (field.kind != "DateTime").then(|| format!("is {}: written a date/time", field.kind))
        }
        Use::Write(Value::String(s)) if field.kind == "Picklist" => (!field.picklist.contains(s))
            .then(|| format!("has no picklist value {s:?}, which the code writes")),
        Use::Write(Value::String(s)) => {
            let len = s.chars().count();
            if !field.is_text() {
                Some(format!("is {}: written text", field.kind))
            } else if field.capacity() < len {
                Some(format!(
                    "holds {} characters: the code writes up to {len}",
                    field.capacity()
                ))
            } else {
                None
            }
        }
        Use::Write(Value::Number(_)) if field.kind != "Number" => {
            Some(format!("is {}: written a number", field.kind))
        }
        _ => None,
    }
}

#[test]
fn every_field_the_code_uses_exists_with_a_compatible_type() {
    let code = code_use();
    assert!(
        code.uses.len() >= 10,
        "too few fields found in the code's SOQL and bodies: {:?}",
        code.uses.keys()
    );
    let mut problems = Vec::new();
    for ((object, name), uses) in &code.uses {
        let Some(field) = Field::load(object, name) else {
            let from: BTreeSet<&str> = uses.iter().map(|(_, s)| s.as_str()).collect();
            problems.push(format!(
                "{object}.{name} (used by {from:?}) has no objects/{object}/fields/{name}.field-meta.xml"
            ));
            continue;
        };
        for (usage, source) in uses {
            if let Some(why) = unsuitable(&field, usage) {
                problems.push(format!("{object}.{name} ({source}) {why}"));
            }
        }
    }
    // The order intake's idempotency: a second create with the same request id must fail.
    match Field::load("Order", &code.request_id_field) {
        Some(f) if f.external_id && f.unique && f.case_sensitive => {}
        Some(_) => problems.push(format!(
            "Order.{} must be an External ID, Unique and case-sensitive",
            code.request_id_field
        )),
        None => {} // reported above
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The permission set

const PERMISSION_SET: &str = "Portal_Provisioner_Integration";

/// Objects whose access is another object's: an OrderItem's is its Order's, a price book
/// entry's is its product's and price book's.
fn governing_objects(object: &str) -> Vec<&str> {
    match object {
        "OrderItem" => vec!["Order"],
        "PricebookEntry" => vec!["Product2", "Pricebook2"],
        other => vec![other],
    }
}

#[test]
fn the_permission_set_grants_what_the_code_does() {
    let code = code_use();
    let doc = xml_required(
        &app()
            .join("permissionsets")
            .join(format!("{PERMISSION_SET}.permissionset-meta.xml")),
    );
    let root = doc.root_element();
    let fields: BTreeMap<&str, (bool, bool)> = children(root, "fieldPermissions")
        .map(|p| {
            (
                text(p, "field").unwrap_or_default(),
                (flag(p, "readable"), flag(p, "editable")),
            )
        })
        .collect();
    let objects: BTreeMap<&str, Node> = children(root, "objectPermissions")
        .map(|p| (text(p, "object").unwrap_or_default(), p))
        .collect();
    let mut problems = Vec::new();
    for ((object, name), uses) in &code.uses {
        let key = format!("{object}.{name}");
        let written = uses.iter().any(|(u, _)| matches!(u, Use::Write(_)));
        let formula = Field::load(object, name).is_some_and(|f| f.formula);
        match fields.get(key.as_str()) {
            None => problems.push(format!("no fieldPermissions for {key}")),
            Some((false, _)) => problems.push(format!("{key} is not readable")),
            Some((true, false)) if written => problems.push(format!("{key} is not editable")),
            Some((_, true)) if formula => {
                problems.push(format!("{key} is a formula: it cannot be editable"))
            }
            _ => {}
        }
    }
    let mut need = |object: &str, right: &str| match objects.get(object) {
        Some(p) if flag(*p, right) => {}
        _ => problems.push(format!("objectPermissions for {object} lack {right}")),
    };
    for object in &code.read {
        for o in governing_objects(object) {
            need(o, "allowRead");
        }
    }
    for object in &code.updated {
        for o in governing_objects(object) {
            need(o, "allowEdit");
        }
    }
    for object in &code.created {
        for o in governing_objects(object) {
            need(
                o,
                if o == object {
                    "allowCreate"
                } else {
                    "allowEdit"
                },
            );
        }
    }
    // Subscribing reads the event; the Flow publishes it (create).
    let event = event_name();
    need(&event, "allowRead");
    need(&event, "allowCreate");
    assert!(
        flag(
            children(root, "userPermissions")
                .find(|p| text(*p, "name") == Some("ApiEnabled"))
                .expect("userPermissions ApiEnabled"),
            "enabled"
        ),
        "ApiEnabled"
    );
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The platform event and the Flow

/// `OrderProvisionRequested__e`, from the topic the subscriber uses.
fn event_name() -> String {
    sf_pubsub::DEFAULT_TOPIC
        .strip_prefix("/event/")
        .expect("a platform event topic")
        .to_owned()
}

#[test]
fn the_event_has_every_field_the_subscriber_decodes() {
    let event = event_name();
    let dir = app().join("objects").join(&event);
    let doc = xml_required(&dir.join(format!("{event}.object-meta.xml")));
    let root = doc.root_element();
    assert_eq!(text(root, "eventType"), Some("HighVolume"));
    assert_eq!(text(root, "publishBehavior"), Some("PublishAfterCommit"));

    // The schema the sandbox publishes with: `doc` is `Data:<Salesforce type>`.
    let schema: Value =
        serde_json::from_str(OrderProvisionRequested::SCHEMA_JSON).expect("the schema");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    for f in schema["fields"].as_array().expect("fields") {
        let name = f["name"].as_str().expect("a name");
        if let Some(kind) = f["doc"].as_str().and_then(|d| d.strip_prefix("Data:")) {
            types.insert(name.to_owned(), kind.to_owned());
        }
    }
    let mut problems = Vec::new();
    for name in OrderProvisionRequested::FIELDS {
        if !types.contains_key(name) {
            problems.push(format!("SCHEMA_JSON lacks {name}, which the record reads"));
        }
    }
    for (name, kind) in &types {
        let path = dir.join("fields").join(format!("{name}.field-meta.xml"));
        let Some(doc) = xml(&path) else {
            problems.push(format!("{event}.{name} has no {}", path.display()));
            continue;
        };
        let found = text(doc.root_element(), "type").unwrap_or_default();
        if found != kind {
            problems.push(format!("{event}.{name} is {found}, the schema says {kind}"));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_flow_publishes_every_required_event_field_on_approval() {
    let event = event_name();
    let statuses = OrderStatuses::default();
    let doc = xml_required(&app().join("flows/Order_Provision_Requested.flow-meta.xml"));
    let root = doc.root_element();
    assert_eq!(text(root, "apiVersion"), Some(api_version()));
    assert_eq!(text(root, "status"), Some("Active"));
    let start = children(root, "start").next().expect("a start element");
    assert_eq!(text(start, "object"), Some("Order"));
    assert_eq!(text(start, "triggerType"), Some("RecordAfterSave"));
    assert!(flag(start, "doesRequireRecordChangedToMeetCriteria"));
    let on_approved = children(start, "filters").any(|f| {
        text(f, "field") == Some("Status")
            && text(f, "operator") == Some("EqualTo")
            && children(f, "value")
                .any(|v| text(v, "stringValue") == Some(statuses.approved.as_str()))
    });
    assert!(
        on_approved,
        "the Flow must start on Status = {:?}",
        statuses.approved
    );

    let creates: Vec<Node> = children(root, "recordCreates")
        .filter(|c| text(*c, "object") == Some(event.as_str()))
        .collect();
    assert_eq!(creates.len(), 1, "one Create Records of {event}");
    let assigned: BTreeMap<&str, &str> = children(creates[0], "inputAssignments")
        .map(|a| {
            let value = children(a, "value")
                .find_map(|v| text(v, "elementReference"))
                .unwrap_or_default();
            (text(a, "field").unwrap_or_default(), value)
        })
        .collect();
    let mut problems = Vec::new();
    for name in OrderProvisionRequested::REQUIRED_FIELDS {
        if !assigned.contains_key(name) {
            problems.push(format!("the Flow does not set {event}.{name}"));
        }
    }
    for (name, reference) in &assigned {
        let path = app()
            .join("objects")
            .join(&event)
            .join("fields")
            .join(format!("{name}.field-meta.xml"));
        let Some(field) = xml(&path) else {
            problems.push(format!(
                "the Flow sets {event}.{name}, which does not exist"
            ));
            continue;
        };
        let Some(source) = reference.strip_prefix("$Record.") else {
            problems.push(format!("{name} is set from {reference:?}, not the Order"));
            continue;
        };
        if source.ends_with("__c") && Field::load("Order", source).is_none() {
            problems.push(format!(
                "{name} is set from Order.{source}, which does not exist"
            ));
        }
        // An Id: the 18-character form must fit.
        let length = text(field.root_element(), "length").and_then(|l| l.parse::<usize>().ok());
        if source.ends_with("Id") && length.unwrap_or(0) < 18 {
            problems.push(format!(
                "{event}.{name} holds {length:?} characters, an Id 18"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Order statuses

#[test]
fn every_order_status_the_code_uses_is_a_picklist_value() {
    let statuses = OrderStatuses::default();
    let doc = xml_required(&app().join("standardValueSets/OrderStatus.standardValueSet-meta.xml"));
    let root = doc.root_element();
    assert_eq!(text(root, "groupingStringEnum"), Some("OrderStatusCode"));
    let values: BTreeMap<&str, &str> = children(root, "standardValue")
        .map(|v| {
            (
                text(v, "fullName").unwrap_or_default(),
                text(v, "groupingString").unwrap_or_default(),
            )
        })
        .collect();
    // Every value but the provisioned one is in the Draft category: a new Order must be, and
    // an Order is only activated once provisioned.
    let mut wanted = vec![
        (DEFAULT_NEW_STATUS, "Draft"),
        (statuses.approved.as_str(), "Draft"),
        (statuses.failed.as_str(), "Draft"),
        (statuses.provisioned.as_str(), "Activated"),
        // Salesforce's own two values: a deploy replaces the whole list.
        ("Draft", "Draft"),
        ("Activated", "Activated"),
    ];
    if let Some(p) = &statuses.provisioning {
        wanted.push((p.as_str(), "Draft"));
    }
    let problems: Vec<String> = wanted
        .iter()
        .filter(|(value, category)| values.get(value) != Some(category))
        .map(|(value, category)| {
            format!(
                "Order Status {value:?} must be a value of category {category} (found {:?})",
                values.get(value)
            )
        })
        .collect();
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The formula of the Order validation rule `name`, whitespace-normalised, checked active.
fn validation_rule(name: &str) -> String {
    let doc = xml_required(&app().join(format!(
        "objects/Order/validationRules/{name}.validationRule-meta.xml"
    )));
    let root = doc.root_element();
    assert_eq!(text(root, "active"), Some("true"), "{name}");
    text(root, "errorConditionFormula")
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The validation rules that keep the provisioner's PATCHes from overwriting a status they
/// have not seen (their compare-and-set): active, naming the statuses the code uses as the
/// guarded one and the two it may be reached from.
#[test]
fn the_provisioning_and_failed_statuses_are_guarded_by_active_validation_rules() {
    let statuses = OrderStatuses::default();
    let Some(provisioning) = &statuses.provisioning else {
        panic!("the default statuses have a provisioning status");
    };
    let rules = [
        (
            "Provisioning_Only_When_Approved",
            provisioning.as_str(),
            [statuses.approved.as_str(), statuses.failed.as_str()],
        ),
        (
            "Provisioning_Failed_Only_While_Provisioning",
            statuses.failed.as_str(),
            [statuses.approved.as_str(), provisioning.as_str()],
        ),
    ];
    for (name, guarded, from) in rules {
        let formula = validation_rule(name);
        let mut wanted = vec![
            "ISCHANGED(Status)".to_owned(),
            format!("ISPICKVAL(Status, \"{guarded}\")"),
        ];
        wanted.extend(
            from.iter()
                .map(|s| format!("NOT(ISPICKVAL(PRIORVALUE(Status), \"{s}\"))")),
        );
        for w in wanted {
            assert!(
                formula.contains(&w),
                "{name}: the formula lacks {w}: {formula}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The project and the templates

/// `62.0` for `v62.0`.
fn api_version() -> &'static str {
    DEFAULT_API_VERSION.trim_start_matches('v')
}

#[test]
fn the_project_uses_the_api_version_of_the_code() {
    let text =
        std::fs::read_to_string(repo().join("sfdx-project.json")).expect("sfdx-project.json");
    let project: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(project["sourceApiVersion"], api_version());
    let dirs = project["packageDirectories"]
        .as_array()
        .expect("packageDirectories");
    for dir in dirs {
        let path = dir["path"].as_str().expect("a path");
        assert!(repo().join(path).is_dir(), "{path} is not a directory");
    }
    assert_eq!(dirs.iter().filter(|d| d["default"] == true).count(), 1);
}

/// The documentation ranges (RFC 5737): no real address is committed.
fn is_documentation_address(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    matches!((a, b, c), (192, 0, 2) | (198, 51, 100) | (203, 0, 113))
}

#[test]
fn the_profile_template_admits_only_placeholder_addresses() {
    let doc =
        xml_required(&access().join("profiles/Portal Provisioner Integration.profile-meta.xml"));
    let root = doc.root_element();
    let ranges: Vec<(Ipv4Addr, Ipv4Addr)> = children(root, "loginIpRanges")
        .map(|r| {
            let ip = |name| {
                text(r, name)
                    .and_then(|t| t.parse::<Ipv4Addr>().ok())
                    .unwrap_or_else(|| panic!("{name} of a login IP range"))
            };
            (ip("startAddress"), ip("endAddress"))
        })
        .collect();
    assert!(!ranges.is_empty(), "the profile must restrict login IPs");
    for (start, end) in ranges {
        assert!(start <= end, "{start}-{end}");
        assert!(
            is_documentation_address(start)
                && is_documentation_address(end)
                && start.octets()[..3] == end.octets()[..3],
            "{start}-{end} is not a documentation placeholder range"
        );
    }
    assert!(flag(
        children(root, "userPermissions")
            .find(|p| text(*p, "name") == Some("ApiUserOnly"))
            .expect("ApiUserOnly"),
        "enabled"
    ));
}

#[test]
fn the_connected_app_template_holds_no_secret() {
    let path = access().join("connectedApps/Portal_Provisioner.connectedApp-meta.xml");
    let doc = xml_required(&path);
    let root = doc.root_element();
    for node in root.descendants().filter(|n| n.is_element()) {
        let name = node.tag_name().name();
        assert!(
            !matches!(name, "consumerSecret" | "consumerKey" | "privateKey"),
            "{}: <{name}> does not belong in the repository",
            path.display()
        );
    }
    let oauth = children(root, "oauthConfig").next().expect("oauthConfig");
    assert!(children(oauth, "scopes").any(|s| s.text() == Some("Api")));
    assert!(flag(oauth, "isAdminApproved"), "admin-approved users only");
    let certificate = text(oauth, "certificate").expect("a certificate placeholder");
    assert!(
        !certificate.contains("PRIVATE KEY"),
        "a private key in the template"
    );
    assert_eq!(text(root, "permissionSetName"), Some(PERMISSION_SET));
    let profile = text(root, "profileName").expect("profileName");
    assert!(
        access()
            .join(format!("profiles/{profile}.profile-meta.xml"))
            .is_file(),
        "the connected app names profile {profile:?}, which is not in the templates"
    );
}

// ---------------------------------------------------------------------------------------------
// The SOQL reader itself

#[test]
fn the_soql_reader_finds_subquery_relationship_and_filter_fields() {
    let mut uses = Uses::new();
    let mut read = BTreeSet::new();
    soql_uses(
        "SELECT Id, A__c, (SELECT Id, B__c FROM OrderItems) FROM Order WHERE C__c = 'x\\' AND D__c = 1' \
         AND Product2.E__c IN (5, 11) AND Status = 'y' ORDER BY LastModifiedDate ASC",
        "t",
        &mut uses,
        &mut read,
    );
    let found: Vec<String> = uses
        .iter()
        .map(|((o, f), u)| format!("{o}.{f}:{:?}", u[0].0))
        .collect();
    assert_eq!(
        found,
        [
            "Order.A__c:Read",
            "Order.C__c:Filter { numeric: false }",
            "OrderItem.B__c:Read",
            "Product2.E__c:Filter { numeric: true }",
        ]
    );
    assert_eq!(
        read.into_iter().collect::<Vec<_>>(),
        ["Order", "OrderItem", "Product2"]
    );
}
