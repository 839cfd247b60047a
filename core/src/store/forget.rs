//! Deleting finished jobs, for both backends: an operator's delete and
//! retention's pruning. The statements are the same SQL on SQLite and
//! PostgreSQL (both speak `$N` placeholders and `RETURNING`), so they are
//! written once, generic over the connection; the writers only pick which
//! jobs go and move their spaces' counts.

use sqlx::{Database, Encode, Executor, IntoArguments, Type};

use super::rows::{self, Columns};
use crate::error::Result;
use crate::job::{Job, JobStatus};
use crate::retention::Expired;

/// A job a write deleted: what its space's counts lose.
pub struct Forgotten {
    pub space_id: String,
    pub status: JobStatus,
}

/// The selection of expired jobs; `lock` is what the backend appends so
/// that concurrent writers never pick the same rows (`FOR UPDATE SKIP
/// LOCKED` on PostgreSQL; nothing on SQLite, whose writer is alone).
fn expired_sql(lock: &str) -> String {
    format!(
        "SELECT id FROM jobs WHERE space_id = $1 AND status = $2 AND completed_at < $3 \
         AND NOT EXISTS (SELECT 1 FROM callback_outbox o WHERE o.job_id = jobs.id) \
         ORDER BY completed_at LIMIT $4 {lock}"
    )
}

/// `$1, $2, ..., $n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ids of up to `expired.limit` expired jobs, oldest end first.
pub async fn expired<DB>(
    conn: &mut DB::Connection,
    expired: &Expired,
    lock: &str,
) -> Result<Vec<String>>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    DB::Row: Columns,
{
    let sql = expired_sql(lock);
    let found = sqlx::query::<DB>(&sql)
        .bind(expired.space_id.as_str())
        .bind(expired.status.as_str())
        .bind(expired.before)
        .bind(i64::from(expired.limit))
        .fetch_all(&mut *conn)
        .await?;
    found.iter().map(|row| row.text("id")).collect()
}

/// Deletes those of `ids` that are finished, with everything that refers
/// to them; returns the jobs deleted.
pub async fn delete_finished<DB>(
    conn: &mut DB::Connection,
    ids: &[String],
) -> Result<Vec<Forgotten>>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    DB::Row: Columns,
{
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let list = placeholders(ids.len());
    let sql = format!(
        "DELETE FROM jobs WHERE id IN ({list}) AND status IN ('completed', 'dead', 'killed') \
         RETURNING id, space_id, status"
    );
    let mut query = sqlx::query::<DB>(&sql);
    for id in ids {
        query = query.bind(id.as_str());
    }
    let deleted = query.fetch_all(&mut *conn).await?;
    let mut gone = Vec::with_capacity(deleted.len());
    let mut forgotten = Vec::with_capacity(deleted.len());
    for row in &deleted {
        gone.push(row.text("id")?);
        forgotten.push(Forgotten {
            space_id: row.text("space_id")?,
            status: rows::status_column(row)?,
        });
    }
    if gone.is_empty() {
        return Ok(forgotten);
    }
    let list = placeholders(gone.len());
    for table in ["job_events", "job_logs", "callback_outbox"] {
        let sql = format!("DELETE FROM {table} WHERE job_id IN ({list})");
        let mut query = sqlx::query::<DB>(&sql);
        for id in &gone {
            query = query.bind(id.as_str());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(forgotten)
}

/// Deletes one job for an operator, as read by `load`: NotFound and
/// Conflict say why it could not be.
pub async fn delete_one<DB>(conn: &mut DB::Connection, job: Job) -> Result<(Job, Vec<Forgotten>)>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    DB::Row: Columns,
{
    if !job.status().is_terminal() {
        return Err(crate::error::Error::Conflict(format!(
            "cannot delete a {} job: only completed, dead and killed jobs can be deleted (kill it first)",
            job.status()
        )));
    }
    let forgotten = delete_finished::<DB>(conn, std::slice::from_ref(&job.id)).await?;
    if forgotten.is_empty() {
        // Another replica changed or deleted it between the read and now.
        return Err(crate::error::Error::Conflict(
            "the job changed while it was being deleted; try again".into(),
        ));
    }
    Ok((job, forgotten))
}
