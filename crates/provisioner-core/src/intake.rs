//! Event intake: a subscription item becomes an inbox row (and a job), a dead letter with the
//! reason, or a checkpoint — the checkpoint always in the same transaction as what it passes.

use audit::{Action, Actor, DetailKey, NewAuditRecord, Outcome};
use provisioner_store::{Checkpoint, InboxEvent, IngestOutcome, NewDeadLetter};

use crate::job::Ports;

/// The fields the engine needs from a decoded `OrderProvisionRequested__e`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFields {
    /// `OrderId__c`.
    pub order_id: String,
    /// `CustomerNumber__c`.
    pub customer_number: String,
    /// `AccountId__c`.
    pub account_id: Option<String>,
}

/// One item of the subscription, as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntakeItem {
    /// An event: decoded fields, or why decoding failed (names the field).
    Event {
        /// `ConsumerEvent.event.id`.
        event_id: String,
        /// Opaque replay id.
        replay_id: Vec<u8>,
        /// The raw Avro payload (kept, encrypted, only when the event is dead-lettered).
        payload: Vec<u8>,
        /// The decoded fields, or the reason it could not be decoded.
        decoded: Result<EventFields, String>,
    },
    /// A keepalive: the subscription's latest position.
    Keepalive {
        /// `FetchResponse.latest_replay_id`.
        latest_replay_id: Vec<u8>,
    },
}

/// What intake did with an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntakeResult {
    /// A new job was created.
    Enqueued,
    /// The Order's refused or failed job was reopened: it runs again.
    Reopened,
    /// The event (or its order) was seen before: no new job.
    Duplicate,
    /// The event was bad: dead letter with this id.
    DeadLettered(String),
    /// A keepalive moved the checkpoint.
    Checkpointed,
}

fn validate(event_id: &str, fields: &EventFields) -> Result<(), String> {
    if event_id.is_empty() || event_id.len() > 255 {
        return Err("event id missing or longer than 255 bytes".to_owned());
    }
    sf_rest::OrderId::parse(&fields.order_id)
        .map_err(|_| "OrderId__c is not a 15/18-character Salesforce id".to_owned())?;
    let customer = fields.customer_number.trim();
    if customer.is_empty() || customer.len() > 80 {
        return Err("CustomerNumber__c is empty or longer than 80 characters".to_owned());
    }
    Ok(())
}

/// Stores one subscription item. An error means nothing was stored and the checkpoint did
/// not move: retry the same item (or resubscribe from the stored checkpoint).
pub async fn handle(
    ports: &Ports,
    topic: &str,
    item: IntakeItem,
) -> provisioner_store::Result<IntakeResult> {
    let now = ports.clock.now();
    match item {
        IntakeItem::Keepalive { latest_replay_id } => {
            ports
                .store
                .save_checkpoint(
                    &Checkpoint {
                        topic: topic.to_owned(),
                        replay_id: latest_replay_id,
                    },
                    now,
                )
                .await?;
            Ok(IntakeResult::Checkpointed)
        }
        IntakeItem::Event {
            event_id,
            replay_id,
            payload,
            decoded,
        } => {
            let checked = decoded.and_then(|f| validate(&event_id, &f).map(|()| f));
            match checked {
                Err(reason) => {
                    tracing::warn!(event_id = %event_id, %reason, "bad event dead-lettered");
                    let mut record = NewAuditRecord::new(
                        Actor::SUBSCRIBER,
                        Action::DEAD_LETTERED,
                        Outcome::Failed,
                    )
                    .detail(DetailKey::ReasonCode, "bad_event");
                    if !event_id.is_empty() {
                        record =
                            record.and_then(|r| r.detail(DetailKey::EventId, event_id.as_str()));
                    }
                    let record = record.map_err(|e| {
                        crate::metrics::audit_failed();
                        provisioner_store::Error::Audit(Box::new(e))
                    })?;
                    let id = ports
                        .store
                        .dead_letter(
                            NewDeadLetter {
                                topic: Some(topic.to_owned()),
                                event_id: (!event_id.is_empty()).then(|| event_id.clone()),
                                replay_id: Some(replay_id.clone()),
                                order_id: None,
                                reason: crate::sanitize_reason(&reason),
                                payload: Some(payload),
                                attempts: 0,
                            },
                            Some(Checkpoint {
                                topic: topic.to_owned(),
                                replay_id,
                            }),
                            vec![record],
                            now,
                        )
                        .await
                        .inspect_err(crate::metrics::store_failed)?;
                    Ok(IntakeResult::DeadLettered(id))
                }
                Ok(fields) => {
                    let event = inbox_event(topic, event_id, replay_id, fields);
                    let mut results = store_run(ports, vec![event]).await?;
                    results.pop().ok_or(provisioner_store::Error::Corrupt {
                        what: "intake",
                        reason: "no outcome for the event".to_owned(),
                    })
                }
            }
        }
    }
}

