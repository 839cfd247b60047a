//! PostgreSQL's side of the group-commit writer (see `store::batch`).
//!
//! Several replicas (and several writers per replica) write concurrently, so
//! nothing here trusts memory across statements it does not lock:
//! - a transition on a row this transaction holds locked (locked ahead, or
//!   claimed by a delivery or a timer sweep) is staged in memory, and the
//!   staged rows are written by one set-based UPDATE before the next
//!   statement whose reads they could change, and before COMMIT (`settle`):
//!   one statement for the batch's transitions, not one each;
//! - any other transition is an UPDATE conditional on the state that was
//!   read; when another writer got there first it matches no row, and the
//!   command is decided again against the job as it now is;
//! - deliveries and timers claim rows `FOR UPDATE SKIP LOCKED`, so writers
//!   never wait on each other's candidates and never take the same job;
//! - a batch numbers its events only at commit time, with the rows of the
//!   spaces it touched locked (in id order, so writers cannot deadlock on
//!   them): per space, commit order is sequence order on every replica, and
//!   counts move with the sequence.
//!
//! The commit also tells every replica (NOTIFY) which sequence ranges and
//! log lines it wrote; `relay` turns that into the live broadcast.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{Connection, PgConnection, Postgres, QueryBuilder, Row};
use tokio::sync::broadcast;

use super::relay::{CommitNotice, Relay};
use crate::clock::{Clock, UnixMillis};
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::job::machine::{self, Command, Fence};
use sha2::{Digest, Sha256};

use crate::concurrency::ConcurrencyLimits;
use crate::job::spec::NewJobs;
use crate::job::{
    EventDraft, Job, JobEvent, JobLogEntry, JobStatus, LiveEvent, LogLine, SpaceEvent,
    StatusCounts, StoredLogLine,
};
use crate::retention::Expired;
use crate::store::batch::{self, Announcement, Applied, callback_try_event};
use crate::store::concurrency::{self, FlowDispatch, KeyLanes, KeyRound, ReadyKey};
use crate::store::forget::{self, Forgotten};
use crate::store::idempotency;
use crate::store::schedules::{ScheduleWrite, ScheduleWritten};
use crate::store::{CallbackTry, DeliverRequest, JobTarget, Replay, Sweep};
use crate::store::{inserts, outbox, rows};

/// A job changed by another writer between our read and our update is read
/// and decided again, this many times at most.
const TRANSITION_ATTEMPTS: usize = 8;

/// A transition on a locked row, not written yet.
struct Staged {
    /// The row as it is in the database: the update is conditional on it.
    stored: Job,
    job: Job,
}

impl Staged {
    /// Whether a pick must see this transition written. A pick reads
    /// pending rows (and would take one this batch moved out of pending,
    /// since its own row locks do not stop it) and a key's leases; nothing
    /// else of a job it does not pick.
    fn matters_to_picks(&self) -> bool {
        let pending = |job: &Job| job.status() == JobStatus::Pending;
        pending(&self.stored) || pending(&self.job) || self.job.concurrency_key.is_some()
    }
}

/// What the open transaction recorded, in order.
enum Recorded {
    /// Numbered (`seq`, `counts`) at commit.
    Event(JobEvent),
    Log(Arc<JobLogEntry>),
    /// A space's own event, numbered at commit.
    Space(SpaceEvent),
}

pub struct PgWriter {
    conn: PgConnection,
    clock: Clock,
    relay: Arc<Relay>,
    own_commits: broadcast::Sender<Arc<[LiveEvent]>>,
    recorded: Vec<Recorded>,
    /// The open batch's commit number and what it publishes, once numbered.
    pending: Option<(u64, Arc<[LiveEvent]>)>,
    /// Jobs this transaction locked ahead, as it last staged or read them.
    /// A statement of the batch that may change one otherwise (a delivery,
    /// a timer sweep, a delete) drops it from here first.
    locked: HashMap<String, Job>,
    /// Transitions on locked rows, by job id, written by `settle`.
    staged: HashMap<String, Staged>,
    /// Jobs the open transaction deleted, taken off their spaces' counts at
    /// commit (under the space rows' locks, like every count change).
    forgotten: Vec<Forgotten>,
    /// Per space, the key its last keyed delivery on this core ended on.
    turns: HashMap<String, Option<String>>,
    /// Spaces' concurrency limits, as this transaction read them.
    limits: HashMap<String, ConcurrencyLimits>,
}

