//! Where alerts go: a webhook (`SECURITY_ALERT_WEBHOOK`) or the log.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{StatusCode, Url};
use tokio::task::JoinHandle;

use crate::{Alert, Error, Result};

/// A destination for alerts.
///
/// `send` hands the alert over and returns promptly; it never fails the caller (provisioning
/// must not depend on alert delivery). Implementations count and log their own failures.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait AlertSink: Send + Sync {
    /// Hands over one alert for delivery.
    async fn send(&self, alert: Alert);

    /// Waits up to `grace` until every alert handed over so far was delivered or given up
    /// (at shutdown, so the last alerts leave the process). Returns whether it got there.
    async fn flush(&self, grace: Duration) -> bool {
        let _ = grace;
        true
    }
}

/// Alerts written to the log only: the sink when `SECURITY_ALERT_WEBHOOK` is unset.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogSink;

#[async_trait]
impl AlertSink for LogSink {
    async fn send(&self, alert: Alert) {
        log_alert(&alert);
    }
}

fn log_alert(alert: &Alert) {
    tracing::warn!(
        target: "security_alert",
        alert = alert.kind.as_str(),
        severity = ?alert.severity,
        count = alert.count,
        window_seconds = alert.window_seconds,
        body = %alert.to_json(),
        "security alert"
    );
}

/// The sink for an optional webhook URL: a [`WebhookSink`] when one is given (non-blank),
/// otherwise a [`LogSink`].
///
/// # Errors
/// See [`WebhookSink::new`].
pub fn sink_for(webhook: Option<&str>, config: WebhookConfig) -> Result<Arc<dyn AlertSink>> {
    match webhook.map(str::trim).filter(|url| !url.is_empty()) {
        Some(url) => Ok(Arc::new(WebhookSink::new(url, config)?)),
        None => Ok(Arc::new(LogSink)),
    }
}

