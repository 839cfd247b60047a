//! Translation between the REST API's JSON and the core's protobuf messages.
//! Field names and shapes follow the emit.run documentation; JSON carried
//! inside messages is text and is re-embedded without loss.

use chrono::{DateTime, SecondsFormat};
use emit_proto::v1 as pb;
use serde_json::{Map, Value, json};

use crate::ApiError;
use crate::error::required;

// ---- protobuf -> JSON ----------------------------------------------------

pub fn iso(timestamp: Option<prost_types::Timestamp>) -> Value {
    timestamp
        .and_then(|ts| DateTime::from_timestamp(ts.seconds, ts.nanos.max(0) as u32))
        .map_or(Value::Null, |at| {
            Value::String(at.to_rfc3339_opts(SecondsFormat::Millis, true))
        })
}

/// Embeds JSON text; text the core stored was validated, so a parse failure
/// means corruption and is shown as a string rather than dropped.
pub fn embedded(text: Option<String>) -> Value {
    match text {
        Some(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        None => Value::Null,
    }
}

pub fn status_name(status: i32) -> &'static str {
    match pb::JobStatus::try_from(status).unwrap_or_default() {
        pb::JobStatus::Scheduled => "scheduled",
        pb::JobStatus::Pending => "pending",
        pb::JobStatus::Delivered => "delivered",
        pb::JobStatus::Running => "running",
        pb::JobStatus::Completed => "completed",
        pb::JobStatus::Dead => "dead",
        pb::JobStatus::Killed => "killed",
        pb::JobStatus::Unspecified => "unknown",
    }
}

pub fn parse_status(text: &str) -> Option<pb::JobStatus> {
    let status =
        pb::JobStatus::from_str_name(&format!("JOB_STATUS_{}", text.to_ascii_uppercase()))?;
    (status != pb::JobStatus::Unspecified).then_some(status)
}

fn event_type_name(event_type: i32) -> String {
    let name = pb::JobEventType::try_from(event_type)
        .unwrap_or_default()
        .as_str_name();
    name.trim_start_matches("JOB_EVENT_TYPE_")
        .to_ascii_lowercase()
}

/// A job as the list endpoint shows it: the reference's fields, plus
/// `priority` when the job has one, `scheduleId`/`fireTime` when a schedule
/// made it, its concurrency key and limit, and why it waits, when they
/// apply.
pub fn job_summary(job: pb::Job) -> Value {
    let priority = job.priority;
    let fire = job.schedule_id.clone().map(|id| (id, iso(job.fire_time)));
    let flow = [
        (
            "concurrencyKey",
            job.concurrency_key.clone().map(Value::from),
        ),
        ("concurrencyLimit", job.concurrency_limit.map(Value::from)),
        ("waitingReason", job.waiting_reason.clone().map(Value::from)),
    ];
    let mut summary = json!({
        "id": job.id,
        "spaceId": job.space_id,
        "name": job.name,
        "payload": embedded(job.payload_json),
        "status": status_name(job.status),
        "maxRetries": job.max_retries,
        "attemptNumber": job.attempt_number,
        "timeoutSeconds": job.timeout_seconds,
        "deliveredAt": iso(job.delivered_at),
        "startedAt": iso(job.started_at),
        "completedAt": iso(job.completed_at),
        "result": embedded(job.result_json),
        "createdAt": iso(job.created_at),
        "updatedAt": iso(job.updated_at),
    });
    if priority != 0 {
        summary["priority"] = priority.into();
    }
    if let Some((schedule_id, fire_time)) = fire {
        summary["scheduleId"] = schedule_id.into();
        summary["fireTime"] = fire_time;
    }
    for (field, value) in flow {
        if let Some(value) = value {
            summary[field] = value;
        }
    }
    summary
}

/// A job with everything the core knows of it (get job, worker calls).
pub fn job_detail(job: pb::Job) -> Value {
    let extra = json!({
        "priority": job.priority,
        "scheduledFor": iso(job.scheduled_for),
        "progress": embedded(job.progress_json.clone()),
        "checkpoint": embedded(job.checkpoint_json.clone()),
        "error": job.last_error.clone(),
        "killReason": job.kill_reason.clone(),
        "leaseId": job.lease_id.clone(),
        "callbackUrl": job.callback_url.clone(),
        "retryBackoff": job.retry_backoff.map(|backoff| json!({
            "type": pb::BackoffKind::try_from(backoff.kind).unwrap_or_default().as_str_name()
                .trim_start_matches("BACKOFF_KIND_").to_ascii_lowercase(),
            "delaySeconds": backoff.delay_seconds,
            "maxDelaySeconds": backoff.max_delay_seconds,
        })),
    });
    let mut value = job_summary(job);
    if let (Value::Object(fields), Value::Object(extra)) = (&mut value, extra) {
        fields.extend(extra);
    }
    value
}

