//! Idempotency keys of creates, for both backends (the same SQL on each,
//! generic over the connection). A key is claimed in the transaction that
//! inserts its job, so the two are durable together.
//!
//! Claims race safely across writers and cores: the claim is one
//! `INSERT ... ON CONFLICT` on the key's primary key, which waits for a
//! concurrent claim of the same key to commit or roll back and then sees
//! it. A create whose key turns out to be taken by a different request
//! undoes its own claims (a savepoint), so a refused create leaves nothing
//! behind in the batch it shared.

use sqlx::{Database, Decode, Encode, Executor, IntoArguments, Type};

use crate::clock::UnixMillis;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::job::spec::{IdempotencyClaim, NewJobs};

/// A job a create did not make because its key was claimed already by an
/// identical create: the index in the request and the original job's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    pub index: usize,
    pub job_id: String,
}

/// The jobs of a create that it makes: all but its replays.
fn without_replays(jobs: Vec<Job>, replays: &[Replay]) -> Vec<Job> {
    jobs.into_iter()
        .enumerate()
        .filter(|(index, _)| !replays.iter().any(|replay| replay.index == *index))
        .map(|(_, job)| job)
        .collect()
}

/// Claims a create's keys for its jobs; returns the jobs to insert (all but
/// the replays) and the replays. Fails with Conflict, claiming nothing,
/// when a key is held by a different request.
pub async fn claim<DB>(conn: &mut DB::Connection, new: NewJobs) -> Result<(Vec<Job>, Vec<Replay>)>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'r> (String,): sqlx::FromRow<'r, DB::Row>,
    for<'r> (String, Vec<u8>): sqlx::FromRow<'r, DB::Row>,
{
    let NewJobs { jobs, claims } = new;
    // A create request addresses one space, at one instant.
    let Some((space_id, now)) = jobs
        .first()
        .map(|job| (job.space_id.clone(), job.created_at))
    else {
        return Ok((jobs, Vec::new()));
    };
    if claims.is_empty() {
        return Ok((jobs, Vec::new()));
    }
    // Expired keys of this space go first: they are free again.
    sqlx::query::<DB>("DELETE FROM idempotency_keys WHERE space_id = $1 AND expires_at <= $2")
        .bind(space_id.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    let job_ids: Vec<&str> = jobs.iter().map(|job| job.id.as_str()).collect();
    sqlx::query::<DB>("SAVEPOINT idempotency")
        .execute(&mut *conn)
        .await?;
    let claimed = claim_each::<DB>(conn, &space_id, &claims, &job_ids, now).await;
    if matches!(claimed, Err(Error::Conflict(_))) {
        sqlx::query::<DB>("ROLLBACK TO SAVEPOINT idempotency")
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query::<DB>("RELEASE SAVEPOINT idempotency")
        .execute(&mut *conn)
        .await?;
    let replays = claimed?;
    if replays.is_empty() {
        return Ok((jobs, replays));
    }
    Ok((without_replays(jobs, &replays), replays))
}

/// Claims each key in turn; a key held by a different request stops it
/// with Conflict (the caller undoes the claims before it).
async fn claim_each<DB>(
    conn: &mut DB::Connection,
    space_id: &str,
    claims: &[IdempotencyClaim],
    job_ids: &[&str],
    now: UnixMillis,
) -> Result<Vec<Replay>>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'r> (String,): sqlx::FromRow<'r, DB::Row>,
    for<'r> (String, Vec<u8>): sqlx::FromRow<'r, DB::Row>,
{
    let mut replays = Vec::new();
    for claim in claims {
        let job_id = job_ids
            .get(claim.index)
            .ok_or_else(|| Error::internal("an idempotency claim names no job"))?;
        // Ours if the key is free (absent, or expired and taken over).
        let owned: Option<(String,)> = sqlx::query_as::<DB, (String,)>(
            "INSERT INTO idempotency_keys (space_id, key, job_id, request_hash, expires_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (space_id, key) DO UPDATE SET job_id = excluded.job_id, \
             request_hash = excluded.request_hash, expires_at = excluded.expires_at \
             WHERE idempotency_keys.expires_at <= $6 RETURNING job_id",
        )
        .bind(space_id)
        .bind(claim.key.as_str())
        .bind(*job_id)
        .bind(&claim.request_hash[..])
        .bind(claim.expires_at)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        if owned.is_some() {
            continue;
        }
        let (original, request_hash): (String, Vec<u8>) = sqlx::query_as::<DB, (String, Vec<u8>)>(
            "SELECT job_id, request_hash FROM idempotency_keys WHERE space_id = $1 AND key = $2",
        )
        .bind(space_id)
        .bind(claim.key.as_str())
        .fetch_one(&mut *conn)
        .await?;
        if request_hash != claim.request_hash {
            return Err(Error::Conflict(format!(
                "idempotency key {:?} was already used for a different job (job {original})",
                claim.key
            )));
        }
        replays.push(Replay {
            index: claim.index,
            job_id: original,
        });
    }
    Ok(replays)
}
