//! Deleting finished jobs, for both backends: an operator's delete and
//! retention's pruning. The delete of given jobs is the same SQL on SQLite
//! and PostgreSQL (both speak `$N` placeholders and `RETURNING`), so it is
//! written once, generic over the connection. Pruning is one round trip
//! per call, which each backend words its own way around `expired_ids`;
//! the writers then move their spaces' counts.

use sqlx::{Database, Encode, Executor, IntoArguments, Type};

use super::rows::{self, Columns};
use crate::error::Result;
use crate::job::{Job, JobStatus};

/// A job a write deleted: what its space's counts lose.
pub struct Forgotten {
    pub space_id: String,
    pub status: JobStatus,
}

/// The ids of up to `limit` expired jobs of one space and status, oldest
/// end first; `space`, `before` and `limit` are the dialect's placeholders.
///
/// The partial index of finished jobs serves the query only when the query
/// repeats the index's condition word for word (SQLite does not infer it
/// from `status = ...`; without it, it scanned and sorted every finished job
/// of the space, 20 ms a call at 100,000 of them), and the status is
/// written in, not bound, so PostgreSQL's generic plans can use it too. The
/// order is total, so the same statement picks the same jobs twice in one
/// transaction.
pub fn expired_ids(status: JobStatus, space: &str, before: &str, limit: &str) -> String {
    let (status, finished) = (status.as_str(), rows::FINISHED);
    format!(
        "SELECT id FROM jobs WHERE space_id = {space} AND status = '{status}' \
         AND {finished} AND completed_at < {before} \
         AND NOT EXISTS (SELECT 1 FROM callback_outbox o WHERE o.job_id = jobs.id) \
         ORDER BY completed_at, id LIMIT {limit}"
    )
}

/// The tables that refer to jobs, emptied of a deleted job's rows.
pub const DEPENDENTS: [&str; 3] = ["job_events", "job_logs", "callback_outbox"];

/// `$1, $2, ..., $n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
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
        "DELETE FROM jobs WHERE id IN ({list}) AND {} RETURNING id, space_id, status",
        rows::FINISHED
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
    for table in DEPENDENTS {
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
