//! Group commit, shared by the backends. One task per writer connection runs
//! whatever requests are waiting as one transaction: one commit (one fsync)
//! covers the whole batch. Replies are sent only once the commit is durable
//! (when COMMIT returns, or after the fsync that follows it: see
//! `store::durability`), so nothing is acknowledged before it is.
//!
//! Every operation reads what it needs, decides (through the state machine),
//! and only then writes; a refused operation has written nothing. A database
//! error inside a batch rolls the whole batch back and every caller in it
//! gets `Unavailable`, so no caller is told of a write that did not happen.
//!
//! Before COMMIT, a batch leases ready jobs to waiting workers
//! (`store::handoff`), so the lease is part of the same commit.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::Instrument;

use super::durability::{Durability, Settler, Synced};
use super::handoff::{Delivery, Fill, Handoff, Touched, Waiter, Waiters};
use crate::clock::{Clock, UnixMillis};
use crate::error::{Error, Result};
use crate::job::machine::{Command, Effects, Fence};
use crate::job::spec::NewJobs;
use crate::job::{EventDraft, EventKind, Job, JobStatus, LiveEvent, LogLine};
use crate::metrics::{WriterMetrics, WriterPhase, WriterPhases};
use crate::retention::Expired;
use crate::store::pauses;
use crate::store::schedules::{FireClaim, ScheduleWrite, ScheduleWritten};
use crate::store::{CallbackOutcome, CallbackTry, DeliverRequest, JobTarget, Replay, Step, Sweep};

/// Most operations committed together.
pub const MAX_BATCH: usize = 512;

pub type Reply<T> = oneshot::Sender<Result<T>>;

/// A transition a writer made: the job as it now is, and what the state
/// machine says the transition implies.
pub struct Applied {
    pub job: Job,
    pub effects: Effects,
}

/// A write that tells the batch nothing beyond its own outcome: it runs on
/// the writer and answers its caller.
pub type Plain = Box<
    dyn for<'w> FnOnce(&'w mut dyn Writer) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'w>>
        + Send,
>;

/// What the writer ran that needs to be known before answering: why it
/// failed in the database, if it did, and how to send its answer.
type Outcome = (Option<String>, Finish);

/// A writer's future, borrowing the writer it runs on.
pub type Running<'w, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'w>>;

/// Boxes a plain write (a function, so that the closure's signature, and
/// with it the writer's borrow, is inferred from the bound).
fn plain<F>(run: F) -> Plain
where
    F: for<'w> FnOnce(&'w mut dyn Writer) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'w>>
        + Send
        + 'static,
{
    Box::new(run)
}

/// The operations a batch treats each in its own way; every other write is
/// `Plain`.
pub enum WriteOp {
    Plain {
        /// What the operation is, for traces.
        name: &'static str,
        run: Plain,
    },
    SetPause {
        space_id: String,
        /// `pauses::WHOLE_SPACE` for the whole space.
        name: String,
        paused: bool,
        now: UnixMillis,
        reply: Reply<bool>,
    },
    Schedule {
        write: Box<ScheduleWrite>,
        reply: Reply<ScheduleWritten>,
    },
    CreateJobs {
        new: NewJobs,
        reply: Reply<Vec<Replay>>,
    },
    Deliver {
        request: DeliverRequest,
        reply: Reply<Vec<Job>>,
    },
    Apply {
        target: JobTarget,
        steps: Vec<Step>,
        now: UnixMillis,
        /// The waiter that holds the job: if the steps end its lease, the
        /// slot is the waiter's again. This batch's fill uses it first; what
        /// it leaves reaches the waiter after COMMIT.
        refill: Option<Arc<Waiter>>,
        reply: Reply<Vec<Result<Job>>>,
    },
    FireDueTimers {
        now: UnixMillis,
        limit: u32,
        reply: Reply<Sweep>,
    },
    Prune {
        expired: Expired,
        reply: Reply<u32>,
    },
    AppendLogs {
        target: JobTarget,
        lines: Vec<LogLine>,
        now: UnixMillis,
        reply: Reply<i64>,
    },
    /// Runs a batch, to fill the waiters that asked for it.
    Wake,
}

