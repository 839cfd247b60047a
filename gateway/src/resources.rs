//! The REST API's response bodies as types, each converted once from the
//! core's messages. The OpenAPI document (`openapi.rs`) is generated from
//! these same types, so what the document promises and what a handler
//! writes cannot drift apart. Field names follow the emit.run
//! documentation; fields beyond the reference are left out when unset, so
//! a client that uses none of them sees the reference's shape.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat};
use emit_proto::v1 as pb;
use schemars::JsonSchema;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::ApiError;
use crate::error::required;

/// JSON a client sent, which the core stored as text: written back out as
/// it is, checked but never rebuilt into a tree. Text that is not JSON
/// (storage corruption) is shown as a string rather than dropped.
pub enum Embedded {
    Null,
    Json(Box<RawValue>),
    Text(String),
}

impl Embedded {
    pub fn of(text: Option<String>) -> Self {
        match text {
            None => Self::Null,
            Some(text) => match serde_json::from_str::<&RawValue>(&text) {
                Ok(raw) => Self::Json(raw.to_owned()),
                Err(_) => Self::Text(text),
            },
        }
    }
}

impl Serialize for Embedded {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Null => serializer.serialize_none(),
            Self::Json(raw) => raw.serialize(serializer),
            Self::Text(text) => serializer.serialize_str(text),
        }
    }
}

fixed_schema!(Embedded, "Embedded", { "description": "Any JSON value, as the client sent it." });

/// An instant as RFC 3339 with milliseconds in UTC, or null when unset.
pub struct Time(pub Option<prost_types::Timestamp>);

impl Time {
    pub fn text(&self) -> Option<String> {
        self.0
            .and_then(|at| DateTime::from_timestamp(at.seconds, at.nanos.max(0) as u32))
            .map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.text().serialize(serializer)
    }
}

fixed_schema!(Time, "Time", { "type": ["string", "null"], "format": "date-time" });

/// A job's status as REST names it.
#[derive(Serialize, JsonSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Scheduled,
    Pending,
    Delivered,
    Running,
    Completed,
    Dead,
    Killed,
}

impl Status {
    /// The core always sets a status; a reply without one is its bug, and
    /// answering with a made-up status would hide it.
    pub fn of(status: i32) -> Result<Self, ApiError> {
        Ok(match pb::JobStatus::try_from(status).unwrap_or_default() {
            pb::JobStatus::Scheduled => Self::Scheduled,
            pb::JobStatus::Pending => Self::Pending,
            pb::JobStatus::Delivered => Self::Delivered,
            pb::JobStatus::Running => Self::Running,
            pb::JobStatus::Completed => Self::Completed,
            pb::JobStatus::Dead => Self::Dead,
            pb::JobStatus::Killed => Self::Killed,
            pb::JobStatus::Unspecified => {
                return Err(ApiError::core_fault("job status"));
            }
        })
    }
}

/// A job as the list endpoint shows it: the reference's fields, plus
/// `priority` when the job has one, `scheduleId`/`fireTime` when a schedule
/// made it, its concurrency key and limit, and why it waits, when they
/// apply.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    pub space_id: String,
    pub name: String,
    pub payload: Embedded,
    pub status: Status,
    pub max_retries: u32,
    pub attempt_number: u32,
    pub timeout_seconds: u32,
    pub delivered_at: Time,
    pub started_at: Time,
    pub completed_at: Time,
    pub result: Embedded,
    pub created_at: Time,
    pub updated_at: Time,
    /// Dispatch priority, -1000 to 1000; left out when 0 (in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fire_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// Why a ready job is not handed out: `paused`, `concurrency_limit` or
    /// `rate_limit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,
    /// The latest progress: always on one job, on a list with
    /// `include=progress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Embedded>,
}

