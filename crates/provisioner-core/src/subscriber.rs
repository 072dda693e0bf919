//! The subscriber: Pub/Sub events into the inbox, resuming from the stored checkpoint.
//!
//! On PostgreSQL one instance holds the subscriber (an advisory lock through
//! [`provisioner_store::Store::try_lead`]); the others wait and take over when it goes. A
//! stored checkpoint always wins over the configured start preset. An item is stored before
//! the next one is read, and a store error retries the same item, so the checkpoint never
//! moves past an event that is not stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sf_pubsub::{Message, OrderProvisionRequested, PubSubApi, ReplayStart, SubscribeConfig};
use tokio::sync::watch;

use crate::engine::Engine;
use crate::intake::{EventFields, IntakeItem, IntakeResult};

/// How to subscribe.
#[derive(Clone, Debug)]
pub struct SubscriberConfig {
    /// Topic (`SF_PROVISION_EVENT_CHANNEL`).
    pub topic: String,
    /// Where to start when no checkpoint is stored (`SF_EVENTS_REPLAY`).
    pub start: ReplayStart,
    /// Where to restart when Salesforce rejects the stored replay id.
    pub fallback: ReplayStart,
    /// Credit per request (`SF_PUBSUB_BATCH`).
    pub batch: u32,
    /// Tear a silent stream down after this long.
    pub watchdog: Duration,
    /// Wait before resubscribing after the subscription gave up.
    pub restart_backoff: Duration,
    /// The subscription's own reconnect backoff after a dropped stream (first, longest).
    pub reconnect_backoff: (Duration, Duration),
    /// How often a waiting instance tries to take the subscriber over.
    pub leadership_poll: Duration,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        SubscriberConfig {
            topic: sf_pubsub::DEFAULT_TOPIC.into(),
            start: ReplayStart::Latest,
            fallback: ReplayStart::Earliest,
            batch: 100,
            watchdog: Duration::from_secs(300),
            restart_backoff: Duration::from_secs(5),
            reconnect_backoff: (Duration::from_secs(1), Duration::from_secs(60)),
            leadership_poll: Duration::from_secs(2),
        }
    }
}

/// What the subscriber is doing, for `/readyz` and metrics.
#[derive(Debug, Default)]
pub struct SubscriberStatus {
    leader: AtomicBool,
    connected: AtomicBool,
    events: AtomicU64,
    dead_letters: AtomicU64,
    replay_resets: AtomicU64,
}

impl SubscriberStatus {
    /// Whether this instance holds the subscriber.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Whether a subscription is open and delivering.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Events stored (new or duplicate) since start.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Bad events dead-lettered since start.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }

    /// Times Salesforce rejected the stored replay id.
    pub fn replay_resets(&self) -> u64 {
        self.replay_resets.load(Ordering::Relaxed)
    }
}

fn to_item(event: sf_pubsub::Event<OrderProvisionRequested>) -> IntakeItem {
    IntakeItem::Event {
        event_id: event.event_id,
        replay_id: event.replay_id,
        payload: event.payload,
        decoded: event
            .record
            .map(|r| EventFields {
                order_id: r.order_id,
                customer_number: r.customer_number,
                account_id: r.account_id,
            })
            .map_err(|e| e.to_string()),
    }
}

