//! The read-only catalog calls (GetProducts, GetPaymentMethods) against the sandbox: typed
//! answers, the `pid` filter, configured gateways, and the same credential, API-role and fault
//! handling as every other call.

use sandbox::whmcs::{Fault, WhmcsSandbox, WhmcsSandboxConfig};
use secrecy::SecretString;
use whmcs_client::{ErrorClass, HttpWhmcsClient};

use crate::support::{OPT_RAM, REF_FIELD, client_for, config_for, world};

#[tokio::test]
async fn get_products_lists_the_catalog_and_filters_by_pid() {
    let w = world().await;
    let whmcs = client_for(&w.sandbox);
    let all = whmcs.get_products(None).await.unwrap();
    let pids: Vec<u64> = all.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [w.vps, w.mail]);

    let vps = whmcs.get_products(Some(w.vps)).await.unwrap();
    assert_eq!(vps.len(), 1);
    let vps = &vps[0];
    assert_eq!(vps.name, "VPS S");
    assert!(vps.gid > 0);
    assert_eq!(vps.pay_type, "recurring");
    let field = vps.custom_field(REF_FIELD).unwrap();
    assert_eq!(field.name, "External Order Ref");
    assert!(field.required);
    assert!(!vps.custom_field(13).unwrap().required);
    let ram = vps.config_options.iter().find(|o| o.id == OPT_RAM).unwrap();
    assert_eq!((ram.name.as_str(), ram.option_type.as_str()), ("RAM", "1"));

    assert!(whmcs.get_products(Some(9_999)).await.unwrap().is_empty());
    let sent = w.sandbox.requests_for("GetProducts");
    assert_eq!(sent.last().unwrap().param("pid").as_deref(), Some("9999"));
    assert_eq!(sent.first().unwrap().param("pid"), None);
}

#[tokio::test]
async fn payment_methods_list_the_configured_gateways() {
    let w = world().await;
    let methods = client_for(&w.sandbox).payment_methods().await.unwrap();
    let modules: Vec<&str> = methods.iter().map(|m| m.module.as_str()).collect();
    assert_eq!(modules, ["banktransfer", "paypal", "mailin"]);
    // The client's default AddOrder gateway is among them.
    let default = config_for(&w.sandbox).payment_method;
    assert!(modules.contains(&default.as_str()));
    assert_eq!(methods[0].display_name, "Bank Transfer");

    let only_stripe = WhmcsSandbox::start_with(WhmcsSandboxConfig {
        payment_methods: vec!["stripe".into(), "acmepay".into()],
        ..WhmcsSandboxConfig::default()
    })
    .await
    .unwrap();
    let methods = client_for(&only_stripe).payment_methods().await.unwrap();
    let pairs: Vec<(&str, &str)> = methods
        .iter()
        .map(|m| (m.module.as_str(), m.display_name.as_str()))
        .collect();
    assert_eq!(pairs, [("stripe", "Credit Card"), ("acmepay", "acmepay")]);
}

#[tokio::test]
async fn catalog_calls_fail_like_every_other_call() {
    let w = world().await;
    let mut config = config_for(&w.sandbox);
    config.secret = SecretString::from("wrong".to_owned());
    let wrong = HttpWhmcsClient::new(config).unwrap();
    for err in [
        wrong.get_products(None).await.unwrap_err(),
        wrong.payment_methods().await.unwrap_err(),
    ] {
        assert_eq!(err.class(), ErrorClass::Configuration, "{err}");
        assert_eq!(err.whmcs_message(), Some("Authentication Failed"));
    }

    let whmcs = client_for(&w.sandbox);
    w.sandbox.set_allowed_actions(Some(&["GetClientsDetails"]));
    let err = whmcs.payment_methods().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Configuration);
    assert!(
        err.whmcs_message()
            .unwrap_or_default()
            .contains("getpaymentmethods")
    );
    w.sandbox.set_allowed_actions(None);

    // A read: an HTML 500 is transient and nothing was changed (a read is sent twice before
    // the fault is the caller's).
    w.sandbox
        .inject_fault("GetProducts", Fault::Html500, Some(2));
    let err = whmcs.get_products(None).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert_eq!(whmcs.get_products(None).await.unwrap().len(), 2);
}