impl Job {
    /// The list's shape; `progress` only when asked for.
    pub fn summary(job: pb::Job, with_progress: bool) -> Result<Self, ApiError> {
        Ok(Self {
            status: Status::of(job.status)?,
            payload: Embedded::of(job.payload_json),
            result: Embedded::of(job.result_json),
            progress: with_progress.then(|| Embedded::of(job.progress_json)),
            priority: (job.priority != 0).then_some(job.priority),
            fire_time: job.schedule_id.is_some().then_some(Time(job.fire_time)),
            schedule_id: job.schedule_id,
            id: job.id,
            space_id: job.space_id,
            name: job.name,
            max_retries: job.max_retries,
            attempt_number: job.attempt_number,
            timeout_seconds: job.timeout_seconds,
            delivered_at: Time(job.delivered_at),
            started_at: Time(job.started_at),
            completed_at: Time(job.completed_at),
            created_at: Time(job.created_at),
            updated_at: Time(job.updated_at),
            concurrency_key: job.concurrency_key,
            concurrency_limit: job.concurrency_limit,
            waiting_reason: job.waiting_reason,
        })
    }
}

/// A job with everything the core knows of it (get job, operator and
/// worker calls): the summary with `priority` and `progress` always, and
/// the fields below.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: Job,
    pub scheduled_for: Time,
    pub checkpoint: Embedded,
    pub error: Option<String>,
    pub kill_reason: Option<String>,
    pub lease_id: Option<String>,
    pub callback_url: Option<String>,
    pub retry_backoff: Option<RetryBackoff>,
}

impl JobDetail {
    pub fn of(mut job: pb::Job) -> Result<Self, ApiError> {
        // The detail's own fields are moved out; the summary takes the rest.
        let priority = job.priority;
        let scheduled_for = Time(job.scheduled_for);
        let checkpoint = Embedded::of(job.checkpoint_json.take());
        let error = job.last_error.take();
        let kill_reason = job.kill_reason.take();
        let lease_id = job.lease_id.take();
        let callback_url = job.callback_url.take();
        let retry_backoff = job.retry_backoff.map(RetryBackoff::from);
        let mut summary = Job::summary(job, true)?;
        summary.priority = Some(priority);
        Ok(Self {
            job: summary,
            scheduled_for,
            checkpoint,
            error,
            kill_reason,
            lease_id,
            callback_url,
            retry_backoff,
        })
    }

    /// From a reply whose job the core always sets.
    pub fn required(job: Option<pb::Job>) -> Result<Self, ApiError> {
        Self::of(required(job, "job")?)
    }
}

/// `GET /api/v1/jobs/{id}`: the job and its events.
#[derive(Serialize, JsonSchema)]
pub struct JobWithEvents {
    #[serde(flatten)]
    pub job: JobDetail,
    pub events: Vec<Event>,
}

/// `DELETE /api/v1/jobs/{id}`: the job as it was.
#[derive(Serialize, JsonSchema)]
pub struct DeletedJob {
    #[serde(flatten)]
    pub job: JobDetail,
    pub deleted: bool,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBackoff {
    /// `fixed` or `exponential`; left out in a schedule's template when the
    /// template does not set it.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub delay_seconds: u32,
    pub max_delay_seconds: u32,
}

impl From<pb::RetryBackoff> for RetryBackoff {
    fn from(backoff: pb::RetryBackoff) -> Self {
        let kind = pb::BackoffKind::try_from(backoff.kind).unwrap_or_default();
        Self {
            kind: Some(lower_name(kind.as_str_name(), "BACKOFF_KIND_")),
            delay_seconds: backoff.delay_seconds,
            max_delay_seconds: backoff.max_delay_seconds,
        }
    }
}

/// A protobuf enum value's name as REST writes it: `SCHEDULE_CATCH_UP_ALL`
/// with prefix `SCHEDULE_CATCH_UP_` is `all`.
pub fn lower_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

/// One job event: `{jobId, jobName, type, status, data?, timestamp, seq}`,
/// with `previousStatus` on transitions.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub job_id: String,
    pub job_name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Embedded>,
    pub timestamp: Time,
    pub seq: u64,
}

