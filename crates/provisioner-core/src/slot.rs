//! Worker slots lent out while a job waits: between two attempts of one call, and for its
//! store writes to commit.
//!
//! The engine runs at most [`crate::EngineConfig::concurrency`] jobs at work at once: each
//! holds a worker slot (a semaphore permit). A job whose Salesforce or WHMCS call failed
//! transiently waits in the client before it sends the call again (a tenth of a second or
//! more); held through that wait, the slot would idle while other customers' jobs queue. Jobs
//! run inside [`Slot::scope`], and [`pause_outside_slot`] (the clients' pause hook) gives the
//! slot back for the wait and takes one again before the call is sent: the bound is on jobs
//! at work, not on jobs waiting. A job's fenced store writes go through [`outside_slot`] the
//! same way: on PostgreSQL each is a round trip, a commit and a flush of the server's log (a
//! millisecond or more under load, four writes per Order), and a slot held through them
//! idled a third of the time (one instance, 5,000 Orders: about 5.5 ms of 16.5 ms per Order
//! were store writes). Every call to Salesforce and WHMCS is still made holding a slot, so
//! the bound on calls in flight is unchanged. Jobs claimed at once stay bounded too
//! ([`CLAIMED_PER_SLOT`] per slot), and the job keeps its lease and its customer's turn
//! throughout.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Jobs one process may hold claimed at once, per worker slot: the jobs at work plus those
/// waiting between attempts with their slot lent out.
///
/// A wait in the client (a tenth of a second to seconds) is ten to a hundred times a job's
/// work between calls (milliseconds), so under a few percent of transient faults the waiting
/// jobs outnumber the working ones several times over (jobs claimed = claims per second x
/// time each is held). At 4 per slot the bound held back the claims in a run with 5% faults:
/// slots idled while other customers' jobs queued (99% of 10,000 Orders done at 21.4 s; at
/// 16 per slot, 17.4-18.4 s). A waiting job costs a sleeping task and its lease renewals.
pub const CLAIMED_PER_SLOT: usize = 16;

tokio::task_local! {
    static SLOT: Arc<Slot>;
}

/// The worker slot of the job that runs in this task.
pub(crate) struct Slot {
    permits: Arc<Semaphore>,
    held: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Slot {
    /// A job's slot: `permit`, taken from (and given back to) `permits`.
    pub(crate) fn new(permits: Arc<Semaphore>, permit: OwnedSemaphorePermit) -> Arc<Self> {
        Arc::new(Self {
            permits,
            held: Mutex::new(Some(permit)),
        })
    }

    /// Runs `job` with this slot as its own: a [`pause_outside_slot`] inside it lends it out.
    pub(crate) async fn scope<F: Future>(self: Arc<Self>, job: F) -> F::Output {
        SLOT.scope(self, job).await
    }

    /// Whether the job holds its slot now (not lent out).
    #[cfg(test)]
    pub(crate) fn holds(&self) -> bool {
        self.held.lock().map(|h| h.is_some()).unwrap_or(false)
    }

    /// Gives the held permit back to the semaphore; whether one was held.
    fn lend(&self) -> bool {
        // The permit returns to the semaphore as it is dropped here.
        self.held
            .lock()
            .ok()
            .and_then(|mut held| held.take())
            .is_some()
    }

    async fn take_back(&self) {
        // The semaphore is never closed; should it be, the job goes on without a slot.
        if let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await
            && let Ok(mut held) = self.held.lock()
        {
            *held = Some(permit);
        }
    }
}

/// Runs `f` (a store write) with the job's worker slot lent out, and takes a slot back
/// (waiting its turn for one) before it returns. Outside a job the engine runs, it only runs
/// `f`.
pub(crate) async fn outside_slot<F: Future>(f: F) -> F::Output {
    lent(SLOT.try_with(Arc::clone).ok(), f).await
}

/// Runs `f` with `slot` lent out, if it is held, and takes one back after; a slot that was
/// not held (already lent) is left as it is, so a job never takes a second one.
async fn lent<F: Future>(slot: Option<Arc<Slot>>, f: F) -> F::Output {
    let lender = slot.filter(|s| s.lend());
    let out = f.await;
    if let Some(slot) = lender {
        slot.take_back().await;
    }
    out
}

/// Whether the job running in this task holds its worker slot now (`None`: not in a job).
#[cfg(test)]
pub(crate) fn current_slot_held() -> Option<bool> {
    SLOT.try_with(|slot| slot.holds()).ok()
}

/// Waits `wait`. Inside a job the engine runs, the job's worker slot serves another job
/// meanwhile, and the job takes a slot back (waiting its turn for one) before this returns.
/// Elsewhere it only sleeps. It is the pause hook the provisioner gives its Salesforce and
/// WHMCS clients (`sf_rest::RetryPause`, `whmcs_client::RetryPause`).
pub fn pause_outside_slot(wait: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    // Read now: the hook is called inside the job's task, the future may be polled anywhere.
    let slot = SLOT.try_with(Arc::clone).ok();
    Box::pin(lent(slot, tokio::time::sleep(wait)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pause_lends_the_slot_to_another_job_and_takes_one_back() {
        let permits = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let slot = Slot::new(Arc::clone(&permits), permit);
        assert_eq!(permits.available_permits(), 0);

        let (paused_tx, paused_rx) = tokio::sync::oneshot::channel();
        let job = tokio::spawn(Arc::clone(&slot).scope(async move {
            let pause = pause_outside_slot(Duration::from_millis(250));
            let _ = paused_tx.send(());
            pause.await;
        }));
        paused_rx.await.unwrap();
        // While the job waits, another job gets the only slot and keeps it for a while.
        let other = Arc::clone(&permits).acquire_owned().await.unwrap();
        assert!(!slot.holds());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !job.is_finished(),
            "the paused job must wait for a slot to come back"
        );
        drop(other);
        job.await.unwrap();
        assert!(slot.holds(), "the job holds a slot again after its pause");
        assert_eq!(permits.available_permits(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_waiting_for_its_store_write_lends_its_slot() {
        let permits = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let slot = Slot::new(Arc::clone(&permits), permit);
        let (committed_tx, committed_rx) = tokio::sync::oneshot::channel::<()>();
        let (waiting_tx, waiting_rx) = tokio::sync::oneshot::channel();
        let job = tokio::spawn(Arc::clone(&slot).scope(async move {
            let write = outside_slot(async move {
                let _ = waiting_tx.send(());
                committed_rx.await
            });
            write.await.is_ok()
        }));
        waiting_rx.await.unwrap();
        // While the write is out, another job works in the slot; the writer waits for it.
        assert!(!slot.holds());
        let other = Arc::clone(&permits).acquire_owned().await.unwrap();
        committed_tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!job.is_finished(), "the write's job went on without a slot");
        drop(other);
        assert!(job.await.unwrap());
        assert!(slot.holds(), "the job holds a slot again after its write");
        assert_eq!(permits.available_permits(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn outside_a_job_a_write_only_runs() {
        assert_eq!(outside_slot(async { 7 }).await, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn outside_a_job_a_pause_only_sleeps() {
        let started = tokio::time::Instant::now();
        pause_outside_slot(Duration::from_millis(250)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }
}
