//! The storage seam. Callers see only `Store`, the same for both backends;
//! each backend brings its migrations, its writers and its `Dialect`.
//!
//! Job transitions are decided by `job::machine::apply` inside the store's
//! transaction, and written with a statement conditional on the state that
//! was read, so every backend enforces the same state machine.

mod batch;
pub mod concurrency;
#[cfg(test)]
mod conformance;
mod dialect;
mod durability;
mod filter;
mod forget;
pub mod handoff;
mod idempotency;
mod inserts;
mod outbox;
mod pauses;
pub mod postgres;
mod reads;
mod rows;
pub mod schedules;
mod sessions;
mod spaces;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod testing;

pub use self::idempotency::Replay;
pub use self::pauses::WHOLE_SPACE;
pub use self::schedules::{Fire, FireClaim, ScheduleQuery, ScheduleWrite, ScheduleWritten};
pub use self::sessions::{MAX_SESSIONS_PER_KEY, SessionRecord, SessionWrite};

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{broadcast, oneshot};

use self::batch::{Writer, Writes, on_connection};
use self::durability::Synced;
use self::handoff::{Waiter, Waiters};
use self::reads::Reads;
use crate::auth::KeyHash;
use crate::clock::{Clock, UnixMillis};
use crate::concurrency::ConcurrencyLimits;
use crate::error::{Error, Result};
use crate::job::machine::{Command, Fence};
use crate::job::spec::NewJobs;
use crate::job::{
    Job, JobEvent, JobStatus, LiveEvent, LogLevel, LogLine, StatusCounts, StoredLogLine,
};
use crate::metrics::WriterMetrics;
use crate::retention::{Expired, RetentionOverrides};
use crate::schedule::Schedule;

/// What `put_setting` does when the setting exists already.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingWrite {
    /// Keep the stored value (first writer wins, across replicas too).
    KeepExisting,
    /// Overwrite it.
    Replace,
    /// Overwrite it only if it still holds this value (compare and set:
    /// the value returned says who won).
    ReplaceIf(String),
}

impl SettingWrite {
    /// The statement, with the name as `$1`, the value as `$2` and any
    /// expected value as `$3`; both backends speak it alike.
    pub(crate) fn statement(&self) -> &'static str {
        match self {
            Self::KeepExisting => {
                "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
            }
            Self::Replace => {
                "INSERT INTO settings (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value"
            }
            Self::ReplaceIf(_) => {
                "INSERT INTO settings (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value WHERE settings.value = $3"
            }
        }
    }

    pub(crate) fn expected(&self) -> Option<&str> {
        match self {
            Self::ReplaceIf(expected) => Some(expected),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceRecord {
    pub id: String,
    pub name: String,
    /// None once revoked, until a new one is issued.
    pub public_token: Option<String>,
    /// Identifies the space's event sequence (the space stream's
    /// `streamInstanceId`).
    pub stream_id: String,
    /// Whether job streams of this space may be opened without a token.
    pub anonymous_progress_streams: bool,
    pub push: Option<PushTarget>,
    /// The space's own retention ages, over the server's.
    pub retention: RetentionOverrides,
    /// Where Slack notifications go, and which.
    pub slack: Option<SlackTarget>,
    pub concurrency: ConcurrencyLimits,
    pub created_at: UnixMillis,
}

/// A Slack Incoming Webhook and the job events it is told of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlackTarget {
    pub url: String,
    /// Of `SLACK_EVENTS`.
    pub events: Vec<String>,
}

/// The events a Slack target may choose.
pub const SLACK_EVENTS: [&str; 6] = [
    "created",
    "started",
    "completed",
    "failed",
    "dead",
    "killed",
];

/// Where a space's push wake-ups go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushTarget {
    pub url: String,
    /// Only jobs with these names; empty means every job.
    pub names: Vec<String>,
    pub headers: Vec<(String, String)>,
}

