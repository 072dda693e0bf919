//! HTTPS: the status API with a certificate made in the test. The handshake is bounded by the
//! header read timeout and counted under the connection cap; a failed one ends only its own
//! connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use secrecy::SecretSlice;
use status_api::{ServeOptions, TlsConfig};
use test_support::tls::{SelfSigned, client_trusting, self_signed};
use tokio::io::AsyncReadExt as _;
use tokio::sync::oneshot;

use crate::support::{TestStore, builder, parts};

fn tls_config(cert: &SelfSigned) -> TlsConfig {
    let key = SecretSlice::from(cert.key_pem.clone().into_bytes());
    TlsConfig::from_pem(cert.cert_pem.as_bytes(), &key).unwrap()
}

/// Serves the API over TLS with `options`; stops when the sender is dropped.
async fn serve_tls(
    db: &TestStore,
    cert: &SelfSigned,
    options: ServeOptions,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = status_api::router(builder(db.dyn_store()).build().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let options = ServeOptions {
        tls: Some(tls_config(cert)),
        ..options
    };
    tokio::spawn(async move {
        status_api::serve_with(listener, router, options, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (addr, tx)
}

/// Waits until the server closes `stream` (EOF or reset); panics after `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Err(_) => panic!("the connection is still open after {limit:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            // A TLS alert before the close.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_healthz_and_plain_http_to_the_tls_port_fails() {
    let db = TestStore::open().await;
    let cert = self_signed();
    let (addr, _stop) = serve_tls(&db, &cert, ServeOptions::default()).await;
    let https = client_trusting(&cert.cert_pem);

    let response = https
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    let (status, body) = parts(response).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    // Plain HTTP to the TLS port: no answer, an error on the client's side.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let err = plain
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_status(), "{err:?}");

    // A client that does not trust the certificate fails its handshake ...
    let untrusting = reqwest::Client::builder().no_proxy().build().unwrap();
    let err = untrusting
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    // ... and neither failure affected the server: HTTPS still answers.
    let response = https
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_holds_a_connection_slot_until_the_read_timeout() {
    let db = TestStore::open().await;
    let cert = self_signed();
    let timeout = Duration::from_millis(600);
    let (addr, _stop) = serve_tls(
        &db,
        &cert,
        ServeOptions {
            max_connections: 1,
            header_read_timeout: timeout,
            ..ServeOptions::default()
        },
    )
    .await;

    // A peer that connects and never says hello takes the one slot ...
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ... so the next connection is closed at accept, at once.
    let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
    let waited = closed_within(&mut refused, Duration::from_secs(5)).await;
    assert!(waited < timeout, "refused after {waited:?}");

    // The silent one is closed when the read timeout ends its handshake ...
    let waited = closed_within(&mut silent, Duration::from_secs(10)).await;
    assert!(
        waited + Duration::from_millis(150) >= timeout,
        "closed after {waited:?}"
    );

    // ... and its slot is free again.
    let https = client_trusting(&cert.cert_pem);
    let response = https
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[test]
fn unusable_pem_is_a_configuration_error_that_shows_no_key() {
    let cert = self_signed();
    let other = self_signed();
    let key_line = cert.key_pem.lines().nth(1).unwrap().to_owned();
    let cases: [(&str, &[u8], String, &str); 4] = [
        (
            "certificate",
            b"not a certificate",
            cert.key_pem.clone(),
            "certificate",
        ),
        (
            "private key",
            cert.cert_pem.as_bytes(),
            String::new(),
            "private key",
        ),
        (
            "private key",
            cert.cert_pem.as_bytes(),
            cert.key_pem.replace(&key_line, "@@@@"),
            "private key",
        ),
        (
            "mismatch",
            cert.cert_pem.as_bytes(),
            other.key_pem.clone(),
            "configuration",
        ),
    ];
    for (name, cert_pem, key_pem, what) in cases {
        let key = SecretSlice::from(key_pem.into_bytes());
        let err = TlsConfig::from_pem(cert_pem, &key).unwrap_err();
        assert!(err.is_config(), "{name}: {err:?}");
        let status_api::Error::Tls { what: got, .. } = &err else {
            panic!("{name}: {err:?}");
        };
        assert_eq!(*got, what, "{name}: {err}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains(&key_line), "{name}: {text}");
        for line in other.key_pem.lines().skip(1).take(2) {
            assert!(!text.contains(line), "{name}: {text}");
        }
    }
    let config = tls_config(&cert);
    assert!(!format!("{config:?}").contains(&key_line));
}
