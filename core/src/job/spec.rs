//! What callers may submit: validation of new jobs, progress reports, worker
//! data and log lines, with the limits the README documents. Messages name
//! the field as the REST API spells it (`jobs[0].maxRetries`), for gRPC too.

use super::{BackoffKind, Callback, Job, LogLevel, LogLine, RetryBackoff, machine};
use sha2::{Digest, Sha256};

use crate::clock::UnixMillis;
use crate::error::{Error, Result};

pub const MAX_JOBS_PER_REQUEST: usize = 1000;
pub const MAX_NAME_CHARS: usize = 200;
/// Payloads, results, checkpoints, progress and event data.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;
pub const MAX_RETRIES: u32 = 25;
pub const DEFAULT_MAX_RETRIES: u32 = 3;
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 300;
pub const MAX_TIMEOUT_SECONDS: u32 = 86_400;
pub const MAX_CALLBACK_URL_BYTES: usize = 2048;
pub const MAX_ERROR_BYTES: usize = 64 * 1024;
pub const MAX_LOG_LINES_PER_REQUEST: usize = 1000;
pub const MAX_LOG_MESSAGE_BYTES: usize = 64 * 1024;
/// Job names one poll or worker session may filter on.
pub const MAX_NAME_FILTER: usize = 100;
/// Deepest nesting of arrays and objects in submitted JSON (what REST's
/// parser allows, so gRPC callers meet the same limit).
pub const MAX_JSON_DEPTH: usize = 127;
/// Longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// How long a create's idempotency key holds unless it says otherwise.
pub const DEFAULT_IDEMPOTENCY_WINDOW_SECONDS: u32 = 24 * 60 * 60;
/// The longest window a create may ask for: 7 days, the shortest default
/// retention of finished jobs, so a replay finds its job.
pub const MAX_IDEMPOTENCY_WINDOW_SECONDS: u32 = 7 * 24 * 60 * 60;
/// Dispatch priorities a job may have; 0 unless set.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;

/// Headers a callback may not set: they belong to the connection or framing
/// and overriding them would break or smuggle the request.
const RESERVED_CALLBACK_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "expect",
];

/// A new job as a caller described it, before validation.
#[derive(Clone, Debug, Default)]
pub struct JobInput {
    pub name: String,
    pub payload: Option<String>,
    pub max_retries: Option<u32>,
    pub timeout_seconds: Option<u32>,
    pub scheduled_for: Option<UnixMillis>,
    pub callback_url: Option<String>,
    pub callback_headers: Vec<(String, String)>,
    pub retry_backoff: Option<BackoffInput>,
    pub priority: Option<i32>,
    pub idempotency_key: Option<String>,
    pub idempotency_window_seconds: Option<u32>,
    pub concurrency_key: Option<String>,
    pub concurrency_limit: Option<u32>,
}

/// One job's idempotency key, as its create claims it.
#[derive(Clone, Debug)]
pub struct IdempotencyClaim {
    /// The job's index in its create request.
    pub index: usize,
    pub key: String,
    /// SHA-256 of what the create asked for, to tell a retry of the same
    /// create from a different create reusing the key.
    pub request_hash: [u8; 32],
    pub expires_at: UnixMillis,
}

/// The jobs a create request makes, and the keys it claims for them.
#[derive(Clone, Debug, Default)]
pub struct NewJobs {
    pub jobs: Vec<Job>,
    pub claims: Vec<IdempotencyClaim>,
}

