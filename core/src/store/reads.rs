//! The store's reads of one job, its events, tokens and settings, for both
//! backends: the same SQL on each, generic over the read pool, as `pauses`,
//! `sessions` and `schedules` are. Each backend's `Store` method is one
//! call here. (Listings stay with each backend: a query builder's bound
//! arguments cannot be named generically over sqlx's databases.)

use sqlx::{Database, Encode, Executor, IntoArguments, Pool, Type};

use super::rows::{self, Columns};
use super::{JobTarget, TokenRecord};
use crate::auth::KeyHash;
use crate::error::Result;
use crate::job::{Job, JobEvent};

/// The live token whose key hashes to `key_hash`.
pub async fn token<DB>(reads: &Pool<DB>, key_hash: &KeyHash) -> Result<Option<TokenRecord>>
where
    DB: Database<Row: Columns>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
{
    let row = sqlx::query::<DB>("SELECT * FROM tokens WHERE key_hash = $1 AND revoked_at IS NULL")
        .bind(&key_hash[..])
        .fetch_optional(reads)
        .await?;
    row.as_ref().map(rows::token).transpose()
}

pub async fn setting<DB>(reads: &Pool<DB>, name: &str) -> Result<Option<String>>
where
    DB: Database<Row: Columns>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    let row = sqlx::query::<DB>("SELECT value FROM settings WHERE name = $1")
        .bind(name)
        .fetch_optional(reads)
        .await?;
    row.map(|row| row.text("value")).transpose()
}

/// The job, if it exists (in the target's space, when it names one).
pub async fn job<DB>(reads: &Pool<DB>, target: &JobTarget) -> Result<Option<Job>>
where
    DB: Database<Row: Columns>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    let row = sqlx::query::<DB>("SELECT * FROM jobs WHERE id = $1")
        .bind(target.job_id.as_str())
        .fetch_optional(reads)
        .await?;
    let job = row.as_ref().map(rows::job).transpose()?;
    Ok(job.filter(|job| {
        target
            .space_id
            .as_ref()
            .is_none_or(|space| *space == job.space_id)
    }))
}

/// The job's events, in order.
pub async fn events<DB>(reads: &Pool<DB>, job_id: &str) -> Result<Vec<JobEvent>>
where
    DB: Database<Row: Columns>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    let rows = sqlx::query::<DB>(
        "SELECT e.*, j.name AS job_name FROM job_events e JOIN jobs j ON j.id = e.job_id \
         WHERE e.job_id = $1 ORDER BY e.seq",
    )
    .bind(job_id)
    .fetch_all(reads)
    .await?;
    rows.iter().map(rows::event).collect()
}

/// The job and its space's event head, read at one instant.
pub async fn snapshot<DB>(reads: &Pool<DB>, job_id: &str) -> Result<Option<(Job, i64)>>
where
    DB: Database<Row: Columns>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    let row = sqlx::query::<DB>(
        "SELECT j.*, s.event_seq AS space_event_seq FROM jobs j JOIN spaces s ON s.id = j.space_id \
         WHERE j.id = $1",
    )
    .bind(job_id)
    .fetch_optional(reads)
    .await?;
    row.map(|row| Ok((rows::job(&row)?, row.int("space_event_seq")?)))
        .transpose()
}
