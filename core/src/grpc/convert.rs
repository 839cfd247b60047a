//! Proto <-> domain conversions, in one place.

use emit_proto::v1 as pb;

use crate::clock::{from_timestamp, to_timestamp};
use crate::concurrency::{ConcurrencyLimits, RateLimit};
use crate::error::Error;
use crate::job::machine::Fence;
use crate::job::spec::{BackoffInput, JobInput};
use crate::job::{
    BackoffKind, EventKind, Job, JobEvent, JobStatus, SpaceEventKind, StatusCounts, StoredLogLine,
};
use crate::realtime::{JobStreamItem, SpaceStreamItem, Visibility};
use crate::store::{SpaceRecord, TokenRecord};

pub fn status_to_proto(status: JobStatus) -> pb::JobStatus {
    match status {
        JobStatus::Scheduled => pb::JobStatus::Scheduled,
        JobStatus::Pending => pb::JobStatus::Pending,
        JobStatus::Delivered => pb::JobStatus::Delivered,
        JobStatus::Running => pb::JobStatus::Running,
        JobStatus::Completed => pb::JobStatus::Completed,
        JobStatus::Dead => pb::JobStatus::Dead,
        JobStatus::Killed => pb::JobStatus::Killed,
    }
}

/// Unspecified (or unknown) means "no filter".
/// A status filter: unspecified means none; a number no status has is refused.
pub fn status_from_proto(value: i32) -> Result<Option<JobStatus>, Error> {
    let status = pb::JobStatus::try_from(value)
        .map_err(|_| Error::invalid(format!("status {value} is not a job status")))?;
    Ok(match status {
        pb::JobStatus::Unspecified => None,
        pb::JobStatus::Scheduled => Some(JobStatus::Scheduled),
        pb::JobStatus::Pending => Some(JobStatus::Pending),
        pb::JobStatus::Delivered => Some(JobStatus::Delivered),
        pb::JobStatus::Running => Some(JobStatus::Running),
        pb::JobStatus::Completed => Some(JobStatus::Completed),
        pb::JobStatus::Dead => Some(JobStatus::Dead),
        pb::JobStatus::Killed => Some(JobStatus::Killed),
    })
}

fn event_kind_to_proto(kind: EventKind) -> pb::JobEventType {
    match kind {
        EventKind::Created => pb::JobEventType::Created,
        EventKind::Ready => pb::JobEventType::Ready,
        EventKind::Delivered => pb::JobEventType::Delivered,
        EventKind::Acked => pb::JobEventType::Acked,
        EventKind::Progress => pb::JobEventType::Progress,
        EventKind::Checkpoint => pb::JobEventType::Checkpoint,
        EventKind::Event => pb::JobEventType::Event,
        EventKind::Log => pb::JobEventType::Log,
        EventKind::Completed => pb::JobEventType::Completed,
        EventKind::Retried => pb::JobEventType::Retried,
        EventKind::Dead => pb::JobEventType::Dead,
        EventKind::DeliveryTimeout => pb::JobEventType::DeliveryTimeout,
        EventKind::Killed => pb::JobEventType::Killed,
        EventKind::CallbackSent => pb::JobEventType::CallbackSent,
        EventKind::CallbackFailed => pb::JobEventType::CallbackFailed,
        EventKind::Released => pb::JobEventType::Released,
    }
}

impl From<Job> for pb::Job {
    fn from(job: Job) -> Self {
        Self {
            status: status_to_proto(job.status()) as i32,
            lease_id: job.state.lease().map(str::to_owned),
            id: job.id,
            space_id: job.space_id,
            name: job.name,
            payload_json: job.payload,
            max_retries: job.max_retries,
            attempt_number: job.attempt_number,
            timeout_seconds: job.timeout_seconds,
            delivered_at: job.delivered_at.map(to_timestamp),
            started_at: job.started_at.map(to_timestamp),
            completed_at: job.completed_at.map(to_timestamp),
            result_json: job.result,
            created_at: Some(to_timestamp(job.created_at)),
            updated_at: Some(to_timestamp(job.updated_at)),
            scheduled_for: job.scheduled_for.map(to_timestamp),
            progress_json: job.progress,
            checkpoint_json: job.checkpoint,
            last_error: job.last_error,
            callback_url: job.callback.map(|callback| callback.url),
            retry_backoff: job.retry_backoff.map(|backoff| pb::RetryBackoff {
                kind: match backoff.kind {
                    BackoffKind::Fixed => pb::BackoffKind::Fixed,
                    BackoffKind::Exponential => pb::BackoffKind::Exponential,
                } as i32,
                delay_seconds: backoff.delay_seconds,
                max_delay_seconds: backoff.max_delay_seconds,
            }),
            kill_reason: job.kill_reason,
            priority: job.priority,
            fire_time: job
                .schedule
                .as_ref()
                .map(|fire| to_timestamp(fire.fire_time)),
            schedule_id: job.schedule.map(|fire| fire.schedule_id),
            concurrency_key: job.concurrency_key,
            concurrency_limit: job.concurrency_limit,
            waiting_reason: None,
        }
    }
}

