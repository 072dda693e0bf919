//! The API actions, one function per action, over the locked [`State`], with the parameter
//! helpers and JSON shapes they share.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value as Json, json};

use super::model::{Client, Order, Service};
use super::php::{self, Array, Key, Value};
use super::server::WhmcsSandboxConfig;
use super::state::State;

/// An API reply: HTTP status and JSON body.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: Json,
}

impl Reply {
    fn ok(body: Json) -> Self {
        Self {
            status: StatusCode::OK,
            body,
        }
    }

    pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"result": "error", "message": message.into()}),
        }
    }

    fn business(message: impl Into<String>) -> Self {
        Self::error(StatusCode::OK, message)
    }
}

/// Runs `action` (lowercase) on `state`; the caller has checked credentials and permissions.
pub(super) fn dispatch(
    state: &mut State,
    config: &WhmcsSandboxConfig,
    post: &Array,
    action: &str,
) -> Reply {
    match action {
        "getclientsdetails" => get_clients_details(state, post),
        "getclientsproducts" => get_clients_products(state, post),
        "addorder" => add_order(state, config, post),
        "acceptorder" => accept_order(state, post),
        "getorders" => get_orders(state, post),
        "modulecreate" => module_create(state, post),
        "addclient" => add_client(state, post),
        "getproducts" => get_products(state, post),
        "getpaymentmethods" => get_payment_methods(config),
        _ => Reply::business("Command Not Found"),
    }
}

// ---------------------------------------------------------------------------------------------
// parameter helpers