impl From<Vec<Job>> for NewJobs {
    fn from(jobs: Vec<Job>) -> Self {
        Self {
            jobs,
            claims: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct BackoffInput {
    pub kind: Option<BackoffKind>,
    pub delay_seconds: u32,
    pub max_delay_seconds: u32,
}

/// Validates a create request and builds the jobs it creates, with the
/// idempotency keys it claims.
pub fn build_jobs(
    space_id: &str,
    inputs: Vec<JobInput>,
    now: UnixMillis,
    mut new_id: impl FnMut() -> String,
) -> Result<NewJobs> {
    if inputs.is_empty() {
        return Err(Error::invalid("at least one job is required"));
    }
    if inputs.len() > MAX_JOBS_PER_REQUEST {
        return Err(Error::invalid(format!(
            "at most {MAX_JOBS_PER_REQUEST} jobs can be created per request"
        )));
    }
    let mut built = NewJobs::default();
    for (index, input) in inputs.into_iter().enumerate() {
        if let Some(claim) = idempotency_claim(index, &input, now)? {
            built.claims.push(claim);
        }
        built.jobs.push(build_job(
            &format!("jobs[{index}]"),
            space_id,
            input,
            now,
            new_id(),
        )?);
    }
    Ok(built)
}

/// The claim of a job's idempotency key, if it has one. The request hash
/// covers every field of the job as submitted, the key's window aside.
fn idempotency_claim(
    index: usize,
    input: &JobInput,
    now: UnixMillis,
) -> Result<Option<IdempotencyClaim>> {
    let field = |name: &str| format!("jobs[{index}].{name}");
    let Some(key) = &input.idempotency_key else {
        if input.idempotency_window_seconds.is_some() {
            return Err(Error::invalid(format!(
                "{} requires {}",
                field("idempotencyWindowSeconds"),
                field("idempotencyKey")
            )));
        }
        return Ok(None);
    };
    let chars = key.chars().count();
    if !(1..=MAX_IDEMPOTENCY_KEY_CHARS).contains(&chars) {
        return Err(Error::invalid(format!(
            "{} must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters",
            field("idempotencyKey")
        )));
    }
    check_text(&field("idempotencyKey"), key)?;
    let window = input
        .idempotency_window_seconds
        .unwrap_or(DEFAULT_IDEMPOTENCY_WINDOW_SECONDS);
    if !(1..=MAX_IDEMPOTENCY_WINDOW_SECONDS).contains(&window) {
        return Err(Error::invalid(format!(
            "{} must be between 1 and {MAX_IDEMPOTENCY_WINDOW_SECONDS}",
            field("idempotencyWindowSeconds")
        )));
    }
    let backoff = input.retry_backoff.map(|backoff| {
        serde_json::json!([
            backoff.kind.map(BackoffKind::as_str),
            backoff.delay_seconds,
            backoff.max_delay_seconds
        ])
    });
    let described = serde_json::json!([
        input.name,
        input.payload,
        input.max_retries,
        input.timeout_seconds,
        input.scheduled_for,
        input.callback_url,
        input.callback_headers,
        backoff,
        input.priority,
        input.concurrency_key,
        input.concurrency_limit,
    ]);
    Ok(Some(IdempotencyClaim {
        index,
        key: key.clone(),
        request_hash: Sha256::digest(described.to_string().as_bytes()).into(),
        expires_at: now + i64::from(window) * 1000,
    }))
}

/// Validates one new job and builds it; errors name its fields under
/// `prefix` (`jobs[3]`, or `job` in a schedule).
pub fn build_job(
    prefix: &str,
    space_id: &str,
    input: JobInput,
    now: UnixMillis,
    id: String,
) -> Result<Job> {
    let field = |name: &str| format!("{prefix}.{name}");
    if input.name.trim().is_empty() {
        return Err(Error::invalid(format!("{} is required", field("name"))));
    }
    if input.name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(format!(
            "{} must be at most {MAX_NAME_CHARS} characters",
            field("name")
        )));
    }
    check_text(&field("name"), &input.name)?;
    if let Some(payload) = &input.payload {
        check_json(&field("payload"), payload)?;
    }
    let max_retries = input.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
    if max_retries > MAX_RETRIES {
        return Err(Error::invalid(format!(
            "{} must be between 0 and {MAX_RETRIES}",
            field("maxRetries")
        )));
    }
    let timeout_seconds = input.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if !(1..=MAX_TIMEOUT_SECONDS).contains(&timeout_seconds) {
        return Err(Error::invalid(format!(
            "{} must be between 1 and {MAX_TIMEOUT_SECONDS}",
            field("timeoutSeconds")
        )));
    }
    let (concurrency_key, concurrency_limit) = check_concurrency(&field, &input)?;
    let callback = match input.callback_url {
        Some(url) => Some(build_callback(&field, url, input.callback_headers)?),
        None if !input.callback_headers.is_empty() => {
            return Err(Error::invalid(format!(
                "{} requires {}",
                field("callbackHeaders"),
                field("callbackUrl")
            )));
        }
        None => None,
    };
    let retry_backoff = input
        .retry_backoff
        .map(|backoff| build_backoff(&field("retryBackoff"), backoff))
        .transpose()?;
    let priority = input.priority.unwrap_or(0);
    if !PRIORITY_RANGE.contains(&priority) {
        return Err(Error::invalid(format!(
            "{} must be between {} and {}",
            field("priority"),
            PRIORITY_RANGE.start(),
            PRIORITY_RANGE.end()
        )));
    }
    let state = machine::initial_state(input.scheduled_for, now);
    Ok(Job {
        id,
        space_id: space_id.to_owned(),
        name: input.name,
        payload: input.payload,
        state,
        max_retries,
        attempt_number: 0,
        timeout_seconds,
        scheduled_for: input.scheduled_for.filter(|at| *at > now),
        delivered_at: None,
        started_at: None,
        completed_at: None,
        result: None,
        progress: None,
        checkpoint: None,
        last_error: None,
        kill_reason: None,
        callback,
        retry_backoff,
        priority,
        schedule: None,
        concurrency_key,
        concurrency_limit,
        created_at: now,
        updated_at: now,
    })
}

/// A job's concurrency key and its own limit, checked.
fn check_concurrency(
    field: &dyn Fn(&str) -> String,
    input: &JobInput,
) -> Result<(Option<String>, Option<u32>)> {
    use crate::concurrency::{LIMIT_RANGE, MAX_KEY_CHARS};
    let Some(key) = &input.concurrency_key else {
        if input.concurrency_limit.is_some() {
            return Err(Error::invalid(format!(
                "{} requires {}",
                field("concurrencyLimit"),
                field("concurrencyKey")
            )));
        }
        return Ok((None, None));
    };
    if !(1..=MAX_KEY_CHARS).contains(&key.chars().count()) {
        return Err(Error::invalid(format!(
            "{} must be 1 to {MAX_KEY_CHARS} characters",
            field("concurrencyKey")
        )));
    }
    check_text(&field("concurrencyKey"), key)?;
    if let Some(limit) = input.concurrency_limit
        && !LIMIT_RANGE.contains(&limit)
    {
        return Err(Error::invalid(format!(
            "{} must be between {} and {}",
            field("concurrencyLimit"),
            LIMIT_RANGE.start(),
            LIMIT_RANGE.end()
        )));
    }
    Ok((Some(key.clone()), input.concurrency_limit))
}

fn build_callback(
    field: &dyn Fn(&str) -> String,
    url: String,
    headers: Vec<(String, String)>,
) -> Result<Callback> {
    check_webhook_target(
        &field("callbackUrl"),
        &field("callbackHeaders"),
        url,
        headers,
    )
}

/// An outgoing webhook (a callback or a push wake-up): an absolute http(s)
/// URL and headers that leave the connection and framing alone. The field
/// names are the ones errors name.
pub fn check_webhook_target(
    url_field: &str,
    headers_field: &str,
    url: String,
    headers: Vec<(String, String)>,
) -> Result<Callback> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    let has_host = rest.is_some_and(|rest| {
        !rest.is_empty()
            && !rest.starts_with('/')
            && !rest.starts_with('?')
            && !rest.starts_with('#')
    });
    if !has_host
        || url.len() > MAX_CALLBACK_URL_BYTES
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(format!(
            "{} must be an absolute http or https URL of at most {MAX_CALLBACK_URL_BYTES} bytes",
            url_field
        )));
    }
    for (name, value) in &headers {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            return Err(Error::invalid(format!(
                "{} has an invalid header name",
                headers_field
            )));
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED_CALLBACK_HEADERS.contains(&lower.as_str()) {
            return Err(Error::invalid(format!(
                "{}.{name} cannot be overridden",
                headers_field
            )));
        }
        // What an HTTP client can send: visible characters, spaces and tabs.
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(Error::invalid(format!(
                "{}.{name} must not contain control characters or line breaks",
                headers_field
            )));
        }
    }
    Ok(Callback { url, headers })
}