impl Event {
    pub fn of(event: pb::JobEvent) -> Result<Self, ApiError> {
        let previous_status = (event.previous_status != pb::JobStatus::Unspecified as i32)
            .then(|| Status::of(event.previous_status))
            .transpose()?;
        let kind = pb::JobEventType::try_from(event.r#type).unwrap_or_default();
        Ok(Self {
            job_id: event.job_id,
            job_name: event.job_name,
            kind: lower_name(kind.as_str_name(), "JOB_EVENT_TYPE_"),
            status: Status::of(event.status)?,
            previous_status,
            data: event.data_json.map(|text| Embedded::of(Some(text))),
            timestamp: Time(event.timestamp),
            seq: event.seq,
        })
    }
}

/// Jobs per status.
#[derive(Serialize, JsonSchema)]
pub struct Counts {
    pub scheduled: u64,
    pub pending: u64,
    pub delivered: u64,
    pub running: u64,
    pub completed: u64,
    /// Always 0: a failed attempt is retried or dead (the reference's shape).
    pub failed: u64,
    pub dead: u64,
    pub killed: u64,
}

impl From<pb::StatusCounts> for Counts {
    fn from(counts: pb::StatusCounts) -> Self {
        Self {
            scheduled: counts.scheduled,
            pending: counts.pending,
            delivered: counts.delivered,
            running: counts.running,
            completed: counts.completed,
            failed: counts.failed,
            dead: counts.dead,
            killed: counts.killed,
        }
    }
}

/// A create's answer for one job: `{id, spaceId}`, with `replayed: true`
/// only when an idempotency key answered with an earlier job.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedJob {
    pub id: String,
    pub space_id: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// A create answers in the shape it was asked: one job or an array.
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Created {
    One(CreatedJob),
    Many(Vec<CreatedJob>),
}

/// A job handed to a worker; `priority` when the job has one.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub id: String,
    pub name: String,
    pub payload: Embedded,
    pub timeout_seconds: u32,
    pub max_retries: u32,
    pub attempt_number: u32,
    pub created_at: Time,
    pub checkpoint: Embedded,
    pub lease_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

impl From<pb::Delivery> for Delivery {
    fn from(job: pb::Delivery) -> Self {
        Self {
            priority: (job.priority != 0).then_some(job.priority),
            id: job.id,
            name: job.name,
            payload: Embedded::of(job.payload_json),
            timeout_seconds: job.timeout_seconds,
            max_retries: job.max_retries,
            attempt_number: job.attempt_number,
            created_at: Time(job.created_at),
            checkpoint: Embedded::of(job.checkpoint_json),
            lease_id: job.lease_id,
        }
    }
}

/// A poll's answer.
#[derive(Serialize, JsonSchema)]
pub struct Deliveries {
    pub jobs: Vec<Delivery>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub job_id: String,
    pub status: Status,
    pub progress: Embedded,
    pub updated_at: Time,
}

impl Progress {
    pub fn of(progress: pb::GetJobProgressResponse) -> Result<Self, ApiError> {
        Ok(Self {
            status: Status::of(progress.status)?,
            job_id: progress.job_id,
            progress: Embedded::of(progress.progress_json),
            updated_at: Time(progress.updated_at),
        })
    }
}

#[derive(Serialize, JsonSchema)]
pub struct LogLine {
    pub seq: u64,
    pub level: String,
    pub message: String,
    pub timestamp: Time,
}

impl From<pb::StoredLogLine> for LogLine {
    fn from(line: pb::StoredLogLine) -> Self {
        Self {
            seq: line.seq,
            level: line.level,
            message: line.message,
            timestamp: Time(line.timestamp),
        }
    }
}

/// A page of a job's log; `nextBefore` only on a page asked for with
/// `before`.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    pub next_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsAppended {
    pub count: usize,
    pub last_seq: u64,
}

/// A bulk action's outcome.
#[derive(Serialize, JsonSchema)]
pub struct BulkOutcome {
    pub matched: u64,
    pub applied: u64,
    pub skipped: u64,
    pub more: bool,
}

/// A space's flow limits.
#[derive(Serialize, JsonSchema)]
pub struct ConcurrencyLimits {
    /// Leases a concurrency key may hold unless its job names another limit.
    pub default: Option<u32>,
    pub names: HashMap<String, u32>,
    pub rates: HashMap<String, RateLimit>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub limit: u32,
    pub period_seconds: u32,
    pub per_key: bool,
}

impl From<pb::ConcurrencyLimits> for ConcurrencyLimits {
    fn from(limits: pb::ConcurrencyLimits) -> Self {
        let rates = limits.rates.into_iter().map(|(name, rate)| {
            let rate = RateLimit {
                limit: rate.limit,
                period_seconds: rate.period_seconds,
                per_key: rate.per_key,
            };
            (name, rate)
        });
        Self {
            default: limits.default_limit,
            names: limits.names,
            rates: rates.collect(),
        }
    }
}