/// Changes to a space's settings; `None` leaves a setting as it is.
#[derive(Clone, Debug, Default)]
pub struct SpaceSettings {
    pub anonymous_progress_streams: Option<bool>,
    /// `Some(None)` removes the push target.
    pub push: Option<Option<PushTarget>>,
    /// Replaces the space's retention overrides.
    pub retention: Option<RetentionOverrides>,
    /// `Some(None)` turns Slack notifications off.
    pub slack: Option<Option<SlackTarget>>,
    /// Replaces the space's concurrency limits.
    pub concurrency: Option<ConcurrencyLimits>,
}

/// A space's event sequence as of one instant: its last event and the job
/// counts right after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceHead {
    pub stream_id: String,
    pub seq: i64,
    pub counts: StatusCounts,
}

/// Most events one replay page holds.
pub const REPLAY_PAGE_EVENTS: u32 = 256;
/// Most event data one replay page holds (events carry up to 1 MiB each).
pub const REPLAY_PAGE_BYTES: i64 = 4 * 1024 * 1024;

/// What a reconnecting space stream missed.
#[derive(Clone, Debug)]
pub struct SpaceLog {
    pub head: SpaceHead,
    /// The events after the requested cursor up to `head.seq`, in order,
    /// without their `data` (enough to work out the counts as of the
    /// cursor; `space_events` reads them whole, a page at a time); `None`
    /// when they cannot all be replayed (cursor ahead of the head, too far
    /// behind, or events no longer retained).
    pub missed_events: Option<Vec<JobEvent>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub space_id: String,
    pub name: String,
    /// As granted; shorthands are expanded when checked.
    pub scopes: Vec<String>,
    pub key_hash: KeyHash,
    pub created_at: UnixMillis,
}

/// One command for a job, with the fence the caller holds.
#[derive(Clone, Debug)]
pub struct Step {
    pub command: Command,
    pub fence: Fence,
}

/// Which job a call addresses, and the space it must belong to (None: any).
#[derive(Clone, Debug)]
pub struct JobTarget {
    pub job_id: String,
    pub space_id: Option<String>,
}

/// Which jobs of a space a listing, count or bulk action addresses.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub space_id: String,
    pub status: Option<JobStatus>,
    pub name: Option<String>,
    /// Created at or after this instant.
    pub created_from: Option<UnixMillis>,
    /// Created before this instant.
    pub created_until: Option<UnixMillis>,
    /// Only jobs older than this one (ids sort by creation): a cursor that
    /// stays right while jobs are added and removed.
    pub before_id: Option<String>,
    /// Only jobs this schedule made.
    pub schedule_id: Option<String>,
}

/// A page of a filter's jobs, newest first.
#[derive(Clone, Debug)]
pub struct JobQuery {
    pub filter: JobFilter,
    pub limit: u32,
    pub offset: u32,
}

#[derive(Clone, Debug)]
pub struct DeliverRequest {
    pub space_id: String,
    /// Only these job names; empty means any.
    pub names: Vec<String>,
    pub count: u32,
    pub now: UnixMillis,
    /// Never these job names (rate limits filled for now).
    pub excluded_names: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct LogQuery {
    pub cursor: LogCursor,
    pub level: Option<LogLevel>,
    pub text: Option<String>,
    pub limit: u32,
}

/// Where a page of log lines starts. Either way the page is in `seq` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogCursor {
    /// The oldest lines after this sequence number (tailing forward).
    After(i64),
    /// The newest lines before this sequence number (paging back).
    Before(i64),
}

impl LogCursor {
    /// The condition and order of the page's query; the caller reverses a
    /// `Before` page, read newest first.
    pub fn sql(self) -> (&'static str, i64, &'static str) {
        match self {
            Self::After(seq) => (" AND seq > ", seq, " ORDER BY seq LIMIT "),
            Self::Before(seq) => (" AND seq < ", seq, " ORDER BY seq DESC LIMIT "),
        }
    }
}