/// Delivery settings of a [`WebhookSink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Alerts a [`MemoryOutbox`] keeps (the outbox of [`WebhookSink::new`]); past this, the
    /// oldest waiting alert is dropped and counted. Default 256. A durable outbox has its own
    /// bound.
    pub capacity: usize,
    /// Deliveries in flight at once, each to its own alert. Default 4.
    pub concurrency: usize,
    /// Wait before an alert's second attempt; doubles with each further attempt. Default 500 ms.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts of one alert. Default 60 s.
    pub max_backoff: Duration,
    /// Timeout of one POST. Default 10 s.
    pub request_timeout: Duration,
    /// How often the outbox is looked at when nothing new was sent (alerts queued by another
    /// instance, retries coming due). Default 1 s.
    pub poll_interval: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            capacity: 256,
            concurrency: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl WebhookConfig {
    /// The wait after an alert's `attempts`-th failed attempt.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// Counters of a [`WebhookSink`] since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Alerts stored in the outbox.
    pub queued: u64,
    /// Alerts the webhook acknowledged with a 2xx.
    pub delivered: u64,
    /// Alerts dropped: the oldest waiting ones past the outbox's bound, or ones the outbox
    /// could not store (they are logged instead).
    pub dropped: u64,
    /// Alerts the webhook refused for good (400, 413, 415 or 422: the body itself was refused).
    pub failed: u64,
    /// Failed attempts that will be tried again.
    pub retries: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WebhookStats {
        WebhookStats {
            queued: self.queued.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// What went wrong in an [`AlertOutbox`] (its storage failed). Never shown to a webhook.
pub type OutboxError = Box<dyn std::error::Error + Send + Sync>;

/// An alert taken from an [`AlertOutbox`] for one delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The outbox's id of the alert.
    pub id: i64,
    /// The alert's kind (`AlertKind::as_str`).
    pub kind: String,
    /// The JSON body to POST ([`Alert::to_json`]).
    pub body: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

/// Where a [`WebhookSink`] keeps alerts until the webhook has taken them.
///
/// [`MemoryOutbox`] keeps them in the process; the provisioner keeps them in its database, so
/// they survive a restart and are shared by every instance (each alert is taken by one
/// instance at a time).
#[async_trait]
pub trait AlertOutbox: Send + Sync {
    /// Stores `alert`, due at once. Returns how many of the oldest waiting alerts were dropped
    /// to stay within the outbox's bound.
    async fn push(&self, alert: &Alert) -> std::result::Result<u64, OutboxError>;

    /// Up to `limit` due alerts, oldest first, each counted as attempted and hidden from other
    /// takers for `hold` (taken again after that unless removed or rescheduled).
    async fn take(
        &self,
        limit: usize,
        hold: Duration,
    ) -> std::result::Result<Vec<Outgoing>, OutboxError>;

    /// Forgets an alert: delivered, or refused for good.
    async fn remove(&self, id: i64) -> std::result::Result<(), OutboxError>;

    /// Makes an alert due again `after` from now; `reason` says why the attempt failed.
    async fn retry(
        &self,
        id: i64,
        after: Duration,
        reason: &str,
    ) -> std::result::Result<(), OutboxError>;

    /// How many alerts wait (taken ones included).
    async fn waiting(&self) -> std::result::Result<u64, OutboxError>;
}

/// An [`AlertOutbox`] in memory: lost with the process, bounded by `capacity` (oldest dropped).
#[derive(Debug)]
pub struct MemoryOutbox {
    capacity: usize,
    state: parking_lot::Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    next_id: i64,
    entries: std::collections::BTreeMap<i64, MemoryEntry>,
}

#[derive(Debug)]
struct MemoryEntry {
    kind: String,
    body: String,
    attempts: u32,
    due: tokio::time::Instant,
}

impl MemoryOutbox {
    /// An outbox keeping at most `capacity` alerts (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: parking_lot::Mutex::new(MemoryState::default()),
        }
    }
}

#[async_trait]
impl AlertOutbox for MemoryOutbox {
    async fn push(&self, alert: &Alert) -> std::result::Result<u64, OutboxError> {
        let mut state = self.state.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.entries.insert(
            id,
            MemoryEntry {
                kind: alert.kind.as_str().to_owned(),
                body: alert.to_json(),
                attempts: 0,
                due: tokio::time::Instant::now(),
            },
        );
        let mut dropped = 0;
        while state.entries.len() > self.capacity {
            state.entries.pop_first();
            dropped += 1;
        }
        Ok(dropped)
    }

    async fn take(
        &self,
        limit: usize,
        hold: Duration,
    ) -> std::result::Result<Vec<Outgoing>, OutboxError> {
        let now = tokio::time::Instant::now();
        let mut state = self.state.lock();
        let mut out = Vec::new();
        for (id, entry) in &mut state.entries {
            if out.len() >= limit {
                break;
            }
            if entry.due <= now {
                entry.attempts += 1;
                entry.due = now + hold;
                out.push(Outgoing {
                    id: *id,
                    kind: entry.kind.clone(),
                    body: entry.body.clone(),
                    attempts: entry.attempts,
                });
            }
        }
        Ok(out)
    }

    async fn remove(&self, id: i64) -> std::result::Result<(), OutboxError> {
        self.state.lock().entries.remove(&id);
        Ok(())
    }

    async fn retry(
        &self,
        id: i64,
        after: Duration,
        _reason: &str,
    ) -> std::result::Result<(), OutboxError> {
        if let Some(entry) = self.state.lock().entries.get_mut(&id) {
            entry.due = tokio::time::Instant::now() + after;
        }
        Ok(())
    }

    async fn waiting(&self) -> std::result::Result<u64, OutboxError> {
        Ok(self.state.lock().entries.len() as u64)
    }
}

/// POSTs each alert as JSON to the webhook, from an [`AlertOutbox`], in a background task.
///
/// [`send`](AlertSink::send) only stores the alert in the outbox: it never waits for the
/// network. The task delivers up to [`WebhookConfig::concurrency`] alerts at once, each on its
/// own schedule, so one alert the webhook keeps failing never holds the others back. An alert
/// stays in the outbox until the webhook answers 2xx: connection errors, timeouts, redirects
/// (never followed: the alert goes to the configured URL or nowhere), 401/403/404 (a webhook
/// being reconfigured) and 5xx are tried again with exponential backoff, without limit; only an
/// answer that refuses the body itself (400, 413, 415, 422) drops it, logged with its body.
/// The outbox's bound is what limits a long outage: its oldest alerts are dropped, counted in
/// [`WebhookStats::dropped`].
///
/// The URL is never logged or shown by `Debug`: webhook URLs often embed a token.
pub struct WebhookSink {
    outbox: Arc<dyn AlertOutbox>,
    counters: Arc<Counters>,
    wake: Arc<tokio::sync::Notify>,
    worker: JoinHandle<()>,
}

impl WebhookSink {
    /// Starts the delivery task for `url` over a [`MemoryOutbox`] of `config.capacity`.
    ///
    /// # Errors
    /// See [`WebhookSink::with_outbox`].
    pub fn new(url: &str, config: WebhookConfig) -> Result<Self> {
        Self::with_outbox(url, config, Arc::new(MemoryOutbox::new(config.capacity)))
    }

    /// Starts the delivery task for `url`, delivering what `outbox` holds (also what an earlier
    /// process or another instance left there).
    ///
    /// # Errors
    /// [`Error::InvalidWebhook`] for a URL that is not `http(s)`, [`Error::NoRuntime`] outside
    /// a Tokio runtime, [`Error::HttpClient`] when the HTTP client cannot be built.
    pub fn with_outbox(
        url: &str,
        config: WebhookConfig,
        outbox: Arc<dyn AlertOutbox>,
    ) -> Result<Self> {
        let url = Url::parse(url.trim()).map_err(|_| Error::InvalidWebhook {
            reason: "not a valid url",
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::InvalidWebhook {
                reason: "expected an http:// or https:// url with a host",
            });
        }
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            // A redirect is never followed: the alert goes to the configured URL or nowhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| Error::HttpClient { source })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            component: "alert webhook sink",
        })?;
        let counters = Arc::new(Counters::default());
        let wake = Arc::new(tokio::sync::Notify::new());
        let worker = runtime.spawn(
            Delivery {
                outbox: Arc::clone(&outbox),
                client,
                url,
                config,
                counters: Arc::clone(&counters),
            }
            .run(Arc::clone(&wake)),
        );
        Ok(Self {
            outbox,
            counters,
            wake,
            worker,
        })
    }

    /// The delivery counters.
    pub fn stats(&self) -> WebhookStats {
        self.counters.snapshot()
    }

    /// How many alerts wait in the outbox (`None` when it cannot tell).
    pub async fn waiting(&self) -> Option<u64> {
        self.outbox.waiting().await.ok()
    }

    /// Gives the outbox up to `grace` to drain, then stops the delivery task; what is left
    /// stays in the outbox (a durable one delivers it after the next start). Returns the final
    /// counters.
    pub async fn shutdown(self, grace: Duration) -> WebhookStats {
        if !self.flush(grace).await {
            tracing::warn!("alert webhook outbox not drained before shutdown");
        }
        self.counters.snapshot()
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

#[async_trait]
impl AlertSink for WebhookSink {
    async fn send(&self, alert: Alert) {
        tracing::debug!(alert = alert.kind.as_str(), "queueing security alert");
        match self.outbox.push(&alert).await {
            Ok(dropped) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                if dropped > 0 {
                    let before = self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
                    // Log the first drop and then ever more rarely, so a flood cannot flood
                    // the log.
                    if (before + 1).is_power_of_two() || before == 0 {
                        tracing::warn!(
                            dropped = before + dropped,
                            "alert outbox full, dropped its oldest security alerts"
                        );
                    }
                }
                self.wake.notify_one();
            }
            Err(error) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "could not store a security alert for the webhook");
                log_alert(&alert);
            }
        }
    }

    async fn flush(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if self.outbox.waiting().await.is_ok_and(|n| n == 0) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("alert webhook outbox not drained in time");
                return false;
            }
            self.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &"<redacted>")
            .field("stats", &self.stats())
            .finish()
    }
}