/// `GET /api/v1/spaces/{id}/concurrency`: limits and what is in use.
#[derive(Serialize, JsonSchema)]
pub struct ConcurrencyUsage {
    pub limits: ConcurrencyLimits,
    pub keys: Vec<KeyLeases>,
    pub rates: Vec<RateUsage>,
}

#[derive(Serialize, JsonSchema)]
pub struct KeyLeases {
    pub key: String,
    pub leases: u32,
}

#[derive(Serialize, JsonSchema)]
pub struct RateUsage {
    pub name: String,
    pub used: u32,
}

impl ConcurrencyUsage {
    pub fn of(usage: pb::GetConcurrencyResponse) -> Result<Self, ApiError> {
        Ok(Self {
            limits: required(usage.limits, "limits")?.into(),
            keys: usage
                .keys
                .into_iter()
                .map(|key| KeyLeases {
                    key: key.key,
                    leases: key.leases,
                })
                .collect(),
            rates: usage
                .rates
                .into_iter()
                .map(|rate| RateUsage {
                    name: rate.name,
                    used: rate.used,
                })
                .collect(),
        })
    }
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Space {
    pub id: String,
    pub name: String,
    pub public_token: Option<String>,
    pub anonymous_progress_streams: bool,
    pub push: Option<PushTarget>,
    pub slack: Option<SlackSettings>,
    pub paused: bool,
    pub paused_names: Vec<String>,
    pub retention: Option<Retention>,
    pub concurrency: Option<ConcurrencyLimits>,
    pub created_at: Time,
}

/// Where push wake-ups go.
#[derive(Serialize, JsonSchema)]
pub struct PushTarget {
    pub url: String,
    pub names: Vec<String>,
    pub headers: HashMap<String, String>,
}

#[derive(Serialize, JsonSchema)]
pub struct SlackSettings {
    pub url: String,
    pub events: Vec<String>,
}

/// Seconds a finished job is kept, per status; 0 keeps it forever.
#[derive(Serialize, JsonSchema)]
pub struct Retention {
    pub completed: u64,
    pub dead: u64,
    pub killed: u64,
}

impl From<pb::Space> for Space {
    fn from(space: pb::Space) -> Self {
        Self {
            id: space.id,
            name: space.name,
            public_token: space.public_token,
            anonymous_progress_streams: space.anonymous_progress_streams,
            push: space.push.map(|push| PushTarget {
                url: push.url,
                names: push.names,
                headers: push.headers,
            }),
            slack: space.slack.map(|slack| SlackSettings {
                url: slack.url,
                events: slack.events,
            }),
            paused: space.paused,
            paused_names: space.paused_names,
            retention: space.retention.map(|retention| Retention {
                completed: retention.completed_seconds,
                dead: retention.dead_seconds,
                killed: retention.killed_seconds,
            }),
            concurrency: space.concurrency.map(ConcurrencyLimits::from),
            created_at: Time(space.created_at),
        }
    }
}

impl Space {
    pub fn required(space: Option<pb::Space>) -> Result<Self, ApiError> {
        required(space, "space").map(Self::from)
    }
}

/// A space's webhook signing secret, shown once.
#[derive(Serialize, JsonSchema)]
pub struct WebhookSecret {
    pub secret: String,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: Time,
}

impl From<pb::Token> for Token {
    fn from(token: pb::Token) -> Self {
        Self {
            id: token.id,
            name: token.name,
            scopes: token.scopes,
            created_at: Time(token.created_at),
        }
    }
}

/// A created token with its key, which is shown only this once.
#[derive(Serialize, JsonSchema)]
pub struct NewToken {
    #[serde(flatten)]
    pub token: Token,
    pub key: String,
}

/// A schedule; its job template shows the fields it sets.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    pub id: String,
    pub space_id: String,
    pub cron: String,
    pub time_zone: String,
    pub job: JobTemplate,
    /// `allow` or `skip`.
    pub overlap: String,
    /// `none`, `one` or `all`.
    pub catch_up: String,
    pub catch_up_limit: u32,
    pub paused: bool,
    pub next_fire_times: Vec<Time>,
    pub last_fire_time: Time,
    pub last_job_id: Option<String>,
    pub created_at: Time,
    pub updated_at: Time,
}

/// The job a schedule makes at each fire: the fields its template sets.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTemplate {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Embedded>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub callback_headers: HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<RetryBackoff>,
}