/// The realtime event shape: `{jobId, jobName, type, status, data?, timestamp}`
/// plus `seq` and `previousStatus` where they apply.
pub fn event(event: pb::JobEvent) -> Value {
    let mut fields = Map::new();
    fields.insert("jobId".into(), event.job_id.into());
    fields.insert("jobName".into(), event.job_name.into());
    fields.insert("type".into(), event_type_name(event.r#type).into());
    fields.insert("status".into(), status_name(event.status).into());
    if event.previous_status != pb::JobStatus::Unspecified as i32 {
        fields.insert(
            "previousStatus".into(),
            status_name(event.previous_status).into(),
        );
    }
    if event.data_json.is_some() {
        fields.insert("data".into(), embedded(event.data_json));
    }
    fields.insert("timestamp".into(), iso(event.timestamp));
    fields.insert("seq".into(), event.seq.into());
    Value::Object(fields)
}

pub fn counts(counts: pb::StatusCounts) -> Value {
    json!({
        "scheduled": counts.scheduled,
        "pending": counts.pending,
        "delivered": counts.delivered,
        "running": counts.running,
        "completed": counts.completed,
        "failed": counts.failed,
        "dead": counts.dead,
        "killed": counts.killed,
    })
}

/// A job-stream message: `{jobId, jobName, type, status, data?, timestamp}`
/// (`init` carries the latest `progress` instead of `data`).
pub fn job_stream_message(message: pb::watch_job_response::Message) -> Value {
    use pb::watch_job_response::Message;
    let mut fields = Map::new();
    match message {
        Message::Init(init) => {
            fields.insert("jobId".into(), init.job_id.into());
            fields.insert("jobName".into(), init.job_name.into());
            fields.insert("type".into(), "init".into());
            fields.insert("status".into(), status_name(init.status).into());
            if init.progress_json.is_some() {
                fields.insert("progress".into(), embedded(init.progress_json));
            }
            fields.insert("timestamp".into(), iso(init.timestamp));
        }
        Message::Event(event) => {
            fields.insert("jobId".into(), event.job_id.into());
            fields.insert("jobName".into(), event.job_name.into());
            fields.insert("type".into(), event_type_name(event.r#type).into());
            fields.insert("status".into(), status_name(event.status).into());
            if event.data_json.is_some() {
                fields.insert("data".into(), embedded(event.data_json));
            }
            fields.insert("timestamp".into(), iso(event.timestamp));
        }
        Message::Log(entry) => {
            fields.insert("jobId".into(), entry.job_id.into());
            fields.insert("jobName".into(), entry.job_name.into());
            fields.insert("type".into(), "log".into());
            fields.insert("status".into(), status_name(entry.status).into());
            let timestamp = entry.line.as_ref().and_then(|line| line.timestamp);
            if let Some(line) = entry.line {
                fields.insert("data".into(), log_line(line));
            }
            fields.insert("timestamp".into(), iso(timestamp.or_else(now)));
        }
    }
    Value::Object(fields)
}

/// A space-stream message: `connected`, or an event with `seq`,
/// `previousStatus` on transitions and `counts` when they changed.
/// A `connected` without the counts the core always sends is an error.
pub fn space_stream_message(message: pb::watch_space_response::Message) -> Result<Value, ApiError> {
    use pb::watch_space_response::Message;
    Ok(match message {
        // `jobName` and `status` are null (no job): the reference's own
        // snippets read both from every message of this stream.
        Message::Connected(connected) => json!({
            "type": "connected",
            "jobName": null,
            "status": null,
            "spaceId": connected.space_id,
            "seq": connected.seq,
            "streamInstanceId": connected.stream_instance_id,
            "missed": connected.missed,
            "counts": counts(required(connected.counts, "connected.counts")?),
            "timestamp": iso(connected.timestamp),
        }),
        // The space's own: no job and no status; `jobName` and `data.name`
        // are the paused name, null for the whole space.
        Message::SpaceEvent(event) => json!({
            "type": pb::SpaceEventType::try_from(event.r#type)
                .unwrap_or_default()
                .as_str_name()
                .trim_start_matches("SPACE_EVENT_TYPE_")
                .to_ascii_lowercase(),
            "jobId": null,
            "jobName": event.name,
            "status": null,
            "spaceId": event.space_id,
            "data": { "name": event.name },
            "seq": event.seq,
            "timestamp": iso(event.timestamp),
        }),
        Message::Event(mut event) => {
            let event_counts = event.counts.take();
            let mut value = self::event(event);
            if let (Some(event_counts), Value::Object(fields)) = (event_counts, &mut value) {
                fields.insert("counts".into(), counts(event_counts));
            }
            value
        }
    })
}

fn now() -> Option<prost_types::Timestamp> {
    Some(std::time::SystemTime::now().into())
}

/// A job handed to a worker; `priority` when the job has one.
pub fn delivery(job: pb::Delivery) -> Value {
    let priority = job.priority;
    let mut delivery = json!({
        "id": job.id,
        "name": job.name,
        "payload": embedded(job.payload_json),
        "timeoutSeconds": job.timeout_seconds,
        "maxRetries": job.max_retries,
        "attemptNumber": job.attempt_number,
        "createdAt": iso(job.created_at),
        "checkpoint": embedded(job.checkpoint_json),
        "leaseId": job.lease_id,
    });
    if priority != 0 {
        delivery["priority"] = priority.into();
    }
    delivery
}

pub fn space(space: pb::Space) -> Value {
    json!({
        "id": space.id,
        "name": space.name,
        "publicToken": space.public_token,
        "anonymousProgressStreams": space.anonymous_progress_streams,
        "push": space.push.map(|push| json!({
            "url": push.url,
            "names": push.names,
            "headers": push.headers,
        })),
        "slack": space.slack.map(|slack| json!({
            "url": slack.url,
            "events": slack.events,
        })),
        "paused": space.paused,
        "pausedNames": space.paused_names,
        "retention": space.retention.map(|retention| json!({
            "completed": retention.completed_seconds,
            "dead": retention.dead_seconds,
            "killed": retention.killed_seconds,
        })),
        "concurrency": space.concurrency.map(concurrency_limits_json),
        "createdAt": iso(space.created_at),
    })
}

/// A space's flow limits as REST shows them.
pub fn concurrency_limits_json(limits: pb::ConcurrencyLimits) -> Value {
    let rates: serde_json::Map<String, Value> = limits
        .rates
        .into_iter()
        .map(|(name, rate)| {
            let rate = json!({
                "limit": rate.limit,
                "periodSeconds": rate.period_seconds,
                "perKey": rate.per_key,
            });
            (name, rate)
        })
        .collect();
    json!({ "default": limits.default_limit, "names": limits.names, "rates": rates })
}

/// `{"default": N, "names": {"report": N}, "rates": {"report": {"limit",
/// "periodSeconds", "perKey"}}}`: a space's flow limits.
pub fn concurrency_limits(value: &Value) -> Result<pb::ConcurrencyLimits, ApiError> {
    let fields = Fields::of(value, "concurrency")?;
    let mut names = std::collections::HashMap::new();
    match fields.get("names") {
        None => {}
        Some(Value::Object(entries)) => {
            for (name, limit) in entries {
                let limit = limit
                    .as_u64()
                    .and_then(|limit| u32::try_from(limit).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "concurrency.names.{name} must be a whole number"
                        ))
                    })?;
                names.insert(name.clone(), limit);
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "concurrency.names must be an object of job names to limits",
            ));
        }
    }
    let mut rates = std::collections::HashMap::new();
    match fields.get("rates") {
        None => {}
        Some(Value::Object(entries)) => {
            for (name, rate) in entries {
                let rate = Fields::of(rate, &format!("concurrency.rates.{name}"))?;
                let required = |field: &str, value: Option<u32>| {
                    value.ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "concurrency.rates.{name}.{field} is required"
                        ))
                    })
                };
                rates.insert(
                    name.clone(),
                    pb::RateLimit {
                        limit: required("limit", rate.u32("limit")?)?,
                        period_seconds: required("periodSeconds", rate.u32("periodSeconds")?)?,
                        per_key: rate.bool("perKey")?.unwrap_or(false),
                    },
                );
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "concurrency.rates must be an object of job names to rate limits",
            ));
        }
    }
    Ok(pb::ConcurrencyLimits {
        default_limit: fields.u32("default")?,
        names,
        rates,
    })
}