pub fn delivery(job: Job) -> pb::Delivery {
    pb::Delivery {
        lease_id: job.state.lease().unwrap_or_default().to_owned(),
        id: job.id,
        name: job.name,
        payload_json: job.payload,
        timeout_seconds: job.timeout_seconds,
        max_retries: job.max_retries,
        attempt_number: job.attempt_number,
        created_at: Some(to_timestamp(job.created_at)),
        delivered_at: job.delivered_at.map(to_timestamp),
        checkpoint_json: job.checkpoint,
        priority: job.priority,
    }
}

impl From<JobEvent> for pb::JobEvent {
    fn from(event: JobEvent) -> Self {
        (&event).into()
    }
}

impl From<&JobEvent> for pb::JobEvent {
    fn from(event: &JobEvent) -> Self {
        Self {
            job_id: event.job_id.clone(),
            job_name: event.job_name.clone(),
            space_id: event.space_id.clone(),
            r#type: event_kind_to_proto(event.kind) as i32,
            status: status_to_proto(event.status) as i32,
            previous_status: event
                .previous_status
                .map_or(pb::JobStatus::Unspecified, status_to_proto)
                as i32,
            data_json: event.data.clone(),
            timestamp: Some(to_timestamp(event.at)),
            seq: event.seq as u64,
            counts: event.counts.map(Into::into),
        }
    }
}

impl From<StatusCounts> for pb::StatusCounts {
    fn from(counts: StatusCounts) -> Self {
        Self {
            scheduled: counts.get(JobStatus::Scheduled),
            pending: counts.get(JobStatus::Pending),
            delivered: counts.get(JobStatus::Delivered),
            running: counts.get(JobStatus::Running),
            completed: counts.get(JobStatus::Completed),
            failed: 0,
            dead: counts.get(JobStatus::Dead),
            killed: counts.get(JobStatus::Killed),
        }
    }
}

impl From<JobStreamItem> for pb::WatchJobResponse {
    fn from(item: JobStreamItem) -> Self {
        use pb::watch_job_response::Message;
        let message = match item {
            JobStreamItem::Init(init) => Message::Init(pb::JobSnapshot {
                job_id: init.job_id,
                job_name: init.job_name,
                space_id: init.space_id,
                status: status_to_proto(init.status) as i32,
                progress_json: init.progress,
                timestamp: Some(to_timestamp(init.at)),
                seq: u64::try_from(init.seq).unwrap_or_default(),
                visibility: match init.visibility {
                    Visibility::Full => pb::WatchVisibility::Full,
                    Visibility::ProgressOnly => pb::WatchVisibility::ProgressOnly,
                } as i32,
            }),
            JobStreamItem::Event(event) => Message::Event((&*event).into()),
            JobStreamItem::Log { entry, show_line } => Message::Log(pb::JobLogEntry {
                job_id: entry.job_id.clone(),
                job_name: entry.job_name.clone(),
                space_id: entry.space_id.clone(),
                status: status_to_proto(entry.status) as i32,
                line: show_line.then(|| entry.line.clone().into()),
            }),
        };
        Self {
            message: Some(message),
        }
    }
}

impl From<SpaceStreamItem> for pb::WatchSpaceResponse {
    fn from(item: SpaceStreamItem) -> Self {
        use pb::watch_space_response::Message;
        let message = match item {
            SpaceStreamItem::Connected(connected) => Message::Connected(pb::SpaceStreamConnected {
                space_id: connected.space_id,
                seq: connected.seq as u64,
                stream_instance_id: connected.stream_id,
                missed: connected.missed,
                counts: Some(connected.counts.into()),
                timestamp: Some(to_timestamp(connected.at)),
            }),
            SpaceStreamItem::Event(event) => Message::Event((&*event).into()),
            SpaceStreamItem::Space(event) => Message::SpaceEvent(pb::SpaceEvent {
                space_id: event.space_id.clone(),
                r#type: match event.kind {
                    SpaceEventKind::Paused => pb::SpaceEventType::Paused,
                    SpaceEventKind::Resumed => pb::SpaceEventType::Resumed,
                } as i32,
                name: event.name.clone(),
                seq: event.seq as u64,
                timestamp: Some(to_timestamp(event.at)),
            }),
        };
        Self {
            message: Some(message),
        }
    }
}