impl Schedule {
    pub fn of(schedule: pb::Schedule) -> Result<Self, ApiError> {
        let template = required(schedule.job, "schedule.job")?;
        let retry_backoff = template.retry_backoff.map(|backoff| {
            let set = backoff.kind != pb::BackoffKind::Unspecified as i32;
            let mut backoff = RetryBackoff::from(backoff);
            if !set {
                backoff.kind = None;
            }
            backoff
        });
        let job = JobTemplate {
            name: template.name,
            payload: template.payload_json.map(|text| Embedded::of(Some(text))),
            max_retries: template.max_retries,
            timeout_seconds: template.timeout_seconds,
            priority: template.priority,
            concurrency_key: template.concurrency_key,
            concurrency_limit: template.concurrency_limit,
            callback_url: template.callback_url,
            callback_headers: template.callback_headers,
            retry_backoff,
        };
        let overlap = pb::ScheduleOverlap::try_from(schedule.overlap).unwrap_or_default();
        let catch_up = pb::ScheduleCatchUp::try_from(schedule.catch_up).unwrap_or_default();
        Ok(Self {
            id: schedule.id,
            space_id: schedule.space_id,
            cron: schedule.cron,
            time_zone: schedule.time_zone,
            job,
            overlap: lower_name(overlap.as_str_name(), "SCHEDULE_OVERLAP_"),
            catch_up: lower_name(catch_up.as_str_name(), "SCHEDULE_CATCH_UP_"),
            catch_up_limit: schedule.catch_up_limit,
            paused: schedule.paused,
            next_fire_times: schedule
                .next_fire_times
                .into_iter()
                .map(|at| Time(Some(at)))
                .collect(),
            last_fire_time: Time(schedule.last_fire_time),
            last_job_id: schedule.last_job_id,
            created_at: Time(schedule.created_at),
            updated_at: Time(schedule.updated_at),
        })
    }

    pub fn required(schedule: Option<pb::Schedule>) -> Result<Self, ApiError> {
        Self::of(required(schedule, "schedule")?)
    }
}

#[derive(Serialize, JsonSchema)]
pub struct DeletedSchedule {
    pub id: String,
    pub deleted: bool,
}

/// `GET /healthz`.
#[derive(Serialize, JsonSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// Every error: `{"error": "..."}`.
#[derive(Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: String,
}

// ---- WebSocket messages ---------------------------------------------------

/// A job stream's message: `{jobId, jobName, type, status, data?,
/// timestamp}`; `init` carries the latest `progress` instead of `data`, and
/// `log` carries the line as its `data`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStreamMessage {
    pub job_id: String,
    pub job_name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Embedded>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<StreamData>,
    pub timestamp: Time,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum StreamData {
    Json(Embedded),
    Log(LogLine),
}

impl JobStreamMessage {
    pub fn of(message: pb::watch_job_response::Message) -> Result<Self, ApiError> {
        use pb::watch_job_response::Message;
        Ok(match message {
            Message::Init(init) => Self {
                status: Status::of(init.status)?,
                job_id: init.job_id,
                job_name: init.job_name,
                kind: "init".into(),
                progress: init.progress_json.map(|text| Embedded::of(Some(text))),
                data: None,
                timestamp: Time(init.timestamp),
            },
            Message::Event(event) => {
                let event = Event::of(event)?;
                Self {
                    job_id: event.job_id,
                    job_name: event.job_name,
                    kind: event.kind,
                    status: event.status,
                    progress: None,
                    data: event.data.map(StreamData::Json),
                    timestamp: event.timestamp,
                }
            }
            Message::Log(entry) => {
                let line = entry.line.map(LogLine::from);
                let logged_at = line.as_ref().and_then(|line| line.timestamp.0);
                Self {
                    status: Status::of(entry.status)?,
                    job_id: entry.job_id,
                    job_name: entry.job_name,
                    kind: "log".into(),
                    progress: None,
                    data: line.map(StreamData::Log),
                    timestamp: Time(
                        logged_at.or_else(|| Some(std::time::SystemTime::now().into())),
                    ),
                }
            }
        })
    }

    pub fn text(message: pb::watch_job_response::Message) -> Result<String, ApiError> {
        to_text(&Self::of(message)?)
    }
}