impl PgWriter {
    /// Takes a transaction-scoped advisory lock per idempotency key, in the
    /// order of their hashes. Without it two batches claiming the same two
    /// keys in opposite orders deadlocked (each claim waits on the other's
    /// uncommitted insert), failing both batches.
    async fn lock_keys(&mut self, keys: Vec<(&str, &str)>) -> Result<()> {
        let mut hashes: Vec<i64> = keys
            .into_iter()
            .map(|(space_id, key)| {
                let digest = Sha256::new()
                    .chain_update(space_id.as_bytes())
                    .chain_update([0])
                    .chain_update(key.as_bytes())
                    .finalize();
                let mut first = [0u8; 8];
                first.copy_from_slice(&digest[..8]);
                i64::from_be_bytes(first)
            })
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        // `unnest` yields the array in order, so the locks are taken in it.
        sqlx::query("SELECT pg_advisory_xact_lock(hash) FROM unnest($1::bigint[]) AS hash")
            .bind(&hashes)
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    pub fn new(
        conn: PgConnection,
        relay: Arc<Relay>,
        own_commits: broadcast::Sender<Arc<[LiveEvent]>>,
        clock: Clock,
    ) -> Self {
        Self {
            conn,
            clock,
            relay,
            own_commits,
            recorded: Vec::new(),
            pending: None,
            locked: HashMap::new(),
            staged: HashMap::new(),
            forgotten: Vec::new(),
            turns: HashMap::new(),
            limits: HashMap::new(),
        }
    }

    async fn require_space(&mut self, space_id: &str) -> Result<()> {
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM spaces WHERE id = $1")
            .bind(space_id)
            .fetch_optional(&mut self.conn)
            .await?;
        exists.map(|_| ()).ok_or(Error::NotFound("space"))
    }

    async fn load(&mut self, target: &JobTarget) -> Result<Job> {
        self.settle().await?;
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(&target.job_id)
            .fetch_optional(&mut self.conn)
            .await?
            .ok_or(Error::NotFound("job"))?;
        let job = rows::job(&row)?;
        match &target.space_id {
            Some(space) if *space != job.space_id => Err(Error::NotFound("job")),
            _ => Ok(job),
        }
    }

    /// Runs `command` through the state machine and persists the result with
    /// an update conditional on the state that was read. `None`: another
    /// writer changed the job first, nothing was written.
    async fn transition(
        &mut self,
        job: &Job,
        command: Command,
        fence: &Fence,
        now: UnixMillis,
    ) -> Result<Option<Applied>> {
        let transition = machine::apply(job, command, fence, now)?;
        let updated = sqlx::query(
            "UPDATE jobs SET status = $1, attempt_number = $2, due_at = $3, lease_id = $4, \
             delivered_at = $5, started_at = $6, completed_at = $7, result = $8, progress = $9, \
             checkpoint = $10, last_error = $11, kill_reason = $12, updated_at = $13 \
             WHERE id = $14 AND status = $15 AND attempt_number = $16 \
             AND lease_id IS NOT DISTINCT FROM $17 AND updated_at = $18",
        )
        .bind(transition.job.status().as_str())
        .bind(i64::from(transition.job.attempt_number))
        .bind(transition.job.state.due_at())
        .bind(transition.job.state.lease())
        .bind(transition.job.delivered_at)
        .bind(transition.job.started_at)
        .bind(transition.job.completed_at)
        .bind(&transition.job.result)
        .bind(&transition.job.progress)
        .bind(&transition.job.checkpoint)
        .bind(&transition.job.last_error)
        .bind(&transition.job.kill_reason)
        .bind(transition.job.updated_at)
        .bind(&job.id)
        .bind(job.status().as_str())
        .bind(i64::from(job.attempt_number))
        .bind(job.state.lease())
        .bind(job.updated_at)
        .execute(&mut self.conn)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(None);
        }
        self.transitioned(transition, now).await.map(Some)
    }

    /// A transition on a row this transaction holds locked: nobody else can
    /// change it, so it is staged and written with the batch's others.
    async fn transition_locked(
        &mut self,
        job: &Job,
        command: Command,
        fence: &Fence,
        now: UnixMillis,
    ) -> Result<Applied> {
        let transition = machine::apply(job, command, fence, now)?;
        match self.staged.get_mut(&job.id) {
            Some(staged) => staged.job = transition.job.clone(),
            None => {
                self.staged.insert(
                    job.id.clone(),
                    Staged {
                        stored: job.clone(),
                        job: transition.job.clone(),
                    },
                );
            }
        }
        self.transitioned(transition, now).await
    }

    /// What a written or staged transition records besides the row: its
    /// events, and the callback's outbox entry when the job ended.
    async fn transitioned(
        &mut self,
        transition: machine::Transition,
        now: UnixMillis,
    ) -> Result<Applied> {
        let next = transition.job;
        for draft in transition.events {
            self.record(&next, draft, now);
        }
        if transition.effects.callback {
            outbox::owe_callback::<Postgres>(&mut self.conn, &next, now).await?;
        }
        Ok(Applied {
            job: next,
            effects: transition.effects,
        })
    }