/// A callback waiting in the outbox.
#[derive(Clone, Debug)]
pub struct OutboxEntry {
    pub id: i64,
    pub job_id: String,
    pub space_id: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Tries made so far (the next try's `retryAttempt`).
    pub attempt: u32,
    /// The space's signing secret, if it has one.
    pub secret: Option<String>,
}

/// How one callback try went.
#[derive(Clone, Debug)]
pub struct CallbackTry {
    pub entry: OutboxEntry,
    pub outcome: CallbackOutcome,
    /// When to try again; None: delivered, or given up.
    pub retry_at: Option<UnixMillis>,
}

#[derive(Clone, Debug)]
pub enum CallbackOutcome {
    Delivered {
        status: u16,
    },
    Failed {
        error: String,
        status: Option<u16>,
        response_body: Option<String>,
    },
}

/// What a timer sweep did.
#[derive(Clone, Debug, Default)]
pub struct Sweep {
    pub fired: usize,
    /// (space, job name) of each job the sweep made ready.
    pub ready: Vec<(String, String)>,
    /// The earliest deadline still ahead.
    pub next_due: Option<UnixMillis>,
}

/// Commits (not events) a slow subscriber of the broadcasts may fall behind.
const PUBLISH_BUFFER: usize = 4096;
/// Operations one writer's queue holds.
const WRITE_QUEUE: usize = 4096;

/// Where what the writers commit is announced.
pub(crate) struct Broadcasts {
    /// Every replica's commits (see `Store::subscribe`).
    pub published: broadcast::Sender<Arc<[LiveEvent]>>,
    /// This replica's commits (see `Store::own_commits`).
    pub own_commits: broadcast::Sender<Arc<[LiveEvent]>>,
    /// Revoked tokens' ids.
    pub revoked: broadcast::Sender<String>,
    /// Whether the store announces its own revocations: yes when it is the
    /// only replica; otherwise the backend's relay announces every
    /// replica's, this one's included.
    echo_revocations: bool,
}

impl Broadcasts {
    /// For the only replica (SQLite): its commits are all there are.
    pub fn single() -> Self {
        let published = broadcast::channel(PUBLISH_BUFFER).0;
        Self {
            own_commits: published.clone(),
            published,
            revoked: broadcast::channel(256).0,
            echo_revocations: true,
        }
    }

    /// For one of several replicas (PostgreSQL), whose relay publishes what
    /// every replica commits and revokes.
    pub fn replicated() -> Self {
        Self {
            published: broadcast::channel(PUBLISH_BUFFER).0,
            own_commits: broadcast::channel(PUBLISH_BUFFER).0,
            revoked: broadcast::channel(256).0,
            echo_revocations: false,
        }
    }
}

/// The storage seam, one for both backends. Reads go to the backend's read
/// pool (`reads`); writes queue for the backend's group-commit writers
/// (`batch`), which lease ready jobs to the waiting workers (`handoff`) in
/// the commits that make them ready, and announce each commit
/// (`Broadcasts`).
pub struct Store {
    reads: Box<dyn Reads>,
    writes: Writes,
    waiters: Arc<Waiters>,
    writer_metrics: WriterMetrics,
    broadcasts: Broadcasts,
    clock: Clock,
    /// Which commits are durable, for reads to wait on.
    synced: Arc<Synced>,
    /// Dropped with the store: stop what the backend runs beside its
    /// writers (SQLite's checkpoints, PostgreSQL's relay and vacuum).
    _companions: Vec<oneshot::Sender<()>>,
}

impl Store {
    /// Starts a batch loop for each writer and assembles the store.
    pub(crate) fn start<W: Writer + 'static>(
        reads: impl Reads + 'static,
        writers: Vec<W>,
        broadcasts: Broadcasts,
        clock: Clock,
        companions: Vec<oneshot::Sender<()>>,
    ) -> Self {
        let waiters = Arc::new(Waiters::default());
        let writer_metrics = WriterMetrics::default();
        let synced = Arc::new(Synced::default());
        let inboxes = writers
            .into_iter()
            .map(|writer| {
                let (inbox, queues) = batch::inbox(WRITE_QUEUE);
                tokio::spawn(batch::run(
                    writer,
                    queues,
                    waiters.clone(),
                    writer_metrics.clone(),
                    clock.clone(),
                    synced.clone(),
                ));
                inbox
            })
            .collect();
        Self {
            reads: Box::new(reads),
            writes: Writes::new(inboxes),
            waiters,
            writer_metrics,
            broadcasts,
            clock,
            synced,
            _companions: companions,
        }
    }

