//! Recurring schedules: create, read, update (pause and resume among
//! them), delete. Reading needs `jobs:read`; every change needs
//! `jobs:create`, since a schedule creates jobs.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::auth::{Principal, Scope};
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::schedule::{Schedule, ScheduleInput};
use crate::store::{ScheduleQuery, ScheduleWrite, ScheduleWritten, Store};

/// An update is a read and a conditional write; a fire landing in between
/// makes it read again, this many times at most.
const UPDATE_ATTEMPTS: usize = 5;

pub struct SchedulesApi {
    store: Arc<Store>,
    /// Wakes this core's scheduler when a schedule's next fire changed.
    scheduler: Arc<Notify>,
}

impl SchedulesApi {
    pub fn new(store: Arc<Store>, scheduler: Arc<Notify>) -> Self {
        Self { store, scheduler }
    }

    pub async fn create(
        &self,
        who: &Principal,
        space_id: &str,
        input: ScheduleInput,
    ) -> Result<Schedule> {
        who.authorize_space(space_id, Scope::JobsCreate)?;
        if self.store.get_space(space_id).await?.is_none() {
            return Err(Error::NotFound("space"));
        }
        let schedule = Schedule::create(space_id, new_id(), input, self.store.clock().now())?;
        self.store
            .write_schedule(ScheduleWrite::Create(schedule.clone()))
            .await?;
        self.scheduler.notify_one();
        Ok(schedule)
    }

    pub async fn list(&self, who: &Principal, space_id: &str) -> Result<Vec<Schedule>> {
        who.authorize_space(space_id, Scope::JobsRead)?;
        self.store
            .read_schedules(ScheduleQuery::Space { space_id })
            .await
    }

    pub async fn get(
        &self,
        who: &Principal,
        space_id: &str,
        schedule_id: &str,
    ) -> Result<Schedule> {
        who.authorize_space(space_id, Scope::JobsRead)?;
        self.find(space_id, schedule_id).await
    }

    pub async fn update(
        &self,
        who: &Principal,
        space_id: &str,
        schedule_id: &str,
        input: ScheduleInput,
    ) -> Result<Schedule> {
        who.authorize_space(space_id, Scope::JobsCreate)?;
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.find(space_id, schedule_id).await?;
            let mut updated = current.updated(input.clone(), self.store.clock().now())?;
            updated.version = current.version + 1;
            let written = self
                .store
                .write_schedule(ScheduleWrite::Update {
                    schedule: updated.clone(),
                    expected_version: current.version,
                })
                .await?;
            if written == ScheduleWritten::Changed(true) {
                self.scheduler.notify_one();
                return Ok(updated);
            }
        }
        Err(Error::Conflict(
            "the schedule kept changing while being updated; try again".into(),
        ))
    }

    pub async fn delete(&self, who: &Principal, space_id: &str, schedule_id: &str) -> Result<()> {
        who.authorize_space(space_id, Scope::JobsCreate)?;
        let written = self
            .store
            .write_schedule(ScheduleWrite::Delete {
                space_id: space_id.to_owned(),
                schedule_id: schedule_id.to_owned(),
            })
            .await?;
        match written {
            ScheduleWritten::Changed(true) => Ok(()),
            _ => Err(Error::NotFound("schedule")),
        }
    }

    async fn find(&self, space_id: &str, schedule_id: &str) -> Result<Schedule> {
        self.store
            .read_schedules(ScheduleQuery::One {
                space_id,
                schedule_id,
            })
            .await?
            .into_iter()
            .next()
            .ok_or(Error::NotFound("schedule"))
    }
}
