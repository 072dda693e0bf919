//! Every action against the sandbox, and what the sandbox decoded from the wire.

use sandbox::whmcs::php::{Key, Value};
use sandbox::whmcs::{Client, Service};
use secrecy::SecretString;
use whmcs_client::{
    AcceptOrderRequest, ClientStatus, ConfigOptionValue, ConfigOptions, CustomFields,
    HttpWhmcsClient, NewClient, NewOrder, OrderLine, OrdersQuery, Page, ProductsQuery, WhmcsApi,
};

use crate::support::{OPT_DISKS, OPT_RAM, REF_FIELD, client_for, config_for, world};

const SF_ORDER: &str = "801Qy00000AbCdEIAV";

fn vps_line(pid: u64, cycle: &str, purpose: &str, ram: u64, disks: u64) -> OrderLine {
    let mut line = OrderLine::new(pid, cycle);
    line.custom_fields = CustomFields::new()
        .with(REF_FIELD, SF_ORDER)
        .with(13, purpose);
    line.config_options = ConfigOptions::new()
        .with(OPT_RAM, ConfigOptionValue::Choice(ram))
        .with(
            OPT_DISKS,
            ConfigOptionValue::OptionQuantity {
                option_id: 61,
                qty: disks,
            },
        );
    line
}

#[tokio::test]
async fn three_line_order_lines_up_by_index() {
    let w = world().await;
    let whmcs = client_for(&w.sandbox);
    let mut mail = OrderLine::new(w.mail, "annually");
    mail.domain = Some("mail.example.org".into());
    mail.custom_fields = CustomFields::new().with(REF_FIELD, SF_ORDER);
    let mut order = NewOrder::new(
        w.client_id,
        vec![
            vps_line(w.vps, "monthly", "web – Zürich", 51, 2),
            mail,
            vps_line(w.vps, "quarterly", "db \"primary\"; {x}", 52, 0),
        ],
    );
    order.no_email = true;
    order.no_invoice = true;

    let placed = whmcs.add_order(&order).await.unwrap();
    assert_eq!(placed.service_ids.len(), 3);
    assert_eq!(placed.invoice_id, None);

    let stored = w.sandbox.order(placed.order_id).unwrap();
    assert_eq!(stored.status, "Pending");
    assert_eq!(stored.service_ids, placed.service_ids);
    assert!(stored.no_email);
    assert_eq!(stored.payment_method, "banktransfer");

    let services: Vec<Service> = placed
        .service_ids
        .iter()
        .map(|id| w.sandbox.service(*id).unwrap())
        .collect();
    let shape: Vec<(u64, &str, &str, &str)> = services
        .iter()
        .map(|s| {
            (
                s.product_id,
                s.billing_cycle.as_str(),
                s.domain.as_str(),
                s.custom_fields.get(&13).map_or("", String::as_str),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (w.vps, "monthly", "", "web – Zürich"),
            (w.mail, "annually", "mail.example.org", ""),
            (w.vps, "quarterly", "", "db \"primary\"; {x}"),
        ]
    );
    for s in &services {
        assert_eq!(s.status, "Pending");
        assert_eq!(
            s.custom_fields.get(&REF_FIELD).map(String::as_str),
            Some(SF_ORDER)
        );
    }
    assert_eq!(
        services[0].config_options.get(&OPT_RAM),
        Some(&Value::Int(51))
    );
    assert_eq!(
        services[2].config_options.get(&OPT_RAM),
        Some(&Value::Int(52))
    );
    assert!(services[1].config_options.is_empty());
    let disks = services[0].config_options.get(&OPT_DISKS).unwrap();
    let disks = disks.as_array().unwrap();
    assert_eq!(disks.get_str("optionid"), Some(&Value::Int(61)));
    assert_eq!(disks.get_str("qty"), Some(&Value::Int(2)));

    // the wire: explicit indices 0..3 on every parallel array, flags as 1
    let request = &w.sandbox.requests_for("addorder")[0];
    for name in [
        "pid",
        "billingcycle",
        "domain",
        "customfields",
        "configoptions",
    ] {
        let keys: Vec<Key> = request
            .params
            .get_str(name)
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{name} is not an array"))
            .0
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(keys, vec![Key::Int(0), Key::Int(1), Key::Int(2)], "{name}");
    }
    assert_eq!(request.param("noemail").as_deref(), Some("1"));
    assert_eq!(request.param("noinvoice").as_deref(), Some("1"));
    assert_eq!(request.param("limitstart"), None);
    assert_eq!(request.param("limitnum"), None);
}

#[tokio::test]
async fn every_request_carries_credentials_in_the_form_body() {
    let w = world().await;
    let whmcs = client_for(&w.sandbox);
    whmcs.get_client_details(w.client_id).await.unwrap();
    let request = &w.sandbox.requests()[0];
    assert_eq!(request.action, "GetClientsDetails");
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.query, None, "nothing may travel in the URL");
    assert_eq!(
        request.param("identifier").as_deref(),
        Some("sandbox-identifier")
    );
    assert_eq!(request.param("secret").as_deref(), Some("sandbox-secret"));
    assert_eq!(request.param("responsetype").as_deref(), Some("json"));
    assert_eq!(request.param("accesskey"), None);
    assert_eq!(request.param("limitstart"), None);
}

