//! SQLite, the embedded default. WAL mode with `synchronous = FULL`: every
//! commit is fsynced, so an acknowledged write survives a power cut, not just
//! a crash of the process. Group commit in the writer (one transaction per
//! batch of waiting requests) keeps that affordable. Reads run on a separate
//! pool of read-only connections that WAL lets proceed alongside the writer.
//!
//! WAL checkpoints run on a connection of their own (`checkpoints`), never
//! inside the writer's COMMIT: an automatic checkpoint there stalled every
//! write waiting on that batch for as long as copying the WAL back took.
//! The WAL stays bounded: see `checkpoints`.

mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{broadcast, oneshot};

use self::writer::SqliteWriter;
use super::batch::{self, Writes};
use super::handoff::{Waiter, Waiters};
use super::{filter, rows};
use crate::auth::KeyHash;
use crate::clock::{Clock, UnixMillis};
use crate::error::{Error, Result};
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

const READ_CONNECTIONS: u32 = 4;
/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// WAL content past which a checkpoint makes the writer start the WAL over.
const WAL_RESTART_BYTES: i64 = 8 * 1024 * 1024;
/// What the WAL file is cut back to when the writer starts it over.
const WAL_FILE_LIMIT_BYTES: i64 = 32 * 1024 * 1024;
const WRITE_QUEUE: usize = 4096;
/// Commits (not events) a slow subscriber of the broadcast may fall behind.
const PUBLISH_BUFFER: usize = 4096;

pub struct SqliteStore {
    reads: SqlitePool,
    writes: Writes,
    waiters: Arc<Waiters>,
    writer_metrics: WriterMetrics,
    published: broadcast::Sender<Arc<[LiveEvent]>>,
    revoked: broadcast::Sender<String>,
    clock: Clock,
    _stop_checkpoints: oneshot::Sender<()>,
}

impl SqliteStore {
    pub async fn open(url: &str, clock: Clock) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|error| Error::invalid(format!("invalid sqlite URL: {error}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .disable_statement_logging();
        if let Some(directory) = options.get_filename().parent()
            && !directory.as_os_str().is_empty()
        {
            std::fs::create_dir_all(directory).map_err(|error| {
                Error::invalid(format!("cannot create {}: {error}", directory.display()))
            })?;
        }
        let mut write_connection = options.connect().await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut write_connection)
            .await?;
        sqlx::query("PRAGMA wal_autocheckpoint = 0")
            .execute(&mut write_connection)
            .await?;
        sqlx::query(&format!(
            "PRAGMA journal_size_limit = {WAL_FILE_LIMIT_BYTES}"
        ))
        .execute(&mut write_connection)
        .await?;
        let (stop_checkpoints, stopped) = oneshot::channel();
        let restart_wal = Arc::new(AtomicBool::new(false));
        tokio::spawn(checkpoints(
            options.connect().await?,
            restart_wal.clone(),
            stopped,
        ));
        let reads = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options.read_only(true))
            .await?;
        let (published, _) = broadcast::channel(PUBLISH_BUFFER);
        let (writes, queue) = batch::inbox(WRITE_QUEUE);
        let waiters = Arc::new(Waiters::default());
        let writer_metrics = WriterMetrics::default();
        tokio::spawn(batch::run(
            SqliteWriter::new(
                write_connection,
                published.clone(),
                restart_wal,
                clock.clone(),
            ),
            queue,
            waiters.clone(),
            writer_metrics.clone(),
            clock.clone(),
        ));
        Ok(Self {
            clock,
            writer_metrics,
            reads,
            writes: Writes::new(vec![writes]),
            waiters,
            published,
            revoked: broadcast::channel(256).0,
            _stop_checkpoints: stop_checkpoints,
        })
    }
}

