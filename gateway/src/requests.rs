//! The REST API's request bodies as types, deserialised with serde straight
//! from the request's bytes (JSON a client sends for a job, such as its
//! payload, is kept as the text it came as). The OpenAPI document's request
//! schemas are generated from these types.
//!
//! Errors name the field by its path, as `jobs[3].maxRetries must be an
//! integer`: every value type below says what it expects in the words the
//! error uses, and `Body` puts the path in front. Numbers out of range
//! saturate, so the core's range check reports them with the documented
//! bounds. JSON `null` reads as a field left out, except where `Present`
//! marks that null means something (`"push": null` removes push).

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use chrono::DateTime;
use emit_proto::v1 as pb;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ApiError;

// ---- Reading a body ---------------------------------------------------------

/// A request body: a JSON object read as `T`. An empty body, or `null`,
/// reads as `{}` so optional bodies may be left out.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(request, state).await?;
        read(&bytes, "").map(Self)
    }
}

/// A body's bytes, for bodies read in more than one way.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        body_bytes(request, state).await.map(Self)
    }
}

/// The body's bytes, with the size limit's refusal as a JSON error.
async fn body_bytes<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| match rejection {
            BytesRejection::FailedToBufferBody(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body exceeds {} bytes", crate::MAX_BODY_BYTES),
                )
            }
            other => ApiError::new(other.status(), other.body_text()),
        })
}

/// Reads `bytes`, a JSON object, as a `T`; `prefix` names the body in
/// errors (empty: `request body`).
pub fn read<T: DeserializeOwned>(bytes: &[u8], prefix: &str) -> Result<T, ApiError> {
    read_value::<Obj<T>>(bytes, prefix).map(|Obj(value)| value)
}

/// Reads `bytes` as any `T` (the create's array of jobs too).
fn read_value<T: DeserializeOwned>(bytes: &[u8], prefix: &str) -> Result<T, ApiError> {
    let text = trim(bytes);
    let text: &[u8] = if text.is_empty() || text == b"null" {
        b"{}"
    } else {
        bytes
    };
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| explain(&error, prefix))?;
    deserializer
        .end()
        .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))?;
    Ok(value)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace());
    match (start, end) {
        (Some(start), Some(end)) => &bytes[start..=end],
        _ => &[],
    }
}

/// serde's error as the API words it: `{path} must be ...`, `{path}.{field}
/// is required`, or the parser's own message for JSON that does not parse.
fn explain(error: &serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> ApiError {
    let inner = error.inner();
    if !inner.is_data() {
        return ApiError::bad_request(format!("invalid JSON body: {inner}"));
    }
    let mut path = prefix.to_owned();
    for segment in error.path().iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            _ => {}
        }
    }
    let message = inner.to_string();
    // A data error from the slice parser ends with where it was found.
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(message, _)| message);
    let named = |field: &str| match path.as_str() {
        "" => field.to_owned(),
        path => format!("{path}.{field}"),
    };
    let whole = if path.is_empty() {
        "request body".to_owned()
    } else {
        path.clone()
    };
    let text = if let Some(field) = backticked(message, "missing field `") {
        format!("{} is required", named(field))
    } else if let Some(field) = backticked(message, "duplicate field `") {
        format!("{} is given twice", named(field))
    } else if let Some((_, expected)) = message.rsplit_once(", expected ") {
        format!("{whole} must be {expected}")
    } else {
        format!("{whole} {message}")
    };
    ApiError::bad_request(text)
}

fn backticked<'a>(message: &'a str, opening: &str) -> Option<&'a str> {
    message.strip_prefix(opening)?.split('`').next()
}

// ---- Values -----------------------------------------------------------------

/// A count or a number of seconds: any JSON integer; one past `u32` reads
/// as `u32::MAX` (a negative one too), so the core's range check answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Int(pub u32);

