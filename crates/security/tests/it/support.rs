//! A loopback webhook receiver and a dead webhook.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One delivered request.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) content_type: Option<String>,
    pub(crate) body: String,
}

struct ReceiverState {
    fail_first: usize,
    attempts: AtomicUsize,
    tx: mpsc::UnboundedSender<Received>,
}

/// A webhook on 127.0.0.1 that answers 500 to the first `fail_first` requests and 204 after.
pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) rx: mpsc::UnboundedReceiver<Received>,
    state: Arc<ReceiverState>,
    server: JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start(fail_first: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(ReceiverState {
            fail_first,
            attempts: AtomicUsize::new(0),
            tx,
        });
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hook?token=s3cret",
            listener.local_addr().unwrap()
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            rx,
            state,
            server,
        }
    }

    /// Requests seen, failed ones included.
    pub(crate) fn attempts(&self) -> usize {
        self.state.attempts.load(Ordering::SeqCst)
    }

    /// The next accepted delivery (hang guard only, not a timing assertion).
    pub(crate) async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
            .await
            .expect("no alert arrived")
            .expect("receiver closed")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn hook(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let n = state.attempts.fetch_add(1, Ordering::SeqCst);
    if n < state.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let _ = state.tx.send(Received { content_type, body });
    StatusCode::NO_CONTENT
}

/// A webhook on 127.0.0.1 that accepts connections and never answers.
pub(crate) struct DeadWebhook {
    pub(crate) url: String,
    task: JoinHandle<()>,
}

impl DeadWebhook {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Self { url, task }
    }
}

impl Drop for DeadWebhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}
