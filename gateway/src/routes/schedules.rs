//! Recurring schedules of a space: create, list, get, update, pause,
//! resume, delete. Every read and write answers the schedule with its
//! coming fire times (`?next=N`, default 5, at most 100).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use emit_proto::v1 as pb;

use super::{integer_param, query_params};
use crate::core_client::Caller;
use crate::requests::{Body, ScheduleBody};
use crate::resources::{DeletedSchedule, Schedule};
use crate::{ApiError, CoreClient};

pub fn router() -> Router<CoreClient> {
    Router::new()
        .route(
            "/api/v1/spaces/{space_id}/schedules",
            post(create_schedule).get(list_schedules),
        )
        .route(
            "/api/v1/spaces/{space_id}/schedules/{schedule_id}",
            get(get_schedule)
                .patch(update_schedule)
                .delete(delete_schedule),
        )
        .route(
            "/api/v1/spaces/{space_id}/schedules/{schedule_id}/pause",
            post(set_paused::<true>),
        )
        .route(
            "/api/v1/spaces/{space_id}/schedules/{schedule_id}/resume",
            post(set_paused::<false>),
        )
}

/// `?next=N`: how many coming fire times to list.
fn next_count(uri: &Uri) -> Result<Option<u32>, ApiError> {
    Ok(integer_param(&query_params(uri)?, "next")?
        .map(|count| u32::try_from(count).unwrap_or(u32::MAX)))
}

fn answer(schedule: Option<pb::Schedule>) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(Schedule::required(schedule)?))
}

async fn create_schedule(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
    uri: Uri,
    Body(body): Body<ScheduleBody>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let request = pb::CreateScheduleRequest {
        space_id,
        settings: Some(body.try_into()?),
        next_count: next_count(&uri)?,
    };
    let created = core
        .schedules()
        .create_schedule(caller.request(request))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, answer(created.schedule)?))
}

async fn list_schedules(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
    uri: Uri,
) -> Result<Json<Vec<Schedule>>, ApiError> {
    let request = pb::ListSchedulesRequest {
        space_id,
        next_count: next_count(&uri)?,
    };
    let listed = core
        .schedules()
        .list_schedules(caller.request(request))
        .await?
        .into_inner();
    let schedules = listed.schedules.into_iter().map(Schedule::of);
    Ok(Json(schedules.collect::<Result<_, _>>()?))
}

async fn get_schedule(
    State(core): State<CoreClient>,
    caller: Caller,
    Path((space_id, schedule_id)): Path<(String, String)>,
    uri: Uri,
) -> Result<Json<Schedule>, ApiError> {
    let request = pb::GetScheduleRequest {
        space_id,
        schedule_id,
        next_count: next_count(&uri)?,
    };
    let found = core
        .schedules()
        .get_schedule(caller.request(request))
        .await?
        .into_inner();
    answer(found.schedule)
}

async fn update(
    core: &CoreClient,
    caller: &Caller,
    (space_id, schedule_id): (String, String),
    settings: pb::ScheduleSettings,
    uri: &Uri,
) -> Result<Json<Schedule>, ApiError> {
    let request = pb::UpdateScheduleRequest {
        space_id,
        schedule_id,
        settings: Some(settings),
        next_count: next_count(uri)?,
    };
    let updated = core
        .schedules()
        .update_schedule(caller.request(request))
        .await?
        .into_inner();
    answer(updated.schedule)
}

async fn update_schedule(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(ids): Path<(String, String)>,
    uri: Uri,
    Body(body): Body<ScheduleBody>,
) -> Result<Json<Schedule>, ApiError> {
    update(&core, &caller, ids, body.try_into()?, &uri).await
}

/// `POST .../pause` (PAUSED) and `POST .../resume`: an update of `paused`.
async fn set_paused<const PAUSED: bool>(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(ids): Path<(String, String)>,
    uri: Uri,
) -> Result<Json<Schedule>, ApiError> {
    let settings = pb::ScheduleSettings {
        paused: Some(PAUSED),
        ..Default::default()
    };
    update(&core, &caller, ids, settings, &uri).await
}

async fn delete_schedule(
    State(core): State<CoreClient>,
    caller: Caller,
    Path((space_id, schedule_id)): Path<(String, String)>,
) -> Result<Json<DeletedSchedule>, ApiError> {
    let request = pb::DeleteScheduleRequest {
        space_id,
        schedule_id: schedule_id.clone(),
    };
    core.schedules()
        .delete_schedule(caller.request(request))
        .await?;
    Ok(Json(DeletedSchedule {
        id: schedule_id,
        deleted: true,
    }))
}
