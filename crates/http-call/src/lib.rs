#![doc = include_str!("../README.md")]

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, USER_AGENT};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as Pool;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::time::Instant;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// TCP keepalive: idle time before the first probe, and between probes.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// TCP keepalive probes unanswered before the connection is dropped.
const KEEPALIVE_RETRIES: u32 = 3;

/// How long sent data may stay unacknowledged before the connection is dropped (Linux).
#[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

pub use bytes::Bytes;
/// The `http` crate this API speaks ([`http::Request`], [`http::Uri`],
/// headers), so callers need no version of their own.
pub use http;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Why an exchange failed. Its text never holds the URL, a header or a body: only what went
/// wrong and the transport's own explanation (an OS error, a TLS alert).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client could not be built (a user agent that is not a header value, a TLS setup
    /// failure).
    #[error("cannot build the http client: {reason}")]
    Build {
        /// What was wrong.
        reason: String,
    },
    /// No connection could be made (refused, unreachable, the connect timeout, a TLS handshake
    /// failure): nothing of the request reached the server.
    #[error("connect failed: {detail}")]
    Connect {
        /// The transport's explanation.
        detail: String,
    },
    /// The deadline of the exchange passed. The request may have reached the server.
    #[error("timed out {stage}")]
    Timeout {
        /// Where the exchange was when the deadline passed.
        stage: Stage,
    },
    /// The connection failed after it was made (reset, closed early, a malformed reply). The
    /// request may have reached the server.
    #[error("connection lost {stage}: {detail}")]
    Lost {
        /// Where the exchange was.
        stage: Stage,
        /// The transport's explanation.
        detail: String,
    },
    /// The reply's body is larger than the caller's cap; the rest was not read.
    #[error("reply body larger than {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
}

impl Error {
    /// Whether no connection was made, so the request was certainly not sent.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect { .. })
    }

    /// Whether the exchange's deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}

/// Where an exchange was when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Before the reply's status line and headers had arrived.
    BeforeHeaders,
    /// While the reply's body was read.
    Body,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::BeforeHeaders => "before the reply's headers",
            Stage::Body => "while reading the reply",
        })
    }
}

/// Settings of an [`HttpClient`], from [`HttpClient::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    connect_timeout: Duration,
    user_agent: Option<String>,
    extra_roots: Vec<String>,
}

impl Builder {
    /// The longest a TCP connect may take (default 10 s). The TLS handshake counts against
    /// the exchange's deadline.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The `User-Agent` of every request that does not set its own (default: none).
    #[must_use]
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = Some(agent.into());
        self
    }

    /// Trusts the certificates of `pem` (one or more `BEGIN CERTIFICATE` blocks) besides the
    /// webpki roots: a private CA. Checked by [`Builder::build`].
    #[must_use]
    pub fn add_root_certificates_pem(mut self, pem: impl Into<String>) -> Self {
        self.extra_roots.push(pem.into());
        self
    }

    /// The client: TLS 1.2 and 1.3 by rustls (ring) trusting the webpki (Mozilla) roots and
    /// any added ones, HTTP/2 where the server's TLS offers it, HTTP/1.1 otherwise.
    pub fn build(self) -> Result<HttpClient, Error> {
        let user_agent = self
            .user_agent
            .map(|agent| {
                HeaderValue::from_str(&agent).map_err(|_| Error::Build {
                    reason: "the user agent is not a valid header value".to_owned(),
                })
            })
            .transpose()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots: rustls::RootCertStore =
            webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect();
        for pem in &self.extra_roots {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|_| Error::Build {
                    reason: "an added root certificate is not valid PEM".to_owned(),
                })?;
                roots.add(cert).map_err(|e| Error::Build {
                    reason: format!("an added root certificate cannot be used: {e}"),
                })?;
                added += 1;
            }
            if added == 0 {
                return Err(Error::Build {
                    reason: "an added root certificate PEM holds no certificate".to_owned(),
                });
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Build {
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(self.connect_timeout));
        // A pooled connection whose peer vanished (a host gone, a NAT entry dropped) is found
        // by TCP keepalive, and unacknowledged data gives up after TCP_USER_TIMEOUT, instead
        // of a request waiting on it until its deadline. The values reqwest uses.
        tcp.set_keepalive(Some(KEEPALIVE));
        tcp.set_keepalive_interval(Some(KEEPALIVE));
        tcp.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        tcp.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let pool = Pool::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Ok(HttpClient { pool, user_agent })
    }
}