pub(super) fn text(post: &Array, name: &str) -> String {
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

/// The display name WHMCS shows for a gateway module the sandbox knows; otherwise the module
/// name itself.
pub(super) fn gateway_display_name(module: &str) -> &str {
    match module {
        "banktransfer" => "Bank Transfer",
        "paypal" => "PayPal",
        "mailin" => "Mail In Payment",
        "stripe" => "Credit Card",
        other => other,
    }
}

/// `GetPaymentMethods`: the active gateways, in configuration order.
fn get_payment_methods(config: &WhmcsSandboxConfig) -> Reply {
    let methods: Vec<Json> = config
        .payment_methods
        .iter()
        .map(|m| json!({"module": m, "displayname": gateway_display_name(m)}))
        .collect();
    Reply::ok(json!({
        "result": "success",
        "totalresults": methods.len(),
        "paymentmethods": {"paymentmethod": methods},
    }))
}

/// WHMCS's numeric configurable option types (`tblproductconfigoptions.optiontype`).
fn option_type(kind: &str) -> Json {
    match kind {
        "dropdown" => json!(1),
        "radio" => json!(2),
        "yesno" => json!(3),
        "quantity" => json!(4),
        other => json!(other),
    }
}

/// `GetProducts` with the `pid` (one id or a comma-separated list), `gid` and `module`
/// filters. Products have group ids by the order their group names sort in, the module
/// `autorelease`, and every billing cycle offered at 0.00 USD.
fn get_products(state: &State, post: &Array) -> Reply {
    let pids: Option<Vec<u64>> = {
        let raw = text(post, "pid");
        (!raw.trim().is_empty()).then(|| {
            raw.split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect()
        })
    };
    let gid = number(post, "gid");
    let module = text(post, "module");
    let groups: BTreeMap<&str, u64> = {
        let names: std::collections::BTreeSet<&str> = state
            .products
            .values()
            .map(|p| p.group_name.as_str())
            .collect();
        names.into_iter().zip(1..).collect()
    };
    let products: Vec<Json> = state
        .products
        .values()
        .filter(|p| pids.as_ref().is_none_or(|ids| ids.contains(&p.id)))
        .filter(|p| gid.is_none_or(|g| groups.get(p.group_name.as_str()) == Some(&g)))
        .filter(|_| module.is_empty() || module.eq_ignore_ascii_case("autorelease"))
        .map(|p| {
            let fields: Vec<Json> = p
                .custom_fields
                .iter()
                .map(|f| {
                    json!({
                        "id": f.id,
                        "name": f.name,
                        "description": "",
                        "required": if f.required { "on" } else { "" },
                    })
                })
                .collect();
            let options: Vec<Json> = p
                .config_options
                .iter()
                .map(|o| {
                    json!({
                        "id": o.id,
                        "name": o.name,
                        "type": option_type(&o.kind),
                        "options": {"option": []},
                    })
                })
                .collect();
            let mut usd = serde_json::Map::new();
            usd.insert("prefix".into(), json!("$"));
            usd.insert("suffix".into(), json!(" USD"));
            for cycle in [
                "monthly",
                "quarterly",
                "semiannually",
                "annually",
                "biennially",
                "triennially",
            ] {
                let setup = format!("{}setupfee", cycle.chars().next().unwrap_or('m'));
                usd.insert(setup, json!("0.00"));
                usd.insert(cycle.into(), json!("0.00"));
            }
            json!({
                "pid": p.id,
                "gid": groups.get(p.group_name.as_str()).copied().unwrap_or(0),
                "type": "other",
                "name": p.name,
                "slug": p.name.to_ascii_lowercase().replace(' ', "-"),
                "description": "",
                "module": "autorelease",
                "paytype": "recurring",
                "allowqty": 0,
                "quantity_available": 0,
                "pricing": {"USD": usd},
                "customfields": {"customfield": fields},
                "configoptions": {"configoption": options},
            })
        })
        .collect();
    Reply::ok(json!({
        "result": "success",
        "totalresults": products.len(),
        "products": {"product": products},
    }))
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
        // Custom fields are rows per product: WHMCS silently drops a value whose field id is
        // not defined for the ordered product.
        let custom_fields: BTreeMap<u64, String> = element(post, "customfields", key)
            .and_then(Value::as_text)
            .and_then(|b64| php::decode_serialized_base64(b64.as_bytes()))
            .map(|a| {
                id_keyed(&a)
                    .into_iter()
                    .filter(|(id, _)| product.custom_fields.iter().any(|f| f.id == *id))
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
        accepts: 0,
    });
    let ids: Vec<String> = service_ids.iter().map(u64::to_string).collect();
    Reply::ok(json!({
        "result": "success",
        "orderid": order_id.to_string(),
        "serviceids": ids.join(","),
        // WHMCS still sends the pre-7.8 name of the same list beside it.
        "productids": ids.join(","),
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

/// What an AcceptOrder found when it started: the order was Pending, with these services.
pub(super) struct AcceptStart {
    order_id: u64,
    service_ids: Vec<u64>,
}

/// The first half of AcceptOrder: WHMCS reads the order when the request arrives and refuses
/// one that is not Pending at once.
pub(super) fn accept_start(state: &State, post: &Array) -> Result<AcceptStart, Reply> {
    number(post, "orderid")
        .and_then(|id| state.orders.get(&id))
        .filter(|o| o.status.eq_ignore_ascii_case("pending"))
        .map(|o| AcceptStart {
            order_id: o.id,
            service_ids: o.service_ids.clone(),
        })
        .ok_or_else(|| Reply::business("Order ID not found or Status not Pending"))
}

/// The second half of AcceptOrder: the module creates run and the order becomes Active,
/// whatever happened to the order since [`accept_start`] (WHMCS holds no lock in between).
pub(super) fn accept_commit(state: &mut State, start: AcceptStart, post: &Array) -> Reply {
    if let Some(order) = state.orders.get_mut(&start.order_id) {
        "Active".clone_into(&mut order.status);
        order.send_email = Some(truthy(post, "sendemail"));
        order.accepts += 1;
    }
    if truthy(post, "autosetup") {
        for id in start.service_ids {
            if let Err(message) = run_module_create(state, id) {
                return Reply::business(message);
            }
        }
    }
    Reply::ok(json!({"result": "success"}))
}

fn accept_order(state: &mut State, post: &Array) -> Reply {
    match accept_start(state, post) {
        Ok(start) => accept_commit(state, start, post),
        Err(refused) => refused,
    }
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
    use crate::whmcs::Product;

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
                accepts: 0,
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
    fn add_order_drops_custom_fields_the_product_does_not_define() {
        use base64::Engine as _;
        let b64 = |s: &str| {
            base64::engine::general_purpose::STANDARD
                .encode(s)
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        };
        let mut state = State::default();
        state.next_client += 1;
        let mut client = Client::active("Ada", "ada@example.com");
        client.id = state.next_client;
        state.insert_client(client);
        for (pid, field) in [(1u64, 11u64), (2, 21)] {
            let mut product = Product::new(&format!("P{pid}")).with_custom_field(
                field,
                "Salesforce Order",
                false,
            );
            product.id = pid;
            state.products.insert(pid, product);
        }
        // Line 0 (product 1) carries its own field 11 and product 2's field 21; line 1
        // (product 2) carries only product 1's field 11.
        let body = format!(
            "clientid=1&paymentmethod=banktransfer&pid[0]=1&customfields[0]={}&pid[1]=2&customfields[1]={}",
            b64(r#"a:2:{i:11;s:4:"REF1";i:21;s:4:"XXXX";}"#),
            b64(r#"a:1:{i:11;s:4:"REF2";}"#),
        );
        let reply = add_order(
            &mut state,
            &WhmcsSandboxConfig::default(),
            &php::parse_form(body.as_bytes()),
        );
        assert_eq!(reply.body["result"], "success", "{}", reply.body);
        let order_id: u64 = reply.body["orderid"].as_str().unwrap().parse().unwrap();
        let services = &state.orders[&order_id].service_ids;
        let fields = |i: usize| state.services[&services[i]].custom_fields.clone();
        assert_eq!(
            fields(0),
            BTreeMap::from([(11, "REF1".to_owned())]),
            "only the product's own field is kept"
        );
        assert_eq!(fields(1), BTreeMap::new(), "field 11 is not product 2's");
        // GetClientsProducts shows product 2's field 21, empty.
        let listed = get_clients_products(&state, &form(&[("clientid", "1".to_owned())]));
        let second = &listed.body["products"]["product"][1]["customfields"]["customfield"];
        assert_eq!(second[0]["id"], 21);
        assert_eq!(second[0]["value"], "");
        assert_eq!(second.as_array().unwrap().len(), 1);
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
