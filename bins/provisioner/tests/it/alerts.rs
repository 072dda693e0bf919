//! Issue 16, Done-when 4: alerts live in the store's outbox until the webhook takes them. A
//! webhook that refuses connections, then answers 500, then redirects loses no alert across a
//! restart, never holds provisioning up, and has no redirect followed; every alert is also in
//! the audit log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use test_support::process::free_port;
use tokio::io::AsyncWriteExt;

use crate::status_api::StatusApi;
use crate::support::{World, read_request, spawn_logged, stop, wait_all_activated, wait_healthy};

/// A loopback webhook on `port` answering its requests in turn from `script` (status line and
/// extra headers), 200 once the script is used up, and keeping the bodies it answered 200.
struct Hook {
    port: u16,
    requests: Arc<Mutex<usize>>,
    accepted: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Hook {
    async fn start(port: u16, script: Vec<String>) -> Hook {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let requests: Arc<Mutex<usize>> = Arc::default();
        let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
        let (count, kept) = (Arc::clone(&requests), Arc::clone(&accepted));
        let script = Arc::new(script);
        let server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (count, kept, script) =
                    (Arc::clone(&count), Arc::clone(&kept), Arc::clone(&script));
                tokio::spawn(async move {
                    let Some(body) = read_request(&mut stream).await else {
                        return;
                    };
                    let n = {
                        let mut c = count.lock().unwrap();
                        *c += 1;
                        *c - 1
                    };
                    let answer = match script.get(n) {
                        Some(answer) => answer.clone(),
                        None => {
                            kept.lock().unwrap().push(body);
                            "200 OK\r\n".to_owned()
                        }
                    };
                    let _ = stream
                        .write_all(
                            format!(
                                "HTTP/1.1 {answer}content-length: 0\r\nconnection: close\r\n\r\n"
                            )
                            .as_bytes(),
                        )
                        .await;
                });
            }
        });
        Hook {
            port,
            requests,
            accepted,
            server,
        }
    }

    fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }

    fn accepted(&self) -> Vec<serde_json::Value> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The outbox rows (kind, body) and the `alert_raised` audit records' alert kinds.
fn stored(db: &std::path::Path) -> (Vec<(String, String)>, Vec<String>) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut q = conn
        .prepare("SELECT kind, body FROM alert_outbox ORDER BY id")
        .unwrap();
    let outbox = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut q = conn
        .prepare("SELECT record FROM audit_log ORDER BY seq")
        .unwrap();
    let audited = q
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r).ok()?;
            (v["action"] == "alert_raised")
                .then(|| v["details"]["alert"].as_str().map(str::to_owned))?
        })
        .collect();
    (outbox, audited)
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_down_webhook_loses_no_alert_across_a_restart_and_no_redirect_is_followed() {
    let world = World::start(4, 2).await;
    let port = free_port();
    let hook_port = free_port();
    let mut env: BTreeMap<String, String> = world.env(port);
    env.insert(
        "SECURITY_ALERT_WEBHOOK".into(),
        format!("http://127.0.0.1:{hook_port}/hook"),
    );
    env.insert("SECURITY_ALERT_MAX_BACKOFF".into(), "200ms".into());
    let db = world.dir.path().join("provisioner.db");
    let log = world.dir.path().join("run.log");

    // 1. Nothing listens at the webhook: every delivery is refused. Provisioning goes on.
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    world.publish_all();
    let mut api = StatusApi::new(port);
    for _ in 0..10 {
        let answer = api
            .get(
                &format!("/v1/orders/{}/status", world.seeded.events[0].order_id),
                &[
                    ("authorization", "Bearer not-the-token"),
                    ("x-customer-number", "C-1"),
                ],
            )
            .await;
        assert_eq!(answer.status, 401);
    }
    wait_all_activated(&world, Duration::from_secs(60)).await;
    stop(&mut child).await;

    let (waiting, audited) = stored(&db);
    let kinds: Vec<&str> = waiting.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        kinds.contains(&"auth_failure_burst"),
        "the burst alert waits in the outbox: {kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| **k == "audit_head").count() >= 2,
        "the head witnessed on start and on shutdown: {kinds:?}"
    );
    // Every alert but the head witness is in the audit log.
    let mut expected: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| *k != "audit_head")
        .collect();
    expected.sort_unstable();
    let mut got: Vec<&str> = audited.iter().map(String::as_str).collect();
    got.sort_unstable();
    assert_eq!(got, expected);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("alert webhook delivery failed, will retry"),
        "deliveries were tried while the webhook was down"
    );

    // 2. The webhook comes back answering 500 twice, then a redirect (to a second receiver)
    // twice, then 200. The restarted provisioner delivers everything the first one left.
    let target = Hook::start(free_port(), Vec::new()).await;
    let redirect = format!(
        "307 Temporary Redirect\r\nlocation: http://127.0.0.1:{}/elsewhere\r\n",
        target.port
    );
    let hook = Hook::start(
        hook_port,
        vec![
            "500 Internal Server Error\r\n".into(),
            "500 Internal Server Error\r\n".into(),
            redirect.clone(),
            redirect,
        ],
    )
    .await;
    let mut child = spawn_logged(&["run"], &env, &log);
    wait_healthy(port, Duration::from_secs(30)).await;
    let bodies: Vec<serde_json::Value> = waiting
        .iter()
        .map(|(_, b)| serde_json::from_str(b).unwrap())
        .collect();
    wait_until(
        "every alert left by the first process delivered",
        Duration::from_secs(60),
        || {
            let accepted = hook.accepted();
            bodies.iter().all(|b| accepted.contains(b))
        },
    )
    .await;
    assert!(
        hook.requests() >= 4 + bodies.len(),
        "500s and redirects answered first"
    );
    assert_eq!(target.requests(), 0, "no redirect was followed");
    stop(&mut child).await;
}
