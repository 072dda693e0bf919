//! A root password sent as a config option never reaches the logs (client and sandbox, at
//! TRACE), and no `Debug` output shows credentials or option values.

use base64::Engine as _;
use secrecy::SecretString;
use test_support::logs::LogCapture;
use whmcs_client::{
    ConfigOptionValue, ConfigOptions, CustomFields, HttpWhmcsClient, NewOrder, OrderLine, WhmcsApi,
};

use crate::support::{OPT_ROOT_PW, REF_FIELD, config_for, world};

const ROOT_PW: &str = "R00t pw+/=&ü-7Kq";

fn forms_of_the_password(wire_value: &str) -> Vec<String> {
    let encoded: String = url::form_urlencoded::byte_serialize(ROOT_PW.as_bytes()).collect();
    let serialized = format!("s:{}:\"{ROOT_PW}\";", ROOT_PW.len());
    vec![
        ROOT_PW.to_owned(),
        encoded,
        base64::engine::general_purpose::STANDARD.encode(ROOT_PW),
        base64::engine::general_purpose::STANDARD.encode(&serialized),
        // the exact configoptions value sent, and its percent-encoded form
        wire_value.to_owned(),
        url::form_urlencoded::byte_serialize(wire_value.as_bytes()).collect(),
        // a recognisable middle part of the password
        "pw+/=".to_owned(),
    ]
}

#[tokio::test]
async fn root_password_never_reaches_the_logs() {
    let (captured, _guard) = LogCapture::trace();

    let w = world().await;
    let whmcs = HttpWhmcsClient::new(config_for(&w.sandbox)).unwrap();
    let mut line = OrderLine::new(w.vps, "monthly");
    line.custom_fields = CustomFields::new().with(REF_FIELD, "801S");
    line.config_options = ConfigOptions::new().with(
        OPT_ROOT_PW,
        ConfigOptionValue::Text(SecretString::from(ROOT_PW.to_owned())),
    );
    let order = NewOrder::new(w.client_id, vec![line]);
    tracing::info!(order = ?order, client = ?whmcs, "placing");
    let placed = whmcs.add_order(&order).await.unwrap();
    // a failing call logs too
    let _ = whmcs.get_client_details(999).await.unwrap_err();
    let services = whmcs.all_client_services(w.client_id).await.unwrap();
    tracing::info!(services = ?services, "listed");

    // the password did travel, intact, to WHMCS
    let service = w.sandbox.service(placed.service_ids[0]).unwrap();
    assert_eq!(
        service.config_options.get(&OPT_ROOT_PW),
        Some(&sandbox::whmcs::php::Value::Str(
            ROOT_PW.as_bytes().to_vec()
        ))
    );
    let wire_value = w.sandbox.requests_for("AddOrder")[0]
        .indexed("configoptions", 0)
        .unwrap();

    let logs = captured.text();
    // the capture works: it saw the client's and the test's events
    assert!(logs.contains("whmcs call succeeded"), "{logs}");
    assert!(logs.contains("AddOrder"), "{logs}");
    assert!(logs.contains("placing"), "{logs}");
    for form in forms_of_the_password(&wire_value) {
        assert!(!logs.contains(&form), "log output contains {form:?}");
    }
    for secret in ["sandbox-secret", "sandbox-identifier"] {
        assert!(!logs.contains(secret), "log output contains {secret}");
    }
}

#[tokio::test]
async fn debug_output_hides_credentials_and_option_values() {
    let w = world().await;
    let mut config = config_for(&w.sandbox);
    config.access_key = Some(SecretString::from("the-access-key".to_owned()));
    let client = HttpWhmcsClient::new(config.clone()).unwrap();
    let mut line = OrderLine::new(w.vps, "monthly");
    line.config_options = ConfigOptions::new().with(
        OPT_ROOT_PW,
        ConfigOptionValue::Text(SecretString::from(ROOT_PW.to_owned())),
    );
    let order = NewOrder::new(w.client_id, vec![line]);
    let shown = format!("{config:?} {client:?} {order:?} {:#?}", order.lines[0]);
    for secret in [
        "sandbox-secret",
        "sandbox-identifier",
        "the-access-key",
        ROOT_PW,
        "pw+/=",
    ] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    // it is still useful output
    assert!(shown.contains(&w.sandbox.api_url()));
    assert!(shown.contains("Text([REDACTED])"), "{shown}");
}
