//! Log canaries (issue 7, done-when 3): secrets and personal data never reach the logs or the
//! status API's answers; the canaries and their encoded forms, and the trace-level run.

use std::time::Duration;

use base64::Engine as _;
use test_support::process::{Captured, PATIENCE, free_port};
use tokio::time::Instant;

use crate::status_api::StatusApi;
use crate::support::{
    CapturedProvisioner as _, MASTER_KEY, PORTAL_TOKEN, ROOT_PASSWORD, World, wait_all_activated,
    wait_healthy,
};

/// Percent-encodes every byte outside the URL "unreserved" set, with upper- or lowercase hex
/// and spaces as `%20` or `+` (form encoding).
pub(crate) fn percent_encodings(text: &str) -> Vec<String> {
    let mut forms = Vec::new();
    for upper in [true, false] {
        for plus in [false, true] {
            let mut out = String::new();
            for b in text.bytes() {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    out.push(char::from(b));
                } else if b == b' ' && plus {
                    out.push('+');
                } else if upper {
                    out.push_str(&format!("%{b:02X}"));
                } else {
                    out.push_str(&format!("%{b:02x}"));
                }
            }
            forms.push(out);
        }
    }
    forms
}

/// `secret` as it may leak: raw, base64 (standard, URL-safe, padded or not) and
/// percent-encoded.
pub(crate) fn encoded_forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut forms = vec![secret.to_owned()];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(engine.encode(secret));
    }
    forms.extend(percent_encodings(secret));
    forms.sort();
    forms.dedup();
    forms
}

/// The body lines of a PEM key (each a canary of its own).
pub(crate) fn pem_body_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .map(str::to_owned)
        .collect()
}

/// Config options as WHMCS receives them (`base64(serialize(...))`), raw and form-encoded.
pub(crate) fn whmcs_config_option_forms(json: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    let encoded = whmcs_client::ConfigOptions::from_json(&value)
        .unwrap()
        .encode();
    let mut forms = vec![encoded.clone()];
    forms.extend(percent_encodings(&encoded));
    forms
}

/// Stops the service (SIGTERM, exit 0 expected) and returns everything it wrote.
async fn stopped_output(provisioner: &mut Captured) -> Vec<u8> {
    assert_eq!(
        provisioner.terminate().await,
        Some(0),
        "{}",
        provisioner.tail()
    );
    provisioner.bytes()
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &str) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
}

/// Asserts that the captured logs are worth searching: `ids` (order ids) all occur in them
/// through the same search the canaries go through, and so does trace-level output.
pub(crate) fn assert_logs_nontrivial(logs: &[u8], ids: &[&str]) {
    assert!(logs.len() > 10_000, "only {} bytes of logs", logs.len());
    for id in ids {
        assert!(find(logs, id).is_some(), "the logs never name order {id}");
    }
    assert!(find(logs, "TRACE").is_some(), "trace logging was on");
    eprintln!("searched {} bytes of logs", logs.len());
}

/// Asserts that none of `canaries` occurs in any of `haystacks` (name, bytes).
pub(crate) fn assert_no_canary(canaries: &[(String, String)], haystacks: &[(&str, &[u8])]) {
    let mut found = Vec::new();
    for (what, canary) in canaries {
        assert!(
            canary.len() >= 6,
            "canary {what} is too short to mean anything"
        );
        for (name, bytes) in haystacks {
            if let Some(at) = find(bytes, canary) {
                let from = at.saturating_sub(200);
                let to = (at + canary.len() + 200).min(bytes.len());
                found.push(format!(
                    "{what} in {name}: ...{}...",
                    String::from_utf8_lossy(&bytes[from..to])
                ));
            }
        }
    }
    assert!(found.is_empty(), "canaries leaked:\n{}", found.join("\n\n"));
}

/// The credentials of a run against `world`: the test key's lines, the WHMCS identifier and
/// secret, and the portal token.
pub(crate) fn credential_canaries(world: &World) -> Vec<(String, String)> {
    let mut canaries = Vec::new();
    for line in pem_body_lines(test_support::keys::PRIVATE_KEY_PEM) {
        canaries.push(("private key line".to_owned(), line));
    }
    canaries.push((
        "WHMCS_API_SECRET".into(),
        world.whmcs.config().secret.clone(),
    ));
    canaries.push((
        "WHMCS_API_IDENTIFIER".into(),
        world.whmcs.config().identifier.clone(),
    ));
    canaries.push(("portal token".into(), PORTAL_TOKEN.into()));
    canaries
}

/// The seeded customers' names and email addresses.
pub(crate) fn pii_canaries(customers: u32) -> Vec<(String, String)> {
    let mut canaries = Vec::new();
    for c in 1..=customers {
        canaries.push(("email".into(), format!("customer{c}@example.com")));
        canaries.push(("client name".into(), format!("Customer{c}")));
        canaries.push(("account name".into(), format!("Customer {c} Ltd")));
    }
    canaries
}