pub fn token(token: pb::Token) -> Value {
    json!({
        "id": token.id,
        "name": token.name,
        "scopes": token.scopes,
        "createdAt": iso(token.created_at),
    })
}

pub fn log_line(line: pb::StoredLogLine) -> Value {
    json!({
        "seq": line.seq,
        "level": line.level,
        "message": line.message,
        "timestamp": iso(line.timestamp),
    })
}

// ---- JSON -> protobuf ----------------------------------------------------

/// An RFC 3339 instant, named `field` in the error.
pub fn parse_timestamp(field: &str, text: &str) -> Result<prost_types::Timestamp, ApiError> {
    let at = DateTime::parse_from_rfc3339(text)
        .map_err(|_| ApiError::bad_request(format!("{field} must be an ISO 8601 timestamp")))?;
    Ok(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

/// A job status by its name, named `field` in the error; empty: none.
pub fn status_filter(field: &str, text: Option<&str>) -> Result<pb::JobStatus, ApiError> {
    match text.filter(|text| !text.is_empty()) {
        None => Ok(pb::JobStatus::Unspecified),
        Some(text) => parse_status(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field} must be one of scheduled, pending, delivered, running, completed, dead, killed"
            ))
        }),
    }
}

/// Reads fields of one JSON object, naming them in errors as `prefix.field`.
pub struct Fields<'a> {
    prefix: String,
    object: Option<&'a Map<String, Value>>,
}

