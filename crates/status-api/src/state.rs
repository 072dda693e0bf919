//! [`StatusApiState`]: everything the routes need, built with [`StatusApiBuilder`].

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use provisioner_store::Store;
use secrecy::{ExposeSecret, SecretString};
use security::{IpAllowlist, KeyedRateLimiter, LogSink, Period, Rate, SecurityMonitor, Thresholds};

use crate::{Error, Result};

/// The default of `CUSTOMER_STATUS_RATE`: 60 lookups a minute per customer, burst 60.
pub const DEFAULT_STATUS_RATE: Rate = Rate::new(
    match NonZeroU32::new(60) {
        Some(count) => count,
        None => panic!("60 is not zero"),
    },
    Period::Minute,
);

/// The default of `HTTP_IP_RATE`: 600 requests a minute per client address.
pub const DEFAULT_IP_RATE: Rate = Rate::new(
    match NonZeroU32::new(600) {
        Some(count) => count,
        None => panic!("600 is not zero"),
    },
    Period::Minute,
);

/// How long `/readyz` waits for the store's ping by default before calling it unreachable.
pub const DEFAULT_READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// The subscriber half of readiness: `true` when the Pub/Sub subscriber is connected, or when
/// it is disabled (`SF_EVENTS_ENABLED=false`) or run by another instance.
pub type SubscriberProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// Shared state of the status API routes. Cheap to clone (an `Arc` inside).
///
/// Its `Debug` output shows the allowlist and the rate, never the token.
#[derive(Clone)]
pub struct StatusApiState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    allowlist: IpAllowlist,
    trusted_proxies: IpAllowlist,
    token: SecretString,
    previous_token: Option<SecretString>,
    limiter: KeyedRateLimiter<String>,
    ip_limiter: KeyedRateLimiter<std::net::IpAddr>,
    monitor: SecurityMonitor,
    subscriber_ready: SubscriberProbe,
    readiness_timeout: Duration,
    metrics: Option<PrometheusHandle>,
    order_desk: Option<Arc<dyn crate::OrderDesk>>,
}

impl StatusApiState {
    /// Starts building the state from the two things that have no default: the store and the
    /// portal's bearer token (`PORTAL_API_TOKEN`).
    pub fn builder(store: Arc<dyn Store>, portal_token: SecretString) -> StatusApiBuilder {
        StatusApiBuilder {
            store,
            token: portal_token,
            previous_token: None,
            allowlist: None,
            trusted_proxies: IpAllowlist::deny_all(),
            rate: DEFAULT_STATUS_RATE,
            ip_rate: DEFAULT_IP_RATE,
            monitor: None,
            subscriber_ready: None,
            readiness_timeout: DEFAULT_READINESS_TIMEOUT,
            metrics: None,
            order_desk: None,
        }
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    pub(crate) fn allowlist(&self) -> &IpAllowlist {
        &self.inner.allowlist
    }

    /// Peers whose `X-Forwarded-For` names the client (`HTTP_TRUSTED_PROXIES`).
    pub(crate) fn trusted_proxies(&self) -> &IpAllowlist {
        &self.inner.trusted_proxies
    }

    pub(crate) fn token(&self) -> &[u8] {
        self.inner.token.expose_secret().as_bytes()
    }

    /// The token being rotated out, still accepted (`PORTAL_API_TOKEN_PREVIOUS`).
    pub(crate) fn previous_token(&self) -> Option<&[u8]> {
        self.inner
            .previous_token
            .as_ref()
            .map(|t| t.expose_secret().as_bytes())
    }

    pub(crate) fn limiter(&self) -> &KeyedRateLimiter<String> {
        &self.inner.limiter
    }

    pub(crate) fn ip_limiter(&self) -> &KeyedRateLimiter<std::net::IpAddr> {
        &self.inner.ip_limiter
    }

    pub(crate) fn monitor(&self) -> &SecurityMonitor {
        &self.inner.monitor
    }

    pub(crate) fn subscriber_ready(&self) -> bool {
        (self.inner.subscriber_ready)()
    }

    pub(crate) fn readiness_timeout(&self) -> Duration {
        self.inner.readiness_timeout
    }

    pub(crate) fn order_desk(&self) -> Option<&Arc<dyn crate::OrderDesk>> {
        self.inner.order_desk.as_ref()
    }

    pub(crate) fn metrics(&self) -> Option<&PrometheusHandle> {
        self.inner.metrics.as_ref()
    }
}

impl fmt::Debug for StatusApiState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusApiState")
            .field("allowlist", &self.inner.allowlist.to_string())
            .field("status_rate", &self.inner.limiter.rate().to_string())
            .field("token", &"[redacted]")
            .field("readiness_timeout", &self.inner.readiness_timeout)
            .field("metrics", &self.inner.metrics.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`StatusApiState`]; every setting but the store and the token has a default.
#[must_use]
pub struct StatusApiBuilder {
    store: Arc<dyn Store>,
    token: SecretString,
    previous_token: Option<SecretString>,
    allowlist: Option<IpAllowlist>,
    trusted_proxies: IpAllowlist,
    rate: Rate,
    ip_rate: Rate,
    monitor: Option<SecurityMonitor>,
    subscriber_ready: Option<SubscriberProbe>,
    readiness_timeout: Duration,
    metrics: Option<PrometheusHandle>,
    order_desk: Option<Arc<dyn crate::OrderDesk>>,
}

impl StatusApiBuilder {
    /// Serves `POST /v1/orders` through `desk`; without one that route answers 404.
    pub fn order_desk(mut self, desk: Arc<dyn crate::OrderDesk>) -> Self {
        self.order_desk = Some(desk);
        self
    }

