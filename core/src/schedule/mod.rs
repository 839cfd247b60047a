//! Recurring schedules: a cron expression in a time zone, and the job each
//! fire creates. This module decides what a schedule is and which fires are
//! due (`Schedule::plan`); `scheduler` drives it and the store makes each
//! fire exactly once (`store::schedules`).

pub mod cron;
pub mod fire_times;

use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::error::{Error, Result};
use crate::job::spec::{self, BackoffInput, JobInput};
use crate::job::{BackoffKind, Job};
pub use fire_times::FireTimes;

/// A fire is on time while the scheduler reaches it at most this late;
/// later than that it was missed (the server was down or the schedule's
/// cores were), and the catch-up policy decides.
pub const MISFIRE_GRACE_MILLIS: i64 = 10_000;
pub const DEFAULT_CATCH_UP_LIMIT: u32 = 100;
pub const MAX_CATCH_UP_LIMIT: u32 = 1000;
/// Schedules one space may hold.
pub const MAX_SCHEDULES_PER_SPACE: i64 = 1000;
pub const MAX_CRON_CHARS: usize = 200;
/// Fire times a read lists unless it asks for another number (`next`).
pub const DEFAULT_UPCOMING: usize = 5;
pub const MAX_UPCOMING: usize = 100;
/// A zone-less schedule reads its cron expression in UTC.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// What a fire does while the job of the previous one is still live
/// (neither completed, dead nor killed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlap {
    /// Create the job anyway.
    Allow,
    /// Skip this fire.
    Skip,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Skip => "skip",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(Self::Allow),
            "skip" => Some(Self::Skip),
            _ => None,
        }
    }
}

/// What happens to fires missed by more than `MISFIRE_GRACE_MILLIS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// They are dropped.
    None,
    /// The latest of them fires; the rest are dropped.
    One,
    /// They all fire, up to the schedule's `catch_up_limit` latest ones.
    All,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::One => "one",
            Self::All => "all",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Self::None),
            "one" => Some(Self::One),
            "all" => Some(Self::All),
            _ => None,
        }
    }
}

/// The job each fire creates: a create's fields, without a start time or
/// an idempotency key (the fire time plays that part). Stored as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTemplate {
    pub name: String,
    /// JSON text.
    pub payload: Option<String>,
    pub max_retries: Option<u32>,
    pub timeout_seconds: Option<u32>,
    pub callback_url: Option<String>,
    pub callback_headers: Vec<(String, String)>,
    /// Kind ("fixed", "exponential" or none for the default), delay, cap.
    pub retry_backoff: Option<(Option<String>, u32, u32)>,
    pub priority: Option<i32>,
    #[serde(default)]
    pub concurrency_key: Option<String>,
    #[serde(default)]
    pub concurrency_limit: Option<u32>,
}

impl JobTemplate {
    /// Checks a caller's job template the way a create checks a job, naming
    /// fields under `job.`.
    pub fn build(input: JobInput, now: UnixMillis) -> Result<Self> {
        if input.scheduled_for.is_some() {
            return Err(Error::invalid(
                "job.scheduledFor cannot be set: the schedule decides when its jobs run",
            ));
        }
        if input.idempotency_key.is_some() || input.idempotency_window_seconds.is_some() {
            return Err(Error::invalid(
                "job.idempotencyKey cannot be set: each fire makes exactly one job already",
            ));
        }
        let template = Self {
            name: input.name,
            payload: input.payload,
            max_retries: input.max_retries,
            timeout_seconds: input.timeout_seconds,
            callback_url: input.callback_url,
            callback_headers: input.callback_headers,
            retry_backoff: input.retry_backoff.map(|backoff| {
                (
                    backoff.kind.map(|kind| kind.as_str().to_owned()),
                    backoff.delay_seconds,
                    backoff.max_delay_seconds,
                )
            }),
            priority: input.priority,
            concurrency_key: input.concurrency_key,
            concurrency_limit: input.concurrency_limit,
        };
        spec::build_job("job", "", template.input(), now, String::new())?;
        Ok(template)
    }

