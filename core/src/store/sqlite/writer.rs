//! SQLite's side of the group-commit writer (see `store::batch`). SQLite
//! allows one writer at a time, so one task owns the write connection. It is
//! the only writer, so it keeps each space's head (last event sequence number
//! and job counts) in memory and writes it back once per batch, and keeps the
//! jobs it last wrote so the ack and complete after a delivery need no SELECT.
//!
//! Transitions are decided in memory and written set-based: every job a
//! batch changed is written by one `UPDATE ... FROM (VALUES ...)` just before
//! COMMIT (and before a scan that must see them), however many operations
//! touched it. Each statement is a round trip to sqlx's connection thread,
//! and those round trips, not SQLite, were the cost of a batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::broadcast;

use crate::clock::{Clock, UnixMillis};
use crate::concurrency::ConcurrencyLimits;
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::job::machine::{self, Command, Fence};
use crate::job::spec::NewJobs;
use crate::job::{
    EventDraft, Job, JobEvent, JobLogEntry, JobStatus, LiveEvent, LogLine, SpaceEvent,
    StatusCounts, StoredLogLine,
};
use crate::retention::Expired;
use crate::store::batch::{self, Announcement, Applied, callback_try_event};
use crate::store::concurrency::{self, FlowDispatch, KeyLanes, KeyRound, ReadyKey};
use crate::store::durability::{Durability, SyncCommits};
use crate::store::forget::{self, Forgotten};
use crate::store::idempotency;
use crate::store::schedules::{ScheduleWrite, ScheduleWritten};
use crate::store::{CallbackTry, DeliverRequest, JobTarget, Replay, Sweep};
use crate::store::{inserts, outbox, rows};

/// Rows per multi-row statement of the batch's buffer, well within SQLite's
/// 32,766 bound parameters (`Dialect::MAX_PARAMETERS`).
const EVENT_ROWS_PER_INSERT: usize = 3000;
/// 17 parameters a row.
const JOB_ROWS_PER_UPDATE: usize = 1000;
/// Live jobs kept by the writer; past this the cache starts over.
const CACHED_JOBS: usize = 16_384;
/// Where a flush checks, statement by statement, that each UPDATE changed
/// the rows it meant to (`Statements::expect_changed`). The check runs
/// inside the flush's one round trip: a failed CHECK stops the statements
/// after it, COMMIT included, and the batch rolls back.
const CHANGES_TABLE: &str = "CREATE TEMP TABLE IF NOT EXISTS writer_changes (\
    id INTEGER PRIMARY KEY, \
    unexpected INTEGER NOT NULL CONSTRAINT rows_changed_under_their_writer CHECK (unexpected = 0))";

/// The timer scan: due timers, soonest first (the index `jobs_timers`).
pub(super) fn due_timers_sql() -> String {
    format!(
        "SELECT * FROM jobs WHERE {} AND due_at <= ? ORDER BY due_at LIMIT ?",
        rows::TIMED
    )
}

/// Whether a space holds any keyed job: one seek on `jobs_keyed`.
pub(super) const KEYED_SPACE: &str =
    "SELECT EXISTS (SELECT 1 FROM jobs WHERE space_id = ? AND concurrency_key IS NOT NULL)";

/// The conditions a job ready for `request` meets (after a `WHERE`): its
/// space, due, of the names asked for, under `key`, not already taken by
/// this batch (`taken`, a JSON array of ids), not paused.
fn ready_conditions(
    select: &mut QueryBuilder<'_, Sqlite>,
    request: &DeliverRequest,
    key: ReadyKey,
    taken: Option<&str>,
) {
    select.push(" status = 'pending' AND space_id = ");
    select.push_bind(request.space_id.clone());
    select.push(" AND due_at <= ").push_bind(request.now);
    let mut names_in = |test: &str, names: &[String]| {
        if names.is_empty() {
            return;
        }
        select.push(format!(" AND name {test} ("));
        let mut listed = select.separated(", ");
        for name in names {
            listed.push_bind(name.clone());
        }
        select.push(")");
    };
    names_in("IN", &request.names);
    names_in("NOT IN", &request.excluded_names);
    select.push(key.condition());
    if let Some(taken) = taken {
        select
            .push(" AND id NOT IN (SELECT value FROM json_each(")
            .push_bind(taken.to_owned())
            .push("))");
    }
    select.push(super::super::pauses::NOT_PAUSED);
}

