//! The simulated outside world of one seed: virtual time, the seed's random choices, the
//! Salesforce Orders and the WHMCS orders, and the trace of every external call.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The Order statuses the engine is configured with (the defaults).
pub const APPROVED: &str = "Approved";
pub const PROVISIONING: &str = "Provisioning";
pub const ACTIVATED: &str = "Activated";
pub const FAILED: &str = "Provisioning Failed";
/// What a user sets when withdrawing the approval.
pub const DRAFT: &str = "Draft";
/// The WHMCS product custom field holding the Salesforce Order Id.
pub const REF_FIELD: u64 = 12;

/// How often each kind of fault happens in this seed (chosen per seed: calm seeds and stormy
/// ones).
#[derive(Clone, Debug)]
pub struct Faults {
    /// Longest one-way latency of a Salesforce or WHMCS call.
    pub max_latency_ms: u64,
    /// A Salesforce call fails before it does anything (503, timeout).
    pub sf_transient: f64,
    /// A PATCH is applied but its answer is lost.
    pub sf_lost_response: f64,
    /// A Salesforce call fails permanently (a validation rule): the Order's cause is permanent.
    pub sf_permanent: f64,
    /// A WHMCS call fails before WHMCS does anything.
    pub whmcs_transient: f64,
    /// AddOrder/AcceptOrder commits, but its answer is lost (unknown outcome).
    pub whmcs_lost_response: f64,
    /// AddOrder/AcceptOrder takes long: often past the client timeout, committing later (but
    /// before the timeout + `WHMCS_SETTLE`, the contract's bound).
    pub whmcs_slow: f64,
    /// A store call is held (a lock, a slow disk) for longer than a lease before it commits.
    pub store_slow: f64,
    /// A lease renewal fails (besides the windows of failing renewals).
    pub renew_fail: f64,
}

impl Faults {
    fn draw(rng: &mut StdRng) -> Self {
        // A third of the seeds are calm: the faults then come only from the scenario (crashes,
        // pauses, status changes, duplicate events).
        let storm = if rng.random_bool(0.33) {
            0.0
        } else {
            rng.random_range(0.2..1.0)
        };
        let mut p = |max: f64| rng.random_range(0.0..=max) * storm;
        Faults {
            max_latency_ms: 0,
            sf_transient: p(0.2),
            sf_lost_response: p(0.15),
            sf_permanent: p(0.01),
            whmcs_transient: p(0.2),
            whmcs_lost_response: p(0.25),
            whmcs_slow: p(0.3),
            store_slow: p(0.02),
            renew_fail: p(0.2),
        }
        .latency(rng)
    }

    fn latency(mut self, rng: &mut StdRng) -> Self {
        self.max_latency_ms = *[1u64, 20, 150, 600]
            .get(rng.random_range(0..4))
            .unwrap_or(&1);
        self
    }
}

/// A Salesforce Order as the org holds it.
#[derive(Clone, Debug)]
pub struct SfOrder {
    pub id: String,
    pub customer: String,
    pub client_id: u64,
    pub status: String,
    /// `(pid, quantity)` per OrderItem (none: unusable, a permanent cause).
    pub items: Vec<(u64, u32)>,
    pub whmcs_order_id: Option<String>,
    pub service_ids: Vec<String>,
    pub last_modified: DateTime<Utc>,
    /// The user's last word: approved (the Order must end provisioned or failed for a
    /// permanent cause) or withdrawn.
    pub approved_intent: bool,
    /// Something permanent is wrong with it (bad data, an inactive client, a validation rule
    /// that refused a PATCH): failing it is allowed.
    pub permanent_cause: bool,
}

/// A WHMCS order.
#[derive(Clone, Debug)]
pub struct WOrder {
    pub id: u64,
    pub client_id: u64,
    pub active: bool,
    /// The Salesforce Order Id its services carry in [`REF_FIELD`].
    pub sf_ref: String,
    pub services: Vec<(u64, u64)>,
}

/// Everything the outside holds, behind one lock.
#[derive(Debug, Default)]
pub struct State {
    pub orders: BTreeMap<String, SfOrder>,
    pub clients: BTreeMap<u64, bool>,
    pub whmcs: BTreeMap<u64, WOrder>,
    next_whmcs_id: u64,
    /// Module creates started, by WHMCS order (each AcceptOrder that found the order Pending).
    pub module_creates: BTreeMap<u64, u32>,
    /// WHMCS calls whose commit is still to land (held or slow).
    pub inflight: u32,
    /// Event batches handed to the subscriber and not yet stored.
    pub undelivered: u32,
    /// Invariant breaks seen as they happened.
    pub violations: Vec<String>,
    /// Every external call and scenario action, in order.
    pub trace: Vec<String>,
    /// Counters for the summary.
    pub stats: BTreeMap<&'static str, u64>,
}

impl State {
    /// A new WHMCS order for `sf_ref` with one service per line `(pid)`.
    pub fn add_whmcs_order(&mut self, client_id: u64, sf_ref: &str, pids: &[u64]) -> WOrder {
        self.next_whmcs_id += 1;
        let id = self.next_whmcs_id;
        let services = pids
            .iter()
            .enumerate()
            .map(|(i, pid)| (id * 100 + i as u64 + 1, *pid))
            .collect();
        let order = WOrder {
            id,
            client_id,
            active: false,
            sf_ref: sf_ref.to_owned(),
            services,
        };
        self.whmcs.insert(id, order.clone());
        order
    }

    /// Counts one occurrence of `what`.
    pub fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }
}

/// One seed's world.
#[derive(Debug)]
pub struct World {
    pub start: Instant,
    pub base: DateTime<Utc>,
    pub faults: Faults,
    rng: Mutex<StdRng>,
    state: Mutex<State>,
}

impl World {
    /// A world for `seed`; call inside the seed's (paused) runtime.
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5151_5eed);
        let faults = Faults::draw(&mut rng);
        World {
            start: Instant::now(),
            base: DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default(),
            faults,
            rng: Mutex::new(rng),
            state: Mutex::new(State::default()),
        }
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    /// The true time: the database's clock, and Salesforce's and WHMCS's.
    pub fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.elapsed()).unwrap_or_default()
    }

    /// The world's state (never held across an await).
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A seeded draw.
    pub fn rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut rng)
    }

    /// Whether an event of probability `p` happens now.
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng(|r| r.random_bool(p.min(1.0)))
    }

    /// A one-way latency.
    pub fn latency(&self) -> Duration {
        let max = self.faults.max_latency_ms;
        Duration::from_millis(self.rng(|r| r.random_range(0..=max)))
    }

    /// Appends a trace line stamped with the virtual time.
    pub fn trace(&self, line: impl AsRef<str>) {
        let ms = self.elapsed().as_millis();
        self.state()
            .trace
            .push(format!("{ms:>8} {}", line.as_ref()));
    }

    /// Records an invariant break.
    pub fn violation(&self, what: String) {
        self.trace(format!("VIOLATION {what}"));
        self.state().violations.push(what);
    }
}