#[tokio::test]
async fn get_clients_details_reads_the_client() {
    let w = world().await;
    let closed = w
        .sandbox
        .seed_client(Client::active("Bob", "bob@example.com").with_status("Closed"));
    let whmcs = client_for(&w.sandbox);
    let ada = whmcs.get_client_details(w.client_id).await.unwrap();
    assert_eq!(ada.id, w.client_id);
    assert!(ada.is_active());
    assert_eq!(ada.email, "ada@example.com");
    let bob = whmcs.get_client_details(closed).await.unwrap();
    assert_eq!(bob.status, ClientStatus::Closed);
    assert!(!bob.is_active());
}

#[tokio::test]
async fn accept_order_provisions_and_get_orders_shows_it() {
    let w = world().await;
    let whmcs = client_for(&w.sandbox);
    let order = NewOrder::new(
        w.client_id,
        vec![
            vps_line(w.vps, "monthly", "x", 51, 1),
            vps_line(w.vps, "monthly", "y", 52, 1),
        ],
    );
    let placed = whmcs.add_order(&order).await.unwrap();
    assert!(placed.invoice_id.is_some());

    let before = whmcs.get_order(placed.order_id).await.unwrap().unwrap();
    assert_eq!(before.status, "Pending");
    assert_eq!(before.service_ids(), placed.service_ids);

    whmcs
        .accept_order(&AcceptOrderRequest::provision(placed.order_id, false))
        .await
        .unwrap();
    let request = &w.sandbox.requests_for("AcceptOrder")[0];
    assert_eq!(request.param("autosetup").as_deref(), Some("1"));
    assert_eq!(request.param("sendemail").as_deref(), Some("0"));
    assert_eq!(
        w.sandbox.order(placed.order_id).unwrap().send_email,
        Some(false)
    );

    let after = whmcs.get_order(placed.order_id).await.unwrap().unwrap();
    assert!(after.is_active());
    assert_eq!(after.client_id, w.client_id);
    assert!(after.line_items.iter().all(|l| l.status == "Active"));
    for id in &placed.service_ids {
        let s = w.sandbox.service(*id).unwrap();
        assert_eq!((s.status.as_str(), s.module_creates), ("Active", 1));
    }

    // list paging fields go to list actions only
    let list = &w.sandbox.requests_for("GetOrders")[0];
    assert_eq!(list.param("limitstart").as_deref(), Some("0"));
    assert_eq!(list.param("limitnum").as_deref(), Some("1"));
    assert_eq!(list.param("id"), Some(placed.order_id.to_string()));

    assert!(whmcs.get_order(999).await.unwrap().is_none());
    let by_client = whmcs
        .get_orders(
            &OrdersQuery {
                client_id: Some(w.client_id),
                ..OrdersQuery::default()
            },
            Page::first(25),
        )
        .await
        .unwrap();
    assert_eq!(by_client.total_results, 1);
}

#[tokio::test]
async fn accept_without_autosetup_then_module_create() {
    let w = world().await;
    let whmcs = client_for(&w.sandbox);
    let placed = whmcs
        .add_order(&NewOrder::new(
            w.client_id,
            vec![vps_line(w.vps, "monthly", "x", 51, 0)],
        ))
        .await
        .unwrap();
    let request = AcceptOrderRequest {
        order_id: placed.order_id,
        auto_setup: false,
        send_email: true,
        deadline: None,
    };
    whmcs.accept_order(&request).await.unwrap();
    let service_id = placed.service_ids[0];
    assert_eq!(w.sandbox.service(service_id).unwrap().status, "Pending");
    whmcs.module_create(service_id).await.unwrap();
    let service = w.sandbox.service(service_id).unwrap();
    assert_eq!(
        (service.status.as_str(), service.module_creates),
        ("Active", 1)
    );
    assert_eq!(
        w.sandbox.requests_for("ModuleCreate")[0].param("serviceid"),
        Some(service_id.to_string())
    );
}

