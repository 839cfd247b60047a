//! Mapping between rows and domain types, shared by the backends: each
//! backend's row type exposes its columns through `Columns`, so a schema
//! change is mapped once.

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use crate::error::{Error, Result};
use crate::job::{
    BackoffKind, Callback, EventKind, Job, JobEvent, JobState, JobStatus, LogLevel, RetryBackoff,
    ScheduleFire, StatusCounts, StoredLogLine,
};
use crate::retention::RetentionOverrides;
use crate::store::{OutboxEntry, PushTarget, SlackTarget, SpaceRecord, TokenRecord};

/// Typed column access, the little each mapper needs from a row.
pub trait Columns {
    fn text(&self, column: &str) -> Result<String>;
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    fn int(&self, column: &str) -> Result<i64>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>>;
    fn flag(&self, column: &str) -> Result<bool>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>>;
}

macro_rules! columns_for {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, column: &str) -> Result<String> {
                Ok(self.try_get(column)?)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>> {
                Ok(self.try_get(column)?)
            }
            fn int(&self, column: &str) -> Result<i64> {
                Ok(self.try_get(column)?)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>> {
                Ok(self.try_get(column)?)
            }
            fn flag(&self, column: &str) -> Result<bool> {
                Ok(self.try_get(column)?)
            }
            fn bytes(&self, column: &str) -> Result<Vec<u8>> {
                Ok(self.try_get(column)?)
            }
        }
    };
}

columns_for!(SqliteRow);
columns_for!(PgRow);

fn corrupt(what: &str) -> Error {
    Error::internal(format!("corrupt row: {what}"))
}

fn status(text: &str) -> Result<JobStatus> {
    JobStatus::parse(text).ok_or_else(|| corrupt("status"))
}

/// A row's `status` column.
pub fn status_column(row: &impl Columns) -> Result<JobStatus> {
    status(&row.text("status")?)
}

fn u32_column(row: &impl Columns, column: &str) -> Result<u32> {
    let value = row.int(column)?;
    u32::try_from(value).map_err(|_| corrupt(column))
}

