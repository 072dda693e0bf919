//! The ways a WHMCS reply says "error" (`result` or `status` = `error`, a `warning` without
//! success, auth and IP errors on 400/403, HTML bodies), each mapped to the class the caller
//! acts on.

use std::time::Duration;

use sandbox::whmcs::{Client, Fault, Product, WhmcsSandbox, WhmcsSandboxConfig};
use secrecy::SecretString;
use whmcs_client::{
    AcceptOrderRequest, Error, ErrorClass, HttpWhmcsClient, NewClient, NewOrder, OrderLine,
    WhmcsApi,
};

use crate::support::{REF_FIELD, client_for, config_for, world};

fn class_and_message(err: &Error) -> (ErrorClass, String) {
    (
        err.class(),
        err.whmcs_message().unwrap_or_default().to_owned(),
    )
}

fn ref_line(pid: u64) -> OrderLine {
    let mut line = OrderLine::new(pid, "monthly");
    line.custom_fields = whmcs_client::CustomFields::new().with(REF_FIELD, "801X");
    line
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_configuration_errors() {
    let w = world().await;
    let mut config = config_for(&w.sandbox);
    config.secret = SecretString::from("wrong".to_owned());
    let err = HttpWhmcsClient::new(config)
        .unwrap()
        .get_client_details(w.client_id)
        .await
        .unwrap_err();
    assert_eq!(
        class_and_message(&err),
        (ErrorClass::Configuration, "Authentication Failed".into())
    );
    assert!(!err.is_retryable());

    let mut config = config_for(&w.sandbox);
    config.identifier = SecretString::from(String::new());
    let err = HttpWhmcsClient::new(config)
        .unwrap()
        .add_order(&NewOrder::new(w.client_id, vec![ref_line(w.vps)]))
        .await
        .unwrap_err();
    assert_eq!(
        class_and_message(&err),
        (
            ErrorClass::Configuration,
            "Invalid or missing credentials".into()
        )
    );
    assert!(w.sandbox.orders().is_empty());
}

#[tokio::test]
async fn ip_restriction_and_access_key() {
    let sandbox = WhmcsSandbox::start_with(WhmcsSandboxConfig {
        access_key: Some("k3y!@#$%.()*[]-_".into()),
        ..WhmcsSandboxConfig::default()
    })
    .await
    .unwrap();
    let client_id = sandbox.seed_client(Client::active("Ada", "ada@example.com"));
    sandbox.set_ip_denied(true);

    let err = client_for(&sandbox)
        .get_client_details(client_id)
        .await
        .unwrap_err();
    assert_eq!(
        class_and_message(&err),
        (ErrorClass::Configuration, "Invalid IP 127.0.0.1".into())
    );

    let mut config = config_for(&sandbox);
    config.access_key = Some(SecretString::from("k3y!@#$%.()*[]-_".to_owned()));
    let details = HttpWhmcsClient::new(config)
        .unwrap()
        .get_client_details(client_id)
        .await
        .unwrap();
    assert_eq!(details.id, client_id);
    let last = sandbox.requests().pop().unwrap();
    assert_eq!(last.param("accesskey").as_deref(), Some("k3y!@#$%.()*[]-_"));
}

#[tokio::test]
async fn api_role_without_the_action_is_a_configuration_error() {
    let w = world().await;
    w.sandbox.set_allowed_actions(Some(&["GetClientsDetails"]));
    let whmcs = client_for(&w.sandbox);
    whmcs.get_client_details(w.client_id).await.unwrap();
    let err = whmcs
        .add_order(&NewOrder::new(w.client_id, vec![ref_line(w.vps)]))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Configuration);
    assert!(
        err.whmcs_message()
            .unwrap()
            .starts_with("Invalid Permissions: API action \"addorder\"")
    );
}

