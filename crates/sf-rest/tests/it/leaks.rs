//! No token, key or secret in logs or Debug output during the token + REST flow.

use sf_auth::TokenSource;
use sf_rest::{OrderApi, OrderUpdate};
use test_support::keys;
use test_support::logs::LogCapture;

use crate::support::{ROOT_PASSWORD, world};

fn assert_clean(haystack: &str, secrets: &[String], what: &str) {
    for secret in secrets {
        assert!(
            !haystack.contains(secret.as_str()),
            "{what} leaks a secret ({} chars)",
            secret.len()
        );
    }
}

#[tokio::test]
async fn no_token_key_or_secret_reaches_logs_or_debug_output() {
    let (capture, _guard) = LogCapture::trace();

    let w = world().await;
    let order = w.api.fetch_order(&w.order_id).await.unwrap();
    w.sf.expire_all_tokens();
    let update = OrderUpdate {
        status: Some("Provisioning Failed".into()),
        provisioning_error: Some("whmcs refused the order".into()),
        ..OrderUpdate::default()
    };
    w.api.update_order(&w.order_id, &update).await.unwrap();
    let bad = OrderUpdate {
        status: Some("Nope".into()),
        ..OrderUpdate::default()
    };
    let bad_err = w.api.update_order(&w.order_id, &bad).await.unwrap_err();
    let token = w.tokens.token().await.unwrap();

    let mut secrets: Vec<String> = w.sf.issued_tokens();
    assert_eq!(secrets.len(), 2);
    secrets.extend(w.sf.token_log().into_iter().filter_map(|r| r.assertion));
    secrets.extend(
        keys::PRIVATE_KEY_PEM
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 20)
            .map(str::to_owned),
    );
    secrets.push(ROOT_PASSWORD.to_owned());

    let logs = capture.text();
    // The capture works: our crates' events are in it.
    assert!(logs.contains("minted salesforce access token"), "{logs}");
    assert!(logs.contains("salesforce rest request"), "{logs}");
    assert!(logs.contains("session expired or invalid"), "{logs}");
    assert_clean(&logs, &secrets, "the log");

    let debug = format!(
        "{:?} {:?} {:?} {:?} {:?} {:?}",
        order,
        order.items,
        token,
        w.tokens,
        w.tokens.config(),
        w.api
    ) + &format!("{bad_err:?} {bad_err}");
    assert!(debug.contains(&w.order_id));
    assert_clean(&debug, &secrets, "Debug output");
}
