//! A token expiring in the middle of 50 concurrent REST calls.

use std::time::Duration;

use sandbox::salesforce::Route;
use sf_rest::OrderApi;

use crate::support::world;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_during_fifty_concurrent_calls_mints_exactly_one_new_token() {
    let w = world().await;
    // Warm up: one token.
    w.api.fetch_order(&w.order_id).await.unwrap();
    assert_eq!(w.sf.token_requests(), 1);

    // Hold all 50 calls at the sandbox's door, then expire the session under them.
    w.sf.pause(Route::Query);
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let api = w.api.clone();
            let id = w.order_id.clone();
            tokio::spawn(async move { api.fetch_order(&id).await })
        })
        .collect();
    tokio::time::timeout(
        Duration::from_secs(60),
        w.sf.wait_until_waiting(Route::Query, 50),
    )
    .await
    .expect("50 calls reach the sandbox");
    w.sf.expire_all_tokens();
    w.sf.resume(Route::Query);

    for call in calls {
        let order = call.await.unwrap().unwrap();
        assert_eq!(order.items.len(), 2);
    }
    assert_eq!(w.sf.token_requests(), 2);
    // 1 warm-up + 50 refused with 401 + 50 repeated with the new token.
    assert_eq!(w.sf.requests(Route::Query), 101);
}
