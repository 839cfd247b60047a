//! Property test: the job state machine against a small model written
//! independently from the documented lifecycle. Random sequences of
//! commands, fences and clock steps go to both; after every step they must
//! agree on whether the command was accepted (and, if not, whether it was
//! refused as stale or as a conflict), on the status, attempt, lease and
//! timer, and the events recorded must describe the change.

use emit_core::error::Error;
use emit_core::job::machine::{self, Command, Fence};
use emit_core::job::{BackoffKind, Callback, Job, JobState, JobStatus, RetryBackoff};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Scheduled,
    Pending,
    Delivered,
    Running,
    Completed,
    Dead,
    Killed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Stale,
    Conflict,
}

/// The lifecycle as the documentation tells it, nothing more.
#[derive(Clone, Debug)]
struct Model {
    status: Status,
    lease: Option<String>,
    attempt: u32,
    max_retries: u32,
    timeout: i64,
    backoff: i64,
    /// When the current state's clock runs out (run_at, available_at,
    /// ack or execution deadline).
    due: Option<i64>,
}

#[derive(Clone, Debug)]
enum Kind {
    Deliver,
    Ack,
    Progress,
    Checkpoint,
    Keepalive,
    PublishEvent,
    Complete,
    Fail,
    Kill,
    Retry,
    Expire,
    Release,
}

#[derive(Clone, Debug)]
enum FenceKind {
    None,
    CurrentLease,
    OldLease,
    CurrentAttempt,
    OtherAttempt,
}

#[derive(Clone, Debug)]
struct Step {
    kind: Kind,
    fence: FenceKind,
    /// How far the clock moves before the command.
    advance: i64,
}

impl Model {
    fn is_terminal(&self) -> bool {
        matches!(
            self.status,
            Status::Completed | Status::Dead | Status::Killed
        )
    }

    fn timer_due(&self, now: i64) -> bool {
        matches!(
            self.status,
            Status::Scheduled | Status::Delivered | Status::Running
        ) && self.due.is_some_and(|due| due <= now)
    }

    fn failed(&mut self, now: i64) {
        self.lease = None;
        if self.attempt < self.max_retries {
            self.attempt += 1;
            self.status = Status::Pending;
            self.due = Some(now + self.backoff);
        } else {
            self.status = Status::Dead;
            self.due = None;
        }
    }

    fn apply(&mut self, kind: &Kind, fence: &Fence, lease: &str, now: i64) -> Result<(), Refusal> {
        let worker_report = !matches!(
            kind,
            Kind::Deliver | Kind::Kill | Kind::Retry | Kind::Expire
        );
        if worker_report {
            if fence
                .attempt_number
                .is_some_and(|attempt| attempt != self.attempt)
            {
                return Err(Refusal::Stale);
            }
            if let (Some(presented), Some(held)) = (&fence.lease, &self.lease)
                && presented != held
            {
                return Err(Refusal::Stale);
            }
        }
        use Status::*;
        match (self.status, kind) {
            (Pending, Kind::Deliver) => {
                if self.due.is_some_and(|available| available > now) {
                    return Err(Refusal::Conflict);
                }
                self.status = Delivered;
                self.lease = Some(lease.to_owned());
                self.due = Some(now + self.timeout);
            }
            (Delivered, Kind::Ack) => {
                self.status = Running;
                self.due = Some(now + self.timeout);
            }
            (Running, Kind::Progress | Kind::Checkpoint | Kind::Keepalive) => {
                self.due = Some(now + self.timeout);
            }
            (Delivered | Running, Kind::PublishEvent) => {}
            (Delivered | Running, Kind::Complete) => {
                self.status = Completed;
                self.lease = None;
                self.due = None;
            }
            (Delivered | Running, Kind::Fail) | (Running, Kind::Expire) => self.failed(now),
            (Delivered, Kind::Expire | Kind::Release) | (Scheduled, Kind::Expire) => {
                self.status = Pending;
                self.lease = None;
                self.due = Some(now);
            }
            (Scheduled | Pending | Delivered | Running, Kind::Kill) => {
                self.status = Killed;
                self.lease = None;
                self.due = None;
            }
            // An operator's retry starts the attempts over, ready at once.
            (Dead | Killed, Kind::Retry) => {
                self.status = Pending;
                self.attempt = 0;
                self.due = Some(now);
            }
            _ => return Err(Refusal::Conflict),
        }
        Ok(())
    }
}

