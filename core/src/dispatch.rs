//! Push dispatch to connected workers. A session holds at most `capacity`
//! jobs. It registers as a waiter with the store (`store::handoff`): the
//! write batch that makes a job ready (its create, a release, a retry) leases
//! it to a waiter with room before it commits, and the batch that writes a
//! worker's completion gives the slot back and leases the next job in the
//! same commit. Leases go through the same `deliver` the poll uses (same
//! state machine, events, timeouts and fencing).
//!
//! Jobs made ready by another replica's commit arrive as events: one session
//! per replica takes each up and has its writer fill the waiters. A session
//! that is told of an event that took one of its jobs away (killed, or the
//! attempt timed out) cancels it on the worker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::auth::{Authenticator, Principal, Revocation};
use crate::error::{Error, Result};
use crate::job::machine::{Command, Fence};
use crate::job::{Job, JobStatus, LiveEvent, SpaceEventKind, spec};
use crate::realtime::{Ended, EventHub, Topic, last_events};
use crate::service::JobsApi;
use crate::store::Step;
use crate::store::handoff::{Handed, Waiter};

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
        check_capacity(self.capacity)?;
        spec::check_name_filter(&self.names)
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
    /// Charges each report to the key's rate limit, as a REST call would be.
    auth: Arc<Authenticator>,
    who: Principal,
    hello: Hello,
    held: HashMap<String, Held>,
    /// Where the session's free slots are kept, for write batches to fill.
    waiter: Arc<Waiter>,
    draining: bool,
    output: mpsc::Sender<WorkerOutput>,
}

/// Which ready-job events the sessions of this replica have already taken
/// up, per space. Every session of a space sees every event; without this,
/// each job another replica made ready would have every idle session ask
/// its writer to look. A session claims (by sequence number) as many
/// `pending` events as it has room for and asks only for those it claimed.
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
    /// Sent for a job the session held: if it ended the lease, the write
    /// gave the slot back to the waiter.
    refilling: bool,
}

/// A report as the worker sent it, with the fence it carries.
struct ReportCall {
    request_id: u64,
    job_id: String,
    report: Report,
    fence: Fence,
    /// The job was the session's when the report came.
    held: bool,
}

/// Reports in flight and waiting. Those about one job are written one
/// write at a time, in the order the worker sent them (ack before progress
/// before completion); those about different jobs run side by side. The
/// reports about one job that arrived while its last write was in flight,
/// or together, go as one write (`JobsApi::report_in_order`).
#[derive(Default)]
struct Reports {
    running: JoinSet<Vec<Reported>>,
    /// Jobs with a write in flight.
    writing: HashSet<String>,
    /// What each running write is about: its job and its requests.
    tasks: HashMap<tokio::task::Id, (String, Vec<u64>)>,
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

    /// A write is done: its job may have the next, and its reports have
    /// their outcomes (a write that panicked answers each with an error).
    fn finished(
        &mut self,
        joined: std::result::Result<(tokio::task::Id, Vec<Reported>), tokio::task::JoinError>,
    ) -> Vec<Reported> {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(error) => error.id(),
        };
        let Some((job_id, request_ids)) = self.tasks.remove(&id) else {
            return Vec::new();
        };
        self.writing.remove(&job_id);
        match joined {
            Ok((_, reported)) => reported,
            Err(error) => {
                tracing::error!(%error, %job_id, "a worker report's write failed");
                request_ids
                    .into_iter()
                    .map(|request_id| Reported {
                        request_id,
                        job_id: job_id.clone(),
                        outcome: Err(Error::internal("the report could not be written")),
                        refilling: false,
                    })
                    .collect()
            }
        }
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
            let request_ids = calls.iter().map(|call| call.request_id).collect();
            let (jobs, who) = (session.jobs.clone(), session.who.clone());
            let waiter = session.waiter.clone();
            let task_job_id = job_id.clone();
            let task = self.running.spawn(async move {
                write_reports(&jobs, &who, &waiter, &task_job_id, calls).await
            });
            self.tasks.insert(task.id(), (job_id, request_ids));
        }
    }
}