/// The delivery task of one [`WebhookSink`].
struct Delivery {
    outbox: Arc<dyn AlertOutbox>,
    client: reqwest::Client,
    url: Url,
    config: WebhookConfig,
    counters: Arc<Counters>,
}

impl Delivery {
    async fn run(self, wake: Arc<tokio::sync::Notify>) {
        let this = Arc::new(self);
        let concurrency = this.config.concurrency.max(1);
        // An alert taken stays hidden while its attempt may still be running.
        let hold = this.config.request_timeout + Duration::from_secs(5);
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            let free = concurrency.saturating_sub(in_flight.len());
            let mut took = 0;
            if free > 0 {
                match this.outbox.take(free, hold).await {
                    Ok(batch) => {
                        took = batch.len();
                        for alert in batch {
                            let this = Arc::clone(&this);
                            in_flight.spawn(async move { this.attempt(alert).await });
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not read the alert outbox");
                    }
                }
            }
            if took == free && free > 0 {
                // There may be more due: take again as soon as a slot is free.
                if in_flight.len() >= concurrency {
                    in_flight.join_next().await;
                }
                continue;
            }
            tokio::select! {
                biased;
                Some(_) = in_flight.join_next() => {}
                () = wake.notified() => {}
                () = tokio::time::sleep(this.config.poll_interval) => {}
            }
        }
    }

