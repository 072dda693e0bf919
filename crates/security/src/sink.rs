//! Where alerts go: a webhook (`SECURITY_ALERT_WEBHOOK`) or the log.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{StatusCode, Url};
use tokio::sync::mpsc;
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
    /// Alerts waiting for delivery; past this, new alerts are dropped and counted. Default 256.
    pub capacity: usize,
    /// Attempts per alert, the first included. Default 8.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles on each retry. Default 500 ms.
    pub initial_backoff: Duration,
    /// Longest wait between retries. Default 60 s.
    pub max_backoff: Duration,
    /// Timeout of one POST. Default 10 s.
    pub request_timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            capacity: 256,
            max_attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of a [`WebhookSink`] since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Alerts accepted into the queue.
    pub queued: u64,
    /// Alerts the webhook acknowledged with a 2xx.
    pub delivered: u64,
    /// Alerts dropped because the queue was full or the worker had stopped.
    pub dropped: u64,
    /// Alerts given up on after all attempts or a permanent 4xx.
    pub failed: u64,
    /// Failed attempts that were retried.
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

/// POSTs each alert as JSON to the webhook from a background task.
///
/// [`send`](AlertSink::send) only puts the alert on a bounded queue: it never waits for the
/// network. When the queue is full the alert is dropped, logged and counted in
/// [`WebhookStats::dropped`]. The task retries failed deliveries (connection errors, timeouts,
/// 408, 429 and 5xx) with exponential backoff; other 4xx answers are not retried, and a redirect
/// is never followed (the alert counts as failed).
///
/// The URL is never logged or shown by `Debug`: webhook URLs often embed a token.
pub struct WebhookSink {
    tx: mpsc::Sender<Alert>,
    counters: Arc<Counters>,
    worker: JoinHandle<()>,
}

impl WebhookSink {
    /// Starts the delivery task for `url`.
    ///
    /// # Errors
    /// [`Error::InvalidWebhook`] for a URL that is not `http(s)`, [`Error::NoRuntime`] outside
    /// a Tokio runtime, [`Error::HttpClient`] when the HTTP client cannot be built.
    pub fn new(url: &str, config: WebhookConfig) -> Result<Self> {
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
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let counters = Arc::new(Counters::default());
        let worker = runtime.spawn(deliver_all(rx, client, url, config, Arc::clone(&counters)));
        Ok(Self {
            tx,
            counters,
            worker,
        })
    }

    /// The delivery counters.
    pub fn stats(&self) -> WebhookStats {
        self.counters.snapshot()
    }

    /// Stops taking alerts and gives the queue up to `grace` to drain; whatever is left after
    /// that is abandoned. Returns the final counters.
    pub async fn shutdown(self, grace: Duration) -> WebhookStats {
        let Self {
            tx,
            counters,
            mut worker,
        } = self;
        drop(tx);
        if tokio::time::timeout(grace, &mut worker).await.is_err() {
            worker.abort();
            tracing::warn!("alert webhook queue not drained before shutdown");
        }
        counters.snapshot()
    }
}

#[async_trait]
impl AlertSink for WebhookSink {
    async fn send(&self, alert: Alert) {
        tracing::debug!(alert = alert.kind.as_str(), "queueing security alert");
        match self.tx.try_send(alert) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let alert = match err {
                    mpsc::error::TrySendError::Full(alert)
                    | mpsc::error::TrySendError::Closed(alert) => alert,
                };
                // Log the first drop and then ever more rarely, so a flood cannot flood the log.
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        alert = alert.kind.as_str(),
                        dropped,
                        "alert webhook queue full, dropping security alert"
                    );
                }
            }
        }
    }

    async fn flush(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        while !self.settled() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("alert webhook queue not drained in time");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

impl WebhookSink {
    /// Whether every queued alert was delivered or given up.
    fn settled(&self) -> bool {
        let c = &self.counters;
        c.delivered.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed)
            >= c.queued.load(Ordering::Relaxed)
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

async fn deliver_all(
    mut rx: mpsc::Receiver<Alert>,
    client: reqwest::Client,
    url: Url,
    config: WebhookConfig,
    counters: Arc<Counters>,
) {
    while let Some(alert) = rx.recv().await {
        deliver(&client, &url, &config, &counters, &alert).await;
    }
}

enum Attempt {
    Delivered,
    Retry(String),
    GiveUp(String),
}

async fn deliver(
    client: &reqwest::Client,
    url: &Url,
    config: &WebhookConfig,
    counters: &Counters,
    alert: &Alert,
) {
    let body = alert.to_json();
    let attempts = config.max_attempts.max(1);
    let mut backoff = config.initial_backoff;
    for attempt in 1..=attempts {
        let outcome = match client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => Attempt::Delivered,
            Ok(resp) if resp.status().is_redirection() => Attempt::GiveUp(format!(
                "http {} (redirects are not followed)",
                resp.status()
            )),
            Ok(resp) if retryable(resp.status()) => {
                Attempt::Retry(format!("http {}", resp.status()))
            }
            Ok(resp) => Attempt::GiveUp(format!("http {}", resp.status())),
            // `without_url`: the URL may hold a token.
            Err(err) => Attempt::Retry(err.without_url().to_string()),
        };
        match outcome {
            Attempt::Delivered => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Attempt::GiveUp(reason) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(alert = alert.kind.as_str(), %reason, "alert webhook refused the alert");
                return;
            }
            Attempt::Retry(reason) if attempt < attempts => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    alert = alert.kind.as_str(),
                    attempt,
                    %reason,
                    retry_in_ms = backoff.as_millis() as u64,
                    "alert webhook delivery failed, retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.max_backoff);
            }
            Attempt::Retry(reason) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    alert = alert.kind.as_str(),
                    attempts,
                    %reason,
                    body = %body,
                    "alert webhook delivery failed, giving up"
                );
            }
        }
    }
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
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
    fn retry_classification() {
        assert!(retryable(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(retryable(StatusCode::REQUEST_TIMEOUT));
        assert!(!retryable(StatusCode::BAD_REQUEST));
        assert!(!retryable(StatusCode::NOT_FOUND));
    }
}
