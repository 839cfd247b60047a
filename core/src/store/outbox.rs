//! The callback outbox's entry for a job that ended with a callback
//! (`machine::Effects::callback`), written in the transaction that ends it,
//! so the callback is owed exactly when the end is committed. The same SQL
//! on both backends (both speak `$N` placeholders).

use sqlx::{Database, Encode, Executor, IntoArguments, Type};

use crate::callbacks;
use crate::clock::UnixMillis;
use crate::error::Result;
use crate::job::Job;
use crate::store::rows;

/// Owes `job`'s callback from `now` on; nothing without a callback.
pub async fn owe_callback<DB>(conn: &mut DB::Connection, job: &Job, now: UnixMillis) -> Result<()>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let Some(callback) = &job.callback else {
        return Ok(());
    };
    sqlx::query::<DB>(
        "INSERT INTO callback_outbox (job_id, space_id, url, headers, body, next_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(job.id.as_str())
    .bind(job.space_id.as_str())
    .bind(callback.url.as_str())
    .bind(rows::callback_headers_json(job))
    .bind(callbacks::payload(job, now))
    .bind(now)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// After a try of entry `id`: due again at `retry_at`, or (None: delivered,
/// or given up) gone.
pub async fn after_try<DB>(
    conn: &mut DB::Connection,
    id: i64,
    retry_at: Option<UnixMillis>,
) -> Result<()>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    match retry_at {
        Some(next_at) => {
            sqlx::query::<DB>(
                "UPDATE callback_outbox SET attempt = attempt + 1, next_at = $1 WHERE id = $2",
            )
            .bind(next_at)
            .bind(id)
            .execute(conn)
            .await?
        }
        None => {
            sqlx::query::<DB>("DELETE FROM callback_outbox WHERE id = $1")
                .bind(id)
                .execute(conn)
                .await?
        }
    };
    Ok(())
}
