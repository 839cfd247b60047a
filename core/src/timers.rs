//! The timer loop (the "rescuer"): releases scheduled jobs, returns delivered
//! jobs whose ack did not come in time, and fails running jobs whose worker
//! went silent. Deadlines live in the database (`due_at`), so timers survive
//! restarts: on start the first sweep fires everything that came due while
//! the server was down.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::clock::UnixMillis;
use crate::store::Store;

/// Jobs expired per sweep; a full sweep is followed by another at once.
const SWEEP_LIMIT: u32 = 1000;
/// Sweeps are at least this far apart, so a stream of new deadlines under
/// load cannot turn the loop into a busy one. It bounds timer precision.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(10);
/// Sweep at least this often even when nothing is known to be due. Other
/// replicas set deadlines this loop is not told about (and may die before
/// firing them), so this bounds how late such a deadline fires.
const MAX_SLEEP: Duration = Duration::from_secs(1);
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Tells the timer loop about deadlines set after its last sweep.
#[derive(Default)]
pub struct TimerWake {
    /// Earliest deadline the loop will wake for; i64::MAX while sweeping.
    next: AtomicI64,
    notify: Notify,
}

impl TimerWake {
    pub fn schedule(&self, due: UnixMillis) {
        if due < self.next.fetch_min(due, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }
}

pub async fn run(store: Arc<Store>, wake: Arc<TimerWake>, mut shutdown: watch::Receiver<bool>) {
    loop {
        // Any deadline set while we sweep must wake us again (see `schedule`).
        wake.next.store(i64::MAX, Ordering::Release);
        let now = store.clock().now();
        let sleep_for = match store.fire_due_timers(now, SWEEP_LIMIT).await {
            Ok(sweep) if sweep.fired as u32 >= SWEEP_LIMIT => Duration::ZERO,
            Ok(sweep) => {
                if sweep.fired > 0 {
                    tracing::debug!(fired = sweep.fired, "timers fired");
                }
                let next = sweep.next_due.unwrap_or(i64::MAX);
                let earliest = wake.next.fetch_min(next, Ordering::AcqRel).min(next);
                if earliest == i64::MAX {
                    MAX_SLEEP
                } else {
                    store.clock().until(earliest).min(MAX_SLEEP)
                }
            }
            Err(error) => {
                tracing::warn!(%error, "timer sweep failed");
                RETRY_AFTER_ERROR
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep_for) => {}
            _ = wake.notify.notified() => {}
            _ = shutdown.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(MIN_SWEEP_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}