/// The soonest timer left after a scan.
pub(super) fn next_timer_sql() -> String {
    format!("SELECT MIN(due_at) FROM jobs WHERE {}", rows::TIMED)
}

/// A space's last event sequence number and its job counts, as of the open
/// transaction. The writer is the only writer, so its copy is authoritative.
#[derive(Clone, Copy)]
struct Head {
    seq: i64,
    counts: StatusCounts,
}

/// A job the open transaction changed but has not written yet.
struct Unwritten {
    /// The row as it is in the database: the update is conditional on it.
    stored: StoredState,
    job: Job,
}

#[derive(Clone)]
struct StoredState {
    status: JobStatus,
    attempt_number: u32,
    lease: Option<String>,
}

impl StoredState {
    fn of(job: &Job) -> Self {
        Self {
            status: job.status(),
            attempt_number: job.attempt_number,
            lease: job.state.lease().map(str::to_owned),
        }
    }
}

pub struct SqliteWriter {
    conn: SqliteConnection,
    clock: Clock,
    /// Jobs changed since the last write of job rows, by id.
    unwritten: HashMap<String, Unwritten>,
    heads: HashMap<String, Head>,
    dirty_spaces: HashSet<String>,
    /// Unfinished jobs as this writer last wrote them (committed or in the
    /// open transaction; a rollback forgets them all).
    jobs: HashMap<String, Job>,
    /// What the open transaction published: events (inserted before COMMIT)
    /// and log lines, broadcast after COMMIT.
    recorded: Vec<LiveEvent>,
    published: broadcast::Sender<Arc<[LiveEvent]>>,
    /// Set by the checkpoint task when the WAL has grown past its bound.
    restart_wal: Arc<AtomicBool>,
    /// Per space, the key its last keyed delivery ended on.
    turns: HashMap<String, Option<String>>,
    /// Per space, whether it holds any job with a concurrency key, as far
    /// as known. Deliveries in a space without one skip the statement that
    /// looks for ready keys: a round trip to the connection's thread in
    /// every fill. Read once per space; this writer alone inserts jobs, so
    /// it stays true while it marks the keyed jobs it inserts (and is
    /// forgotten when someone else's statements run on the connection).
    keyed_spaces: HashMap<String, bool>,
    /// Spaces' concurrency limits as last read. Only this writer writes, so
    /// they stay true across batches until a statement of someone else's
    /// runs on the connection (`connection`), which may change them.
    limits: HashMap<String, ConcurrencyLimits>,
    /// What makes a commit durable, when the connection leaves its fsync to
    /// this writer (`synchronous = NORMAL`); taken when the batches start.
    sync: Option<Box<dyn SyncCommits>>,
}

impl SqliteWriter {
    /// Whether the space holds any keyed job, read once per space: the
    /// writer alone inserts jobs and marks a space keyed when it does.
    async fn holds_keyed_jobs(&mut self, space_id: &str) -> Result<bool> {
        if let Some(keyed) = self.keyed_spaces.get(space_id) {
            return Ok(*keyed);
        }
        let keyed: bool = sqlx::query_scalar(KEYED_SPACE)
            .bind(space_id)
            .fetch_one(&mut self.conn)
            .await?;
        self.keyed_spaces.insert(space_id.to_owned(), keyed);
        Ok(keyed)
    }

    /// Rows still pending in the database that this batch already took, as
    /// a JSON array of ids (None when there are none).
    fn taken_ids(&self) -> Result<Option<String>> {
        let taken: Vec<&str> = self
            .unwritten
            .values()
            .filter(|unwritten| unwritten.stored.status == JobStatus::Pending)
            .map(|unwritten| unwritten.job.id.as_str())
            .collect();
        (!taken.is_empty())
            .then(|| serde_json::to_string(&taken))
            .transpose()
            .map_err(Error::internal)
    }

