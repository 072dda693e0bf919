//! The HTTP listener: what the status API does with a connection before any request is read.
//!
//! A peer outside the allowlist is closed at accept, before a byte is read; past
//! [`ServeOptions::max_connections`] open connections, new ones are closed at accept too (the
//! ones already open keep being served); a connection that does not finish a request head within
//! [`ServeOptions::header_read_timeout`] — a slow or half-sent head, or an idle keep-alive
//! connection waiting for its next request — is closed. With [`ServeOptions::tls`], the TLS
//! handshake comes first, in the connection's own task: it counts against the connection cap
//! and must finish within the same header read timeout, and a failed one closes only its
//! connection.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use security::IpAllowlist;
use tower::ServiceExt as _;

use crate::error::{Error, Result};
use crate::tls::TlsConfig;

/// The default of `HTTP_MAX_CONNECTIONS`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The default of `HTTP_READ_TIMEOUT`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest time shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How the listener treats connections.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Open connections at most (`HTTP_MAX_CONNECTIONS`); past it new ones are closed at once.
    pub max_connections: usize,
    /// How long a connection may take to send a whole request head, and how long an idle
    /// keep-alive connection is kept (`HTTP_READ_TIMEOUT`).
    pub header_read_timeout: Duration,
    /// Peers outside it are closed at accept, before anything is read (the router's own
    /// allowlist still answers 403 to anything that gets through).
    pub allowlist: Option<IpAllowlist>,
    /// Serve HTTPS with this certificate and key (`PROVISIONER_TLS_CERT_FILE`,
    /// `PROVISIONER_TLS_KEY_FILE`); `None` serves plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            allowlist: None,
            tls: None,
        }
    }
}

/// Connections refused at accept, by reason (`allowlist`, `capacity`).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "provisioner_http_connections_refused_total";

/// Serves `router` on `listener` with `options` until `shutdown` completes, then lets in-flight
/// requests finish (at most ten seconds).
///
/// Requests carry their peer address (`ConnectInfo<SocketAddr>`), which the allowlist needs.
///
/// # Errors
/// [`Error::Serve`] when accepting fails in a way that will not pass (not a per-connection
/// error such as a reset or too many open files, which are logged and waited out).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    let allowlist = options.allowlist.map(Arc::new);
    let acceptor = options.tls.as_ref().map(TlsConfig::acceptor);
    let handshake_timeout = options.header_read_timeout;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_transient(&e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; trying again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(source) => return Err(Error::Serve { source }),
            },
        };
        if let Some(allowlist) = &allowlist
            && !allowlist.allows(peer.ip())
        {
            metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => "allowlist").increment(1);
            drop(stream);
            continue;
        }
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => "capacity").increment(1);
            drop(stream);
            continue;
        };
        tracing::trace!("connection accepted");
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request)
            },
        );
        // Shutdown waits for this connection from here on, a TLS handshake included.
        let watcher = graceful.watcher();
        let http = http.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A client that goes away or sends garbage ends its own connection only.
            let served = match acceptor {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            watcher
                                .watch(http.serve_connection(TokioIo::new(tls), service))
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish before shutdown");
    }
    Ok(())
}

/// Accept errors that concern one connection or a passing shortage (file descriptors).
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock
            | ErrorKind::TimedOut
    ) || e
        .raw_os_error()
        .is_some_and(|code| code == 24 || code == 23) // EMFILE, ENFILE
}
