//! Many callers, one token request.

use std::sync::Arc;

use sf_auth::{JwtBearer, TokenSource};

use crate::support::{good_config, sandbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_callers_after_invalidation_cause_one_token_request() {
    let sf = sandbox().await;
    let source = Arc::new(JwtBearer::new(good_config(&sf)).unwrap());
    let first = source.token().await.unwrap();
    assert_eq!(sf.token_requests(), 1);

    source.invalidate(&first);
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let source = source.clone();
            let stale = first.clone();
            tokio::spawn(async move {
                // Every caller reports the stale token before asking, as REST clients do
                // after a 401; only the first report may drop the cache.
                source.invalidate(&stale);
                source.token().await
            })
        })
        .collect();
    let mut generations = Vec::new();
    for caller in callers {
        let token = caller.await.unwrap().unwrap();
        assert!(sf.is_token_valid(token.secret()));
        generations.push(token.generation);
    }
    assert_eq!(sf.token_requests(), 2);
    assert!(generations.iter().all(|g| *g == 2), "{generations:?}");
}

#[tokio::test]
async fn invalidating_an_older_generation_keeps_the_newer_token() {
    let sf = sandbox().await;
    let source = JwtBearer::new(good_config(&sf)).unwrap();
    let first = source.token().await.unwrap();
    source.invalidate(&first);
    let second = source.token().await.unwrap();
    source.invalidate(&first);
    let still = source.token().await.unwrap();
    assert_eq!(still.generation, second.generation);
    assert_eq!(sf.token_requests(), 2);
}

#[tokio::test]
async fn callers_waiting_on_a_failed_flight_share_its_error() {
    use sandbox::salesforce::{FaultKind, Route};
    let sf = sandbox().await;
    let source = Arc::new(JwtBearer::new(good_config(&sf)).unwrap());
    sf.faults()
        .fail_next(Route::Token, 1, FaultKind::Status(503));
    sf.pause(Route::Token);
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let source = source.clone();
            tokio::spawn(async move { source.token().await })
        })
        .collect();
    // On this single-threaded runtime every caller has queued behind the first by the time
    // its request is held at the sandbox's door.
    sf.wait_until_waiting(Route::Token, 1).await;
    sf.resume(Route::Token);
    for caller in callers {
        let err = caller.await.unwrap().unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
    }
    assert_eq!(sf.token_requests(), 1);
    // The failure is not cached.
    source.token().await.unwrap();
    assert_eq!(sf.token_requests(), 2);
}