impl<'a> Fields<'a> {
    /// `null` (an empty body) reads as an object without fields.
    pub fn of(value: &'a Value, prefix: &str) -> Result<Self, ApiError> {
        let object = match value {
            Value::Object(object) => Some(object),
            Value::Null => None,
            _ => {
                let what = if prefix.is_empty() {
                    "request body".to_owned()
                } else {
                    prefix.to_owned()
                };
                return Err(ApiError::bad_request(format!(
                    "{what} must be a JSON object"
                )));
            }
        };
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}.")
        };
        Ok(Self { prefix, object })
    }

    fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    /// The field, with JSON `null` read as absent.
    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.object?.get(field).filter(|value| !value.is_null())
    }

    /// The field as sent, JSON `null` included (where null means something).
    pub fn raw(&self, field: &str) -> Option<&'a Value> {
        self.object?.get(field)
    }

    /// A whole number of at least 0.
    pub fn u64(&self, field: &str) -> Result<Option<u64>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(number)) if number.as_u64().is_some() => Ok(number.as_u64()),
            Some(_) => Err(ApiError::bad_request(format!(
                "{} must be a whole number of at least 0",
                self.name(field)
            ))),
        }
    }

    pub fn bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(*value)),
            Some(_) => Err(ApiError::bad_request(format!(
                "{} must be a boolean",
                self.name(field)
            ))),
        }
    }

    pub fn string(&self, field: &str) -> Result<Option<String>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(ApiError::bad_request(format!(
                "{} must be a string",
                self.name(field)
            ))),
        }
    }

    /// Signed whole numbers; out-of-range values saturate so the core's
    /// range check reports them with the documented bounds.
    pub fn i32(&self, field: &str) -> Result<Option<i32>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(number)) if number.as_i64().is_some() => Ok(number
                .as_i64()
                .map(|value| value.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)),
            Some(Value::Number(number)) if number.as_u64().is_some() => Ok(Some(i32::MAX)),
            Some(_) => Err(ApiError::bad_request(format!(
                "{} must be an integer",
                self.name(field)
            ))),
        }
    }

    /// Whole numbers; out-of-range values saturate so the core's range check
    /// reports them with the documented bounds.
    pub fn u32(&self, field: &str) -> Result<Option<u32>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(number)) => {
                if let Some(value) = number.as_u64() {
                    Ok(Some(u32::try_from(value).unwrap_or(u32::MAX)))
                } else if number.as_i64().is_some() {
                    Ok(Some(u32::MAX))
                } else {
                    Err(ApiError::bad_request(format!(
                        "{} must be an integer",
                        self.name(field)
                    )))
                }
            }
            Some(_) => Err(ApiError::bad_request(format!(
                "{} must be an integer",
                self.name(field)
            ))),
        }
    }

    pub fn timestamp(&self, field: &str) -> Result<Option<prost_types::Timestamp>, ApiError> {
        let Some(text) = self.string(field)? else {
            return Ok(None);
        };
        parse_timestamp(&self.name(field), &text).map(Some)
    }

    /// Any JSON value, as text.
    pub fn json_text(&self, field: &str) -> Option<String> {
        self.get(field).map(Value::to_string)
    }

    pub fn string_map(
        &self,
        field: &str,
    ) -> Result<std::collections::HashMap<String, String>, ApiError> {
        let Some(value) = self.get(field) else {
            return Ok(Default::default());
        };
        let object = value.as_object().ok_or_else(|| {
            ApiError::bad_request(format!("{} must be an object", self.name(field)))
        })?;
        object
            .iter()
            .map(|(key, value)| match value {
                Value::String(text) => Ok((key.clone(), text.clone())),
                _ => Err(ApiError::bad_request(format!(
                    "{}.{key} must be a string",
                    self.name(field)
                ))),
            })
            .collect()
    }

    pub fn strings(&self, field: &str) -> Result<Option<Vec<String>>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(vec![text.clone()])),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_owned).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "{} must contain only strings",
                            self.name(field)
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(ApiError::bad_request(format!(
                "{} must be a string or an array of strings",
                self.name(field)
            ))),
        }
    }
}

