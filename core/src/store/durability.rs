//! When a commit is durable, and holding back whatever tells of it until it
//! is.
//!
//! PostgreSQL's COMMIT returns once its server has flushed its WAL
//! (`Durability::AtCommit`). SQLite's writer commits with
//! `synchronous = NORMAL` instead: COMMIT writes the WAL and returns, and
//! the WAL's fsync runs here, on a blocking thread, while the writer already
//! runs its next batch (`Durability::AfterSync`). That fsync was a quarter
//! of the writer's serial time per batch.
//!
//! What a committed batch owes its callers (replies, jobs handed to
//! waiting workers, events for watchers) waits in a `Settlement` for the
//! fsync that covers it, so nothing is acknowledged or handed off before it
//! is durable. One fsync covers every batch committed before it began, and
//! settlements are released in commit order.
//!
//! Readers can see a commit before its fsync: it is in the WAL, only not on
//! the disk yet. `Synced::settled` lets them wait until what they read is
//! durable, so nothing read goes out (a callback, a replayed event, an
//! answer) about a write a power cut could still take back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use prometheus_client::metrics::histogram::Histogram;

use super::batch::Settlement;
use crate::job::Job;

/// Makes committed writes durable.
pub trait SyncCommits: Send + 'static {
    /// Makes everything committed so far durable; blocks until it is.
    fn sync(&mut self) -> std::io::Result<()>;
}

/// How a writer's commits become durable.
pub enum Durability {
    /// COMMIT returns once the batch is durable.
    AtCommit,
    /// COMMIT returns once the batch is written; this makes it durable.
    AfterSync(Box<dyn SyncCommits>),
}

/// Batches waiting for their fsync, at most: past this the writer waits
/// before committing more.
const SETTLEMENTS_IN_FLIGHT: usize = 64;

/// Which batches of a store's `AfterSync` writer are durable. Batches are
/// numbered from 1 as they begin committing.
pub struct Synced {
    begun: AtomicU64,
    synced: watch::Sender<u64>,
}

impl Default for Synced {
    fn default() -> Self {
        Self {
            begun: AtomicU64::new(0),
            synced: watch::channel(0).0,
        }
    }
}

impl Synced {
    /// Numbers a batch about to commit.
    fn begin(&self) -> u64 {
        self.begun.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn mark(&self, upto: u64) {
        self.synced.send_if_modified(|synced| {
            let later = upto > *synced;
            if later {
                *synced = upto;
            }
            later
        });
    }

    /// Waits until every batch that had begun committing when this is
    /// called is durable: whatever a read made before the call saw is
    /// durable then. Returns at once for an `AtCommit` store.
    pub async fn settled(&self) {
        let begun = self.begun.load(Ordering::SeqCst);
        if *self.synced.borrow() >= begun {
            return;
        }
        // An error means the writer is gone, and its batches with it.
        let _ = self
            .synced
            .subscribe()
            .wait_for(|synced| *synced >= begun)
            .await;
    }
}

/// Where a writer's committed batches go: released at once, or after the
/// fsync that covers them. The one place the batch loop asks which.
pub(super) enum Settler {
    AtCommit,
    AfterSync(Syncer),
}

/// The writer's end of the task that syncs its commits.
pub(super) struct Syncer {
    synced: Arc<Synced>,
    /// The number of the batch being committed.
    number: u64,
    settlements: mpsc::Sender<(u64, Settlement)>,
    /// Jobs whose waiter was gone when their settlement was released. At
    /// most one message per settlement.
    returned: mpsc::UnboundedReceiver<Vec<Job>>,
    task: JoinHandle<()>,
}

impl Settler {
    /// For `AfterSync`, starts the task that makes the commits durable and
    /// then releases their settlements. It releases them from the runtime,
    /// not from the blocking thread the fsync runs on: waking the callers
    /// from there cost more than the fsync's hop.
    pub fn start(durability: Durability, synced: Arc<Synced>, timed: Histogram) -> Self {
        let sync = match durability {
            Durability::AtCommit => return Self::AtCommit,
            Durability::AfterSync(sync) => sync,
        };
        let (settlements, queue) = mpsc::channel(SETTLEMENTS_IN_FLIGHT);
        let (returning, returned) = mpsc::unbounded_channel();
        let task = tokio::spawn(sync_then_release(
            sync,
            queue,
            returning,
            synced.clone(),
            timed,
        ));
        Self::AfterSync(Syncer {
            synced,
            number: 0,
            settlements,
            returned,
            task,
        })
    }