    /// Writes every staged transition in one statement, each conditional on
    /// its row being as it was read. The rows are locked by this
    /// transaction, so anything but all of them changing is a bug, and
    /// fails the batch.
    async fn settle(&mut self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let staged: Vec<Staged> = self.staged.drain().map(|(_, staged)| staged).collect();
        // One array per column, for `unnest`: the new values, then the
        // values the update is conditional on.
        let new = |value: fn(&Job) -> Option<String>| -> Vec<Option<String>> {
            staged.iter().map(|staged| value(&staged.job)).collect()
        };
        let new_number = |value: fn(&Job) -> Option<i64>| -> Vec<Option<i64>> {
            staged.iter().map(|staged| value(&staged.job)).collect()
        };
        let was = |value: fn(&Job) -> Option<String>| -> Vec<Option<String>> {
            staged.iter().map(|staged| value(&staged.stored)).collect()
        };
        let was_number = |value: fn(&Job) -> Option<i64>| -> Vec<Option<i64>> {
            staged.iter().map(|staged| value(&staged.stored)).collect()
        };
        let status = |job: &Job| Some(job.status().as_str().to_owned());
        let attempt = |job: &Job| Some(i64::from(job.attempt_number));
        let lease = |job: &Job| job.state.lease().map(str::to_owned);
        let updated_at = |job: &Job| Some(job.updated_at);
        let updated = sqlx::query(
            "UPDATE jobs SET status = v.status, attempt_number = v.attempt_number, \
             due_at = v.due_at, lease_id = v.lease_id, delivered_at = v.delivered_at, \
             started_at = v.started_at, completed_at = v.completed_at, result = v.result, \
             progress = v.progress, checkpoint = v.checkpoint, last_error = v.last_error, \
             kill_reason = v.kill_reason, updated_at = v.updated_at \
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[], \
             $7::int8[], $8::int8[], $9::text[], $10::text[], $11::text[], $12::text[], \
             $13::text[], $14::int8[], $15::text[], $16::int8[], $17::text[], $18::int8[]) \
             AS v(id, status, attempt_number, due_at, lease_id, delivered_at, started_at, \
             completed_at, result, progress, checkpoint, last_error, kill_reason, updated_at, \
             was_status, was_attempt_number, was_lease_id, was_updated_at) \
             WHERE jobs.id = v.id AND jobs.status = v.was_status \
             AND jobs.attempt_number = v.was_attempt_number \
             AND jobs.lease_id IS NOT DISTINCT FROM v.was_lease_id \
             AND jobs.updated_at = v.was_updated_at",
        )
        .bind(new(|job| Some(job.id.clone())))
        .bind(new(status))
        .bind(new_number(attempt))
        .bind(new_number(|job| job.state.due_at()))
        .bind(new(lease))
        .bind(new_number(|job| job.delivered_at))
        .bind(new_number(|job| job.started_at))
        .bind(new_number(|job| job.completed_at))
        .bind(new(|job| job.result.clone()))
        .bind(new(|job| job.progress.clone()))
        .bind(new(|job| job.checkpoint.clone()))
        .bind(new(|job| job.last_error.clone()))
        .bind(new(|job| job.kill_reason.clone()))
        .bind(new_number(updated_at))
        .bind(was(status))
        .bind(was_number(attempt))
        .bind(was(lease))
        .bind(was_number(updated_at))
        .execute(&mut self.conn)
        .await?;
        if updated.rows_affected() != staged.len() as u64 {
            return Err(Error::internal("locked jobs changed under their writer"));
        }
        Ok(())
    }

    fn record(&mut self, job: &Job, draft: EventDraft, now: UnixMillis) {
        self.recorded.push(Recorded::Event(JobEvent {
            seq: 0,
            space_id: job.space_id.clone(),
            job_id: job.id.clone(),
            job_name: job.name.clone(),
            kind: draft.kind,
            status: draft.status,
            previous_status: draft.previous_status,
            data: draft.data,
            at: now,
            counts: None,
            took_ms: draft.took_ms,
        }));
    }

