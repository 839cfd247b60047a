//! The job state machine: the one place that decides what a command does to
//! a job. REST, gRPC, timers and every store go through `apply`; stores only
//! persist the returned job with a write conditional on the old state, so a
//! racing writer loses cleanly instead of corrupting the job.
//!
//! ```text
//! scheduled -> pending -> delivered -> running -> completed
//!                 ^   \______________/    |  \--> dead      (failure, no retries left)
//!                 |    delivery timeout   |
//!                 \_______________________/ failure with retries left (retried)
//! any non-terminal state -> killed
//! ```

use super::{EventDraft, EventKind, Job, JobState};
use crate::clock::UnixMillis;
use crate::error::Error;

/// Reason recorded when a running job misses its execution deadline.
pub const TIMED_OUT: &str = "timed out";

#[derive(Clone, Debug)]
pub enum Command {
    /// Hand the job to a worker (poll, claim or push) under a new lease.
    Deliver {
        lease: String,
    },
    Ack,
    Progress {
        data: String,
    },
    Checkpoint {
        data: String,
    },
    Keepalive,
    /// A worker-defined event; changes nothing but the history.
    PublishEvent {
        data: String,
    },
    Complete {
        result: Option<String>,
    },
    Fail {
        error: String,
    },
    Kill {
        reason: Option<String>,
    },
    /// An operator's second chance for a dead or killed job: pending again
    /// at once, with a fresh set of attempts.
    Retry,
    /// The state's timer came due.
    Expire,
    /// The worker holding a delivered job went away before acking: the job
    /// is ready again at once, no attempt used.
    Release,
}

impl Command {
    fn verb(&self) -> &'static str {
        match self {
            Self::Deliver { .. } => "deliver",
            Self::Ack => "ack",
            Self::Progress { .. } => "report progress on",
            Self::Checkpoint { .. } => "checkpoint",
            Self::Keepalive => "keep alive",
            Self::PublishEvent { .. } => "publish an event on",
            Self::Complete { .. } => "complete",
            Self::Fail { .. } => "fail",
            Self::Kill { .. } => "kill",
            Self::Retry => "retry",
            Self::Expire => "expire",
            Self::Release => "release",
        }
    }

    fn is_worker_report(&self) -> bool {
        !matches!(
            self,
            Self::Deliver { .. } | Self::Kill { .. } | Self::Retry | Self::Expire
        )
    }
}

/// Guard a worker may put on its calls (see `Fence` in the proto).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fence {
    pub attempt_number: Option<u32>,
    pub lease: Option<String>,
}

impl Fence {
    /// The fence of whoever holds `job` under its current lease.
    pub fn holding(job: &Job) -> Self {
        Self {
            attempt_number: None,
            lease: job.state.lease().map(str::to_owned),
        }
    }
}

#[derive(Debug)]
pub struct Transition {
    pub job: Job,
    pub events: Vec<EventDraft>,
    pub effects: Effects,
}

/// What a transition implies beyond the job's row, decided here once:
/// stores, write batches and timer sweeps act on these instead of working
/// them out again from the states. (When the new state needs a timer is
/// the state's own `JobState::timer_at`.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// The job ended and has a callback: its outbox entry is written with
    /// the transition.
    pub callback: bool,
    /// The job entered pending: waiting workers may take it once it is
    /// available.
    pub ready: bool,
    /// The lease the job was held under ended: the holder's slot is free.
    pub lease_ended: bool,
}

impl Effects {
    fn of(before: &Job, after: &Job) -> Self {
        let ended = after.status().is_terminal() && !before.status().is_terminal();
        Self {
            callback: ended && after.callback.is_some(),
            ready: matches!(after.state, JobState::Pending { .. })
                && !matches!(before.state, JobState::Pending { .. }),
            lease_ended: before
                .state
                .lease()
                .is_some_and(|held| after.state.lease() != Some(held)),
        }
    }
}