pub fn job(row: &impl Columns) -> Result<Job> {
    let status = status(&row.text("status")?)?;
    let state = JobState::from_parts(status, row.opt_int("due_at")?, row.opt_text("lease_id")?)
        .ok_or_else(|| corrupt("job state"))?;
    let callback = match row.opt_text("callback_url")? {
        Some(url) => {
            let headers = row.opt_text("callback_headers")?;
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
    let retry_backoff = match row.opt_text("backoff_kind")? {
        Some(kind) => Some(RetryBackoff {
            kind: BackoffKind::parse(&kind).ok_or_else(|| corrupt("backoff_kind"))?,
            delay_seconds: u32_column(row, "backoff_delay")?,
            max_delay_seconds: u32_column(row, "backoff_max")?,
        }),
        None => None,
    };
    Ok(Job {
        id: row.text("id")?,
        space_id: row.text("space_id")?,
        name: row.text("name")?,
        payload: row.opt_text("payload")?,
        state,
        max_retries: u32_column(row, "max_retries")?,
        attempt_number: u32_column(row, "attempt_number")?,
        timeout_seconds: u32_column(row, "timeout_seconds")?,
        scheduled_for: row.opt_int("scheduled_for")?,
        delivered_at: row.opt_int("delivered_at")?,
        started_at: row.opt_int("started_at")?,
        completed_at: row.opt_int("completed_at")?,
        result: row.opt_text("result")?,
        progress: row.opt_text("progress")?,
        checkpoint: row.opt_text("checkpoint")?,
        last_error: row.opt_text("last_error")?,
        kill_reason: row.opt_text("kill_reason")?,
        callback,
        retry_backoff,
        priority: i32::try_from(row.int("priority")?).map_err(|_| corrupt("priority"))?,
        schedule: match (row.opt_text("schedule_id")?, row.opt_int("fire_time")?) {
            (Some(schedule_id), Some(fire_time)) => Some(ScheduleFire {
                schedule_id,
                fire_time,
            }),
            _ => None,
        },
        concurrency_key: row.opt_text("concurrency_key")?,
        concurrency_limit: row
            .opt_int("concurrency_limit")?
            .map(|limit| u32::try_from(limit).map_err(|_| corrupt("concurrency_limit")))
            .transpose()?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

/// Expects the event columns plus `job_name`.
pub fn event(row: &impl Columns) -> Result<JobEvent> {
    let previous = row.opt_text("previous_status")?;
    Ok(JobEvent {
        seq: row.int("seq")?,
        space_id: row.text("space_id")?,
        job_id: row.text("job_id")?,
        job_name: row.text("job_name")?,
        kind: EventKind::parse(&row.text("type")?).ok_or_else(|| corrupt("event type"))?,
        status: status(&row.text("status")?)?,
        previous_status: previous.as_deref().map(status).transpose()?,
        data: row.opt_text("data")?,
        at: row.int("created_at")?,
        counts: None,
        took_ms: None,
    })
}

pub fn space(row: &impl Columns) -> Result<SpaceRecord> {
    Ok(SpaceRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        public_token: Some(row.text("public_token")?).filter(|key| !key.is_empty()),
        stream_id: row.text("stream_id")?,
        anonymous_progress_streams: row.flag("anonymous_progress_streams")?,
        push: match row.opt_text("push_url")? {
            Some(url) => {
                let list = |column: &str| row.opt_text(column);
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
        slack: match row.opt_text("slack_url")? {
            Some(url) => Some(SlackTarget {
                url,
                events: match row.opt_text("slack_events")? {
                    Some(text) => {
                        serde_json::from_str(&text).map_err(|_| corrupt("slack_events"))?
                    }
                    None => Vec::new(),
                },
            }),
            None => None,
        },
        retention: match row.opt_text("retention")? {
            Some(text) => serde_json::from_str(&text).map_err(|_| corrupt("retention"))?,
            None => RetentionOverrides::default(),
        },
        concurrency: match row.opt_text("concurrency")? {
            Some(text) => serde_json::from_str(&text).map_err(|_| corrupt("concurrency"))?,
            None => Default::default(),
        },
        created_at: row.int("created_at")?,
    })
}

/// A space's Slack columns: URL and events, NULL when off.
pub fn slack_columns(slack: Option<&SlackTarget>) -> Result<(Option<String>, Option<String>)> {
    let Some(target) = slack else {
        return Ok((None, None));
    };
    Ok((
        Some(target.url.clone()),
        Some(serde_json::to_string(&target.events).map_err(Error::internal)?),
    ))
}

/// A space's retention overrides as stored: NULL when it has none.
pub fn retention_column(overrides: &RetentionOverrides) -> Result<Option<String>> {
    if overrides.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(overrides)
        .map(Some)
        .map_err(Error::internal)
}

/// The `count_*` columns of a space row.
pub fn space_counts(row: &impl Columns) -> Result<StatusCounts> {
    let mut counts = StatusCounts::default();
    for status in JobStatus::ALL {
        let column = format!("count_{}", status.as_str());
        let count = row.int(&column)?;
        counts.set(status, u64::try_from(count).map_err(|_| corrupt(&column))?);
    }
    Ok(counts)
}

pub fn token(row: &impl Columns) -> Result<TokenRecord> {
    let scopes = row.text("scopes")?;
    let hash = row.bytes("key_hash")?;
    Ok(TokenRecord {
        id: row.text("id")?,
        space_id: row.text("space_id")?,
        name: row.text("name")?,
        scopes: serde_json::from_str(&scopes).map_err(|_| corrupt("scopes"))?,
        key_hash: hash.try_into().map_err(|_| corrupt("key_hash"))?,
        created_at: row.int("created_at")?,
    })
}

pub fn log_line(row: &impl Columns) -> Result<StoredLogLine> {
    Ok(StoredLogLine {
        seq: row.int("seq")?,
        level: LogLevel::parse(&row.text("level")?).ok_or_else(|| corrupt("log level"))?,
        message: row.text("message")?,
        at: row.int("created_at")?,
    })
}

pub fn outbox_entry(row: &impl Columns) -> Result<OutboxEntry> {
    let headers = row.opt_text("headers")?;
    Ok(OutboxEntry {
        id: row.int("id")?,
        job_id: row.text("job_id")?,
        space_id: row.text("space_id")?,
        url: row.text("url")?,
        headers: match headers {
            Some(text) => serde_json::from_str(&text).map_err(|_| corrupt("outbox headers"))?,
            None => Vec::new(),
        },
        body: row.text("body")?,
        attempt: u32_column(row, "attempt")?,
        secret: row.opt_text("webhook_secret")?,
    })
}

pub fn callback_headers_json(job: &Job) -> Option<String> {
    job.callback
        .as_ref()
        .filter(|callback| !callback.headers.is_empty())
        .map(|callback| serde_json::to_string(&callback.headers).unwrap_or_default())
}

/// The `push_url`, `push_names` and `push_headers` columns of a push target.
pub fn push_columns(
    push: Option<&PushTarget>,
) -> Result<(Option<String>, Option<String>, Option<String>)> {
    let Some(target) = push else {
        return Ok((None, None, None));
    };
    Ok((
        Some(target.url.clone()),
        Some(serde_json::to_string(&target.names).map_err(Error::internal)?),
        Some(serde_json::to_string(&target.headers).map_err(Error::internal)?),
    ))
}

/// A space's counts as stored with an event: a JSON array in
/// `JobStatus::ALL` order.
pub fn counts_to_json(counts: &StatusCounts) -> String {
    let values: Vec<u64> = JobStatus::ALL
        .iter()
        .map(|status| counts.get(*status))
        .collect();
    serde_json::to_string(&values).unwrap_or_default()
}

pub fn counts_from_json(text: &str) -> Result<StatusCounts> {
    let values: Vec<u64> = serde_json::from_str(text).map_err(|_| corrupt("counts"))?;
    if values.len() != JobStatus::ALL.len() {
        return Err(corrupt("counts"));
    }
    let mut counts = StatusCounts::default();
    for (status, value) in JobStatus::ALL.into_iter().zip(values) {
        counts.set(status, value);
    }
    Ok(counts)
}

/// A LIKE pattern (with `ESCAPE '\\'`) matching `text` anywhere.
pub fn like_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// A `job_events` row as written: a job's event, or a space's own, stored
/// with an empty job id and status (it belongs to no job).
pub struct EventRow<'a> {
    pub space_id: &'a str,
    pub seq: i64,
    pub job_id: &'a str,
    pub kind: &'static str,
    pub status: &'static str,
    pub previous_status: Option<&'static str>,
    pub data: Option<std::borrow::Cow<'a, str>>,
    pub counts: Option<crate::job::StatusCounts>,
    pub at: i64,
}

/// The rows of what a commit published (log lines are stored elsewhere).
pub fn event_rows(published: &[crate::job::LiveEvent]) -> Vec<EventRow<'_>> {
    use crate::job::LiveEvent;
    published
        .iter()
        .filter_map(|live| match live {
            LiveEvent::Job(event) => Some(EventRow {
                space_id: &event.space_id,
                seq: event.seq,
                job_id: &event.job_id,
                kind: event.kind.as_str(),
                status: event.status.as_str(),
                previous_status: event.previous_status.map(JobStatus::as_str),
                data: event.data.as_deref().map(std::borrow::Cow::Borrowed),
                counts: event.counts,
                at: event.at,
            }),
            LiveEvent::Space(event) => Some(EventRow {
                space_id: &event.space_id,
                seq: event.seq,
                job_id: "",
                kind: event.kind.as_str(),
                status: "",
                previous_status: None,
                data: Some(std::borrow::Cow::Owned(event.data())),
                counts: None,
                at: event.at,
            }),
            LiveEvent::Log(_) => None,
        })
        .collect()
}

/// A stored event of a space's sequence: a job's (its row joined for
/// `job_name`), or the space's own (empty `job_id`, `{"name"}` in `data`).
pub fn live_event(row: &impl Columns) -> Result<crate::job::LiveEvent> {
    use crate::job::{LiveEvent, SpaceEvent, SpaceEventKind};
    if !row.text("job_id")?.is_empty() {
        return Ok(LiveEvent::Job(std::sync::Arc::new(event(row)?)));
    }
    let name = row
        .opt_text("data")?
        .and_then(|data| serde_json::from_str::<serde_json::Value>(&data).ok())
        .and_then(|data| data["name"].as_str().map(str::to_owned));
    Ok(LiveEvent::Space(std::sync::Arc::new(SpaceEvent {
        seq: row.int("seq")?,
        space_id: row.text("space_id")?,
        kind: SpaceEventKind::parse(&row.text("type")?).ok_or_else(|| corrupt("event type"))?,
        name,
        at: row.int("created_at")?,
    })))
}

/// The events of a space's sequence with their job's name: a job's events
/// while the job exists, and the space's own (no job).
pub const SPACE_EVENTS: &str = "SELECT e.*, COALESCE(j.name, '') AS job_name \
     FROM job_events e LEFT JOIN jobs j ON j.id = e.job_id \
     WHERE (j.id IS NOT NULL OR e.job_id = '')";

/// The statuses whose states carry a timer (`JobState::timer_at`): the
/// condition of the partial index `jobs_timers`, which the timer scans
/// repeat word for word (SQLite uses a partial index only then). ORs, not
/// an IN list: SQLite fills a temporary b-tree with a list of three for
/// every row written (see migration 0015). PostgreSQL's indexes keep the
/// list, which it proves these ORs imply.
pub const TIMED: &str = "(status = 'scheduled' OR status = 'delivered' OR status = 'running')";

/// The finished statuses: the condition of the partial index
/// `jobs_finished`, written as `TIMED` is and for the same reasons.
pub const FINISHED: &str = "(status = 'completed' OR status = 'dead' OR status = 'killed')";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobState;

    #[test]
    fn the_conditions_name_the_timed_and_the_finished_statuses() {
        let states = [
            JobState::Scheduled { run_at: 1 },
            JobState::Pending { available_at: 1 },
            JobState::Delivered {
                lease: "l".into(),
                ack_deadline: 1,
            },
            JobState::Running {
                lease: "l".into(),
                deadline: 1,
            },
            JobState::Completed,
            JobState::Dead,
            JobState::Killed,
        ];
        for state in states {
            let named = |condition: &str| {
                condition.contains(&format!("status = '{}'", state.status().as_str()))
            };
            assert_eq!(named(TIMED), state.timer_at().is_some(), "{state:?}");
            assert_eq!(named(FINISHED), state.status().is_terminal(), "{state:?}");
        }
    }
}
