//! The subscription engine: one long-lived `Subscribe` after another, with credit, replay,
//! reconnects and a watchdog, handing decoded events to a bounded channel.
//!
//! Invariants:
//! - the first `FetchRequest` is queued before the call is awaited (the server may send the
//!   response headers only with its first message, so awaiting them first would deadlock);
//! - outstanding credit never exceeds `batch` (<= 100); credit is topped up when a quarter of it
//!   is used, and only with as many events as the consumer's channel has room for, so a slow
//!   consumer means less credit, never unbounded memory;
//! - the resume position is the replay id of the last event handed to the consumer (or the
//!   `latest_replay_id` of a keepalive sent while credit was pending): nothing handed over is
//!   asked for again, nothing not handed over is skipped.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rand::Rng as _;
use sf_auth::AccessToken;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::PubSubClient;
use crate::proto::{FetchRequest, FetchResponse};
use crate::record::Record;
use crate::replay::ReplayStart;
use crate::{Action, Error, MAX_BATCH, Result};

/// How to subscribe.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscribeConfig {
    /// Topic, e.g. `/event/OrderProvisionRequested__e`.
    pub topic: String,
    /// Where the first stream starts.
    pub start: ReplayStart,
    /// Where to restart when Salesforce reports the replay id corrupted or expired
    /// (`LATEST` or `EARLIEST`; events may have been missed, which is reported).
    pub fallback: ReplayStart,
    /// `num_requested` credit per stream, 1..=100 (`SF_PUBSUB_BATCH`).
    pub batch: u32,
    /// Messages buffered for the consumer; credit is granted only for free room here.
    pub buffer: usize,
    /// A stream with no message (event or keepalive) for this long is torn down and
    /// resubscribed. Salesforce sends keepalives at least every 270 s.
    pub watchdog: Duration,
    /// First reconnect delay (doubles per consecutive failure, with jitter). A stream that
    /// delivered a message before it ended is resubscribed at once: only ends in a row
    /// without progress wait.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Consecutive failed streams before the subscription gives up with [`Error::GaveUp`];
    /// `None` retries forever.
    pub max_failures: Option<u32>,
}

impl SubscribeConfig {
    /// Defaults: start `LATEST`, fall back to `LATEST`, batch 100, watchdog 300 s, backoff
    /// 1 s .. 60 s, give up after 30 consecutive failures.
    pub fn new(topic: impl Into<String>) -> Self {
        SubscribeConfig {
            topic: topic.into(),
            start: ReplayStart::Latest,
            fallback: ReplayStart::Latest,
            batch: MAX_BATCH,
            buffer: MAX_BATCH as usize,
            watchdog: Duration::from_secs(300),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_failures: Some(30),
        }
    }

    /// Sets the start position.
    pub fn start(mut self, start: ReplayStart) -> Self {
        self.start = start;
        self
    }

    /// Sets the fallback preset.
    pub fn fallback(mut self, fallback: ReplayStart) -> Self {
        self.fallback = fallback;
        self
    }

    /// Sets the batch (credit per stream).
    pub fn batch(mut self, batch: u32) -> Self {
        self.batch = batch;
        self
    }

    /// Sets the consumer buffer.
    pub fn buffer(mut self, buffer: usize) -> Self {
        self.buffer = buffer;
        self
    }

    /// Sets the watchdog period.
    pub fn watchdog(mut self, watchdog: Duration) -> Self {
        self.watchdog = watchdog;
        self
    }

    /// Sets the reconnect backoff range.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Sets how many consecutive failures end the subscription.
    pub fn max_failures(mut self, max: Option<u32>) -> Self {
        self.max_failures = max;
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Config { what });
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return bad(format!("batch must be 1..=100, got {}", self.batch));
        }
        if self.topic.is_empty() {
            return bad("topic is empty".into());
        }
        if matches!(self.fallback, ReplayStart::Custom(_)) {
            return bad("fallback must be LATEST or EARLIEST".into());
        }
        if self.buffer == 0 || self.watchdog.is_zero() {
            return bad("buffer and watchdog must be positive".into());
        }
        Ok(())
    }
}

/// One delivered event.
#[derive(Debug)]
pub struct Event<R> {
    /// Opaque replay id, exactly as received; persist it to resume after this event.
    pub replay_id: Vec<u8>,
    /// `ConsumerEvent.event.id`, the event's unique id (use it for deduplication).
    pub event_id: String,
    /// Id of the writer schema the payload was decoded with.
    pub schema_id: String,
    /// The raw Avro payload, e.g. for a dead-letter record.
    pub payload: Vec<u8>,
    /// The decoded record, or why this event could not be decoded (the stream goes on).
    pub record: Result<R>,
}

/// What a subscription yields.
#[derive(Debug)]
pub enum Message<R> {
    /// An event.
    Event(Event<R>),
    /// No events, but the stream is alive; `latest_replay_id` is the subscription's position.
    Keepalive {
        /// Latest position of the subscription (may be past the last event delivered).
        latest_replay_id: Vec<u8>,
    },
    /// Salesforce rejected the replay id and the subscription restarted from the fallback
    /// preset: events between may have been missed (the reconcile sweep covers them).
    ReplayReset {
        /// The trailer `error-code`.
        error_code: String,
        /// The position that was rejected.
        rejected: ReplayStart,
        /// The preset used instead.
        fallback: ReplayStart,
    },
}

