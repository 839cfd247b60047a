use std::sync::Arc;

use emit_proto::v1 as pb;
use emit_proto::v1::job_service_server::JobService;
use tonic::{Request, Response, Status};

use super::convert::{self, delivery, status_from_proto};
use super::principal;
use crate::auth::Authenticator;
use crate::clock::{from_timestamp, to_timestamp};
use crate::error::Error;
use crate::job::machine::Command;
use crate::service::{BulkAction, JobsApi, ListLimits};
use crate::store::{JobFilter, LogCursor};

type Reply<T> = Result<Response<T>, Status>;

pub struct JobsGrpc {
    auth: Arc<Authenticator>,
    jobs: Arc<JobsApi>,
}

impl JobsGrpc {
    pub fn new(auth: Arc<Authenticator>, jobs: Arc<JobsApi>) -> Self {
        Self { auth, jobs }
    }

    /// Ack, progress, checkpoint, event, complete, fail and keepalive differ
    /// only in their command and response type.
    async fn report<T: Default>(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        job_id: &str,
        command: Command,
        fence: Option<pb::Fence>,
        wrap: impl FnOnce(Option<pb::Job>) -> T,
    ) -> Reply<T> {
        let who = principal(&self.auth, metadata).await?;
        let job = self
            .jobs
            .report(&who, job_id, command, convert::fence(fence))
            .await?;
        Ok(Response::new(wrap(Some(job.into()))))
    }
}

#[tonic::async_trait]
impl JobService for JobsGrpc {
    async fn create_jobs(
        &self,
        request: Request<pb::CreateJobsRequest>,
    ) -> Reply<pb::CreateJobsResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let inputs = request.jobs.into_iter().map(Into::into).collect();
        let jobs = self.jobs.create(&who, &request.space_id, inputs).await?;
        let jobs = jobs
            .into_iter()
            .map(|job| pb::JobRef {
                id: job.id,
                space_id: request.space_id.clone(),
                replayed: job.replayed,
            })
            .collect();
        Ok(Response::new(pb::CreateJobsResponse { jobs }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Reply<pb::ListJobsResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let filter = JobFilter {
            space_id: request.space_id,
            status: status_from_proto(request.status)?,
            name: request.name,
            created_from: request.created_after.as_ref().map(from_timestamp),
            created_until: request.created_before.as_ref().map(from_timestamp),
            before_id: request.before_id,
            schedule_id: request.schedule_id,
        };
        let limits = ListLimits {
            limit: request.limit,
            offset: request.offset,
        };
        let (jobs, total) = self.jobs.list(&who, filter, limits).await?;
        let reasons = self.jobs.waiting_reasons(&jobs).await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs
                .into_iter()
                .zip(reasons)
                .map(|(job, reason)| with_reason(job, reason))
                .collect(),
            total,
        }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Reply<pb::GetJobResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let (job, events) = self.jobs.get(&who, &request.get_ref().job_id).await?;
        let reason = self
            .jobs
            .waiting_reasons(std::slice::from_ref(&job))
            .await?
            .pop()
            .flatten();
        Ok(Response::new(pb::GetJobResponse {
            job: Some(with_reason(job, reason)),
            events: events.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get_job_progress(
        &self,
        request: Request<pb::GetJobProgressRequest>,
    ) -> Reply<pb::GetJobProgressResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let job = self.jobs.progress(&who, &request.get_ref().job_id).await?;
        Ok(Response::new(pb::GetJobProgressResponse {
            status: convert::status_to_proto(job.status()) as i32,
            updated_at: Some(to_timestamp(job.updated_at)),
            job_id: job.id,
            progress_json: job.progress,
        }))
    }

    async fn poll_jobs(
        &self,
        request: Request<pb::PollJobsRequest>,
    ) -> Reply<pb::PollJobsResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let jobs = self
            .jobs
            .poll(
                &who,
                &request.space_id,
                request.count,
                request.names,
                request.wait_seconds,
            )
            .await?;
        Ok(Response::new(pb::PollJobsResponse {
            jobs: jobs.into_iter().map(delivery).collect(),
        }))
    }

    async fn claim_job(
        &self,
        request: Request<pb::ClaimJobRequest>,
    ) -> Reply<pb::ClaimJobResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let job = self.jobs.claim(&who, &request.get_ref().job_id).await?;
        Ok(Response::new(pb::ClaimJobResponse {
            job: Some(delivery(job)),
        }))
    }

    async fn ack_job(&self, request: Request<pb::AckJobRequest>) -> Reply<pb::AckJobResponse> {
        let (metadata, _, body) = request.into_parts();
        self.report(&metadata, &body.job_id, Command::Ack, body.fence, |job| {
            pb::AckJobResponse { job }
        })
        .await
    }

    async fn report_progress(
        &self,
        request: Request<pb::ReportProgressRequest>,
    ) -> Reply<pb::ReportProgressResponse> {
        let (metadata, _, body) = request.into_parts();
        let command = Command::Progress {
            data: body.progress_json,
        };
        self.report(&metadata, &body.job_id, command, body.fence, |job| {
            pb::ReportProgressResponse { job }
        })
        .await
    }

    async fn save_checkpoint(
        &self,
        request: Request<pb::SaveCheckpointRequest>,
    ) -> Reply<pb::SaveCheckpointResponse> {
        let (metadata, _, body) = request.into_parts();
        let command = Command::Checkpoint {
            data: body.data_json,
        };
        self.report(&metadata, &body.job_id, command, body.fence, |job| {
            pb::SaveCheckpointResponse { job }
        })
        .await
    }

    async fn publish_event(
        &self,
        request: Request<pb::PublishEventRequest>,
    ) -> Reply<pb::PublishEventResponse> {
        let (metadata, _, body) = request.into_parts();
        let command = Command::PublishEvent {
            data: body.data_json,
        };
        self.report(&metadata, &body.job_id, command, body.fence, |job| {
            pb::PublishEventResponse { job }
        })
        .await
    }

    async fn append_logs(
        &self,
        request: Request<pb::AppendLogsRequest>,
    ) -> Reply<pb::AppendLogsResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let lines = request
            .lines
            .into_iter()
            .map(|line| (line.level, line.message))
            .collect();
        let last_seq = self.jobs.append_logs(&who, &request.job_id, lines).await?;
        Ok(Response::new(pb::AppendLogsResponse {
            last_seq: last_seq as u64,
        }))
    }

