//! `--fault-rate`: probabilistic faults across Salesforce REST, WHMCS and Pub/Sub.

use sandbox::pubsub::PubSubSandbox;
use sandbox::salesforce::{FaultKind, Route, SalesforceSandbox, Trigger};
use sandbox::whmcs::{Fault, WhmcsSandbox};

/// WHMCS actions the provisioner calls.
const WHMCS_ACTIONS: [&str; 5] = [
    "GetClientsDetails",
    "GetClientsProducts",
    "GetOrders",
    "AddOrder",
    "AcceptOrder",
];

/// The non-idempotent WHMCS actions, which also get "commit, then drop the connection".
const WHMCS_UNKNOWN_OUTCOME_ACTIONS: [&str; 2] = ["AddOrder", "AcceptOrder"];

/// The fault settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FaultPlan {
    /// Probability of a fault per call, 0..=1.
    pub(crate) rate: f64,
    /// Seed of the dice.
    pub(crate) seed: u64,
    /// Explicit Pub/Sub `end_stream_every`.
    pub(crate) end_stream_every: Option<u64>,
}

impl FaultPlan {
    /// Pub/Sub streams end after this many events: the explicit value, else round(1/rate),
    /// else never (0).
    pub(crate) fn end_stream_every(&self) -> u64 {
        self.end_stream_every.unwrap_or_else(|| {
            if self.rate > 0.0 {
                // rate is in (0, 1], so this is in [1, +inf); `as` saturates.
                (1.0 / self.rate).round().max(1.0) as u64
            } else {
                0
            }
        })
    }
}

/// Arms the faults of `plan` in all three sandboxes.
pub(crate) fn apply(
    plan: &FaultPlan,
    sf: &SalesforceSandbox,
    whmcs: &WhmcsSandbox,
    pubsub: &PubSubSandbox,
) {
    if plan.rate > 0.0 {
        sf.faults().seed(plan.seed);
        for route in [Route::Query, Route::Patch, Route::Composite] {
            sf.faults().inject(
                route,
                FaultKind::Status(503),
                Trigger::Probability(plan.rate),
            );
        }
        // The order intake's create is not idempotent by itself: it also gets "commit, then
        // drop the connection" (the intake finds such an Order by its request id).
        sf.faults().inject(
            Route::Composite,
            FaultKind::CommitThenDrop,
            Trigger::Probability(plan.rate / 2.0),
        );
        for action in WHMCS_ACTIONS {
            whmcs.inject_fault_rate(action, Fault::Html500, plan.rate, plan.seed);
        }
        for action in WHMCS_UNKNOWN_OUTCOME_ACTIONS {
            whmcs.inject_fault_rate(action, Fault::CommitThenDrop, plan.rate / 2.0, plan.seed);
        }
    }
    pubsub.faults().end_stream_every(plan.end_stream_every());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_stream_length_follows_the_rate_unless_given() {
        let plan = |rate, end_stream_every| FaultPlan {
            rate,
            seed: 1,
            end_stream_every,
        };
        assert_eq!(plan(0.0, None).end_stream_every(), 0);
        assert_eq!(plan(0.1, None).end_stream_every(), 10);
        assert_eq!(plan(0.3, None).end_stream_every(), 3);
        assert_eq!(plan(1.0, None).end_stream_every(), 1);
        assert_eq!(plan(0.1, Some(0)).end_stream_every(), 0);
        assert_eq!(plan(0.0, Some(7)).end_stream_every(), 7);
    }
}