fixed_schema!(Int, "Int", { "type": "integer" });

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Seen;
        impl Visitor<'_> for Seen {
            type Value = Int;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("an integer")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Int, E> {
                Ok(Int(u32::try_from(value).unwrap_or(u32::MAX)))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Int, E> {
                Ok(Int(u32::try_from(value).unwrap_or(u32::MAX)))
            }
        }
        deserializer.deserialize_u64(Seen)
    }
}

/// A signed integer (a priority); out of `i32` it saturates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SignedInt(pub i32);

fixed_schema!(SignedInt, "SignedInt", { "type": "integer" });

impl<'de> Deserialize<'de> for SignedInt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Seen;
        impl Visitor<'_> for Seen {
            type Value = SignedInt;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("an integer")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<SignedInt, E> {
                Ok(SignedInt(i32::try_from(value).unwrap_or(i32::MAX)))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<SignedInt, E> {
                let clamped = value.clamp(i64::from(i32::MIN), i64::from(i32::MAX));
                Ok(SignedInt(clamped as i32))
            }
        }
        deserializer.deserialize_i64(Seen)
    }
}

/// Seconds that may be large (a retention age): a whole number of at
/// least 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Seconds(pub u64);

fixed_schema!(Seconds, "Seconds", { "type": "integer", "minimum": 0 });

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Seen;
        impl Visitor<'_> for Seen {
            type Value = Seconds;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a whole number of at least 0")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Seconds, E> {
                Ok(Seconds(value))
            }
        }
        deserializer.deserialize_u64(Seen)
    }
}

/// A concurrency limit by name: a whole number that fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Limit(pub u32);

fixed_schema!(Limit, "Limit", { "type": "integer", "minimum": 0 });

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Seen;
        impl Visitor<'_> for Seen {
            type Value = Limit;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a whole number")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Limit, E> {
                u32::try_from(value)
                    .map(Limit)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(value), &self))
            }
        }
        deserializer.deserialize_u64(Seen)
    }
}

/// An RFC 3339 instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instant(pub prost_types::Timestamp);

fixed_schema!(Instant, "Instant", { "type": "string", "format": "date-time" });

impl<'de> Deserialize<'de> for Instant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_timestamp(&text)
            .map(Instant)
            .ok_or_else(|| de::Error::custom("must be an ISO 8601 timestamp"))
    }
}

impl Serialize for Instant {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let at = DateTime::from_timestamp(self.0.seconds, self.0.nanos.max(0) as u32);
        at.map(|at| at.to_rfc3339()).serialize(serializer)
    }
}

/// An RFC 3339 instant from text (a query parameter or a body field).
pub fn parse_timestamp(text: &str) -> Option<prost_types::Timestamp> {
    let at = DateTime::parse_from_rfc3339(text).ok()?;
    Some(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

/// A JSON object read as `T`. serde's derived structs also take an array
/// of their fields in order; the API takes objects only.
#[derive(Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Obj<T>(pub T);

impl<T: JsonSchema> JsonSchema for Obj<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Seen<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Seen<T> {
            type Value = Obj<T>;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        deserializer.deserialize_map(Seen(PhantomData))
    }
}

/// Any JSON, kept as the text the client sent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AnyJson(pub Box<RawValue>);

fixed_schema!(AnyJson, "AnyJson", { "description": "Any JSON value." });

impl AnyJson {
    pub fn text(self) -> String {
        Box::<str>::from(self.0).into_string()
    }
}

impl PartialEq for AnyJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// An object of string values (headers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TextMap(pub HashMap<String, String>);

fixed_schema!(TextMap, "TextMap", { "type": "object", "additionalProperties": { "type": "string" } });

impl<'de> Deserialize<'de> for TextMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(Entries::<String>::expecting("an object"))
            .map(TextMap)
    }
}

/// Reads a JSON object's entries, saying `expecting` of anything else.
struct Entries<V> {
    expecting: &'static str,
    values: PhantomData<V>,
}

impl<V> Entries<V> {
    fn expecting(expecting: &'static str) -> Self {
        Self {
            expecting,
            values: PhantomData,
        }
    }
}

impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
    type Value = HashMap<String, V>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str(self.expecting)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = HashMap::new();
        while let Some((key, value)) = map.next_entry::<String, V>()? {
            entries.insert(key, value);
        }
        Ok(entries)
    }
}

/// Job names: one string, or an array of strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Names(pub Vec<String>);

fixed_schema!(Names, "Names", {
    "anyOf": [{ "type": "string" }, { "type": "array", "items": { "type": "string" } }]
});

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Seen;
        impl<'de> Visitor<'de> for Seen {
            type Value = Names;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Names, E> {
                Ok(Names(vec![name.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Names, A::Error> {
                let mut names = Vec::new();
                while let Some(item) = items.next_element::<serde_json::Value>()? {
                    match item {
                        serde_json::Value::String(name) => names.push(name),
                        _ => return Err(de::Error::custom("must contain only strings")),
                    }
                }
                Ok(Names(names))
            }
        }
        deserializer.deserialize_any(Seen)
    }
}

/// A field where JSON `null` means something (remove, back to the
/// default): absent is `None`, null is `Some(Present::Null)`.
#[derive(Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Present<T> {
    Null,
    Value(T),
}

impl<T: JsonSchema> JsonSchema for Present<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        <Option<T>>::schema_name()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        <Option<T>>::json_schema(generator)
    }
}

/// `deserialize_with` for `Option<Present<T>>` fields (with `default`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Present<T>>, D::Error> {
    let value = Option::<T>::deserialize(deserializer)?;
    Ok(Some(value.map_or(Present::Null, Present::Value)))
}

// ---- Bodies -----------------------------------------------------------------

/// One job to create (or a schedule's template). Only `name` is required
/// (the core says so when it is missing).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct JobSpecBody {
    pub name: Option<String>,
    /// Any JSON; handed to the worker as sent.
    pub payload: Option<AnyJson>,
    pub max_retries: Option<Int>,
    pub timeout_seconds: Option<Int>,
    /// RFC 3339: the job waits, scheduled, until then.
    pub scheduled_for: Option<Instant>,
    pub callback_url: Option<String>,
    pub callback_headers: Option<TextMap>,
    pub retry_backoff: Option<Obj<RetryBackoffBody>>,
    /// -1000 to 1000; higher is handed out first.
    pub priority: Option<SignedInt>,
    pub idempotency_key: Option<String>,
    pub idempotency_window_seconds: Option<Int>,
    pub concurrency_key: Option<String>,
    pub concurrency_limit: Option<Int>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct RetryBackoffBody {
    /// `fixed` or `exponential`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub delay_seconds: Option<Int>,
    pub max_delay_seconds: Option<Int>,
}

impl From<JobSpecBody> for pb::JobSpec {
    fn from(job: JobSpecBody) -> Self {
        let retry_backoff = job.retry_backoff.map(|Obj(backoff)| {
            let kind = match backoff.kind.as_deref() {
                Some("fixed") => pb::BackoffKind::Fixed,
                Some("exponential") => pb::BackoffKind::Exponential,
                _ => pb::BackoffKind::Unspecified,
            };
            pb::RetryBackoff {
                kind: kind as i32,
                delay_seconds: backoff.delay_seconds.map_or(0, |Int(n)| n),
                max_delay_seconds: backoff.max_delay_seconds.map_or(0, |Int(n)| n),
            }
        });
        Self {
            name: job.name.unwrap_or_default(),
            payload_json: job.payload.map(AnyJson::text),
            max_retries: job.max_retries.map(|Int(n)| n),
            timeout_seconds: job.timeout_seconds.map(|Int(n)| n),
            scheduled_for: job.scheduled_for.map(|Instant(at)| at),
            callback_url: job.callback_url,
            callback_headers: job.callback_headers.unwrap_or_default().0,
            retry_backoff,
            priority: job.priority.map(|SignedInt(n)| n),
            idempotency_key: job.idempotency_key,
            idempotency_window_seconds: job.idempotency_window_seconds.map(|Int(n)| n),
            concurrency_key: job.concurrency_key,
            concurrency_limit: job.concurrency_limit.map(|Int(n)| n),
        }
    }
}

