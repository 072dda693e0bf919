//! The one wiring of an [`Engine`]: its ports, its configuration, the per-customer
//! provisioning rate, the outcome channel and the subscriber. `provisioner run`, `provisioner
//! demo`, the benches and the integration tests all build their engine here, so a change to
//! [`Ports`] or [`Engine`] is made in one place.

use std::sync::Arc;

use audit::AuditLog;
use provisioner_store::Store;
use sf_pubsub::PubSubApi;
use sf_rest::OrderApi;
use tokio::sync::mpsc::UnboundedSender;
use whmcs_client::WhmcsApi;

use crate::alerts::Alerts;
use crate::config::EngineConfig;
use crate::engine::{Engine, EngineHandle};
use crate::job::{JobOutcome, Ports};
use crate::subscriber::{SubscriberConfig, SubscriberStatus};

/// Builds an [`Engine`] and, with [`EngineBuilder::start`], starts it together with its
/// subscriber.
///
/// ```no_run
/// # use std::sync::Arc;
/// # fn ports() -> (
/// #     Arc<dyn sf_rest::OrderApi>,
/// #     Arc<dyn whmcs_client::WhmcsApi>,
/// #     Arc<dyn provisioner_store::Store>,
/// #     Arc<dyn audit::AuditLog>,
/// #     Arc<dyn provisioner_core::Alerts>,
/// #     Arc<dyn sf_pubsub::PubSubApi>,
/// # ) { unimplemented!() }
/// # async fn run() {
/// use provisioner_core::{DEFAULT_PROVISION_RATE, EngineBuilder, EngineConfig};
/// use provisioner_core::subscriber::SubscriberConfig;
///
/// let (orders, whmcs, store, audit, alerts, pubsub) = ports();
/// let running = EngineBuilder::new(orders, whmcs, store, audit, alerts)
///     .config(EngineConfig::default())
///     .provision_rate(DEFAULT_PROVISION_RATE)
///     .subscriber(pubsub, SubscriberConfig::default())
///     .start();
/// // ... until SIGTERM:
/// running.handle.shutdown().await;
/// # }
/// ```
pub struct EngineBuilder {
    ports: Ports,
    config: EngineConfig,
    provision_rate: Option<crate::job::ProvisionLimit>,
    outcomes: Option<UnboundedSender<(String, JobOutcome)>>,
    subscriber: Option<Subscription>,
}

/// The subscriber [`EngineBuilder::start`] runs.
struct Subscription {
    pubsub: Arc<dyn PubSubApi>,
    config: SubscriberConfig,
}

/// An engine started by [`EngineBuilder::start`].
pub struct RunningEngine {
    /// The engine (intake, reconcile, the store port).
    pub engine: Engine,
    /// Stops the workers, the sweeps and the subscriber gracefully.
    pub handle: EngineHandle,
    /// The subscriber's status (for `/readyz`), when one was started.
    pub subscriber: Option<Arc<SubscriberStatus>>,
}

impl EngineBuilder {
    /// An engine over these ports, with [`EngineConfig::default`], no provisioning rate, no
    /// outcome channel and no subscriber.
    pub fn new(
        orders: Arc<dyn OrderApi>,
        whmcs: Arc<dyn WhmcsApi>,
        store: Arc<dyn Store>,
        audit: Arc<dyn AuditLog>,
        alerts: Arc<dyn Alerts>,
    ) -> Self {
        EngineBuilder {
            ports: Ports {
                orders,
                whmcs,
                store,
                audit,
                alerts,
                clock: Arc::new(crate::clock::SystemClock::new()),
                opener: None,
            },
            config: EngineConfig::default(),
            provision_rate: None,
            outcomes: None,
            subscriber: None,
        }
    }

    /// The engine configuration.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock the engine runs on (default: [`crate::SystemClock`]); a simulation or a test
    /// gives its own.
    pub fn clock(mut self, clock: Arc<dyn crate::Clock>) -> Self {
        self.ports.clock = clock;
        self
    }

    /// Limits each customer's provisioning to `rate` (`CUSTOMER_PROVISION_RATE`); without it,
    /// customers are not limited.
    pub fn provision_rate(mut self, rate: security::Rate) -> Self {
        self.provision_rate = Some(crate::job::ProvisionLimit::process(rate));
        self
    }

    /// Limits each customer's provisioning to `rate`, held in the store so that every instance
    /// on the same database draws from one state per customer (use it on PostgreSQL); replaces
    /// [`provision_rate`](Self::provision_rate).
    pub fn shared_provision_rate(mut self, rate: security::Rate) -> Self {
        self.provision_rate = Some(crate::job::ProvisionLimit::shared(rate));
        self
    }

    /// Opens the config options the order intake sealed (see
    /// [`crate::order_intake::OptionOpener`]).
    pub fn option_opener(mut self, opener: Arc<dyn crate::order_intake::OptionOpener>) -> Self {
        self.ports.opener = Some(opener);
        self
    }

    /// Sends every job outcome to `tx` (progress display, benches, tests).
    pub fn outcomes(mut self, tx: UnboundedSender<(String, JobOutcome)>) -> Self {
        self.outcomes = Some(tx);
        self
    }

    /// Runs the Pub/Sub subscriber over `pubsub` as one of the engine's tasks, started by
    /// [`EngineBuilder::start`].
    pub fn subscriber(mut self, pubsub: Arc<dyn PubSubApi>, config: SubscriberConfig) -> Self {
        self.subscriber = Some(Subscription { pubsub, config });
        self
    }

    /// The engine, not started (for callers that start it later or only run a sweep). A
    /// subscriber given to [`EngineBuilder::subscriber`] is not started: start it with
    /// [`Engine::spawn_subscriber`], or use [`EngineBuilder::start`].
    pub fn build(self) -> Engine {
        self.into_parts().0
    }

    /// Builds the engine and starts its workers, the reconcile sweep, key rotation and, when
    /// given, the subscriber. Must be called within a Tokio runtime.
    pub fn start(self) -> RunningEngine {
        let (engine, subscriber) = self.into_parts();
        let mut handle = engine.start();
        let subscriber =
            subscriber.map(|s| engine.spawn_subscriber(&mut handle, s.pubsub, s.config));
        RunningEngine {
            engine,
            handle,
            subscriber,
        }
    }

    fn into_parts(self) -> (Engine, Option<Subscription>) {
        let mut engine = Engine::new(self.ports, self.config, self.provision_rate);
        if let Some(tx) = self.outcomes {
            engine = engine.with_outcomes(tx);
        }
        (engine, self.subscriber)
    }
}