/// How long an exchange may take: `timeout`, or less when the caller's `deadline` comes
/// sooner. `None` when the deadline has passed: the request must not be sent at all (a caller
/// that bounds when a write may still be out, by a recorded intent or a lease).
pub fn time_left(deadline: Option<tokio::time::Instant>, timeout: Duration) -> Option<Duration> {
    match deadline {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            (!left.is_zero()).then(|| left.min(timeout))
        }
        None => Some(timeout),
    }
}

/// A pooled HTTP client for request/reply exchanges whose body is known up front. Cheap to
/// clone (clones share the pool).
///
/// It sends exactly the request it is given: the caller sets the headers (`Host` and
/// `Content-Length` are added). A redirect is returned as it came, never followed, and no
/// proxy is used (`HTTP_PROXY` and its kind are not read).
#[derive(Clone)]
pub struct HttpClient {
    pool: Pool<Connector, Full<Bytes>>,
    user_agent: Option<HeaderValue>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// The default settings, to change before [`Builder::build`].
    pub fn builder() -> Builder {
        Builder {
            connect_timeout: Duration::from_secs(10),
            user_agent: None,
            extra_roots: Vec::new(),
        }
    }

    /// Sends `request` (its URI absolute, `http` or `https`) and waits for the reply's
    /// headers. `timeout` bounds the whole exchange, the reading of the body through
    /// [`Response::bytes`] included.
    pub async fn send(
        &self,
        mut request: Request<Bytes>,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let deadline = Instant::now() + timeout;
        if let Some(agent) = &self.user_agent {
            request
                .headers_mut()
                .entry(USER_AGENT)
                .or_insert_with(|| agent.clone());
        }
        let sent = tokio::time::timeout_at(deadline, self.pool.request(request.map(Full::new)));
        match sent.await {
            Err(_) => Err(Error::Timeout {
                stage: Stage::BeforeHeaders,
            }),
            Ok(Err(e)) if e.is_connect() => Err(Error::Connect { detail: chain(&e) }),
            Ok(Err(e)) => Err(Error::Lost {
                stage: Stage::BeforeHeaders,
                detail: chain(&e),
            }),
            Ok(Ok(reply)) => {
                let (head, body) = reply.into_parts();
                Ok(Response {
                    head,
                    body,
                    deadline,
                })
            }
        }
    }
}

/// A reply whose headers have arrived; the body is read with [`Response::bytes`] before the
/// exchange's deadline.
#[derive(Debug)]
pub struct Response {
    head: http::response::Parts,
    body: Incoming,
    deadline: Instant,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.head.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.head.headers
    }

    /// Reads the whole body, at most `limit` bytes (more is [`Error::TooLarge`]), before the
    /// exchange's deadline.
    pub async fn bytes(mut self, limit: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        loop {
            let frame = match tokio::time::timeout_at(self.deadline, self.body.frame()).await {
                Err(_) => return Err(Error::Timeout { stage: Stage::Body }),
                Ok(None) => return Ok(out),
                Ok(Some(Err(e))) => {
                    return Err(Error::Lost {
                        stage: Stage::Body,
                        detail: chain(&e),
                    });
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if out.len().saturating_add(data.len()) > limit {
                    return Err(Error::TooLarge { limit });
                }
                if out.is_empty() {
                    out.reserve_exact(data.len());
                }
                out.extend_from_slice(&data);
            }
        }
    }
}

/// An error and its sources, `: `-separated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_is_the_timeout_or_less_and_none_past_the_deadline() {
        let timeout = Duration::from_secs(30);
        let now = tokio::time::Instant::now();
        assert_eq!(time_left(None, timeout), Some(timeout));
        assert_eq!(time_left(Some(now), timeout), None);
        let soon = time_left(Some(now + Duration::from_secs(5)), timeout);
        assert!(
            soon.is_some_and(|left| left <= Duration::from_secs(5)),
            "{soon:?}"
        );
        assert_eq!(
            time_left(Some(now + Duration::from_secs(3600)), timeout),
            Some(timeout)
        );
    }
}
