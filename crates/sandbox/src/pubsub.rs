//! Salesforce Pub/Sub API emulator: a real tonic gRPC server on `127.0.0.1:<ephemeral>`, built on
//! the same generated code as the `sf-pubsub` client.
//!
//! Faithful to the Pub/Sub API's documented behaviour: metadata auth (`accesstoken`) with
//! `UNAUTHENTICATED` + `error-code` / `rpc-id` / `type` trailers; `GetTopic`, `GetSchema`,
//! `Publish` (schema id checked, payload must decode with `CreatedDate` and `CreatedById`);
//! `Subscribe` with additive credit clamped to 100, never more events in flight than granted,
//! `pending_num_requested` reported, keepalives carrying `latest_replay_id`, replay presets with
//! CUSTOM exclusive, a retention window (`replayid.corrupted`), and 10-byte opaque replay ids.
//! `PublishStream` and `ManagedSubscribe` answer `UNIMPLEMENTED`.
//!
//! Fault injection ([`PubSubFaults`]): end streams every N events with `INTERNAL` +
//! `service.unavailable`, stall streams (send nothing), reject calls as unauthenticated, end a
//! stream with an auth error; a second schema id mid-stream comes from [`PubSubSandbox::register_schema`].
//! [`PubSubStats`] lets tests check the server side of flow control.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sf_pubsub::{OrderProvisionRequested, WriterSchema};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

mod service;

/// The token the default validator accepts.
pub const SANDBOX_ACCESS_TOKEN: &str = "00Dsandbox0000000001!sandbox-pubsub-token";

/// The org id the sandbox reports as tenant.
pub const SANDBOX_ORG_ID: &str = "00Dxx0000000001EAA";

/// Decides whether an `accesstoken` is valid.
pub type TokenValidator = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// How the Pub/Sub sandbox behaves.
#[derive(Clone)]
#[non_exhaustive]
pub struct PubSubConfig {
    /// Checks the `accesstoken` metadata of every call. Default: equals
    /// [`SANDBOX_ACCESS_TOKEN`]. Replace it to accept the Salesforce sandbox's tokens.
    pub token_validator: TokenValidator,
    /// Interval of empty keepalive responses on a quiet stream (Salesforce: <= 270 s).
    pub keepalive_interval: Duration,
    /// Most events in one `FetchResponse`.
    pub max_events_per_response: usize,
    /// Topics that exist, each with the standard `OrderProvisionRequested__e` schema.
    pub topics: Vec<String>,
}

impl Default for PubSubConfig {
    fn default() -> Self {
        PubSubConfig {
            token_validator: Arc::new(|t: &str| t == SANDBOX_ACCESS_TOKEN),
            keepalive_interval: Duration::from_secs(5),
            max_events_per_response: 10,
            topics: vec![sf_pubsub::DEFAULT_TOPIC.to_owned()],
        }
    }
}

impl PubSubConfig {
    /// Sets the token validator.
    pub fn token_validator(mut self, f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.token_validator = Arc::new(f);
        self
    }

    /// Sets the keepalive interval.
    pub fn keepalive_interval(mut self, interval: Duration) -> Self {
        self.keepalive_interval = interval;
        self
    }

    /// Sets the most events per response.
    pub fn max_events_per_response(mut self, n: usize) -> Self {
        self.max_events_per_response = n.max(1);
        self
    }
}

/// Faults to inject; change them at any time through [`PubSubSandbox::faults`].
#[derive(Debug, Default)]
pub struct PubSubFaults {
    /// End every Subscribe stream after this many events with `INTERNAL` and
    /// `error-code: ...service.unavailable` (0 = off).
    pub end_stream_every: AtomicU64,
    /// The next this-many Subscribe streams send nothing at all (no events, no keepalives).
    pub stall_streams: AtomicU32,
    /// The next this-many calls of any RPC fail with `UNAUTHENTICATED` (trailers-only).
    pub reject_calls: AtomicU32,
    /// One-shot: the next Subscribe stream ends with `UNAUTHENTICATED` +
    /// `service.auth.error` after this many events (`u64::MAX` or 0 = off).
    pub auth_error_after: AtomicU64,
}

impl PubSubFaults {
    /// Sets [`PubSubFaults::end_stream_every`].
    pub fn end_stream_every(&self, n: u64) {
        self.end_stream_every.store(n, Ordering::SeqCst);
    }

    /// Sets [`PubSubFaults::stall_streams`].
    pub fn stall_streams(&self, n: u32) {
        self.stall_streams.store(n, Ordering::SeqCst);
    }

    /// Sets [`PubSubFaults::reject_calls`].
    pub fn reject_calls(&self, n: u32) {
        self.reject_calls.store(n, Ordering::SeqCst);
    }