#[tokio::test]
async fn business_rule_errors() {
    let w = world().await;
    let closed = w
        .sandbox
        .seed_client(Client::active("Cy", "cy@example.com").with_status("Closed"));
    let failing = w.sandbox.seed_product(Product {
        module_error: Some("Could not connect to the control panel".into()),
        ..Product::new("Broken")
    });
    let whmcs = client_for(&w.sandbox);

    let err = whmcs.get_client_details(999).await.unwrap_err();
    assert_eq!(
        class_and_message(&err),
        (ErrorClass::Business, "Client Not Found".into())
    );
    assert!(err.is_client_not_found());

    let err = whmcs
        .add_order(&NewOrder::new(999, vec![ref_line(w.vps)]))
        .await
        .unwrap_err();
    assert_eq!(
        class_and_message(&err),
        (ErrorClass::Business, "Client ID Not Found".into())
    );

    let err = whmcs
        .add_order(&NewOrder::new(closed, vec![ref_line(w.vps)]))
        .await
        .unwrap_err();
    assert_eq!(
        class_and_message(&err),
        (
            ErrorClass::Business,
            "Unable to add order when client status is Closed".into()
        )
    );

    // the required external-ref field is missing
    let err = whmcs
        .add_order(&NewOrder::new(
            w.client_id,
            vec![OrderLine::new(w.vps, "monthly")],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        class_and_message(&err),
        (
            ErrorClass::Business,
            "You did not provide required custom field value for External Order Ref".into()
        )
    );

    let err = whmcs
        .add_order(&NewOrder::new(w.client_id, vec![ref_line(4242)]))
        .await
        .unwrap_err();
    assert_eq!(
        class_and_message(&err),
        (
            ErrorClass::Business,
            "No items added to cart so order cannot proceed".into()
        )
    );

    let mut order = NewOrder::new(w.client_id, vec![ref_line(w.vps)]);
    order.payment_method = Some("bitcoin".into());
    let err = whmcs.add_order(&order).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Configuration);
    assert!(
        err.whmcs_message()
            .unwrap()
            .starts_with("Invalid Payment Method")
    );
    assert!(
        w.sandbox.orders().is_empty(),
        "failed AddOrders create nothing"
    );

    // AcceptOrder twice: the second is "not pending"
    let placed = whmcs
        .add_order(&NewOrder::new(w.client_id, vec![ref_line(w.vps)]))
        .await
        .unwrap();
    let accept = AcceptOrderRequest::provision(placed.order_id, false);
    whmcs.accept_order(&accept).await.unwrap();
    let err = whmcs.accept_order(&accept).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Business);
    assert!(err.is_order_not_pending());
    let err = whmcs
        .accept_order(&AcceptOrderRequest::provision(777, false))
        .await
        .unwrap_err();
    assert!(err.is_order_not_pending());

    // ModuleCreate: unknown service, and the module's own failure
    let err = whmcs.module_create(555).await.unwrap_err();
    assert_eq!(
        class_and_message(&err),
        (ErrorClass::Business, "Service ID not found".into())
    );
    let placed = whmcs
        .add_order(&NewOrder::new(
            w.client_id,
            vec![OrderLine::new(failing, "monthly")],
        ))
        .await
        .unwrap();
    let err = whmcs
        .accept_order(&AcceptOrderRequest::provision(placed.order_id, false))
        .await
        .unwrap_err();
    assert_eq!(
        class_and_message(&err),
        (
            ErrorClass::Business,
            "Could not connect to the control panel".into()
        )
    );
    let err = whmcs
        .module_create(placed.service_ids[0])
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Business);

    // AddClient with an email that exists
    let dup = NewClient {
        email: "ADA@example.com".into(),
        skip_validation: true,
        ..NewClient::default()
    };
    let err = whmcs.add_client(&dup).await.unwrap_err();
    assert_eq!(
        class_and_message(&err),
        (
            ErrorClass::Business,
            "A user already exists with that email address".into()
        )
    );
}

#[tokio::test]
async fn scalar_array_parameters_are_rejected_by_the_sandbox() {
    // The client cannot produce this; check the sandbox's rule with a hand-made body.
    let w = world().await;
    let body = format!(
        "action=AddOrder&identifier=sandbox-identifier&secret=sandbox-secret&responsetype=json\
         &clientid={}&paymentmethod=banktransfer&pid={}&billingcycle%5B0%5D=monthly",
        w.client_id, w.vps
    );
    let reply: serde_json::Value = reqwest::Client::new()
        .post(w.sandbox.api_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        reply,
        serde_json::json!({"result": "error", "message": "Expecting parameter 'pid' to be an array"})
    );
}

#[tokio::test]
async fn html_500_is_transient_on_reads_and_unknown_on_writes() {
    let w = world().await;
    let whmcs = client_for(&w.sandbox);
    // A read that meets one HTML 500 is sent once more, after a short pause, and succeeds.
    w.sandbox
        .inject_fault("GetClientsDetails", Fault::Html500, Some(1));
    whmcs.get_client_details(w.client_id).await.unwrap();
    // Two in a row are the caller's: transient.
    w.sandbox
        .inject_fault("GetClientsDetails", Fault::Html500, Some(2));
    let err = whmcs.get_client_details(w.client_id).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert!(matches!(
        err,
        Error::Transient {
            http_status: Some(500),
            ..
        }
    ));
    assert!(err.is_retryable());
    // the fault was for two calls only
    whmcs.get_client_details(w.client_id).await.unwrap();

    // An HTML 500 from AddOrder may come from a PHP fatal after the insert.
    w.sandbox.inject_fault("addorder", Fault::Html500, Some(1));
    let err = whmcs
        .add_order(&NewOrder::new(w.client_id, vec![ref_line(w.vps)]))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::UnknownOutcome);
}

#[tokio::test]
async fn connection_refused_is_transient_even_for_add_order() {
    let w = world().await;
    let mut config = config_for(&w.sandbox);
    drop(w.sandbox);
    // nothing listens there any more
    config.connect_timeout = Duration::from_secs(5);
    let whmcs = HttpWhmcsClient::new(config).unwrap();
    let err = whmcs
        .add_order(&NewOrder::new(1, vec![ref_line(1)]))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
}

#[tokio::test]
async fn timeouts_use_the_timeout_of_the_action() {
    let w = world().await;
    let mut config = config_for(&w.sandbox);
    config.read_timeout = Duration::from_millis(200);
    config.provisioning_timeout = Duration::from_secs(30);
    let whmcs = HttpWhmcsClient::new(config).unwrap();

    // a read that times out twice (it is sent twice) is transient
    w.sandbox
        .inject_fault("GetOrders", Fault::Latency(Duration::from_secs(2)), Some(2));
    let err = whmcs.get_order(1).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");

    // AcceptOrder gets the long timeout: the same latency is fine
    let placed = whmcs
        .add_order(&NewOrder::new(w.client_id, vec![ref_line(w.vps)]))
        .await
        .unwrap();
    w.sandbox.inject_fault(
        "AcceptOrder",
        Fault::Latency(Duration::from_millis(600)),
        Some(1),
    );
    whmcs
        .accept_order(&AcceptOrderRequest::provision(placed.order_id, false))
        .await
        .unwrap();

    // an AddOrder that times out has an unknown outcome
    w.sandbox
        .inject_fault("AddOrder", Fault::Latency(Duration::from_secs(2)), Some(1));
    let err = whmcs
        .add_order(&NewOrder::new(w.client_id, vec![ref_line(w.vps)]))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::UnknownOutcome, "{err}");
}