/// A create body: one job object, or an array of them.
pub fn job_specs(body: &Value) -> Result<(Vec<pb::JobSpec>, bool), ApiError> {
    match body {
        Value::Array(items) => {
            let specs = items
                .iter()
                .enumerate()
                .map(|(index, item)| job_spec(item, &format!("jobs[{index}]")))
                .collect::<Result<_, _>>()?;
            Ok((specs, false))
        }
        Value::Object(_) => Ok((vec![job_spec(body, "jobs[0]")?], true)),
        _ => Err(ApiError::bad_request(
            "request body must be a job object or an array of job objects",
        )),
    }
}

/// One job of a create (or a schedule's template), its fields named in
/// errors under `prefix`.
pub fn job_spec(value: &Value, prefix: &str) -> Result<pb::JobSpec, ApiError> {
    let fields = match value {
        Value::Object(_) => Fields::of(value, prefix)?,
        _ => {
            return Err(ApiError::bad_request(format!(
                "{prefix} must be a JSON object"
            )));
        }
    };
    let retry_backoff = match fields.get("retryBackoff") {
        None => None,
        Some(backoff) => {
            let backoff = Fields::of(backoff, &format!("{prefix}.retryBackoff"))?;
            let kind = match backoff.string("type")?.as_deref() {
                Some("fixed") => pb::BackoffKind::Fixed,
                Some("exponential") => pb::BackoffKind::Exponential,
                _ => pb::BackoffKind::Unspecified,
            };
            Some(pb::RetryBackoff {
                kind: kind as i32,
                delay_seconds: backoff.u32("delaySeconds")?.unwrap_or(0),
                max_delay_seconds: backoff.u32("maxDelaySeconds")?.unwrap_or(0),
            })
        }
    };
    Ok(pb::JobSpec {
        name: fields.string("name")?.unwrap_or_default(),
        payload_json: fields.json_text("payload"),
        max_retries: fields.u32("maxRetries")?,
        timeout_seconds: fields.u32("timeoutSeconds")?,
        scheduled_for: fields.timestamp("scheduledFor")?,
        callback_url: fields.string("callbackUrl")?,
        callback_headers: fields.string_map("callbackHeaders")?,
        retry_backoff,
        priority: fields.i32("priority")?,
        idempotency_key: fields.string("idempotencyKey")?,
        idempotency_window_seconds: fields.u32("idempotencyWindowSeconds")?,
        concurrency_key: fields.string("concurrencyKey")?,
        concurrency_limit: fields.u32("concurrencyLimit")?,
    })
}

/// The optional fencing fields of a worker call body.
pub fn fence(fields: &Fields<'_>) -> Result<Option<pb::Fence>, ApiError> {
    let attempt_number = fields.u32("attemptNumber")?;
    let lease_id = fields.string("leaseId")?;
    Ok(
        (attempt_number.is_some() || lease_id.is_some()).then_some(pb::Fence {
            attempt_number,
            lease_id,
        }),
    )
}

