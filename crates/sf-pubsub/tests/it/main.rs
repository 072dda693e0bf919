//! Integration tests of `sf-pubsub` against the Pub/Sub sandbox.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod decode;
mod subscribe;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sandbox::pubsub::{PubSubConfig, PubSubSandbox, SANDBOX_ACCESS_TOKEN};
use secrecy::SecretString;
use sf_auth::{AccessToken, TokenSource};
use sf_pubsub::{ClientConfig, Event, Message, PubSubClient, Record, Subscription};

pub const TOPIC: &str = sf_pubsub::DEFAULT_TOPIC;

/// A token source for tests: hands out `tokens[generation - 1]` and moves to the next one when
/// the current one is invalidated; counts mints.
pub struct TestTokens {
    tokens: Vec<String>,
    generation: AtomicU64,
    mints: AtomicU64,
}

impl TestTokens {
    pub fn new(tokens: &[&str]) -> Arc<Self> {
        Arc::new(TestTokens {
            tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
            generation: AtomicU64::new(1),
            mints: AtomicU64::new(0),
        })
    }

    pub fn mints(&self) -> u64 {
        self.mints.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl TokenSource for TestTokens {
    async fn token(&self) -> sf_auth::Result<AccessToken> {
        let generation = self.generation.load(Ordering::SeqCst);
        let index = usize::try_from(generation - 1)
            .unwrap()
            .min(self.tokens.len() - 1);
        // Count a mint the first time each generation is handed out.
        let _ = self
            .mints
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                (m < generation).then_some(generation)
            });
        Ok(AccessToken {
            token: SecretString::from(self.tokens[index].clone()),
            instance_url: "https://sandbox.my.salesforce.com".into(),
            org_id: sandbox::pubsub::SANDBOX_ORG_ID.into(),
            generation,
        })
    }

    fn invalidate(&self, stale: &AccessToken) {
        let _ = self.generation.compare_exchange(
            stale.generation,
            stale.generation + 1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

pub async fn sandbox(config: PubSubConfig) -> PubSubSandbox {
    PubSubSandbox::start(config).await.unwrap()
}

pub fn client(sandbox: &PubSubSandbox, tokens: Arc<dyn TokenSource>) -> PubSubClient {
    PubSubClient::new(ClientConfig::new(sandbox.endpoint()), tokens).unwrap()
}

pub fn default_client(sandbox: &PubSubSandbox) -> PubSubClient {
    client(sandbox, TestTokens::new(&[SANDBOX_ACCESS_TOKEN]))
}

/// The next message, or a failure after a generous safety limit (not a timing assertion).
pub async fn next<R: Record>(sub: &mut Subscription<R>) -> Message<R> {
    tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("no message within 60 s")
        .expect("subscription ended")
        .expect("subscription failed")
}

/// The next `n` events, skipping keepalives.
pub async fn events<R: Record>(sub: &mut Subscription<R>, n: usize) -> Vec<Event<R>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next(sub).await {
            Message::Event(e) => out.push(e),
            Message::Keepalive { .. } => {}
            Message::ReplayReset { .. } => panic!("unexpected replay reset"),
        }
    }
    out
}