/// A create: one job object, or an array of them (answered in kind).
#[derive(Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum CreateJobsBody {
    One(Box<JobSpecBody>),
    Many(Vec<JobSpecBody>),
}

impl CreateJobsBody {
    /// Reads a create; which shape it is, is told by its first byte, so
    /// each shape's errors name the job (`jobs[0]`, `jobs[3]`).
    pub fn read(bytes: &[u8]) -> Result<Self, ApiError> {
        let text = trim(bytes);
        match text.first() {
            Some(b'[') => read_value::<Vec<Obj<JobSpecBody>>>(text, "jobs")
                .map(|jobs| Self::Many(jobs.into_iter().map(|Obj(job)| job).collect())),
            Some(b'{') => read(text, "jobs[0]").map(Self::One),
            first => {
                if first.is_some() {
                    serde_json::from_slice::<de::IgnoredAny>(text).map_err(|error| {
                        ApiError::bad_request(format!("invalid JSON body: {error}"))
                    })?;
                }
                Err(ApiError::bad_request(
                    "request body must be a job object or an array of job objects",
                ))
            }
        }
    }
}

/// A schedule's settings; on a change, only the fields sent change.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct ScheduleBody {
    pub cron: Option<String>,
    /// An IANA zone; UTC when left out.
    pub time_zone: Option<String>,
    pub job: Option<Obj<JobSpecBody>>,
    /// `allow` or `skip`.
    pub overlap: Option<String>,
    /// `none`, `one` or `all`.
    pub catch_up: Option<String>,
    pub catch_up_limit: Option<Int>,
    pub paused: Option<bool>,
}

impl TryFrom<ScheduleBody> for pb::ScheduleSettings {
    type Error = ApiError;

    fn try_from(body: ScheduleBody) -> Result<Self, ApiError> {
        let overlap = match body.overlap.as_deref() {
            None => pb::ScheduleOverlap::Unspecified,
            Some("allow") => pb::ScheduleOverlap::Allow,
            Some("skip") => pb::ScheduleOverlap::Skip,
            Some(_) => return Err(ApiError::bad_request("overlap must be allow or skip")),
        };
        let catch_up = match body.catch_up.as_deref() {
            None => pb::ScheduleCatchUp::Unspecified,
            Some("none") => pb::ScheduleCatchUp::None,
            Some("one") => pb::ScheduleCatchUp::One,
            Some("all") => pb::ScheduleCatchUp::All,
            Some(_) => return Err(ApiError::bad_request("catchUp must be none, one or all")),
        };
        Ok(Self {
            cron: body.cron,
            time_zone: body.time_zone,
            job: body.job.map(|Obj(job)| job.into()),
            overlap: overlap as i32,
            catch_up: catch_up as i32,
            catch_up_limit: body.catch_up_limit.map(|Int(n)| n),
            paused: body.paused,
        })
    }
}

/// A space change; `null` removes `push`, `slack` or `concurrency`, and a
/// retention age of `null` goes back to the server's.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct SpaceSettingsBody {
    pub anonymous_progress_streams: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub push: Option<Present<Obj<PushBody>>>,
    #[serde(default, deserialize_with = "present")]
    pub slack: Option<Present<Obj<SlackBody>>>,
    pub retention: Option<Obj<RetentionBody>>,
    #[serde(default, deserialize_with = "present")]
    pub concurrency: Option<Present<Obj<ConcurrencyBody>>>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(expecting = "a JSON object")]
pub struct PushBody {
    pub url: Option<String>,
    pub names: Option<Names>,
    pub headers: Option<TextMap>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(expecting = "a JSON object")]