pub fn apply(
    job: &Job,
    command: Command,
    fence: &Fence,
    now: UnixMillis,
) -> Result<Transition, Error> {
    if command.is_worker_report() {
        check_fence(job, fence)?;
    }
    let previous = job.status();
    let mut next = job.clone();
    next.updated_at = now;
    let mut events = Vec::with_capacity(1);
    let took_ms = match (&job.state, &command) {
        (JobState::Pending { available_at }, Command::Deliver { .. }) => Some(now - available_at),
        (
            JobState::Running { .. },
            Command::Complete { .. } | Command::Fail { .. } | Command::Expire,
        ) => job.started_at.map(|started| now - started),
        _ => None,
    };
    let mut record = |next: &Job, kind: EventKind, data: Option<String>| {
        let status = next.status();
        events.push(EventDraft {
            kind,
            status,
            previous_status: (status != previous).then_some(previous),
            data,
            took_ms,
        });
    };

    match (&job.state, command) {
        (JobState::Pending { available_at }, Command::Deliver { lease }) => {
            if *available_at > now {
                return Err(Error::Conflict(
                    "job is waiting out its retry backoff".into(),
                ));
            }
            next.state = JobState::Delivered {
                lease,
                ack_deadline: now + job.timeout_millis(),
            };
            next.delivered_at = Some(now);
            record(&next, EventKind::Delivered, None);
        }
        (JobState::Delivered { lease, .. }, Command::Ack) => {
            next.state = JobState::Running {
                lease: lease.clone(),
                deadline: now + job.timeout_millis(),
            };
            next.started_at = Some(now);
            record(&next, EventKind::Acked, None);
        }
        (JobState::Running { lease, .. }, Command::Progress { data }) => {
            next.state = extend(lease, job, now);
            next.progress = Some(data.clone());
            record(&next, EventKind::Progress, Some(data));
        }
        (JobState::Running { lease, .. }, Command::Checkpoint { data }) => {
            next.state = extend(lease, job, now);
            next.checkpoint = Some(data.clone());
            record(&next, EventKind::Checkpoint, Some(data));
        }
        (JobState::Running { lease, .. }, Command::Keepalive) => {
            next.state = extend(lease, job, now);
        }
        (JobState::Delivered { .. } | JobState::Running { .. }, Command::PublishEvent { data }) => {
            record(&next, EventKind::Event, Some(data));
        }
        // A worker may report the outcome without acking first: the result is
        // what matters, and refusing it would only force a pointless retry.
        (JobState::Delivered { .. } | JobState::Running { .. }, Command::Complete { result }) => {
            next.state = JobState::Completed;
            next.started_at = job.started_at.or(Some(now));
            next.completed_at = Some(now);
            next.result = result.clone();
            record(&next, EventKind::Completed, result);
        }
        (JobState::Delivered { .. } | JobState::Running { .. }, Command::Fail { error }) => {
            fail(&mut next, error, now, &mut record);
        }
        (JobState::Running { .. }, Command::Expire) => {
            fail(&mut next, TIMED_OUT.to_owned(), now, &mut record);
        }
        (JobState::Delivered { .. }, Command::Expire) => {
            next.state = JobState::Pending { available_at: now };
            record(&next, EventKind::DeliveryTimeout, None);
        }
        (JobState::Delivered { .. }, Command::Release) => {
            next.state = JobState::Pending { available_at: now };
            record(&next, EventKind::Released, None);
        }
        (JobState::Scheduled { .. }, Command::Expire) => {
            next.state = JobState::Pending { available_at: now };
            record(&next, EventKind::Ready, None);
        }
        (state, Command::Kill { reason }) if !state.status().is_terminal() => {
            next.state = JobState::Killed;
            next.completed_at = Some(now);
            next.kill_reason = reason.clone();
            let data = serde_json::json!({ "reason": reason }).to_string();
            record(&next, EventKind::Killed, Some(data));
        }
        (JobState::Dead | JobState::Killed, Command::Retry) => {
            // The outcome of the last run goes; its error stays readable in
            // the events. The callback, if any, fires again at the next end.
            next.state = JobState::Pending { available_at: now };
            next.attempt_number = 0;
            next.delivered_at = None;
            next.started_at = None;
            next.completed_at = None;
            next.result = None;
            next.kill_reason = None;
            let data = serde_json::json!({ "attemptNumber": 0, "manual": true });
            record(&next, EventKind::Retried, Some(data.to_string()));
        }
        (state, command) => {
            return Err(Error::Conflict(format!(
                "cannot {} a {} job",
                command.verb(),
                state.status()
            )));
        }
    }
    let effects = Effects::of(job, &next);
    Ok(Transition {
        job: next,
        events,
        effects,
    })
}

/// Whether a timer due now should fire for this job.
pub fn is_expired(job: &Job, now: UnixMillis) -> bool {
    job.state.timer_at().is_some_and(|due| due <= now)
}

fn extend(lease: &str, job: &Job, now: UnixMillis) -> JobState {
    JobState::Running {
        lease: lease.to_owned(),
        deadline: now + job.timeout_millis(),
    }
}

