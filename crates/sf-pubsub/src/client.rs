//! The gRPC client: connection, per-call metadata, token re-mint, schema cache, publish.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sf_auth::{AccessToken, TokenSource};
use tokio::sync::OnceCell;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::avro::WriterSchema;
use crate::proto::pub_sub_client::PubSubClient as Grpc;
use crate::proto::{ProducerEvent, PublishRequest, SchemaRequest, TopicInfo, TopicRequest};
use crate::record::{OrderProvisionRequested, Record};
use crate::subscribe::{SubscribeConfig, Subscription};
use crate::{Action, Error, Result};

/// How to reach the Pub/Sub API.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// `https://api.pubsub.salesforce.com:7443`, or `http://127.0.0.1:<port>` (plaintext,
    /// sandbox only).
    pub endpoint: String,
    /// An extra trusted root certificate (PEM), besides the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Largest gRPC message accepted; tonic's default of 4 MiB is too small for a batch of
    /// events of up to 1 MB each.
    pub max_decoding_message_size: usize,
    /// HTTP/2 PING interval. gRPC servers commonly disconnect an idle client that pings more
    /// often than every 5 minutes (`GOAWAY` "too many pings"), so values below that are raised
    /// to 5 minutes; `None` disables PINGs.
    pub http2_keepalive: Option<Duration>,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// Defaults for `endpoint`: 16 MiB messages, PINGs every 5 minutes, 10 s connect timeout.
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            ca_pem: None,
            max_decoding_message_size: 16 * 1024 * 1024,
            http2_keepalive: Some(Duration::from_secs(300)),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Adds an extra trusted root (PEM).
    pub fn with_ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.ca_pem = Some(pem);
        self
    }
}

/// Outcome of publishing one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event id sent, or the server's UUID.
    pub correlation_key: String,
    /// Replay id the event got (empty when it failed).
    pub replay_id: Vec<u8>,
    /// Why this event was not published, if it was not.
    pub error: Option<String>,
}

/// The Pub/Sub port the rest of the system depends on.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait PubSubApi: Send + Sync {
    /// `GetTopic`.
    async fn topic(&self, topic: &str) -> Result<TopicInfo>;
    /// The writer schema of `schema_id`, from the cache or `GetSchema`.
    async fn schema(&self, schema_id: &str) -> Result<Arc<WriterSchema>>;
    /// `Publish` of ready-made events.
    async fn publish(&self, topic: &str, events: Vec<ProducerEvent>) -> Result<Vec<Published>>;
    /// Encodes with the topic's current schema and publishes.
    async fn publish_orders(
        &self,
        topic: &str,
        events: Vec<OrderProvisionRequested>,
    ) -> Result<Vec<Published>>;
    /// Subscribes to `OrderProvisionRequested` events.
    fn subscribe_orders(&self, config: SubscribeConfig) -> Subscription<OrderProvisionRequested>;
}

type SchemaCell = Arc<OnceCell<Arc<WriterSchema>>>;

pub(crate) struct Inner {
    grpc: Grpc<Channel>,
    pub(crate) tokens: Arc<dyn TokenSource>,
    schemas: Mutex<HashMap<String, SchemaCell>>,
}

/// The Salesforce Pub/Sub API client. Cheap to clone; clones share the connection and the
/// schema cache.
#[derive(Clone)]
pub struct PubSubClient {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for PubSubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubClient").finish_non_exhaustive()
    }
}

