//! Per-route fault injection: latency, HTTP errors, Salesforce error bodies, dropped connections,
//! and answers lost or delayed after the change was committed.

use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The sandbox's routes, for counting and fault injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Route {
    /// `POST /services/oauth2/token`.
    Token,
    /// `GET /services/data/{version}/query` and `.../query/{locator}`.
    Query,
    /// `PATCH /services/data/{version}/sobjects/Order/{id}`.
    Patch,
    /// `POST /services/data/{version}/composite`.
    Composite,
    /// `GET /services/data/{version}/sobjects/{sObject}/describe`.
    Describe,
    /// `GET` and `POST /services/oauth2/userinfo`.
    UserInfo,
}

/// What an injected fault does.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FaultKind {
    /// Delay the request, then handle it normally (combines with other faults).
    Latency(Duration),
    /// Answer with this HTTP status and the body Salesforce would send for it
    /// (`SERVER_UNAVAILABLE` for 503, `UNKNOWN_EXCEPTION` for other 5xx on REST routes;
    /// an OAuth error body on the token route).
    Status(u16),
    /// Answer with a Salesforce REST error body of your choosing, e.g. 400 `UNABLE_TO_LOCK_ROW`.
    SalesforceError {
        /// HTTP status.
        status: u16,
        /// `errorCode`.
        error_code: String,
        /// `message`.
        message: String,
    },
    /// Answer `302 Found` with this `Location` (as a proxy or a moved endpoint would); the
    /// request is not handled.
    Redirect(String),
    /// Close the connection without answering.
    DropConnection,
    /// Handle the request (its changes are committed), then close the connection without
    /// answering: the client cannot tell whether anything happened.
    CommitThenDrop,
    /// Handle the request (its changes are committed), then hold the answer this long: a client
    /// that gives up meanwhile sees a timeout although the change was made.
    DelayAnswer(Duration),
}

/// When an injected fault fires.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Trigger {
    /// The next `n` requests on the route.
    Next(u32),
    /// Every `n`th request on the route (the `n`th, `2n`th, ...), counted from injection.
    EveryNth(u32),
    /// Each request with this probability (0.0..=1.0), drawn from the sandbox's seeded RNG.
    Probability(f64),
    /// Every request until cleared.
    Always,
}

#[derive(Debug)]
struct Rule {
    route: Route,
    kind: FaultKind,
    trigger: Trigger,
    seen: u64,
}

/// The fault table of one sandbox; get it with `SalesforceSandbox::faults`.
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    rng: Mutex<StdRng>,
    fired: Mutex<Vec<(Route, FaultKind)>>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rules: Mutex::new(Vec::new()),
            rng: Mutex::new(StdRng::seed_from_u64(0x5A1E_5F0C)),
            fired: Mutex::new(Vec::new()),
        }
    }
}

impl Faults {
    /// Adds a fault on `route`.
    pub fn inject(&self, route: Route, kind: FaultKind, trigger: Trigger) {
        self.rules.lock().push(Rule {
            route,
            kind,
            trigger,
            seen: 0,
        });
    }

    /// Shorthand: the next `n` requests on `route` get `kind`.
    pub fn fail_next(&self, route: Route, n: u32, kind: FaultKind) {
        self.inject(route, kind, Trigger::Next(n));
    }

    /// Removes every fault on `route`.
    pub fn clear(&self, route: Route) {
        self.rules.lock().retain(|r| r.route != route);
    }

    /// Removes every fault.
    pub fn clear_all(&self) {
        self.rules.lock().clear();
    }

    /// Reseeds the RNG behind [`Trigger::Probability`].
    pub fn seed(&self, seed: u64) {
        *self.rng.lock() = StdRng::seed_from_u64(seed);
    }

    /// How many faults have fired on `route` so far.
    pub fn fired(&self, route: Route) -> usize {
        self.fired
            .lock()
            .iter()
            .filter(|(r, _)| *r == route)
            .count()
    }

    /// The faults that fire for one request on `route`, in injection order; spent
    /// [`Trigger::Next`] rules are removed.
    pub(crate) fn take(&self, route: Route) -> Vec<FaultKind> {
        let mut rules = self.rules.lock();
        let mut rng = self.rng.lock();
        let mut firing = Vec::new();
        for rule in rules.iter_mut().filter(|r| r.route == route) {
            rule.seen += 1;
            let fires = match rule.trigger {
                Trigger::Next(n) => rule.seen <= u64::from(n),
                Trigger::EveryNth(n) => n > 0 && rule.seen.is_multiple_of(u64::from(n)),
                Trigger::Probability(p) => rng.random_bool(p.clamp(0.0, 1.0)),
                Trigger::Always => true,
            };
            if fires {
                firing.push(rule.kind.clone());
            }
        }
        rules.retain(|r| !matches!(r.trigger, Trigger::Next(n) if r.seen >= u64::from(n)));
        self.fired
            .lock()
            .extend(firing.iter().map(|k| (route, k.clone())));
        firing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_fire_as_documented() {
        let faults = Faults::default();
        faults.fail_next(Route::Query, 2, FaultKind::Status(503));
        faults.inject(Route::Patch, FaultKind::Status(500), Trigger::EveryNth(3));
        let query: Vec<usize> = (0..4).map(|_| faults.take(Route::Query).len()).collect();
        assert_eq!(query, vec![1, 1, 0, 0]);
        let patch: Vec<usize> = (0..6).map(|_| faults.take(Route::Patch).len()).collect();
        assert_eq!(patch, vec![0, 0, 1, 0, 0, 1]);
        assert_eq!(faults.fired(Route::Query), 2);
        assert!(faults.take(Route::Token).is_empty());
    }

    #[test]
    fn probability_is_reproducible_with_a_seed() {
        let draw = |seed| {
            let faults = Faults::default();
            faults.seed(seed);
            faults.inject(
                Route::Query,
                FaultKind::Status(503),
                Trigger::Probability(0.5),
            );
            (0..64)
                .map(|_| faults.take(Route::Query).len())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let hits: usize = draw(7).iter().sum();
        assert!(hits > 0 && hits < 64, "{hits}");
    }
}