    /// Sets [`PubSubFaults::auth_error_after`].
    pub fn auth_error_after(&self, events: u64) {
        self.auth_error_after.store(events, Ordering::SeqCst);
    }
}

/// Counters for tests, as of one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PubSubStats {
    /// Subscribe calls (streams opened).
    pub subscribe_calls: u64,
    /// GetSchema calls.
    pub get_schema_calls: u64,
    /// GetTopic calls.
    pub get_topic_calls: u64,
    /// Publish calls.
    pub publish_calls: u64,
    /// Calls rejected as unauthenticated.
    pub auth_failures: u64,
    /// FetchRequests received (first ones included).
    pub fetch_requests: u64,
    /// Events sent over all streams.
    pub events_sent: u64,
    /// Keepalives (empty responses) sent.
    pub keepalives_sent: u64,
    /// Highest credit any stream held.
    pub max_outstanding: u64,
    /// Events sent beyond the credit granted (must stay 0).
    pub over_credit_sends: u64,
    /// Times a stream's credit reached 0 while events were waiting for it.
    pub zero_credit_with_backlog: u64,
    /// Event responses after which the stream's credit was 0 (a client that tops up early
    /// keeps this at 0 while it keeps up).
    pub zero_credit_responses: u64,
    /// The `x-client-trace-id` values seen were all present and distinct.
    pub trace_ids_ok: bool,
}

pub(crate) struct StoredEvent {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) schema_id: String,
    pub(crate) payload: Vec<u8>,
}

#[derive(Default)]
pub(crate) struct TopicLog {
    /// Retained events, ascending `seq`.
    pub(crate) events: Vec<StoredEvent>,
    /// Seq of the next event to publish (seqs start at 1; 0 = "before everything").
    pub(crate) next_seq: u64,
    /// Current schema of the topic.
    pub(crate) schema_id: String,
}

impl TopicLog {
    pub(crate) fn first_retained(&self) -> u64 {
        self.events.first().map_or(self.next_seq, |e| e.seq)
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) subscribe_calls: AtomicU64,
    pub(crate) get_schema_calls: AtomicU64,
    pub(crate) get_topic_calls: AtomicU64,
    pub(crate) publish_calls: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) fetch_requests: AtomicU64,
    pub(crate) events_sent: AtomicU64,
    pub(crate) keepalives_sent: AtomicU64,
    pub(crate) max_outstanding: AtomicU64,
    pub(crate) over_credit_sends: AtomicU64,
    pub(crate) zero_credit_with_backlog: AtomicU64,
    pub(crate) zero_credit_responses: AtomicU64,
}

pub(crate) struct Data {
    pub(crate) topics: HashMap<String, TopicLog>,
    pub(crate) schemas: HashMap<String, Arc<WriterSchema>>,
    pub(crate) trace_ids: std::collections::HashSet<String>,
    pub(crate) trace_ids_ok: bool,
}

pub(crate) struct State {
    pub(crate) config: PubSubConfig,
    pub(crate) faults: PubSubFaults,
    pub(crate) counters: Counters,
    pub(crate) data: Mutex<Data>,
    /// Woken on every publish.
    pub(crate) published: Notify,
}

const REPLAY_BASE: u64 = 1_100_000;

/// The opaque 10-byte replay id of `seq`: 8 big-endian bytes then two zero bytes, like the
/// values observed from Salesforce.
pub fn replay_id_of(seq: u64) -> Vec<u8> {
    let mut id = (REPLAY_BASE + seq).to_be_bytes().to_vec();
    id.extend_from_slice(&[0, 0]);
    id
}

/// The seq inside a replay id made by [`replay_id_of`].
pub(crate) fn seq_of(id: &[u8]) -> Option<u64> {
    let (head, tail) = id.split_first_chunk::<8>()?;
    if tail != [0, 0] {
        return None;
    }
    u64::from_be_bytes(*head).checked_sub(REPLAY_BASE)
}

/// Errors of the sandbox's helpers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PubSubSandboxError {
    /// The topic does not exist.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// A schema or event was rejected.
    #[error("pub/sub sandbox: {0}")]
    Invalid(String),
    /// The listener could not be bound.
    #[error("cannot bind the pub/sub sandbox")]
    Bind(#[source] std::io::Error),
}

/// A running Pub/Sub sandbox. Dropping it stops the server.
pub struct PubSubSandbox {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for PubSubSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubSandbox")
            .field("addr", &self.addr)
            .finish()
    }
}

