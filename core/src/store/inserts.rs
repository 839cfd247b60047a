//! The multi-row inserts both backends make the same way: a create's jobs
//! and a report's log lines, as many rows per statement as the backend's
//! bound-parameter limit allows (a 1,000-job create is one statement).

use sqlx::{Encode, Executor, IntoArguments, Type};

use super::dialect::Dialect;
use super::rows;
use crate::clock::UnixMillis;
use crate::error::Result;
use crate::job::{Job, LogLine};

const JOB_COLUMNS: [&str; 23] = [
    "id",
    "space_id",
    "name",
    "payload",
    "status",
    "max_retries",
    "attempt_number",
    "timeout_seconds",
    "scheduled_for",
    "due_at",
    "lease_id",
    "callback_url",
    "callback_headers",
    "backoff_kind",
    "backoff_delay",
    "backoff_max",
    "priority",
    "schedule_id",
    "fire_time",
    "concurrency_key",
    "concurrency_limit",
    "created_at",
    "updated_at",
];

const LOG_COLUMNS: [&str; 5] = ["job_id", "seq", "level", "message", "created_at"];

/// Inserts new jobs.
pub async fn jobs<DB>(conn: &mut DB::Connection, jobs: &[Job]) -> Result<()>
where
    DB: Dialect,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
{
    for chunk in jobs.chunks(DB::MAX_PARAMETERS / JOB_COLUMNS.len()) {
        let sql = insert::<DB>("jobs", &JOB_COLUMNS, chunk.len());
        let mut query = sqlx::query::<DB>(&sql);
        for job in chunk {
            let backoff = job.retry_backoff;
            query = query
                .bind(job.id.as_str())
                .bind(job.space_id.as_str())
                .bind(job.name.as_str())
                .bind(job.payload.as_deref())
                .bind(job.status().as_str())
                .bind(i64::from(job.max_retries))
                .bind(i64::from(job.attempt_number))
                .bind(i64::from(job.timeout_seconds))
                .bind(job.scheduled_for)
                .bind(job.state.due_at())
                .bind(job.state.lease())
                .bind(job.callback.as_ref().map(|callback| callback.url.as_str()))
                .bind(rows::callback_headers_json(job))
                .bind(backoff.map(|b| b.kind.as_str()))
                .bind(backoff.map(|b| i64::from(b.delay_seconds)))
                .bind(backoff.map(|b| i64::from(b.max_delay_seconds)))
                .bind(i64::from(job.priority))
                .bind(job.schedule.as_ref().map(|fire| fire.schedule_id.as_str()))
                .bind(job.schedule.as_ref().map(|fire| fire.fire_time))
                .bind(job.concurrency_key.as_deref())
                .bind(job.concurrency_limit.map(i64::from))
                .bind(job.created_at)
                .bind(job.updated_at);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Appends log lines to a job after the ones it has; returns the sequence
/// number of the first.
pub async fn log_lines<DB>(
    conn: &mut DB::Connection,
    job_id: &str,
    lines: &[LogLine],
    now: UnixMillis,
) -> Result<i64>
where
    DB: Dialect,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let last =
        sqlx::query::<DB>("SELECT COALESCE(MAX(seq), 0) AS last FROM job_logs WHERE job_id = $1")
            .bind(job_id)
            .fetch_one(&mut *conn)
            .await?;
    let first = rows::Columns::int(&last, "last")? + 1;
    let mut seq = first;
    for chunk in lines.chunks(DB::MAX_PARAMETERS / LOG_COLUMNS.len()) {
        let sql = insert::<DB>("job_logs", &LOG_COLUMNS, chunk.len());
        let mut query = sqlx::query::<DB>(&sql);
        for line in chunk {
            query = query
                .bind(job_id)
                .bind(seq)
                .bind(line.level.as_str())
                .bind(line.message.as_str())
                .bind(now);
            seq += 1;
        }
        query.execute(&mut *conn).await?;
    }
    Ok(first)
}

/// `INSERT INTO table (columns) VALUES ($1, ...), ...` for `rows` rows.
fn insert<DB: Dialect>(table: &str, columns: &[&str], rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let mut parameter = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns.len() {
            parameter += 1;
            if column > 0 {
                sql.push_str(", ");
            }
            DB::push_placeholder(&mut sql, parameter);
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use sqlx::{Postgres, Sqlite};

    #[test]
    fn rows_take_their_parameters_in_order() {
        assert_eq!(
            super::insert::<Postgres>("t", &["a", "b"], 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(
            super::insert::<Sqlite>("t", &["a", "b"], 2),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
    }
}
