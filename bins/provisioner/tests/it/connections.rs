//! Issue 16, Done-when 8: connection hygiene on the status API's listener. Connections that
//! never finish a request head are closed after `HTTP_READ_TIMEOUT`; past
//! `HTTP_MAX_CONNECTIONS` new connections are closed at once while an existing client is still
//! answered; a peer outside `HTTP_ALLOWED_CIDRS` is closed before anything is read. With
//! `PROVISIONER_TLS_CERT_FILE` and `PROVISIONER_TLS_KEY_FILE` the same listener speaks HTTPS.

use std::time::Duration;

use test_support::process::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{World, provisioner, spawn_logged, stop, unanswered, wait_healthy};

const READ_TIMEOUT: Duration = Duration::from_secs(5);
const CAP: usize = 8;

/// One GET on an open keep-alive connection: status code and body.
async fn get(stream: &mut TcpStream, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: provisioner\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = &text[..end];
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("a content-length");
        if buf.len() >= end + 4 + length {
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            return (status, text[end + 4..end + 4 + length].to_owned());
        }
    }
}

/// Reads until the server closes the connection (bytes it sent, or a reset): how long it took.
async fn until_closed(stream: &mut TcpStream) -> Duration {
    let started = tokio::time::Instant::now();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.read(&mut chunk))
            .await
            .expect("the server closes the connection")
        {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

/// The value of `metric{reason="..."}` in a Prometheus text page (0 when absent).
fn refused(page: &str, reason: &str) -> u64 {
    page.lines()
        .filter(|l| {
            l.starts_with(status_api::CONNECTIONS_REFUSED_TOTAL)
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_half_sent_capped_and_disallowed_connections_are_closed() {
    let world = World::start(1, 1).await;
    let port = free_port();
    let mut env = world.env(port);
    env.insert("HTTP_READ_TIMEOUT".into(), "5s".into());
    env.insert("HTTP_MAX_CONNECTIONS".into(), CAP.to_string());
    env.insert("HTTP_ALLOWED_CIDRS".into(), "127.0.0.1/32".into());
    let log = world.dir.path().join("run.log");
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    let addr = format!("127.0.0.1:{port}");

    // An existing client, served once on a keep-alive connection.
    let mut existing = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(get(&mut existing, "/healthz").await.0, 200);

    // The rest of the slots: connections whose request head never ends.
    let opened = tokio::time::Instant::now();
    let mut half_sent = Vec::new();
    for _ in 1..CAP {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: provisioner\r\n")
            .await
            .unwrap();
        half_sent.push(s);
    }
    // Past the cap: closed without an answer.
    unanswered(TcpStream::connect(&addr).await.unwrap()).await;
    // The existing client is still answered, and the refusal was counted.
    let (status, page) = get(&mut existing, "/metrics").await;
    assert_eq!(status, 200);
    assert!(refused(&page, "capacity") >= 1, "{page}");

    // The half-sent heads are closed by the server's read timeout, not before.
    for s in &mut half_sent {
        until_closed(s).await;
    }
    assert!(opened.elapsed() >= READ_TIMEOUT, "{:?}", opened.elapsed());

    // A peer outside the allowlist: closed before anything is read, no answer at all.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    unanswered(socket.connect(addr.parse().unwrap()).await.unwrap()).await;
    let mut fresh = TcpStream::connect(&addr).await.unwrap();
    let (status, page) = get(&mut fresh, "/metrics").await;
    assert_eq!(status, 200);
    assert!(refused(&page, "allowlist") >= 1, "{page}");

    stop(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_certificate_and_key_the_status_api_speaks_https() {
    let world = World::start(1, 1).await;
    let cert = test_support::tls::self_signed();
    let cert_file = world.dir.path().join("tls.crt");
    let key_file = world.dir.path().join("tls.key");
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&key_file, &cert.key_pem).unwrap();
    let port = free_port();
    let mut env = world.env(port);
    env.insert(
        "PROVISIONER_TLS_CERT_FILE".into(),
        cert_file.display().to_string(),
    );
    env.insert(
        "PROVISIONER_TLS_KEY_FILE".into(),
        key_file.display().to_string(),
    );

    // `config check` says TLS is on, and shows the paths but not the key.
    let (code, out) = provisioner(&["config", "check"], &env).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("# status API: HTTPS (TLS on)"), "{out}");
    assert!(
        out.contains(&format!("PROVISIONER_TLS_KEY_FILE={}", key_file.display())),
        "{out}"
    );

    let log = world.dir.path().join("run.log");
    let mut child = spawn_logged(&["run"], &env, &log);
    let https = test_support::tls::client_trusting(&cert.cert_pem);
    let url = format!("https://127.0.0.1:{port}/healthz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let response = loop {
        match https.get(&url).send().await {
            Ok(response) => break response,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no HTTPS answer: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"status":"ok"}"#);

    // Plain HTTP to the same port gets no HTTP answer.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let plain = plain
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    stop(&mut child).await;
    let logs = std::fs::read_to_string(&log).unwrap();
    for line in cert.key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!logs.contains(line), "the TLS key is in the log");
    }
}
