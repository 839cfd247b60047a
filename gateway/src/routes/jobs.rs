//! Producers, monitors and operators: create, list, get, progress, logs,
//! kill, retry, delete.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use emit_proto::v1 as pb;

use super::{integer_param, query_params};
use crate::core_client::Caller;
use crate::requests::{
    Body, BulkBody, CreateJobsBody, Instant, Int, KillBody, LogsBody, Obj, RawBody, status_filter,
    timestamp_param,
};
use crate::resources::{
    BulkOutcome, ConcurrencyUsage, Created, CreatedJob, DeletedJob, Event, Job, JobDetail,
    JobWithEvents, LogLine, LogPage, LogsAppended, Progress,
};
use crate::{ApiError, CoreClient};

pub fn router() -> Router<CoreClient> {
    Router::new()
        .route(
            "/api/v1/spaces/{space_id}/jobs",
            post(create_jobs).get(list_jobs),
        )
        .route("/api/v1/jobs/{job_id}", get(get_job).delete(delete_job))
        .route(
            "/api/v1/jobs/{job_id}/progress",
            get(get_progress).post(super::workers::progress),
        )
        .route(
            "/api/v1/jobs/{job_id}/logs",
            get(list_logs).post(append_logs),
        )
        .route("/api/v1/jobs/{job_id}/kill", post(kill_job))
        .route("/api/v1/jobs/{job_id}/retry", post(retry_job))
        .route("/api/v1/spaces/{space_id}/jobs/bulk", post(bulk_jobs))
        .route("/api/v1/spaces/{space_id}/concurrency", get(concurrency))
}

