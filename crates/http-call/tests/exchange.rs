//! The client against loopback servers that answer with raw bytes: what it sends, what it
//! follows (nothing), its deadline and its cap, and the error classes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http_call::{Error, HttpClient, Stage};
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Reads one request head and its `Content-Length` body; returns the whole request text.
async fn read_request(socket: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the client closed before a whole request");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

/// A server for one connection: reads one request, sends it to the test, writes `reply`,
/// then keeps the connection open until the test ends.
async fn serve_once(reply: &'static [u8]) -> (String, oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let request = read_request(&mut socket).await;
        let _ = tx.send(request);
        socket.write_all(reply).await.unwrap();
        // Held open: the client must end on the reply's own framing.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    (url, rx)
}

fn client() -> HttpClient {
    HttpClient::builder()
        .connect_timeout(Duration::from_secs(5))
        .user_agent("http-call-test/1")
        .build()
        .unwrap()
}

/// Sends with the test client and a 10 s deadline; the reply's headers must arrive.
async fn send_ok(request: http::Request<Bytes>) -> http_call::Response {
    client()
        .send(request, Duration::from_secs(10))
        .await
        .unwrap()
}

fn post(url: &str, body: &'static str) -> http::Request<Bytes> {
    http::Request::post(format!("{url}/includes/api.php"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Bytes::from_static(body.as_bytes()))
        .unwrap()
}

#[tokio::test]
async fn sends_the_request_as_given_and_reads_the_reply() {
    let (url, seen) = serve_once(
        b"HTTP/1.1 200 OK\r\ncontent-length: 17\r\nx-extra: 1\r\n\r\n{\"result\":\"ok\"}\r\n",
    )
    .await;
    let reply = send_ok(post(&url, "action=X&a=1")).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.headers()["x-extra"], "1");
    assert_eq!(reply.bytes(1024).await.unwrap(), b"{\"result\":\"ok\"}\r\n");
    let request = seen.await.unwrap();
    let lower = request.to_ascii_lowercase();
    assert!(
        request.starts_with("POST /includes/api.php HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(lower.contains("\r\nhost: 127.0.0.1:"), "{request}");
    assert!(lower.contains("\r\ncontent-length: 12\r\n"), "{request}");
    assert!(
        lower.contains("\r\nuser-agent: http-call-test/1\r\n"),
        "{request}"
    );
    assert!(request.ends_with("\r\n\r\naction=X&a=1"), "{request}");
}

#[tokio::test]
async fn a_request_keeps_its_own_user_agent() {
    let (url, seen) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let mut request = post(&url, "");
    request
        .headers_mut()
        .insert("user-agent", http::HeaderValue::from_static("mine/2"));
    let reply = send_ok(request).await;
    assert_eq!(reply.status(), 204);
    let request = seen.await.unwrap().to_ascii_lowercase();
    assert!(request.contains("\r\nuser-agent: mine/2\r\n"), "{request}");
    assert!(!request.contains("http-call-test"), "{request}");
}

#[tokio::test]
async fn a_redirect_comes_back_as_it_came() {
    let (url, _seen) = serve_once(
        b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/elsewhere\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    let reply = send_ok(post(&url, "a=1")).await;
    assert_eq!(reply.status(), 302);
    assert_eq!(reply.headers()["location"], "http://127.0.0.1:1/elsewhere");
    assert!(reply.bytes(16).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused() {
    let (url, _seen) = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789").await;
    let reply = send_ok(post(&url, "")).await;
    let err = reply.bytes(9).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 9 }), "{err:?}");
    let (url, _seen) = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789").await;
    let reply = send_ok(post(&url, "")).await;
    assert_eq!(reply.bytes(10).await.unwrap(), b"0123456789");
}

#[tokio::test]
async fn the_deadline_covers_the_headers() {
    // No reply at all, ever: only the deadline can end the wait.
    let (url, _seen) = serve_once(b"").await;
    let err = client()
        .send(post(&url, ""), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                stage: Stage::BeforeHeaders
            }
        ),
        "{err:?}"
    );
    assert!(err.is_timeout() && !err.is_connect());
}

#[tokio::test]
async fn the_deadline_covers_the_body() {
    // Headers promise ten bytes; three come, then nothing, ever.
    let (url, _seen) = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").await;
    let reply = client()
        .send(post(&url, ""), Duration::from_millis(300))
        .await
        .unwrap();
    let err = reply.bytes(1024).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { stage: Stage::Body }),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "timed out while reading the reply");
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = client()
        .send(
            post(&format!("http://127.0.0.1:{port}"), ""),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(err.to_string().starts_with("connect failed: "), "{err}");
    assert!(
        !err.to_string().contains("127.0.0.1"),
        "no address in the text: {err}"
    );
}

