//! Retryable failures are retried; sessions are renewed once; exhausted retries surface.

use sandbox::salesforce::{FaultKind, Route, Trigger};
use sf_rest::{Error, ErrorClass, OrderApi, OrderUpdate};

use crate::support::world;

fn activate() -> OrderUpdate {
    OrderUpdate {
        status: Some("Activated".into()),
        ..OrderUpdate::default()
    }
}

#[tokio::test]
async fn injected_503s_are_retried() {
    let w = world().await;
    w.sf.faults()
        .fail_next(Route::Query, 2, FaultKind::Status(503));
    let order = w.api.fetch_order(&w.order_id).await.unwrap();
    assert_eq!(order.items.len(), 2);
    assert_eq!(w.sf.requests(Route::Query), 3);
    assert_eq!(w.sf.faults().fired(Route::Query), 2);

    w.sf.faults()
        .fail_next(Route::Patch, 2, FaultKind::Status(503));
    w.api.update_order(&w.order_id, &activate()).await.unwrap();
    assert_eq!(w.sf.requests(Route::Patch), 3);
    assert_eq!(w.sf.order(&w.order_id).unwrap().status, "Activated");
}

#[tokio::test]
async fn lock_contention_500s_and_dropped_connections_are_retried() {
    let w = world().await;
    w.sf.faults().fail_next(
        Route::Patch,
        1,
        FaultKind::SalesforceError {
            status: 400,
            error_code: "UNABLE_TO_LOCK_ROW".into(),
            message: "unable to obtain exclusive access to this record".into(),
        },
    );
    w.sf.faults()
        .inject(Route::Patch, FaultKind::Status(500), Trigger::Next(1));
    w.api.update_order(&w.order_id, &activate()).await.unwrap();
    assert_eq!(w.sf.requests(Route::Patch), 2);

    w.sf.faults()
        .fail_next(Route::Query, 1, FaultKind::DropConnection);
    w.api.fetch_order(&w.order_id).await.unwrap();
    assert_eq!(w.sf.requests(Route::Query), 2);
}

#[tokio::test]
async fn exhausted_retries_return_the_retryable_error() {
    let w = world().await;
    w.sf.faults()
        .inject(Route::Query, FaultKind::Status(503), Trigger::Always);
    let err = w.api.fetch_order(&w.order_id).await.unwrap_err();
    match &err {
        Error::Api { status, code, .. } => {
            assert_eq!(*status, 503);
            assert_eq!(code, "SERVER_UNAVAILABLE");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert_eq!(w.sf.requests(Route::Query), 4);
}

#[tokio::test]
async fn an_expired_session_is_renewed_once() {
    let w = world().await;
    w.api.fetch_order(&w.order_id).await.unwrap();
    w.sf.expire_all_tokens();
    w.api.fetch_order(&w.order_id).await.unwrap();
    assert_eq!(w.sf.token_requests(), 2);
    assert_eq!(w.sf.requests(Route::Query), 3);
}

#[tokio::test]
async fn a_session_refused_even_when_fresh_is_not_looped_on() {
    let w = world().await;
    w.sf.faults().inject(
        Route::Patch,
        FaultKind::SalesforceError {
            status: 401,
            error_code: "INVALID_SESSION_ID".into(),
            message: "Session expired or invalid".into(),
        },
        Trigger::Always,
    );
    let err = w
        .api
        .update_order(&w.order_id, &activate())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SessionRejected { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Reconfigure);
    assert_eq!(w.sf.requests(Route::Patch), 2);
    assert_eq!(w.sf.token_requests(), 2);
}

#[tokio::test]
async fn token_endpoint_outage_is_retried_through_the_rest_client() {
    let w = world().await;
    w.sf.faults()
        .fail_next(Route::Token, 2, FaultKind::Status(503));
    w.api.fetch_order(&w.order_id).await.unwrap();
    assert_eq!(w.sf.token_requests(), 3);
}

#[tokio::test]
async fn timeouts_are_retried() {
    let w = world().await;
    let api = sf_rest::RestOrderApi::new(
        w.tokens.clone(),
        sf_rest::RestConfig {
            request_timeout: std::time::Duration::from_millis(200),
            retry: crate::support::fast_retry(),
            ..sf_rest::RestConfig::default()
        },
    )
    .unwrap();
    // Warm the token so the slow request is the query itself.
    api.fetch_order(&w.order_id).await.unwrap();
    w.sf.faults().fail_next(
        Route::Query,
        1,
        FaultKind::Latency(std::time::Duration::from_secs(5)),
    );
    api.fetch_order(&w.order_id).await.unwrap();
    assert_eq!(w.sf.requests(Route::Query), 3);
}

#[tokio::test]
async fn tokens_past_their_lifetime_are_refused() {
    let w = crate::support::world_with(sandbox::salesforce::SalesforceConfig {
        token_lifetime: std::time::Duration::ZERO,
        ..sandbox::salesforce::SalesforceConfig::trusting(test_support::keys::PUBLIC_KEY_PEM)
    })
    .await;
    let err = w.api.fetch_order(&w.order_id).await.unwrap_err();
    assert!(matches!(err, Error::SessionRejected { .. }), "{err:?}");
    // One renewal, no loop.
    assert_eq!(w.sf.token_requests(), 2);
    assert_eq!(w.sf.requests(Route::Query), 2);
    assert!(w.sf.issued_tokens().iter().all(|t| !w.sf.is_token_valid(t)));
}

#[tokio::test]
async fn a_redirect_is_reported_not_followed() {
    let w = world().await;
    // Followed, the query would be sent again (to the same route) and answer.
    let again = format!("{}/services/data/", w.sf.base_url());
    w.sf.faults()
        .fail_next(Route::Query, 1, FaultKind::Redirect(again));
    let err = w.api.fetch_order(&w.order_id).await.unwrap_err();
    match &err {
        Error::Api {
            status, message, ..
        } => {
            assert_eq!(*status, 302);
            assert!(message.contains("redirect"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::Reconfigure);
    assert_eq!(
        w.sf.requests(Route::Query),
        1,
        "the redirect was not followed"
    );
    assert_eq!(w.sf.total_requests() - w.sf.token_requests(), 1);
}

/// A PATCH with the caller's deadline (the end of a lease, say) does not go out once the
/// deadline has passed, neither first nor as a retry: a paused worker cannot overwrite what
/// the lease's next holder wrote.
#[tokio::test]
async fn a_patch_never_goes_out_past_the_callers_deadline() {
    let w = world().await;
    let mut late = activate();
    late.deadline = Some(tokio::time::Instant::now());
    let err = w.api.update_order(&w.order_id, &late).await.unwrap_err();
    assert!(
        matches!(err, Error::Transport { timeout: true, .. }),
        "{err:?}"
    );
    assert_eq!(w.sf.requests(Route::Patch), 0);
    assert_ne!(w.sf.order(&w.order_id).unwrap().status, "Activated");

    // An answer held for 5 s and a deadline in 1 s: the client gives up at the deadline and
    // sends no second attempt (without the deadline it would send one 1 ms later: the test
    // client's first wait).
    w.sf.faults().fail_next(
        Route::Patch,
        1,
        FaultKind::DelayAnswer(std::time::Duration::from_secs(5)),
    );
    let mut soon = activate();
    soon.deadline = Some(tokio::time::Instant::now() + std::time::Duration::from_secs(1));
    let err = w.api.update_order(&w.order_id, &soon).await.unwrap_err();
    assert!(
        matches!(err, Error::Transport { timeout: true, .. }),
        "{err:?}"
    );
    assert_eq!(w.sf.requests(Route::Patch), 1);
}
