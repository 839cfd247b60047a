//! Push dispatch to connected workers. A session holds at most `capacity`
//! jobs; while it has room, jobs are delivered to it through the same
//! `JobsApi` calls the polling path uses (same state machine, events,
//! timeouts and fencing). A session wakes when a commit makes a matching job
//! ready, so a new job reaches an idle worker without polling delay.
//!
//! Every idle matching session tries when woken and the store hands each job
//! to exactly one of them; the others find nothing (a cheap read-only turn of
//! the writer). A session that is told of an event that took one of its jobs
//! away (killed, or the attempt timed out) cancels it on the worker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::auth::{Principal, Revocation};
use crate::error::{Error, Result};
use crate::job::machine::{Command, Fence};
use crate::job::{Job, JobStatus, LiveEvent};
use crate::realtime::{Ended, EventHub, Topic};
use crate::service::{JobsApi, MAX_POLL_COUNT};
use crate::store::Step;

pub const MAX_CAPACITY: u32 = 1000;
/// A session also looks for work this often: a retry waiting out its
/// backoff becomes ready without an event.
const RECHECK: Duration = Duration::from_secs(1);
/// Most worker messages a session takes up in one turn.
const TAKEN_TOGETHER: usize = 64;

pub struct Hello {
    pub space_id: String,
    pub names: Vec<String>,
    pub capacity: u32,
}

impl Hello {
    pub fn validate(&self) -> Result<()> {
        check_capacity(self.capacity)
    }
}

fn check_capacity(capacity: u32) -> Result<()> {
    if !(1..=MAX_CAPACITY).contains(&capacity) {
        return Err(Error::invalid(format!(
            "capacity must be between 1 and {MAX_CAPACITY}"
        )));
    }
    Ok(())
}

pub enum Report {
    Job(Command),
    Logs(Vec<(String, String)>),
}

pub enum WorkerInput {
    Capacity(u32),
    Report {
        request_id: u64,
        job_id: String,
        report: Report,
    },
    Drain,
}

pub enum WorkerOutput {
    Welcome {
        session_id: String,
    },
    Assignment(Job),
    Result {
        request_id: u64,
        job_id: String,
        outcome: Result<Option<Job>>,
    },
    Cancellation {
        job_id: String,
        lease: String,
        reason: &'static str,
    },
    Drained,
    /// The session's key was revoked: the session ends.
    Revoked,
}

struct Held {
    lease: String,
    /// A report that may end the job is in flight: events it causes are
    /// the worker's own doing, not a reason to cancel.
    reporting: usize,
}

impl Held {
    fn of(job: &Job) -> Self {
        Self {
            lease: job.state.lease().unwrap_or_default().to_owned(),
            reporting: 0,
        }
    }
}

struct Session {
    jobs: Arc<JobsApi>,
    who: Principal,
    hello: Hello,
    held: HashMap<String, Held>,
    /// Jobs asked for by the delivery in flight.
    asked: u32,
    draining: bool,
    output: mpsc::Sender<WorkerOutput>,
}

/// A delivery's outcome, with how many jobs it asked for.
type Delivered = (u32, Result<Vec<Job>>);

/// Which ready-job events the sessions of this replica have already taken
/// up, per space. Every session of a space sees every event; without this,
/// each new job would send every idle session to the store, only for one to
/// get it. A session claims (by sequence number) as many `pending` events as
/// it has room for and looks for work only for those it claimed. Sessions on
/// other replicas claim on their own, so a job wakes at most one session
/// per replica.
#[derive(Default)]
pub struct WakeClaims {
    spaces: std::sync::Mutex<HashMap<String, Arc<AtomicI64>>>,
}

impl WakeClaims {
    /// The space's highest claimed event sequence number.
    pub fn for_space(&self, space_id: &str) -> Arc<AtomicI64> {
        self.spaces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(space_id.to_owned())
            .or_default()
            .clone()
    }
}

/// Claims the ready-job event `seq` unless another session has.
fn claim(claimed: &AtomicI64, seq: i64) -> bool {
    claimed.fetch_max(seq, Ordering::AcqRel) < seq
}

/// What an in-flight report came back with.
struct Reported {
    request_id: u64,
    job_id: String,
    outcome: Result<Option<Job>>,
}

/// A report as the worker sent it, with the fence it carries.
struct ReportCall {
    request_id: u64,
    job_id: String,
    report: Report,
    fence: Fence,
}