#[tokio::test]
async fn a_connection_closed_before_the_reply_is_lost_not_connect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let _ = read_request(&mut socket).await;
        drop(socket);
    });
    let err = client()
        .send(post(&url, "a=1"), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Lost {
                stage: Stage::BeforeHeaders,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_connect() && !err.is_timeout());
}

#[tokio::test]
async fn a_server_certificate_outside_the_webpki_roots_is_refused_at_connect() {
    let cert = test_support::tls::self_signed();
    let certs =
        vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, handshake) = oneshot::channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let _ = tx.send(acceptor.accept(socket).await.is_ok());
    });
    let err = client()
        .send(
            post(&format!("https://localhost:{port}"), "secret=1"),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(!handshake.await.unwrap(), "the handshake must not complete");
}

#[test]
fn a_user_agent_that_is_not_a_header_value_is_a_build_error() {
    let err = HttpClient::builder()
        .user_agent("bad\nagent")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Build { .. }), "{err:?}");
}

/// An HTTPS server for `cert` offering `alpn`; answers each request with its HTTP version
/// and body, as `<version> <body>`.
async fn tls_server(cert: &test_support::tls::SelfSigned, alpn: &[&[u8]]) -> u16 {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let certs =
        vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(socket).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let service =
                    service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt as _;
                        let version = format!("{:?}", request.version());
                        let body = request.into_body().collect().await?.to_bytes();
                        let mut reply = version.into_bytes();
                        reply.push(b' ');
                        reply.extend_from_slice(&body);
                        Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                            Bytes::from(reply),
                        )))
                    });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    port
}

fn trusting(cert: &test_support::tls::SelfSigned) -> HttpClient {
    HttpClient::builder()
        .add_root_certificates_pem(cert.cert_pem.clone())
        .build()
        .unwrap()
}

#[tokio::test]
async fn https_speaks_http2_where_the_server_offers_it() {
    let cert = test_support::tls::self_signed();
    let port = tls_server(&cert, &[b"h2", b"http/1.1"]).await;
    let client = trusting(&cert);
    for n in 0..2 {
        let body: &'static str = if n == 0 { "first" } else { "second" };
        let reply = client
            .send(
                post(&format!("https://localhost:{port}"), body),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        let text = String::from_utf8(reply.bytes(1024).await.unwrap()).unwrap();
        assert_eq!(text, format!("HTTP/2.0 {body}"));
    }
}

#[tokio::test]
async fn https_speaks_http1_to_a_server_without_http2() {
    let cert = test_support::tls::self_signed();
    let port = tls_server(&cert, &[b"http/1.1"]).await;
    let reply = trusting(&cert)
        .send(
            post(&format!("https://localhost:{port}"), "form=1"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let text = String::from_utf8(reply.bytes(1024).await.unwrap()).unwrap();
    assert_eq!(text, "HTTP/1.1 form=1");
}

#[test]
fn an_added_root_that_is_not_a_certificate_is_a_build_error() {
    for pem in [
        "",
        "not a pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        let err = HttpClient::builder()
            .add_root_certificates_pem(pem)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Build { .. }), "{pem:?}: {err:?}");
    }
}