pub struct SlackBody {
    pub url: Option<String>,
    pub events: Option<Names>,
}

/// Seconds per finished status: 0 keeps forever, `null` is the server's
/// age, a status left out stays as it is.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(expecting = "a JSON object")]
pub struct RetentionBody {
    #[serde(default, deserialize_with = "present")]
    pub completed: Option<Present<Seconds>>,
    #[serde(default, deserialize_with = "present")]
    pub dead: Option<Present<Seconds>>,
    #[serde(default, deserialize_with = "present")]
    pub killed: Option<Present<Seconds>>,
}

impl From<RetentionBody> for pb::RetentionChange {
    fn from(retention: RetentionBody) -> Self {
        let age = |age: Option<Present<Seconds>>| {
            age.map(|age| pb::RetentionAge {
                age: Some(match age {
                    Present::Null => pb::retention_age::Age::ServerDefault(true),
                    Present::Value(Seconds(seconds)) => pb::retention_age::Age::Seconds(seconds),
                }),
            })
        };
        Self {
            completed: age(retention.completed),
            dead: age(retention.dead),
            killed: age(retention.killed),
        }
    }
}

/// `{"default": N, "names": {"report": N}, "rates": {"report": {"limit",
/// "periodSeconds", "perKey"}}}`: a space's flow limits.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(expecting = "a JSON object")]
pub struct ConcurrencyBody {
    pub default: Option<Int>,
    pub names: Option<NamedLimits>,
    pub rates: Option<NamedRates>,
}

#[derive(Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct NamedLimits(pub HashMap<String, Limit>);

impl<'de> Deserialize<'de> for NamedLimits {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(Entries::expecting("an object of job names to limits"))
            .map(NamedLimits)
    }
}

#[derive(Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct NamedRates(pub HashMap<String, Obj<RateBody>>);

impl<'de> Deserialize<'de> for NamedRates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(Entries::expecting("an object of job names to rate limits"))
            .map(NamedRates)
    }
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct RateBody {
    pub limit: Option<Int>,
    pub period_seconds: Option<Int>,
    pub per_key: Option<bool>,
}

impl TryFrom<ConcurrencyBody> for pb::ConcurrencyLimits {
    type Error = ApiError;

    fn try_from(body: ConcurrencyBody) -> Result<Self, ApiError> {
        let names = body.names.unwrap_or_default().0;
        let mut rates = HashMap::new();
        for (name, Obj(rate)) in body.rates.unwrap_or_default().0 {
            let required = |field: &str, value: Option<Int>| {
                value.map(|Int(n)| n).ok_or_else(|| {
                    ApiError::bad_request(format!("concurrency.rates.{name}.{field} is required"))
                })
            };
            let rate = pb::RateLimit {
                limit: required("limit", rate.limit)?,
                period_seconds: required("periodSeconds", rate.period_seconds)?,
                per_key: rate.per_key.unwrap_or(false),
            };
            rates.insert(name, rate);
        }
        Ok(Self {
            default_limit: body.default.map(|Int(n)| n),
            names: names
                .into_iter()
                .map(|(name, Limit(n))| (name, n))
                .collect(),
            rates,
        })
    }
}

/// An optional name: a new space's, or the job name a pause is for.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(expecting = "a JSON object")]
pub struct NameBody {
    pub name: Option<String>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(expecting = "a JSON object")]
pub struct TokenBody {
    pub name: Option<String>,
    /// Scopes or shorthands; a single string is one scope.
    pub scopes: Option<Names>,
}

/// A poll. The job names may be given as `types`, `type`, `names` or
/// `name`, in that order of precedence; all names when none is.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct PollBody {
    pub types: Option<Names>,
    #[serde(rename = "type")]
    pub kind: Option<Names>,
    pub names: Option<Names>,
    pub name: Option<Names>,
    pub count: Option<Int>,
    pub wait_seconds: Option<Int>,
}