    pub async fn new(
        mut conn: SqliteConnection,
        published: broadcast::Sender<Arc<[LiveEvent]>>,
        restart_wal: Arc<AtomicBool>,
        clock: Clock,
        sync: Option<Box<dyn SyncCommits>>,
    ) -> Result<Self> {
        sqlx::query(CHANGES_TABLE).execute(&mut conn).await?;
        Ok(Self {
            conn,
            clock,
            unwritten: HashMap::new(),
            heads: HashMap::new(),
            dirty_spaces: HashSet::new(),
            jobs: HashMap::new(),
            recorded: Vec::new(),
            published,
            restart_wal,
            turns: HashMap::new(),
            keyed_spaces: HashMap::new(),
            limits: HashMap::new(),
            sync,
        })
    }

    async fn require_space(&mut self, space_id: &str) -> Result<()> {
        // A space whose head this writer holds exists: spaces are never
        // deleted.
        if self.heads.contains_key(space_id) {
            return Ok(());
        }
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM spaces WHERE id = ?")
            .bind(space_id)
            .fetch_optional(&mut self.conn)
            .await?;
        exists.map(|_| ()).ok_or(Error::NotFound("space"))
    }

    async fn load(&mut self, target: &JobTarget) -> Result<Job> {
        let known = match self.unwritten.get(&target.job_id) {
            Some(unwritten) => Some(&unwritten.job),
            None => self.jobs.get(&target.job_id),
        };
        let job = match known {
            Some(job) => job.clone(),
            None => {
                let row = sqlx::query("SELECT * FROM jobs WHERE id = ?")
                    .bind(&target.job_id)
                    .fetch_optional(&mut self.conn)
                    .await?
                    .ok_or(Error::NotFound("job"))?;
                rows::job(&row)?
            }
        };
        match &target.space_id {
            Some(space) if *space != job.space_id => Err(Error::NotFound("job")),
            _ => Ok(job),
        }
    }

    /// Runs `command` through the state machine and stages the result; the
    /// row is written with the batch (`write_jobs`).
    async fn transition(
        &mut self,
        job: &Job,
        command: Command,
        fence: &Fence,
        now: UnixMillis,
    ) -> Result<Applied> {
        let transition = machine::apply(job, command, fence, now)?;
        let next = transition.job;
        match self.unwritten.get_mut(&next.id) {
            Some(unwritten) => unwritten.job = next.clone(),
            None => {
                self.unwritten.insert(
                    next.id.clone(),
                    Unwritten {
                        stored: StoredState::of(job),
                        job: next.clone(),
                    },
                );
            }
        }
        // The cache learns the job once its row is written (`remember`).
        for draft in transition.events {
            self.record(&next, draft, now).await?;
        }
        if transition.effects.callback {
            outbox::owe_callback::<Sqlite>(&mut self.conn, &next, now).await?;
        }
        Ok(Applied {
            job: next,
            effects: transition.effects,
        })
    }

    /// Keeps the jobs whose rows were just written, as the cache's copy
    /// (moved, not cloned: the staged copy is no longer needed). Until then
    /// `load` finds a job's latest state among the staged ones.
    fn remember(&mut self, written: Vec<Unwritten>) {
        for Unwritten { job, .. } in written {
            if job.status().is_terminal() {
                self.jobs.remove(&job.id);
                continue;
            }
            if self.jobs.len() >= CACHED_JOBS {
                self.jobs.clear();
            }
            self.jobs.insert(job.id.clone(), job);
        }
    }

    async fn record(&mut self, job: &Job, draft: EventDraft, now: UnixMillis) -> Result<()> {
        let mut head = self.head(&job.space_id).await?;
        let mut event = JobEvent {
            seq: head.seq + 1,
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
        };
        head.seq = event.seq;
        if event.changes_counts() {
            head.counts.apply(&event);
            event.counts = Some(head.counts);
        }
        self.heads.insert(job.space_id.clone(), head);
        self.dirty_spaces.insert(job.space_id.clone());
        self.recorded.push(LiveEvent::Job(Arc::new(event)));
        Ok(())
    }