fn status_of(status: JobStatus) -> Status {
    match status {
        JobStatus::Scheduled => Status::Scheduled,
        JobStatus::Pending => Status::Pending,
        JobStatus::Delivered => Status::Delivered,
        JobStatus::Running => Status::Running,
        JobStatus::Completed => Status::Completed,
        JobStatus::Dead => Status::Dead,
        JobStatus::Killed => Status::Killed,
    }
}

fn command(kind: &Kind, lease: &str) -> Command {
    match kind {
        Kind::Deliver => Command::Deliver {
            lease: lease.to_owned(),
        },
        Kind::Ack => Command::Ack,
        Kind::Progress => Command::Progress { data: "1".into() },
        Kind::Checkpoint => Command::Checkpoint { data: "2".into() },
        Kind::Keepalive => Command::Keepalive,
        Kind::PublishEvent => Command::PublishEvent { data: "3".into() },
        Kind::Complete => Command::Complete {
            result: Some("4".into()),
        },
        Kind::Fail => Command::Fail {
            error: "boom".into(),
        },
        Kind::Kill => Command::Kill { reason: None },
        Kind::Retry => Command::Retry,
        Kind::Expire => Command::Expire,
        Kind::Release => Command::Release,
    }
}

fn step() -> impl Strategy<Value = Step> {
    let kind = prop_oneof![
        3 => Just(Kind::Deliver),
        2 => Just(Kind::Ack),
        1 => Just(Kind::Progress),
        1 => Just(Kind::Checkpoint),
        1 => Just(Kind::Keepalive),
        1 => Just(Kind::PublishEvent),
        2 => Just(Kind::Complete),
        2 => Just(Kind::Fail),
        1 => Just(Kind::Kill),
        1 => Just(Kind::Retry),
        3 => Just(Kind::Expire),
        1 => Just(Kind::Release),
    ];
    let fence = prop_oneof![
        3 => Just(FenceKind::None),
        2 => Just(FenceKind::CurrentLease),
        1 => Just(FenceKind::OldLease),
        1 => Just(FenceKind::CurrentAttempt),
        1 => Just(FenceKind::OtherAttempt),
    ];
    (kind, fence, 0i64..25_000).prop_map(|(kind, fence, advance)| Step {
        kind,
        fence,
        advance,
    })
}