/// Writes a consistent copy of the database `url` names to `path` while a
/// server may be using it: `VACUUM INTO` reads one snapshot (WAL readers
/// never block the writer, nor it them) and writes a compact, standalone
/// database file, which is restored by putting it in the original's place
/// while the server is stopped.
pub async fn backup(url: &str, path: &std::path::Path) -> Result<()> {
    if !url.starts_with("sqlite:") {
        return Err(Error::invalid(
            "emit backup copies SQLite databases; back PostgreSQL up with pg_dump (see the README)",
        ));
    }
    if path.exists() {
        return Err(Error::invalid(format!(
            "{} exists already; name a new file",
            path.display()
        )));
    }
    let target = path
        .to_str()
        .ok_or_else(|| Error::invalid("the backup path must be valid UTF-8"))?;
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|error| Error::invalid(format!("invalid sqlite URL: {error}")))?
        .read_only(true)
        .busy_timeout(Duration::from_secs(10))
        .disable_statement_logging();
    if !options.get_filename().exists() {
        return Err(Error::invalid(format!(
            "there is no database at {}",
            options.get_filename().display()
        )));
    }
    let mut connection = options.connect().await?;
    sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&mut connection)
        .await?;
    connection.close().await?;
    Ok(())
}

/// Copies the WAL back into the database file now and then, alongside the
/// writer (PASSIVE: it takes no lock the writer or the readers wait on).
///
/// The writer starts the WAL over only when a checkpoint has caught up with
/// it when it begins a transaction; under steady writes that never happens,
/// and the WAL grew by about 5 KB a job for as long as the load lasted
/// (336 MiB after 60,000 jobs). So once the WAL holds more than
/// `WAL_RESTART_BYTES`, this asks the writer (`restart_wal`) to finish the
/// copy between two batches (a RESTART checkpoint); its next transaction
/// starts the WAL over, and `journal_size_limit` cuts the file back. Run
/// from here instead, a RESTART waited hundreds of milliseconds for a gap
/// between batches while the WAL kept growing.
async fn checkpoints(
    mut conn: sqlx::SqliteConnection,
    restart_wal: Arc<AtomicBool>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut conn)
        .await
        .unwrap_or(4096);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            // The store is gone.
            _ = &mut stopped => break,
        }
        let passive: std::result::Result<(i64, i64, i64), _> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut conn)
                .await;
        match passive {
            Ok((_, wal_pages, _)) => {
                if wal_pages.saturating_mul(page_size) > WAL_RESTART_BYTES {
                    restart_wal.store(true, Ordering::Release);
                }
            }
            Err(error) => tracing::warn!(%error, "WAL checkpoint failed; trying again"),
        }
    }
    let _ = conn.close().await;
}

