//! The REST API's OpenAPI 3.1 document, served at `/api/v1/openapi.json`.
//! Response schemas are generated from the types the handlers answer with
//! (`resources.rs`), request schemas from the types they read (`requests.rs`), and
//! this module lists the operations. Built once, on first request.

use std::sync::OnceLock;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use crate::CoreClient;
use crate::requests::{
    BulkBody, CompleteBody, CreateJobsBody, FailBody, FenceBody, FreeDataBody, KillBody, LogsBody,
    NameBody, PollBody, ScheduleBody, SpaceSettingsBody, TokenBody,
};
use crate::resources::{
    BulkOutcome, ConcurrencyUsage, Created, DeletedJob, DeletedSchedule, Deliveries, Delivery,
    ErrorBody, Health, Job, JobDetail, JobWithEvents, LogPage, LogsAppended, NewToken, Progress,
    Schedule, Space, Token, WebhookSecret,
};

pub const PATH: &str = "/api/v1/openapi.json";

pub fn router() -> Router<CoreClient> {
    Router::new().route(PATH, get(serve))
}

async fn serve() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(|| document().to_string());
    ([(header::CONTENT_TYPE, "application/json")], text.as_str()).into_response()
}

type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

fn of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// One operation: its route as axum writes it, what it reads and what it
/// answers on success (no schema: no body). Every operation may also
/// answer an `{"error": "..."}` body.
struct Operation {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: &'static [(&'static str, &'static str)],
    request: Option<SchemaOf>,
    status: u16,
    response: Option<SchemaOf>,
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    status: u16,
    response: Option<SchemaOf>,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        query: &[],
        request: None,
        status,
        response,
    }
}

impl Operation {
    const fn reads(mut self, request: SchemaOf) -> Self {
        self.request = Some(request);
        self
    }

    const fn query(mut self, query: &'static [(&'static str, &'static str)]) -> Self {
        self.query = query;
        self
    }
}

const JOB_LIST_QUERY: &[(&str, &str)] = &[
    ("status", "Only jobs in this status."),
    ("name", "Only jobs of this name."),
    ("limit", "Most jobs answered."),
    ("offset", "Jobs skipped first."),
    ("createdAfter", "RFC 3339 instant."),
    ("createdBefore", "RFC 3339 instant."),
    ("beforeId", "Keyset cursor: jobs older than this one."),
    ("scheduleId", "Only jobs this schedule made."),
    ("include", "`progress` adds each job's latest progress."),
];
const LOG_QUERY: &[(&str, &str)] = &[
    ("after", "Lines after this sequence number."),
    (
        "before",
        "Lines before this sequence number, newest page first.",
    ),
    ("level", "Only lines of this level."),
    ("q", "Only lines containing this text."),
    ("limit", "Most lines answered."),
];
const NEXT_QUERY: &[(&str, &str)] = &[("next", "How many coming fire times to list.")];
const STREAM_QUERY: &[(&str, &str)] = &[
    ("token", "A key, for clients that cannot set headers."),
    ("since", "Resume after this sequence number."),
    (
        "streamInstanceId",
        "The stream instance `since` belongs to.",
    ),
];

const JOBS: &str = "/api/v1/spaces/{space_id}/jobs";
const JOB: &str = "/api/v1/jobs/{job_id}";
const SPACE: &str = "/api/v1/spaces/{space_id}";
const SCHEDULES: &str = "/api/v1/spaces/{space_id}/schedules";
const SCHEDULE: &str = "/api/v1/spaces/{space_id}/schedules/{schedule_id}";