/// A running subscription: a stream of messages. Ends only after a non-retryable error (the
/// last item is that `Err`); dropping it stops the engine.
pub struct Subscription<R> {
    rx: mpsc::Receiver<Result<Message<R>>>,
    task: Option<JoinHandle<()>>,
}

impl<R> std::fmt::Debug for Subscription<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl<R: Record> Subscription<R> {
    pub(crate) fn start(client: PubSubClient, config: SubscribeConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let task = tokio::spawn(Engine { client, config, tx }.run());
        Subscription {
            rx,
            task: Some(task),
        }
    }

    /// Builds a subscription over a ready-made channel (for tests of consumers).
    pub fn from_channel(rx: mpsc::Receiver<Result<Message<R>>>) -> Self {
        Subscription { rx, task: None }
    }
}

impl<R> Subscription<R> {
    /// The next message; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<Message<R>>> {
        self.rx.recv().await
    }

    /// The next message if one has already arrived, without waiting; `None` when nothing is
    /// ready now (or the subscription has ended: [`Subscription::next`] then says so). A
    /// consumer uses it to take what one fetch delivered as a batch.
    pub fn try_next(&mut self) -> Option<Result<Message<R>>> {
        self.rx.try_recv().ok()
    }
}

impl<R> Stream for Subscription<R> {
    type Item = Result<Message<R>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl<R> Drop for Subscription<R> {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// How one stream ended.
enum End {
    /// The consumer dropped the subscription.
    ConsumerGone,
    /// The server ended the stream with OK: resubscribe.
    Completed,
    /// The stream failed.
    Failed(Error),
}

struct Engine<R> {
    client: PubSubClient,
    config: SubscribeConfig,
    tx: mpsc::Sender<Result<Message<R>>>,
}

impl<R: Record> Engine<R> {
    async fn run(self) {
        if let Err(err) = self.config.validate() {
            let _ = self.tx.send(Err(err)).await;
            return;
        }
        let mut position = self.config.start.clone();
        let mut failures: u32 = 0;
        loop {
            let mut progressed = false;
            let mut token = None;
            let end = self
                .stream_once(&mut position, &mut progressed, &mut token)
                .await;
            if progressed {
                failures = 0;
            }
            let last = match end {
                End::ConsumerGone => return,
                End::Completed => {
                    tracing::debug!(topic = %self.config.topic, "subscribe stream ended; resubscribing");
                    None
                }
                End::Failed(err) => match err.action() {
                    Action::ChangeReplay => {
                        let code = err.error_code().unwrap_or("replayid").to_owned();
                        tracing::warn!(
                            topic = %self.config.topic,
                            rejected = %position,
                            fallback = %self.config.fallback,
                            error_code = %code,
                            "REPLAY ID REJECTED: resubscribing from the fallback preset; events \
                             in between may have been missed and are left to the reconcile sweep"
                        );
                        let notice = Message::ReplayReset {
                            error_code: code,
                            rejected: position.clone(),
                            fallback: self.config.fallback.clone(),
                        };
                        if self.tx.send(Ok(notice)).await.is_err() {
                            return;
                        }
                        position = self.config.fallback.clone();
                        Some(err)
                    }
                    Action::Reauthenticate => {
                        tracing::info!(topic = %self.config.topic, "pub/sub rejected the token; minting a new one");
                        if let Some(t) = &token {
                            self.client.inner.tokens.invalidate(t);
                        }
                        Some(err)
                    }
                    Action::Retry => {
                        tracing::warn!(topic = %self.config.topic, error = %err, "subscribe stream failed; will resume");
                        Some(err)
                    }
                    Action::Reconfigure | Action::Permanent => {
                        tracing::error!(topic = %self.config.topic, error = %err, "subscription failed");
                        let _ = self.tx.send(Err(err)).await;
                        return;
                    }
                },
            };
            if progressed {
                // This stream delivered before it ended: the end is news, not a pattern, so the
                // first resubscribe goes at once (a server that ends streams now and then must
                // not cost a backoff each time); only ends in a row without progress back off.
                continue;
            }
            failures = failures.saturating_add(1);
            if let (Some(max), Some(err)) = (self.config.max_failures, last)
                && failures >= max
            {
                let _ = self
                    .tx
                    .send(Err(Error::GaveUp {
                        topic: self.config.topic.clone(),
                        attempts: failures,
                        last: Box::new(err),
                    }))
                    .await;
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(self.backoff(failures)) => {}
                () = self.tx.closed() => return,
            }
        }
    }

    /// Exponential backoff with jitter: a random delay in [d/2, d], d = initial * 2^(n-1).
    fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        let full = self
            .config
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.config.backoff_max);
        let half = full / 2;
        half + full
            .saturating_sub(half)
            .mul_f64(rand::rng().random::<f64>())
    }