    /// Numbers the batch about to commit (before its COMMIT is sent, so a
    /// read that sees the commit finds the number already taken).
    pub fn begin(&mut self) {
        if let Self::AfterSync(syncer) = self {
            syncer.number = syncer.synced.begin();
        }
    }

    /// Settles the batch begun last: `None` if it rolled back. Jobs whose
    /// waiter was gone go to `orphans`, now or through `returned` later.
    /// Waits while too many settlements are queued.
    pub async fn settle(&mut self, settlement: Option<Settlement>, orphans: &mut Vec<Job>) {
        match self {
            Self::AtCommit => {
                orphans.extend(settlement.map(Settlement::release).unwrap_or_default())
            }
            // A rolled-back batch sends an empty settlement, to keep the
            // numbers contiguous. The task ends before this side only if it
            // panicked: what it held is not known to be durable, so the
            // settlement is dropped (its callers are told `Unavailable`;
            // its leases expire).
            Self::AfterSync(syncer) => {
                let settlement = settlement.unwrap_or_default();
                let _ = syncer.settlements.send((syncer.number, settlement)).await;
            }
        }
    }

    /// Adds the jobs handed back so far to `orphans`.
    pub fn take_returned(&mut self, orphans: &mut Vec<Job>) {
        if let Self::AfterSync(syncer) = self {
            while let Ok(returned) = syncer.returned.try_recv() {
                orphans.extend(returned);
            }
        }
    }

    /// The next jobs handed back; never, for `AtCommit`.
    pub async fn returned(&mut self) -> Option<Vec<Job>> {
        match self {
            Self::AtCommit => std::future::pending().await,
            Self::AfterSync(syncer) => syncer.returned.recv().await,
        }
    }

    /// Waits for the settlements queued so far to be released.
    pub async fn stop(self) {
        if let Self::AfterSync(syncer) = self {
            drop(syncer.settlements);
            let _ = syncer.task.await;
        }
    }
}

async fn sync_then_release(
    mut sync: Box<dyn SyncCommits>,
    mut queue: mpsc::Receiver<(u64, Settlement)>,
    returning: mpsc::UnboundedSender<Vec<Job>>,
    synced: Arc<Synced>,
    timed: Histogram,
) {
    let mut ready = Vec::with_capacity(SETTLEMENTS_IN_FLIGHT);
    while queue.recv_many(&mut ready, SETTLEMENTS_IN_FLIGHT).await > 0 {
        let started = std::time::Instant::now();
        let outcome = tokio::task::spawn_blocking(move || {
            let outcome = sync.sync();
            (outcome, sync)
        })
        .await;
        sync = match outcome {
            Ok((Ok(()), sync)) => sync,
            Ok((Err(error), _)) => unknown_durability(&error),
            Err(error) => unknown_durability(&error),
        };
        timed.observe(started.elapsed().as_secs_f64());
        let upto = ready.last().map_or(0, |(number, _)| *number);
        synced.mark(upto);
        for (_, settlement) in ready.drain(..) {
            let orphans = settlement.release();
            if !orphans.is_empty() {
                // Refused only once the writer is gone; the leases then
                // expire on their own.
                let _ = returning.send(orphans);
            }
        }
    }
}

/// After a failed fsync the kernel may have dropped the dirty pages, and a
/// retry can report success for data that is gone: nothing tells what is
/// durable. As PostgreSQL does, stop, and let recovery from the disk decide.
fn unknown_durability(error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%error, "fsync of committed writes failed; stopping");
    std::process::abort();
}
