//! Mapping between rows and domain types.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::error::{Error, Result};
use crate::job::{
    BackoffKind, Callback, EventKind, Job, JobEvent, JobState, JobStatus, LogLevel, RetryBackoff,
    StatusCounts, StoredLogLine,
};
use crate::store::{OutboxEntry, PushTarget, SpaceRecord, TokenRecord};

fn corrupt(what: &str) -> Error {
    Error::internal(format!("corrupt row: {what}"))
}

fn status(text: &str) -> Result<JobStatus> {
    JobStatus::parse(text).ok_or_else(|| corrupt("status"))
}

fn u32_column(row: &SqliteRow, column: &str) -> Result<u32> {
    let value: i64 = row.try_get(column)?;
    u32::try_from(value).map_err(|_| corrupt(column))
}

pub fn job(row: &SqliteRow) -> Result<Job> {
    let status = status(row.try_get("status")?)?;
    let state = JobState::from_parts(status, row.try_get("due_at")?, row.try_get("lease_id")?)
        .ok_or_else(|| corrupt("job state"))?;
    let callback = match row.try_get::<Option<String>, _>("callback_url")? {
        Some(url) => {
            let headers: Option<String> = row.try_get("callback_headers")?;
            let headers = match headers {
                Some(text) => {
                    serde_json::from_str(&text).map_err(|_| corrupt("callback_headers"))?
                }
                None => Vec::new(),
            };
            Some(Callback { url, headers })
        }
        None => None,
    };
    let retry_backoff = match row.try_get::<Option<String>, _>("backoff_kind")? {
        Some(kind) => Some(RetryBackoff {
            kind: BackoffKind::parse(&kind).ok_or_else(|| corrupt("backoff_kind"))?,
            delay_seconds: u32_column(row, "backoff_delay")?,
            max_delay_seconds: u32_column(row, "backoff_max")?,
        }),
        None => None,
    };
    Ok(Job {
        id: row.try_get("id")?,
        space_id: row.try_get("space_id")?,
        name: row.try_get("name")?,
        payload: row.try_get("payload")?,
        state,
        max_retries: u32_column(row, "max_retries")?,
        attempt_number: u32_column(row, "attempt_number")?,
        timeout_seconds: u32_column(row, "timeout_seconds")?,
        scheduled_for: row.try_get("scheduled_for")?,
        delivered_at: row.try_get("delivered_at")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        result: row.try_get("result")?,
        progress: row.try_get("progress")?,
        checkpoint: row.try_get("checkpoint")?,
        last_error: row.try_get("last_error")?,
        kill_reason: row.try_get("kill_reason")?,
        callback,
        retry_backoff,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Expects the event columns plus `job_name`.
pub fn event(row: &SqliteRow) -> Result<JobEvent> {
    let previous: Option<String> = row.try_get("previous_status")?;
    Ok(JobEvent {
        seq: row.try_get("seq")?,
        space_id: row.try_get("space_id")?,
        job_id: row.try_get("job_id")?,
        job_name: row.try_get("job_name")?,
        kind: EventKind::parse(row.try_get("type")?).ok_or_else(|| corrupt("event type"))?,
        status: status(row.try_get("status")?)?,
        previous_status: previous.as_deref().map(status).transpose()?,
        data: row.try_get("data")?,
        at: row.try_get("created_at")?,
        counts: None,
    })
}

pub fn space(row: &SqliteRow) -> Result<SpaceRecord> {
    Ok(SpaceRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        public_token: row.try_get("public_token")?,
        stream_id: row.try_get("stream_id")?,
        anonymous_progress_streams: row.try_get("anonymous_progress_streams")?,
        push: match row.try_get::<Option<String>, _>("push_url")? {
            Some(url) => {
                let list = |column: &str| -> Result<Option<String>> { Ok(row.try_get(column)?) };
                let names = match list("push_names")? {
                    Some(text) => serde_json::from_str(&text).map_err(|_| corrupt("push_names"))?,
                    None => Vec::new(),
                };
                let headers = match list("push_headers")? {
                    Some(text) => {
                        serde_json::from_str(&text).map_err(|_| corrupt("push_headers"))?
                    }
                    None => Vec::new(),
                };
                Some(PushTarget {
                    url,
                    names,
                    headers,
                })
            }
            None => None,
        },
        created_at: row.try_get("created_at")?,
    })
}

/// The `count_*` columns of a space row.
pub fn space_counts(row: &SqliteRow) -> Result<StatusCounts> {
    let mut counts = StatusCounts::default();
    for status in JobStatus::ALL {
        let column = format!("count_{}", status.as_str());
        let count: i64 = row.try_get(column.as_str())?;
        counts.set(status, u64::try_from(count).map_err(|_| corrupt(&column))?);
    }
    Ok(counts)
}

pub fn token(row: &SqliteRow) -> Result<TokenRecord> {
    let scopes: String = row.try_get("scopes")?;
    let hash: Vec<u8> = row.try_get("key_hash")?;
    Ok(TokenRecord {
        id: row.try_get("id")?,
        space_id: row.try_get("space_id")?,
        name: row.try_get("name")?,
        scopes: serde_json::from_str(&scopes).map_err(|_| corrupt("scopes"))?,
        key_hash: hash.try_into().map_err(|_| corrupt("key_hash"))?,
        created_at: row.try_get("created_at")?,
    })
}

pub fn log_line(row: &SqliteRow) -> Result<StoredLogLine> {
    Ok(StoredLogLine {
        seq: row.try_get("seq")?,
        level: LogLevel::parse(row.try_get("level")?).ok_or_else(|| corrupt("log level"))?,
        message: row.try_get("message")?,
        at: row.try_get("created_at")?,
    })
}

pub fn outbox_entry(row: &SqliteRow) -> Result<OutboxEntry> {
    let headers: Option<String> = row.try_get("headers")?;
    Ok(OutboxEntry {
        id: row.try_get("id")?,
        job_id: row.try_get("job_id")?,
        space_id: row.try_get("space_id")?,
        url: row.try_get("url")?,
        headers: match headers {
            Some(text) => serde_json::from_str(&text).map_err(|_| corrupt("outbox headers"))?,
            None => Vec::new(),
        },
        body: row.try_get("body")?,
        attempt: u32_column(row, "attempt")?,
        secret: row.try_get("webhook_secret")?,
    })
}

pub fn callback_headers_json(job: &Job) -> Option<String> {
    job.callback
        .as_ref()
        .filter(|callback| !callback.headers.is_empty())
        .map(|callback| serde_json::to_string(&callback.headers).unwrap_or_default())
}