impl PubSubSandbox {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start(config: PubSubConfig) -> Result<Self, PubSubSandboxError> {
        let standard = Arc::new(
            WriterSchema::parse("pending", OrderProvisionRequested::SCHEMA_JSON)
                .map_err(|e| PubSubSandboxError::Invalid(e.to_string()))?,
        );
        let standard_id = WriterSchema::fingerprint_id(standard.schema());
        let standard = Arc::new(
            WriterSchema::parse(&standard_id, OrderProvisionRequested::SCHEMA_JSON)
                .map_err(|e| PubSubSandboxError::Invalid(e.to_string()))?,
        );
        let mut topics = HashMap::new();
        for t in &config.topics {
            topics.insert(
                t.clone(),
                TopicLog {
                    events: Vec::new(),
                    next_seq: 1,
                    schema_id: standard_id.clone(),
                },
            );
        }
        let state = Arc::new(State {
            config,
            faults: PubSubFaults::default(),
            counters: Counters::default(),
            data: Mutex::new(Data {
                topics,
                schemas: HashMap::from([(standard_id, standard)]),
                trace_ids: Default::default(),
                trace_ids_ok: true,
            }),
            published: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(PubSubSandboxError::Bind)?;
        let addr = listener.local_addr().map_err(PubSubSandboxError::Bind)?;
        let (tx, rx) = oneshot::channel();
        let svc = service::Service {
            state: state.clone(),
        };
        let task = tokio::spawn(async move {
            let server = tonic::transport::Server::builder()
                .add_service(
                    sf_pubsub::proto::pub_sub_server::PubSubServer::new(svc)
                        .max_decoding_message_size(16 * 1024 * 1024),
                )
                .serve_with_incoming_shutdown(
                    // No Nagle delay: small gRPC frames must not wait for delayed ACKs.
                    futures::StreamExt::map(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        |conn| {
                            if let Ok(c) = &conn {
                                let _ = c.set_nodelay(true);
                            }
                            conn
                        },
                    ),
                    async {
                        let _ = rx.await;
                    },
                );
            if let Err(err) = server.await {
                tracing::error!(error = %err, "pub/sub sandbox stopped");
            }
        });
        Ok(PubSubSandbox {
            addr,
            state,
            shutdown: Some(tx),
            task,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, for `SF_PUBSUB_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The fault switches.
    pub fn faults(&self) -> &PubSubFaults {
        &self.state.faults
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PubSubStats {
        let c = &self.state.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        PubSubStats {
            subscribe_calls: get(&c.subscribe_calls),
            get_schema_calls: get(&c.get_schema_calls),
            get_topic_calls: get(&c.get_topic_calls),
            publish_calls: get(&c.publish_calls),
            auth_failures: get(&c.auth_failures),
            fetch_requests: get(&c.fetch_requests),
            events_sent: get(&c.events_sent),
            keepalives_sent: get(&c.keepalives_sent),
            max_outstanding: get(&c.max_outstanding),
            over_credit_sends: get(&c.over_credit_sends),
            zero_credit_with_backlog: get(&c.zero_credit_with_backlog),
            zero_credit_responses: get(&c.zero_credit_responses),
            trace_ids_ok: self.state.data.lock().trace_ids_ok,
        }
    }

    /// The current schema id of `topic`.
    pub fn schema_id(&self, topic: &str) -> Result<String, PubSubSandboxError> {
        self.state
            .data
            .lock()
            .topics
            .get(topic)
            .map(|t| t.schema_id.clone())
            .ok_or_else(|| PubSubSandboxError::UnknownTopic(topic.to_owned()))
    }

    /// Registers another schema (e.g. the event definition changed) and makes it the topic's
    /// current one; returns its id. Events published after this carry the new schema id.
    pub fn register_schema(
        &self,
        topic: &str,
        schema_json: &str,
    ) -> Result<String, PubSubSandboxError> {
        let parsed = WriterSchema::parse("pending", schema_json)
            .map_err(|e| PubSubSandboxError::Invalid(e.to_string()))?;
        let id = WriterSchema::fingerprint_id(parsed.schema());
        let schema = WriterSchema::parse(&id, schema_json)
            .map_err(|e| PubSubSandboxError::Invalid(e.to_string()))?;
        let mut data = self.state.data.lock();
        let log = data
            .topics
            .get_mut(topic)
            .ok_or_else(|| PubSubSandboxError::UnknownTopic(topic.to_owned()))?;
        log.schema_id = id.clone();
        data.schemas.insert(id.clone(), Arc::new(schema));
        Ok(id)
    }

    /// Publishes one event with the topic's current schema; returns its replay id.
    pub fn publish_order(
        &self,
        topic: &str,
        event: &OrderProvisionRequested,
    ) -> Result<Vec<u8>, PubSubSandboxError> {
        self.state
            .publish_order(topic, event)
            .map(|published| published.replay_id)
    }

    /// A handle that publishes on this sandbox, for another emulator (the Salesforce
    /// sandbox's `POST /sandbox/orders/{id}`, see [`crate::salesforce::SalesforceSandbox::attach_pubsub`]).
    /// Publishing through it after the sandbox stopped stores events nobody can read.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            state: Arc::clone(&self.state),
        }
    }

    /// Publishes `count` events `order_id = 801SBX{index:012}`, customer `CUST-{index % 7}`;
    /// returns them.
    pub fn seed_orders(
        &self,
        topic: &str,
        count: usize,
    ) -> Result<Vec<OrderProvisionRequested>, PubSubSandboxError> {
        (0..count)
            .map(|i| {
                let event = sample_order(i);
                self.publish_order(topic, &event)?;
                Ok(event)
            })
            .collect()
    }

    /// Appends an event with any payload, unchecked (for garbage-payload tests).
    pub fn publish_raw(
        &self,
        topic: &str,
        schema_id: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, PubSubSandboxError> {
        let id = self.state.append(
            topic,
            uuid::Uuid::new_v4().to_string(),
            schema_id.to_owned(),
            payload,
        )?;
        Ok(id)
    }

    /// Drops the oldest `count` events of `topic` from retention.
    pub fn purge_oldest(&self, topic: &str, count: usize) -> Result<(), PubSubSandboxError> {
        let mut data = self.state.data.lock();
        let log = data
            .topics
            .get_mut(topic)
            .ok_or_else(|| PubSubSandboxError::UnknownTopic(topic.to_owned()))?;
        let n = count.min(log.events.len());
        log.events.drain(..n);
        Ok(())
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for PubSubSandbox {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// Publishes on a [`PubSubSandbox`] from elsewhere (see [`PubSubSandbox::publisher`]); cheap
/// to clone.
#[derive(Clone)]
pub struct Publisher {
    state: Arc<State>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// Publishes one event with the topic's current schema, as [`PubSubSandbox::publish_order`].
    pub fn publish_order(
        &self,
        topic: &str,
        event: &OrderProvisionRequested,
    ) -> Result<PublishedEvent, PubSubSandboxError> {
        self.state.publish_order(topic, event)
    }
}

/// An event the sandbox stored on a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedEvent {
    /// Its unique event id (`ConsumerEvent.event.id`, a new UUID per publish).
    pub event_id: String,
    /// Its opaque replay id.
    pub replay_id: Vec<u8>,
}

/// The `index`-th seed event (deterministic).
pub fn sample_order(index: usize) -> OrderProvisionRequested {
    OrderProvisionRequested {
        created_date: 1_700_000_000_000 + i64::try_from(index).unwrap_or(0),
        created_by_id: "005xx000001X83aAAC".to_owned(),
        order_id: format!("801SBX{index:012}"),
        customer_number: format!("CUST-{}", index % 7),
        account_id: index
            .is_multiple_of(2)
            .then(|| format!("001SBX{index:012}")),
    }
}

impl State {
    /// Encodes `event` with `topic`'s current schema and appends it under a new event id.
    pub(crate) fn publish_order(
        &self,
        topic: &str,
        event: &OrderProvisionRequested,
    ) -> Result<PublishedEvent, PubSubSandboxError> {
        let (schema_id, schema) = {
            let data = self.data.lock();
            let schema_id = data
                .topics
                .get(topic)
                .map(|t| t.schema_id.clone())
                .ok_or_else(|| PubSubSandboxError::UnknownTopic(topic.to_owned()))?;
            let schema = data
                .schemas
                .get(&schema_id)
                .cloned()
                .ok_or_else(|| PubSubSandboxError::Invalid("topic schema vanished".into()))?;
            (schema_id, schema)
        };
        let payload = event
            .encode(&schema)
            .map_err(|e| PubSubSandboxError::Invalid(e.to_string()))?;
        let event_id = uuid::Uuid::new_v4().to_string();
        let replay_id = self.append(topic, event_id.clone(), schema_id, payload)?;
        Ok(PublishedEvent {
            event_id,
            replay_id,
        })
    }

    pub(crate) fn append(
        &self,
        topic: &str,
        id: String,
        schema_id: String,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, PubSubSandboxError> {
        let replay = {
            let mut data = self.data.lock();
            let log = data
                .topics
                .get_mut(topic)
                .ok_or_else(|| PubSubSandboxError::UnknownTopic(topic.to_owned()))?;
            let seq = log.next_seq;
            log.next_seq += 1;
            log.events.push(StoredEvent {
                seq,
                id,
                schema_id,
                payload,
            });
            replay_id_of(seq)
        };
        self.published.notify_waiters();
        Ok(replay)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn replay_ids_are_ten_opaque_bytes_that_round_trip() {
        let id = replay_id_of(7);
        assert_eq!(id.len(), 10);
        assert_eq!(&id[8..], &[0, 0]);
        assert_eq!(seq_of(&id), Some(7));
        assert_eq!(seq_of(b"12345"), None);
        assert_eq!(seq_of(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0]), None);
        assert!(replay_id_of(8) > replay_id_of(7));
    }
}