const OPERATIONS: &[Operation] = &[
    op(
        "get",
        "/healthz",
        "Whether the core serves",
        200,
        Some(of::<Health>),
    ),
    op(
        "get",
        "/api/v1/spaces",
        "List spaces",
        200,
        Some(of::<Vec<Space>>),
    ),
    op(
        "post",
        "/api/v1/spaces",
        "Create a space",
        201,
        Some(of::<Space>),
    )
    .reads(of::<NameBody>),
    op("get", SPACE, "Get a space", 200, Some(of::<Space>)),
    op(
        "patch",
        SPACE,
        "Change a space's settings",
        200,
        Some(of::<Space>),
    )
    .reads(of::<SpaceSettingsBody>),
    op(
        "post",
        "/api/v1/spaces/{space_id}/public-token",
        "Issue a new public token",
        200,
        Some(of::<Space>),
    ),
    op(
        "post",
        "/api/v1/spaces/{space_id}/webhook-secret",
        "Issue a new webhook signing secret",
        201,
        Some(of::<WebhookSecret>),
    ),
    op(
        "delete",
        "/api/v1/spaces/{space_id}/webhook-secret",
        "Stop signing webhooks",
        204,
        None,
    ),
    op(
        "post",
        "/api/v1/spaces/{space_id}/pause",
        "Pause dispatch of the space or one job name",
        200,
        Some(of::<Space>),
    )
    .reads(of::<NameBody>),
    op(
        "post",
        "/api/v1/spaces/{space_id}/resume",
        "Resume dispatch",
        200,
        Some(of::<Space>),
    )
    .reads(of::<NameBody>),
    op(
        "get",
        "/api/v1/spaces/{space_id}/tokens",
        "List keys",
        200,
        Some(of::<Vec<Token>>),
    ),
    op(
        "post",
        "/api/v1/spaces/{space_id}/tokens",
        "Create a key",
        201,
        Some(of::<NewToken>),
    )
    .reads(of::<TokenBody>),
    op(
        "delete",
        "/api/v1/spaces/{space_id}/tokens/{token_id}",
        "Revoke a key",
        204,
        None,
    ),
    op(
        "post",
        JOBS,
        "Create one job or many",
        201,
        Some(of::<Created>),
    )
    .reads(of::<CreateJobsBody>),
    op("get", JOBS, "List jobs", 200, Some(of::<Vec<Job>>)).query(JOB_LIST_QUERY),
    op(
        "post",
        "/api/v1/spaces/{space_id}/jobs/bulk",
        "Retry, kill or delete the jobs a filter matches",
        200,
        Some(of::<BulkOutcome>),
    )
    .reads(of::<BulkBody>),
    op(
        "get",
        "/api/v1/spaces/{space_id}/concurrency",
        "Flow limits and what is in use",
        200,
        Some(of::<ConcurrencyUsage>),
    )
    .query(&[("keys", "Comma-separated concurrency keys to show.")]),
    op(
        "get",
        JOB,
        "Get a job and its events",
        200,
        Some(of::<JobWithEvents>),
    ),
    op(
        "delete",
        JOB,
        "Delete a finished job",
        200,
        Some(of::<DeletedJob>),
    ),
    op(
        "get",
        "/api/v1/jobs/{job_id}/progress",
        "A job's latest progress",
        200,
        Some(of::<Progress>),
    ),
    op(
        "post",
        "/api/v1/jobs/{job_id}/progress",
        "Report progress (any JSON object)",
        200,
        Some(of::<JobDetail>),
    )
    .reads(of::<FreeDataBody>),
    op(
        "get",
        "/api/v1/jobs/{job_id}/logs",
        "Read a job's log",
        200,
        Some(of::<LogPage>),
    )
    .query(LOG_QUERY),
    op(
        "post",
        "/api/v1/jobs/{job_id}/logs",
        "Append log lines",
        201,
        Some(of::<LogsAppended>),
    )
    .reads(of::<LogsBody>),
    op(
        "post",
        "/api/v1/jobs/{job_id}/kill",
        "Kill a job",
        200,
        Some(of::<JobDetail>),
    )
    .reads(of::<KillBody>),
    op(
        "post",
        "/api/v1/jobs/{job_id}/retry",
        "Retry a dead or killed job",
        200,
        Some(of::<JobDetail>),
    ),
    op(
        "post",
        "/api/v1/spaces/{space_id}/jobs/poll",
        "Claim ready jobs, waiting up to waitSeconds",
        200,
        Some(of::<Deliveries>),
    )
    .reads(of::<PollBody>),
    op(
        "post",
        "/api/v1/jobs/{job_id}/claim",
        "Claim one job",
        200,
        Some(of::<Delivery>),
    ),
    op(
        "post",
        "/api/v1/jobs/{job_id}/ack",
        "Start a delivered job",
        200,
        Some(of::<JobDetail>),
    )
    .reads(of::<FenceBody>),
    op(
        "post",
        "/api/v1/jobs/{job_id}/checkpoint",
        "Save a checkpoint (any JSON, or `data`)",
        200,
        Some(of::<JobDetail>),
    )
    .reads(of::<FreeDataBody>),
    op(
        "post",
        "/api/v1/jobs/{job_id}/event",
        "Publish a custom event (any JSON, or `data`)",
        200,
        Some(of::<JobDetail>),
    )
    .reads(of::<FreeDataBody>),
    op(
        "post",
        "/api/v1/jobs/{job_id}/complete",
        "Complete a job",
        200,
        Some(of::<JobDetail>),
    )
    .reads(of::<CompleteBody>),
    op(
        "post",
        "/api/v1/jobs/{job_id}/fail",
        "Fail an attempt",
        200,
        Some(of::<JobDetail>),
    )
    .reads(of::<FailBody>),
    op(
        "post",
        "/api/v1/jobs/{job_id}/keepalive",
        "Extend a running job's lease",
        200,
        Some(of::<JobDetail>),
    )
    .reads(of::<FenceBody>),
    op(
        "post",
        SCHEDULES,
        "Create a schedule",
        201,
        Some(of::<Schedule>),
    )
    .reads(of::<ScheduleBody>)
    .query(NEXT_QUERY),
    op(
        "get",
        SCHEDULES,
        "List schedules",
        200,
        Some(of::<Vec<Schedule>>),
    )
    .query(NEXT_QUERY),
    op("get", SCHEDULE, "Get a schedule", 200, Some(of::<Schedule>)).query(NEXT_QUERY),
    op(
        "patch",
        SCHEDULE,
        "Change a schedule",
        200,
        Some(of::<Schedule>),
    )
    .reads(of::<ScheduleBody>)
    .query(NEXT_QUERY),
    op(
        "delete",
        SCHEDULE,
        "Delete a schedule",
        200,
        Some(of::<DeletedSchedule>),
    ),
    op(
        "post",
        "/api/v1/spaces/{space_id}/schedules/{schedule_id}/pause",
        "Pause a schedule",
        200,
        Some(of::<Schedule>),
    )
    .query(NEXT_QUERY),
    op(
        "post",
        "/api/v1/spaces/{space_id}/schedules/{schedule_id}/resume",
        "Resume a schedule",
        200,
        Some(of::<Schedule>),
    )
    .query(NEXT_QUERY),
    op(
        "get",
        "/api/v1/realtime/{job_id}",
        "WebSocket: one job's events",
        101,
        None,
    )
    .query(STREAM_QUERY),
    op(
        "get",
        "/api/v1/realtime/spaces/{space_id}",
        "WebSocket: every event of a space",
        101,
        None,
    )
    .query(STREAM_QUERY),
];