    /// Numbers the batch's events under the locked space rows, writes them
    /// and the new heads, and tells the other replicas.
    async fn flush(&mut self) -> Result<()> {
        if self.recorded.is_empty() && self.forgotten.is_empty() {
            return Ok(());
        }
        let mut space_ids: Vec<&str> = self
            .recorded
            .iter()
            .filter_map(|recorded| match recorded {
                Recorded::Event(event) => Some(event.space_id.as_str()),
                Recorded::Space(event) => Some(event.space_id.as_str()),
                Recorded::Log(_) => None,
            })
            .chain(self.forgotten.iter().map(|job| job.space_id.as_str()))
            .collect();
        space_ids.sort_unstable();
        space_ids.dedup();
        let mut heads = HashMap::new();
        if !space_ids.is_empty() {
            let locked = sqlx::query(
                "SELECT * FROM spaces WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
            )
            .bind(&space_ids)
            .fetch_all(&mut self.conn)
            .await?;
            for row in &locked {
                let id: String = row.try_get("id")?;
                let seq: i64 = row.try_get("event_seq")?;
                heads.insert(id, (seq, rows::space_counts(row)?));
            }
        }
        for job in self.forgotten.drain(..) {
            if let Some((_, counts)) = heads.get_mut(&job.space_id) {
                counts.forget(job.status);
            }
        }
        let mut published = Vec::with_capacity(self.recorded.len());
        // Per space: the first and last sequence number written.
        let mut ranges: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut logs: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for recorded in self.recorded.drain(..) {
            match recorded {
                Recorded::Event(mut event) => {
                    let (seq, counts) = heads
                        .get_mut(&event.space_id)
                        .ok_or(Error::NotFound("space"))?;
                    *seq += 1;
                    event.seq = *seq;
                    if event.changes_counts() {
                        counts.apply(&event);
                        event.counts = Some(*counts);
                    }
                    ranges
                        .entry(event.space_id.clone())
                        .and_modify(|range| range.1 = event.seq)
                        .or_insert((event.seq, event.seq));
                    published.push(LiveEvent::Job(Arc::new(event)));
                }
                Recorded::Space(mut event) => {
                    let (seq, _) = heads
                        .get_mut(&event.space_id)
                        .ok_or(Error::NotFound("space"))?;
                    *seq += 1;
                    event.seq = *seq;
                    ranges
                        .entry(event.space_id.clone())
                        .and_modify(|range| range.1 = event.seq)
                        .or_insert((event.seq, event.seq));
                    published.push(LiveEvent::Space(Arc::new(event)));
                }
                Recorded::Log(entry) => {
                    let seq = entry.line.seq;
                    logs.entry(entry.job_id.clone())
                        .and_modify(|range| range.1 = seq)
                        .or_insert((seq, seq));
                    published.push(LiveEvent::Log(entry));
                }
            }
        }
        let commit = self.relay.next_commit();
        let notices = CommitNotice {
            replica: self.relay.replica().to_owned(),
            commit,
            spaces: ranges.into_iter().map(|(id, (a, b))| (id, a, b)).collect(),
            logs: logs.into_iter().map(|(id, (a, b))| (id, a, b)).collect(),
        }
        .payloads();
        write_events_and_heads(
            &mut self.conn,
            &rows::event_rows(&published),
            &heads,
            notices,
        )
        .await?;
        let published: Arc<[LiveEvent]> = published.into();
        // Before COMMIT: the notice may reach our relay the moment it lands.
        self.relay.stash(commit, published.clone());
        self.pending = Some((commit, published));
        Ok(())
    }
}

