//! Recurring schedules, for both backends (the same SQL on each, generic
//! over the connection).
//!
//! Exactly once per fire: a fire is a conditional update that moves
//! `next_fire_at` from the value the scheduler read to the next one, in the
//! transaction that inserts the fire's jobs. Of several cores that read the
//! same due fire, one update matches and the others find it moved (on
//! PostgreSQL they wait for the winner's row lock, then re-read). A crash
//! before COMMIT leaves `next_fire_at` where it was, so another core (or the
//! restarted one) makes the fire. The unique index on `(schedule_id,
//! fire_time)` of `jobs` refuses a second job for a fire even if that ever
//! failed.

use sqlx::{Database, Decode, Encode, Executor, IntoArguments, Type};

use super::rows::Columns;
use crate::clock::UnixMillis;
use crate::error::{Error, Result};
use crate::job::{Job, JobStatus};
use crate::schedule::{CatchUp, JobTemplate, MAX_SCHEDULES_PER_SPACE, Overlap, Schedule};

pub enum ScheduleWrite {
    Create(Schedule),
    /// Replaces the schedule if it is still at `expected_version`.
    Update {
        schedule: Schedule,
        expected_version: i64,
    },
    Delete {
        space_id: String,
        schedule_id: String,
    },
    Fire(Fire),
}

/// One scheduler pass over a due schedule.
pub struct Fire {
    pub schedule_id: String,
    /// `next_fire_at` as the scheduler read it: the fire happens only if it
    /// is still that.
    pub expected_next: UnixMillis,
    pub next: Option<UnixMillis>,
    /// The latest fire time this pass makes a job for, if any.
    pub last_fire: Option<UnixMillis>,
    /// One job per fire time to make, oldest first.
    pub jobs: Vec<Job>,
    pub overlap: Overlap,
}

/// What became of a fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FireClaim {
    /// The fire is this transaction's: insert its jobs.
    Make,
    /// The fire is this transaction's, but the previous job is still live
    /// and the overlap policy skips.
    SkipOverlap,
    /// Another core made it, or the schedule changed, paused or went.
    Stale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleWritten {
    /// Whether a create, update or delete changed a row.
    Changed(bool),
    Fire(FireClaim),
}

/// A schedule row's columns, for `concat!` into the reads below.
macro_rules! columns {
    () => {
        "id, space_id, cron, time_zone, job, overlap, catch_up, catch_up_limit, paused, \
         next_fire_at, last_fire_at, last_job_id, version, created_at, updated_at"
    };
}