/// A schedule create's or update's fields (unset ones stay unset).
pub fn schedule_settings(body: &Value) -> Result<pb::ScheduleSettings, ApiError> {
    let fields = Fields::of(body, "")?;
    let overlap = match fields.string("overlap")?.as_deref() {
        None => pb::ScheduleOverlap::Unspecified,
        Some("allow") => pb::ScheduleOverlap::Allow,
        Some("skip") => pb::ScheduleOverlap::Skip,
        Some(_) => return Err(ApiError::bad_request("overlap must be allow or skip")),
    };
    let catch_up = match fields.string("catchUp")?.as_deref() {
        None => pb::ScheduleCatchUp::Unspecified,
        Some("none") => pb::ScheduleCatchUp::None,
        Some("one") => pb::ScheduleCatchUp::One,
        Some("all") => pb::ScheduleCatchUp::All,
        Some(_) => return Err(ApiError::bad_request("catchUp must be none, one or all")),
    };
    Ok(pb::ScheduleSettings {
        cron: fields.string("cron")?,
        time_zone: fields.string("timeZone")?,
        job: fields
            .get("job")
            .map(|job| match job {
                Value::Object(_) => job_spec(job, "job"),
                _ => Err(ApiError::bad_request("job must be a JSON object")),
            })
            .transpose()?,
        overlap: overlap as i32,
        catch_up: catch_up as i32,
        catch_up_limit: fields.u32("catchUpLimit")?,
        paused: fields.bool("paused")?,
    })
}

/// A schedule; its job template shows the fields it sets.
pub fn schedule(schedule: pb::Schedule) -> Result<Value, ApiError> {
    let template = required(schedule.job, "schedule.job")?;
    let mut job = json!({ "name": template.name });
    let optional = [
        (
            "payload",
            template.payload_json.map(|text| embedded(Some(text))),
        ),
        ("maxRetries", template.max_retries.map(Value::from)),
        ("timeoutSeconds", template.timeout_seconds.map(Value::from)),
        ("priority", template.priority.map(Value::from)),
        ("concurrencyKey", template.concurrency_key.map(Value::from)),
        (
            "concurrencyLimit",
            template.concurrency_limit.map(Value::from),
        ),
        ("callbackUrl", template.callback_url.map(Value::from)),
        (
            "callbackHeaders",
            (!template.callback_headers.is_empty()).then(|| json!(template.callback_headers)),
        ),
        (
            "retryBackoff",
            template.retry_backoff.map(|backoff| {
                let kind = pb::BackoffKind::try_from(backoff.kind).unwrap_or_default();
                let mut value = json!({
                    "delaySeconds": backoff.delay_seconds,
                    "maxDelaySeconds": backoff.max_delay_seconds,
                });
                if kind != pb::BackoffKind::Unspecified {
                    value["type"] = kind
                        .as_str_name()
                        .trim_start_matches("BACKOFF_KIND_")
                        .to_ascii_lowercase()
                        .into();
                }
                value
            }),
        ),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            job[name] = value;
        }
    }
    let enum_name = |name: &str, prefix: &str| name.trim_start_matches(prefix).to_ascii_lowercase();
    Ok(json!({
        "id": schedule.id,
        "spaceId": schedule.space_id,
        "cron": schedule.cron,
        "timeZone": schedule.time_zone,
        "job": job,
        "overlap": enum_name(
            pb::ScheduleOverlap::try_from(schedule.overlap).unwrap_or_default().as_str_name(),
            "SCHEDULE_OVERLAP_",
        ),
        "catchUp": enum_name(
            pb::ScheduleCatchUp::try_from(schedule.catch_up).unwrap_or_default().as_str_name(),
            "SCHEDULE_CATCH_UP_",
        ),
        "catchUpLimit": schedule.catch_up_limit,
        "paused": schedule.paused,
        "nextFireTimes": schedule.next_fire_times.into_iter().map(|at| iso(Some(at))).collect::<Vec<_>>(),
        "lastFireTime": iso(schedule.last_fire_time),
        "lastJobId": schedule.last_job_id,
        "createdAt": iso(schedule.created_at),
        "updatedAt": iso(schedule.updated_at),
    }))
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
        let message = space_stream_message(connected(Some(counts))).unwrap();
        assert_eq!(message["counts"]["pending"], 2);
        assert!(space_stream_message(connected(None)).is_err());
    }
}
