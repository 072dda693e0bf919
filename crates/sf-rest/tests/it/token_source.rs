//! The client against its token port, mocked (`sf_auth::MockTokenSource`): token failures
//! become typed, classified errors, and a rejected session invalidates exactly the token that
//! was rejected.

use std::sync::Arc;

use sf_auth::{AccessToken, MockTokenSource, TokenSource};
use sf_rest::{Action, Error, ErrorClass, OrderApi, OrderUpdate, RestConfig, RestOrderApi};

use crate::support::{fast_retry, world};

fn client(tokens: MockTokenSource) -> RestOrderApi {
    let config = RestConfig {
        retry: fast_retry(),
        ..RestConfig::default()
    };
    RestOrderApi::new(Arc::new(tokens), config).unwrap()
}

#[tokio::test]
async fn a_token_the_operator_must_fix_fails_the_call_at_once() {
    let mut tokens = MockTokenSource::new();
    tokens
        .expect_token()
        .times(1)
        .returning(|| Err(sf_auth::Error::InvalidAssertion));
    tokens.expect_invalidate().never();
    let err = client(tokens)
        .fetch_order("801A0000006Vm9rIAC")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Auth {
                action: Action::FetchOrder,
                source: sf_auth::Error::InvalidAssertion,
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Reconfigure);
}

#[tokio::test]
async fn a_token_endpoint_outage_is_retried_then_surfaces_as_retryable() {
    let mut tokens = MockTokenSource::new();
    // `fast_retry` allows 4 attempts; each asks the source once.
    tokens.expect_token().times(4).returning(|| {
        Err(sf_auth::Error::Unavailable {
            status: Some(503),
            reason: "token endpoint unavailable".into(),
        })
    });
    tokens.expect_invalidate().never();
    let update = OrderUpdate {
        status: Some("Activated".into()),
        ..OrderUpdate::default()
    };
    let err = client(tokens)
        .update_order("801A0000006Vm9rIAC", &update)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Auth {
                action: Action::UpdateOrder,
                source: sf_auth::Error::Unavailable { .. },
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_rejected_session_invalidates_that_token_and_the_call_goes_on_with_a_new_one() {
    let w = world().await;
    // A real session from the sandbox, and a stale one at the same instance it will refuse.
    let fresh = w.tokens.token().await.unwrap();
    let stale = AccessToken {
        token: secrecy::SecretString::from("00Dstale!session"),
        generation: fresh.generation + 7,
        ..fresh.clone()
    };
    let stale_generation = stale.generation;
    let mut handed_out = vec![fresh, stale];
    let mut tokens = MockTokenSource::new();
    tokens
        .expect_token()
        .times(2)
        .returning(move || Ok(handed_out.pop().unwrap()));
    tokens
        .expect_invalidate()
        .withf(move |t| t.generation == stale_generation && t.secret() == "00Dstale!session")
        .times(1)
        .return_const(());
    let order = client(tokens).fetch_order(&w.order_id).await.unwrap();
    assert_eq!(order.items.len(), 2);
    assert_eq!(w.sf.requests(sandbox::salesforce::Route::Query), 2);
}