    async fn list_logs(
        &self,
        request: Request<pb::ListLogsRequest>,
    ) -> Reply<pb::ListLogsResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let seq = |seq: u64| i64::try_from(seq).unwrap_or(i64::MAX);
        let cursor = match request.before_seq {
            Some(before) => LogCursor::Before(seq(before)),
            None => LogCursor::After(seq(request.after_seq)),
        };
        let lines = self
            .jobs
            .logs(
                &who,
                &request.job_id,
                cursor,
                request.level.as_deref(),
                request.query,
                request.limit,
            )
            .await?;
        Ok(Response::new(pb::ListLogsResponse {
            lines: lines.into_iter().map(Into::into).collect(),
        }))
    }

    async fn complete_job(
        &self,
        request: Request<pb::CompleteJobRequest>,
    ) -> Reply<pb::CompleteJobResponse> {
        let (metadata, _, body) = request.into_parts();
        let command = Command::Complete {
            result: body.result_json,
        };
        self.report(&metadata, &body.job_id, command, body.fence, |job| {
            pb::CompleteJobResponse { job }
        })
        .await
    }

    async fn fail_job(&self, request: Request<pb::FailJobRequest>) -> Reply<pb::FailJobResponse> {
        let (metadata, _, body) = request.into_parts();
        let command = Command::Fail { error: body.error };
        self.report(&metadata, &body.job_id, command, body.fence, |job| {
            pb::FailJobResponse { job }
        })
        .await
    }

    async fn keepalive_job(
        &self,
        request: Request<pb::KeepaliveJobRequest>,
    ) -> Reply<pb::KeepaliveJobResponse> {
        let (metadata, _, body) = request.into_parts();
        self.report(
            &metadata,
            &body.job_id,
            Command::Keepalive,
            body.fence,
            |job| pb::KeepaliveJobResponse { job },
        )
        .await
    }

    async fn kill_job(&self, request: Request<pb::KillJobRequest>) -> Reply<pb::KillJobResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let job = self
            .jobs
            .kill(&who, &request.job_id, request.reason)
            .await?;
        Ok(Response::new(pb::KillJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Reply<pb::RetryJobResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let job = self.jobs.retry(&who, &request.get_ref().job_id).await?;
        Ok(Response::new(pb::RetryJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Reply<pb::DeleteJobResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let job = self.jobs.delete(&who, &request.get_ref().job_id).await?;
        Ok(Response::new(pb::DeleteJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn get_concurrency(
        &self,
        request: Request<pb::GetConcurrencyRequest>,
    ) -> Reply<pb::GetConcurrencyResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let usage = self
            .jobs
            .concurrency(&who, &request.space_id, request.keys)
            .await?;
        Ok(Response::new(pb::GetConcurrencyResponse {
            limits: Some(convert::limits_to_proto(usage.limits)),
            keys: usage
                .keys
                .into_iter()
                .map(|(key, leases)| pb::KeyLeases { key, leases })
                .collect(),
            rates: usage
                .rates
                .into_iter()
                .map(|(name, used)| pb::RateUsage { name, used })
                .collect(),
        }))
    }

    async fn bulk_jobs(
        &self,
        request: Request<pb::BulkJobsRequest>,
    ) -> Reply<pb::BulkJobsResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let action = match pb::BulkAction::try_from(request.action) {
            Ok(pb::BulkAction::Retry) => BulkAction::Retry,
            Ok(pb::BulkAction::Kill) => BulkAction::Kill,
            Ok(pb::BulkAction::Delete) => BulkAction::Delete,
            _ => {
                return Err(Error::invalid("action must be one of retry, kill, delete").into());
            }
        };
        let given = request.filter.unwrap_or_default();
        let filter = JobFilter {
            space_id: request.space_id,
            status: status_from_proto(given.status)?,
            name: given.name,
            created_from: given.created_after.as_ref().map(from_timestamp),
            created_until: given.created_before.as_ref().map(from_timestamp),
            before_id: None,
            schedule_id: None,
        };
        let outcome = self
            .jobs
            .bulk(&who, filter, action, request.dry_run, request.limit)
            .await?;
        Ok(Response::new(pb::BulkJobsResponse {
            matched: outcome.matched,
            applied: outcome.applied,
            skipped: outcome.skipped,
            more: outcome.more,
        }))
    }
}

fn with_reason(job: crate::job::Job, reason: Option<&'static str>) -> pb::Job {
    let mut job: pb::Job = job.into();
    job.waiting_reason = reason.map(str::to_owned);
    job
}