impl PollBody {
    pub fn names(&mut self) -> Vec<String> {
        [
            &mut self.types,
            &mut self.kind,
            &mut self.names,
            &mut self.name,
        ]
        .into_iter()
        .find_map(Option::take)
        .unwrap_or_default()
        .0
    }
}

/// The fence of a worker call: the delivery the worker holds.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct FenceBody {
    pub attempt_number: Option<Int>,
    pub lease_id: Option<String>,
}

impl FenceBody {
    pub fn fence(self) -> Option<pb::Fence> {
        fence(self.attempt_number, self.lease_id)
    }
}

/// The fence a body's `attemptNumber` and `leaseId` make, if it has either.
pub fn fence(attempt_number: Option<Int>, lease_id: Option<String>) -> Option<pb::Fence> {
    let attempt_number = attempt_number.map(|Int(n)| n);
    (attempt_number.is_some() || lease_id.is_some()).then_some(pb::Fence {
        attempt_number,
        lease_id,
    })
}

// The fencing fields are written out in each body rather than flattened:
// serde's `flatten` buffers values, which loses a number's exact digits
// and cannot hold raw JSON.

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct CompleteBody {
    pub attempt_number: Option<Int>,
    pub lease_id: Option<String>,
    pub result: Option<AnyJson>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct FailBody {
    pub attempt_number: Option<Int>,
    pub lease_id: Option<String>,
    /// A string, or structured JSON kept as its text.
    pub error: Option<AnyJson>,
}

/// Progress, a checkpoint or a custom event: any JSON object; beside a
/// fence, a checkpoint's or event's data goes in `data`.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct FreeDataBody {
    pub attempt_number: Option<Int>,
    pub lease_id: Option<String>,
    pub data: Option<AnyJson>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(expecting = "a JSON object")]
pub struct KillBody {
    pub reason: Option<String>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(expecting = "a JSON object")]
pub struct LogsBody {
    pub lines: Option<LogLines>,
}

#[derive(Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct LogLines(pub Vec<Obj<LogLineBody>>);

impl<'de> Deserialize<'de> for LogLines {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Seen;
        impl<'de> Visitor<'de> for Seen {
            type Value = LogLines;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("an array of {level, message} objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<LogLines, A::Error> {
                let mut lines = Vec::new();
                while let Some(line) = items.next_element()? {
                    lines.push(line);
                }
                Ok(LogLines(lines))
            }
        }
        deserializer.deserialize_seq(Seen)
    }
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(expecting = "a JSON object")]
pub struct LogLineBody {
    pub level: Option<String>,
    pub message: Option<String>,
}