    async fn attempt(&self, alert: Outgoing) {
        let outcome = match self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(alert.body.clone())
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => Attempt::Delivered,
            Ok(resp) if resp.status().is_redirection() => Attempt::Retry(format!(
                "http {} (redirects are not followed)",
                resp.status()
            )),
            Ok(resp) if refused_for_good(resp.status()) => {
                Attempt::GiveUp(format!("http {}", resp.status()))
            }
            Ok(resp) => Attempt::Retry(format!("http {}", resp.status())),
            // `without_url`: the URL may hold a token.
            Err(err) => Attempt::Retry(err.without_url().to_string()),
        };
        let stored = match outcome {
            Attempt::Delivered => {
                let removed = self.outbox.remove(alert.id).await;
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                removed
            }
            Attempt::GiveUp(reason) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    alert = %alert.kind,
                    %reason,
                    body = %alert.body,
                    "alert webhook refused the alert, dropping it"
                );
                self.outbox.remove(alert.id).await
            }
            Attempt::Retry(reason) => {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                let wait = self.config.backoff(alert.attempts);
                tracing::warn!(
                    alert = %alert.kind,
                    attempt = alert.attempts,
                    %reason,
                    retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "alert webhook delivery failed, will retry"
                );
                self.outbox.retry(alert.id, wait, &reason).await
            }
        };
        if let Err(error) = stored {
            // The alert is taken again once its hold ends.
            tracing::warn!(%error, alert = %alert.kind, "could not update the alert outbox");
        }
    }
}

enum Attempt {
    Delivered,
    Retry(String),
    GiveUp(String),
}

/// Answers that refuse the body itself: sending it again cannot help.
fn refused_for_good(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::UNPROCESSABLE_ENTITY
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn rejects_non_http_urls_without_echoing_them() {
        for url in [
            "ftp://example.com/x?token=s3cret",
            "not a url s3cret",
            "http://",
        ] {
            let err = WebhookSink::new(url, WebhookConfig::default()).unwrap_err();
            assert!(err.is_config(), "{url}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn needs_a_runtime() {
        let err =
            WebhookSink::new("http://127.0.0.1:9/hook", WebhookConfig::default()).unwrap_err();
        assert!(matches!(err, Error::NoRuntime { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn debug_hides_the_url() {
        let sink = WebhookSink::new(
            "http://127.0.0.1:9/hook?token=s3cret",
            WebhookConfig::default(),
        )
        .unwrap();
        assert!(!format!("{sink:?}").contains("s3cret"));
        sink.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn blank_webhook_means_log_sink() {
        // A LogSink accepts alerts without a network; a WebhookSink needs a valid URL.
        assert!(sink_for(None, WebhookConfig::default()).is_ok());
        assert!(sink_for(Some("  "), WebhookConfig::default()).is_ok());
        assert!(sink_for(Some("mailto:x"), WebhookConfig::default()).is_err());
    }

    #[test]
    fn only_a_refused_body_is_given_up() {
        for status in [400, 413, 415, 422] {
            assert!(refused_for_good(StatusCode::from_u16(status).unwrap()));
        }
        for status in [301, 307, 401, 403, 404, 408, 429, 500, 503] {
            assert!(!refused_for_good(StatusCode::from_u16(status).unwrap()));
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = WebhookConfig::default();
        let ms = |n| config.backoff(n).as_millis();
        assert_eq!((ms(1), ms(2), ms(3), ms(8)), (500, 1_000, 2_000, 60_000));
        assert_eq!(config.backoff(u32::MAX), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn memory_outbox_drops_the_oldest_and_hides_taken_alerts() {
        let outbox = MemoryOutbox::new(2);
        let alert = |n: u64| {
            Alert::new(
                crate::AlertKind::AuditHead,
                crate::Subject::AuditChain,
                1,
                Duration::ZERO,
                crate::Details::new().audit_head(n, &"ab".repeat(32)),
            )
        };
        assert_eq!(outbox.push(&alert(1)).await.unwrap(), 0);
        assert_eq!(outbox.push(&alert(2)).await.unwrap(), 0);
        assert_eq!(outbox.push(&alert(3)).await.unwrap(), 1, "the oldest went");
        let taken = outbox.take(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(taken.iter().map(|a| a.id).collect::<Vec<_>>(), [2, 3]);
        assert!(taken.iter().all(|a| a.attempts == 1));
        assert!(
            outbox
                .take(10, Duration::from_secs(60))
                .await
                .unwrap()
                .is_empty()
        );
        outbox.retry(2, Duration::ZERO, "http 500").await.unwrap();
        outbox.remove(3).await.unwrap();
        let again = outbox.take(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!((again[0].id, again[0].attempts), (2, 2));
        assert_eq!(outbox.waiting().await.unwrap(), 1);
    }
}
