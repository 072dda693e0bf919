//! Each bad credential gets Salesforce's documented error from the sandbox and a distinct
//! typed error from the client; network trouble and 5xx are retryable.

use std::time::{Duration, SystemTime};

use sandbox::salesforce::{FaultKind, Route, SalesforceSandbox};
use secrecy::SecretString;
use sf_auth::{Error, JwtBearer, JwtBearerConfig, TokenSource};

use crate::support::{good_config, sandbox, test_keys};

struct Case {
    name: &'static str,
    configure: fn(&mut JwtBearerConfig),
    skew_clock: bool,
    error: &'static str,
    description: &'static str,
    matches: fn(&Error) -> bool,
}

const CASES: &[Case] = &[
    Case {
        name: "wrong key",
        configure: |c| c.private_key_pem = SecretString::from(test_keys::OTHER_PRIVATE_KEY_PEM),
        skew_clock: false,
        error: "invalid_grant",
        description: "invalid assertion",
        matches: |e| matches!(e, Error::InvalidAssertion),
    },
    Case {
        name: "wrong aud",
        configure: |c| c.audience = Some("https://wrong.example.com".into()),
        skew_clock: false,
        error: "invalid_grant",
        description: "audience is invalid",
        matches: |e| matches!(e, Error::AudienceInvalid { audience } if audience == "https://wrong.example.com"),
    },
    Case {
        name: "wrong iss",
        configure: |c| c.client_id = "3MVG9WRONG".into(),
        skew_clock: false,
        error: "invalid_client_id",
        description: "client identifier invalid",
        matches: |e| matches!(e, Error::InvalidClientId { client_id } if client_id == "3MVG9WRONG"),
    },
    Case {
        name: "unknown user",
        configure: |c| c.username = "nobody@example.com".into(),
        skew_clock: false,
        error: "invalid_grant",
        description: "user hasn't approved this consumer",
        matches: |e| matches!(e, Error::UserNotApproved { username } if username == "nobody@example.com"),
    },
    Case {
        name: "expired exp",
        configure: |_| {},
        skew_clock: true,
        error: "invalid_grant",
        description: "expired authorization code",
        matches: |e| matches!(e, Error::AssertionExpired),
    },
];

/// Sends `assertion` to the sandbox by hand and returns status and JSON body.
async fn raw_token_request(sf: &SalesforceSandbox, assertion: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/services/oauth2/token", sf.base_url()))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion),
        ])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn each_bad_credential_gets_its_documented_error_and_a_distinct_typed_error() {
    let sf = sandbox().await;
    let mut kinds = Vec::new();
    for case in CASES {
        let mut config = good_config(&sf);
        (case.configure)(&mut config);
        let mut source = JwtBearer::new(config).unwrap();
        if case.skew_clock {
            source = source.with_clock(|| SystemTime::now() - Duration::from_secs(600));
        }
        let err = source.token().await.unwrap_err();
        assert!((case.matches)(&err), "{}: {err:?}", case.name);
        assert!(!err.is_retryable(), "{}", case.name);
        assert!(err.needs_reconfiguration(), "{}", case.name);

        // The sandbox answered the documented JSON: replay the recorded assertion by hand.
        let record = sf.token_log().pop().unwrap();
        assert_eq!(
            record.outcome,
            Err(case.description.to_owned()),
            "{}",
            case.name
        );
        let (status, body) = raw_token_request(&sf, &record.assertion.unwrap()).await;
        assert_eq!(status, 400, "{}", case.name);
        assert_eq!(
            body,
            serde_json::json!({ "error": case.error, "error_description": case.description }),
            "{}",
            case.name
        );
        kinds.push(std::mem::discriminant(&err));
    }
    let distinct: std::collections::HashSet<_> = kinds.iter().collect();
    assert_eq!(distinct.len(), CASES.len());
}

#[tokio::test]
async fn unapproved_user_error_tells_the_operator_to_pre_authorise() {
    let sf = sandbox().await;
    let mut config = good_config(&sf);
    config.username = "new.user@example.com".into();
    let err = JwtBearer::new(config).unwrap().token().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("pre-authorise the user on the connected app"),
        "{text}"
    );
}

#[tokio::test]
async fn unsupported_grant_type_is_a_rejection() {
    let sf = sandbox().await;
    let response = reqwest::Client::new()
        .post(format!("{}/services/oauth2/token", sf.base_url()))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
    assert_eq!(body["error_description"], "grant type not supported");
}

#[tokio::test]
async fn server_errors_and_dropped_connections_are_retryable_and_not_cached() {
    let sf = sandbox().await;
    let source = JwtBearer::new(good_config(&sf)).unwrap();

    sf.faults()
        .fail_next(Route::Token, 1, FaultKind::Status(503));
    let err = source.token().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unavailable {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());

    sf.faults()
        .fail_next(Route::Token, 1, FaultKind::DropConnection);
    let err = source.token().await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { status: None, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());

    // Nothing bad was cached: the next call mints.
    let token = source.token().await.unwrap();
    assert!(sf.is_token_valid(token.secret()));
    assert_eq!(sf.token_requests(), 3);
    assert_eq!(sf.faults().fired(Route::Token), 2);
}

#[tokio::test]
async fn unreachable_login_host_is_retryable() {
    // Bind and drop a listener to get a loopback port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = JwtBearerConfig::new(
        format!("http://127.0.0.1:{port}"),
        "cid",
        "user@example.com",
        SecretString::from(test_keys::PRIVATE_KEY_PEM),
    );
    let err = JwtBearer::new(config).unwrap().token().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}