/// A space stream's message: `connected`, a space event (pause, resume), or
/// a job event with `counts` when they changed.
#[derive(Serialize)]
#[serde(untagged)]
pub enum SpaceStreamMessage {
    Connected(StreamConnected),
    Space(SpaceEvent),
    Job {
        #[serde(flatten)]
        event: Event,
        #[serde(skip_serializing_if = "Option::is_none")]
        counts: Option<Counts>,
    },
}

/// `jobName` and `status` are null (no job): the reference's own snippets
/// read both from every message of the stream.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamConnected {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub job_name: Option<String>,
    pub status: Option<Status>,
    pub space_id: String,
    pub seq: u64,
    pub stream_instance_id: String,
    pub missed: bool,
    pub counts: Counts,
    pub timestamp: Time,
}

/// The space's own event: no job and no status; `jobName` and `data.name`
/// are the paused name, null for the whole space.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpaceEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub job_id: Option<String>,
    pub job_name: Option<String>,
    pub status: Option<Status>,
    pub space_id: String,
    pub data: PausedName,
    pub seq: u64,
    pub timestamp: Time,
}

#[derive(Serialize)]
pub struct PausedName {
    pub name: Option<String>,
}

impl SpaceStreamMessage {
    /// A `connected` without the counts the core always sends is an error.
    pub fn of(message: pb::watch_space_response::Message) -> Result<Self, ApiError> {
        use pb::watch_space_response::Message;
        Ok(match message {
            Message::Connected(connected) => Self::Connected(StreamConnected {
                kind: "connected",
                job_name: None,
                status: None,
                counts: required(connected.counts, "connected.counts")?.into(),
                space_id: connected.space_id,
                seq: connected.seq,
                stream_instance_id: connected.stream_instance_id,
                missed: connected.missed,
                timestamp: Time(connected.timestamp),
            }),
            Message::SpaceEvent(event) => {
                let kind = pb::SpaceEventType::try_from(event.r#type).unwrap_or_default();
                Self::Space(SpaceEvent {
                    kind: lower_name(kind.as_str_name(), "SPACE_EVENT_TYPE_"),
                    job_id: None,
                    job_name: event.name.clone(),
                    status: None,
                    space_id: event.space_id,
                    data: PausedName { name: event.name },
                    seq: event.seq,
                    timestamp: Time(event.timestamp),
                })
            }
            Message::Event(mut event) => {
                let counts = event.counts.take().map(Counts::from);
                Self::Job {
                    event: Event::of(event)?,
                    counts,
                }
            }
        })
    }

    pub fn text(message: pb::watch_space_response::Message) -> Result<String, ApiError> {
        to_text(&Self::of(message)?)
    }
}

/// Serialising these types cannot fail (string keys, no fallible
/// `Serialize`); the error path exists only because the signature has one.
fn to_text(message: &impl Serialize) -> Result<String, ApiError> {
    serde_json::to_string(message).map_err(|_| ApiError::core_fault("unserialisable message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_space_stream_connected_without_counts_is_an_error_not_zero_counts() {
        use pb::watch_space_response::Message;
        let connected = |counts| {
            Message::Connected(pb::SpaceStreamConnected {
                space_id: "s".into(),
                seq: 3,
                stream_instance_id: "i".into(),
                missed: false,
                counts,
                timestamp: None,
            })
        };
        let counts = pb::StatusCounts {
            pending: 2,
            ..Default::default()
        };
        let text = SpaceStreamMessage::text(connected(Some(counts))).unwrap();
        let message: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(message["counts"]["pending"], 2);
        assert_eq!(message["jobName"], serde_json::Value::Null);
        assert!(SpaceStreamMessage::of(connected(None)).is_err());
    }

    #[test]
    fn embedded_json_is_written_as_sent_and_corrupt_text_as_a_string() {
        let job = |payload: &str| pb::Delivery {
            payload_json: Some(payload.into()),
            ..Default::default()
        };
        let text = serde_json::to_string(&Delivery::from(job(r#"{"b": 1.50, "a": [1,2]}"#)));
        // Key order, spacing and the number's spelling are the client's own.
        assert!(
            text.unwrap()
                .contains(r#""payload":{"b": 1.50, "a": [1,2]}"#)
        );
        let text = serde_json::to_string(&Delivery::from(job("{not json")));
        assert!(text.unwrap().contains(r#""payload":"{not json""#));
    }
}