#[async_trait]
impl Store for SqliteStore {
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
        let row = sqlx::query("SELECT * FROM spaces WHERE id = ?")
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
             AND e.space_id = ? AND e.seq > ? AND e.seq <= ? ORDER BY e.seq LIMIT ?) page) paged \
             WHERE page_bytes <= ? OR page_bytes = COALESCE(LENGTH(data), 0) \
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
        // One read transaction: the head and the events are one snapshot.
        let mut snapshot = self.reads.begin().await?;
        let Some(row) = sqlx::query("SELECT * FROM spaces WHERE id = ?")
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
                     NULL AS data, e.created_at, COALESCE(j.name, '') AS job_name \
                     FROM job_events e LEFT JOIN jobs j ON j.id = e.job_id \
                     WHERE (j.id IS NOT NULL OR e.job_id = '') \
                     AND e.space_id = ? AND e.seq > ? AND e.seq <= ? ORDER BY e.seq",
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
        _in_flight: &[(String, u32)],
    ) -> Result<Vec<OutboxEntry>> {
        // Reads claim nothing here (one core): entries in flight are still
        // due and are the oldest, so ranking them counts them already.
        let mut select = QueryBuilder::<Sqlite>::new(
            "SELECT * FROM (SELECT o.*, s.webhook_secret, ROW_NUMBER() OVER \
             (PARTITION BY o.space_id ORDER BY o.next_at, o.id) AS space_rank \
             FROM callback_outbox o JOIN spaces s ON s.id = o.space_id WHERE o.next_at <= ",
        );
        select.push_bind(now);
        select
            .push(") WHERE space_rank <= ")
            .push_bind(i64::from(per_space))
            .push(" ORDER BY next_at, id LIMIT ")
            .push_bind(i64::from(limit));
        let rows = select.build().fetch_all(&self.reads).await?;
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
            "SELECT * FROM tokens WHERE space_id = ? AND revoked_at IS NULL ORDER BY id",
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
        let revoked = self
            .writes
            .replace_public_token(space_id, key, token, now)
            .await?;
        if let Some(token_id) = &revoked {
            let _ = self.revoked.send(token_id.clone());
        }
        Ok(revoked)
    }

    async fn revoke_token(&self, space_id: &str, token_id: &str, now: UnixMillis) -> Result<bool> {
        let revoked = self.writes.revoke_token(space_id, token_id, now).await?;
        if revoked {
            let _ = self.revoked.send(token_id.to_owned());
        }
        Ok(revoked)
    }

    async fn find_token(&self, key_hash: &KeyHash) -> Result<Option<TokenRecord>> {
        super::reads::token::<Sqlite>(&self.reads, key_hash).await
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
        super::pauses::list::<Sqlite, _>(&self.reads, space_id).await
    }

    async fn write_session(&self, write: SessionWrite) -> Result<bool> {
        self.writes.write_session(write).await
    }

    async fn find_session(
        &self,
        id_hash: &KeyHash,
        now: UnixMillis,
    ) -> Result<Option<SessionRecord>> {
        super::sessions::find::<Sqlite, _>(&self.reads, id_hash, now).await
    }

    async fn dispatches(
        &self,
        space_id: &str,
        name: &str,
        rate_key: Option<&str>,
        since: UnixMillis,
    ) -> Result<u32> {
        let mut conn = self.reads.acquire().await?;
        super::concurrency::dispatches::<Sqlite>(&mut conn, space_id, name, rate_key, since).await
    }

    async fn key_leases(
        &self,
        space_id: &str,
        keys: Option<&[String]>,
    ) -> Result<std::collections::HashMap<String, u32>> {
        let mut conn = self.reads.acquire().await?;
        super::concurrency::leases_by_key::<Sqlite>(&mut conn, space_id, keys).await
    }

    async fn write_schedule(&self, write: ScheduleWrite) -> Result<ScheduleWritten> {
        self.writes.write_schedule(write).await
    }

    async fn read_schedules(&self, query: ScheduleQuery<'_>) -> Result<Vec<Schedule>> {
        super::schedules::read::<Sqlite, _>(&self.reads, query).await
    }

    async fn next_schedule_due(&self) -> Result<Option<UnixMillis>> {
        super::schedules::next_due::<Sqlite, _>(&self.reads).await
    }

    async fn get_setting(&self, name: &str) -> Result<Option<String>> {
        super::reads::setting::<Sqlite>(&self.reads, name).await
    }

    async fn put_setting(&self, name: &str, value: &str, write: SettingWrite) -> Result<String> {
        self.writes.put_setting(name, value, write).await
    }

    async fn create_jobs(&self, new: NewJobs) -> Result<Vec<Replay>> {
        self.writes.create_jobs(new).await
    }

    async fn list_jobs(&self, query: &JobQuery) -> Result<Vec<Job>> {
        let mut select = QueryBuilder::<Sqlite>::new("SELECT * FROM jobs WHERE TRUE");
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
        let mut select = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM jobs WHERE TRUE");
        filter::push_conditions(&mut select, filter);
        let count: i64 = select.build_query_scalar().fetch_one(&self.reads).await?;
        Ok(count.max(0) as u64)
    }

    async fn get_job(&self, target: &JobTarget) -> Result<Option<Job>> {
        super::reads::job::<Sqlite>(&self.reads, target).await
    }

    async fn job_events(&self, job_id: &str) -> Result<Vec<JobEvent>> {
        super::reads::events::<Sqlite>(&self.reads, job_id).await
    }

    async fn job_snapshot(&self, job_id: &str) -> Result<Option<(Job, i64)>> {
        super::reads::snapshot::<Sqlite>(&self.reads, job_id).await
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
        let mut select = QueryBuilder::<Sqlite>::new("SELECT * FROM job_logs WHERE job_id = ");
        select.push_bind(job_id);
        let (condition, seq, order) = query.cursor.sql();
        select.push(condition).push_bind(seq);
        if let Some(level) = query.level {
            select.push(" AND level = ").push_bind(level.as_str());
        }
        if let Some(text) = &query.text {
            select
                .push(" AND message LIKE ")
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

    /// One process is the only writer: every commit is its own.
    fn own_commits(&self) -> broadcast::Receiver<Arc<[LiveEvent]>> {
        self.published.subscribe()
    }

    fn revocations(&self) -> broadcast::Receiver<String> {
        self.revoked.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use sqlx::ConnectOptions;
    use sqlx::sqlite::SqliteConnectOptions;
    use tokio::sync::broadcast;

    use super::WAL_FILE_LIMIT_BYTES;
    use super::writer::SqliteWriter;
    use crate::clock::{Clock, UnixMillis};
    use crate::error::{Error, Result};
    use crate::job::machine::{Command, Fence};
    use crate::job::spec::NewJobs;
    use crate::job::{Job, LogLine};
    use crate::store::batch::{self, Writer, Writes};
    use crate::store::handoff::Waiters;
    use crate::store::testing::{create, jobs, store_with_space};
    use crate::store::{
        CallbackTry, DeliverRequest, JobTarget, Replay, SessionWrite, SettingWrite, SpaceRecord,
        SpaceSettings, Store, Sweep, TokenRecord,
    };

    /// A real writer whose job creates fail, as a database error would,
    /// when a job is named "poison".
    struct Poisoned(SqliteWriter);

    #[async_trait::async_trait]
    impl Writer for Poisoned {
        async fn begin(&mut self) -> Result<()> {
            self.0.begin().await
        }
        async fn commit(&mut self) -> Result<()> {
            self.0.commit().await
        }
        async fn rollback(&mut self) {
            self.0.rollback().await
        }
        fn committed(&mut self) {
            self.0.committed()
        }
        async fn close(self) {
            self.0.close().await
        }
        async fn create_space(&mut self, space: SpaceRecord, token: TokenRecord) -> Result<()> {
            self.0.create_space(space, token).await
        }
        async fn update_space(&mut self, id: &str, settings: SpaceSettings) -> Result<SpaceRecord> {
            self.0.update_space(id, settings).await
        }
        async fn set_webhook_secret(&mut self, id: &str, secret: Option<String>) -> Result<()> {
            self.0.set_webhook_secret(id, secret).await
        }
        async fn record_callback_try(
            &mut self,
            attempt: CallbackTry,
            now: UnixMillis,
        ) -> Result<()> {
            self.0.record_callback_try(attempt, now).await
        }
        async fn create_token(&mut self, token: TokenRecord) -> Result<()> {
            self.0.create_token(token).await
        }
        async fn revoke_token(
            &mut self,
            space: &str,
            token: &str,
            now: UnixMillis,
        ) -> Result<bool> {
            self.0.revoke_token(space, token, now).await
        }
        async fn replace_public_token(
            &mut self,
            space_id: &str,
            key: &str,
            token: TokenRecord,
            now: UnixMillis,
        ) -> Result<Option<String>> {
            self.0.replace_public_token(space_id, key, token, now).await
        }
        async fn put_setting(
            &mut self,
            name: &str,
            value: &str,
            write: SettingWrite,
        ) -> Result<String> {
            self.0.put_setting(name, value, write).await
        }
        async fn write_session(&mut self, write: &SessionWrite) -> Result<bool> {
            self.0.write_session(write).await
        }
        async fn write_schedule(
            &mut self,
            write: &crate::store::ScheduleWrite,
        ) -> Result<crate::store::ScheduleWritten> {
            self.0.write_schedule(write).await
        }
        async fn set_pause(
            &mut self,
            space_id: &str,
            name: &str,
            paused: bool,
            now: UnixMillis,
        ) -> Result<bool> {
            self.0.set_pause(space_id, name, paused, now).await
        }
        async fn create_jobs(&mut self, new: NewJobs) -> Result<Vec<Replay>> {
            if new.jobs.iter().any(|job| job.name == "poison") {
                return Err(Error::internal("the disk is full"));
            }
            self.0.create_jobs(new).await
        }
        async fn deliver(&mut self, request: DeliverRequest) -> Result<Vec<Job>> {
            self.0.deliver(request).await
        }
        async fn apply(
            &mut self,
            target: &JobTarget,
            command: Command,
            fence: &Fence,
            now: UnixMillis,
        ) -> Result<batch::Applied> {
            self.0.apply(target, command, fence, now).await
        }
        async fn fire_due_timers(&mut self, now: UnixMillis, limit: u32) -> Result<Sweep> {
            self.0.fire_due_timers(now, limit).await
        }
        async fn delete_job(&mut self, target: &JobTarget) -> Result<Job> {
            self.0.delete_job(target).await
        }
        async fn prune(&mut self, expired: &crate::retention::Expired) -> Result<u32> {
            self.0.prune(expired).await
        }
        async fn append_logs(
            &mut self,
            target: &JobTarget,
            lines: Vec<LogLine>,
            now: UnixMillis,
        ) -> Result<i64> {
            self.0.append_logs(target, lines, now).await
        }
    }

    fn named(space_id: &str, name: &str) -> Vec<Job> {
        let mut made = jobs(space_id, 1);
        made[0].name = name.into();
        made
    }

    /// One operation's failure in the database rolls back its batch: the
    /// operations that ran before it are answered "retry later", the
    /// failing one gets its error, and the ones after it run in the next
    /// batch instead of failing with it.
    #[tokio::test]
    async fn the_writes_after_a_failing_one_run_in_the_next_batch() {
        let (store, space_id, dir) = store_with_space().await;
        let url = format!("sqlite://{}/emit.db", dir.display());
        let connection = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let writer = SqliteWriter::new(
            connection,
            broadcast::channel(16).0,
            Arc::new(AtomicBool::new(false)),
            Clock::system(),
        );
        let (sender, queue) = batch::inbox(16);
        let writes = Arc::new(Writes::new(vec![sender]));
        let mut answers = Vec::new();
        for (queued, name) in ["before", "poison", "after"].into_iter().enumerate() {
            let (writes, batch) = (writes.clone(), named(&space_id, name));
            let id = batch[0].id.clone();
            answers.push((
                id,
                tokio::spawn(async move { writes.create_jobs(batch.into()).await }),
            ));
            // One batch: every operation is queued before the writer runs.
            while queue.ops.len() <= queued {
                tokio::task::yield_now().await;
            }
        }
        tokio::spawn(batch::run(
            Poisoned(writer),
            queue,
            Arc::new(Waiters::default()),
            Default::default(),
            Clock::system(),
        ));
        let mut outcomes = Vec::new();
        for (id, answer) in answers {
            outcomes.push((id, answer.await.unwrap()));
        }
        assert!(
            matches!(outcomes[0].1, Err(Error::Unavailable)),
            "{:?}",
            outcomes[0].1
        );
        assert!(
            matches!(outcomes[1].1, Err(Error::Internal(_))),
            "{:?}",
            outcomes[1].1
        );
        assert!(outcomes[2].1.is_ok(), "{:?}", outcomes[2].1);
        let stored = |id: String| {
            let store = &store;
            async move { store.job_snapshot(&id).await.unwrap().is_some() }
        };
        assert!(!stored(outcomes[0].0.clone()).await);
        assert!(stored(outcomes[2].0.clone()).await);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn size(path: &std::path::Path) -> i64 {
        std::fs::metadata(path).map_or(0, |meta| meta.len() as i64)
    }

    /// Under steady writes the WAL would grow for as long as they last;
    /// here it is started over whenever it passes its bound.
    #[tokio::test]
    async fn the_wal_stays_bounded_under_steady_writes() {
        let (store, space_id, dir) = store_with_space().await;
        let (wal, database) = (dir.join("emit.db-wal"), dir.join("emit.db"));
        let mut peak = 0;
        // Keep writing until the database holds more than the WAL may.
        while size(&database) <= 2 * WAL_FILE_LIMIT_BYTES {
            create(&store, &space_id, 1000).await;
            peak = peak.max(size(&wal));
        }
        assert!(
            peak <= WAL_FILE_LIMIT_BYTES,
            "the WAL reached {peak} bytes while {} were written",
            size(&database)
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