fn build_backoff(field: &str, input: BackoffInput) -> Result<RetryBackoff> {
    let kind = input.kind.ok_or_else(|| {
        Error::invalid(format!("{field}.type must be \"exponential\" or \"fixed\""))
    })?;
    if !(1..=MAX_TIMEOUT_SECONDS).contains(&input.delay_seconds) {
        return Err(Error::invalid(format!(
            "{field}.delaySeconds must be between 1 and {MAX_TIMEOUT_SECONDS}"
        )));
    }
    if input.max_delay_seconds != 0 && input.max_delay_seconds < input.delay_seconds {
        return Err(Error::invalid(format!(
            "{field}.maxDelaySeconds must not be less than delaySeconds"
        )));
    }
    Ok(RetryBackoff {
        kind,
        delay_seconds: input.delay_seconds,
        max_delay_seconds: input.max_delay_seconds,
    })
}

/// Checks that `text` is one JSON value within the size limit, without
/// building it.
pub fn check_json(field: &str, text: &str) -> Result<()> {
    if text.len() > MAX_JSON_BYTES {
        return Err(Error::invalid(format!(
            "{field} must be at most {MAX_JSON_BYTES} bytes"
        )));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|_| Error::invalid(format!("{field} must be valid JSON")))?;
    // Skipping a value is not recursive in serde_json, so its depth limit
    // does not apply here: count it.
    if nesting_depth(text) > MAX_JSON_DEPTH {
        return Err(Error::invalid(format!(
            "{field} must nest at most {MAX_JSON_DEPTH} levels deep"
        )));
    }
    Ok(())
}

