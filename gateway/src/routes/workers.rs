//! Worker calls: poll, claim, ack, progress, checkpoint, event, complete,
//! fail, keepalive. Each body may carry `attemptNumber` / `leaseId` to fence
//! a stale worker.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::routing::post;
use axum::{Json, Router};
use emit_proto::v1 as pb;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::core_client::Caller;
use crate::error::required;
use crate::requests::{
    self, AnyJson, Body, CompleteBody, FailBody, FenceBody, FreeDataBody, Int, PollBody, RawBody,
};
use crate::resources::{Deliveries, Delivery, JobDetail};
use crate::{ApiError, CoreClient};

pub fn router() -> Router<CoreClient> {
    Router::new()
        .route("/api/v1/spaces/{space_id}/jobs/poll", post(poll))
        .route("/api/v1/jobs/{job_id}/claim", post(claim))
        .route("/api/v1/jobs/{job_id}/ack", post(ack))
        .route("/api/v1/jobs/{job_id}/checkpoint", post(checkpoint))
        .route("/api/v1/jobs/{job_id}/event", post(event))
        .route("/api/v1/jobs/{job_id}/complete", post(complete))
        .route("/api/v1/jobs/{job_id}/fail", post(fail))
        .route("/api/v1/jobs/{job_id}/keepalive", post(keepalive))
}

type JobReply = Result<Json<JobDetail>, ApiError>;

/// A worker's report on one job: the job and the body, which carries the
/// report's fields and its fence (`attemptNumber`, `leaseId`). Taken last:
/// it reads the body.
pub(super) struct Report {
    job_id: String,
    body: Bytes,
}

impl Report {
    /// The body as `T`.
    fn read<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        requests::read(&self.body, "")
    }

    /// A body of free JSON (progress, a checkpoint, an event) as sent
    /// (`null` when empty), and the fields read beside it.
    fn free_data(&self) -> Result<(Value, FreeDataBody), ApiError> {
        let fields: FreeDataBody = self.read()?;
        let data = if self.body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&self.body)
                .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))?
        };
        Ok((data, fields))
    }
}

impl<S: Send + Sync> FromRequest<S> for Report {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let Path(job_id) = Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        let RawBody(body) = RawBody::from_request(Request::from_parts(parts, body), state).await?;
        Ok(Self { job_id, body })
    }
}

fn reply(job: Option<pb::Job>) -> JobReply {
    Ok(Json(JobDetail::required(job)?))
}

async fn poll(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
    Body(mut body): Body<PollBody>,
) -> Result<Json<Deliveries>, ApiError> {
    let request = pb::PollJobsRequest {
        space_id,
        names: body.names(),
        count: body.count.map(|Int(n)| n),
        wait_seconds: body.wait_seconds.map(|Int(n)| n),
    };
    let jobs = core
        .jobs()
        .poll_jobs(caller.request(request))
        .await?
        .into_inner()
        .jobs;
    Ok(Json(Deliveries {
        jobs: jobs.into_iter().map(Delivery::from).collect(),
    }))
}

async fn claim(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Json<Delivery>, ApiError> {
    let request = caller.request(pb::ClaimJobRequest { job_id });
    let job = core.jobs().claim_job(request).await?.into_inner().job;
    Ok(Json(required(job, "job")?.into()))
}

async fn ack(State(core): State<CoreClient>, caller: Caller, report: Report) -> JobReply {
    let fence = report.read::<FenceBody>()?.fence();
    let request = pb::AckJobRequest {
        job_id: report.job_id,
        fence,
    };
    reply(
        core.jobs()
            .ack_job(caller.request(request))
            .await?
            .into_inner()
            .job,
    )
}

pub(super) async fn progress(
    State(core): State<CoreClient>,
    caller: Caller,
    report: Report,
) -> JobReply {
    let (mut data, fields) = report.free_data()?;
    // Fencing fields steer the call; they are not part of the progress data.
    if let Value::Object(object) = &mut data {
        object.remove("attemptNumber");
        object.remove("leaseId");
    }
    let request = pb::ReportProgressRequest {
        job_id: report.job_id,
        fence: requests::fence(fields.attempt_number, fields.lease_id),
        progress_json: data.to_string(),
    };
    reply(
        core.jobs()
            .report_progress(caller.request(request))
            .await?
            .into_inner()
            .job,
    )
}

/// Checkpoint and custom-event bodies are free JSON; a `data` field, when
/// present alongside fencing fields, is taken as the data.
fn free_data(body: Value, data: Option<AnyJson>) -> String {
    match (data, body) {
        (Some(data), _) => data.text(),
        (None, Value::Null) => "{}".to_owned(),
        (None, body) => body.to_string(),
    }
}

async fn checkpoint(State(core): State<CoreClient>, caller: Caller, report: Report) -> JobReply {
    let (body, fields) = report.free_data()?;
    let request = pb::SaveCheckpointRequest {
        data_json: free_data(body, fields.data),
        job_id: report.job_id,
        fence: requests::fence(fields.attempt_number, fields.lease_id),
    };
    reply(
        core.jobs()
            .save_checkpoint(caller.request(request))
            .await?
            .into_inner()
            .job,
    )
}

async fn event(State(core): State<CoreClient>, caller: Caller, report: Report) -> JobReply {
    let (body, fields) = report.free_data()?;
    let request = pb::PublishEventRequest {
        data_json: free_data(body, fields.data),
        job_id: report.job_id,
        fence: requests::fence(fields.attempt_number, fields.lease_id),
    };
    reply(
        core.jobs()
            .publish_event(caller.request(request))
            .await?
            .into_inner()
            .job,
    )
}

async fn complete(State(core): State<CoreClient>, caller: Caller, report: Report) -> JobReply {
    let body: CompleteBody = report.read()?;
    let request = pb::CompleteJobRequest {
        result_json: body.result.map(AnyJson::text),
        job_id: report.job_id,
        fence: requests::fence(body.attempt_number, body.lease_id),
    };
    reply(
        core.jobs()
            .complete_job(caller.request(request))
            .await?
            .into_inner()
            .job,
    )
}

async fn fail(State(core): State<CoreClient>, caller: Caller, report: Report) -> JobReply {
    let body: FailBody = report.read()?;
    let error = match body.error.map(AnyJson::text) {
        None => "unknown error".to_owned(),
        // A string is the message; structured errors are kept as their
        // text, which stays readable.
        Some(text) => serde_json::from_str::<String>(&text).unwrap_or(text),
    };
    let request = pb::FailJobRequest {
        job_id: report.job_id,
        fence: requests::fence(body.attempt_number, body.lease_id),
        error,
    };
    reply(
        core.jobs()
            .fail_job(caller.request(request))
            .await?
            .into_inner()
            .job,
    )
}

async fn keepalive(State(core): State<CoreClient>, caller: Caller, report: Report) -> JobReply {
    let fence = report.read::<FenceBody>()?.fence();
    let request = pb::KeepaliveJobRequest {
        job_id: report.job_id,
        fence,
    };
    reply(
        core.jobs()
            .keepalive_job(caller.request(request))
            .await?
            .into_inner()
            .job,
    )
}