#[tokio::test]
async fn a_client_with_many_services_is_walked_in_pages_of_a_hundred_by_default() {
    let w = world().await;
    for i in 0..250 {
        w.sandbox.seed_service(
            Service::new(w.client_id, w.vps).with_custom_field(REF_FIELD, &format!("801-{i:03}")),
        );
    }
    let whmcs = client_for(&w.sandbox);

    let all = whmcs.all_client_services(w.client_id).await.unwrap();
    assert_eq!(all.len(), 250);
    // WHMCS's own default (25) would take ten calls.
    let pages = w.sandbox.requests_for("GetClientsProducts");
    let asked: Vec<(Option<String>, Option<String>)> = pages
        .iter()
        .map(|r| (r.param("limitstart"), r.param("limitnum")))
        .collect();
    let page = |start: &str| (Some(start.to_owned()), Some("100".to_owned()));
    assert_eq!(asked, vec![page("0"), page("100"), page("200")]);

    // The lookup's lean walk pages alike and reads the same ids and ref values.
    w.sandbox.clear_requests();
    let refs = whmcs.client_service_refs(w.client_id).await.unwrap();
    let want: Vec<whmcs_client::ServiceRef> = all.iter().map(Into::into).collect();
    assert_eq!(refs, want);
    assert_eq!(refs[249].custom_field(REF_FIELD), Some("801-249"));
    assert_eq!(w.sandbox.requests_for("GetClientsProducts").len(), 3);

    // The bounds are checked when the client is made.
    for size in [0, whmcs_client::MAX_PAGE_SIZE + 1] {
        let mut config = config_for(&w.sandbox);
        config.page_size = size;
        let Err(e) = HttpWhmcsClient::new(config) else {
            panic!("page size {size} is refused");
        };
        assert!(e.to_string().contains("page size must be 1 to 500"), "{e}");
    }
}