impl WriteOp {
    /// What the operation is, for traces.
    fn name(&self) -> &'static str {
        match self {
            Self::Plain { name, .. } => name,
            Self::SetPause { .. } => "set_pause",
            Self::Schedule { .. } => "schedule",
            Self::CreateJobs { .. } => "create_jobs",
            Self::Deliver { .. } => "deliver",
            Self::Apply { .. } => "apply",
            Self::FireDueTimers { .. } => "fire_due_timers",
            Self::Prune { .. } => "prune",
            Self::AppendLogs { .. } => "append_logs",
            Self::Wake => "wake",
        }
    }
}

/// One backend's writer connection: the transaction boundaries and the
/// operations about jobs, each run inside the open transaction.
#[async_trait]
pub trait Writer: Send {
    async fn begin(&mut self) -> Result<()>;
    /// Writes what the batch buffered (events, counters) and commits.
    async fn commit(&mut self) -> Result<()>;
    /// Rolls back and forgets what the batch buffered.
    async fn rollback(&mut self);
    /// What the committed batch published, to broadcast once it is
    /// durable, after its replies.
    fn published(&mut self) -> Option<Announcement>;
    /// How this writer's commits become durable; asked once, before the
    /// first batch.
    fn durability(&mut self) -> Durability {
        Durability::AtCommit
    }
    /// Locks the idempotency keys the batch's creates claim, `(space, key)`,
    /// then locks and reads, in one statement, the jobs its operations name,
    /// so that each operation needs no read of its own. Each in one global
    /// order, so concurrent writers cannot deadlock on them. A writer that
    /// is the only one (SQLite) has no use for it.
    async fn lock_ahead(&mut self, _job_ids: Vec<&str>, _keys: Vec<(&str, &str)>) -> Result<()> {
        Ok(())
    }
    /// Whether operations that arrive while a batch runs its own may join
    /// it, executed after them in the same transaction. Only a writer that
    /// locks nothing ahead can take them: a second `lock_ahead` would break
    /// the one lock order that keeps concurrent writers from deadlocking.
    fn takes_late_operations(&self) -> bool {
        false
    }
    /// Upkeep between batches, outside any transaction (SQLite: starting
    /// the WAL over when it has grown).
    async fn between_batches(&mut self) {}
    async fn close(self)
    where
        Self: Sized;
    /// The connection, inside the open transaction, for statements written
    /// once for both backends (`on_connection!`).
    fn connection(&mut self) -> Connection<'_>;

    // The writes below touch jobs or their events, which each backend's
    // writer keeps its own way (SQLite buffers rows and events until
    // COMMIT; PostgreSQL stages transitions on the rows it locked); the
    // rest run on `connection` directly.
    async fn record_callback_try(&mut self, attempt: CallbackTry, now: UnixMillis) -> Result<()>;
    /// Pauses or resumes `name` (`pauses::WHOLE_SPACE`: the whole space);
    /// NotFound without the space. Returns whether anything changed.
    async fn set_pause(
        &mut self,
        space_id: &str,
        name: &str,
        paused: bool,
        now: UnixMillis,
    ) -> Result<bool>;
    async fn write_schedule(&mut self, write: &ScheduleWrite) -> Result<ScheduleWritten>;
    async fn create_jobs(&mut self, new: NewJobs) -> Result<Vec<Replay>>;
    async fn deliver(&mut self, request: DeliverRequest) -> Result<Vec<Job>>;
    async fn apply(
        &mut self,
        target: &JobTarget,
        command: Command,
        fence: &Fence,
        now: UnixMillis,
    ) -> Result<Applied>;
    async fn fire_due_timers(&mut self, now: UnixMillis, limit: u32) -> Result<Sweep>;
    /// Deletes a finished job (see `Store::delete_job`).
    async fn delete_job(&mut self, target: &JobTarget) -> Result<Job>;
    /// Deletes expired jobs (see `Store::prune`).
    async fn prune(&mut self, expired: &Expired) -> Result<u32>;
    async fn append_logs(
        &mut self,
        target: &JobTarget,
        lines: Vec<LogLine>,
        now: UnixMillis,
    ) -> Result<i64>;
}

