//! Fault injection per action: queued faults (the next `n` calls, or every call) and faults
//! drawn at a seeded rate.

use std::time::Duration;

use super::server::{Shared, WhmcsSandbox};
use super::state::State;

/// A fault to inject into one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long before handling the request.
    Latency(Duration),
    /// Answer HTTP 500 with an HTML page, without handling the request.
    Html500,
    /// Handle the request (commit its changes), then close the connection without replying.
    CommitThenDrop,
    /// Hold the request this long, then commit it whether or not the client is still waiting:
    /// a slow server module or a slow table that commits after the client gave up. What WHMCS
    /// reads first is read on arrival (AcceptOrder refuses an order that is not Pending at
    /// once); nothing is locked while it is held, so other calls, on the same order too, run
    /// meanwhile and see the state from before the commit: a second AcceptOrder of the order
    /// finds it Pending and runs the module again, as WHMCS's own AcceptOrder would.
    HoldThenCommit(Duration),
}

/// A queued fault and how many more calls it hits (`None`: every call).
pub(super) struct FaultEntry {
    pub(super) fault: Fault,
    pub(super) remaining: Option<u32>,
}

impl WhmcsSandbox {
    /// Injects `fault` into `action` (case-insensitive) for the next `times` calls, or for
    /// every call when `times` is `None`. Faults queue up in the order injected.
    pub fn inject_fault(&self, action: &str, fault: Fault, times: Option<u32>) {
        Self::inject_into(&self.shared, action, fault, times);
    }

    /// [`WhmcsSandbox::inject_fault`] on the shared state (the admin route has no handle).
    pub(super) fn inject_into(shared: &Shared, action: &str, fault: Fault, times: Option<u32>) {
        shared
            .state
            .lock()
            .faults
            .entry(action.to_ascii_lowercase())
            .or_default()
            .push(FaultEntry {
                fault,
                remaining: times,
            });
    }

    /// Injects `fault` into each call of `action` with `probability` (0.0..=1.0), drawn from a
    /// random generator seeded with `seed` so runs repeat. Queued faults of
    /// [`WhmcsSandbox::inject_fault`] take precedence.
    pub fn inject_fault_rate(&self, action: &str, fault: Fault, probability: f64, seed: u64) {
        use rand::SeedableRng;
        let mut state = self.shared.state.lock();
        if state.rng.is_none() {
            state.rng = Some(rand::rngs::StdRng::seed_from_u64(seed));
        }
        state
            .rate_faults
            .entry(action.to_ascii_lowercase())
            .or_default()
            .push((fault, probability.clamp(0.0, 1.0)));
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        Self::clear_in(&self.shared);
    }

    /// [`WhmcsSandbox::clear_faults`] on the shared state.
    pub(super) fn clear_in(shared: &Shared) {
        let mut state = shared.state.lock();
        state.faults.clear();
        state.rate_faults.clear();
    }
}

pub(super) fn take_fault(state: &mut State, action_key: &str) -> Option<Fault> {
    if let Some(queued) = take_queued_fault(state, action_key) {
        return Some(queued);
    }
    let State {
        rate_faults, rng, ..
    } = state;
    let rng = rng.as_mut()?;
    for (fault, p) in rate_faults.get(action_key)? {
        if rand::Rng::random::<f64>(rng) < *p {
            return Some(fault.clone());
        }
    }
    None
}

fn take_queued_fault(state: &mut State, action_key: &str) -> Option<Fault> {
    let queue = state.faults.get_mut(action_key)?;
    let entry = queue.first_mut()?;
    let fault = entry.fault.clone();
    if let Some(remaining) = entry.remaining.as_mut() {
        *remaining = remaining.saturating_sub(1);
        if *remaining == 0 {
            queue.remove(0);
        }
    }
    Some(fault)
}