#[tokio::test]
async fn products_are_paged_through_and_searched_by_custom_field() {
    let w = world().await;
    let other = w
        .sandbox
        .seed_client(Client::active("Eve", "eve@example.com"));
    for i in 0..60 {
        let owner = if i % 2 == 0 { w.client_id } else { other };
        w.sandbox.seed_service(
            Service::new(owner, w.vps).with_custom_field(REF_FIELD, &format!("801-{i:03}")),
        );
    }
    let mut config = config_for(&w.sandbox);
    config.page_size = 25;
    let whmcs = HttpWhmcsClient::new(config).unwrap();

    let all = whmcs.all_client_services(w.client_id).await.unwrap();
    assert_eq!(all.len(), 30);
    assert!(all.iter().all(|s| s.client_id == w.client_id));
    // 30 services, 25 per page: two pages
    let pages = w.sandbox.requests_for("GetClientsProducts");
    let starts: Vec<Option<String>> = pages.iter().map(|r| r.param("limitstart")).collect();
    assert_eq!(starts, vec![Some("0".into()), Some("25".into())]);
    assert!(
        pages
            .iter()
            .all(|r| r.param("limitnum").as_deref() == Some("25"))
    );

    w.sandbox.clear_requests();
    let found = whmcs
        .find_service_by_custom_field(w.client_id, REF_FIELD, "801-058")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.custom_field(REF_FIELD), Some("801-058"));
    assert_eq!(found.name, "VPS S");
    assert_eq!(w.sandbox.requests_for("GetClientsProducts").len(), 2);

    // another client's service is not found, and nothing matches a missing ref
    let none = whmcs
        .find_service_by_custom_field(w.client_id, REF_FIELD, "801-001")
        .await
        .unwrap();
    assert!(none.is_none());
    let page = whmcs
        .get_clients_products(
            &ProductsQuery::client(w.client_id),
            Page {
                start: 25,
                size: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (page.total_results, page.start_number, page.num_returned),
        (30, 25, 5)
    );
    let empty = whmcs.all_client_services(12345).await.unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn add_client_sends_one_custom_field_string() {
    let w = world().await;
    let whmcs = client_for(&w.sandbox);
    let new = NewClient {
        first_name: "Zoë".into(),
        last_name: "Ødegård".into(),
        email: "zoe@example.com".into(),
        address1: "1 Main St".into(),
        city: "Zürich".into(),
        state: "ZH".into(),
        postcode: "8000".into(),
        country: "CH".into(),
        phone_number: "+41.441234567".into(),
        password: Some(SecretString::from("pw+/=".to_owned())),
        custom_fields: CustomFields::new().with(3, "001Qy00000XyZ"),
        no_email: true,
        ..NewClient::default()
    };
    let id = whmcs.add_client(&new).await.unwrap();
    let created = w
        .sandbox
        .clients()
        .into_iter()
        .find(|c| c.id == id)
        .unwrap();
    assert_eq!(created.first_name, "Zoë");
    assert_eq!(
        created.custom_fields.get(&3).map(String::as_str),
        Some("001Qy00000XyZ")
    );
    let request = &w.sandbox.requests_for("AddClient")[0];
    assert_eq!(request.param("password2").as_deref(), Some("pw+/="));
    assert_eq!(
        request.param("phonenumber").as_deref(),
        Some("+41.441234567")
    );
    assert!(matches!(
        request.params.get_str("customfields"),
        Some(Value::Str(_))
    ));
}

async fn raw_post(url: &str, content_type: &str, body: String) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn sandbox_matches_actions_case_insensitively_and_reads_only_forms() {
    let w = world().await;
    let form = format!(
        "action=getclientsdetails&identifier=sandbox-identifier&secret=sandbox-secret\
         &responsetype=json&clientid={}",
        w.client_id
    );
    let (status, reply) = raw_post(
        &w.sandbox.api_url(),
        "application/x-www-form-urlencoded",
        form,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(reply["result"], "success");
    assert_eq!(reply["client"]["id"], w.client_id);

    // PHP fills $_POST only from form bodies: a JSON body carries no credentials
    let json = serde_json::json!({
        "action": "GetClientsDetails", "identifier": "sandbox-identifier",
        "secret": "sandbox-secret", "clientid": w.client_id
    })
    .to_string();
    let (status, reply) = raw_post(&w.sandbox.api_url(), "application/json", json).await;
    assert_eq!(status, 403);
    assert_eq!(
        reply,
        serde_json::json!({"result": "error", "message": "Invalid or missing credentials"})
    );
}

/// WHMCS answers AddOrder with `serviceids` and, beside it, the legacy `productids` (the same
/// list): such a reply is a success with its service ids, not an unreadable reply whose outcome
/// would be unknown.
#[tokio::test]
async fn an_add_order_reply_with_serviceids_and_productids_is_a_success() {
    let w = world().await;
    let form = [
        ("action", "AddOrder".to_owned()),
        ("identifier", w.sandbox.config().identifier.clone()),
        ("secret", w.sandbox.config().secret.clone()),
        ("responsetype", "json".to_owned()),
        ("clientid", w.client_id.to_string()),
        ("paymentmethod", "banktransfer".to_owned()),
        ("pid[0]", w.vps.to_string()),
        ("billingcycle[0]", "monthly".to_owned()),
        ("customfields[0]", {
            use base64::Engine as _;
            // The required ref field, PHP-serialized and base64-encoded as AddOrder takes it.
            let php = format!("a:1:{{i:{REF_FIELD};s:{}:\"{SF_ORDER}\";}}", SF_ORDER.len());
            base64::engine::general_purpose::STANDARD.encode(php)
        }),
    ];
    let body = reqwest::Client::new()
        .post(w.sandbox.api_url())
        .form(&form)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let raw: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(raw["result"], "success", "{raw}");
    assert!(raw["serviceids"].is_string(), "{raw}");
    assert_eq!(raw["serviceids"], raw["productids"], "{raw}");

    let whmcs = client_for(&w.sandbox);
    let placed = whmcs
        .add_order(&NewOrder::new(
            w.client_id,
            vec![
                vps_line(w.vps, "monthly", "a", 51, 0),
                vps_line(w.vps, "monthly", "b", 51, 0),
            ],
        ))
        .await
        .expect("a success, not an unknown outcome");
    assert_eq!(placed.service_ids.len(), 2);
    assert_eq!(
        w.sandbox.order(placed.order_id).unwrap().service_ids,
        placed.service_ids
    );
}