/// Reports in flight and waiting. Those about one job are written one
/// write at a time, in the order the worker sent them (ack before progress
/// before completion); those about different jobs run side by side. The
/// reports about one job that arrived while its last write was in flight,
/// or together, go as one write (`JobsApi::report_in_order`).
#[derive(Default)]
struct Reports {
    running: JoinSet<(String, Vec<Reported>)>,
    /// Jobs with a write in flight.
    writing: HashSet<String>,
    /// Reports not started yet, per job.
    waiting: HashMap<String, Vec<ReportCall>>,
}

impl Reports {
    fn is_empty(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    fn submit(&mut self, call: ReportCall) {
        self.waiting
            .entry(call.job_id.clone())
            .or_default()
            .push(call);
    }

    /// The write about `job_id` is done.
    fn finished(&mut self, job_id: &str) {
        self.writing.remove(job_id);
    }

    /// Starts a write for every job with waiting reports and none in flight.
    fn start_ready(&mut self, session: &Session) {
        let ready: Vec<String> = self
            .waiting
            .keys()
            .filter(|job_id| !self.writing.contains(*job_id))
            .cloned()
            .collect();
        for job_id in ready {
            let Some(calls) = self.waiting.remove(&job_id) else {
                continue;
            };
            self.writing.insert(job_id.clone());
            let (jobs, who) = (session.jobs.clone(), session.who.clone());
            self.running.spawn(async move {
                (
                    job_id.clone(),
                    write_reports(&jobs, &who, job_id, calls).await,
                )
            });
        }
    }
}

/// Runs one job's reports in order: runs of job commands as one write
/// each, log lines on their own.
async fn write_reports(
    jobs: &JobsApi,
    who: &Principal,
    job_id: String,
    calls: Vec<ReportCall>,
) -> Vec<Reported> {
    let mut reported = Vec::with_capacity(calls.len());
    let mut calls = calls.into_iter().peekable();
    while let Some(call) = calls.next() {
        let (request_id, fence) = (call.request_id, call.fence);
        let command = match call.report {
            Report::Logs(lines) => {
                let outcome = jobs.append_logs(who, &job_id, lines).await.map(|_| None);
                reported.push(Reported {
                    request_id,
                    job_id: job_id.clone(),
                    outcome,
                });
                continue;
            }
            Report::Job(command) => command,
        };
        let mut request_ids = vec![request_id];
        let mut steps = vec![Step { command, fence }];
        while let Some(ReportCall {
            request_id,
            report: Report::Job(command),
            fence,
            ..
        }) = calls.next_if(|call| matches!(call.report, Report::Job(_)))
        {
            request_ids.push(request_id);
            steps.push(Step { command, fence });
        }
        let outcomes = jobs.report_in_order(who, &job_id, steps).await;
        for (request_id, outcome) in request_ids.into_iter().zip(outcomes) {
            reported.push(Reported {
                request_id,
                job_id: job_id.clone(),
                outcome: outcome.map(Some),
            });
        }
    }
    reported
}

/// Runs a worker's session until its input ends (the stream dropped) or it
/// drained. On the way out, jobs delivered but not yet acked go back to
/// pending at once; running jobs are left to finish or time out.
#[allow(clippy::too_many_arguments)]
pub async fn run_session(
    jobs: Arc<JobsApi>,
    hub: EventHub,
    claims: Arc<AtomicI64>,
    mut revocation: Revocation,
    who: Principal,
    hello: Hello,
    mut input: mpsc::Receiver<WorkerInput>,
    output: mpsc::Sender<WorkerOutput>,
) {
    let session_id = crate::ids::new_id();
    let mut events = hub.subscribe(Topic::Space(hello.space_id.clone()));
    let mut session = Session {
        jobs,
        who,
        hello,
        held: HashMap::new(),
        asked: 0,
        draining: false,
        output,
    };
    if session
        .send(WorkerOutput::Welcome {
            session_id: session_id.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!(%session_id, space_id = %session.hello.space_id, "worker session opened");
    let mut reports = Reports::default();
    // At most one delivery in flight; it runs alongside the reports, so that
    // a session's deliveries and reports share the writer's batches.
    let mut delivering: JoinSet<Delivered> = JoinSet::new();
    // The hub closes when the server stops: the session then drains.
    let mut hub_open = true;
    let mut look_for_work = true;
    let mut recheck = Instant::now() + RECHECK;
    'session: loop {
        if look_for_work && delivering.is_empty() && session.has_room() {
            look_for_work = false;
            recheck = Instant::now() + RECHECK;
            delivering.spawn(session.deliver());
        }
        if session.draining
            && session.held.is_empty()
            && reports.is_empty()
            && delivering.is_empty()
        {
            let _ = session.send(WorkerOutput::Drained).await;
            break;
        }
        tokio::select! {
            () = revocation.revoked() => {
                let _ = session.send(WorkerOutput::Revoked).await;
                break;
            }
            message = input.recv() => {
                let Some(message) = message else { break };
                // Take what else the worker sent meanwhile, so that reports
                // sent together (ack and completion) are written together.
                let mut next = Some(message);
                let mut taken = 0;
                while let Some(message) = next.take() {
                    match message {
                        WorkerInput::Capacity(capacity) => {
                            if let Err(error) = check_capacity(capacity) {
                                let _ = session.send(WorkerOutput::Result {
                                    request_id: 0,
                                    job_id: String::new(),
                                    outcome: Err(error),
                                }).await;
                            } else {
                                session.hello.capacity = capacity;
                                look_for_work = true;
                            }
                        }
                        WorkerInput::Drain => session.draining = true,
                        WorkerInput::Report { request_id, job_id, report } => {
                            let fence = session.fence(&job_id);
                            if let Some(held) = session.held.get_mut(&job_id) {
                                held.reporting += 1;
                            }
                            reports.submit(ReportCall { request_id, job_id, report, fence });
                        }
                    }
                    taken += 1;
                    if taken < TAKEN_TOGETHER {
                        next = input.try_recv().ok();
                    }
                }
                reports.start_ready(&session);
            }
            Some(done) = delivering.join_next(), if !delivering.is_empty() => {
                let Ok(delivered) = done else { continue };
                match session.hold(delivered).await {
                    Ok(true) => look_for_work = true,
                    Ok(false) => {}
                    Err(()) => break,
                }
            }
            Some(done) = reports.running.join_next(), if !reports.running.is_empty() => {
                let Ok((job_id, reported)) = done else { continue };
                reports.finished(&job_id);
                reports.start_ready(&session);
                for reported in reported {
                    if session.settle(&reported) {
                        look_for_work = true;
                    }
                    let result = WorkerOutput::Result {
                        request_id: reported.request_id,
                        job_id: reported.job_id,
                        outcome: reported.outcome,
                    };
                    if session.send(result).await.is_err() {
                        break 'session;
                    }
                }
            }
            chunk = events.recv(), if hub_open => match chunk {
                Ok(chunk) => {
                    let mut room = session.room();
                    for event in chunk.iter() {
                        let LiveEvent::Job(event) = event else { continue };
                        if event.status == JobStatus::Pending && session.wants(&event.job_name) {
                            if room > 0 && claim(&claims, event.seq) {
                                room -= 1;
                                look_for_work = true;
                            } else if !delivering.is_empty() {
                                // The delivery in flight may have looked before
                                // this job was ready: look again after it,
                                // without claiming, so that a session with room
                                // still may.
                                look_for_work = true;
                            }
                        }
                        if session.lost(&event.job_id, event.status).await.is_err() {
                            break 'session;
                        }
                    }
                }
                // Missed wake-ups only: look for work; cancellations of jobs
                // lost meanwhile surface as refused reports.
                Err(Ended::Overrun) => {
                    events = hub.subscribe(Topic::Space(session.hello.space_id.clone()));
                    look_for_work = true;
                }
                // The server is stopping: take no more work, let the worker
                // finish what it holds, then say `drained`.
                Err(Ended::Closed) => {
                    hub_open = false;
                    session.draining = true;
                }
            },
            () = tokio::time::sleep_until(recheck) => {
                look_for_work = true;
                recheck = Instant::now() + RECHECK;
            }
        }
    }
    // A delivery still in flight leases jobs to this session: take them up
    // to release them with the rest.
    while let Some(done) = delivering.join_next().await {
        if let Ok((asked, delivered)) = done {
            session.asked = session.asked.saturating_sub(asked);
            for job in delivered.into_iter().flatten() {
                session.held.insert(job.id.clone(), Held::of(&job));
            }
        }
    }
    session.release_all().await;
    tracing::debug!(%session_id, "worker session closed");
}

impl Session {
    async fn send(&self, message: WorkerOutput) -> std::result::Result<(), ()> {
        self.output.send(message).await.map_err(drop)
    }

    fn has_room(&self) -> bool {
        self.room() > 0
    }

    /// How many more jobs the session may take now.
    fn room(&self) -> u32 {
        if self.draining {
            0
        } else {
            self.hello
                .capacity
                .saturating_sub(self.held.len() as u32 + self.asked)
        }
    }

    fn wants(&self, name: &str) -> bool {
        self.hello.names.is_empty() || self.hello.names.iter().any(|n| n == name)
    }

    fn fence(&self, job_id: &str) -> Fence {
        Fence {
            attempt_number: None,
            lease: self.held.get(job_id).map(|held| held.lease.clone()),
        }
    }

    /// A delivery of up to the room left, to run alongside the session.
    fn deliver(&mut self) -> impl Future<Output = Delivered> + Send + 'static {
        let asked = self.room().min(MAX_POLL_COUNT);
        self.asked += asked;
        let (jobs, who) = (self.jobs.clone(), self.who.clone());
        let (space_id, names) = (self.hello.space_id.clone(), self.hello.names.clone());
        async move {
            let delivered = jobs.poll(&who, &space_id, Some(asked), names, None).await;
            (asked, delivered)
        }
    }

    /// Takes up what a delivery leased and hands it to the worker; returns
    /// whether there may be more.
    async fn hold(&mut self, (asked, delivered): Delivered) -> std::result::Result<bool, ()> {
        self.asked = self.asked.saturating_sub(asked);
        let delivered = match delivered {
            Ok(delivered) => delivered,
            Err(error) => {
                tracing::warn!(%error, "push dispatch failed; retrying on the next wake");
                return Ok(false);
            }
        };
        let full = delivered.len() as u32 == asked;
        for job in delivered {
            self.held.insert(job.id.clone(), Held::of(&job));
            self.send(WorkerOutput::Assignment(job)).await?;
        }
        Ok(full)
    }

    /// Updates what the session holds after a report; returns whether room
    /// was freed.
    fn settle(&mut self, reported: &Reported) -> bool {
        let Some(held) = self.held.get_mut(&reported.job_id) else {
            return false;
        };
        held.reporting = held.reporting.saturating_sub(1);
        let still_ours = match &reported.outcome {
            Ok(Some(job)) => job.state.lease() == Some(held.lease.as_str()),
            Ok(None) => true,
            // Refused: the job may have moved on (fenced, killed, ended).
            Err(Error::Stale(_) | Error::Conflict(_) | Error::NotFound(_)) => false,
            Err(_) => true,
        };
        if !still_ours {
            self.held.remove(&reported.job_id);
        }
        !still_ours
    }

    /// Cancels a held job that an event shows is no longer the worker's.
    /// Events can predate the delivery (a chunk queued before it), so the
    /// job's current lease decides.
    async fn lost(&mut self, job_id: &str, status: JobStatus) -> std::result::Result<(), ()> {
        let Some(held) = self.held.get(job_id) else {
            return Ok(());
        };
        if held.reporting > 0 || matches!(status, JobStatus::Delivered | JobStatus::Running) {
            return Ok(());
        }
        match self.jobs.current_lease(job_id).await {
            Ok(Some(lease)) if lease == held.lease => return Ok(()),
            Ok(_) | Err(Error::NotFound(_)) => {}
            // Cannot tell now; a refused report will tell the worker.
            Err(_) => return Ok(()),
        }
        let reason = match status {
            JobStatus::Killed => "killed",
            _ => "the attempt timed out",
        };
        let held = self.held.remove(job_id).expect("checked above");
        self.send(WorkerOutput::Cancellation {
            job_id: job_id.to_owned(),
            lease: held.lease,
            reason,
        })
        .await
    }

    /// Hands back every job delivered but not yet acked.
    async fn release_all(&mut self) {
        for (job_id, held) in self.held.drain() {
            let fence = Fence {
                attempt_number: None,
                lease: Some(held.lease),
            };
            // A job already acked (or gone) refuses: it runs to its timeout.
            let _ = self
                .jobs
                .report(&self.who, &job_id, Command::Release, fence)
                .await;
        }
    }
}
