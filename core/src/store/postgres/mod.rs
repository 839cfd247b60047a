//! PostgreSQL, the scale-out backend: several core replicas share one
//! database. Each replica writes through its own group-commit writers (see
//! `writer` for how they stay correct side by side) and reads through a
//! pool; `relay` carries every replica's events to every other.

mod relay;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Postgres, QueryBuilder, Row};
use tokio::sync::{broadcast, oneshot};

use self::relay::{Outlets, Relay};
use self::writer::PgWriter;
use super::batch::{self, Writes};
use super::handoff::{Waiter, Waiters};
use super::{filter, rows};
use crate::auth::KeyHash;
use crate::clock::{Clock, UnixMillis};
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::job::spec::NewJobs;
use crate::job::{Job, JobEvent, LiveEvent, LogLine, StoredLogLine};
use crate::metrics::WriterMetrics;
use crate::retention::Expired;
use crate::schedule::Schedule;
use crate::store::{
    CallbackTry, DeliverRequest, JobFilter, JobQuery, JobTarget, LogCursor, LogQuery, OutboxEntry,
    REPLAY_PAGE_BYTES, REPLAY_PAGE_EVENTS, Replay, ScheduleQuery, ScheduleWrite, ScheduleWritten,
    SessionRecord, SessionWrite, SettingWrite, SpaceHead, SpaceLog, SpaceRecord, SpaceSettings,
    Step, Store, Sweep, TokenRecord,
};

const READ_CONNECTIONS: u32 = 8;
/// Group-commit writers per replica, each on its own connection.
const WRITERS: usize = 2;
const WRITE_QUEUE: usize = 4096;
/// Commits a slow subscriber of the broadcasts may fall behind.
const PUBLISH_BUFFER: usize = 4096;
/// A claimed callback comes due again after this long if its replica never
/// records the try (it died mid-send). Longer than a try's timeout.
const CALLBACK_CLAIM_MILLIS: i64 = 60_000;

pub struct PostgresStore {
    reads: PgPool,
    writes: Writes,
    waiters: Arc<Waiters>,
    writer_metrics: WriterMetrics,
    published: broadcast::Sender<Arc<[LiveEvent]>>,
    own_commits: broadcast::Sender<Arc<[LiveEvent]>>,
    revoked: broadcast::Sender<String>,
    clock: Clock,
    /// Dropped with the store: stops the relay.
    _stop_relay: oneshot::Sender<()>,
}

impl PostgresStore {
    pub async fn open(url: &str, wait: Duration, clock: Clock) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|error| Error::invalid(format!("invalid postgres URL: {error}")))?
            .disable_statement_logging();
        wait_until_reachable(&options, wait).await?;
        let reads = PgPoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options.clone())
            .await?;
        // Replicas starting together take turns (the migrator locks).
        sqlx::migrate!("./migrations/postgres").run(&reads).await?;

        let (published, _) = broadcast::channel(PUBLISH_BUFFER);
        let (own_commits, _) = broadcast::channel(PUBLISH_BUFFER);
        let (revoked, _) = broadcast::channel(256);
        let relay = Arc::new(Relay::new(new_id()));
        let (stop_relay, stop) = oneshot::channel();
        let outlets = Outlets {
            published: published.clone(),
            revoked: revoked.clone(),
        };
        relay::start(relay.clone(), reads.clone(), outlets, stop).await?;

        let waiters = Arc::new(Waiters::default());
        let mut writers = Vec::with_capacity(WRITERS);
        let writer_metrics = WriterMetrics::default();
        for _ in 0..WRITERS {
            let connection = options.connect().await?;
            let (writes, queue) = batch::inbox(WRITE_QUEUE);
            let writer = PgWriter::new(
                connection,
                relay.clone(),
                own_commits.clone(),
                clock.clone(),
            );
            tokio::spawn(batch::run(
                writer,
                queue,
                waiters.clone(),
                writer_metrics.clone(),
                clock.clone(),
            ));
            writers.push(writes);
        }
        Ok(Self {
            clock,
            writer_metrics,
            reads,
            writes: Writes::new(writers),
            waiters,
            published,
            own_commits,
            revoked,
            _stop_relay: stop_relay,
        })
    }
}