/// Runs the subscriber until `shutdown` turns true.
pub async fn run_subscriber(
    engine: Engine,
    pubsub: Arc<dyn PubSubApi>,
    config: SubscriberConfig,
    status: Arc<SubscriberStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let lock_name = format!("subscriber:{}", config.topic);
    'lead: loop {
        if *shutdown.borrow() {
            return;
        }
        let mut leadership = match engine.store().try_lead(&lock_name).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::sleep(config.leadership_poll) => continue 'lead,
                    _ = shutdown.changed() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not try for the subscriber lock");
                tokio::select! {
                    _ = tokio::time::sleep(config.leadership_poll) => continue 'lead,
                    _ = shutdown.changed() => return,
                }
            }
        };
        status.leader.store(true, Ordering::Relaxed);
        tracing::info!(topic = %config.topic, "this instance runs the subscriber");
        'subscribe: loop {
            let start = match engine.store().load_checkpoint(&config.topic).await {
                Ok(Some(replay_id)) => ReplayStart::Custom(replay_id),
                Ok(None) => config.start.clone(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not load the checkpoint");
                    tokio::select! {
                        _ = tokio::time::sleep(config.restart_backoff) => continue 'subscribe,
                        _ = shutdown.changed() => break 'lead,
                    }
                }
            };
            let mut subscription = pubsub.subscribe_orders(
                SubscribeConfig::new(config.topic.clone())
                    .start(start)
                    .fallback(config.fallback.clone())
                    .batch(config.batch)
                    .watchdog(config.watchdog)
                    .backoff(config.reconnect_backoff.0, config.reconnect_backoff.1),
            );
            let mut check = tokio::time::interval(config.leadership_poll);
            // A message read while gathering a batch that does not belong in it.
            let mut carried = None;
            loop {
                let next = if let Some(m) = carried.take() {
                    m
                } else {
                    tokio::select! {
                    m = subscription.next() => m,
                    _ = check.tick() => {
                        if !leadership.is_held().await {
                            tracing::warn!("subscriber lock lost; stepping down");
                            status.connected.store(false, Ordering::Relaxed);
                            status.leader.store(false, Ordering::Relaxed);
                            continue 'lead;
                        }
                        continue;
                    }
                    _ = shutdown.changed() => break 'lead,
                    }
                };
                let item = match next {
                    None => {
                        status.connected.store(false, Ordering::Relaxed);
                        continue 'subscribe;
                    }
                    Some(Err(e)) => {
                        status.connected.store(false, Ordering::Relaxed);
                        tracing::error!(error = %e, "subscription ended; resubscribing from the checkpoint");
                        tokio::select! {
                            _ = tokio::time::sleep(config.restart_backoff) => continue 'subscribe,
                            _ = shutdown.changed() => break 'lead,
                        }
                    }
                    Some(Ok(Message::ReplayReset {
                        error_code,
                        fallback,
                        ..
                    })) => {
                        status.replay_resets.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            %error_code, ?fallback,
                            "Salesforce rejected the stored replay id; events may have been missed, running a reconcile sweep"
                        );
                        let sweeper = engine.clone();
                        tokio::spawn(async move {
                            if let Err(e) = sweeper.reconcile_once().await {
                                tracing::warn!(error = %e, "reconcile after replay reset failed");
                            }
                        });
                        continue;
                    }
                    Some(Ok(Message::Keepalive { latest_replay_id })) => {
                        IntakeItem::Keepalive { latest_replay_id }
                    }
                    Some(Ok(Message::Event(event))) => to_item(event),
                };
                status.connected.store(true, Ordering::Relaxed);
                // What else has already arrived (the rest of this fetch) is stored with it, in
                // one transaction: bounded by the credit of one request.
                let mut items = vec![item];
                while items.len() < config.batch.max(1) as usize {
                    match subscription.try_next() {
                        Some(Ok(Message::Event(event))) => items.push(to_item(event)),
                        Some(Ok(Message::Keepalive { latest_replay_id })) => {
                            items.push(IntakeItem::Keepalive { latest_replay_id });
                        }
                        Some(other) => {
                            carried = Some(Some(other));
                            break;
                        }
                        None => break,
                    }
                }
                // Store them before reading on; retry the same batch while the store is down.
                let mut backoff = Duration::from_millis(100);
                loop {
                    match engine.intake_batch(items.clone()).await {
                        Ok(results) => {
                            for result in results {
                                match result {
                                    IntakeResult::Enqueued
                                    | IntakeResult::Reopened
                                    | IntakeResult::Duplicate => {
                                        status.events.fetch_add(1, Ordering::Relaxed);
                                    }
                                    IntakeResult::DeadLettered(_) => {
                                        status.dead_letters.fetch_add(1, Ordering::Relaxed);
                                    }
                                    IntakeResult::Checkpointed => {}
                                }
                            }
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "storing an event failed; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = shutdown.changed() => break 'lead,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
        }
    }
    status.connected.store(false, Ordering::Relaxed);
    status.leader.store(false, Ordering::Relaxed);
}