/// Runs one job's reports in order: runs of job commands as one write
/// each, log lines on their own.
async fn write_reports(
    jobs: &JobsApi,
    who: &Principal,
    waiter: &Arc<Waiter>,
    job_id: &str,
    calls: Vec<ReportCall>,
) -> Vec<Reported> {
    let mut reported = Vec::with_capacity(calls.len());
    let mut calls = calls.into_iter().peekable();
    while let Some(call) = calls.next() {
        let (request_id, fence, refilling) = (call.request_id, call.fence, call.held);
        let command = match call.report {
            Report::Logs(lines) => {
                let outcome = jobs.append_logs(who, job_id, lines).await.map(|_| None);
                reported.push(Reported {
                    request_id,
                    job_id: job_id.to_owned(),
                    outcome,
                    refilling: false,
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
        }) =
            calls.next_if(|call| matches!(call.report, Report::Job(_)) && call.held == refilling)
        {
            request_ids.push(request_id);
            steps.push(Step { command, fence });
        }
        let refill = refilling.then(|| waiter.clone());
        let outcomes = jobs.report_in_order(who, job_id, steps, refill).await;
        for (request_id, outcome) in request_ids.into_iter().zip(outcomes) {
            reported.push(Reported {
                request_id,
                job_id: job_id.to_owned(),
                outcome: outcome.map(Some),
                refilling,
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
    auth: Arc<Authenticator>,
    hub: EventHub,
    claims: Arc<AtomicI64>,
    mut revocation: Revocation,
    who: Principal,
    hello: Hello,
    mut input: mpsc::Receiver<WorkerInput>,
    output: mpsc::Sender<WorkerOutput>,
) {
    let session_id = crate::ids::new_id();
    // Only commits about jobs of its names: a job the session holds is one
    // of them, and so is any job it could take.
    let mut events = hub.subscribe_to_names(Topic::Space(hello.space_id.clone()), &hello.names);
    let (waiter, mut handed) =
        jobs.wait_for_jobs(&hello.space_id, hello.names.clone(), hello.capacity);
    let mut session = Session {
        jobs,
        auth,
        who,
        hello,
        held: HashMap::new(),
        waiter,
        draining: false,
        output,
    };
    let welcome = WorkerOutput::Welcome {
        session_id: session_id.clone(),
    };
    if session.send(welcome).await.is_ok() {
        tracing::debug!(%session_id, space_id = %session.hello.space_id, "worker session opened");
        session
            .serve(
                &hub,
                &claims,
                &mut revocation,
                &mut input,
                &mut events,
                &mut handed,
            )
            .await;
    }
    // Jobs leased to the session but not yet taken up are released with the
    // rest.
    for job in session.jobs.stop_waiting(&session.waiter, &mut handed) {
        session.held.insert(job.id.clone(), Held::of(&job));
    }
    session.release_all().await;
    tracing::debug!(%session_id, "worker session closed");
}

impl Session {
    async fn serve(
        &mut self,
        hub: &EventHub,
        claims: &AtomicI64,
        revocation: &mut Revocation,
        input: &mut mpsc::Receiver<WorkerInput>,
        events: &mut crate::realtime::Subscription,
        handed: &mut Handed,
    ) {
        let mut reports = Reports::default();
        // The hub closes when the server stops: the session then drains.
        let mut hub_open = true;
        let mut recheck = Instant::now() + RECHECK;
        loop {
            if self.draining && self.held.is_empty() && reports.is_empty() {
                let _ = self.send(WorkerOutput::Drained).await;
                return;
            }
            tokio::select! {
                () = revocation.revoked() => {
                    let _ = self.send(WorkerOutput::Revoked).await;
                    return;
                }
                message = input.recv() => {
                    let Some(message) = message else { return };
                    // Take what else the worker sent meanwhile, so that reports
                    // sent together (ack and completion) are written together.
                    let mut next = Some(message);
                    let mut taken = 0;
                    while let Some(message) = next.take() {
                        if self.take_input(message, &mut reports).await.is_err() {
                            return;
                        }
                        taken += 1;
                        if taken < TAKEN_TOGETHER {
                            next = input.try_recv().ok();
                        }
                    }
                    reports.start_ready(self);
                }
                Some(leased) = handed.recv() => {
                    if self.hold(leased).await.is_err() {
                        return;
                    }
                }
                Some(done) = reports.running.join_next_with_id(), if !reports.running.is_empty() => {
                    let reported = reports.finished(done);
                    reports.start_ready(self);
                    for reported in reported {
                        self.settle(&reported);
                        let result = WorkerOutput::Result {
                            request_id: reported.request_id,
                            job_id: reported.job_id,
                            outcome: reported.outcome,
                        };
                        if self.send(result).await.is_err() {
                            return;
                        }
                    }
                }
                chunk = events.recv(), if hub_open => match chunk {
                    Ok(chunk) => {
                        if self.take_events(&chunk, claims).await.is_err() {
                            return;
                        }
                    }
                    // Missed wake-ups only: look for work; cancellations of jobs
                    // lost meanwhile surface as refused reports.
                    Err(Ended::Overrun) => {
                        *events = hub.subscribe_to_names(
                            Topic::Space(self.hello.space_id.clone()),
                            &self.hello.names,
                        );
                        self.want_jobs();
                    }
                    // The server is stopping: take no more work, let the worker
                    // finish what it holds, then say `drained`.
                    Err(Ended::Closed) => {
                        hub_open = false;
                        self.drain();
                    }
                },
                () = tokio::time::sleep_until(recheck) => {
                    // A retry waiting out its backoff becomes ready without
                    // anything being written.
                    self.want_jobs();
                    recheck = Instant::now() + RECHECK;
                }
            }
        }
    }

    async fn take_input(
        &mut self,
        message: WorkerInput,
        reports: &mut Reports,
    ) -> std::result::Result<(), ()> {
        match message {
            WorkerInput::Capacity(capacity) => {
                if let Err(error) = check_capacity(capacity) {
                    let refused = WorkerOutput::Result {
                        request_id: 0,
                        job_id: String::new(),
                        outcome: Err(error),
                    };
                    return self.send(refused).await;
                }
                let change = i64::from(capacity) - i64::from(self.hello.capacity);
                self.hello.capacity = capacity;
                self.waiter.add_room(change);
                self.want_jobs();
            }
            WorkerInput::Drain => self.drain(),
            WorkerInput::Report {
                request_id,
                job_id,
                report,
            } => {
                if let Err(limited) = self.auth.charge(&self.who) {
                    let refused = WorkerOutput::Result {
                        request_id,
                        job_id,
                        outcome: Err(limited),
                    };
                    return self.send(refused).await;
                }
                let fence = self.fence(&job_id);
                let held = match self.held.get_mut(&job_id) {
                    Some(held) => {
                        held.reporting += 1;
                        true
                    }
                    None => false,
                };
                reports.submit(ReportCall {
                    request_id,
                    job_id,
                    report,
                    fence,
                    held,
                });
            }
        }
        Ok(())
    }

    /// Looks at a chunk of the space's events: jobs still ready at its end
    /// (another replica's, or that no waiter had room for) and jobs taken
    /// away from the worker.
    async fn take_events(
        &mut self,
        chunk: &[LiveEvent],
        claims: &AtomicI64,
    ) -> std::result::Result<(), ()> {
        let mut room = self.waiter.room();
        // A full session (the usual case under load) has no use for where
        // the chunk leaves each job.
        let last = if room > 0 {
            last_events(chunk)
        } else {
            HashMap::new()
        };
        let mut wanted = false;
        for event in chunk {
            let event = match event {
                LiveEvent::Job(event) => event,
                // A resume, here or on another core, may free jobs for us.
                LiveEvent::Space(space) => {
                    let ours = space.name.as_deref().is_none_or(|name| self.wants(name));
                    if space.kind == SpaceEventKind::Resumed && ours && room > 0 {
                        wanted = true;
                    }
                    continue;
                }
                LiveEvent::Log(_) => continue,
            };
            let still_ready = event.status == JobStatus::Pending
                && last
                    .get(event.job_id.as_str())
                    .is_some_and(|last| last.status == JobStatus::Pending);
            if still_ready && room > 0 && self.wants(&event.job_name) && claim(claims, event.seq) {
                room -= 1;
                wanted = true;
            }
            self.lost(&event.job_id, event.status).await?;
        }
        if wanted {
            self.want_jobs();
        }
        Ok(())
    }

    async fn send(&self, message: WorkerOutput) -> std::result::Result<(), ()> {
        self.output.send(message).await.map_err(drop)
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

    /// Takes no more jobs.
    fn drain(&mut self) {
        self.draining = true;
        self.waiter.close();
    }

    /// Has a write batch look for jobs for the session, if it has room.
    fn want_jobs(&self) {
        if self.waiter.room() > 0 {
            self.jobs.want_jobs(&self.waiter);
        }
    }

    /// A slot the session held is free again.
    fn free_slot(&self) {
        self.waiter.add_room(1);
        self.want_jobs();
    }

    /// Takes up jobs leased to the session and hands them to the worker.
    async fn hold(&mut self, leased: Vec<Job>) -> std::result::Result<(), ()> {
        self.jobs.took(&leased);
        if self.draining {
            // Leased by a batch that took the room before the drain: the
            // worker asked for nothing new, so the jobs go back at once.
            for job in leased {
                self.release(&job.id, Held::of(&job).lease).await;
            }
            return Ok(());
        }
        for job in leased {
            self.held.insert(job.id.clone(), Held::of(&job));
            self.send(WorkerOutput::Assignment(job)).await?;
        }
        Ok(())
    }

    /// Updates what the session holds after a report, and frees the slot
    /// of a job that is no longer the worker's.
    fn settle(&mut self, reported: &Reported) {
        let Some(held) = self.held.get_mut(&reported.job_id) else {
            return;
        };
        held.reporting = held.reporting.saturating_sub(1);
        let (still_ours, ended_by_write) = match &reported.outcome {
            // The same test the write applies before refilling.
            Ok(Some(job)) => {
                let ours = job.state.lease() == Some(held.lease.as_str());
                (ours, !ours)
            }
            Ok(None) => (true, false),
            // Refused: the job may have moved on (fenced, killed, ended).
            Err(Error::Stale(_) | Error::Conflict(_) | Error::NotFound(_)) => (false, false),
            Err(_) => (true, false),
        };
        if still_ours {
            return;
        }
        self.held.remove(&reported.job_id);
        if !(ended_by_write && reported.refilling) {
            self.free_slot();
        }
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
        self.free_slot();
        self.send(WorkerOutput::Cancellation {
            job_id: job_id.to_owned(),
            lease: held.lease,
            reason,
        })
        .await
    }

    /// Hands back every job delivered but not yet acked.
    async fn release_all(&mut self) {
        for (job_id, held) in std::mem::take(&mut self.held) {
            self.release(&job_id, held.lease).await;
        }
    }

    /// Hands back one job under `lease`. A job already acked (or gone)
    /// refuses: it runs to its timeout.
    async fn release(&self, job_id: &str, lease: String) {
        let fence = Fence {
            attempt_number: None,
            lease: Some(lease),
        };
        let _ = self
            .jobs
            .report(&self.who, job_id, Command::Release, fence)
            .await;
    }
}