/// Longest wait for one connection attempt (an unroutable host never refuses).
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects once, retrying with backoff and saying so, so a database that is
/// still starting (or a wrong address) shows up in the log at once, by name.
async fn wait_until_reachable(options: &PgConnectOptions, patience: Duration) -> Result<()> {
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default database)")
    );
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let failure = match tokio::time::timeout(CONNECT_ATTEMPT_TIMEOUT, options.connect()).await {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {}s", CONNECT_ATTEMPT_TIMEOUT.as_secs()),
        };
        if started.elapsed() + delay > patience {
            return Err(Error::Startup(format!(
                "cannot connect to PostgreSQL at {target} (tried {attempt} times over {}s): {failure}",
                started.elapsed().as_secs()
            )));
        }
        tracing::warn!(
            %target, attempt, error = %failure,
            "waiting for PostgreSQL; retrying in {}ms", delay.as_millis()
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(4));
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_space(&self, space: SpaceRecord, token: TokenRecord) -> Result<()> {
        self.writes.create_space(space, token).await
    }

    async fn list_spaces(&self) -> Result<Vec<SpaceRecord>> {
        let rows = sqlx::query("SELECT * FROM spaces ORDER BY id")
            .fetch_all(&self.reads)
            .await?;
        rows.iter().map(rows::space).collect()
    }

    async fn get_space(&self, space_id: &str) -> Result<Option<SpaceRecord>> {
        let row = sqlx::query("SELECT * FROM spaces WHERE id = $1")
            .bind(space_id)
            .fetch_optional(&self.reads)
            .await?;
        row.as_ref().map(rows::space).transpose()
    }

    async fn update_space(&self, space_id: &str, settings: SpaceSettings) -> Result<SpaceRecord> {
        self.writes.update_space(space_id, settings).await
    }

    async fn space_events(&self, space_id: &str, after: i64, upto: i64) -> Result<Vec<LiveEvent>> {
        // The running total of data sizes keeps a page within its bytes;
        // the first event (whose total is its own size) is always taken, so
        // a replay moves on.
        let sql = format!(
            "SELECT * FROM (SELECT page.*, SUM(COALESCE(LENGTH(page.data), 0)) OVER (ORDER BY page.seq) AS page_bytes \
             FROM ({} \
             AND e.space_id = $1 AND e.seq > $2 AND e.seq <= $3 ORDER BY e.seq LIMIT $4) page) paged \
             WHERE page_bytes <= $5 OR page_bytes = COALESCE(LENGTH(data), 0) \
             ORDER BY seq",
            rows::SPACE_EVENTS
        );
        let rows = sqlx::query(&sql)
            .bind(space_id)
            .bind(after)
            .bind(upto)
            .bind(i64::from(REPLAY_PAGE_EVENTS))
            .bind(REPLAY_PAGE_BYTES)
            .fetch_all(&self.reads)
            .await?;
        rows.iter().map(rows::live_event).collect()
    }

    async fn space_log(
        &self,
        space_id: &str,
        after: Option<i64>,
        max_missed: u32,
    ) -> Result<Option<SpaceLog>> {
        // One snapshot for the head and the events.
        let mut snapshot = self.reads.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *snapshot)
            .await?;
        let Some(row) = sqlx::query("SELECT * FROM spaces WHERE id = $1")
            .bind(space_id)
            .fetch_optional(&mut *snapshot)
            .await?
        else {
            return Ok(None);
        };
        let head = SpaceHead {
            stream_id: row.try_get("stream_id")?,
            seq: row.try_get("event_seq")?,
            counts: rows::space_counts(&row)?,
        };
        let missed_events = match after {
            Some(after) if after <= head.seq && head.seq - after <= i64::from(max_missed) => {
                // Without data: a replay range may hold gigabytes of it.
                let rows = sqlx::query(
                    "SELECT e.seq, e.space_id, e.job_id, e.type, e.status, e.previous_status, \
                     NULL::text AS data, e.created_at, COALESCE(j.name, '') AS job_name \
                     FROM job_events e LEFT JOIN jobs j ON j.id = e.job_id \
                     WHERE (j.id IS NOT NULL OR e.job_id = '') \
                     AND e.space_id = $1 AND e.seq > $2 AND e.seq <= $3 ORDER BY e.seq",
                )
                .bind(space_id)
                .bind(after)
                .bind(head.seq)
                .fetch_all(&mut *snapshot)
                .await?;
                let events = rows
                    .iter()
                    .map(rows::live_event)
                    .collect::<Result<Vec<_>>>()?;
                // Complete only if nothing in the range was pruned; the
                // space's own events count no jobs.
                (events.len() as i64 == head.seq - after).then(|| {
                    events
                        .into_iter()
                        .filter_map(|live| match live {
                            LiveEvent::Job(event) => Some(Arc::unwrap_or_clone(event)),
                            LiveEvent::Space(_) | LiveEvent::Log(_) => None,
                        })
                        .collect()
                })
            }
            _ => None,
        };
        snapshot.commit().await?;
        Ok(Some(SpaceLog {
            head,
            missed_events,
        }))
    }

    async fn due_callbacks(
        &self,
        now: UnixMillis,
        limit: u32,
        per_space: u32,
        in_flight: &[(String, u32)],
    ) -> Result<Vec<OutboxEntry>> {
        // Claimed, not just read: another replica's deliverer skips them.
        // Claimed entries are no longer due, so this core's tries in flight
        // are counted from `in_flight`.
        let (busy, tries): (Vec<&str>, Vec<i64>) = in_flight
            .iter()
            .map(|(space, tries)| (space.as_str(), i64::from(*tries)))
            .unzip();
        let rows = sqlx::query(
            "WITH ranked AS ( \
                 SELECT id, space_id, ROW_NUMBER() OVER (PARTITION BY space_id ORDER BY next_at, id) AS space_rank \
                 FROM callback_outbox WHERE next_at <= $1), \
             due AS ( \
                 SELECT o.id FROM callback_outbox o JOIN ranked r ON r.id = o.id \
                 LEFT JOIN unnest($4::text[], $6::int8[]) AS busy(space_id, tries) \
                     ON busy.space_id = r.space_id \
                 WHERE r.space_rank + COALESCE(busy.tries, 0) <= $5 \
                 ORDER BY o.next_at, o.id LIMIT $2 FOR UPDATE OF o SKIP LOCKED), \
             claimed AS ( \
                 UPDATE callback_outbox o SET next_at = $3 FROM due WHERE o.id = due.id \
                 RETURNING o.*) \
             SELECT c.*, s.webhook_secret FROM claimed c JOIN spaces s ON s.id = c.space_id \
             ORDER BY c.id",
        )
        .bind(now)
        .bind(i64::from(limit))
        .bind(now + CALLBACK_CLAIM_MILLIS)
        .bind(&busy)
        .bind(i64::from(per_space))
        .bind(&tries)
        .fetch_all(&self.reads)
        .await?;
        rows.iter().map(rows::outbox_entry).collect()
    }

    async fn record_callback_try(&self, attempt: CallbackTry, now: UnixMillis) -> Result<()> {
        self.writes.record_callback_try(attempt, now).await
    }

    async fn set_webhook_secret(&self, space_id: &str, secret: Option<String>) -> Result<()> {
        self.writes.set_webhook_secret(space_id, secret).await
    }

    async fn create_token(&self, token: TokenRecord) -> Result<()> {
        self.writes.create_token(token).await
    }

    async fn list_tokens(&self, space_id: &str) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM tokens WHERE space_id = $1 AND revoked_at IS NULL ORDER BY id",
        )
        .bind(space_id)
        .fetch_all(&self.reads)
        .await?;
        rows.iter().map(rows::token).collect()
    }

    async fn replace_public_token(
        &self,
        space_id: &str,
        key: &str,
        token: TokenRecord,
        now: UnixMillis,
    ) -> Result<Option<String>> {
        self.writes
            .replace_public_token(space_id, key, token, now)
            .await
    }

    async fn revoke_token(&self, space_id: &str, token_id: &str, now: UnixMillis) -> Result<bool> {
        self.writes.revoke_token(space_id, token_id, now).await
    }

    async fn find_token(&self, key_hash: &KeyHash) -> Result<Option<TokenRecord>> {
        super::reads::token::<Postgres>(&self.reads, key_hash).await
    }

    async fn set_pause(
        &self,
        space_id: &str,
        name: &str,
        paused: bool,
        now: UnixMillis,
    ) -> Result<bool> {
        self.writes.set_pause(space_id, name, paused, now).await
    }

    async fn pauses(&self, space_id: &str) -> Result<Vec<String>> {
        super::pauses::list::<Postgres, _>(&self.reads, space_id).await
    }

    async fn write_session(&self, write: SessionWrite) -> Result<bool> {
        self.writes.write_session(write).await
    }

    async fn find_session(
        &self,
        id_hash: &KeyHash,
        now: UnixMillis,
    ) -> Result<Option<SessionRecord>> {
        super::sessions::find::<Postgres, _>(&self.reads, id_hash, now).await
    }

    async fn dispatches(
        &self,
        space_id: &str,
        name: &str,
        rate_key: Option<&str>,
        since: UnixMillis,
    ) -> Result<u32> {
        let mut conn = self.reads.acquire().await?;
        super::concurrency::dispatches::<Postgres>(&mut conn, space_id, name, rate_key, since).await
    }

    async fn key_leases(
        &self,
        space_id: &str,
        keys: Option<&[String]>,
    ) -> Result<std::collections::HashMap<String, u32>> {
        let mut conn = self.reads.acquire().await?;
        super::concurrency::leases_by_key::<Postgres>(&mut conn, space_id, keys).await
    }

    async fn write_schedule(&self, write: ScheduleWrite) -> Result<ScheduleWritten> {
        self.writes.write_schedule(write).await
    }

    async fn read_schedules(&self, query: ScheduleQuery<'_>) -> Result<Vec<Schedule>> {
        super::schedules::read::<Postgres, _>(&self.reads, query).await
    }

    async fn next_schedule_due(&self) -> Result<Option<UnixMillis>> {
        super::schedules::next_due::<Postgres, _>(&self.reads).await
    }

    async fn get_setting(&self, name: &str) -> Result<Option<String>> {
        super::reads::setting::<Postgres>(&self.reads, name).await
    }

    async fn put_setting(&self, name: &str, value: &str, write: SettingWrite) -> Result<String> {
        self.writes.put_setting(name, value, write).await
    }

    async fn create_jobs(&self, new: NewJobs) -> Result<Vec<Replay>> {
        self.writes.create_jobs(new).await
    }

    async fn list_jobs(&self, query: &JobQuery) -> Result<Vec<Job>> {
        let mut select = QueryBuilder::<Postgres>::new("SELECT * FROM jobs WHERE TRUE");
        filter::push_conditions(&mut select, &query.filter);
        select
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(query.limit))
            .push(" OFFSET ")
            .push_bind(i64::from(query.offset));
        let rows = select.build().fetch_all(&self.reads).await?;
        rows.iter().map(rows::job).collect()
    }

    async fn count_jobs(&self, filter: &JobFilter) -> Result<u64> {
        let mut select = QueryBuilder::<Postgres>::new("SELECT COUNT(*) FROM jobs WHERE TRUE");
        filter::push_conditions(&mut select, filter);
        let count: i64 = select.build_query_scalar().fetch_one(&self.reads).await?;
        Ok(count.max(0) as u64)
    }

    async fn get_job(&self, target: &JobTarget) -> Result<Option<Job>> {
        super::reads::job::<Postgres>(&self.reads, target).await
    }

    async fn job_events(&self, job_id: &str) -> Result<Vec<JobEvent>> {
        super::reads::events::<Postgres>(&self.reads, job_id).await
    }

    async fn job_snapshot(&self, job_id: &str) -> Result<Option<(Job, i64)>> {
        super::reads::snapshot::<Postgres>(&self.reads, job_id).await
    }

    async fn deliver(&self, request: DeliverRequest) -> Result<Vec<Job>> {
        self.writes.deliver(request).await
    }

    async fn apply(
        &self,
        target: &JobTarget,
        steps: Vec<Step>,
        now: UnixMillis,
        refill: Option<Arc<Waiter>>,
    ) -> Result<Vec<Result<Job>>> {
        self.writes.apply(target, steps, now, refill).await
    }

    async fn delete_job(&self, target: &JobTarget) -> Result<Job> {
        self.writes.delete_job(target).await
    }

    async fn prune(&self, expired: &Expired) -> Result<u32> {
        self.writes.prune(expired).await
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn writer_metrics(&self) -> WriterMetrics {
        self.writer_metrics.clone()
    }

    fn waiters(&self) -> &Waiters {
        &self.waiters
    }

    fn wake_writer(&self) {
        self.writes.wake();
    }

    async fn fire_due_timers(&self, now: UnixMillis, limit: u32) -> Result<Sweep> {
        self.writes.fire_due_timers(now, limit).await
    }

    async fn append_logs(
        &self,
        target: &JobTarget,
        lines: Vec<LogLine>,
        now: UnixMillis,
    ) -> Result<i64> {
        self.writes.append_logs(target, lines, now).await
    }

    async fn list_logs(&self, job_id: &str, query: &LogQuery) -> Result<Vec<StoredLogLine>> {
        let mut select = QueryBuilder::<Postgres>::new("SELECT * FROM job_logs WHERE job_id = ");
        select.push_bind(job_id);
        let (condition, seq, order) = query.cursor.sql();
        select.push(condition).push_bind(seq);
        if let Some(level) = query.level {
            select.push(" AND level = ").push_bind(level.as_str());
        }
        if let Some(text) = &query.text {
            // ILIKE: case-insensitive, as SQLite's LIKE is.
            select
                .push(" AND message ILIKE ")
                .push_bind(rows::like_pattern(text))
                .push(" ESCAPE '\\'");
        }
        select.push(order).push_bind(i64::from(query.limit));
        let rows = select.build().fetch_all(&self.reads).await?;
        let mut lines = rows
            .iter()
            .map(rows::log_line)
            .collect::<Result<Vec<_>>>()?;
        if matches!(query.cursor, LogCursor::Before(_)) {
            lines.reverse();
        }
        Ok(lines)
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<[LiveEvent]>> {
        self.published.subscribe()
    }

    fn own_commits(&self) -> broadcast::Receiver<Arc<[LiveEvent]>> {
        self.own_commits.subscribe()
    }

    fn revocations(&self) -> broadcast::Receiver<String> {
        self.revoked.subscribe()
    }
}
