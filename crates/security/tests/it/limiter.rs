//! Per-key rate limiting through the public API.

use std::sync::Arc;
use std::time::Duration;

use security::{FakeRelativeClock, KeyedRateLimiter, Rate};

#[test]
fn refusal_carries_retry_after() {
    let limiter = KeyedRateLimiter::new(Rate::parse("1/hour").unwrap());
    let key = "C-1".to_owned();
    assert!(limiter.check(&key).is_ok());
    let retry = limiter.check(&key).unwrap_err();
    // One cell per hour: the wait is just under an hour on a real clock.
    assert!((3_590..=3_600).contains(&retry.header_secs()), "{retry:?}");
    assert!(limiter.check(&"C-2".to_owned()).is_ok());
}

#[tokio::test]
async fn until_ready_delays_instead_of_failing() {
    // One cell a second: the burst of 60 is spent long before a cell comes back, even on a
    // loaded machine (a rate of 1000/second refilled a cell every millisecond, which a
    // descheduled test thread could miss).
    let limiter = KeyedRateLimiter::new(Rate::parse("60/minute").unwrap());
    let key = 42u64;
    for _ in 0..60 {
        assert!(limiter.check(&key).is_ok());
    }
    assert!(limiter.delay_for(&key).is_some());
    // Completes once a cell has come back, and takes it.
    tokio::time::timeout(Duration::from_secs(30), limiter.until_ready(&key))
        .await
        .unwrap();
}

#[test]
fn idle_keys_are_pruned() {
    let clock = FakeRelativeClock::default();
    let limiter = KeyedRateLimiter::with_clock(Rate::parse("60/minute").unwrap(), clock.clone());
    for ip in 0..5_000u32 {
        limiter.check(&ip).unwrap();
    }
    assert_eq!(limiter.len(), 5_000);
    clock.advance(Duration::from_secs(5));
    assert_eq!(limiter.prune(), 5_000);
    assert!(limiter.is_empty());
}

#[tokio::test]
async fn pruner_task_evicts_idle_keys() {
    let clock = FakeRelativeClock::default();
    let limiter = Arc::new(KeyedRateLimiter::with_clock(
        Rate::parse("10/second").unwrap(),
        clock.clone(),
    ));
    for ip in 0..100u32 {
        limiter.check(&ip).unwrap();
    }
    let task = limiter.spawn_pruner(Duration::from_millis(5)).unwrap();
    clock.advance(Duration::from_secs(60));
    tokio::time::timeout(Duration::from_secs(30), async {
        while !limiter.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    // The task ends by itself once the limiter is gone.
    drop(limiter);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
}
