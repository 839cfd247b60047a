//! Reading the REST API's request bodies into the core's protobuf
//! messages, with errors that name the field by its path
//! (`jobs[3].maxRetries must be ...`). Responses are typed in
//! `resources.rs`. JSON carried inside messages stays text.

use chrono::DateTime;
use emit_proto::v1 as pb;
use serde_json::{Map, Value};

use crate::ApiError;

pub fn parse_status(text: &str) -> Option<pb::JobStatus> {
    let status =
        pb::JobStatus::from_str_name(&format!("JOB_STATUS_{}", text.to_ascii_uppercase()))?;
    (status != pb::JobStatus::Unspecified).then_some(status)
}

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