/// A writer's connection, by backend.
pub enum Connection<'c> {
    Sqlite(&'c mut sqlx::SqliteConnection),
    Postgres(&'c mut sqlx::PgConnection),
}

/// Runs `$body` with `$conn` the writer's connection and `$db` naming its
/// backend, so a statement written once, generic over the backend, runs on
/// whichever the writer has.
macro_rules! on_connection {
    ($writer:expr, |$conn:ident: $db:ident| $body:expr) => {
        match $writer.connection() {
            $crate::store::batch::Connection::Sqlite($conn) => {
                type $db = sqlx::Sqlite;
                $body
            }
            $crate::store::batch::Connection::Postgres($conn) => {
                type $db = sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use on_connection;

/// How long the writer must have had nothing to do before background work
/// runs in a batch of its own: work arriving meanwhile never waits on it.
const IDLE_BEFORE_BACKGROUND: Duration = Duration::from_millis(20);
/// Jobs pruned by a background batch of its own.
const ALONE_PRUNE: u32 = 32;
/// Background work waits for a batch that dispatches nothing (reports,
/// timers), which a caller is not waiting on to get a job; past this wait
/// it rides along with any batch, so it keeps pace under any load.
const BACKGROUND_OVERDUE: Duration = Duration::from_millis(100);
/// Fewest jobs pruned alongside other operations.
const RIDING_PRUNE_MIN: u32 = 1;

/// One writer's inboxes: operations, and background work (retention's
/// pruning), which rides along with batches in proportion to their size or
/// runs when the writer is idle, so it never stalls the work callers wait
/// on and still keeps pace with any load.
#[derive(Clone)]
pub struct Inbox {
    ops: mpsc::Sender<WriteOp>,
    background: mpsc::Sender<WriteOp>,
}

/// The writer's side of an `Inbox`.
pub struct Queues {
    pub ops: mpsc::Receiver<WriteOp>,
    background: mpsc::Receiver<WriteOp>,
}

/// A writer's inbox holding up to `capacity` operations.
pub fn inbox(capacity: usize) -> (Inbox, Queues) {
    let (ops, ops_queue) = mpsc::channel(capacity);
    // One sweeper call at a time per store: it waits for each.
    let (background, background_queue) = mpsc::channel(4);
    (
        Inbox { ops, background },
        Queues {
            ops: ops_queue,
            background: background_queue,
        },
    )
}

/// Runs batches until every sender is gone.
pub async fn run(
    mut writer: impl Writer,
    queues: Queues,
    waiters: Arc<Waiters>,
    metrics: WriterMetrics,
    clock: Clock,
    synced: Arc<Synced>,
) {
    let Queues {
        mut ops,
        mut background,
    } = queues;
    let mut settler = Settler::start(writer.durability(), synced, metrics.sync_seconds.clone());
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Jobs leased to waiters that were gone by the time the lease committed.
    let mut orphans: Vec<Job> = Vec::new();
    // When background work last ran.
    let mut background_since = std::time::Instant::now();
    loop {
        settler.take_returned(&mut orphans);
        if !batch.is_empty() || !orphans.is_empty() {
            // Operations a failed batch never ran go first, with whatever
            // else is waiting.
            while batch.len() < MAX_BATCH
                && let Ok(op) = ops.try_recv()
            {
                batch.push(op);
            }
        } else {
            tokio::select! {
                biased;
                received = ops.recv_many(&mut batch, MAX_BATCH) => {
                    if received == 0 {
                        break;
                    }
                }
                Some(mut op) = idle_then(&mut background) => {
                    size_prune(&mut op, ALONE_PRUNE);
                    batch.push(op);
                }
                Some(returned) = settler.returned() => orphans.extend(returned),
            }
        }
        // Background work rides along, sized by the batch's own work. It
        // runs first: nothing of the batch is staged yet, so it cannot
        // delete a job another operation of the batch is changing (a later
        // operation on a job it deleted finds none).
        let alone = batch.len() == 1 && matches!(batch[0], WriteOp::Prune { .. });
        let dispatching = batch.iter().any(|op| {
            matches!(
                op,
                WriteOp::CreateJobs { .. } | WriteOp::Deliver { .. } | WriteOp::Wake
            )
        });
        let overdue = background_since.elapsed() >= BACKGROUND_OVERDUE;
        if !alone
            && (!dispatching || overdue)
            && let Ok(mut op) = background.try_recv()
        {
            size_prune(&mut op, weight(&batch).max(RIDING_PRUNE_MIN));
            batch.insert(0, op);
        }
        if alone || batch.iter().any(|op| matches!(op, WriteOp::Prune { .. })) {
            background_since = std::time::Instant::now();
        }
        let (operations, started) = (batch.len(), std::time::Instant::now());
        settler.begin();
        let (settlement, joined) = run_batch(
            &mut writer,
            &mut batch,
            &mut ops,
            &waiters,
            &mut orphans,
            &clock,
            &metrics.phases,
        )
        .await;
        let committed = settlement.is_some();
        settler.settle(settlement, &mut orphans).await;
        if committed {
            metrics.batch_ops.observe((operations + joined) as f64);
            metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        writer.between_batches().await;
        if !committed && !orphans.is_empty() {
            // Not in a tight loop against a database that is down.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    settler.stop().await;
    writer.close().await;
}

/// Background work, once the writer has been idle a while.
async fn idle_then(background: &mut mpsc::Receiver<WriteOp>) -> Option<WriteOp> {
    tokio::time::sleep(IDLE_BEFORE_BACKGROUND).await;
    background.recv().await
}

/// The work a batch does, counted in jobs: a bulk create counts each job.
fn weight(batch: &[WriteOp]) -> u32 {
    batch
        .iter()
        .map(|op| match op {
            WriteOp::CreateJobs { new, .. } => new.jobs.len() as u32,
            _ => 1,
        })
        .sum()
}

/// Caps a prune at `jobs` jobs.
fn size_prune(op: &mut WriteOp, jobs: u32) {
    if let WriteOp::Prune { expired, .. } = op {
        expired.limit = expired.limit.min(jobs);
    }
}

/// Sends an operation's outcome once the batch's fate is known.
type Finish = Box<dyn FnOnce(Option<&Error>) + Send>;

/// Returns, besides the finish, why the operation failed in the database
/// (it then fails its batch), if it did.
fn finish<T: Send + 'static>(result: Result<T>, reply: Reply<T>) -> (Option<String>, Finish) {
    let failed_in_database = match &result {
        Err(Error::Internal(cause)) => Some(cause.to_string()),
        _ => None,
    };
    let finish: Finish = Box::new(move |batch_error| {
        let outcome = match (batch_error, result) {
            // Rolled back with the batch: the caller may safely retry.
            (Some(_), Ok(_)) => Err(Error::Unavailable),
            (_, result) => result,
        };
        let _ = reply.send(outcome);
    });
    (failed_in_database, finish)
}

/// What a batch's operations did that the handoff needs to know.
struct ToFill {
    /// Spaces in which jobs became ready.
    touched: Touched,
    /// Waiters whose jobs the batch ended: each gets a slot back.
    freed: Vec<Arc<Waiter>>,
}

/// What a committed batch owes the outside world, released (in this
/// order) once the batch is durable.
#[derive(Default)]
pub struct Settlement {
    deliveries: Vec<Delivery>,
    finishes: Vec<Finish>,
    announcement: Option<Announcement>,
}

impl Settlement {
    /// Hands the leased jobs to their waiters, answers the callers and
    /// broadcasts the events; returns the jobs whose waiter was gone.
    pub fn release(self) -> Vec<Job> {
        // Handoffs first: a caller told of its commit finds the jobs that
        // commit leased already with their waiters.
        let orphans = self
            .deliveries
            .into_iter()
            .filter_map(Delivery::send)
            .flatten()
            .collect();
        for finish in self.finishes {
            finish(None);
        }
        if let Some(announcement) = self.announcement {
            announcement.send();
        }
        orphans
    }
}

/// Events a commit published, for the store's watchers.
pub struct Announcement {
    to: broadcast::Sender<Arc<[LiveEvent]>>,
    events: Arc<[LiveEvent]>,
}

impl Announcement {
    pub fn new(to: &broadcast::Sender<Arc<[LiveEvent]>>, events: Arc<[LiveEvent]>) -> Self {
        Self {
            to: to.clone(),
            events,
        }
    }

    fn send(self) {
        // No subscribers is fine: nobody is watching.
        let _ = self.to.send(self.events);
    }
}

/// Runs one batch; returns what it owes once durable if it committed, and
/// how many operations joined it late (see `Writer::takes_late_operations`).
async fn run_batch(
    writer: &mut impl Writer,
    batch: &mut Vec<WriteOp>,
    late: &mut mpsc::Receiver<WriteOp>,
    waiters: &Waiters,
    orphans: &mut Vec<Job>,
    clock: &Clock,
    phases: &WriterPhases,
) -> (Option<Settlement>, usize) {
    // Each phase is timed from where the one before it ended.
    let mut phase_started = std::time::Instant::now();
    let mut phase_ends = |phase: WriterPhase| {
        let now = std::time::Instant::now();
        phases.add(phase, now - phase_started);
        phase_started = now;
    };
    let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
    let mut to_fill = ToFill {
        touched: Touched::none(),
        freed: Vec::new(),
    };
    let mut batch_error = writer.begin().await.err();
    let released = std::mem::take(orphans);
    if batch_error.is_none() {
        let named = released
            .iter()
            .map(|job| job.id.as_str())
            .chain(batch.iter().filter_map(|op| match op {
                WriteOp::Apply { target, .. } | WriteOp::AppendLogs { target, .. } => {
                    Some(target.job_id.as_str())
                }
                _ => None,
            }))
            .collect();
        let keys = batch
            .iter()
            .filter_map(|op| match op {
                WriteOp::CreateJobs { new, .. } => Some(new),
                _ => None,
            })
            .flat_map(|new| {
                let space_id = new.jobs.first().map_or("", |job| job.space_id.as_str());
                new.claims
                    .iter()
                    .map(move |claim| (space_id, claim.key.as_str()))
            })
            .collect();
        batch_error = writer.lock_ahead(named, keys).await.err();
    }
    if batch_error.is_none() {
        batch_error = release(writer, &released, &mut to_fill, clock.now())
            .await
            .err();
    }
    phase_ends(WriterPhase::Begin);
    let mut not_run = Vec::new();
    let mut failed_by_an_operation = false;
    let mut queue: VecDeque<WriteOp> = batch.drain(..).collect();
    let (mut may_take_late, mut joined) = (writer.takes_late_operations(), 0);
    loop {
        let Some(op) = queue.pop_front() else {
            if !may_take_late || batch_error.is_some() {
                break;
            }
            // What arrived while the batch ran (a worker's reports on jobs
            // the last commit handed out, typically) joins this commit
            // rather than waiting a whole batch for the next one. Once: a
            // batch that kept taking more would hold back the replies of
            // its first operations for as long as arrivals kept up.
            may_take_late = false;
            while finishes.len() + queue.len() < MAX_BATCH
                && let Ok(op) = late.try_recv()
            {
                queue.push_back(op);
            }
            joined = queue.len();
            continue;
        };
        if batch_error.is_some() {
            if failed_by_an_operation {
                // One operation's failure is not theirs: they run in the
                // next batch instead of failing with this one.
                not_run.push(op);
            } else {
                // Dropped unanswered: its caller gets `Unavailable`, as
                // for any write that did not happen.
                drop(op);
            }
            continue;
        }
        let (failed, finish) = execute(writer, op, &mut to_fill).await;
        finishes.push(finish);
        if let Some(cause) = failed {
            failed_by_an_operation = true;
            batch_error = Some(Error::internal(format!(
                "an operation failed in the database: {cause}"
            )));
        }
    }
    batch.extend(not_run);
    phase_ends(WriterPhase::Operations);
    let mut handoffs = Vec::new();
    if batch_error.is_none() {
        match fill(writer, waiters, &to_fill, clock.now()).await {
            Ok(filled) => handoffs = filled,
            Err(error) => batch_error = Some(error),
        }
    }
    phase_ends(WriterPhase::Dispatch);
    if batch_error.is_none()
        && let Err(error) = writer.commit().await
    {
        batch_error = Some(error);
    }
    phase_ends(WriterPhase::Commit);
    if let Some(error) = &batch_error {
        tracing::error!(%error, "write batch rolled back");
        writer.rollback().await;
        handoffs.into_iter().for_each(Handoff::undo);
        orphans.extend(released);
        for finish in finishes {
            finish(Some(error));
        }
        return (None, joined);
    }
    let settlement = Settlement {
        deliveries: handoffs
            .into_iter()
            .filter_map(Handoff::committed)
            .collect(),
        finishes,
        announcement: writer.published(),
    };
    (Some(settlement), joined)
}

/// Hands back jobs whose waiter was gone when their lease committed.
async fn release(
    writer: &mut impl Writer,
    jobs: &[Job],
    to_fill: &mut ToFill,
    now: UnixMillis,
) -> Result<()> {
    for job in jobs {
        let target = JobTarget {
            job_id: job.id.clone(),
            space_id: None,
        };
        match writer
            .apply(&target, Command::Release, &Fence::holding(job), now)
            .await
        {
            Ok(Applied { job, effects: made }) => {
                if made.ready {
                    to_fill.touched.add(&job.space_id, &job.name);
                }
            }
            Err(error @ Error::Internal(_)) => return Err(error),
            // It moved on meanwhile (timed out, killed): nothing to hand back.
            Err(_) => {}
        }
    }
    Ok(())
}

/// Leases ready jobs to the waiters this batch should fill.
async fn fill(
    writer: &mut impl Writer,
    waiters: &Waiters,
    to_fill: &ToFill,
    now: UnixMillis,
) -> Result<Vec<Handoff>> {
    let mut fills = waiters.take(&to_fill.touched, &to_fill.freed).into_iter();
    let mut handoffs = Vec::new();
    while let Some(fill) = fills.next() {
        let request = DeliverRequest {
            space_id: fill.space_id.clone(),
            names: fill.names.clone(),
            count: fill.room(),
            now,
            excluded_names: Vec::new(),
        };
        match writer.deliver(request).await {
            Ok(jobs) => handoffs.extend(fill.share(jobs)),
            Err(error) => {
                fill.give_back();
                fills.for_each(Fill::give_back);
                handoffs.into_iter().for_each(Handoff::undo);
                return Err(error);
            }
        }
    }
    Ok(handoffs)
}

async fn execute(writer: &mut impl Writer, op: WriteOp, to_fill: &mut ToFill) -> Outcome {
    match op {
        WriteOp::Plain { run, .. } => run(writer).await,
        WriteOp::SetPause {
            space_id,
            name,
            paused,
            now,
            reply,
        } => {
            let changed = writer.set_pause(&space_id, &name, paused, now).await;
            // A resume makes the jobs it covers ready for the waiters here.
            if !paused && matches!(changed, Ok(true)) {
                if name == pauses::WHOLE_SPACE {
                    to_fill.touched.add_space(&space_id);
                } else {
                    to_fill.touched.add(&space_id, &name);
                }
            }
            finish(changed, reply)
        }
        WriteOp::Schedule { write, reply } => {
            let written = writer.write_schedule(&write).await;
            match (written, *write) {
                (Ok(made @ ScheduleWritten::Fire(FireClaim::Make)), ScheduleWrite::Fire(fire))
                    if !fire.jobs.is_empty() =>
                {
                    for job in &fire.jobs {
                        if job.status() == JobStatus::Pending {
                            to_fill.touched.add(&job.space_id, &job.name);
                        }
                    }
                    let created = writer.create_jobs(fire.jobs.into()).await;
                    finish(created.map(|_| made), reply)
                }
                (written, _) => finish(written, reply),
            }
        }
        WriteOp::CreateJobs { new, reply } => {
            let ready: Vec<(usize, String, String)> = new
                .jobs
                .iter()
                .enumerate()
                .filter(|(_, job)| job.status() == JobStatus::Pending)
                .map(|(index, job)| (index, job.space_id.clone(), job.name.clone()))
                .collect();
            let created = writer.create_jobs(new).await;
            if let Ok(replays) = &created {
                for (index, space_id, name) in &ready {
                    if !replays.iter().any(|replay| replay.index == *index) {
                        to_fill.touched.add(space_id, name);
                    }
                }
            }
            finish(created, reply)
        }
        WriteOp::Deliver { request, reply } => finish(writer.deliver(request).await, reply),
        WriteOp::Apply {
            target,
            steps,
            now,
            refill,
            reply,
        } => {
            let mut outcomes = Vec::with_capacity(steps.len());
            let mut ended = false;
            for Step { command, fence } in steps {
                match writer.apply(&target, command, &fence, now).await {
                    Err(error @ Error::Internal(_)) => return finish(Err(error), reply),
                    Ok(Applied { job, effects: made }) => {
                        if made.ready {
                            to_fill.touched.add(&job.space_id, &job.name);
                        }
                        // A refill's steps carry its lease (`dispatch`
                        // fences them with it), so this is the lease it
                        // held.
                        ended |= made.lease_ended;
                        outcomes.push(Ok(job));
                    }
                    Err(refused) => outcomes.push(Err(refused)),
                }
            }
            // The freed slot alone qualifies the waiter for this batch's
            // fill; other waiters of the space have nothing new to take.
            if ended && let Some(waiter) = refill {
                to_fill.freed.push(waiter);
            }
            finish(Ok(outcomes), reply)
        }
        WriteOp::FireDueTimers { now, limit, reply } => {
            let swept = writer.fire_due_timers(now, limit).await;
            if let Ok(sweep) = &swept {
                for (space_id, name) in &sweep.ready {
                    to_fill.touched.add(space_id, name);
                }
            }
            finish(swept, reply)
        }
        WriteOp::Prune { expired, reply } => finish(writer.prune(&expired).await, reply),
        WriteOp::Wake => (None, Box::new(|_| {})),
        WriteOp::AppendLogs {
            target,
            lines,
            now,
            reply,
        } => finish(writer.append_logs(&target, lines, now).await, reply),
    }
}

/// The `callback_sent` / `callback_failed` event recording a callback try.
pub fn callback_try_event(attempt: &CallbackTry, job: &Job) -> EventDraft {
    let entry = &attempt.entry;
    let (kind, data) = match &attempt.outcome {
        CallbackOutcome::Delivered { status } => (
            EventKind::CallbackSent,
            serde_json::json!({
                "url": entry.url,
                "statusCode": status,
                "retryAttempt": entry.attempt,
            }),
        ),
        CallbackOutcome::Failed {
            error,
            status,
            response_body,
        } => {
            let mut data = serde_json::json!({
                "url": entry.url,
                "error": error,
                "statusCode": status,
                "retryAttempt": entry.attempt,
                "willRetry": attempt.retry_at.is_some(),
            });
            if let Some(body) = response_body {
                data["responseBody"] = body.as_str().into();
            }
            (EventKind::CallbackFailed, data)
        }
    };
    EventDraft {
        kind,
        status: job.status(),
        previous_status: None,
        data: Some(data.to_string()),
        took_ms: None,
    }
}

/// The stores' side of their writers: each call becomes a `WriteOp` on one
/// writer's queue and waits for the batch it lands in to commit. Writes
/// about one job always go to the same writer, in the order they were made
/// (a worker that sends progress and then completion without waiting in
/// between sees them applied in that order); the rest are spread evenly.
pub struct Writes {
    writers: Vec<Inbox>,
    next: std::sync::atomic::AtomicUsize,
}

impl Writes {
    pub fn new(writers: Vec<Inbox>) -> Self {
        assert!(!writers.is_empty(), "a store has at least one writer");
        Self {
            writers,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn any(&self) -> usize {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.writers.len()
    }

    fn for_job(&self, job_id: &str) -> usize {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        job_id.hash(&mut hasher);
        hasher.finish() as usize % self.writers.len()
    }

    async fn send<T>(&self, writer: usize, op: impl FnOnce(Reply<T>) -> WriteOp) -> Result<T> {
        let (reply, outcome) = oneshot::channel();
        let op = op(reply);
        // The caller's trace reaches the store: queueing, the batch and
        // its commit are this span.
        let span = tracing::info_span!("store write", op = op.name());
        async {
            self.writers[writer]
                .ops
                .send(op)
                .await
                .map_err(|_| Error::Unavailable)?;
            outcome.await.map_err(|_| Error::Unavailable)?
        }
        .instrument(span)
        .await
    }

    /// Queues a plain write on any writer.
    pub async fn on_any<T, F>(&self, name: &'static str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'w> FnOnce(&'w mut dyn Writer) -> Running<'w, T> + Send + 'static,
    {
        self.plain(self.any(), name, op).await
    }

    /// Queues a plain write about one job on that job's writer, after the
    /// writes about it made before.
    pub async fn on_job<T, F>(&self, job_id: &str, name: &'static str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'w> FnOnce(&'w mut dyn Writer) -> Running<'w, T> + Send + 'static,
    {
        self.plain(self.for_job(job_id), name, op).await
    }

    async fn plain<T, F>(&self, writer: usize, name: &'static str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'w> FnOnce(&'w mut dyn Writer) -> Running<'w, T> + Send + 'static,
    {
        self.send(writer, move |reply| WriteOp::Plain {
            name,
            run: plain(move |writer| Box::pin(async move { finish(op(writer).await, reply) })),
        })
        .await
    }

    pub async fn set_pause(
        &self,
        space_id: &str,
        name: &str,
        paused: bool,
        now: UnixMillis,
    ) -> Result<bool> {
        let (space_id, name) = (space_id.to_owned(), name.to_owned());
        self.send(self.any(), |reply| WriteOp::SetPause {
            space_id,
            name,
            paused,
            now,
            reply,
        })
        .await
    }

    pub async fn write_schedule(&self, write: ScheduleWrite) -> Result<ScheduleWritten> {
        self.send(self.any(), |reply| WriteOp::Schedule {
            write: Box::new(write),
            reply,
        })
        .await
    }

    pub async fn create_jobs(&self, new: NewJobs) -> Result<Vec<Replay>> {
        self.send(self.any(), |reply| WriteOp::CreateJobs { new, reply })
            .await
    }

    pub async fn deliver(&self, request: DeliverRequest) -> Result<Vec<Job>> {
        self.send(self.any(), |reply| WriteOp::Deliver { request, reply })
            .await
    }

    pub async fn apply(
        &self,
        target: &JobTarget,
        steps: Vec<Step>,
        now: UnixMillis,
        refill: Option<Arc<Waiter>>,
    ) -> Result<Vec<Result<Job>>> {
        let target = target.clone();
        self.send(self.for_job(&target.job_id), |reply| WriteOp::Apply {
            target,
            steps,
            now,
            refill,
            reply,
        })
        .await
    }

    /// Makes a writer run a batch soon, without waiting for it.
    pub fn wake(&self) {
        // A full queue has a batch coming anyway.
        let _ = self.writers[self.any()].ops.try_send(WriteOp::Wake);
    }

    pub async fn fire_due_timers(&self, now: UnixMillis, limit: u32) -> Result<Sweep> {
        self.send(self.any(), |reply| WriteOp::FireDueTimers {
            now,
            limit,
            reply,
        })
        .await
    }

    /// Background work: it runs alongside other writes or when the writer
    /// is idle, and may prune fewer jobs than `expired.limit`.
    pub async fn prune(&self, expired: &Expired) -> Result<u32> {
        let (reply, outcome) = oneshot::channel();
        let op = WriteOp::Prune {
            expired: expired.clone(),
            reply,
        };
        self.writers[self.any()]
            .background
            .send(op)
            .await
            .map_err(|_| Error::Unavailable)?;
        outcome.await.map_err(|_| Error::Unavailable)?
    }

    pub async fn append_logs(
        &self,
        target: &JobTarget,
        lines: Vec<LogLine>,
        now: UnixMillis,
    ) -> Result<i64> {
        let target = target.clone();
        self.send(self.for_job(&target.job_id), |reply| WriteOp::AppendLogs {
            target,
            lines,
            now,
            reply,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    /// The job ids a commit published events about, in order.
    fn jobs_in(chunk: &[LiveEvent]) -> Vec<String> {
        chunk
            .iter()
            .filter_map(|event| match event {
                LiveEvent::Job(event) => Some(event.job_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Creates queued while a batch runs commit with it, after its own
    /// operations: one commit publishes all of them.
    #[tokio::test]
    async fn operations_queued_while_a_batch_runs_join_its_commit() {
        let (store, space_id, dir) = testing::store_with_space().await;
        let mut commits = store.subscribe();
        let first = testing::jobs(&space_id, 1);
        let later = testing::jobs(&space_id, 2);
        let expected: Vec<String> = first
            .iter()
            .chain(&later)
            .map(|job| job.id.clone())
            .collect();
        let (started, running) = oneshot::channel();
        let (release, released) = oneshot::channel::<()>();
        // A batch that creates a job, then waits until the test has queued
        // two more creates.
        let holding = store
            .writes
            .on_any("test: holds its batch open", move |writer| {
                Box::pin(async move {
                    writer.create_jobs(first.into()).await?;
                    let _ = started.send(());
                    let _ = released.await;
                    Ok(())
                })
            });
        let queue_more = async {
            running.await.unwrap();
            let mut outcomes = Vec::new();
            for job in later {
                let (reply, outcome) = oneshot::channel();
                let op = WriteOp::CreateJobs {
                    new: vec![job].into(),
                    reply,
                };
                store.writes.writers[0].ops.send(op).await.unwrap();
                outcomes.push(outcome);
            }
            release.send(()).unwrap();
            for outcome in outcomes {
                outcome.await.unwrap().unwrap();
            }
        };
        let (held, ()) = tokio::join!(holding, queue_more);
        held.unwrap();
        let published = jobs_in(&commits.recv().await.unwrap());
        assert_eq!(published, expected, "one commit, in queue order");
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