/// The whole document.
pub fn document() -> Value {
    // Responses are described as they are written, requests as they are
    // read (where an optional field may be left out).
    let settings = SchemaSettings::draft2020_12()
        .with(|settings| settings.definitions_path = "/components/schemas".into());
    let mut generator = settings.clone().for_serialize().into_generator();
    let mut requests = settings.for_deserialize().into_generator();
    let error = of::<ErrorBody>(&mut generator);
    let mut paths: Map<String, Value> = Map::new();
    for operation in OPERATIONS {
        let mut entry = json!({
            "summary": operation.summary,
            "operationId": operation_id(operation),
            "parameters": parameters(operation),
            "responses": {
                operation.status.to_string(): response(operation, &mut generator),
                "default": {
                    "description": "An error",
                    "content": { "application/json": { "schema": error } },
                },
            },
        });
        if let Some(request) = operation.request {
            entry["requestBody"] = json!({
                "content": { "application/json": { "schema": request(&mut requests) } },
            });
        }
        let path = paths
            .entry(operation.path)
            .or_insert_with(|| Value::Object(Map::new()));
        path[operation.method] = entry;
    }
    let mut schemas = generator.take_definitions(true);
    schemas.extend(requests.take_definitions(true));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "emit",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The emit.run REST API, with emit's additions as optional fields.",
        },
        "security": [{ "bearer": [] }, { "apiKey": [] }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "apiKey": { "type": "apiKey", "in": "header", "name": "x-api-key" },
            },
        },
    })
}

fn response(operation: &Operation, generator: &mut SchemaGenerator) -> Value {
    match (operation.response, operation.status) {
        (Some(schema), _) => json!({
            "description": operation.summary,
            "content": { "application/json": { "schema": schema(generator) } },
        }),
        (None, 101) => json!({ "description": "Switched to a WebSocket" }),
        (None, _) => json!({ "description": "No content" }),
    }
}

/// `{name}` segments become path parameters; the query is listed.
fn parameters(operation: &Operation) -> Vec<Value> {
    let path = operation
        .path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
        });
    let query = operation.query.iter().map(|(name, description)| {
        json!({
            "name": name,
            "in": "query",
            "description": description,
            "schema": { "type": "string" },
        })
    });
    path.chain(query).collect()
}

/// `post /api/v1/jobs/{job_id}/kill` is `post_jobs_job_id_kill`.
fn operation_id(operation: &Operation) -> String {
    let words = operation
        .path
        .trim_start_matches("/api/v1")
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty());
    std::iter::once(operation.method)
        .chain(words)
        .collect::<Vec<_>>()
        .join("_")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` names a schema the document holds, and every operation
    /// answers something.
    #[test]
    fn the_document_is_closed() {
        let document = document();
        let text = document.to_string();
        let schemas = document["components"]["schemas"].as_object().unwrap();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = &reference[..reference.find('"').unwrap()];
            let name = target.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.contains_key(name), "{target} is dangling");
        }
        let paths = document["paths"].as_object().unwrap();
        let operations: usize = paths
            .values()
            .map(|path| path.as_object().unwrap().len())
            .sum();
        assert_eq!(
            operations,
            OPERATIONS.len(),
            "a path and method are listed twice"
        );
    }
}