fn new_job(scheduled_in: Option<i64>, max_retries: u32, timeout_seconds: u32, backoff: u32) -> Job {
    Job {
        id: "job".into(),
        space_id: "space".into(),
        name: "model".into(),
        payload: None,
        state: machine::initial_state(scheduled_in, 0),
        max_retries,
        attempt_number: 0,
        timeout_seconds,
        scheduled_for: scheduled_in,
        delivered_at: None,
        started_at: None,
        completed_at: None,
        result: None,
        progress: None,
        checkpoint: None,
        last_error: None,
        kill_reason: None,
        callback: None,
        retry_backoff: Some(RetryBackoff {
            kind: BackoffKind::Fixed,
            delay_seconds: backoff,
            max_delay_seconds: 0,
        }),
        priority: 0,
        schedule: None,
        concurrency_key: None,
        concurrency_limit: None,
        created_at: 0,
        updated_at: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_state_machine_follows_the_model(
        scheduled_in in prop::option::of(1i64..20_000),
        max_retries in 0u32..4,
        timeout_seconds in 1u32..10,
        backoff in 0u32..5,
        with_callback in any::<bool>(),
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let mut job = new_job(scheduled_in, max_retries, timeout_seconds, backoff);
        if with_callback {
            job.callback = Some(Callback { url: "http://callback.test/".into(), headers: vec![] });
        }
        let mut model = Model {
            status: if scheduled_in.is_some() { Status::Scheduled } else { Status::Pending },
            lease: None,
            attempt: 0,
            max_retries,
            timeout: i64::from(timeout_seconds) * 1000,
            backoff: i64::from(backoff) * 1000,
            due: Some(scheduled_in.unwrap_or(0)),
        };
        let mut now = 0;
        let mut old_leases = vec!["never-issued".to_owned()];
        for (n, step) in steps.iter().enumerate() {
            now += step.advance;
            let lease = format!("lease-{n}");
            // Timers only fire a job whose clock ran out.
            let due = machine::is_expired(&job, now);
            prop_assert_eq!(due, model.timer_due(now), "timer due at {} in {:?}", now, model);
            if matches!(step.kind, Kind::Expire) && !due {
                continue;
            }
            let fence = match step.fence {
                FenceKind::None => Fence::default(),
                FenceKind::CurrentLease => Fence { attempt_number: None, lease: model.lease.clone() },
                FenceKind::OldLease => Fence { attempt_number: None, lease: old_leases.last().cloned() },
                FenceKind::CurrentAttempt => Fence { attempt_number: Some(model.attempt), lease: None },
                FenceKind::OtherAttempt => Fence { attempt_number: Some(model.attempt + 1), lease: None },
            };
            let before = model.clone();
            let expected = model.apply(&step.kind, &fence, &lease, now);
            let actual = machine::apply(&job, command(&step.kind, &lease), &fence, now);
            match (&expected, actual) {
                (Ok(()), Ok(transition)) => {
                    let after = status_of(transition.job.status());
                    prop_assert_eq!(after, model.status, "{:?} from {:?}", step, before);
                    let quiet = matches!(step.kind, Kind::Keepalive);
                    prop_assert_eq!(transition.events.len(), usize::from(!quiet), "{:?}", step);
                    for event in &transition.events {
                        prop_assert_eq!(status_of(event.status), after);
                        let changed = after != before.status;
                        prop_assert_eq!(event.previous_status.map(status_of), changed.then_some(before.status));
                    }
                    let effects = transition.effects;
                    let ended = model.is_terminal() && !before.is_terminal();
                    prop_assert_eq!(effects.callback, ended && transition.job.callback.is_some());
                    prop_assert_eq!(
                        effects.ready,
                        model.status == Status::Pending && before.status != Status::Pending
                    );
                    prop_assert_eq!(
                        effects.lease_ended,
                        before.lease.is_some() && model.lease != before.lease
                    );
                    if let Some(held) = &before.lease
                        && model.lease.as_ref() != Some(held)
                    {
                        old_leases.push(held.clone());
                    }
                    job = transition.job;
                }
                (Err(refusal), Err(error)) => {
                    let kind = match error {
                        Error::Stale(_) => Refusal::Stale,
                        Error::Conflict(_) => Refusal::Conflict,
                        other => panic!("unexpected refusal {other:?}"),
                    };
                    prop_assert_eq!(*refusal, kind, "{:?} in {:?}", step, before);
                }
                (expected, actual) => prop_assert!(
                    false,
                    "{:?} in {:?}: model says {:?}, machine says {:?}",
                    step, before, expected, actual.map(|t| t.job.state)
                ),
            }
            prop_assert_eq!(job.attempt_number, model.attempt);
            prop_assert_eq!(job.state.lease().map(str::to_owned), model.lease.clone());
            prop_assert_eq!(job.state.due_at(), model.due, "{:?}", job.state);
            prop_assert_eq!(job.completed_at.is_some(), model.is_terminal());
            prop_assert!(job.attempt_number <= job.max_retries);
            if model.is_terminal() {
                prop_assert!(matches!(job.state, JobState::Completed | JobState::Dead | JobState::Killed));
            }
        }
    }
}
