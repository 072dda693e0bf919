//! The happy path: a token, its instance URL and org id, and an assertion that an independent
//! verifier accepts.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sf_auth::{JwtBearer, TokenSource};

use crate::support::{USERNAME, good_config, pem_body_lines, sandbox, test_keys};

#[tokio::test]
async fn token_flow_yields_a_working_token_instance_url_and_org_id() {
    let sf = sandbox().await;
    let source = JwtBearer::new(good_config(&sf)).unwrap();
    let token = source.token().await.unwrap();
    assert!(sf.is_token_valid(token.secret()));
    assert_eq!(token.instance_url, sf.base_url());
    assert_eq!(token.org_id, sf.org_id());
    assert_eq!(token.generation, 1);
    // Cached: no second request.
    let again = source.token().await.unwrap();
    assert_eq!(again.secret(), token.secret());
    assert_eq!(sf.token_requests(), 1);
    assert_eq!(source.token_requests(), 1);
    // After invalidation a new one is minted.
    source.invalidate(&token);
    let fresh = source.token().await.unwrap();
    assert_eq!(fresh.generation, 2);
    assert_ne!(fresh.secret(), token.secret());
    assert_eq!(sf.token_requests(), 2);
}

#[tokio::test]
async fn the_assertion_verifies_with_an_independent_verifier() {
    let sf = sandbox().await;
    let source = JwtBearer::new(good_config(&sf)).unwrap();
    source.token().await.unwrap();
    let log = sf.token_log();
    assert_eq!(log.len(), 1);
    let request = &log[0];
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        request.grant_type.as_deref(),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    let assertion = request.assertion.clone().unwrap();

    let header = jsonwebtoken::decode_header(&assertion).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);

    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[sf.base_url()]);
    validation.set_issuer(&[sf.config().client_id.clone()]);
    validation.sub = Some(USERNAME.to_owned());
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.leeway = 0;
    let key = DecodingKey::from_rsa_pem(test_keys::PUBLIC_KEY_PEM.as_bytes()).unwrap();
    let data = jsonwebtoken::decode::<Value>(&assertion, &key, &validation).unwrap();
    let claims = data.claims;
    assert_eq!(claims["iss"], sf.config().client_id.as_str());
    assert_eq!(claims["sub"], USERNAME);
    assert_eq!(claims["aud"], sf.base_url().as_str());
    // exp is in seconds, now + 3 minutes.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp > now + 170 && exp <= now + 181, "exp {exp} now {now}");
    assert_eq!(claims.as_object().unwrap().len(), 4, "{claims}");

    // The signature really is checked: another key's public half refuses it.
    let other = DecodingKey::from_rsa_pem(test_keys::OTHER_PUBLIC_KEY_PEM.as_bytes()).unwrap();
    assert!(jsonwebtoken::decode::<Value>(&assertion, &other, &validation).is_err());
}

#[tokio::test]
async fn configured_audience_is_sent_and_debug_output_hides_secrets() {
    let sf = sandbox().await;
    let mut config = good_config(&sf);
    config.audience = Some("https://test.salesforce.com".into());
    let source = JwtBearer::new(config.clone()).unwrap();
    let token = source.token().await.unwrap();
    let assertion = sf.token_log()[0].assertion.clone().unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["https://test.salesforce.com"]);
    let key = DecodingKey::from_rsa_pem(test_keys::PUBLIC_KEY_PEM.as_bytes()).unwrap();
    jsonwebtoken::decode::<Value>(&assertion, &key, &validation).unwrap();

    let debug = format!("{config:?} {source:?} {token:?}");
    assert!(!debug.contains(token.secret()), "{debug}");
    assert!(!debug.contains(&assertion), "{debug}");
    for line in pem_body_lines(test_keys::PRIVATE_KEY_PEM) {
        assert!(!debug.contains(line), "{debug}");
    }
    assert!(debug.contains("REDACTED"), "{debug}");
}