fn fail(
    next: &mut Job,
    error: String,
    now: UnixMillis,
    record: &mut impl FnMut(&Job, EventKind, Option<String>),
) {
    next.last_error = Some(error.clone());
    if next.attempt_number < next.max_retries {
        next.attempt_number += 1;
        let delay = next.retry_backoff.map_or(0, |backoff| {
            backoff.delay_before(next.attempt_number).as_millis() as i64
        });
        next.state = JobState::Pending {
            available_at: now + delay,
        };
        let data = serde_json::json!({ "error": error, "attemptNumber": next.attempt_number });
        record(next, EventKind::Retried, Some(data.to_string()));
    } else {
        next.state = JobState::Dead;
        next.completed_at = Some(now);
        let data = serde_json::json!({ "error": error });
        record(next, EventKind::Dead, Some(data.to_string()));
    }
}

fn check_fence(job: &Job, fence: &Fence) -> Result<(), Error> {
    if let Some(attempt) = fence.attempt_number
        && attempt != job.attempt_number
    {
        return Err(Error::Stale(format!(
            "stale attempt {attempt}: job is on attempt {}",
            job.attempt_number
        )));
    }
    if let Some(lease) = &fence.lease
        && job.state.lease().is_some_and(|current| current != lease)
    {
        return Err(Error::Stale(
            "stale lease: the job was delivered again after this lease".into(),
        ));
    }
    Ok(())
}

/// The status a created job starts in.
pub fn initial_state(scheduled_for: Option<UnixMillis>, now: UnixMillis) -> JobState {
    match scheduled_for {
        Some(run_at) if run_at > now => JobState::Scheduled { run_at },
        _ => JobState::Pending { available_at: now },
    }
}

/// The `created` event; it names the job's priority when one was set and
/// the schedule fire that made it, if one did.
pub fn created_event(job: &Job) -> EventDraft {
    let mut data = serde_json::Map::new();
    if job.priority != 0 {
        data.insert("priority".into(), job.priority.into());
    }
    if let Some(fire) = &job.schedule {
        data.insert("scheduleId".into(), fire.schedule_id.clone().into());
        data.insert("fireTime".into(), rfc3339(fire.fire_time).into());
    }
    EventDraft {
        kind: EventKind::Created,
        status: job.state.status(),
        previous_status: None,
        data: (!data.is_empty()).then(|| serde_json::Value::Object(data).to_string()),
        took_ms: None,
    }
}