    /// A read's outcome, once what it saw is durable: a read can see a
    /// commit whose fsync is still running (`store::durability`), and what
    /// these reads return leaves the server (answers, replays, callbacks).
    async fn durable<T>(&self, read: Result<T>) -> Result<T> {
        self.synced.settled().await;
        read
    }

    pub async fn create_space(&self, space: SpaceRecord, public_token: TokenRecord) -> Result<()> {
        self.writes
            .on_any("create_space", |writer| {
                Box::pin(async move {
                    on_connection!(writer, |conn: DB| {
                        spaces::insert::<DB>(conn, &space, &public_token).await
                    })
                })
            })
            .await
    }

    pub async fn list_spaces(&self) -> Result<Vec<SpaceRecord>> {
        self.reads.list_spaces().await
    }

    pub async fn get_space(&self, space_id: &str) -> Result<Option<SpaceRecord>> {
        self.reads.get_space(space_id).await
    }

    /// Fails with NotFound when the space does not exist.
    pub async fn update_space(
        &self,
        space_id: &str,
        settings: SpaceSettings,
    ) -> Result<SpaceRecord> {
        let space_id = space_id.to_owned();
        self.writes
            .on_any("update_space", |writer| {
                Box::pin(async move {
                    on_connection!(writer, |conn: DB| {
                        spaces::update_settings::<DB>(conn, &space_id, settings).await
                    })
                })
            })
            .await
    }