    /// Reverse proxies in front of the API (`HTTP_TRUSTED_PROXIES`; default none). Only for a
    /// request from one of them is the client address taken from `X-Forwarded-For`: the
    /// rightmost address that is not itself a trusted proxy. The allowlist, the per-address
    /// rate and the detectors then see that client; from any other peer the header is ignored.
    pub fn trusted_proxies(mut self, proxies: IpAllowlist) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// A second token accepted beside the current one while the portal switches over
    /// (`PORTAL_API_TOKEN_PREVIOUS`): set the new token as current and the old one here, move
    /// the portal, then drop this. An empty token is ignored.
    pub fn previous_token(mut self, token: SecretString) -> Self {
        self.previous_token = (!token.expose_secret().is_empty()).then_some(token);
        self
    }

    /// Addresses allowed to call any route (`HTTP_ALLOWED_CIDRS`); default loopback only
    /// ([`IpAllowlist::DEFAULT`]).
    pub fn allowlist(mut self, allowlist: IpAllowlist) -> Self {
        self.allowlist = Some(allowlist);
        self
    }

    /// Requests per client address on every route (`HTTP_IP_RATE`), whatever they ask for:
    /// past it, 429 and a `rate_limit_abuse` alert for the address; default
    /// [`DEFAULT_IP_RATE`].
    pub fn ip_rate(mut self, rate: Rate) -> Self {
        self.ip_rate = rate;
        self
    }

    /// Status lookups per customer (`CUSTOMER_STATUS_RATE`); default
    /// [`DEFAULT_STATUS_RATE`].
    pub fn status_rate(mut self, rate: Rate) -> Self {
        self.rate = rate;
        self
    }

    /// The process's security monitor, fed with auth failures, 404s and rate-limit refusals;
    /// default a monitor with default thresholds that only logs its alerts.
    pub fn monitor(mut self, monitor: SecurityMonitor) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// The subscriber half of readiness (see [`SubscriberProbe`]); default always ready, as
    /// for a disabled subscriber.
    pub fn subscriber_ready(mut self, probe: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.subscriber_ready = Some(Arc::new(probe));
        self
    }

    /// How long `/readyz` waits for the store; default [`DEFAULT_READINESS_TIMEOUT`].
    pub fn readiness_timeout(mut self, timeout: Duration) -> Self {
        self.readiness_timeout = timeout;
        self
    }

    /// The installed Prometheus recorder's handle, rendered by `/metrics`; without one,
    /// `/metrics` answers 404.
    pub fn metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// The state.
    ///
    /// # Errors
    /// [`Error::EmptyToken`] when the portal token is empty.
    pub fn build(self) -> Result<StatusApiState> {
        if self.token.expose_secret().is_empty() {
            return Err(Error::EmptyToken);
        }
        let allowlist = match self.allowlist {
            Some(allowlist) => allowlist,
            // The default always parses; should it not, deny everything rather than allow.
            None => {
                IpAllowlist::parse(IpAllowlist::DEFAULT).unwrap_or_else(|_| IpAllowlist::deny_all())
            }
        };
        let monitor = self
            .monitor
            .unwrap_or_else(|| SecurityMonitor::new(Arc::new(LogSink), Thresholds::default()));
        let subscriber_ready = self
            .subscriber_ready
            .unwrap_or_else(|| Arc::new(|| true) as SubscriberProbe);
        Ok(StatusApiState {
            inner: Arc::new(Inner {
                store: self.store,
                allowlist,
                trusted_proxies: self.trusted_proxies,
                token: self.token,
                previous_token: self.previous_token,
                limiter: KeyedRateLimiter::new(self.rate),
                ip_limiter: KeyedRateLimiter::new(self.ip_rate),
                monitor,
                subscriber_ready,
                readiness_timeout: self.readiness_timeout,
                metrics: self.metrics,
                order_desk: self.order_desk,
            }),
        })
    }
}
