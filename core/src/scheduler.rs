//! The scheduler loop: makes the jobs of due schedule fires. Every core
//! runs one over the shared database; which core makes a fire does not
//! matter, because the store makes each one exactly once
//! (`store::schedules`). A core that dies mid-fire leaves it due, and the
//! others (or its restart) make it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::error::Result;
use crate::ids::new_id;
use crate::schedule::Schedule;
use crate::store::{Fire, ScheduleQuery, ScheduleWrite, Store};

/// Schedules fired per pass; a full pass is followed by another at once.
const DUE_PER_PASS: u32 = 100;
/// Look at least this often: other cores create and change schedules this
/// loop is not told about.
const MAX_SLEEP: Duration = Duration::from_secs(1);
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

pub async fn run(store: Arc<Store>, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let sleep_for = match pass(&store).await {
            Ok(true) => Duration::ZERO,
            Ok(false) => match store.next_schedule_due().await {
                Ok(Some(next)) => store.clock().until(next).min(MAX_SLEEP),
                Ok(None) => MAX_SLEEP,
                Err(error) => {
                    tracing::warn!(%error, "reading the next schedule fire failed");
                    RETRY_AFTER_ERROR
                }
            },
            Err(error) => {
                tracing::warn!(%error, "schedule pass failed");
                RETRY_AFTER_ERROR
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep_for) => {}
            _ = wake.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Fires what is due now; returns whether more may be.
async fn pass(store: &Store) -> Result<bool> {
    let now = store.clock().now();
    let due = store
        .read_schedules(ScheduleQuery::Due {
            now,
            limit: DUE_PER_PASS,
        })
        .await?;
    for schedule in &due {
        if let Err(error) = fire(store, schedule, now).await {
            tracing::warn!(%error, schedule = %schedule.id, "schedule fire failed");
        }
    }
    Ok(due.len() as u32 >= DUE_PER_PASS)
}

async fn fire(store: &Store, schedule: &Schedule, now: i64) -> Result<()> {
    let Some(expected_next) = schedule.next_fire_at else {
        return Ok(());
    };
    let times = schedule.fire_times()?;
    let plan = schedule.plan(&times, now);
    let jobs = plan
        .fire_times
        .iter()
        .map(|fire_time| schedule.job_for(*fire_time, now, new_id()))
        .collect::<Result<Vec<_>>>()
        .unwrap_or_else(|error| {
            // A template that no longer passes (a limit lowered since):
            // the fire passes without a job rather than retrying forever.
            tracing::warn!(%error, schedule = %schedule.id, "schedule job refused");
            Vec::new()
        });
    let made = jobs.len();
    let written = store
        .write_schedule(ScheduleWrite::Fire(Fire {
            schedule_id: schedule.id.clone(),
            expected_next,
            next: plan.next,
            last_fire: plan.fire_times.last().copied(),
            jobs,
            overlap: schedule.overlap,
        }))
        .await?;
    tracing::debug!(schedule = %schedule.id, made, ?written, "schedule fired");
    Ok(())
}