    pub fn input(&self) -> JobInput {
        JobInput {
            name: self.name.clone(),
            payload: self.payload.clone(),
            max_retries: self.max_retries,
            timeout_seconds: self.timeout_seconds,
            callback_url: self.callback_url.clone(),
            callback_headers: self.callback_headers.clone(),
            retry_backoff: self
                .retry_backoff
                .as_ref()
                .map(|(kind, delay, max)| BackoffInput {
                    kind: kind.as_deref().and_then(BackoffKind::parse),
                    delay_seconds: *delay,
                    max_delay_seconds: *max,
                }),
            priority: self.priority,
            concurrency_key: self.concurrency_key.clone(),
            concurrency_limit: self.concurrency_limit,
            ..JobInput::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub id: String,
    pub space_id: String,
    pub cron: String,
    pub time_zone: String,
    pub job: JobTemplate,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub catch_up_limit: u32,
    pub paused: bool,
    /// The next fire time still to be made; None when the expression
    /// matches no more (or while paused, where a resume sets it afresh).
    pub next_fire_at: Option<UnixMillis>,
    pub last_fire_at: Option<UnixMillis>,
    pub last_job_id: Option<String>,
    /// Bumped by every write, for the conditional writes of updates.
    pub version: i64,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// A create or update as the caller asked it: unset fields keep their
/// value (or take their default on create).
#[derive(Clone, Debug, Default)]
pub struct ScheduleInput {
    pub cron: Option<String>,
    pub time_zone: Option<String>,
    pub job: Option<JobInput>,
    pub overlap: Option<Overlap>,
    pub catch_up: Option<CatchUp>,
    pub catch_up_limit: Option<u32>,
    pub paused: Option<bool>,
}

/// A schedule's due fires, decided at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirePlan {
    /// The fire times to make jobs for, oldest first.
    pub fire_times: Vec<UnixMillis>,
    /// The first fire time after the plan's instant.
    pub next: Option<UnixMillis>,
}

impl Schedule {
    /// A new schedule from a create request.
    pub fn create(
        space_id: &str,
        id: String,
        input: ScheduleInput,
        now: UnixMillis,
    ) -> Result<Self> {
        let Some(cron) = input.cron.clone() else {
            return Err(Error::invalid("cron is required"));
        };
        let Some(job) = input.job.clone() else {
            return Err(Error::invalid("job is required"));
        };
        let blank = Self {
            id,
            space_id: space_id.to_owned(),
            cron,
            time_zone: DEFAULT_TIME_ZONE.to_owned(),
            job: JobTemplate::build(job, now)?,
            overlap: Overlap::Allow,
            catch_up: CatchUp::One,
            catch_up_limit: DEFAULT_CATCH_UP_LIMIT,
            paused: false,
            next_fire_at: None,
            last_fire_at: None,
            last_job_id: None,
            version: 0,
            created_at: now,
            updated_at: now,
        };
        blank.apply(ScheduleInput { job: None, ..input }, now, true)
    }

    /// This schedule with an update applied. A change of expression or zone,
    /// or a resume, starts the fires afresh from `now`: nothing missed while
    /// paused is caught up.
    pub fn updated(&self, input: ScheduleInput, now: UnixMillis) -> Result<Self> {
        self.apply(input, now, false)
    }

    fn apply(&self, input: ScheduleInput, now: UnixMillis, fresh: bool) -> Result<Self> {
        let mut next = self.clone();
        if let Some(cron) = input.cron {
            if cron.chars().count() > MAX_CRON_CHARS {
                return Err(Error::invalid(format!(
                    "cron must be at most {MAX_CRON_CHARS} characters"
                )));
            }
            next.cron = cron;
        }
        if let Some(zone) = input.time_zone {
            next.time_zone = zone;
        }
        if let Some(job) = input.job {
            next.job = JobTemplate::build(job, now)?;
        }
        next.overlap = input.overlap.unwrap_or(next.overlap);
        next.catch_up = input.catch_up.unwrap_or(next.catch_up);
        if let Some(limit) = input.catch_up_limit {
            if !(1..=MAX_CATCH_UP_LIMIT).contains(&limit) {
                return Err(Error::invalid(format!(
                    "catchUpLimit must be between 1 and {MAX_CATCH_UP_LIMIT}"
                )));
            }
            next.catch_up_limit = limit;
        }
        next.paused = input.paused.unwrap_or(next.paused);
        let times = next.fire_times()?;
        let restart = next.cron != self.cron
            || next.time_zone != self.time_zone
            || next.paused != self.paused
            || fresh;
        if restart {
            let Some(upcoming) = times.next_after(now) else {
                return Err(Error::invalid(format!(
                    "cron {} matches no time in the coming years",
                    next.cron
                )));
            };
            next.next_fire_at = (!next.paused).then_some(upcoming);
        }
        next.updated_at = now;
        Ok(next)
    }

    pub fn fire_times(&self) -> Result<FireTimes> {
        FireTimes::new(&self.cron, &self.time_zone, "timeZone")
    }

    /// The fires due at `now` under the catch-up and overlap policies.
    pub fn plan(&self, times: &FireTimes, now: UnixMillis) -> FirePlan {
        let next = times.next_after(now);
        let Some(due) = self.next_fire_at.filter(|due| *due <= now) else {
            return FirePlan {
                fire_times: Vec::new(),
                next: self.next_fire_at,
            };
        };
        let cutoff = now - MISFIRE_GRACE_MILLIS;
        let kept = match self.catch_up {
            _ if due >= cutoff => 0,
            CatchUp::None => 0,
            CatchUp::One => 1,
            CatchUp::All => self.catch_up_limit as usize,
        };
        let mut fire_times = latest_before(times, due, cutoff, kept);
        // The on-time fires: from the due one, or the first within grace.
        let mut at = if due >= cutoff {
            due
        } else {
            times.next_after(cutoff - 1).unwrap_or(now + 1)
        };
        while at <= now {
            fire_times.push(at);
            match times.next_after(at) {
                Some(following) => at = following,
                None => break,
            }
        }
        if self.overlap == Overlap::Skip {
            // Each job a fire makes is live at once, so every later fire in
            // this plan would be skipped.
            fire_times.truncate(1);
        }
        FirePlan { fire_times, next }
    }

    /// The job one fire makes.
    pub fn job_for(&self, fire_time: UnixMillis, now: UnixMillis, id: String) -> Result<Job> {
        let mut job = spec::build_job("job", &self.space_id, self.job.input(), now, id)?;
        job.schedule = Some(crate::job::ScheduleFire {
            schedule_id: self.id.clone(),
            fire_time,
        });
        Ok(job)
    }
}

/// Most fire times one catch-up scan steps through: a sparse expression
/// over a long outage may catch up fewer than its limit rather than spin.
const MAX_CATCH_UP_SCAN: usize = 100_000;

/// The latest `count` fire times in `[from, before)`, oldest first. Looks
/// back from `before` over a growing window, so a long outage of a
/// frequent schedule costs about `count` steps, not one per missed fire.
fn latest_before(
    times: &FireTimes,
    from: UnixMillis,
    before: UnixMillis,
    count: usize,
) -> Vec<UnixMillis> {
    if count == 0 || from >= before {
        return Vec::new();
    }
    let mut window: i64 = 1000;
    loop {
        let start = from.max(before.saturating_sub(window));
        let mut found = Vec::new();
        let mut at = if start == from {
            Some(from)
        } else {
            times.next_after(start - 1)
        };
        while let Some(time) = at.filter(|time| *time < before) {
            found.push(time);
            if found.len() > MAX_CATCH_UP_SCAN {
                break;
            }
            at = times.next_after(time);
        }
        if found.len() >= count || start == from || found.len() > MAX_CATCH_UP_SCAN {
            let skip = found.len().saturating_sub(count);
            return found.split_off(skip);
        }
        window = window.saturating_mul(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, catch_up: CatchUp, overlap: Overlap, next: UnixMillis) -> Schedule {
        let mut input = ScheduleInput {
            cron: Some(cron.to_owned()),
            job: Some(JobInput {
                name: "tick".to_owned(),
                ..JobInput::default()
            }),
            catch_up: Some(catch_up),
            catch_up_limit: Some(5),
            overlap: Some(overlap),
            ..ScheduleInput::default()
        };
        input.time_zone = Some("UTC".to_owned());
        let mut schedule = Schedule::create("space", "sch".to_owned(), input, 0).unwrap();
        schedule.next_fire_at = Some(next);
        schedule
    }

    fn plan(cron: &str, catch_up: CatchUp, overlap: Overlap, next: i64, now: i64) -> FirePlan {
        let schedule = schedule(cron, catch_up, overlap, next);
        schedule.plan(&schedule.fire_times().unwrap(), now)
    }

    const S: i64 = 1000;

    #[test]
    fn on_time_fires_are_all_made_and_the_next_is_after_now() {
        let due = 1_000 * S;
        let planned = plan(
            "* * * * * *",
            CatchUp::None,
            Overlap::Allow,
            due,
            due + 2 * S + 500,
        );
        assert_eq!(planned.fire_times, vec![due, due + S, due + 2 * S]);
        assert_eq!(planned.next, Some(due + 3 * S));
        let early = plan("* * * * * *", CatchUp::None, Overlap::Allow, due, due - 1);
        assert!(early.fire_times.is_empty());
        assert_eq!(early.next, Some(due));
    }

    #[test]
    fn missed_fires_follow_the_catch_up_policy() {
        let due = 1_000 * S;
        let now = due + 100 * S;
        let within_grace: Vec<i64> = (90..=100).map(|n| due + n * S).collect();
        let none = plan("* * * * * *", CatchUp::None, Overlap::Allow, due, now);
        assert_eq!(none.fire_times, within_grace);
        let one = plan("* * * * * *", CatchUp::One, Overlap::Allow, due, now);
        assert_eq!(one.fire_times[0], due + 89 * S);
        assert_eq!(one.fire_times[1..], within_grace[..]);
        let all = plan("* * * * * *", CatchUp::All, Overlap::Allow, due, now);
        let missed: Vec<i64> = (85..=89).map(|n| due + n * S).collect();
        assert_eq!(all.fire_times[..5], missed[..]);
        assert_eq!(all.fire_times.len(), 16);
        let skip = plan("* * * * * *", CatchUp::All, Overlap::Skip, due, now);
        assert_eq!(skip.fire_times, vec![due + 85 * S]);
    }

    #[test]
    fn a_long_outage_of_a_frequent_schedule_catches_up_cheaply() {
        let due = 1_000 * S;
        let now = due + 30 * 24 * 3600 * S;
        let all = plan("* * * * * *", CatchUp::All, Overlap::Allow, due, now);
        assert_eq!(all.fire_times.len(), 5 + 11);
        assert_eq!(all.fire_times[4], now - MISFIRE_GRACE_MILLIS - S);
    }

    #[test]
    fn templates_are_checked_like_creates_with_job_field_names() {
        let input = |retries| ScheduleInput {
            cron: Some("* * * * *".to_owned()),
            job: Some(JobInput {
                name: "x".to_owned(),
                max_retries: Some(retries),
                ..JobInput::default()
            }),
            ..ScheduleInput::default()
        };
        let error = Schedule::create("s", "id".to_owned(), input(99), 0).unwrap_err();
        assert!(error.to_string().contains("job.maxRetries"), "{error}");
        assert!(Schedule::create("s", "id".to_owned(), input(2), 0).is_ok());
    }
}