impl LogsBody {
    pub fn lines(self) -> Result<Vec<pb::LogLine>, ApiError> {
        let Some(LogLines(lines)) = self.lines else {
            return Err(ApiError::bad_request(
                "lines must be an array of {level, message} objects",
            ));
        };
        lines
            .into_iter()
            .enumerate()
            .map(|(index, Obj(line))| {
                Ok(pb::LogLine {
                    level: line.level.unwrap_or_default(),
                    message: line.message.ok_or_else(|| {
                        ApiError::bad_request(format!("lines[{index}].message is required"))
                    })?,
                })
            })
            .collect()
    }
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct BulkBody {
    /// `retry`, `kill` or `delete`.
    pub action: Option<String>,
    pub filter: Option<Obj<BulkFilterBody>>,
    pub dry_run: Option<bool>,
    pub limit: Option<Int>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", expecting = "a JSON object")]
pub struct BulkFilterBody {
    pub status: Option<String>,
    pub name: Option<String>,
    pub created_after: Option<Instant>,
    pub created_before: Option<Instant>,
}

/// The dashboard's sign-in: the key buys a session.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(expecting = "a JSON object")]
pub struct SignInBody {
    pub key: Option<String>,
}

// ---- Small readers ------------------------------------------------------------

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

fn parse_status(text: &str) -> Option<pb::JobStatus> {
    let status =
        pb::JobStatus::from_str_name(&format!("JOB_STATUS_{}", text.to_ascii_uppercase()))?;
    (status != pb::JobStatus::Unspecified).then_some(status)
}

/// An RFC 3339 instant from a query parameter, named `field` in the error.
pub fn timestamp_param(field: &str, text: &str) -> Result<prost_types::Timestamp, ApiError> {
    parse_timestamp(text)
        .ok_or_else(|| ApiError::bad_request(format!("{field} must be an ISO 8601 timestamp")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error<T: DeserializeOwned + std::fmt::Debug>(body: &str, prefix: &str) -> String {
        let error = read::<T>(body.as_bytes(), prefix).expect_err(body);
        error.message().to_owned()
    }

    #[test]
    fn errors_name_the_field_by_its_path_in_the_words_of_the_api() {
        let create = |body: &str| match CreateJobsBody::read(body.as_bytes()) {
            Err(error) => error.message().to_owned(),
            Ok(read) => panic!("{body} read as {read:?}"),
        };
        let cases = [
            (
                r#"{"maxRetries": "3"}"#,
                "jobs[0].maxRetries must be an integer",
            ),
            (
                r#"[{}, {"priority": 1.5}]"#,
                "jobs[1].priority must be an integer",
            ),
            (r#"[{}, 7]"#, "jobs[1] must be a JSON object"),
            (r#"{"name": 5}"#, "jobs[0].name must be a string"),
            (
                r#"{"scheduledFor": "soon"}"#,
                "jobs[0].scheduledFor must be an ISO 8601 timestamp",
            ),
            (
                r#"{"callbackHeaders": {"A": 1}}"#,
                "jobs[0].callbackHeaders.A must be a string",
            ),
            (
                r#"{"callbackHeaders": []}"#,
                "jobs[0].callbackHeaders must be an object",
            ),
            (
                r#"{"retryBackoff": 3}"#,
                "jobs[0].retryBackoff must be a JSON object",
            ),
            (
                r#"{"retryBackoff": {"type": 1}}"#,
                "jobs[0].retryBackoff.type must be a string",
            ),
            (
                "7",
                "request body must be a job object or an array of job objects",
            ),
            (
                "",
                "request body must be a job object or an array of job objects",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(create(body), expected, "{body}");
        }
        assert!(create("{\"name\": ").starts_with("invalid JSON body: "));
        assert_eq!(
            error::<NameBody>("[1]", ""),
            "request body must be a JSON object"
        );
        assert_eq!(
            error::<PollBody>(r#"{"names": ["a", 2]}"#, ""),
            "names must contain only strings"
        );
        assert_eq!(
            error::<PollBody>(r#"{"types": 5}"#, ""),
            "types must be a string or an array of strings"
        );
        assert_eq!(
            error::<SpaceSettingsBody>(r#"{"retention": {"dead": -1}}"#, ""),
            "retention.dead must be a whole number of at least 0"
        );
        assert_eq!(
            error::<SpaceSettingsBody>(r#"{"concurrency": {"names": []}}"#, ""),
            "concurrency.names must be an object of job names to limits"
        );
        assert_eq!(
            error::<SpaceSettingsBody>(r#"{"concurrency": {"names": {"report": 1e3}}}"#, ""),
            "concurrency.names.report must be a whole number"
        );
        assert_eq!(
            error::<SpaceSettingsBody>(r#"{"concurrency": {"rates": {"report": 1}}}"#, ""),
            "concurrency.rates.report must be a JSON object"
        );
        assert_eq!(
            error::<SpaceSettingsBody>(r#"{"anonymousProgressStreams": "yes"}"#, ""),
            "anonymousProgressStreams must be a boolean"
        );
        assert_eq!(
            error::<FenceBody>(r#"{"attemptNumber": "1"}"#, ""),
            "attemptNumber must be an integer"
        );
    }

    #[test]
    fn numbers_out_of_range_saturate_for_the_core_to_refuse_with_its_bounds() {
        let job: JobSpecBody = read(
            br#"{"maxRetries": 99999999999, "timeoutSeconds": -1, "priority": -5000000000}"#,
            "",
        )
        .unwrap();
        let spec = pb::JobSpec::from(job);
        assert_eq!(spec.max_retries, Some(u32::MAX));
        assert_eq!(spec.timeout_seconds, Some(u32::MAX));
        assert_eq!(spec.priority, Some(i32::MIN));
    }

    #[test]
    fn null_is_left_out_except_where_it_means_something() {
        let job: JobSpecBody = read(br#"{"name": null, "maxRetries": null}"#, "").unwrap();
        assert_eq!(job, JobSpecBody::default());
        let settings: SpaceSettingsBody = read(
            br#"{"push": null, "retention": {"killed": null, "dead": 0}}"#,
            "",
        )
        .unwrap();
        assert_eq!(settings.push, Some(Present::Null));
        assert_eq!(settings.slack, None);
        let retention = pb::RetentionChange::from(settings.retention.unwrap().0);
        assert_eq!(retention.completed, None);
        assert_eq!(
            retention.killed.and_then(|age| age.age),
            Some(pb::retention_age::Age::ServerDefault(true))
        );
        assert_eq!(
            retention.dead.and_then(|age| age.age),
            Some(pb::retention_age::Age::Seconds(0))
        );
        // An empty body, or `null`, is an empty object.
        assert_eq!(read::<KillBody>(b"  ", "").unwrap(), KillBody::default());
        assert_eq!(read::<KillBody>(b"null", "").unwrap(), KillBody::default());
    }

    /// Every field of a job reaches the core's message, and JSON the
    /// client sent goes through as the text it sent.
    #[test]
    fn a_full_job_reaches_the_core_whole() {
        let body = br#"{"name": "report", "payload": {"b": 1.50, "a": [1]}, "maxRetries": 2,
            "timeoutSeconds": 30, "scheduledFor": "2030-01-01T00:00:00Z",
            "callbackUrl": "https://example.com/hook", "callbackHeaders": {"x-a": "b"},
            "retryBackoff": {"type": "fixed", "delaySeconds": 5, "maxDelaySeconds": 60},
            "priority": 7, "idempotencyKey": "k", "idempotencyWindowSeconds": 60,
            "concurrencyKey": "tenant", "concurrencyLimit": 3}"#;
        let CreateJobsBody::One(job) = CreateJobsBody::read(body).unwrap() else {
            panic!("one job");
        };
        let spec = pb::JobSpec::from(*job);
        let backoff = spec.retry_backoff.unwrap();
        assert_eq!(spec.name, "report");
        assert_eq!(
            spec.payload_json.as_deref(),
            Some(r#"{"b": 1.50, "a": [1]}"#)
        );
        assert_eq!(spec.max_retries, Some(2));
        assert_eq!(spec.timeout_seconds, Some(30));
        assert_eq!(spec.scheduled_for.map(|at| at.seconds), Some(1_893_456_000));
        assert!(spec.callback_url.is_some());
        assert_eq!(spec.callback_headers.len(), 1);
        assert_eq!(backoff.kind, pb::BackoffKind::Fixed as i32);
        assert_eq!((backoff.delay_seconds, backoff.max_delay_seconds), (5, 60));
        assert_eq!(spec.priority, Some(7));
        assert!(spec.idempotency_key.is_some());
        assert_eq!(spec.idempotency_window_seconds, Some(60));
        assert!(spec.concurrency_key.is_some());
        assert_eq!(spec.concurrency_limit, Some(3));
    }

    #[test]
    fn a_poll_takes_its_names_by_precedence() {
        let mut poll: PollBody =
            read(br#"{"name": "d", "names": ["c"], "type": "b"}"#, "").unwrap();
        assert_eq!(poll.names(), ["b"]);
        let mut poll: PollBody = read(br#"{}"#, "").unwrap();
        assert!(poll.names().is_empty());
    }
}