impl PubSubClient {
    /// A client for `config.endpoint`; connects lazily, on the first call.
    pub fn new(config: ClientConfig, tokens: Arc<dyn TokenSource>) -> Result<Self> {
        let bad = |what: String| Error::Config { what };
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| bad(format!("endpoint {:?}: {e}", config.endpoint)))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true);
        if let Some(interval) = config.http2_keepalive {
            endpoint = endpoint
                .http2_keep_alive_interval(interval.max(Duration::from_secs(300)))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(false);
        }
        if config.endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(pem) = &config.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| bad(format!("tls: {e}")))?;
        } else if !config.endpoint.starts_with("http://") {
            return Err(bad(format!(
                "endpoint {:?} must start with https:// (or http:// for the sandbox)",
                config.endpoint
            )));
        }
        let grpc = Grpc::new(endpoint.connect_lazy())
            .max_decoding_message_size(config.max_decoding_message_size);
        Ok(PubSubClient {
            inner: Arc::new(Inner {
                grpc,
                tokens,
                schemas: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub(crate) fn grpc(&self) -> Grpc<Channel> {
        self.inner.grpc.clone()
    }

    pub(crate) async fn token(&self) -> Result<AccessToken> {
        self.inner
            .tokens
            .token()
            .await
            .map_err(|source| Error::Token { source })
    }

    /// Wraps `msg` with the metadata every RPC carries: `accesstoken`, `instanceurl`,
    /// `tenantid` and a fresh `x-client-trace-id`.
    pub(crate) fn request<T>(&self, msg: T, token: &AccessToken) -> Result<tonic::Request<T>> {
        let mut req = tonic::Request::new(msg);
        put_metadata(req.metadata_mut(), token)?;
        Ok(req)
    }

    async fn unary<Req, Resp, F, Fut>(&self, rpc: &'static str, msg: Req, call: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Grpc<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut reauthenticated = false;
        loop {
            let token = self.token().await?;
            let req = self.request(msg.clone(), &token)?;
            match call(self.grpc(), req).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => {
                    let err = Error::from_status(rpc, &status);
                    if err.action() == Action::Reauthenticate && !reauthenticated {
                        tracing::info!(rpc, "pub/sub rejected the token; minting a new one");
                        self.inner.tokens.invalidate(&token);
                        reauthenticated = true;
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// `GetTopic`: canonical name, permissions and current schema id of a topic.
    pub async fn get_topic(&self, topic: &str) -> Result<TopicInfo> {
        let msg = TopicRequest {
            topic_name: topic.to_owned(),
        };
        self.unary(
            "GetTopic",
            msg,
            |mut c, r| async move { c.get_topic(r).await },
        )
        .await
    }

    /// The writer schema of `schema_id`: one `GetSchema` per id for the life of the client,
    /// even when many tasks ask at once (schema ids are immutable fingerprints).
    pub async fn get_schema(&self, schema_id: &str) -> Result<Arc<WriterSchema>> {
        let cell = {
            let mut map = self
                .inner
                .schemas
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(schema_id.to_owned()).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            let msg = SchemaRequest {
                schema_id: schema_id.to_owned(),
            };
            let info = self
                .unary(
                    "GetSchema",
                    msg,
                    |mut c, r| async move { c.get_schema(r).await },
                )
                .await?;
            WriterSchema::parse(schema_id, &info.schema_json).map(Arc::new)
        })
        .await
        .cloned()
    }

    /// `Publish` of ready-made events; one [`Published`] per event, in order.
    pub async fn publish_events(
        &self,
        topic: &str,
        events: Vec<ProducerEvent>,
    ) -> Result<Vec<Published>> {
        let msg = PublishRequest {
            topic_name: topic.to_owned(),
            events,
            auth_refresh: String::new(),
        };
        let resp = self
            .unary("Publish", msg, |mut c, r| async move { c.publish(r).await })
            .await?;
        Ok(resp
            .results
            .into_iter()
            .map(|r| Published {
                correlation_key: r.correlation_key,
                replay_id: r.replay_id,
                error: r.error.map(|e| e.msg),
            })
            .collect())
    }

    /// Encodes `events` with the topic's current schema (`GetTopic` -> `GetSchema`) and
    /// publishes them, each with a fresh UUID as its id.
    pub async fn publish_orders(
        &self,
        topic: &str,
        events: &[OrderProvisionRequested],
    ) -> Result<Vec<Published>> {
        let info = self.get_topic(topic).await?;
        let schema = self.get_schema(&info.schema_id).await?;
        let events = events
            .iter()
            .map(|e| {
                Ok(ProducerEvent {
                    id: uuid::Uuid::new_v4().to_string(),
                    schema_id: info.schema_id.clone(),
                    payload: e.encode(&schema)?,
                    headers: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.publish_events(topic, events).await
    }

    /// Subscribes to `config.topic`, decoding every event into `R` with its own writer
    /// schema. See [`Subscription`].
    pub fn subscribe<R: Record>(&self, config: SubscribeConfig) -> Subscription<R> {
        Subscription::start(self.clone(), config)
    }
}

fn put_metadata(md: &mut MetadataMap, token: &AccessToken) -> Result<()> {
    let value = |field: &'static str, text: &str| {
        AsciiMetadataValue::try_from(text).map_err(|_| Error::Metadata { field })
    };
    let mut secret = value("accesstoken", token.secret())?;
    secret.set_sensitive(true);
    md.insert("accesstoken", secret);
    md.insert("instanceurl", value("instanceurl", &token.instance_url)?);
    md.insert("tenantid", value("tenantid", &token.org_id)?);
    md.insert(
        "x-client-trace-id",
        value("x-client-trace-id", &uuid::Uuid::new_v4().to_string())?,
    );
    Ok(())
}

#[async_trait]
impl PubSubApi for PubSubClient {
    async fn topic(&self, topic: &str) -> Result<TopicInfo> {
        self.get_topic(topic).await
    }

    async fn schema(&self, schema_id: &str) -> Result<Arc<WriterSchema>> {
        self.get_schema(schema_id).await
    }

    async fn publish(&self, topic: &str, events: Vec<ProducerEvent>) -> Result<Vec<Published>> {
        self.publish_events(topic, events).await
    }

    async fn publish_orders(
        &self,
        topic: &str,
        events: Vec<OrderProvisionRequested>,
    ) -> Result<Vec<Published>> {
        PubSubClient::publish_orders(self, topic, &events).await
    }

    fn subscribe_orders(&self, config: SubscribeConfig) -> Subscription<OrderProvisionRequested> {
        self.subscribe(config)
    }
}