    /// Numbers a space's own event (a pause, a resume) in its sequence.
    async fn record_space(&mut self, mut event: SpaceEvent) -> Result<()> {
        let mut head = self.head(&event.space_id).await?;
        head.seq += 1;
        event.seq = head.seq;
        self.heads.insert(event.space_id.clone(), head);
        self.dirty_spaces.insert(event.space_id.clone());
        self.recorded.push(LiveEvent::Space(Arc::new(event)));
        Ok(())
    }

    async fn head(&mut self, space_id: &str) -> Result<Head> {
        if let Some(head) = self.heads.get(space_id) {
            return Ok(*head);
        }
        let row = sqlx::query("SELECT * FROM spaces WHERE id = ?")
            .bind(space_id)
            .fetch_optional(&mut self.conn)
            .await?
            .ok_or(Error::NotFound("space"))?;
        let head = Head {
            seq: row.try_get("event_seq")?,
            counts: rows::space_counts(&row)?,
        };
        Ok(head)
    }

    /// Whether this batch recorded events of the job that are not written
    /// yet (they would outlive a delete).
    fn has_unwritten_events(&self, job_id: &str) -> bool {
        self.recorded.iter().any(|recorded| match recorded {
            LiveEvent::Job(event) => event.job_id == job_id,
            LiveEvent::Log(_) | LiveEvent::Space(_) => false,
        })
    }

    /// Takes deleted jobs off their spaces' counts.
    async fn count_off(&mut self, forgotten: Vec<Forgotten>) -> Result<()> {
        for job in forgotten {
            let mut head = self.head(&job.space_id).await?;
            head.counts.forget(job.status);
            self.heads.insert(job.space_id.clone(), head);
            self.dirty_spaces.insert(job.space_id);
        }
        Ok(())
    }

    /// Writes every staged job row, each conditional on the row being as it
    /// was read.
    async fn write_jobs(&mut self) -> Result<()> {
        let staged: Vec<Unwritten> = self.unwritten.drain().map(|(_, staged)| staged).collect();
        let mut sql = Statements::default();
        sql.update_jobs(&staged);
        sql.execute(&mut self.conn).await?;
        self.remember(staged);
        Ok(())
    }

    /// Writes the batch's jobs, events, sequence counters and counts, and
    /// commits them, all in one round trip.
    async fn flush_and_commit(&mut self) -> Result<()> {
        let staged: Vec<Unwritten> = self.unwritten.drain().map(|(_, staged)| staged).collect();
        let events = rows::event_rows(&self.recorded);
        let heads: Vec<(&String, &Head)> = self
            .dirty_spaces
            .iter()
            .map(|space_id| (space_id, &self.heads[space_id]))
            .collect();
        let mut sql = Statements::default();
        sql.update_jobs(&staged);
        sql.insert_events(&events);
        sql.update_heads(&heads);
        sql.next("COMMIT");
        sql.execute(&mut self.conn).await?;
        self.remember(staged);
        Ok(())
    }
}

/// Several statements sent as one: sqlx runs them in order on its connection
/// thread, hands out the bound values statement by statement, and stops at
/// the first that fails.
#[derive(Default)]
struct Statements<'a> {
    sql: Option<QueryBuilder<'a, Sqlite>>,
}