/// The deepest nesting of arrays and objects in valid JSON text.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A job-name filter (poll, worker session): at most `MAX_NAME_FILTER`
/// names, each a valid job name.
pub fn check_name_filter(names: &[String]) -> Result<()> {
    if names.len() > MAX_NAME_FILTER {
        return Err(Error::invalid(format!(
            "names must list at most {MAX_NAME_FILTER} job names"
        )));
    }
    for (index, name) in names.iter().enumerate() {
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS {
            return Err(Error::invalid(format!(
                "names[{index}] must be 1 to {MAX_NAME_CHARS} characters"
            )));
        }
        check_text(&format!("names[{index}]"), name)?;
    }
    Ok(())
}

/// Progress: an object with `percent` 0..=100, an optional non-empty
/// `message`, an optional `subProgress` of such objects keyed by stage, and
/// any further fields the worker likes.
pub fn check_progress(text: &str) -> Result<()> {
    check_json("progress", text)?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| Error::invalid("progress must be valid JSON"))?;
    check_progress_object("", &value, true)?;
    if let Some(stages) = value.get("subProgress") {
        let stages = stages
            .as_object()
            .ok_or_else(|| Error::invalid("subProgress must be an object keyed by stage"))?;
        for (stage, entry) in stages {
            check_progress_object(&format!("subProgress.{stage}."), entry, false)?;
        }
    }
    Ok(())
}

fn check_progress_object(
    prefix: &str,
    value: &serde_json::Value,
    percent_required: bool,
) -> Result<()> {
    let object = value.as_object().ok_or_else(|| {
        Error::invalid(format!(
            "{}must be an object",
            if prefix.is_empty() {
                "progress "
            } else {
                prefix
            }
        ))
    })?;
    match object.get("percent") {
        None if percent_required => {
            return Err(Error::invalid(format!("{prefix}percent is required")));
        }
        None => {}
        Some(percent) => {
            let in_range = percent.as_f64().is_some_and(|p| (0.0..=100.0).contains(&p));
            if !in_range {
                return Err(Error::invalid(format!(
                    "{prefix}percent must be a number from 0 to 100"
                )));
            }
        }
    }
    if let Some(message) = object.get("message") {
        let non_empty = message.as_str().is_some_and(|m| !m.trim().is_empty());
        if !non_empty {
            return Err(Error::invalid(format!(
                "{prefix}message must be a non-empty string"
            )));
        }
    }
    Ok(())
}

pub fn check_error_text(error: &str) -> Result<()> {
    if error.len() > MAX_ERROR_BYTES {
        return Err(Error::invalid(format!(
            "error must be at most {MAX_ERROR_BYTES} bytes"
        )));
    }
    check_text("error", error)
}

/// Text that is stored as text: no NUL characters, which PostgreSQL cannot
/// store. Accepted, one would fail the whole write batch it landed in, and
/// with it other callers' writes; refused here, it fails only its request,
/// on either backend.
pub fn check_text(field: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(Error::invalid(format!(
            "{field} must not contain NUL characters"
        )));
    }
    Ok(())
}