    fn fetch(&self, num_requested: u32) -> FetchRequest {
        FetchRequest {
            topic_name: self.config.topic.clone(),
            num_requested: i32::try_from(num_requested).unwrap_or(i32::MAX),
            ..FetchRequest::default()
        }
    }

    async fn stream_once(
        &self,
        position: &mut ReplayStart,
        progressed: &mut bool,
        token_out: &mut Option<AccessToken>,
    ) -> End {
        let token = match self.client.token().await {
            Ok(t) => t,
            Err(err) => return End::Failed(err),
        };
        *token_out = Some(token.clone());
        let batch = self.config.batch;
        let (preset, replay_id) = position.to_wire();
        let mut first = self.fetch(batch);
        first.replay_preset = preset as i32;
        first.replay_id = replay_id;

        // The first request is queued before the call is awaited: servers may send the
        // response headers only with the first message.
        let (req_tx, req_rx) = mpsc::channel::<FetchRequest>(4);
        if req_tx.try_send(first).is_err() {
            return End::Failed(Error::Config {
                what: "request channel refused the first request".into(),
            });
        }
        let request = match self.client.request(ReceiverStream::new(req_rx), &token) {
            Ok(r) => r,
            Err(err) => return End::Failed(err),
        };
        tracing::debug!(topic = %self.config.topic, start = %position, batch, "subscribing");
        let mut grpc = self.client.grpc();
        let watchdog = self.config.watchdog;
        let silent = || {
            tracing::warn!(topic = %self.config.topic, seconds = watchdog.as_secs_f64(), "subscribe stream silent; tearing it down");
            End::Failed(Error::Silent {
                rpc: "Subscribe",
                seconds: watchdog.as_secs_f64(),
            })
        };
        let mut stream = tokio::select! {
            r = tokio::time::timeout(watchdog, grpc.subscribe(request)) => match r {
                Err(_) => return silent(),
                Ok(Err(status)) => return End::Failed(Error::from_status("Subscribe", &status)),
                Ok(Ok(resp)) => resp.into_inner(),
            },
            () = self.tx.closed() => return End::ConsumerGone,
        };

        // Credit the server still owes us, by our own count (server reports lag our top-ups).
        let mut outstanding = batch;
        let refill_at = (batch / 4).max(1);
        loop {
            let msg: FetchResponse = tokio::select! {
                r = tokio::time::timeout(watchdog, stream.message()) => match r {
                    Err(_) => return silent(),
                    Ok(Err(status)) => return End::Failed(Error::from_status("Subscribe", &status)),
                    Ok(Ok(None)) => return End::Completed,
                    Ok(Ok(Some(m))) => m,
                },
                () = self.tx.closed() => return End::ConsumerGone,
            };
            *progressed = true;
            let received = u32::try_from(msg.events.len()).unwrap_or(u32::MAX);
            outstanding = outstanding.saturating_sub(received);
            if msg.events.is_empty() {
                if msg.pending_num_requested > 0 && !msg.latest_replay_id.is_empty() {
                    // Nothing was held back: the subscription is at latest_replay_id.
                    *position = ReplayStart::Custom(msg.latest_replay_id.clone());
                }
                let keepalive = Message::Keepalive {
                    latest_replay_id: msg.latest_replay_id,
                };
                if self.tx.send(Ok(keepalive)).await.is_err() {
                    return End::ConsumerGone;
                }
            }
            for consumer_event in msg.events {
                let replay_id = consumer_event.replay_id;
                let event = consumer_event.event.unwrap_or_default();
                let record = match self.client.get_schema(&event.schema_id).await {
                    Ok(schema) => R::decode(&schema, &event.payload),
                    Err(err) if err.action() == Action::Permanent => Err(err),
                    // A schema we cannot fetch now: resume from before this event later.
                    Err(err) => return End::Failed(err),
                };
                if let Err(bad) = &record {
                    tracing::warn!(event_id = %event.id, schema_id = %event.schema_id, error = %bad, "event cannot be decoded");
                }
                let out = Event {
                    replay_id: replay_id.clone(),
                    event_id: event.id,
                    schema_id: event.schema_id,
                    payload: event.payload,
                    record,
                };
                if self.tx.send(Ok(Message::Event(out))).await.is_err() {
                    return End::ConsumerGone;
                }
                *position = ReplayStart::Custom(replay_id);
            }

            // Top up before the credit runs out, only for room the consumer has.
            let want = batch - outstanding;
            if want >= refill_at || outstanding == 0 {
                let mut grant = want.min(u32::try_from(self.tx.capacity()).unwrap_or(u32::MAX));
                if grant == 0 && outstanding == 0 {
                    // The consumer is behind and the server owes nothing: wait for room.
                    tokio::select! {
                        permit = self.tx.reserve() => match permit {
                            Ok(p) => drop(p),
                            Err(_) => return End::ConsumerGone,
                        },
                        () = tokio::time::sleep(watchdog) => return silent(),
                    }
                    grant = want.min(u32::try_from(self.tx.capacity()).unwrap_or(1).max(1));
                }
                if grant > 0 {
                    if req_tx.send(self.fetch(grant)).await.is_err() {
                        return End::Completed;
                    }
                    outstanding += grant;
                }
            }
        }
    }
}