impl<'a> Statements<'a> {
    fn next(&mut self, statement: &str) -> &mut QueryBuilder<'a, Sqlite> {
        let sql = self.sql.get_or_insert_with(|| QueryBuilder::new(""));
        if !sql.sql().is_empty() {
            sql.push("; ");
        }
        sql.push(statement);
        sql
    }

    /// Fails the statements here unless the one before changed `rows` rows:
    /// anything else means the writer's picture of the database is wrong.
    /// The writer is the only one writing, so this is a bug, not a race.
    fn expect_changed(&mut self, rows: usize) {
        self.next(
            "INSERT OR REPLACE INTO temp.writer_changes (id, unexpected) VALUES (1, changes() - ",
        )
        .push_bind(i64::try_from(rows).unwrap_or(i64::MAX))
        .push(")");
    }

    /// Each job row conditional on the row being as it was read.
    fn update_jobs(&mut self, staged: &'a [Unwritten]) {
        for chunk in staged.chunks(JOB_ROWS_PER_UPDATE) {
            let update = self.next(
                "UPDATE jobs SET status = v.column2, attempt_number = v.column3, due_at = v.column4, \
                 lease_id = v.column5, delivered_at = v.column6, started_at = v.column7, \
                 completed_at = v.column8, result = v.column9, progress = v.column10, \
                 checkpoint = v.column11, last_error = v.column12, kill_reason = v.column13, \
                 updated_at = v.column14 FROM (",
            );
            update.push_values(chunk, |mut row, Unwritten { stored, job }| {
                row.push_bind(&job.id)
                    .push_bind(job.status().as_str())
                    .push_bind(i64::from(job.attempt_number))
                    .push_bind(job.state.due_at())
                    .push_bind(job.state.lease())
                    .push_bind(job.delivered_at)
                    .push_bind(job.started_at)
                    .push_bind(job.completed_at)
                    .push_bind(&job.result)
                    .push_bind(&job.progress)
                    .push_bind(&job.checkpoint)
                    .push_bind(&job.last_error)
                    .push_bind(&job.kill_reason)
                    .push_bind(job.updated_at)
                    .push_bind(stored.status.as_str())
                    .push_bind(i64::from(stored.attempt_number))
                    .push_bind(stored.lease.as_deref());
            });
            update.push(
                ") AS v WHERE jobs.id = v.column1 AND jobs.status = v.column15 \
                 AND jobs.attempt_number = v.column16 AND jobs.lease_id IS v.column17",
            );
            self.expect_changed(chunk.len());
        }
    }

    /// No count to check: an INSERT writes every row it lists or fails.
    fn insert_events(&mut self, events: &'a [rows::EventRow<'a>]) {
        for chunk in events.chunks(EVENT_ROWS_PER_INSERT) {
            let insert = self.next(
                "INSERT INTO job_events (space_id, seq, job_id, type, status, previous_status, data, created_at) ",
            );
            insert.push_values(chunk, |mut row, event| {
                row.push_bind(event.space_id)
                    .push_bind(event.seq)
                    .push_bind(event.job_id)
                    .push_bind(event.kind)
                    .push_bind(event.status)
                    .push_bind(event.previous_status)
                    .push_bind(event.data.as_deref())
                    .push_bind(event.at);
            });
        }
    }

    fn update_heads(&mut self, heads: &[(&'a String, &Head)]) {
        for (space_id, head) in heads {
            let count = |status: JobStatus| head.counts.get(status) as i64;
            let update = self.next("UPDATE spaces SET event_seq = ");
            update.push_bind(head.seq);
            for (column, status) in [
                ("count_scheduled", JobStatus::Scheduled),
                ("count_pending", JobStatus::Pending),
                ("count_delivered", JobStatus::Delivered),
                ("count_running", JobStatus::Running),
                ("count_completed", JobStatus::Completed),
                ("count_dead", JobStatus::Dead),
                ("count_killed", JobStatus::Killed),
            ] {
                update
                    .push(format_args!(", {column} = "))
                    .push_bind(count(status));
            }
            update.push(" WHERE id = ").push_bind(*space_id);
            self.expect_changed(1);
        }
    }

    async fn execute(self, conn: &mut SqliteConnection) -> Result<()> {
        if let Some(mut sql) = self.sql {
            sql.build().execute(conn).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl batch::Writer for SqliteWriter {
    async fn begin(&mut self) -> Result<()> {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        self.flush_and_commit().await?;
        self.dirty_spaces.clear();
        Ok(())
    }

    async fn rollback(&mut self) {
        if let Err(error) = sqlx::query("ROLLBACK").execute(&mut self.conn).await {
            // SQLite ends the transaction itself when a statement fails for
            // lack of disk or memory; nothing is left to roll back then.
            if error.to_string().contains("no transaction is active") {
                tracing::debug!("the failed transaction was already rolled back");
            } else {
                tracing::warn!(%error, "rollback failed (the transaction may not have started)");
            }
        }
        self.heads.clear();
        self.dirty_spaces.clear();
        self.limits.clear();
        self.unwritten.clear();
        self.jobs.clear();
        self.recorded.clear();
    }

    fn published(&mut self) -> Option<Announcement> {
        if self.recorded.is_empty() {
            return None;
        }
        let events: Arc<[LiveEvent]> = self.recorded.drain(..).collect();
        Some(Announcement::new(&self.published, events))
    }

    fn durability(&mut self) -> Durability {
        // COMMIT only writes the WAL; `sync` makes it durable, off the
        // writer's serial path. SQLite still syncs where a checkpoint needs
        // it (the WAL before copying it back, the database file after, the
        // WAL's header when it starts over).
        match self.sync.take() {
            Some(sync) => Durability::AfterSync(sync),
            None => Durability::AtCommit,
        }
    }

    /// The only writer locks nothing ahead, so what arrives while a batch
    /// runs can join it.
    fn takes_late_operations(&self) -> bool {
        true
    }

    async fn between_batches(&mut self) {
        if !self.restart_wal.swap(false, Ordering::AcqRel) {
            return;
        }
        // No write is open here and this is the only writer, so the
        // checkpoint waits for nothing but readers still on the WAL (short
        // reads); the side task's PASSIVE runs left little to copy. The next
        // transaction then starts the WAL over.
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
            .execute(&mut self.conn)
            .await
        {
            tracing::warn!(%error, "WAL restart checkpoint failed; trying again");
            self.restart_wal.store(true, Ordering::Release);
        }
    }

    async fn close(mut self) {
        if let Err(error) = self.conn.close().await {
            tracing::warn!(%error, "closing the sqlite writer connection failed");
        }
    }

    fn connection(&mut self) -> batch::Connection<'_> {
        // What runs there may set a space's limits, or add keyed jobs.
        self.limits.clear();
        self.keyed_spaces.clear();
        batch::Connection::Sqlite(&mut self.conn)
    }

    async fn record_callback_try(&mut self, attempt: CallbackTry, now: UnixMillis) -> Result<()> {
        let entry = &attempt.entry;
        let target = JobTarget {
            job_id: entry.job_id.clone(),
            space_id: None,
        };
        let job = self.load(&target).await?;
        let draft = callback_try_event(&attempt, &job);
        self.record(&job, draft, now).await?;
        outbox::after_try::<Sqlite>(&mut self.conn, attempt.entry.id, attempt.retry_at).await
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
            super::super::pauses::write::<Sqlite>(&mut self.conn, space_id, name, paused, now)
                .await?;
        if changed {
            self.record_space(super::super::pauses::event(space_id, name, paused, now))
                .await?;
        }
        Ok(changed)
    }

    async fn write_schedule(&mut self, write: &ScheduleWrite) -> Result<ScheduleWritten> {
        super::super::schedules::write::<Sqlite>(&mut self.conn, write).await
    }

    async fn create_jobs(&mut self, new: NewJobs) -> Result<Vec<Replay>> {
        // A create request addresses one space.
        let Some(space_id) = new.jobs.first().map(|job| job.space_id.clone()) else {
            return Ok(Vec::new());
        };
        self.require_space(&space_id).await?;
        let (jobs, replays) = idempotency::claim::<Sqlite>(&mut self.conn, new).await?;
        if jobs.iter().any(|job| job.concurrency_key.is_some()) {
            self.keyed_spaces.insert(space_id.clone(), true);
        }
        inserts::jobs::<Sqlite>(&mut self.conn, &jobs).await?;
        for job in &jobs {
            self.record(job, machine::created_event(job), job.created_at)
                .await?;
        }
        Ok(replays)
    }

    async fn deliver(&mut self, request: DeliverRequest) -> Result<Vec<Job>> {
        let (chosen, now) = concurrency::choose_within_limits(self, &request).await?;
        let mut delivered = Vec::with_capacity(chosen.len());
        for job in chosen {
            let command = Command::Deliver { lease: new_id() };
            delivered.push(
                self.transition(&job, command, &Fence::default(), now)
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
        let job = self.load(target).await?;
        if matches!(command, Command::Deliver { .. }) {
            concurrency::admit_claim(self, &job).await?;
        }
        self.transition(&job, command, fence, now).await
    }

    async fn fire_due_timers(&mut self, now: UnixMillis, limit: u32) -> Result<Sweep> {
        // The scan below must see this batch's transitions.
        self.write_jobs().await?;
        let due = sqlx::query(&due_timers_sql())
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut self.conn)
            .await?;
        let mut ready = Vec::new();
        for row in &due {
            let job = rows::job(row)?;
            let expired = self
                .transition(&job, Command::Expire, &Fence::default(), now)
                .await?;
            if expired.effects.ready {
                ready.push((expired.job.space_id, expired.job.name));
            }
        }
        let next_due: Option<i64> = sqlx::query_scalar(&next_timer_sql())
            .fetch_one(&mut self.conn)
            .await?;
        Ok(Sweep {
            fired: due.len(),
            ready,
            next_due,
        })
    }

    async fn delete_job(&mut self, target: &JobTarget) -> Result<Job> {
        // The delete below must see this batch's transitions.
        self.write_jobs().await?;
        let job = self.load(target).await?;
        if self.has_unwritten_events(&job.id) {
            return Err(Error::Conflict(
                "the job changed while it was being deleted; try again".into(),
            ));
        }
        let (job, forgotten) = forget::delete_one::<Sqlite>(&mut self.conn, job).await?;
        self.count_off(forgotten).await?;
        Ok(job)
    }

    async fn prune(&mut self, expired: &Expired) -> Result<u32> {
        // The batch runs it first (see `batch::run`), so nothing is staged
        // or recorded yet that it could delete. One round trip (statements run in order, each
        // taking its own bound values): every statement picks the same jobs,
        // since this writer is the only one.
        let pick = forget::expired_ids(expired.status, "?", "?", "?");
        let mut sql = String::new();
        for table in forget::DEPENDENTS {
            sql.push_str(&format!("DELETE FROM {table} WHERE job_id IN ({pick}); "));
        }
        sql.push_str(&format!(
            "DELETE FROM jobs WHERE id IN ({pick}) RETURNING space_id, status"
        ));
        let mut query = sqlx::query(&sql);
        for _ in 0..=forget::DEPENDENTS.len() {
            query = query
                .bind(&expired.space_id)
                .bind(expired.before)
                .bind(i64::from(expired.limit));
        }
        let deleted = query.fetch_all(&mut self.conn).await?;
        let mut forgotten = Vec::with_capacity(deleted.len());
        for row in &deleted {
            forgotten.push(Forgotten {
                space_id: row.try_get("space_id")?,
                status: rows::status_column(row)?,
            });
        }
        let count = forgotten.len() as u32;
        self.count_off(forgotten).await?;
        Ok(count)
    }

    async fn append_logs(
        &mut self,
        target: &JobTarget,
        lines: Vec<LogLine>,
        now: UnixMillis,
    ) -> Result<i64> {
        let job = self.load(target).await?;
        let first = inserts::log_lines::<Sqlite>(&mut self.conn, &job.id, &lines, now).await?;
        let last = first + lines.len() as i64 - 1;
        for (offset, line) in lines.into_iter().enumerate() {
            self.recorded.push(LiveEvent::Log(Arc::new(JobLogEntry {
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

#[async_trait]
impl FlowDispatch for SqliteWriter {
    fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// Each key's first jobs by a correlated pick (SQLite has no lateral
    /// join); the unkeyed lane's behind them when the keys run out.
    async fn key_lanes(
        &mut self,
        request: &DeliverRequest,
        round: KeyRound<'_>,
    ) -> Result<KeyLanes> {
        if !self.holds_keyed_jobs(&request.space_id).await? {
            return Ok(KeyLanes::default());
        }
        let taken = self.taken_ids()?;
        let mut select = QueryBuilder::<Sqlite>::new("");
        concurrency::push_round_keys(&mut select, &request.space_id, &round);
        // A key without a ready job (all of them due later, or paused)
        // still comes back, once, with no job: the round counts it.
        select.push(
            " SELECT found.n AS lane_n, found.key AS lane_key, jobs.* FROM found \
             LEFT JOIN jobs ON jobs.id IN (SELECT id FROM jobs WHERE",
        );
        ready_conditions(&mut select, request, ReadyKey::Lane, taken.as_deref());
        // `KeyRound::per_key`, counted in SQL from the keys found.
        select.push(" ORDER BY priority DESC, due_at, id LIMIT (SELECT MAX(1, (");
        select.push_bind(round.turns as i64);
        select.push(" + COUNT(*) - 1) / MAX(COUNT(*), 1)) FROM found))");
        if round.with_unkeyed {
            select.push(" UNION ALL SELECT * FROM (SELECT ");
            // After every key's lane.
            select.push_bind(i64::from(round.max) + 1);
            select.push(" AS lane_n, NULL AS lane_key, jobs.* FROM jobs WHERE");
            ready_conditions(&mut select, request, ReadyKey::None, taken.as_deref());
            select.push(" ORDER BY priority DESC, due_at, id LIMIT ");
            select.push_bind(i64::from(request.count));
            select.push(") WHERE (SELECT COUNT(*) FROM found) BETWEEN 1 AND ");
            select.push_bind(i64::from(round.max) - 1);
        }
        select.push(" ORDER BY lane_n, priority DESC, due_at, id");
        let rows = select.build().fetch_all(&mut self.conn).await?;
        KeyLanes::read(&rows, &round)
    }

    async fn pick_unkeyed(&mut self, request: &DeliverRequest, count: u32) -> Result<Vec<Job>> {
        let taken = self.taken_ids()?;
        let mut select = QueryBuilder::<Sqlite>::new("SELECT * FROM jobs WHERE");
        ready_conditions(&mut select, request, ReadyKey::None, taken.as_deref());
        select
            .push(" ORDER BY priority DESC, due_at, id LIMIT ")
            .push_bind(i64::from(count));
        let rows = select.build().fetch_all(&mut self.conn).await?;
        rows.iter().map(rows::job).collect()
    }

    /// The only writer: no other transaction leases anything meanwhile.
    async fn lock_key(&mut self, _space_id: &str, _key: &str) -> Result<bool> {
        Ok(true)
    }

    async fn leases(&mut self, space_id: &str, key: &str) -> Result<u32> {
        // Leases this batch made or ended are staged in memory: write them
        // so the count sees them.
        if !self.unwritten.is_empty() {
            self.write_jobs().await?;
        }
        let keys = [key.to_owned()];
        let held =
            concurrency::leases_by_key::<Sqlite>(&mut self.conn, space_id, Some(&keys)).await?;
        Ok(held.get(key).copied().unwrap_or(0))
    }

    async fn read_limits(&mut self, space_id: &str) -> Result<ConcurrencyLimits> {
        concurrency::space_limits::<Sqlite>(&mut self.conn, space_id).await
    }

    fn limits_read(&mut self) -> &mut HashMap<String, ConcurrencyLimits> {
        &mut self.limits
    }

    fn turn(&mut self, space_id: &str) -> &mut Option<String> {
        self.turns.entry(space_id.to_owned()).or_default()
    }

    /// The only writer: no other transaction dispatches meanwhile.
    async fn lock_rate(&mut self, _space_id: &str, _name: &str) -> Result<bool> {
        Ok(true)
    }

    async fn dispatched(
        &mut self,
        space_id: &str,
        name: &str,
        rate_key: Option<&str>,
        since: UnixMillis,
    ) -> Result<u32> {
        concurrency::forget_dispatches::<Sqlite>(&mut self.conn, space_id, name, since).await?;
        concurrency::dispatches::<Sqlite>(&mut self.conn, space_id, name, rate_key, since).await
    }

    async fn record_dispatch(
        &mut self,
        space_id: &str,
        name: &str,
        rate_key: &str,
        at: UnixMillis,
    ) -> Result<()> {
        concurrency::record_dispatch::<Sqlite>(&mut self.conn, space_id, name, rate_key, at).await
    }
}