pub fn build_log_lines(lines: Vec<(String, String)>) -> Result<Vec<LogLine>> {
    if lines.is_empty() {
        return Err(Error::invalid("lines must contain at least one line"));
    }
    if lines.len() > MAX_LOG_LINES_PER_REQUEST {
        return Err(Error::invalid(format!(
            "at most {MAX_LOG_LINES_PER_REQUEST} lines can be appended per request"
        )));
    }
    lines
        .into_iter()
        .enumerate()
        .map(|(index, (level, message))| {
            let level = if level.is_empty() {
                LogLevel::Info
            } else {
                LogLevel::parse(&level).ok_or_else(|| {
                    Error::invalid(format!(
                        "lines[{index}].level must be one of debug, info, warn, error"
                    ))
                })?
            };
            if message.len() > MAX_LOG_MESSAGE_BYTES {
                return Err(Error::invalid(format!(
                    "lines[{index}].message must be at most {MAX_LOG_MESSAGE_BYTES} bytes"
                )));
            }
            check_text(&format!("lines[{index}].message"), &message)?;
            Ok(LogLine { level, message })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str) -> JobInput {
        JobInput {
            name: name.into(),
            ..JobInput::default()
        }
    }

    fn build(inputs: Vec<JobInput>) -> Result<Vec<Job>> {
        build_jobs("S", inputs, 1_000, || "id".into()).map(|built| built.jobs)
    }

    fn message(inputs: Vec<JobInput>) -> String {
        build(inputs).unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_the_reference_service() {
        let job = build(vec![input("a")]).unwrap().remove(0);
        assert_eq!((job.max_retries, job.timeout_seconds), (3, 300));
        assert_eq!(
            job.state,
            crate::job::JobState::Pending {
                available_at: 1_000
            }
        );
    }

    #[test]
    fn errors_name_the_field_with_its_index() {
        assert_eq!(
            message(vec![input("a"), input("")]),
            "jobs[1].name is required"
        );
        let too_many = JobInput {
            max_retries: Some(26),
            ..input("a")
        };
        assert_eq!(
            message(vec![too_many]),
            "jobs[0].maxRetries must be between 0 and 25"
        );
        let no_time = JobInput {
            timeout_seconds: Some(0),
            ..input("a")
        };
        assert_eq!(
            message(vec![no_time]),
            "jobs[0].timeoutSeconds must be between 1 and 86400"
        );
        let bad_json = JobInput {
            payload: Some("{".into()),
            ..input("a")
        };
        assert_eq!(
            message(vec![bad_json]),
            "jobs[0].payload must be valid JSON"
        );
        let host = JobInput {
            callback_url: Some("https://x.test/h".into()),
            callback_headers: vec![("Host".into(), "evil".into())],
            ..input("a")
        };
        assert_eq!(
            message(vec![host]),
            "jobs[0].callbackHeaders.Host cannot be overridden"
        );
        let relative = JobInput {
            callback_url: Some("/hook".into()),
            ..input("a")
        };
        assert!(message(vec![relative]).starts_with("jobs[0].callbackUrl must be"));
        assert_eq!(message(vec![]), "at least one job is required");
    }

    #[test]
    fn past_schedules_create_pending_jobs() {
        let past = JobInput {
            scheduled_for: Some(10),
            ..input("a")
        };
        let future = JobInput {
            scheduled_for: Some(5_000),
            ..input("a")
        };
        let jobs = build(vec![past, future]).unwrap();
        assert_eq!(jobs[0].status(), crate::job::JobStatus::Pending);
        assert_eq!(
            jobs[1].state,
            crate::job::JobState::Scheduled { run_at: 5_000 }
        );
    }

    #[test]
    fn progress_needs_a_percent_in_range() {
        assert!(
            check_progress(
                r#"{"percent":65,"message":"Encoding","subProgress":{"dl":{"percent":100}}}"#
            )
            .is_ok()
        );
        assert!(check_progress(r#"{"percent":65,"step":"encoding","fps":30}"#).is_ok());
        assert_eq!(
            check_progress(r#"{"percent":101}"#)
                .unwrap_err()
                .to_string(),
            "percent must be a number from 0 to 100"
        );
        assert_eq!(
            check_progress(r#"{"message":"x"}"#)
                .unwrap_err()
                .to_string(),
            "percent is required"
        );
        assert_eq!(
            check_progress(r#"{"percent":1,"message":""}"#)
                .unwrap_err()
                .to_string(),
            "message must be a non-empty string"
        );
        assert!(check_progress(r#"{"percent":1,"subProgress":{"a":{"percent":-1}}}"#).is_err());
    }
}
