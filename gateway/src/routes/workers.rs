//! Worker calls: poll, claim, ack, progress, checkpoint, event, complete,
//! fail, keepalive. Each body may carry `attemptNumber` / `leaseId` to fence
//! a stale worker.

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::routing::post;
use axum::{Json, Router};
use emit_proto::v1 as pb;
use serde_json::Value;

use crate::core_client::Caller;
use crate::error::required;
use crate::extract::JsonBody;
use crate::json::{Fields, fence};
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

/// A worker's report on one job: the job, the JSON body, and the fence the
/// body carries (`attemptNumber`, `leaseId`). Taken last: it reads the body.
pub(super) struct Report {
    job_id: String,
    body: Value,
    fence: Option<pb::Fence>,
}

impl Report {
    fn fields(&self) -> Result<Fields<'_>, ApiError> {
        Fields::of(&self.body, "")
    }
}

impl<S: Send + Sync> FromRequest<S> for Report {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let Path(job_id) = Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        let JsonBody(body) =
            JsonBody::from_request(Request::from_parts(parts, body), state).await?;
        let fence = fence(&Fields::of(&body, "")?)?;
        Ok(Self {
            job_id,
            body,
            fence,
        })
    }
}

fn reply(job: Option<pb::Job>) -> JobReply {
    Ok(Json(JobDetail::required(job)?))
}

async fn poll(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Deliveries>, ApiError> {
    let fields = Fields::of(&body, "")?;
    // Precedence as documented: types, type, names, name.
    let mut names = None;
    for alias in ["types", "type", "names", "name"] {
        if let Some(found) = fields.strings(alias)? {
            names = Some(found);
            break;
        }
    }
    let request = pb::PollJobsRequest {
        space_id,
        count: fields.u32("count")?,
        names: names.unwrap_or_default(),
        wait_seconds: fields.u32("waitSeconds")?,
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
    let Report { job_id, fence, .. } = report;
    let request = caller.request(pb::AckJobRequest { job_id, fence });
    reply(core.jobs().ack_job(request).await?.into_inner().job)
}

pub(super) async fn progress(
    State(core): State<CoreClient>,
    caller: Caller,
    report: Report,
) -> JobReply {
    let Report {
        job_id,
        body: mut data,
        fence,
    } = report;
    // Fencing fields steer the call; they are not part of the progress data.
    if let Value::Object(object) = &mut data {
        object.remove("attemptNumber");
        object.remove("leaseId");
    }
    let request = pb::ReportProgressRequest {
        job_id,
        fence,
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
fn free_data(fields: &Fields<'_>, body: &Value) -> String {
    match (fields.get("data"), body) {
        (Some(data), _) => data.to_string(),
        (None, Value::Null) => "{}".to_owned(),
        (None, body) => body.to_string(),
    }
}

async fn checkpoint(State(core): State<CoreClient>, caller: Caller, report: Report) -> JobReply {
    let request = pb::SaveCheckpointRequest {
        data_json: free_data(&report.fields()?, &report.body),
        job_id: report.job_id,
        fence: report.fence,
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
    let request = pb::PublishEventRequest {
        data_json: free_data(&report.fields()?, &report.body),
        job_id: report.job_id,
        fence: report.fence,
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
    let request = pb::CompleteJobRequest {
        result_json: report.fields()?.json_text("result"),
        job_id: report.job_id,
        fence: report.fence,
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
    let error = match report.fields()?.get("error") {
        None => "unknown error".to_owned(),
        Some(Value::String(text)) => text.clone(),
        // Workers sometimes send structured errors; keep them readable.
        Some(other) => other.to_string(),
    };
    let request = pb::FailJobRequest {
        job_id: report.job_id,
        fence: report.fence,
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
    let Report { job_id, fence, .. } = report;
    let request = caller.request(pb::KeepaliveJobRequest { job_id, fence });
    reply(core.jobs().keepalive_job(request).await?.into_inner().job)
}
