use std::sync::Arc;

use emit_proto::v1 as pb;
use emit_proto::v1::schedule_service_server::ScheduleService;
use tonic::{Request, Response, Status};

use super::principal;
use crate::auth::Authenticator;
use crate::clock::to_timestamp;
use crate::error::Error;
use crate::schedule::{CatchUp, DEFAULT_UPCOMING, MAX_UPCOMING, Overlap, Schedule, ScheduleInput};
use crate::service::SchedulesApi;

type Reply<T> = Result<Response<T>, Status>;

pub struct SchedulesGrpc {
    auth: Arc<Authenticator>,
    schedules: Arc<SchedulesApi>,
}

impl SchedulesGrpc {
    pub fn new(auth: Arc<Authenticator>, schedules: Arc<SchedulesApi>) -> Self {
        Self { auth, schedules }
    }
}

#[tonic::async_trait]
impl ScheduleService for SchedulesGrpc {
    async fn create_schedule(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Reply<pb::CreateScheduleResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let upcoming = upcoming(request.next_count)?;
        let input = input(request.settings.unwrap_or_default())?;
        let schedule = self
            .schedules
            .create(&who, &request.space_id, input)
            .await?;
        Ok(Response::new(pb::CreateScheduleResponse {
            schedule: Some(render(schedule, upcoming)),
        }))
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Reply<pb::ListSchedulesResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let upcoming = upcoming(request.next_count)?;
        let schedules = self.schedules.list(&who, &request.space_id).await?;
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: schedules
                .into_iter()
                .map(|schedule| render(schedule, upcoming))
                .collect(),
        }))
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Reply<pb::GetScheduleResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let upcoming = upcoming(request.next_count)?;
        let schedule = self
            .schedules
            .get(&who, &request.space_id, &request.schedule_id)
            .await?;
        Ok(Response::new(pb::GetScheduleResponse {
            schedule: Some(render(schedule, upcoming)),
        }))
    }

    async fn update_schedule(
        &self,
        request: Request<pb::UpdateScheduleRequest>,
    ) -> Reply<pb::UpdateScheduleResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let upcoming = upcoming(request.next_count)?;
        let input = input(request.settings.unwrap_or_default())?;
        let schedule = self
            .schedules
            .update(&who, &request.space_id, &request.schedule_id, input)
            .await?;
        Ok(Response::new(pb::UpdateScheduleResponse {
            schedule: Some(render(schedule, upcoming)),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Reply<pb::DeleteScheduleResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        self.schedules
            .delete(&who, &request.space_id, &request.schedule_id)
            .await?;
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }
}

fn upcoming(next_count: Option<u32>) -> Result<usize, Error> {
    match next_count {
        None => Ok(DEFAULT_UPCOMING),
        Some(count) if count as usize <= MAX_UPCOMING => Ok(count as usize),
        Some(_) => Err(Error::invalid(format!(
            "next must be between 0 and {MAX_UPCOMING}"
        ))),
    }
}

fn input(settings: pb::ScheduleSettings) -> Result<ScheduleInput, Error> {
    Ok(ScheduleInput {
        cron: settings.cron,
        time_zone: settings.time_zone,
        job: settings.job.map(Into::into),
        overlap: match pb::ScheduleOverlap::try_from(settings.overlap) {
            Ok(pb::ScheduleOverlap::Unspecified) => None,
            Ok(pb::ScheduleOverlap::Allow) => Some(Overlap::Allow),
            Ok(pb::ScheduleOverlap::Skip) => Some(Overlap::Skip),
            Err(_) => return Err(Error::invalid("overlap must be allow or skip")),
        },
        catch_up: match pb::ScheduleCatchUp::try_from(settings.catch_up) {
            Ok(pb::ScheduleCatchUp::Unspecified) => None,
            Ok(pb::ScheduleCatchUp::None) => Some(CatchUp::None),
            Ok(pb::ScheduleCatchUp::One) => Some(CatchUp::One),
            Ok(pb::ScheduleCatchUp::All) => Some(CatchUp::All),
            Err(_) => return Err(Error::invalid("catchUp must be none, one or all")),
        },
        catch_up_limit: settings.catch_up_limit,
        paused: settings.paused,
    })
}

fn render(schedule: Schedule, upcoming: usize) -> pb::Schedule {
    let next_fire_times = match (schedule.next_fire_at, schedule.fire_times()) {
        (Some(next), Ok(times)) if upcoming > 0 => {
            let mut listed = vec![next];
            listed.extend(times.upcoming(next, upcoming - 1));
            listed.into_iter().map(to_timestamp).collect()
        }
        _ => Vec::new(),
    };
    let template = &schedule.job;
    pb::Schedule {
        id: schedule.id,
        space_id: schedule.space_id,
        cron: schedule.cron,
        time_zone: schedule.time_zone,
        job: Some(pb::JobSpec {
            name: template.name.clone(),
            payload_json: template.payload.clone(),
            max_retries: template.max_retries,
            timeout_seconds: template.timeout_seconds,
            scheduled_for: None,
            callback_url: template.callback_url.clone(),
            // Header values may be credentials: only their names are shown.
            callback_headers: template
                .callback_headers
                .iter()
                .map(|(name, _)| (name.clone(), "***".to_owned()))
                .collect(),
            retry_backoff: template.retry_backoff.as_ref().map(|(kind, delay, max)| {
                pb::RetryBackoff {
                    kind: match kind.as_deref() {
                        Some("fixed") => pb::BackoffKind::Fixed as i32,
                        Some("exponential") => pb::BackoffKind::Exponential as i32,
                        _ => pb::BackoffKind::Unspecified as i32,
                    },
                    delay_seconds: *delay,
                    max_delay_seconds: *max,
                }
            }),
            priority: template.priority,
            idempotency_key: None,
            idempotency_window_seconds: None,
            concurrency_key: template.concurrency_key.clone(),
            concurrency_limit: template.concurrency_limit,
        }),
        overlap: match schedule.overlap {
            Overlap::Allow => pb::ScheduleOverlap::Allow,
            Overlap::Skip => pb::ScheduleOverlap::Skip,
        } as i32,
        catch_up: match schedule.catch_up {
            CatchUp::None => pb::ScheduleCatchUp::None,
            CatchUp::One => pb::ScheduleCatchUp::One,
            CatchUp::All => pb::ScheduleCatchUp::All,
        } as i32,
        catch_up_limit: schedule.catch_up_limit,
        paused: schedule.paused,
        next_fire_times,
        last_fire_time: schedule.last_fire_at.map(to_timestamp),
        last_job_id: schedule.last_job_id,
        created_at: Some(to_timestamp(schedule.created_at)),
        updated_at: Some(to_timestamp(schedule.updated_at)),
    }
}