/// An instant as the REST API shows instants: RFC 3339 UTC, milliseconds.
fn rfc3339(at: UnixMillis) -> String {
    jiff::Timestamp::from_millisecond(at).map_or_else(|_| at.to_string(), |at| format!("{at:.3}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{BackoffKind, JobStatus, RetryBackoff};

    fn job(state: JobState) -> Job {
        Job {
            id: "J".into(),
            space_id: "S".into(),
            name: "n".into(),
            payload: None,
            state,
            max_retries: 1,
            attempt_number: 0,
            timeout_seconds: 10,
            scheduled_for: None,
            delivered_at: None,
            started_at: None,
            completed_at: None,
            result: None,
            progress: None,
            checkpoint: None,
            last_error: None,
            kill_reason: None,
            callback: None,
            retry_backoff: None,
            priority: 0,
            schedule: None,
            concurrency_key: None,
            concurrency_limit: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn run(job: &Job, command: Command, now: UnixMillis) -> Result<Transition, Error> {
        apply(job, command, &Fence::default(), now)
    }

    #[test]
    fn a_job_runs_from_pending_to_completed() {
        let pending = job(JobState::Pending { available_at: 0 });
        let delivered = run(&pending, Command::Deliver { lease: "L".into() }, 5).unwrap();
        assert_eq!(
            delivered.job.state,
            JobState::Delivered {
                lease: "L".into(),
                ack_deadline: 10_005
            }
        );
        let running = run(&delivered.job, Command::Ack, 7).unwrap();
        assert_eq!(
            running.job.state,
            JobState::Running {
                lease: "L".into(),
                deadline: 10_007
            }
        );
        assert_eq!(
            running.events[0].previous_status,
            Some(JobStatus::Delivered)
        );
        let done = run(
            &running.job,
            Command::Complete {
                result: Some("1".into()),
            },
            9,
        )
        .unwrap();
        assert_eq!(done.job.status(), JobStatus::Completed);
        assert_eq!(done.job.result.as_deref(), Some("1"));
        assert_eq!(done.events[0].kind, EventKind::Completed);
    }

    #[test]
    fn failures_retry_until_the_last_attempt_then_die() {
        let running = job(JobState::Running {
            lease: "L".into(),
            deadline: 100,
        });
        let retried = run(
            &running,
            Command::Fail {
                error: "boom".into(),
            },
            1,
        )
        .unwrap();
        assert_eq!(retried.job.state, JobState::Pending { available_at: 1 });
        assert_eq!(retried.job.attempt_number, 1);
        assert_eq!(retried.events[0].kind, EventKind::Retried);
        assert_eq!(
            retried.events[0].data.as_deref(),
            Some(r#"{"attemptNumber":1,"error":"boom"}"#)
        );
        let mut last = retried.job.clone();
        last.state = JobState::Running {
            lease: "M".into(),
            deadline: 100,
        };
        let dead = run(
            &last,
            Command::Fail {
                error: "boom".into(),
            },
            2,
        )
        .unwrap();
        assert_eq!(dead.job.status(), JobStatus::Dead);
        assert_eq!(dead.job.attempt_number, 1);
    }

    #[test]
    fn backoff_delays_the_retry() {
        let mut running = job(JobState::Running {
            lease: "L".into(),
            deadline: 100,
        });
        running.retry_backoff = Some(RetryBackoff {
            kind: BackoffKind::Exponential,
            delay_seconds: 2,
            max_delay_seconds: 0,
        });
        let retried = run(&running, Command::Fail { error: "x".into() }, 1_000).unwrap();
        assert_eq!(
            retried.job.state,
            JobState::Pending {
                available_at: 3_000
            }
        );
        assert!(run(&retried.job, Command::Deliver { lease: "M".into() }, 2_000).is_err());
    }

    #[test]
    fn delivery_timeout_returns_the_job_without_using_an_attempt() {
        let delivered = job(JobState::Delivered {
            lease: "L".into(),
            ack_deadline: 10,
        });
        let expired = run(&delivered, Command::Expire, 10).unwrap();
        assert_eq!(expired.job.state, JobState::Pending { available_at: 10 });
        assert_eq!(expired.job.attempt_number, 0);
        assert_eq!(expired.events[0].kind, EventKind::DeliveryTimeout);
    }

    #[test]
    fn execution_timeout_counts_as_a_failure() {
        let running = job(JobState::Running {
            lease: "L".into(),
            deadline: 10,
        });
        let expired = run(&running, Command::Expire, 10).unwrap();
        assert_eq!(expired.job.attempt_number, 1);
        assert_eq!(expired.job.last_error.as_deref(), Some(TIMED_OUT));
    }

    #[test]
    fn wrong_state_and_stale_fences_are_refused() {
        let pending = job(JobState::Pending { available_at: 0 });
        let error = run(&pending, Command::Ack, 1).unwrap_err();
        assert_eq!(error.to_string(), "cannot ack a pending job");
        let running = job(JobState::Running {
            lease: "L".into(),
            deadline: 10,
        });
        let stale = Fence {
            attempt_number: Some(3),
            lease: None,
        };
        assert!(matches!(
            apply(&running, Command::Keepalive, &stale, 1),
            Err(Error::Stale(_))
        ));
        let other_lease = Fence {
            attempt_number: None,
            lease: Some("X".into()),
        };
        assert!(matches!(
            apply(&running, Command::Ack, &other_lease, 1),
            Err(Error::Stale(_))
        ));
        let killed = run(&running, Command::Kill { reason: None }, 1).unwrap();
        assert!(run(&killed.job, Command::Kill { reason: None }, 2).is_err());
    }

    #[test]
    fn scheduled_jobs_become_pending_when_due_and_can_be_killed() {
        let scheduled = job(JobState::Scheduled { run_at: 50 });
        assert!(!is_expired(&scheduled, 49));
        assert!(is_expired(&scheduled, 50));
        let ready = run(&scheduled, Command::Expire, 50).unwrap();
        assert_eq!(ready.job.state, JobState::Pending { available_at: 50 });
        let killed = run(
            &scheduled,
            Command::Kill {
                reason: Some("no".into()),
            },
            1,
        )
        .unwrap();
        assert_eq!(killed.job.status(), JobStatus::Killed);
        assert_eq!(killed.events[0].data.as_deref(), Some(r#"{"reason":"no"}"#));
    }

    #[test]
    fn an_operator_retry_gives_a_dead_or_killed_job_fresh_attempts() {
        let mut dead = job(JobState::Dead);
        dead.attempt_number = 1;
        dead.completed_at = Some(5);
        dead.last_error = Some("boom".into());
        let retried = run(&dead, Command::Retry, 9).unwrap();
        assert_eq!(retried.job.state, JobState::Pending { available_at: 9 });
        assert_eq!(retried.job.attempt_number, 0);
        assert_eq!(retried.job.completed_at, None);
        assert_eq!(retried.events[0].kind, EventKind::Retried);
        assert_eq!(retried.events[0].previous_status, Some(JobStatus::Dead));
        let killed = run(&retried.job, Command::Kill { reason: None }, 10).unwrap();
        assert!(run(&killed.job, Command::Retry, 11).is_ok());
        let error = run(&job(JobState::Completed), Command::Retry, 1).unwrap_err();
        assert_eq!(error.to_string(), "cannot retry a completed job");
    }
}