async fn create_jobs(
    State(core): State<CoreClient>,
    headers: HeaderMap,
    Path(space_id): Path<String>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, HeaderMap, Json<Created>), ApiError> {
    let (mut jobs, single): (Vec<pb::JobSpec>, bool) = match CreateJobsBody::read(&body)? {
        CreateJobsBody::One(job) => (vec![(*job).into()], true),
        CreateJobsBody::Many(jobs) => (jobs.into_iter().map(pb::JobSpec::from).collect(), false),
    };
    // The `Idempotency-Key` header keys a single create that names none.
    if let (true, Some(job)) = (single, jobs.first_mut())
        && job.idempotency_key.is_none()
    {
        job.idempotency_key = headers
            .get("idempotency-key")
            .map(|value| {
                value.to_str().map(str::to_owned).map_err(|_| {
                    ApiError::bad_request("the Idempotency-Key header must be visible ASCII")
                })
            })
            .transpose()?;
    }
    let request = Caller::of(&headers).request(pb::CreateJobsRequest { space_id, jobs });
    let created = core.jobs().create_jobs(request).await?.into_inner().jobs;
    let replayed = !created.is_empty() && created.iter().all(|job| job.replayed);
    // `replayed` appears only on replays, so a create without a key answers
    // exactly the reference's `{id, spaceId}`.
    let mut refs = created.into_iter().map(|job| CreatedJob {
        id: job.id,
        space_id: job.space_id,
        replayed: job.replayed,
    });
    let body = match (single, refs.next()) {
        (true, Some(one)) => Created::One(one),
        (true, None) => return Err(ApiError::core_fault("created job")),
        (false, first) => Created::Many(first.into_iter().chain(refs).collect()),
    };
    let mut response_headers = HeaderMap::new();
    if replayed {
        response_headers.insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok((StatusCode::CREATED, response_headers, Json(body)))
}

async fn list_jobs(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
    uri: Uri,
) -> Result<(HeaderMap, Json<Vec<Job>>), ApiError> {
    let params = query_params(&uri)?;
    let param = |name: &str| params.get(name).filter(|value| !value.is_empty());
    let instant = |name: &str| {
        param(name)
            .map(|text| timestamp_param(name, text))
            .transpose()
    };
    let request = pb::ListJobsRequest {
        space_id,
        status: status_filter("status", param("status").map(String::as_str))? as i32,
        limit: integer_param(&params, "limit")?
            .map(|limit| u32::try_from(limit).unwrap_or(u32::MAX)),
        offset: integer_param(&params, "offset")?
            .map_or(0, |offset| u32::try_from(offset).unwrap_or(u32::MAX)),
        name: param("name").cloned(),
        created_after: instant("createdAfter")?,
        created_before: instant("createdBefore")?,
        before_id: param("beforeId").cloned(),
        schedule_id: param("scheduleId").cloned(),
    };
    let listed = core
        .jobs()
        .list_jobs(caller.request(request))
        .await?
        .into_inner();
    // The body stays the reference's array; the filter's total rides in a
    // header. `include=progress` adds each job's latest progress (the
    // dashboard's list shows it).
    let with_progress = param("include").is_some_and(|include| include == "progress");
    let mut response_headers = HeaderMap::new();
    response_headers.insert("x-total-count", listed.total.into());
    let jobs = listed.jobs.into_iter();
    let jobs = jobs.map(|job| Job::summary(job, with_progress));
    Ok((response_headers, Json(jobs.collect::<Result<_, _>>()?)))
}

/// `{"action": "retry"|"kill"|"delete", "filter": {"status", "name",
/// "createdAfter", "createdBefore"}, "dryRun": false, "limit": 1000}`.
/// `GET /api/v1/spaces/:id/concurrency?keys=a,b`: the space's limits and
/// the leases its keys hold (the named keys, or those holding the most).
async fn concurrency(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
    uri: Uri,
) -> Result<Json<ConcurrencyUsage>, ApiError> {
    let params = query_params(&uri)?;
    let keys = params
        .get("keys")
        .map(|keys| {
            keys.split(',')
                .filter(|key| !key.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let request = pb::GetConcurrencyRequest { space_id, keys };
    let usage = core
        .jobs()
        .get_concurrency(caller.request(request))
        .await?
        .into_inner();
    Ok(Json(ConcurrencyUsage::of(usage)?))
}

async fn bulk_jobs(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
    Body(body): Body<BulkBody>,
) -> Result<Json<BulkOutcome>, ApiError> {
    let action = match body.action.as_deref() {
        Some("retry") => pb::BulkAction::Retry,
        Some("kill") => pb::BulkAction::Kill,
        Some("delete") => pb::BulkAction::Delete,
        _ => {
            return Err(ApiError::bad_request(
                "action must be one of retry, kill, delete",
            ));
        }
    };
    let filter = match body.filter {
        Some(Obj(filter)) => pb::JobFilter {
            status: status_filter("filter.status", filter.status.as_deref())? as i32,
            name: filter.name,
            created_after: filter.created_after.map(|Instant(at)| at),
            created_before: filter.created_before.map(|Instant(at)| at),
        },
        None => pb::JobFilter::default(),
    };
    let request = pb::BulkJobsRequest {
        space_id,
        action: action as i32,
        filter: Some(filter),
        dry_run: body.dry_run.unwrap_or(false),
        limit: body.limit.map(|Int(n)| n),
    };
    let outcome = core
        .jobs()
        .bulk_jobs(caller.request(request))
        .await?
        .into_inner();
    Ok(Json(BulkOutcome {
        matched: outcome.matched,
        applied: outcome.applied,
        skipped: outcome.skipped,
        more: outcome.more,
    }))
}

async fn get_job(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Json<JobWithEvents>, ApiError> {
    let request = caller.request(pb::GetJobRequest { job_id });
    let response = core.jobs().get_job(request).await?.into_inner();
    Ok(Json(JobWithEvents {
        job: JobDetail::required(response.job)?,
        events: response
            .events
            .into_iter()
            .map(Event::of)
            .collect::<Result<_, _>>()?,
    }))
}

async fn get_progress(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Json<Progress>, ApiError> {
    let request = caller.request(pb::GetJobProgressRequest { job_id });
    let progress = core.jobs().get_job_progress(request).await?.into_inner();
    Ok(Json(Progress::of(progress)?))
}

async fn append_logs(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(job_id): Path<String>,
    Body(body): Body<LogsBody>,
) -> Result<(StatusCode, Json<LogsAppended>), ApiError> {
    let lines = body.lines()?;
    let count = lines.len();
    let request = caller.request(pb::AppendLogsRequest { job_id, lines });
    let last_seq = core
        .jobs()
        .append_logs(request)
        .await?
        .into_inner()
        .last_seq;
    Ok((StatusCode::CREATED, Json(LogsAppended { count, last_seq })))
}

async fn list_logs(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(job_id): Path<String>,
    uri: Uri,
) -> Result<Json<LogPage>, ApiError> {
    let params = query_params(&uri)?;
    let request = pb::ListLogsRequest {
        job_id,
        after_seq: integer_param(&params, "after")?.unwrap_or(0),
        before_seq: integer_param(&params, "before")?,
        level: params.get("level").cloned(),
        query: params.get("q").cloned(),
        limit: integer_param(&params, "limit")?
            .map(|limit| u32::try_from(limit).unwrap_or(u32::MAX)),
    };
    let lines = core
        .jobs()
        .list_logs(caller.request(request))
        .await?
        .into_inner()
        .lines;
    let next_after = lines.last().map(|line| line.seq);
    // With `before`, the cursor for the page of older lines still.
    let next_before = params
        .contains_key("before")
        .then(|| lines.first().map(|line| line.seq))
        .flatten();
    Ok(Json(LogPage {
        lines: lines.into_iter().map(LogLine::from).collect(),
        next_after,
        next_before,
    }))
}

async fn kill_job(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(job_id): Path<String>,
    Body(KillBody { reason }): Body<KillBody>,
) -> Result<Json<JobDetail>, ApiError> {
    let request = caller.request(pb::KillJobRequest { job_id, reason });
    let job = core.jobs().kill_job(request).await?.into_inner().job;
    Ok(Json(JobDetail::required(job)?))
}

/// An operator's retry: the dead or killed job is pending again.
async fn retry_job(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Json<JobDetail>, ApiError> {
    let request = caller.request(pb::RetryJobRequest { job_id });
    let job = core.jobs().retry_job(request).await?.into_inner().job;
    Ok(Json(JobDetail::required(job)?))
}

/// Deletes a finished job; answers with the job as it was.
async fn delete_job(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Json<DeletedJob>, ApiError> {
    let request = caller.request(pb::DeleteJobRequest { job_id });
    let job = core.jobs().delete_job(request).await?.into_inner().job;
    Ok(Json(DeletedJob {
        job: JobDetail::required(job)?,
        deleted: true,
    }))
}
