//! The store's reads, for both backends: the same SQL on each, written once
//! over the read pool, with `Dialect` for the few differences. The reads of
//! pauses, sessions, schedules and rate windows live with the writes they
//! read back (`pauses`, `sessions`, `schedules`, `concurrency`).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{Decode, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::dialect::{Dialect, Statement};
use super::rows::{self, Columns};
use super::{
    JobFilter, JobQuery, JobTarget, LogCursor, LogQuery, OutboxEntry, REPLAY_PAGE_BYTES,
    REPLAY_PAGE_EVENTS, ScheduleQuery, SessionRecord, SpaceHead, SpaceLog, SpaceRecord,
    TokenRecord,
};
use crate::auth::KeyHash;
use crate::clock::UnixMillis;
use crate::error::Result;
use crate::job::{Job, JobEvent, LiveEvent, StoredLogLine};
use crate::schedule::Schedule;

/// The read side of a store; `Store` documents each read.
#[async_trait]
pub trait Reads: Send + Sync {
    async fn list_spaces(&self) -> Result<Vec<SpaceRecord>>;
    async fn get_space(&self, space_id: &str) -> Result<Option<SpaceRecord>>;
    async fn space_events(&self, space_id: &str, after: i64, upto: i64) -> Result<Vec<LiveEvent>>;
    async fn space_log(
        &self,
        space_id: &str,
        after: Option<i64>,
        max_missed: u32,
    ) -> Result<Option<SpaceLog>>;
    async fn list_tokens(&self, space_id: &str) -> Result<Vec<TokenRecord>>;
    async fn find_token(&self, key_hash: &KeyHash) -> Result<Option<TokenRecord>>;
    async fn pauses(&self, space_id: &str) -> Result<Vec<String>>;
    async fn find_session(
        &self,
        id_hash: &KeyHash,
        now: UnixMillis,
    ) -> Result<Option<SessionRecord>>;
    async fn dispatches(
        &self,
        space_id: &str,
        name: &str,
        rate_key: Option<&str>,
        since: UnixMillis,
    ) -> Result<u32>;
    async fn key_leases(
        &self,
        space_id: &str,
        keys: Option<&[String]>,
    ) -> Result<HashMap<String, u32>>;
    async fn read_schedules(&self, query: ScheduleQuery<'_>) -> Result<Vec<Schedule>>;
    async fn next_schedule_due(&self) -> Result<Option<UnixMillis>>;
    async fn get_setting(&self, name: &str) -> Result<Option<String>>;
    async fn list_jobs(&self, query: &JobQuery) -> Result<Vec<Job>>;
    async fn count_jobs(&self, filter: &JobFilter) -> Result<u64>;
    async fn get_job(&self, target: &JobTarget) -> Result<Option<Job>>;
    async fn job_events(&self, job_id: &str) -> Result<Vec<JobEvent>>;
    async fn job_snapshot(&self, job_id: &str) -> Result<Option<(Job, i64)>>;
    async fn list_logs(&self, job_id: &str, query: &LogQuery) -> Result<Vec<StoredLogLine>>;
    async fn due_callbacks(
        &self,
        now: UnixMillis,
        limit: u32,
        per_space: u32,
        in_flight: &[(String, u32)],
    ) -> Result<Vec<OutboxEntry>>;
}

// What sqlx must be able to do with a backend for these reads: the bounds
// are spelled out because Rust cannot yet name them once.
#[async_trait]
impl<DB> Reads for Pool<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> Option<i64>: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (Option<i64>,): FromRow<'r, DB::Row>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
    for<'r> (Vec<u8>, i64, i64): FromRow<'r, DB::Row>,
{
    async fn list_spaces(&self) -> Result<Vec<SpaceRecord>> {
        let rows = sqlx::query::<DB>("SELECT * FROM spaces ORDER BY id")
            .fetch_all(self)
            .await?;
        rows.iter().map(rows::space).collect()
    }

    async fn get_space(&self, space_id: &str) -> Result<Option<SpaceRecord>> {
        let row = sqlx::query::<DB>("SELECT * FROM spaces WHERE id = $1")
            .bind(space_id)
            .fetch_optional(self)
            .await?;
        row.as_ref().map(rows::space).transpose()
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
        let rows = sqlx::query::<DB>(&sql)
            .bind(space_id)
            .bind(after)
            .bind(upto)
            .bind(i64::from(REPLAY_PAGE_EVENTS))
            .bind(REPLAY_PAGE_BYTES)
            .fetch_all(self)
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
        let mut snapshot = self.begin().await?;
        if let Some(statement) = DB::SNAPSHOT {
            sqlx::query::<DB>(statement).execute(&mut *snapshot).await?;
        }
        let Some(row) = sqlx::query::<DB>("SELECT * FROM spaces WHERE id = $1")
            .bind(space_id)
            .fetch_optional(&mut *snapshot)
            .await?
        else {
            return Ok(None);
        };
        let head = SpaceHead {
            stream_id: row.text("stream_id")?,
            seq: row.int("event_seq")?,
            counts: rows::space_counts(&row)?,
        };
        let missed_events = match after {
            Some(after) if after <= head.seq && head.seq - after <= i64::from(max_missed) => {
                // Without data: a replay range may hold gigabytes of it.
                let rows = sqlx::query::<DB>(
                    "SELECT e.seq, e.space_id, e.job_id, e.type, e.status, e.previous_status, \
                     CAST(NULL AS TEXT) AS data, e.created_at, COALESCE(j.name, '') AS job_name \
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

    async fn list_tokens(&self, space_id: &str) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query::<DB>(
            "SELECT * FROM tokens WHERE space_id = $1 AND revoked_at IS NULL ORDER BY id",
        )
        .bind(space_id)
        .fetch_all(self)
        .await?;
        rows.iter().map(rows::token).collect()
    }

    async fn find_token(&self, key_hash: &KeyHash) -> Result<Option<TokenRecord>> {
        let row =
            sqlx::query::<DB>("SELECT * FROM tokens WHERE key_hash = $1 AND revoked_at IS NULL")
                .bind(&key_hash[..])
                .fetch_optional(self)
                .await?;
        row.as_ref().map(rows::token).transpose()
    }

    async fn pauses(&self, space_id: &str) -> Result<Vec<String>> {
        super::pauses::list::<DB, _>(self, space_id).await
    }

    async fn find_session(
        &self,
        id_hash: &KeyHash,
        now: UnixMillis,
    ) -> Result<Option<SessionRecord>> {
        super::sessions::find::<DB, _>(self, id_hash, now).await
    }

    async fn dispatches(
        &self,
        space_id: &str,
        name: &str,
        rate_key: Option<&str>,
        since: UnixMillis,
    ) -> Result<u32> {
        let mut conn = self.acquire().await?;
        super::concurrency::dispatches::<DB>(&mut conn, space_id, name, rate_key, since).await
    }

    async fn key_leases(
        &self,
        space_id: &str,
        keys: Option<&[String]>,
    ) -> Result<HashMap<String, u32>> {
        let mut conn = self.acquire().await?;
        super::concurrency::leases_by_key::<DB>(&mut conn, space_id, keys).await
    }

    async fn read_schedules(&self, query: ScheduleQuery<'_>) -> Result<Vec<Schedule>> {
        super::schedules::read::<DB, _>(self, query).await
    }

    async fn next_schedule_due(&self) -> Result<Option<UnixMillis>> {
        super::schedules::next_due::<DB, _>(self).await
    }

    async fn get_setting(&self, name: &str) -> Result<Option<String>> {
        let row = sqlx::query::<DB>("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(self)
            .await?;
        row.map(|row| row.text("value")).transpose()
    }

    async fn list_jobs(&self, query: &JobQuery) -> Result<Vec<Job>> {
        let select = super::filter::newest_first(&query.filter, query.limit, query.offset);
        let rows = select.query::<DB>().fetch_all(self).await?;
        rows.iter().map(rows::job).collect()
    }

    async fn count_jobs(&self, filter: &JobFilter) -> Result<u64> {
        let mut select = Statement::new("SELECT COUNT(*) AS matched FROM jobs WHERE TRUE");
        super::filter::push_conditions(&mut select, filter);
        let row = select.query::<DB>().fetch_one(self).await?;
        Ok(row.int("matched")?.max(0) as u64)
    }

    async fn get_job(&self, target: &JobTarget) -> Result<Option<Job>> {
        let row = sqlx::query::<DB>("SELECT * FROM jobs WHERE id = $1")
            .bind(target.job_id.as_str())
            .fetch_optional(self)
            .await?;
        let job = row.as_ref().map(rows::job).transpose()?;
        Ok(job.filter(|job| {
            target
                .space_id
                .as_ref()
                .is_none_or(|space| *space == job.space_id)
        }))
    }

    async fn job_events(&self, job_id: &str) -> Result<Vec<JobEvent>> {
        let rows = sqlx::query::<DB>(
            "SELECT e.*, j.name AS job_name FROM job_events e JOIN jobs j ON j.id = e.job_id \
             WHERE e.job_id = $1 ORDER BY e.seq",
        )
        .bind(job_id)
        .fetch_all(self)
        .await?;
        rows.iter().map(rows::event).collect()
    }

    async fn job_snapshot(&self, job_id: &str) -> Result<Option<(Job, i64)>> {
        let row = sqlx::query::<DB>(
            "SELECT j.*, s.event_seq AS space_event_seq FROM jobs j \
             JOIN spaces s ON s.id = j.space_id WHERE j.id = $1",
        )
        .bind(job_id)
        .fetch_optional(self)
        .await?;
        row.map(|row| Ok((rows::job(&row)?, row.int("space_event_seq")?)))
            .transpose()
    }

    async fn list_logs(&self, job_id: &str, query: &LogQuery) -> Result<Vec<StoredLogLine>> {
        let mut select = Statement::new("SELECT * FROM job_logs WHERE job_id = ");
        select.push_text(job_id);
        let (condition, seq, order) = query.cursor.sql();
        select.push(condition).push_int(seq);
        if let Some(level) = query.level {
            select.push(" AND level = ").push_text(level.as_str());
        }
        if let Some(text) = &query.text {
            select
                .push(" AND message ")
                .push(DB::LIKE_ANY_CASE)
                .push(" ")
                .push_text(rows::like_pattern(text))
                .push(" ESCAPE '\\'");
        }
        select.push(order).push_int(i64::from(query.limit));
        let rows = select.query::<DB>().fetch_all(self).await?;
        let mut lines = rows
            .iter()
            .map(rows::log_line)
            .collect::<Result<Vec<_>>>()?;
        if matches!(query.cursor, LogCursor::Before(_)) {
            lines.reverse();
        }
        Ok(lines)
    }

    async fn due_callbacks(
        &self,
        now: UnixMillis,
        limit: u32,
        per_space: u32,
        in_flight: &[(String, u32)],
    ) -> Result<Vec<OutboxEntry>> {
        DB::due_callbacks(self, now, limit, per_space, in_flight).await
    }
}
