//! The tonic service behind [`super::PubSubSandbox`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sf_pubsub::proto::pub_sub_server::PubSub;
use sf_pubsub::proto::{
    ConsumerEvent, Error as EventError, ErrorCode, FetchRequest, FetchResponse,
    ManagedFetchRequest, ManagedFetchResponse, ProducerEvent, PublishRequest, PublishResponse,
    PublishResult, ReplayPreset, SchemaInfo, SchemaRequest, TopicInfo, TopicRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{SANDBOX_ORG_ID, State, replay_id_of, seq_of};

const PREFIX: &str = "sfdc.platform.eventbus.grpc.";
const MAX_CREDIT: i64 = 100;

pub(crate) struct Service {
    pub(crate) state: Arc<State>,
}

/// A status with the `error-code`, `rpc-id` and `type` trailers Salesforce sends.
fn status(code: Code, message: &str, error_code: &str, rpc: &str) -> Status {
    let rpc_id = uuid::Uuid::new_v4().to_string();
    let mut md = MetadataMap::new();
    if let Ok(v) = format!("{PREFIX}{error_code}").parse() {
        md.insert("error-code", v);
    }
    if let Ok(v) = rpc_id.parse() {
        md.insert("rpc-id", v);
    }
    if let Ok(v) = rpc.parse() {
        md.insert("type", v);
    }
    Status::with_metadata(code, format!("{message} rpcId: {rpc_id}"), md)
}

fn auth_error(rpc: &str) -> Status {
    status(
        Code::Unauthenticated,
        "An authentication exception occurred. Provide valid authentication via metadata headers.",
        "service.auth.error",
        rpc,
    )
}

fn max_u64(a: &std::sync::atomic::AtomicU64, v: u64) {
    a.fetch_max(v, Ordering::SeqCst);
}

impl Service {
    /// Checks the metadata every call must carry.
    fn authorize(&self, md: &MetadataMap, rpc: &str) -> Result<(), Status> {
        let state = &self.state;
        let reject = state
            .faults
            .reject_calls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let text = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
        let token_ok = text("accesstoken").is_some_and(|t| (state.config.token_validator)(t));
        let rest_ok = text("instanceurl").is_some_and(|u| u.starts_with("http"))
            && text("tenantid").is_some_and(|t| !t.is_empty());
        {
            let mut data = state.data.lock();
            match text("x-client-trace-id") {
                Some(id) if data.trace_ids.insert(id.to_owned()) => {}
                _ => data.trace_ids_ok = false,
            }
        }
        if reject || !token_ok || !rest_ok {
            state.counters.auth_failures.fetch_add(1, Ordering::SeqCst);
            return Err(auth_error(rpc));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl PubSub for Service {
    type SubscribeStream = ReceiverStream<Result<FetchResponse, Status>>;
    type PublishStreamStream = ReceiverStream<Result<PublishResponse, Status>>;
    type ManagedSubscribeStream = ReceiverStream<Result<ManagedFetchResponse, Status>>;

    async fn get_topic(
        &self,
        request: Request<TopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        self.state
            .counters
            .get_topic_calls
            .fetch_add(1, Ordering::SeqCst);
        self.authorize(request.metadata(), "GetTopic")?;
        let name = request.into_inner().topic_name;
        let data = self.state.data.lock();
        let log = data.topics.get(&name).ok_or_else(|| {
            status(
                Code::NotFound,
                "The topic was not found.",
                "topic.not.found",
                "GetTopic",
            )
        })?;
        Ok(Response::new(TopicInfo {
            topic_name: name.clone(),
            tenant_guid: SANDBOX_ORG_ID.to_owned(),
            can_publish: true,
            can_subscribe: true,
            schema_id: log.schema_id.clone(),
            rpc_id: uuid::Uuid::new_v4().to_string(),
        }))
    }

    async fn get_schema(
        &self,
        request: Request<SchemaRequest>,
    ) -> Result<Response<SchemaInfo>, Status> {
        self.state
            .counters
            .get_schema_calls
            .fetch_add(1, Ordering::SeqCst);
        self.authorize(request.metadata(), "GetSchema")?;
        let id = request.into_inner().schema_id;
        let data = self.state.data.lock();
        let schema = data.schemas.get(&id).ok_or_else(|| {
            status(
                Code::NotFound,
                "The schema was not found.",
                "schema.not.found",
                "GetSchema",
            )
        })?;
        Ok(Response::new(SchemaInfo {
            schema_json: schema.json().to_owned(),
            schema_id: id,
            rpc_id: uuid::Uuid::new_v4().to_string(),
        }))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        self.state
            .counters
            .publish_calls
            .fetch_add(1, Ordering::SeqCst);
        self.authorize(request.metadata(), "Publish")?;
        let req = request.into_inner();
        let topic_schema = {
            let data = self.state.data.lock();
            data.topics
                .get(&req.topic_name)
                .map(|t| t.schema_id.clone())
                .ok_or_else(|| {
                    status(
                        Code::NotFound,
                        "The topic was not found.",
                        "topic.not.found",
                        "Publish",
                    )
                })?
        };
        let mut results = Vec::with_capacity(req.events.len());
        for event in req.events {
            let key = if event.id.is_empty() {
                uuid::Uuid::new_v4().to_string()
            } else {
                event.id.clone()
            };
            let checked = self.check_event(&event);
            let result = match checked {
                Ok(()) => match self.state.append(
                    &req.topic_name,
                    key.clone(),
                    event.schema_id,
                    event.payload,
                ) {
                    Ok(replay_id) => PublishResult {
                        replay_id,
                        error: None,
                        correlation_key: key,
                    },
                    Err(e) => failed(key, e.to_string()),
                },
                Err(msg) => failed(key, msg),
            };
            results.push(result);
        }
        Ok(Response::new(PublishResponse {
            results,
            schema_id: topic_schema,
            rpc_id: uuid::Uuid::new_v4().to_string(),
        }))
    }

    async fn subscribe(
        &self,
        request: Request<Streaming<FetchRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let state = self.state.clone();
        state
            .counters
            .subscribe_calls
            .fetch_add(1, Ordering::SeqCst);
        self.authorize(request.metadata(), "Subscribe")?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::cancelled("client closed before the first FetchRequest"))?;
        state.counters.fetch_requests.fetch_add(1, Ordering::SeqCst);
        if first.num_requested <= 0 {
            return Err(status(
                Code::InvalidArgument,
                "The requested number of events in a fetch request must be greater than zero.",
                "subscription.fetch.requested.events.invalid",
                "Subscribe",
            ));
        }
        let topic = first.topic_name.clone();
        // Where the stream starts: the seq of the first event to send.
        let start = {
            let data = state.data.lock();
            let log = data.topics.get(&topic).ok_or_else(|| {
                status(
                    Code::NotFound,
                    "The topic was not found.",
                    "topic.not.found",
                    "Subscribe",
                )
            })?;
            match ReplayPreset::try_from(first.replay_preset) {
                Ok(ReplayPreset::Latest) => log.next_seq,
                Ok(ReplayPreset::Earliest) => log.first_retained(),
                Ok(ReplayPreset::Custom) => {
                    let corrupted = || {
                        status(
                            Code::InvalidArgument,
                            "The Replay ID validation failed: it is invalid or outside the retention window.",
                            "subscription.fetch.replayid.corrupted",
                            "Subscribe",
                        )
                    };
                    if first.replay_id.is_empty() {
                        return Err(status(
                            Code::InvalidArgument,
                            "A CUSTOM replay preset needs a replay id.",
                            "subscription.fetch.replayid.validation.failed",
                            "Subscribe",
                        ));
                    }
                    let seq = seq_of(&first.replay_id).ok_or_else(corrupted)?;
                    if seq + 1 < log.first_retained() || seq >= log.next_seq {
                        return Err(corrupted());
                    }
                    seq + 1
                }
                Err(_) => {
                    return Err(status(
                        Code::InvalidArgument,
                        "Unknown replay preset.",
                        "subscription.fetch.replayid.validation.failed",
                        "Subscribe",
                    ));
                }
            }
        };
        let (tx, rx) = mpsc::channel(16);
        let faults = &state.faults;
        let stall = faults
            .stall_streams
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let auth_after = match faults.auth_error_after.swap(0, Ordering::SeqCst) {
            0 | u64::MAX => None,
            n => Some(n),
        };
        let stream = StreamTask {
            state: state.clone(),
            topic,
            cursor: start,
            credit: i64::from(first.num_requested).min(MAX_CREDIT),
            granted: i64::from(first.num_requested).min(MAX_CREDIT),
            sent: 0,
            stall,
            auth_after,
            tx,
        };
        tokio::spawn(stream.run(inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn publish_stream(
        &self,
        _request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        Err(Status::unimplemented(
            "PublishStream is not emulated by the sandbox",
        ))
    }

    async fn managed_subscribe(
        &self,
        _request: Request<Streaming<ManagedFetchRequest>>,
    ) -> Result<Response<Self::ManagedSubscribeStream>, Status> {
        Err(Status::unimplemented(
            "ManagedSubscribe is not emulated by the sandbox",
        ))
    }
}

fn failed(key: String, msg: String) -> PublishResult {
    PublishResult {
        replay_id: Vec::new(),
        error: Some(EventError {
            code: ErrorCode::Publish as i32,
            msg,
        }),
        correlation_key: key,
    }
}

impl Service {
    /// The schema id must be known and the payload must decode with `CreatedDate` (long) and
    /// `CreatedById` (string).
    fn check_event(&self, event: &ProducerEvent) -> Result<(), String> {
        let schema = self
            .state
            .data
            .lock()
            .schemas
            .get(&event.schema_id)
            .cloned()
            .ok_or_else(|| format!("unknown schema id {:?}", event.schema_id))?;
        let record =
            <sf_pubsub::GenericRecord as sf_pubsub::Record>::decode(&schema, &event.payload)
                .map_err(|e| format!("payload does not decode: {e}"))?
                .to_json();
        if !record["CreatedDate"].is_i64() {
            return Err("required field CreatedDate is missing".into());
        }
        if !record["CreatedById"].is_string() {
            return Err("required field CreatedById is missing".into());
        }
        Ok(())
    }
}

/// One Subscribe stream: sends events within the credit, keepalives when quiet, faults.
struct StreamTask {
    state: Arc<State>,
    topic: String,
    /// Seq of the next event to send.
    cursor: u64,
    /// Credit still owed to the client.
    credit: i64,
    /// Credit granted over the stream's life (for the over-credit check).
    granted: i64,
    /// Events sent on this stream.
    sent: u64,
    stall: bool,
    auth_after: Option<u64>,
    tx: mpsc::Sender<Result<FetchResponse, Status>>,
}

impl StreamTask {
    async fn run(mut self, mut inbound: Streaming<FetchRequest>) {
        let state = self.state.clone();
        let interval = state.config.keepalive_interval;
        let mut next_keepalive = tokio::time::Instant::now() + interval;
        let mut starved = false;
        loop {
            let notified = state.published.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            if !self.stall {
                match self.send_available().await {
                    Ok(true) => next_keepalive = tokio::time::Instant::now() + interval,
                    Ok(false) => {}
                    Err(()) => return,
                }
                let backlog = self.backlog();
                if self.credit == 0 && backlog {
                    if !starved {
                        state
                            .counters
                            .zero_credit_with_backlog
                            .fetch_add(1, Ordering::SeqCst);
                    }
                    starved = true;
                } else {
                    starved = false;
                }
            }

            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        state.counters.fetch_requests.fetch_add(1, Ordering::SeqCst);
                        if !req.topic_name.is_empty() && req.topic_name != self.topic {
                            let _ = self.tx.send(Err(status(
                                Code::InvalidArgument,
                                "The topic name does not match the subscription.",
                                "subscription.fetch.topic.mismatch",
                                "Subscribe",
                            ))).await;
                            return;
                        }
                        if req.num_requested <= 0 {
                            let _ = self.tx.send(Err(status(
                                Code::InvalidArgument,
                                "The requested number of events in a fetch request must be greater than zero.",
                                "subscription.fetch.requested.events.invalid",
                                "Subscribe",
                            ))).await;
                            return;
                        }
                        let before = self.credit;
                        self.credit = (self.credit + i64::from(req.num_requested)).min(MAX_CREDIT);
                        self.granted += self.credit - before;
                        max_u64(&state.counters.max_outstanding, u64::try_from(self.credit).unwrap_or(0));
                    }
                    Ok(None) | Err(_) => return,
                },
                () = &mut notified => {}
                () = tokio::time::sleep_until(next_keepalive) => {
                    next_keepalive = tokio::time::Instant::now() + interval;
                    if !self.stall {
                        let keepalive = FetchResponse {
                            events: Vec::new(),
                            latest_replay_id: self.latest_replay_id(),
                            rpc_id: uuid::Uuid::new_v4().to_string(),
                            pending_num_requested: i32::try_from(self.credit).unwrap_or(0),
                        };
                        state.counters.keepalives_sent.fetch_add(1, Ordering::SeqCst);
                        if self.tx.send(Ok(keepalive)).await.is_err() {
                            return;
                        }
                    }
                }
                () = self.tx.closed() => return,
            }
        }
    }

    fn backlog(&self) -> bool {
        let data = self.state.data.lock();
        data.topics
            .get(&self.topic)
            .is_some_and(|log| log.next_seq > self.cursor)
    }

    /// The subscription's position: the tip when caught up, else the last event sent.
    fn latest_replay_id(&self) -> Vec<u8> {
        let data = self.state.data.lock();
        let tip = data.topics.get(&self.topic).map_or(0, |l| l.next_seq - 1);
        replay_id_of(self.cursor.saturating_sub(1).min(tip))
    }

    /// Sends what the credit allows; `Ok(true)` when something was sent, `Err` when the stream
    /// is over.
    async fn send_available(&mut self) -> Result<bool, ()> {
        let state = self.state.clone();
        let faults = &state.faults;
        let mut any = false;
        while self.credit > 0 {
            let end_every = faults.end_stream_every.load(Ordering::SeqCst);
            let mut limit = usize::try_from(self.credit)
                .unwrap_or(0)
                .min(state.config.max_events_per_response);
            if end_every > 0 {
                let left = end_every.saturating_sub(self.sent);
                limit = limit.min(usize::try_from(left).unwrap_or(usize::MAX));
            }
            if let Some(after) = self.auth_after {
                let left = after.saturating_sub(self.sent);
                limit = limit.min(usize::try_from(left).unwrap_or(usize::MAX));
            }
            let (events, cursor) = {
                let data = state.data.lock();
                let Some(log) = data.topics.get(&self.topic) else {
                    return Err(());
                };
                // Retention may have moved past the cursor: skip what is gone. Retained seqs
                // are contiguous, so the cursor's position is found by arithmetic (O(1) per
                // fetch however long the log is), not by a scan.
                let mut cursor = self.cursor.max(log.first_retained());
                let skip = usize::try_from(cursor - log.first_retained()).unwrap_or(usize::MAX);
                let events: Vec<ConsumerEvent> = log
                    .events
                    .get(skip..)
                    .unwrap_or_default()
                    .iter()
                    .take(limit)
                    .map(|e| {
                        cursor = e.seq + 1;
                        ConsumerEvent {
                            event: Some(ProducerEvent {
                                id: e.id.clone(),
                                schema_id: e.schema_id.clone(),
                                payload: e.payload.clone(),
                                headers: Vec::new(),
                            }),
                            replay_id: replay_id_of(e.seq),
                        }
                    })
                    .collect();
                (events, cursor)
            };
            if events.is_empty() {
                break;
            }
            let n = events.len() as u64;
            let n_i64 = i64::try_from(n).unwrap_or(i64::MAX);
            // Independent check of the invariant: never more sent than granted.
            let total_sent = i64::try_from(self.sent + n).unwrap_or(i64::MAX);
            if n_i64 > self.credit || total_sent > self.granted {
                state
                    .counters
                    .over_credit_sends
                    .fetch_add(1, Ordering::SeqCst);
            }
            self.credit -= n_i64;
            self.sent += n;
            self.cursor = cursor;
            let latest = replay_id_of(cursor - 1);
            let resp = FetchResponse {
                events,
                latest_replay_id: latest,
                rpc_id: uuid::Uuid::new_v4().to_string(),
                pending_num_requested: i32::try_from(self.credit).unwrap_or(0),
            };
            state.counters.events_sent.fetch_add(n, Ordering::SeqCst);
            if self.credit == 0 {
                state
                    .counters
                    .zero_credit_responses
                    .fetch_add(1, Ordering::SeqCst);
            }
            if self.tx.send(Ok(resp)).await.is_err() {
                return Err(());
            }
            any = true;
            if end_every > 0 && self.sent >= end_every {
                let _ = self
                    .tx
                    .send(Err(status(
                        Code::Internal,
                        "The service is unavailable. Try again later.",
                        "service.unavailable",
                        "Subscribe",
                    )))
                    .await;
                return Err(());
            }
            if self.auth_after.is_some_and(|after| self.sent >= after) {
                state.counters.auth_failures.fetch_add(1, Ordering::SeqCst);
                let _ = self.tx.send(Err(auth_error("Subscribe"))).await;
                return Err(());
            }
        }
        Ok(any)
    }
}