    /// A page of a space's events with `after < seq <= upto`, in order,
    /// whole: at most `REPLAY_PAGE_EVENTS`, and no more than
    /// `REPLAY_PAGE_BYTES` of data unless the first alone is larger.
    pub async fn space_events(
        &self,
        space_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<LiveEvent>> {
        self.durable(self.reads.space_events(space_id, after, upto).await)
            .await
    }

    /// The space's head and, when `after` is given, the events after it
    /// (at most `max_missed` of them), read at one instant.
    pub async fn space_log(
        &self,
        space_id: &str,
        after: Option<i64>,
        max_missed: u32,
    ) -> Result<Option<SpaceLog>> {
        self.durable(self.reads.space_log(space_id, after, max_missed).await)
            .await
    }

    /// Fails with NotFound when the space does not exist.
    pub async fn create_token(&self, token: TokenRecord) -> Result<()> {
        self.writes
            .on_any("create_token", |writer| {
                Box::pin(async move {
                    on_connection!(writer, |conn: DB| {
                        spaces::require::<DB>(conn, &token.space_id).await?;
                        spaces::insert_token::<DB>(conn, &token).await
                    })
                })
            })
            .await
    }

    pub async fn list_tokens(&self, space_id: &str) -> Result<Vec<TokenRecord>> {
        self.reads.list_tokens(space_id).await
    }

    /// Makes `key` (stored as `token`) the space's public token and revokes
    /// the one before, atomically; returns the revoked token's id, if any.
    /// Fails with NotFound when the space does not exist.
    pub async fn replace_public_token(
        &self,
        space_id: &str,
        key: &str,
        token: TokenRecord,
        now: UnixMillis,
    ) -> Result<Option<String>> {
        let (space_id, key) = (space_id.to_owned(), key.to_owned());
        let revoked = self
            .writes
            .on_any("replace_public_token", move |writer| {
                Box::pin(async move {
                    on_connection!(writer, |conn: DB| {
                        spaces::replace_public_token::<DB>(conn, &space_id, &key, &token, now).await
                    })
                })
            })
            .await?;
        if let Some(token_id) = &revoked {
            self.echo_revocation(token_id);
        }
        Ok(revoked)
    }

    /// Returns whether a live token was revoked.
    pub async fn revoke_token(
        &self,
        space_id: &str,
        token_id: &str,
        now: UnixMillis,
    ) -> Result<bool> {
        let (space, token) = (space_id.to_owned(), token_id.to_owned());
        let revoked = self
            .writes
            .on_any("revoke_token", move |writer| {
                Box::pin(async move {
                    on_connection!(writer, |conn: DB| {
                        spaces::revoke_token::<DB>(conn, &space, &token, now).await
                    })
                })
            })
            .await?;
        if revoked {
            self.echo_revocation(token_id);
        }
        Ok(revoked)
    }

    /// Where the store is the only replica, it tells its own subscribers of
    /// a revocation (elsewhere the relay does, `Dialect::announce_revocation`).
    fn echo_revocation(&self, token_id: &str) {
        if self.broadcasts.echo_revocations {
            let _ = self.broadcasts.revoked.send(token_id.to_owned());
        }
    }

    /// A live (not revoked) token by the hash of its key.
    pub async fn find_token(&self, key_hash: &KeyHash) -> Result<Option<TokenRecord>> {
        self.reads.find_token(key_hash).await
    }

    /// Pauses or resumes dispatch of `name` in a space (`WHOLE_SPACE`: all
    /// of it); NotFound without the space. Returns whether anything changed.
    pub async fn set_pause(
        &self,
        space_id: &str,
        name: &str,
        paused: bool,
        now: UnixMillis,
    ) -> Result<bool> {
        self.writes.set_pause(space_id, name, paused, now).await
    }

    /// The space's paused names (`WHOLE_SPACE` when all are).
    pub async fn pauses(&self, space_id: &str) -> Result<Vec<String>> {
        self.reads.pauses(space_id).await
    }

    /// Stores or ends a dashboard session; returns whether one was stored
    /// or ended.
    pub async fn write_session(&self, write: SessionWrite) -> Result<bool> {
        self.writes
            .on_any("write_session", |writer| {
                Box::pin(async move {
                    on_connection!(writer, |conn: DB| sessions::write::<DB>(conn, &write).await)
                })
            })
            .await
    }

    /// The unexpired session whose token hashes to `id_hash`.
    pub async fn find_session(
        &self,
        id_hash: &KeyHash,
        now: UnixMillis,
    ) -> Result<Option<SessionRecord>> {
        self.reads.find_session(id_hash, now).await
    }

    /// Dispatches of `name` after `since`: with `rate_key`, or all.
    pub async fn dispatches(
        &self,
        space_id: &str,
        name: &str,
        rate_key: Option<&str>,
        since: UnixMillis,
    ) -> Result<u32> {
        self.reads.dispatches(space_id, name, rate_key, since).await
    }

    /// Leases each key holds now: of `keys`, or (None) of the keys holding
    /// the most (`concurrency::MAX_LISTED_KEYS`).
    pub async fn key_leases(
        &self,
        space_id: &str,
        keys: Option<&[String]>,
    ) -> Result<HashMap<String, u32>> {
        self.reads.key_leases(space_id, keys).await
    }

    /// Creates, updates, deletes or fires a schedule (`schedules`).
    pub async fn write_schedule(&self, write: ScheduleWrite) -> Result<ScheduleWritten> {
        self.writes.write_schedule(write).await
    }

    pub async fn read_schedules(&self, query: ScheduleQuery<'_>) -> Result<Vec<Schedule>> {
        self.reads.read_schedules(query).await
    }

    /// The soonest fire time of any unpaused schedule.
    pub async fn next_schedule_due(&self) -> Result<Option<UnixMillis>> {
        self.reads.next_schedule_due().await
    }

    pub async fn get_setting(&self, name: &str) -> Result<Option<String>> {
        self.reads.get_setting(name).await
    }

    /// Stores `value` (unless the setting exists and `write` keeps it);
    /// returns the value stored afterwards.
    pub async fn put_setting(
        &self,
        name: &str,
        value: &str,
        write: SettingWrite,
    ) -> Result<String> {
        let (name, value) = (name.to_owned(), value.to_owned());
        self.writes
            .on_any("put_setting", |writer| {
                Box::pin(async move {
                    on_connection!(writer, |conn: DB| {
                        spaces::put_setting::<DB>(conn, &name, &value, &write).await
                    })
                })
            })
            .await
    }

    /// Persists new jobs (and their `created` events) atomically; fails with
    /// NotFound when the space does not exist.
    /// Idempotency keys are claimed in the same write: a job whose key an
    /// identical create holds is not made again but returned as a replay;
    /// a key held by a different create fails the whole write with
    /// Conflict.
    pub async fn create_jobs(&self, new: NewJobs) -> Result<Vec<Replay>> {
        self.writes.create_jobs(new).await
    }

    pub async fn list_jobs(&self, query: &JobQuery) -> Result<Vec<Job>> {
        self.durable(self.reads.list_jobs(query).await).await
    }

    /// How many jobs the filter matches.
    pub async fn count_jobs(&self, filter: &JobFilter) -> Result<u64> {
        self.durable(self.reads.count_jobs(filter).await).await
    }

    pub async fn get_job(&self, target: &JobTarget) -> Result<Option<Job>> {
        self.durable(self.reads.get_job(target).await).await
    }

    pub async fn job_events(&self, job_id: &str) -> Result<Vec<JobEvent>> {
        self.durable(self.reads.job_events(job_id).await).await
    }

    /// The job and the last event sequence number of its space, read at one
    /// instant: every event after that number happened after the snapshot.
    pub async fn job_snapshot(&self, job_id: &str) -> Result<Option<(Job, i64)>> {
        self.durable(self.reads.job_snapshot(job_id).await).await
    }

    /// Atomically delivers up to `count` available pending jobs, oldest first.
    pub async fn deliver(&self, request: DeliverRequest) -> Result<Vec<Job>> {
        self.writes.deliver(request).await
    }

    /// Applies commands to one job through the state machine, in order and
    /// in one transaction, each with its own outcome (a refused command
    /// writes nothing and the next one still runs). The error is for the
    /// write as a whole. When the job is `refill`'s and the commands end
    /// its lease, the slot goes back to `refill` in the same transaction.
    pub async fn apply(
        &self,
        target: &JobTarget,
        steps: Vec<Step>,
        now: UnixMillis,
        refill: Option<Arc<Waiter>>,
    ) -> Result<Vec<Result<Job>>> {
        self.writes.apply(target, steps, now, refill).await
    }

    /// Deletes a finished job with its events, logs and callbacks, and
    /// returns it as it was. NotFound without it; Conflict unless finished.
    pub async fn delete_job(&self, target: &JobTarget) -> Result<Job> {
        let owned = target.clone();
        self.writes
            .on_job(&target.job_id, "delete_job", move |writer| {
                Box::pin(async move { writer.delete_job(&owned).await })
            })
            .await
    }

    /// Deletes up to `expired.limit` expired jobs (those whose callback is
    /// still due are kept until it is delivered or given up); returns how
    /// many. Each job is deleted, and counted off its space, once, however
    /// many replicas prune at the same time.
    pub async fn prune(&self, expired: &Expired) -> Result<u32> {
        self.writes.prune(expired).await
    }

    /// Workers waiting for jobs, which write batches lease ready jobs to.
    pub fn waiters(&self) -> &Waiters {
        &self.waiters
    }

    /// What the writers measure of their batches.
    pub fn writer_metrics(&self) -> WriterMetrics {
        self.writer_metrics.clone()
    }

    /// The time every part of the core reads (see `Clock`).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Makes the writer fill the waiters that asked (`Waiter::want`) soon.
    pub fn wake_writer(&self) {
        self.writes.wake();
    }

    /// Fires up to `limit` timers due at `now`.
    pub async fn fire_due_timers(&self, now: UnixMillis, limit: u32) -> Result<Sweep> {
        self.writes.fire_due_timers(now, limit).await
    }

    /// Appends log lines; returns the sequence number of the last one.
    pub async fn append_logs(
        &self,
        target: &JobTarget,
        lines: Vec<LogLine>,
        now: UnixMillis,
    ) -> Result<i64> {
        self.writes.append_logs(target, lines, now).await
    }

    pub async fn list_logs(&self, job_id: &str, query: &LogQuery) -> Result<Vec<StoredLogLine>> {
        self.durable(self.reads.list_logs(job_id, query).await)
            .await
    }

    /// Callbacks due by `now`, oldest first: at most `limit`, and at most
    /// `per_space` of any one space counting the tries `in_flight` lists
    /// (space, tries), so one space's backlog cannot fill the deliverer.
    /// Where several replicas deliver, the entries are claimed: another
    /// replica's deliverer skips them until the claim lapses.
    pub async fn due_callbacks(
        &self,
        now: UnixMillis,
        limit: u32,
        per_space: u32,
        in_flight: &[(String, u32)],
    ) -> Result<Vec<OutboxEntry>> {
        let due = self
            .reads
            .due_callbacks(now, limit, per_space, in_flight)
            .await;
        self.durable(due).await
    }

    /// Records a try as a `callback_sent`/`callback_failed` event on the job
    /// and reschedules or removes the outbox entry, atomically.
    pub async fn record_callback_try(&self, attempt: CallbackTry, now: UnixMillis) -> Result<()> {
        let job_id = attempt.entry.job_id.clone();
        self.writes
            .on_job(&job_id, "record_callback_try", move |writer| {
                writer.record_callback_try(attempt, now)
            })
            .await
    }

    /// Sets (Some) or clears (None) a space's signing secret.
    pub async fn set_webhook_secret(&self, space_id: &str, secret: Option<String>) -> Result<()> {
        let space_id = space_id.to_owned();
        self.writes
            .on_any("set_webhook_secret", |writer| {
                Box::pin(async move {
                    on_connection!(writer, |conn: DB| {
                        spaces::require::<DB>(conn, &space_id).await?;
                        spaces::set_webhook_secret::<DB>(conn, &space_id, secret.as_deref()).await
                    })
                })
            })
            .await
    }

    /// What each commit of any replica published (events, log lines),
    /// commit by commit in commit order, so events of a space arrive in
    /// sequence order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[LiveEvent]>> {
        self.broadcasts.published.subscribe()
    }

    /// Only the commits of this replica: for work that one replica must do
    /// once per commit (push wake-ups).
    pub fn own_commits(&self) -> broadcast::Receiver<Arc<[LiveEvent]>> {
        self.broadcasts.own_commits.subscribe()
    }

    /// Ids of tokens as any replica revokes them.
    pub fn revocations(&self) -> broadcast::Receiver<String> {
        self.broadcasts.revoked.subscribe()
    }
}

/// Opens the store `database_url` names, running its migrations; `wait`
/// bounds how long a database that does not answer yet is retried
/// (PostgreSQL; SQLite is a file).
pub async fn open(
    database_url: &str,
    wait: std::time::Duration,
    clock: Clock,
) -> Result<Arc<Store>> {
    if database_url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::open(database_url, clock).await?))
    } else if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
        Ok(Arc::new(postgres::open(database_url, wait, clock).await?))
    } else {
        Err(Error::invalid(format!(
            "unsupported database URL (expected sqlite://... or postgres://...): {}",
            redact_url(database_url)
        )))
    }
}

/// A URL fit for logs: any password is replaced.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