impl From<StoredLogLine> for pb::StoredLogLine {
    fn from(line: StoredLogLine) -> Self {
        Self {
            seq: line.seq as u64,
            level: line.level.as_str().to_owned(),
            message: line.message,
            timestamp: Some(to_timestamp(line.at)),
        }
    }
}

impl From<pb::JobSpec> for JobInput {
    fn from(spec: pb::JobSpec) -> Self {
        let mut callback_headers: Vec<(String, String)> =
            spec.callback_headers.into_iter().collect();
        callback_headers.sort();
        Self {
            name: spec.name,
            payload: spec.payload_json,
            max_retries: spec.max_retries,
            timeout_seconds: spec.timeout_seconds,
            scheduled_for: spec.scheduled_for.as_ref().map(from_timestamp),
            callback_url: spec.callback_url,
            callback_headers,
            retry_backoff: spec.retry_backoff.map(|backoff| BackoffInput {
                kind: match pb::BackoffKind::try_from(backoff.kind) {
                    Ok(pb::BackoffKind::Fixed) => Some(BackoffKind::Fixed),
                    Ok(pb::BackoffKind::Exponential) => Some(BackoffKind::Exponential),
                    _ => None,
                },
                delay_seconds: backoff.delay_seconds,
                max_delay_seconds: backoff.max_delay_seconds,
            }),
            priority: spec.priority,
            idempotency_key: spec.idempotency_key,
            idempotency_window_seconds: spec.idempotency_window_seconds,
            concurrency_key: spec.concurrency_key,
            concurrency_limit: spec.concurrency_limit,
        }
    }
}

pub fn fence(fence: Option<pb::Fence>) -> Fence {
    fence.map_or_else(Fence::default, |fence| Fence {
        attempt_number: fence.attempt_number,
        lease: fence.lease_id,
    })
}

impl From<SpaceRecord> for pb::Space {
    fn from(space: SpaceRecord) -> Self {
        Self {
            id: space.id,
            name: space.name,
            public_token: space.public_token,
            created_at: Some(to_timestamp(space.created_at)),
            anonymous_progress_streams: space.anonymous_progress_streams,
            push: space.push.map(|push| pb::PushTarget {
                url: push.url,
                names: push.names,
                headers: push
                    .headers
                    .into_iter()
                    .map(|(name, _)| (name, "***".to_owned()))
                    .collect(),
            }),
            // Only the admin service knows the server's ages.
            retention: None,
            slack: space.slack.map(|slack| pb::SlackSettings {
                url: crate::callbacks::slack::masked(&slack.url),
                events: slack.events,
            }),
            // Pauses live in their own table; the admin service adds them.
            paused: false,
            paused_names: Vec::new(),
            concurrency: (!space.concurrency.is_empty())
                .then(|| limits_to_proto(space.concurrency)),
        }
    }
}

impl From<TokenRecord> for pb::Token {
    fn from(token: TokenRecord) -> Self {
        Self {
            id: token.id,
            name: token.name,
            scopes: token.scopes,
            created_at: Some(to_timestamp(token.created_at)),
        }
    }
}

pub fn limits_to_proto(limits: ConcurrencyLimits) -> pb::ConcurrencyLimits {
    pb::ConcurrencyLimits {
        default_limit: limits.default,
        names: limits.names.into_iter().collect(),
        rates: limits
            .rates
            .into_iter()
            .map(|(name, rate)| {
                let rate = pb::RateLimit {
                    limit: rate.limit,
                    period_seconds: rate.period_seconds,
                    per_key: rate.per_key,
                };
                (name, rate)
            })
            .collect(),
    }
}

pub fn limits_from_proto(limits: pb::ConcurrencyLimits) -> ConcurrencyLimits {
    ConcurrencyLimits {
        default: limits.default_limit,
        names: limits.names.into_iter().collect(),
        rates: limits
            .rates
            .into_iter()
            .map(|(name, rate)| {
                let rate = RateLimit {
                    limit: rate.limit,
                    period_seconds: rate.period_seconds,
                    per_key: rate.per_key,
                };
                (name, rate)
            })
            .collect(),
    }
}