/// The inbox row of a valid event.
fn inbox_event(
    topic: &str,
    event_id: String,
    replay_id: Vec<u8>,
    fields: EventFields,
) -> InboxEvent {
    // One Order, one id form: the 18-character id (validated before this).
    let order_id = sf_rest::OrderId::parse(&fields.order_id)
        .map(|id| id.to_18())
        .unwrap_or(fields.order_id);
    InboxEvent {
        topic: topic.to_owned(),
        event_id,
        replay_id,
        order_id,
        customer_number: fields.customer_number.trim().to_owned(),
        account_id: fields.account_id,
    }
}

/// Stores a batch of subscription items in their order: runs of valid events go to the inbox
/// in one transaction each (with the checkpoint moved to the run's last event), anything else
/// (a bad event, a keepalive) is handled on its own between them, so the checkpoint only ever
/// moves forward over stored items. An error means the items from the failed one on were not
/// stored: retry the whole batch (stored events come back as duplicates). Runs in an `intake`
/// span (the topic and the number of items).
pub async fn handle_batch(
    ports: &Ports,
    topic: &str,
    items: Vec<IntakeItem>,
) -> provisioner_store::Result<Vec<IntakeResult>> {
    use tracing::Instrument as _;
    let span = tracing::info_span!("intake", topic, items = items.len());
    handle_batch_in_span(ports, topic, items)
        .instrument(span)
        .await
}

async fn handle_batch_in_span(
    ports: &Ports,
    topic: &str,
    items: Vec<IntakeItem>,
) -> provisioner_store::Result<Vec<IntakeResult>> {
    let mut results = Vec::with_capacity(items.len());
    let mut run: Vec<InboxEvent> = Vec::new();
    for item in items {
        match item {
            IntakeItem::Event {
                event_id,
                replay_id,
                payload,
                decoded: Ok(fields),
            } if validate(&event_id, &fields).is_ok() => {
                // The payload is kept only for dead letters.
                drop(payload);
                run.push(inbox_event(topic, event_id, replay_id, fields));
            }
            other => {
                results.extend(store_run(ports, std::mem::take(&mut run)).await?);
                results.push(handle(ports, topic, other).await?);
            }
        }
    }
    results.extend(store_run(ports, run).await?);
    Ok(results)
}

/// Stores a run of valid events in one transaction; the store audits each event (received
/// or duplicate) in that transaction.
async fn store_run(
    ports: &Ports,
    events: Vec<InboxEvent>,
) -> provisioner_store::Result<Vec<IntakeResult>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let outcomes = ports
        .store
        .ingest_events(&events, ports.clock.now())
        .await
        .inspect_err(crate::metrics::store_failed)?;
    for (event, outcome) in events.iter().zip(&outcomes) {
        tracing::info!(event_id = %event.event_id, order_id = %event.order_id, ?outcome, "event stored");
    }
    Ok(outcomes
        .into_iter()
        .map(|o| match o {
            IngestOutcome::Enqueued => IntakeResult::Enqueued,
            IngestOutcome::Reopened => IntakeResult::Reopened,
            IngestOutcome::DuplicateEvent | IngestOutcome::DuplicateOrder => {
                IntakeResult::Duplicate
            }
        })
        .collect())
}