/// Runs `write` on the writer's open transaction. A fire's jobs are for the
/// caller to insert when the claim says `Make`.
pub async fn write<DB>(conn: &mut DB::Connection, write: &ScheduleWrite) -> Result<ScheduleWritten>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> String: Decode<'r, DB>,
    for<'r> (i64,): sqlx::FromRow<'r, DB::Row>,
    for<'r> (Option<String>,): sqlx::FromRow<'r, DB::Row>,
    for<'r> (String,): sqlx::FromRow<'r, DB::Row>,
{
    match write {
        ScheduleWrite::Create(schedule) => {
            let (held,): (i64,) =
                sqlx::query_as::<DB, (i64,)>("SELECT COUNT(*) FROM schedules WHERE space_id = $1")
                    .bind(schedule.space_id.as_str())
                    .fetch_one(&mut *conn)
                    .await?;
            if held >= MAX_SCHEDULES_PER_SPACE {
                return Err(Error::Conflict(format!(
                    "a space holds at most {MAX_SCHEDULES_PER_SPACE} schedules"
                )));
            }
            bind_schedule::<DB>(
                sqlx::query::<DB>(
                    "INSERT INTO schedules (id, space_id, cron, time_zone, job, overlap, \
                     catch_up, catch_up_limit, paused, next_fire_at, last_fire_at, \
                     last_job_id, version, created_at, updated_at) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                ),
                schedule,
            )?
            .execute(&mut *conn)
            .await?;
            Ok(ScheduleWritten::Changed(true))
        }
        ScheduleWrite::Update {
            schedule,
            expected_version,
        } => {
            let changed = bind_schedule::<DB>(
                sqlx::query::<DB>(
                    "UPDATE schedules SET id = $1, space_id = $2, cron = $3, time_zone = $4, \
                     job = $5, overlap = $6, catch_up = $7, catch_up_limit = $8, paused = $9, \
                     next_fire_at = $10, last_fire_at = $11, last_job_id = $12, version = $13, \
                     created_at = $14, updated_at = $15 WHERE id = $1 AND version = $16 \
                     RETURNING id",
                ),
                schedule,
            )?
            .bind(*expected_version)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(ScheduleWritten::Changed(changed.is_some()))
        }
        ScheduleWrite::Delete {
            space_id,
            schedule_id,
        } => {
            let deleted = sqlx::query::<DB>(
                "DELETE FROM schedules WHERE id = $1 AND space_id = $2 RETURNING id",
            )
            .bind(schedule_id.as_str())
            .bind(space_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            Ok(ScheduleWritten::Changed(deleted.is_some()))
        }
        ScheduleWrite::Fire(fire) => Ok(ScheduleWritten::Fire(claim_fire::<DB>(conn, fire).await?)),
    }
}

async fn claim_fire<DB>(conn: &mut DB::Connection, fire: &Fire) -> Result<FireClaim>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB>,
    for<'r> (Option<String>,): sqlx::FromRow<'r, DB::Row>,
    for<'r> (String,): sqlx::FromRow<'r, DB::Row>,
{
    let claimed: Option<(Option<String>,)> = sqlx::query_as::<DB, (Option<String>,)>(
        "UPDATE schedules SET next_fire_at = $1, last_fire_at = COALESCE($2, last_fire_at), \
         version = version + 1 \
         WHERE id = $3 AND next_fire_at = $4 AND paused = 0 RETURNING last_job_id",
    )
    .bind(fire.next)
    .bind(fire.last_fire)
    .bind(fire.schedule_id.as_str())
    .bind(fire.expected_next)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((previous,)) = claimed else {
        return Ok(FireClaim::Stale);
    };
    if fire.overlap == Overlap::Skip
        && let Some(previous) = previous
    {
        let status: Option<(String,)> =
            sqlx::query_as::<DB, (String,)>("SELECT status FROM jobs WHERE id = $1")
                .bind(previous.as_str())
                .fetch_optional(&mut *conn)
                .await?;
        let live = status
            .and_then(|(status,)| JobStatus::parse(&status))
            .is_some_and(|status| !status.is_terminal());
        if live {
            return Ok(FireClaim::SkipOverlap);
        }
    }
    if let Some(last) = fire.jobs.last() {
        sqlx::query::<DB>("UPDATE schedules SET last_job_id = $1 WHERE id = $2")
            .bind(last.id.as_str())
            .bind(fire.schedule_id.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(FireClaim::Make)
}

fn bind_schedule<'q, DB>(
    query: sqlx::query::Query<'q, DB, DB::Arguments<'q>>,
    schedule: &'q Schedule,
) -> Result<sqlx::query::Query<'q, DB, DB::Arguments<'q>>>
where
    DB: Database,
    &'q str: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
{
    let job = serde_json::to_string(&schedule.job).map_err(Error::internal)?;
    Ok(query
        .bind(schedule.id.as_str())
        .bind(schedule.space_id.as_str())
        .bind(schedule.cron.as_str())
        .bind(schedule.time_zone.as_str())
        .bind(job)
        .bind(schedule.overlap.as_str())
        .bind(schedule.catch_up.as_str())
        .bind(i64::from(schedule.catch_up_limit))
        .bind(i64::from(schedule.paused))
        .bind(schedule.next_fire_at)
        .bind(schedule.last_fire_at)
        .bind(schedule.last_job_id.clone())
        .bind(schedule.version)
        .bind(schedule.created_at)
        .bind(schedule.updated_at))
}

/// Which schedules a read returns.
pub enum ScheduleQuery<'a> {
    One {
        space_id: &'a str,
        schedule_id: &'a str,
    },
    Space {
        space_id: &'a str,
    },
    /// Unpaused schedules due at `now`, soonest first.
    Due {
        now: UnixMillis,
        limit: u32,
    },
}

pub async fn read<'c, DB, E>(reads: E, query: ScheduleQuery<'_>) -> Result<Vec<Schedule>>
where
    DB: Database,
    DB::Row: Columns,
    E: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let rows = match query {
        ScheduleQuery::One {
            space_id,
            schedule_id,
        } => {
            sqlx::query::<DB>(concat!(
                "SELECT ",
                columns!(),
                " FROM schedules WHERE id = $1 AND space_id = $2"
            ))
            .bind(schedule_id)
            .bind(space_id)
            .fetch_all(reads)
            .await?
        }
        ScheduleQuery::Space { space_id } => {
            sqlx::query::<DB>(concat!(
                "SELECT ",
                columns!(),
                " FROM schedules WHERE space_id = $1 ORDER BY id"
            ))
            .bind(space_id)
            .fetch_all(reads)
            .await?
        }
        ScheduleQuery::Due { now, limit } => {
            sqlx::query::<DB>(concat!(
                "SELECT ",
                columns!(),
                " FROM schedules WHERE paused = 0 AND next_fire_at IS NOT NULL \
                 AND next_fire_at <= $1 ORDER BY next_fire_at LIMIT $2"
            ))
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(reads)
            .await?
        }
    };
    rows.iter().map(schedule).collect()
}

/// The soonest fire time of any unpaused schedule.
pub async fn next_due<'c, DB, E>(reads: E) -> Result<Option<UnixMillis>>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> Option<i64>: Decode<'r, DB> + Type<DB>,
    for<'r> (Option<i64>,): sqlx::FromRow<'r, DB::Row>,
{
    let (next,): (Option<i64>,) = sqlx::query_as::<DB, (Option<i64>,)>(
        "SELECT MIN(next_fire_at) FROM schedules WHERE paused = 0 AND next_fire_at IS NOT NULL",
    )
    .fetch_one(reads)
    .await?;
    Ok(next)
}

fn schedule(row: &impl Columns) -> Result<Schedule> {
    let corrupt = |column: &str| Error::internal(format!("corrupt schedule column {column}"));
    let job: JobTemplate = serde_json::from_str(&row.text("job")?).map_err(|_| corrupt("job"))?;
    Ok(Schedule {
        id: row.text("id")?,
        space_id: row.text("space_id")?,
        cron: row.text("cron")?,
        time_zone: row.text("time_zone")?,
        job,
        overlap: Overlap::parse(&row.text("overlap")?).ok_or_else(|| corrupt("overlap"))?,
        catch_up: CatchUp::parse(&row.text("catch_up")?).ok_or_else(|| corrupt("catch_up"))?,
        catch_up_limit: u32::try_from(row.int("catch_up_limit")?)
            .map_err(|_| corrupt("catch_up_limit"))?,
        paused: row.int("paused")? != 0,
        next_fire_at: row.opt_int("next_fire_at")?,
        last_fire_at: row.opt_int("last_fire_at")?,
        last_job_id: row.opt_text("last_job_id")?,
        version: row.int("version")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}