/// A batch's events, its spaces' new heads and its commit notices to the
/// other replicas, as one statement (data-modifying CTEs over arrays, so
/// its text is the same whatever the counts): one round trip where there
/// were one per insert, per space and per notice.
async fn write_events_and_heads(
    conn: &mut PgConnection,
    events: &[rows::EventRow<'_>],
    heads: &HashMap<String, (i64, StatusCounts)>,
    notices: Vec<String>,
) -> Result<()> {
    let column = |value: fn(&rows::EventRow<'_>) -> Option<String>| -> Vec<Option<String>> {
        events.iter().map(value).collect()
    };
    let number =
        |value: fn(&rows::EventRow<'_>) -> i64| -> Vec<i64> { events.iter().map(value).collect() };
    // One order for every column of the heads.
    let heads: Vec<(&String, &(i64, StatusCounts))> = heads.iter().collect();
    let count = |status: JobStatus| -> Vec<i64> {
        heads
            .iter()
            .map(|(_, (_, counts))| counts.get(status) as i64)
            .collect()
    };
    sqlx::query(
        "WITH events AS (INSERT INTO job_events \
         (space_id, seq, job_id, type, status, previous_status, data, counts, created_at) \
         SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::text[], $9::int8[])), \
         heads AS (UPDATE spaces SET event_seq = v.seq, count_scheduled = v.scheduled, \
         count_pending = v.pending, count_delivered = v.delivered, count_running = v.running, \
         count_completed = v.completed, count_dead = v.dead, count_killed = v.killed \
         FROM unnest($10::text[], $11::int8[], $12::int8[], $13::int8[], $14::int8[], \
         $15::int8[], $16::int8[], $17::int8[], $18::int8[]) \
         AS v(id, seq, scheduled, pending, delivered, running, completed, dead, killed) \
         WHERE spaces.id = v.id) \
         SELECT pg_notify($19, notice) FROM unnest($20::text[]) AS notice",
    )
    .bind(column(|event| Some(event.space_id.to_owned())))
    .bind(number(|event| event.seq))
    .bind(column(|event| Some(event.job_id.to_owned())))
    .bind(column(|event| Some(event.kind.to_owned())))
    .bind(column(|event| Some(event.status.to_owned())))
    .bind(column(|event| event.previous_status.map(str::to_owned)))
    .bind(column(|event| event.data.as_deref().map(str::to_owned)))
    .bind(column(|event| {
        event.counts.map(|counts| rows::counts_to_json(&counts))
    }))
    .bind(number(|event| event.at))
    .bind(
        heads
            .iter()
            .map(|(id, _)| (*id).clone())
            .collect::<Vec<String>>(),
    )
    .bind(heads.iter().map(|(_, (seq, _))| *seq).collect::<Vec<i64>>())
    .bind(count(JobStatus::Scheduled))
    .bind(count(JobStatus::Pending))
    .bind(count(JobStatus::Delivered))
    .bind(count(JobStatus::Running))
    .bind(count(JobStatus::Completed))
    .bind(count(JobStatus::Dead))
    .bind(count(JobStatus::Killed))
    .bind(super::relay::COMMITS_CHANNEL)
    .bind(notices)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl batch::Writer for PgWriter {
    async fn begin(&mut self) -> Result<()> {
        self.locked.clear();
        self.staged.clear();
        self.limits.clear();
        sqlx::query("BEGIN").execute(&mut self.conn).await?;
        Ok(())
    }

    async fn lock_ahead(&mut self, mut job_ids: Vec<&str>, keys: Vec<(&str, &str)>) -> Result<()> {
        if !keys.is_empty() {
            self.lock_keys(keys).await?;
        }
        if job_ids.is_empty() {
            return Ok(());
        }
        job_ids.sort_unstable();
        job_ids.dedup();
        // In id order, like every writer's, so two batches cannot deadlock
        // on each other's jobs. Deliveries and timer sweeps skip these rows.
        let rows =
            sqlx::query("SELECT * FROM jobs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
                .bind(&job_ids)
                .fetch_all(&mut self.conn)
                .await?;
        for row in &rows {
            let job = rows::job(row)?;
            self.locked.insert(job.id.clone(), job);
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        self.locked.clear();
        self.settle().await?;
        self.flush().await?;
        sqlx::query("COMMIT").execute(&mut self.conn).await?;
        Ok(())
    }

    async fn rollback(&mut self) {
        if let Err(error) = sqlx::query("ROLLBACK").execute(&mut self.conn).await {
            tracing::warn!(%error, "rollback failed (the transaction may not have started)");
        }
        self.recorded.clear();
        self.locked.clear();
        self.staged.clear();
        self.forgotten.clear();
        if let Some((commit, _)) = self.pending.take() {
            self.relay.unstash(commit);
        }
    }

    fn published(&mut self) -> Option<Announcement> {
        let (_, published) = self.pending.take()?;
        Some(Announcement::new(&self.own_commits, published))
    }

    async fn close(self) {
        if let Err(error) = self.conn.close().await {
            tracing::warn!(%error, "closing a postgres writer connection failed");
        }
    }

    fn connection(&mut self) -> batch::Connection<'_> {
        batch::Connection::Postgres(&mut self.conn)
    }

    async fn record_callback_try(&mut self, attempt: CallbackTry, now: UnixMillis) -> Result<()> {
        let target = JobTarget {
            job_id: attempt.entry.job_id.clone(),
            space_id: None,
        };
        let job = self.load(&target).await?;
        self.record(&job, callback_try_event(&attempt, &job), now);
        outbox::after_try::<Postgres>(&mut self.conn, attempt.entry.id, attempt.retry_at).await
    }

    async fn set_pause(
        &mut self,
        space_id: &str,
        name: &str,
        paused: bool,
        now: UnixMillis,
    ) -> Result<bool> {
        self.require_space(space_id).await?;
        let changed =
            super::super::pauses::write::<Postgres>(&mut self.conn, space_id, name, paused, now)
                .await?;
        if changed {
            let event = super::super::pauses::event(space_id, name, paused, now);
            self.recorded.push(Recorded::Space(event));
        }
        Ok(changed)
    }

    async fn write_schedule(&mut self, write: &ScheduleWrite) -> Result<ScheduleWritten> {
        // An overlap rule reads the previous fire's job.
        self.settle().await?;
        super::super::schedules::write::<Postgres>(&mut self.conn, write).await
    }

    async fn create_jobs(&mut self, new: NewJobs) -> Result<Vec<Replay>> {
        // A create request addresses one space.
        let Some(space_id) = new.jobs.first().map(|job| job.space_id.clone()) else {
            return Ok(Vec::new());
        };
        self.require_space(&space_id).await?;
        // Replays read their jobs as this batch left them.
        self.settle().await?;
        let (jobs, replays) = idempotency::claim::<Postgres>(&mut self.conn, new).await?;
        inserts::jobs::<Postgres>(&mut self.conn, &jobs).await?;
        for job in &jobs {
            self.record(job, machine::created_event(job), job.created_at);
        }
        Ok(replays)
    }

    async fn deliver(&mut self, request: DeliverRequest) -> Result<Vec<Job>> {
        // Its picks read the jobs as this batch left them, where that
        // matters; otherwise the staged rows wait for the commit's UPDATE.
        if self.staged.values().any(Staged::matters_to_picks) {
            self.settle().await?;
        }
        // It may change jobs locked ahead (its own locks do not stop it).
        self.locked.clear();
        let (chosen, now) = concurrency::choose_within_limits(self, &request).await?;
        let mut delivered = Vec::with_capacity(chosen.len());
        for job in chosen {
            let command = Command::Deliver { lease: new_id() };
            delivered.push(
                self.transition_locked(&job, command, &Fence::default(), now)
                    .await?
                    .job,
            );
        }
        Ok(delivered)
    }

    async fn apply(
        &mut self,
        target: &JobTarget,
        command: Command,
        fence: &Fence,
        now: UnixMillis,
    ) -> Result<Applied> {
        if matches!(command, Command::Deliver { .. }) {
            let job = self.load(target).await?;
            concurrency::admit_claim(self, &job).await?;
        }
        if let Some(job) = self.locked.get(&target.job_id).cloned() {
            if target
                .space_id
                .as_ref()
                .is_some_and(|space| *space != job.space_id)
            {
                return Err(Error::NotFound("job"));
            }
            // Statements of this batch that change jobs other than through
            // here (deliveries, timer sweeps, deletes) drop them from
            // `locked`, so this is the row as it is.
            let applied = self.transition_locked(&job, command, fence, now).await?;
            self.locked
                .insert(applied.job.id.clone(), applied.job.clone());
            return Ok(applied);
        }
        for _ in 0..TRANSITION_ATTEMPTS {
            let job = self.load(target).await?;
            if let Some(next) = self.transition(&job, command.clone(), fence, now).await? {
                return Ok(next);
            }
        }
        Err(Error::Unavailable)
    }

    async fn fire_due_timers(&mut self, now: UnixMillis, limit: u32) -> Result<Sweep> {
        self.settle().await?;
        // It may change jobs locked ahead (its own locks do not stop it).
        self.locked.clear();
        let due = sqlx::query(&format!(
            "SELECT * FROM jobs WHERE {} AND due_at <= $1 \
             ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            rows::TIMED
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut self.conn)
        .await?;
        let mut ready = Vec::new();
        for row in &due {
            let job = rows::job(row)?;
            let expired = self
                .transition_locked(&job, Command::Expire, &Fence::default(), now)
                .await?;
            if expired.effects.ready {
                ready.push((expired.job.space_id, expired.job.name));
            }
        }
        self.settle().await?;
        let next_due: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MIN(due_at) FROM jobs WHERE {}",
            rows::TIMED
        ))
        .fetch_one(&mut self.conn)
        .await?;
        Ok(Sweep {
            fired: due.len(),
            ready,
            next_due,
        })
    }

    async fn delete_job(&mut self, target: &JobTarget) -> Result<Job> {
        let job = self.load(target).await?;
        let unwritten = self.recorded.iter().any(|recorded| match recorded {
            Recorded::Event(event) => event.job_id == job.id,
            Recorded::Log(_) | Recorded::Space(_) => false,
        });
        if unwritten {
            // Its events of this batch are written at commit: they would
            // outlive the delete.
            return Err(Error::Conflict(
                "the job changed while it was being deleted; try again".into(),
            ));
        }
        self.locked.remove(&job.id);
        let (job, forgotten) = forget::delete_one::<Postgres>(&mut self.conn, job).await?;
        self.forgotten.extend(forgotten);
        Ok(job)
    }

    async fn prune(&mut self, expired: &Expired) -> Result<u32> {
        // One statement. SKIP LOCKED: replicas pruning at once take
        // different jobs, and a job another writer holds (an operator's
        // retry) is left to it.
        self.settle().await?;
        // It may delete jobs locked ahead (its own locks do not stop it).
        self.locked.clear();
        let pick = forget::expired_ids(expired.status, "$1", "$2", "$3");
        let mut sql = format!("WITH doomed AS ({pick} FOR UPDATE SKIP LOCKED)");
        for table in forget::DEPENDENTS {
            sql.push_str(&format!(
                ", gone_{table} AS (DELETE FROM {table} WHERE job_id IN (SELECT id FROM doomed))"
            ));
        }
        sql.push_str(
            " DELETE FROM jobs WHERE id IN (SELECT id FROM doomed) RETURNING space_id, status",
        );
        let deleted = sqlx::query(&sql)
            .bind(&expired.space_id)
            .bind(expired.before)
            .bind(i64::from(expired.limit))
            .fetch_all(&mut self.conn)
            .await?;
        let before = self.forgotten.len();
        for row in &deleted {
            self.forgotten.push(Forgotten {
                space_id: row.try_get("space_id")?,
                status: rows::status_column(row)?,
            });
        }
        Ok((self.forgotten.len() - before) as u32)
    }

    async fn append_logs(
        &mut self,
        target: &JobTarget,
        lines: Vec<LogLine>,
        now: UnixMillis,
    ) -> Result<i64> {
        let job = self.load(target).await?;
        // Lines of one job are numbered under its row lock, whichever
        // replica appends them.
        sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR NO KEY UPDATE")
            .bind(&job.id)
            .execute(&mut self.conn)
            .await?;
        let first = inserts::log_lines::<Postgres>(&mut self.conn, &job.id, &lines, now).await?;
        let last = first + lines.len() as i64 - 1;
        for (offset, line) in lines.into_iter().enumerate() {
            self.recorded.push(Recorded::Log(Arc::new(JobLogEntry {
                space_id: job.space_id.clone(),
                job_id: job.id.clone(),
                job_name: job.name.clone(),
                status: job.status(),
                line: StoredLogLine {
                    seq: first + offset as i64,
                    level: line.level,
                    message: line.message,
                    at: now,
                },
            })));
        }
        Ok(last)
    }
}

/// The conditions a job ready for `request` meets (after a `WHERE`), then
/// the dispatch order: its space, due, of the names asked for, under
/// `key`, not paused.
fn ready_conditions(
    select: &mut QueryBuilder<'_, Postgres>,
    request: &DeliverRequest,
    key: ReadyKey,
) {
    select.push(" status = 'pending' AND space_id = ");
    select.push_bind(request.space_id.clone());
    select.push(" AND due_at <= ").push_bind(request.now);
    if !request.names.is_empty() {
        select
            .push(" AND name = ANY(")
            .push_bind(request.names.clone())
            .push(")");
    }
    if !request.excluded_names.is_empty() {
        select
            .push(" AND name <> ALL(")
            .push_bind(request.excluded_names.clone())
            .push(")");
    }
    select.push(key.condition());
    select
        .push(super::super::pauses::NOT_PAUSED)
        .push(" ORDER BY priority DESC, due_at, id");
}

/// The advisory-lock classes of concurrency keys and rate-limited names
/// (two-key locks live apart from the one-key locks of idempotency keys).
const KEY_LOCK_CLASS: i32 = 0x636b_6579; // "ckey"
const RATE_LOCK_CLASS: i32 = 0x7261_7465; // "rate"

impl PgWriter {
    /// A transaction-scoped try-lock on (space, name) in `class`: never a
    /// wait, so no two batches can deadlock on these.
    async fn try_lock(&mut self, class: i32, space_id: &str, name: &str) -> Result<bool> {
        let digest = Sha256::new()
            .chain_update(space_id.as_bytes())
            .chain_update([0])
            .chain_update(name.as_bytes())
            .finalize();
        let hash = i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(class)
            .bind(hash)
            .fetch_one(&mut self.conn)
            .await?;
        Ok(locked)
    }
}

#[async_trait]
impl FlowDispatch for PgWriter {
    fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    async fn pick_unkeyed(&mut self, request: &DeliverRequest, count: u32) -> Result<Vec<Job>> {
        let mut select = QueryBuilder::<Postgres>::new("SELECT * FROM jobs WHERE");
        ready_conditions(&mut select, request, ReadyKey::None);
        select.push(" LIMIT ").push_bind(i64::from(count));
        select.push(" FOR UPDATE SKIP LOCKED");
        let rows = select.build().fetch_all(&mut self.conn).await?;
        rows.iter().map(rows::job).collect()
    }

    /// Each key's first jobs through a lateral join, one index seek per
    /// key; the unkeyed lane's behind them when the keys run out. Rows
    /// another core has locked are passed, as in `pick_unkeyed`.
    async fn key_lanes(
        &mut self,
        request: &DeliverRequest,
        round: KeyRound<'_>,
    ) -> Result<KeyLanes> {
        let mut select = QueryBuilder::<Postgres>::new("");
        concurrency::push_round_keys(&mut select, &request.space_id, &round);
        // `KeyRound::per_key`, counted in SQL from the keys found.
        select.push(", per AS (SELECT GREATEST(1, (");
        select.push_bind(round.turns as i64);
        select.push(
            " + COUNT(*) - 1) / GREATEST(COUNT(*), 1)) AS per_key, COUNT(*) AS keys FROM found)",
        );
        // A key without a ready job (all of them due later, paused, or
        // locked by another core) still comes back, once, with no job: the
        // round counts it.
        select.push(
            " SELECT found.n AS lane_n, found.key AS lane_key, picked.* FROM found \
             LEFT JOIN LATERAL (SELECT * FROM jobs WHERE",
        );
        ready_conditions(&mut select, request, ReadyKey::Lane);
        select.push(" LIMIT (SELECT per_key FROM per) FOR UPDATE SKIP LOCKED) AS picked ON true");
        if round.with_unkeyed {
            select.push(" UNION ALL SELECT * FROM (SELECT ");
            // After every key's lane.
            select.push_bind(i64::from(round.max) + 1);
            select.push(" AS lane_n, NULL AS lane_key, jobs.* FROM jobs WHERE");
            ready_conditions(&mut select, request, ReadyKey::None);
            select.push(" LIMIT ").push_bind(i64::from(request.count));
            // Only when the keys ran out within `max` (a one-time filter:
            // otherwise the unkeyed rows are neither read nor locked).
            select.push(
                " FOR UPDATE SKIP LOCKED) AS unkeyed WHERE (SELECT keys FROM per) BETWEEN 1 AND ",
            );
            select.push_bind(i64::from(round.max) - 1);
        }
        select.push(" ORDER BY lane_n, priority DESC, due_at, id");
        let rows = select.build().fetch_all(&mut self.conn).await?;
        KeyLanes::read(&rows, &round)
    }

    /// A try-lock, never a wait: a core that finds the key locked passes it
    /// this time (the holder is leasing its jobs), so no two batches can
    /// deadlock on keys.
    async fn lock_key(&mut self, space_id: &str, key: &str) -> Result<bool> {
        self.try_lock(KEY_LOCK_CLASS, space_id, key).await
    }

    async fn leases(&mut self, space_id: &str, key: &str) -> Result<u32> {
        let keys = [key.to_owned()];
        let held =
            concurrency::leases_by_key::<Postgres>(&mut self.conn, space_id, Some(&keys)).await?;
        Ok(held.get(key).copied().unwrap_or(0))
    }

    async fn read_limits(&mut self, space_id: &str) -> Result<ConcurrencyLimits> {
        concurrency::space_limits::<Postgres>(&mut self.conn, space_id).await
    }

    fn limits_read(&mut self) -> &mut HashMap<String, ConcurrencyLimits> {
        &mut self.limits
    }

    fn turn(&mut self, space_id: &str) -> &mut Option<String> {
        self.turns.entry(space_id.to_owned()).or_default()
    }

    async fn lock_rate(&mut self, space_id: &str, name: &str) -> Result<bool> {
        self.try_lock(RATE_LOCK_CLASS, space_id, name).await
    }

    async fn dispatched(
        &mut self,
        space_id: &str,
        name: &str,
        rate_key: Option<&str>,
        since: UnixMillis,
    ) -> Result<u32> {
        concurrency::forget_dispatches::<Postgres>(&mut self.conn, space_id, name, since).await?;
        concurrency::dispatches::<Postgres>(&mut self.conn, space_id, name, rate_key, since).await
    }

    async fn record_dispatch(
        &mut self,
        space_id: &str,
        name: &str,
        rate_key: &str,
        at: UnixMillis,
    ) -> Result<()> {
        concurrency::record_dispatch::<Postgres>(&mut self.conn, space_id, name, rate_key, at).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use sqlx::{Connection, PgConnection};
    use tokio::sync::broadcast;

    use super::PgWriter;
    use crate::clock::Clock;
    use crate::store::postgres::relay::Relay;
    use crate::store::testing::{self, PostgresDatabase};

    /// The writer's round of key lanes (one statement, a lateral join per
    /// key) reads what a model of the round says it holds.
    #[tokio::test]
    async fn key_lanes_follow_their_model() {
        let database = PostgresDatabase::create().await;
        let store =
            crate::store::postgres::open(&database.url, Duration::from_secs(10), Clock::system())
                .await
                .unwrap();
        let space_id = testing::add_space(&store).await;
        let mut writer = PgWriter::new(
            PgConnection::connect(&database.url).await.unwrap(),
            Arc::new(Relay::new("model".into())),
            broadcast::channel(16).0,
            Clock::system(),
        );
        testing::key_lanes_follow_their_model(&store, &space_id, &mut writer).await;
    }
}
