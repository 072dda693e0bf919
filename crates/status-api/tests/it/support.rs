//! A running status API and a seeded store for one test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use provisioner_store::{
    JobEnd, JobSource, JobState, NewJob, SqlStore, Step, StepUpdate, Store, StoreOptions,
};
use secrecy::SecretString;
use security::{Alert, AlertKind, AlertSink, DetectorConfig, SecurityMonitor, Thresholds};
use status_api::{StatusApiBuilder, StatusApiState};
use tokio::sync::oneshot;

pub(crate) const TOKEN: &str = "portal-token-0123456789abcdef";
pub(crate) const OWNER: &str = "C-000123";
pub(crate) const OTHER: &str = "C-000999";
pub(crate) const LEASE: Duration = Duration::from_secs(30);
const MASTER: &str = "base64:q6v4cT9JkA0x3Fz1lVZqM2fY7p5dE8rW1nB6cH4sK0o=";

/// 2026-11-29T00:00:00Z plus `secs`.
pub(crate) fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

/// A SQLite store in its own temporary directory.
pub(crate) struct TestStore {
    pub(crate) store: Arc<SqlStore>,
    _dir: tempfile::TempDir,
}

impl TestStore {
    pub(crate) async fn open() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/provisioner.db", dir.path().display());
        let master = field_crypto::MasterKey::from_config(MASTER).unwrap();
        let store = SqlStore::open(&url, &master, StoreOptions::default())
            .await
            .unwrap();
        Self {
            store: Arc::new(store),
            _dir: dir,
        }
    }

    pub(crate) fn dyn_store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// A job for `order` of `customer`, stored at `at(0)` and not yet worked on.
    pub(crate) async fn received(&self, order: &str, customer: &str) {
        let job = NewJob {
            order_id: order.to_owned(),
            customer_number: customer.to_owned(),
            account_id: Some("001000000000001AAA".to_owned()),
            event_id: Some(format!("evt-{order}")),
            source: JobSource::Event,
        };
        assert!(self.store.enqueue(job, Vec::new(), at(0)).await.unwrap());
    }

    /// Claims `order` (it must be the next runnable job).
    pub(crate) async fn claim(&self, order: &str, now: DateTime<Utc>) {
        let job = self.store.claim("w1", now, LEASE).await.unwrap().unwrap();
        assert_eq!(job.order_id, order);
    }

    /// `order` provisioned: WHMCS order 4711 with services 101 and 102, done at `at(300)`.
    pub(crate) async fn provisioned(&self, order: &str, customer: &str) {
        self.received(order, customer).await;
        self.claim(order, at(1)).await;
        let ordered = StepUpdate {
            whmcs_order_id: Some("4711".to_owned()),
            service_ids: None,
            intent_timeout: None,
        };
        self.store
            .advance(
                order,
                "w1:1",
                Step::WhmcsOrdered,
                ordered,
                Vec::new(),
                at(2),
            )
            .await
            .unwrap();
        let accepted = StepUpdate {
            whmcs_order_id: None,
            service_ids: Some(vec!["101".to_owned(), "102".to_owned()]),
            intent_timeout: None,
        };
        self.store
            .advance(order, "w1:1", Step::Accepted, accepted, Vec::new(), at(3))
            .await
            .unwrap();
        self.store
            .finish(
                order,
                "w1:1",
                JobEnd {
                    state: JobState::Done,
                    error: None,
                    dead_letter: None,
                },
                Vec::new(),
                at(300),
            )
            .await
            .unwrap();
    }

    /// `order` ended as failed with `error`, at `at(60)`.
    pub(crate) async fn failed(&self, order: &str, customer: &str, error: &str) {
        self.received(order, customer).await;
        self.claim(order, at(1)).await;
        self.store
            .finish(
                order,
                "w1:1",
                JobEnd {
                    state: JobState::Failed,
                    error: Some(error.to_owned()),
                    dead_letter: None,
                },
                Vec::new(),
                at(60),
            )
            .await
            .unwrap();
    }
}

/// Alerts the monitor handed over.
#[derive(Default)]
pub(crate) struct RecordingSink(Mutex<Vec<Alert>>);

impl RecordingSink {
    pub(crate) fn kinds(&self) -> Vec<AlertKind> {
        self.0.lock().unwrap().iter().map(|a| a.kind).collect()
    }

    pub(crate) fn alerts(&self) -> Vec<Alert> {
        self.0.lock().unwrap().clone()
    }
}

#[async_trait]
impl AlertSink for RecordingSink {
    async fn send(&self, alert: Alert) {
        self.0.lock().unwrap().push(alert);
    }
}

/// A monitor whose detectors alert on the first event, sending to the returned sink.
pub(crate) fn eager_monitor() -> (SecurityMonitor, Arc<RecordingSink>) {
    let sink = Arc::new(RecordingSink::default());
    let once = DetectorConfig::new(1, Duration::from_secs(60));
    let thresholds = Thresholds {
        auth_failures: once,
        status_not_found: once,
        rate_limited: once,
        ..Thresholds::default()
    };
    (SecurityMonitor::new(sink.clone(), thresholds), sink)
}

/// The builder every test starts from: the test token, default settings otherwise.
pub(crate) fn builder(store: Arc<dyn Store>) -> StatusApiBuilder {
    StatusApiState::builder(store, SecretString::from(TOKEN))
}

/// A status API serving on 127.0.0.1 with an ephemeral port; shut down on drop.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Server {
    pub(crate) async fn start(state: StatusApiState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let router = status_api::router(state);
        tokio::spawn(async move {
            status_api::serve(listener, router, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            shutdown: Some(tx),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET /v1/orders/{order}/status` as `customer` with `token`.
    pub(crate) async fn status(
        &self,
        order: &str,
        customer: Option<&str>,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .get(self.url(&format!("/v1/orders/{order}/status")));
        if let Some(customer) = customer {
            request = request.header("X-Customer-Number", customer);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// A lookup with the right token.
    pub(crate) async fn lookup(&self, order: &str, customer: &str) -> reqwest::Response {
        self.status(order, Some(customer), Some(TOKEN)).await
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Status and body of a response.
pub(crate) async fn parts(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}