// ---------------------------------------------------------------------------------------------
// Done-when 3 again, at trace level for every crate, with the access tokens as canaries.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_secret_or_personal_leaks_at_trace_level_for_every_crate() {
    let world = World::start(2, 2).await;
    let port = free_port();
    let mut env = world.env(port);
    env.insert("PORTAL_API_TOKEN".into(), PORTAL_TOKEN.into());
    env.insert("FIELD_ENCRYPTION_KEY".into(), MASTER_KEY.into());
    env.insert("RUST_LOG".into(), "trace".into());
    env.insert("LOG_FORMAT".into(), "pretty".into());
    let mut provisioner = Captured::provisioner("provisioner", &["run"], &env);
    wait_healthy(port, PATIENCE).await;
    world.publish_all();
    wait_all_activated(&world, PATIENCE).await;

    let mut api = StatusApi::new(port);
    for event in &world.seeded.events {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer = api
                .status(&event.order_id, &event.customer_number, PORTAL_TOKEN)
                .await;
            if answer.status == 200 && answer.json()["status"] == "provisioned" {
                break;
            }
            assert!(Instant::now() < deadline, "{}", answer.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        api.status(&world.seeded.events[0].order_id, "CUST-00002", PORTAL_TOKEN)
            .await
            .status,
        404
    );
    assert_eq!(
        api.status(&world.seeded.events[0].order_id, "CUST-00001", "wrong")
            .await
            .status,
        401
    );
    assert_eq!(api.get("/metrics", &[]).await.status, 200);
    assert_eq!(api.get("/readyz", &[]).await.status, 200);
    let logs = stopped_output(&mut provisioner).await;
    let ids: Vec<&str> = world
        .seeded
        .events
        .iter()
        .map(|e| e.order_id.as_str())
        .collect();
    assert_logs_nontrivial(&logs, &ids);
    let mut canaries = credential_canaries(&world);
    canaries.push((
        "FIELD_ENCRYPTION_KEY".into(),
        MASTER_KEY.trim_start_matches("base64:").into(),
    ));
    let issued = world.sf.issued_tokens();
    assert!(!issued.is_empty(), "the provisioner logged in");
    for token in issued {
        canaries.push(("Salesforce access token".into(), token));
    }
    let config_options = format!(r#"{{"4":"{ROOT_PASSWORD}"}}"#);
    for form in encoded_forms(ROOT_PASSWORD) {
        canaries.push(("root password".into(), form));
    }
    for form in whmcs_config_option_forms(&config_options) {
        canaries.push(("WHMCS configoptions".into(), form));
    }
    canaries.extend(pii_canaries(2));
    assert_no_canary(
        &canaries,
        &[
            ("provisioner output", &logs),
            ("status API answers", &api.transcript),
        ],
    );
}

/// Issue 16, Done-when 3: an error text carrying secrets in `key: value` and JSON forms (a
/// server module's failure message) never reaches the logs, the Order's
/// `Provisioning_Error__c` or the status API's `error`, even at trace level.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_in_an_error_text_never_reach_the_reason_or_the_logs() {
    const COLON: &str = "colon-canary-9f3a";
    const JSON: &str = "json-canary-4b7d";
    const BEARER: &str = "bearer-canary-1e6c";
    let world = World::start(1, 1).await;
    world.whmcs.set_module_error(
        world.seeded.product_id,
        Some(&format!(
            r#"module failed: password: {COLON} {{"api_token":"{JSON}"}} Authorization: Bearer {BEARER}"#
        )),
    );
    let port = free_port();
    let mut env = world.env(port);
    env.insert("RUST_LOG".into(), "trace".into());
    env.insert("LOG_FORMAT".into(), "json".into());
    env.insert("PORTAL_API_TOKEN".into(), PORTAL_TOKEN.into());
    let mut provisioner = Captured::provisioner("provisioner", &["run"], &env);
    wait_healthy(port, PATIENCE).await;
    world.publish_all();
    let event = &world.seeded.events[0];
    let deadline = Instant::now() + PATIENCE;
    let order = loop {
        let order = world.sf.order(&event.order_id).unwrap();
        if order.status == "Provisioning Failed" {
            break order;
        }
        assert!(Instant::now() < deadline, "{order:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = order.provisioning_error.unwrap_or_default();
    assert!(
        reason.contains("module failed"),
        "the reason is kept: {reason}"
    );
    assert!(reason.contains("[redacted]"), "{reason}");
    let mut api = StatusApi::new(port);
    let answer = api
        .status(&event.order_id, &event.customer_number, PORTAL_TOKEN)
        .await;
    assert_eq!(answer.json()["status"], "failed", "{}", answer.body);
    let logs = stopped_output(&mut provisioner).await;
    assert_logs_nontrivial(&logs, &[event.order_id.as_str()]);
    let canaries: Vec<(String, String)> = [COLON, JSON, BEARER]
        .iter()
        .map(|c| ("secret in an error text".to_owned(), (*c).to_owned()))
        .collect();
    assert_no_canary(
        &canaries,
        &[
            ("provisioner output", &logs),
            ("status API answers", &api.transcript),
            ("Provisioning_Error__c", reason.as_bytes()),
        ],
    );
}
