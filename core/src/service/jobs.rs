use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::auth::{Principal, Scope};
use crate::concurrency::{self, ConcurrencyLimits, RateLimit};
use crate::error::{Error, Result};
use crate::ids::{is_well_formed, new_id};
use crate::job::machine::{Command, Fence};
use crate::job::spec::{self, JobInput};
use crate::job::{Job, JobEvent, JobState, LogLevel, StoredLogLine};
use crate::realtime::{EventHub, Topic, Woke};
use crate::store::handoff::{Handed, Waiter};
use crate::store::{
    DeliverRequest, JobFilter, JobQuery, JobTarget, LogCursor, LogQuery, Step, Store, WHOLE_SPACE,
};
use crate::timers::TimerWake;

pub const DEFAULT_LIST_LIMIT: u32 = 50;
pub const MAX_LIST_LIMIT: u32 = 100;
pub const MAX_POLL_COUNT: u32 = 50;
/// Longest a poll may wait for a job (`waitSeconds`).
pub const MAX_POLL_WAIT_SECONDS: u32 = 30;
/// A waiting poll also looks again this often: a retry waiting out its
/// backoff becomes available without an event to wake anyone.
const POLL_RECHECK: Duration = Duration::from_secs(1);
pub const DEFAULT_LOG_LIMIT: u32 = 100;
pub const MAX_LOG_LIMIT: u32 = 1000;

pub struct ListLimits {
    pub limit: Option<u32>,
    pub offset: u32,
}

/// One job of a create request, as the create answers it.
pub struct CreatedJob {
    pub id: String,
    /// An idempotency key matched an earlier identical create: `id` is the
    /// job that one made.
    pub replayed: bool,
}

/// A space's flow limits and what is in use now.
pub struct FlowUsage {
    pub limits: ConcurrencyLimits,
    /// Leases by key, most first.
    pub keys: Vec<(String, u32)>,
    /// Dispatches in each rate limit's current window, by job name (every
    /// key's together).
    pub rates: Vec<(String, u32)>,
}

/// Most jobs one bulk call acts on.
pub const MAX_BULK: u32 = 1000;

/// What a bulk call does to each job it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkAction {
    Retry,
    Kill,
    Delete,
}

impl BulkAction {
    fn scope(self) -> Scope {
        match self {
            Self::Retry => Scope::JobsRetry,
            Self::Kill => Scope::JobsKill,
            Self::Delete => Scope::JobsDelete,
        }
    }
}

/// What a bulk call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BulkOutcome {
    pub matched: u64,
    pub applied: u64,
    pub skipped: u64,
    pub more: bool,
}

pub struct JobsApi {
    store: Arc<Store>,
    timers: Arc<TimerWake>,
    hub: EventHub,
    /// Set when the server begins to stop: no job is leased from then on.
    stopping: AtomicBool,
    /// Long polls waiting for a job now.
    long_polls: Gauge,
}

impl JobsApi {
    pub fn new(store: Arc<Store>, timers: Arc<TimerWake>, hub: EventHub) -> Self {
        Self {
            store,
            timers,
            hub,
            stopping: AtomicBool::new(false),
            long_polls: Gauge::default(),
        }
    }

    /// The gauge of long polls waiting for a job, for the metrics.
    pub fn long_polls(&self) -> Gauge {
        self.long_polls.clone()
    }

    /// The first step of a graceful stop: polls (waiting ones included)
    /// answer with no jobs, claims are refused, worker sessions stop taking
    /// work and drain, streams end. Reports on jobs already leased still
    /// apply, so work in flight can finish.
    pub fn stop_dispatch(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.store.waiters().stop();
        self.hub.close();
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub async fn create(
        &self,
        who: &Principal,
        space_id: &str,
        inputs: Vec<JobInput>,
    ) -> Result<Vec<CreatedJob>> {
        who.authorize_space(space_id, Scope::JobsCreate)?;
        let now = self.store.clock().now();
        let new = spec::build_jobs(space_id, inputs, now, new_id)?;
        let mut created: Vec<CreatedJob> = new
            .jobs
            .iter()
            .map(|job| CreatedJob {
                id: job.id.clone(),
                replayed: false,
            })
            .collect();
        let jobs = new.jobs.clone();
        let replays = self.store.create_jobs(new).await?;
        for replay in replays {
            if let Some(job) = created.get_mut(replay.index) {
                *job = CreatedJob {
                    id: replay.job_id,
                    replayed: true,
                };
            }
        }
        let made: Vec<Job> = jobs
            .into_iter()
            .zip(&created)
            .filter(|(_, created)| !created.replayed)
            .map(|(job, _)| job)
            .collect();
        self.note_deadlines(&made);
        Ok(created)
    }

    /// A page of the filter's jobs, newest first, and how many it matches.
    pub async fn list(
        &self,
        who: &Principal,
        filter: JobFilter,
        limits: ListLimits,
    ) -> Result<(Vec<Job>, u64)> {
        who.authorize_space(&filter.space_id, Scope::JobsRead)?;
        check_filter(&filter)?;
        let limit = limits.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            return Err(Error::invalid(format!(
                "limit must be between 1 and {MAX_LIST_LIMIT}"
            )));
        }
        let total = self
            .store
            .count_jobs(&JobFilter {
                before_id: None,
                ..filter.clone()
            })
            .await?;
        let query = JobQuery {
            filter,
            limit,
            offset: limits.offset,
        };
        Ok((self.store.list_jobs(&query).await?, total))
    }

    /// Retries, kills or deletes up to `limit` of the filter's jobs, newest
    /// first, one job at a time (each gets its own events, as if done one by
    /// one); or only counts them (`dry_run`).
    pub async fn bulk(
        &self,
        who: &Principal,
        filter: JobFilter,
        action: BulkAction,
        dry_run: bool,
        limit: Option<u32>,
    ) -> Result<BulkOutcome> {
        who.authorize_space(&filter.space_id, Scope::JobsRead)?;
        who.authorize_space(&filter.space_id, action.scope())?;
        check_filter(&filter)?;
        let limit = limit.unwrap_or(MAX_BULK);
        if !(1..=MAX_BULK).contains(&limit) {
            return Err(Error::invalid(format!(
                "limit must be between 1 and {MAX_BULK}"
            )));
        }
        let matched = self.store.count_jobs(&filter).await?;
        let mut outcome = BulkOutcome {
            matched,
            ..BulkOutcome::default()
        };
        if dry_run {
            return Ok(outcome);
        }
        let mut cursor = filter.clone();
        let mut done = 0;
        while done < limit {
            let page = self
                .store
                .list_jobs(&JobQuery {
                    filter: cursor.clone(),
                    limit: (limit - done).min(MAX_LIST_LIMIT),
                    offset: 0,
                })
                .await?;
            let Some(last) = page.last() else {
                break;
            };
            cursor.before_id = Some(last.id.clone());
            for job in page {
                done += 1;
                let target = JobTarget {
                    job_id: job.id,
                    space_id: Some(filter.space_id.clone()),
                };
                let applied = match action {
                    BulkAction::Retry => self
                        .transition(&target, Command::Retry, &Fence::default())
                        .await
                        .map(drop),
                    BulkAction::Kill => self
                        .transition(&target, Command::Kill { reason: None }, &Fence::default())
                        .await
                        .map(drop),
                    BulkAction::Delete => self.store.delete_job(&target).await.map(drop),
                };
                match applied {
                    Ok(()) => outcome.applied += 1,
                    Err(Error::Conflict(_) | Error::NotFound(_)) => outcome.skipped += 1,
                    Err(error) => return Err(error),
                }
            }
        }
        outcome.more = done == limit
            && !self
                .store
                .list_jobs(&JobQuery {
                    filter: cursor,
                    limit: 1,
                    offset: 0,
                })
                .await?
                .is_empty();
        tracing::info!(space_id = %filter.space_id, ?action, applied = outcome.applied, skipped = outcome.skipped, "bulk action");
        Ok(outcome)
    }

    pub async fn get(&self, who: &Principal, job_id: &str) -> Result<(Job, Vec<JobEvent>)> {
        let target = target(job_id, who.authorize_job(Scope::JobsRead)?)?;
        let job = self.find(&target).await?;
        let events = self.store.job_events(&job.id).await?;
        Ok((job, events))
    }

    /// Why each of `jobs` that is ready is not being handed out: its
    /// dispatch is paused, or its concurrency key holds all its slots.
    /// None for the others.
    pub async fn waiting_reasons(&self, jobs: &[Job]) -> Result<Vec<Option<&'static str>>> {
        let now = self.store.clock().now();
        let ready = |job: &Job| matches!(job.state, JobState::Pending { available_at } if available_at <= now);
        let mut reasons = vec![None; jobs.len()];
        let mut spaces: Vec<&str> = jobs
            .iter()
            .filter(|job| ready(job))
            .map(|job| job.space_id.as_str())
            .collect();
        spaces.sort_unstable();
        spaces.dedup();
        for space_id in spaces {
            let paused = self.store.pauses(space_id).await?;
            let limits = match self.store.get_space(space_id).await? {
                Some(space) => space.concurrency,
                None => continue,
            };
            let in_space = |job: &&Job| job.space_id == space_id && ready(job);
            let mut keys: Vec<String> = jobs
                .iter()
                .filter(in_space)
                .filter_map(|job| job.concurrency_key.clone())
                .collect();
            keys.sort_unstable();
            keys.dedup();
            let held = self.store.key_leases(space_id, Some(&keys)).await?;
            // Dispatches in the window, by (name, rate key), read once each.
            let mut rate_used: HashMap<(String, Option<String>), u32> = HashMap::new();
            for (job, reason) in jobs.iter().zip(reasons.iter_mut()) {
                if !in_space(&job) {
                    continue;
                }
                if paused
                    .iter()
                    .any(|name| name == WHOLE_SPACE || *name == job.name)
                {
                    *reason = Some(concurrency::WAITING_PAUSED);
                } else if let Some(rate) = limits.rates.get(&job.name)
                    && self.rate_used(job, rate, now, &mut rate_used).await? >= rate.limit
                {
                    *reason = Some(concurrency::WAITING_RATE);
                } else if let Some(key) = &job.concurrency_key
                    && let Some(limit) = limits.for_job(&job.name, job.concurrency_limit)
                    && held.get(key).copied().unwrap_or(0) >= limit
                {
                    *reason = Some(concurrency::WAITING_CONCURRENCY);
                }
            }
        }
        Ok(reasons)
    }

    /// Dispatches counting against `job`'s rate limit in the window ending
    /// at `now` (remembered in `seen` for the jobs after it).
    async fn rate_used(
        &self,
        job: &Job,
        rate: &RateLimit,
        now: i64,
        seen: &mut HashMap<(String, Option<String>), u32>,
    ) -> Result<u32> {
        let rate_key = rate
            .per_key
            .then(|| job.concurrency_key.clone().unwrap_or_default());
        let slot = (job.name.clone(), rate_key.clone());
        if let Some(used) = seen.get(&slot) {
            return Ok(*used);
        }
        let since = now - rate.period_millis();
        let used = self
            .store
            .dispatches(&job.space_id, &job.name, rate_key.as_deref(), since)
            .await?;
        seen.insert(slot, used);
        Ok(used)
    }

    /// A space's concurrency limits and the leases its keys hold: of `keys`,
    /// or of the keys holding the most when none are named.
    pub async fn concurrency(
        &self,
        who: &Principal,
        space_id: &str,
        keys: Vec<String>,
    ) -> Result<FlowUsage> {
        who.authorize_space(space_id, Scope::JobsRead)?;
        if keys.len() > MAX_LIST_LIMIT as usize {
            return Err(Error::invalid(format!(
                "at most {MAX_LIST_LIMIT} keys can be named"
            )));
        }
        let space = self
            .store
            .get_space(space_id)
            .await?
            .ok_or(Error::NotFound("space"))?;
        let named = (!keys.is_empty()).then_some(keys.as_slice());
        let held = self.store.key_leases(space_id, named).await?;
        let mut usage: Vec<(String, u32)> = match named {
            Some(keys) => keys
                .iter()
                .map(|key| (key.clone(), held.get(key).copied().unwrap_or(0)))
                .collect(),
            None => held.into_iter().collect(),
        };
        usage.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let now = self.store.clock().now();
        let mut rates = Vec::with_capacity(space.concurrency.rates.len());
        for (name, rate) in &space.concurrency.rates {
            let since = now - rate.period_millis();
            let used = self.store.dispatches(space_id, name, None, since).await?;
            rates.push((name.clone(), used));
        }
        Ok(FlowUsage {
            limits: space.concurrency,
            keys: usage,
            rates,
        })
    }

    pub async fn progress(&self, who: &Principal, job_id: &str) -> Result<Job> {
        let space = who.authorize_job_any(&[Scope::JobsRead, Scope::JobsReadProgress])?;
        self.find(&target(job_id, space)?).await
    }

    /// Delivers up to `count` ready jobs. With `wait_seconds`, an empty poll
    /// waits (long-polls) and returns as soon as a job becomes ready.
    pub async fn poll(
        &self,
        who: &Principal,
        space_id: &str,
        count: Option<u32>,
        names: Vec<String>,
        wait_seconds: Option<u32>,
    ) -> Result<Vec<Job>> {
        who.authorize_space(space_id, Scope::JobsPoll)?;
        let count = count.unwrap_or(1);
        if !(1..=MAX_POLL_COUNT).contains(&count) {
            return Err(Error::invalid(format!(
                "count must be between 1 and {MAX_POLL_COUNT}"
            )));
        }
        spec::check_name_filter(&names)?;
        let wait_seconds = wait_seconds.unwrap_or(0);
        if wait_seconds > MAX_POLL_WAIT_SECONDS {
            return Err(Error::invalid(format!(
                "waitSeconds must be between 0 and {MAX_POLL_WAIT_SECONDS}"
            )));
        }
        if self.stopping() {
            return Ok(Vec::new());
        }
        // Subscribed before looking, so a job made ready in between wakes us.
        let ready =
            (wait_seconds > 0).then(|| self.hub.subscribe(Topic::Space(space_id.to_owned())));
        let request = DeliverRequest {
            space_id: space_id.to_owned(),
            names: names.clone(),
            count,
            now: self.store.clock().now(),
            excluded_names: Vec::new(),
        };
        let jobs = self.store.deliver(request).await?;
        self.note_deadlines(&jobs);
        let Some(mut ready) = ready else {
            return Ok(jobs);
        };
        if !jobs.is_empty() {
            return Ok(jobs);
        }
        // Nothing ready: wait as a waiter, so that the commit that makes a
        // job ready also leases it to this poll.
        let deadline = Instant::now() + Duration::from_secs(wait_seconds.into());
        let (waiter, handed) = self.wait_for_jobs(space_id, names.clone(), count);
        let mut waiting =
            PollWaiter::counted(self.store.clone(), waiter, handed, self.long_polls.clone());
        loop {
            let recheck = deadline.min(Instant::now() + POLL_RECHECK);
            let woke = tokio::select! {
                Some(jobs) = waiting.handed.recv() => {
                    let jobs = waiting.finish(jobs);
                    self.note_deadlines(&jobs);
                    return Ok(jobs);
                }
                woke = ready.until_left_ready(&names, recheck) => woke,
            };
            match woke {
                Woke::Overrun => ready = self.hub.subscribe(Topic::Space(space_id.to_owned())),
                Woke::Closed => break,
                Woke::Ready | Woke::Deadline => {}
            }
            if Instant::now() >= deadline {
                break;
            }
            // Ready on another replica, no room here then, or a retry's
            // backoff ended: have a batch look for this poll.
            self.want_jobs(&waiting.waiter);
        }
        // Jobs leased to the poll while it gave up are still its answer.
        let jobs = waiting.finish(Vec::new());
        self.note_deadlines(&jobs);
        Ok(jobs)
    }

    pub async fn claim(&self, who: &Principal, job_id: &str) -> Result<Job> {
        let target = target(job_id, who.authorize_job(Scope::JobsPoll)?)?;
        if self.stopping() {
            return Err(Error::Unavailable);
        }
        // Deliveries skip paused jobs in the statement that picks them; a
        // claim names its job, so it looks first (a claim racing the pause
        // itself may still win, as if it came just before).
        let job = self.find(&target).await?;
        let paused = self.store.pauses(&job.space_id).await?;
        if paused
            .iter()
            .any(|name| name == WHOLE_SPACE || *name == job.name)
        {
            return Err(Error::Conflict(format!(
                "job {} is paused: dispatch of its space or its name is paused",
                job.id
            )));
        }
        let command = Command::Deliver { lease: new_id() };
        self.transition(&target, command, &Fence::default()).await
    }

    /// Ack, progress, checkpoint, custom event, complete, fail, keepalive,
    /// release.
    pub async fn report(
        &self,
        who: &Principal,
        job_id: &str,
        command: Command,
        fence: Fence,
    ) -> Result<Job> {
        let step = Step { command, fence };
        let outcome = self
            .report_in_order(who, job_id, vec![step], None)
            .await
            .pop();
        outcome.unwrap_or(Err(Error::Unavailable))
    }

    /// Reports about one job, applied in order in one write, each with its
    /// own outcome, as if sent one after another: a worker that acks and
    /// completes at once pays for one commit, not two. When the job is
    /// `refill`'s and the reports end its lease, its slot goes back to
    /// `refill` (and may take its next job) in the same write.
    pub async fn report_in_order(
        &self,
        who: &Principal,
        job_id: &str,
        reports: Vec<Step>,
        refill: Option<Arc<Waiter>>,
    ) -> Vec<Result<Job>> {
        let mut checks = Vec::with_capacity(reports.len());
        let mut accepted = Vec::with_capacity(reports.len());
        let mut addressed = None;
        for step in reports {
            let checked = report_scope(&step.command)
                .and_then(|scope| who.authorize_job(scope))
                .and_then(|space| target(job_id, space));
            checks.push(checked.map(|checked| {
                addressed = Some(checked);
                accepted.push(step);
            }));
        }
        let steps = accepted.len();
        let applied = match addressed {
            None => Vec::new(),
            Some(addressed) => match self
                .store
                .apply(&addressed, accepted, self.store.clock().now(), refill)
                .await
            {
                Ok(outcomes) => outcomes,
                Err(error) => std::iter::once(Err(error))
                    .chain((1..steps).map(|_| Err(Error::Unavailable)))
                    .collect(),
            },
        };
        self.note_deadlines(applied.iter().filter_map(|outcome| outcome.as_ref().ok()));
        let mut applied = applied.into_iter();
        checks
            .into_iter()
            .map(|check| check.and_then(|()| applied.next().unwrap_or(Err(Error::Unavailable))))
            .collect()
    }

    pub async fn kill(&self, who: &Principal, job_id: &str, reason: Option<String>) -> Result<Job> {
        if let Some(reason) = &reason {
            spec::check_error_text(reason)?;
        }
        let target = target(job_id, who.authorize_job(Scope::JobsKill)?)?;
        self.transition(&target, Command::Kill { reason }, &Fence::default())
            .await
    }

    /// Pending again at once, with a fresh set of attempts.
    pub async fn retry(&self, who: &Principal, job_id: &str) -> Result<Job> {
        let target = target(job_id, who.authorize_job(Scope::JobsRetry)?)?;
        self.transition(&target, Command::Retry, &Fence::default())
            .await
    }

    /// Deletes a finished job; returns it as it was.
    pub async fn delete(&self, who: &Principal, job_id: &str) -> Result<Job> {
        let target = target(job_id, who.authorize_job(Scope::JobsDelete)?)?;
        let job = self.store.delete_job(&target).await?;
        tracing::info!(job_id = %job.id, space_id = %job.space_id, "job deleted");
        Ok(job)
    }

    pub async fn append_logs(
        &self,
        who: &Principal,
        job_id: &str,
        lines: Vec<(String, String)>,
    ) -> Result<i64> {
        let target = target(job_id, who.authorize_job(Scope::JobsEvent)?)?;
        let lines = spec::build_log_lines(lines)?;
        self.store
            .append_logs(&target, lines, self.store.clock().now())
            .await
    }

    pub async fn logs(
        &self,
        who: &Principal,
        job_id: &str,
        cursor: LogCursor,
        level: Option<&str>,
        text: Option<String>,
        limit: Option<u32>,
    ) -> Result<Vec<StoredLogLine>> {
        let target = target(job_id, who.authorize_job(Scope::JobsRead)?)?;
        let level = level
            .filter(|level| !level.is_empty())
            .map(|level| {
                LogLevel::parse(level)
                    .ok_or_else(|| Error::invalid("level must be one of debug, info, warn, error"))
            })
            .transpose()?;
        let limit = limit.unwrap_or(DEFAULT_LOG_LIMIT);
        if !(1..=MAX_LOG_LIMIT).contains(&limit) {
            return Err(Error::invalid(format!(
                "limit must be between 1 and {MAX_LOG_LIMIT}"
            )));
        }
        let job = self.find(&target).await?;
        let query = LogQuery {
            cursor,
            level,
            text: text.filter(|text| !text.is_empty()),
            limit,
        };
        self.store.list_logs(&job.id, &query).await
    }

    /// Registers a worker waiting for up to `room` jobs of a space (the
    /// worker session was authorized already); write batches lease ready
    /// jobs to it (`store::handoff`).
    pub fn wait_for_jobs(
        &self,
        space_id: &str,
        names: Vec<String>,
        room: u32,
    ) -> (Arc<Waiter>, Handed) {
        let registered = self.store.waiters().register(space_id, names, room);
        self.store.wake_writer();
        registered
    }

    /// Has the waiter filled in a batch soon, whether or not one touches
    /// its space (a job may have become ready with nothing written).
    pub fn want_jobs(&self, waiter: &Waiter) {
        waiter.want();
        self.store.wake_writer();
    }

    /// The waiter takes no more jobs; returns those leased to it that it
    /// has not taken up (see `Waiters::leave`).
    pub fn stop_waiting(&self, waiter: &Arc<Waiter>, handed: &mut Handed) -> Vec<Job> {
        self.store.waiters().leave(waiter, handed)
    }

    /// Jobs handed to a waiter: their deadlines are the timers' to keep.
    pub fn took(&self, jobs: &[Job]) {
        self.note_deadlines(jobs);
    }

    /// The lease a job is under now (for a worker session checking whether
    /// a job it holds is still its own; the session was authorized already).
    pub async fn current_lease(&self, job_id: &str) -> Result<Option<String>> {
        let job = self.find(&target(job_id, None)?).await?;
        Ok(job.state.lease().map(str::to_owned))
    }

    async fn find(&self, target: &JobTarget) -> Result<Job> {
        self.store
            .get_job(target)
            .await?
            .ok_or(Error::NotFound("job"))
    }

    async fn transition(&self, target: &JobTarget, command: Command, fence: &Fence) -> Result<Job> {
        let step = Step {
            command,
            fence: fence.clone(),
        };
        let outcome = self
            .store
            .apply(target, vec![step], self.store.clock().now(), None)
            .await?;
        let job = outcome
            .into_iter()
            .next()
            .unwrap_or(Err(Error::Unavailable))?;
        self.note_deadlines(std::slice::from_ref(&job));
        Ok(job)
    }

    fn note_deadlines<'a>(&self, jobs: impl IntoIterator<Item = &'a Job>) {
        if let Some(due) = jobs
            .into_iter()
            .filter_map(|job| job.state.timer_at())
            .min()
        {
            self.timers.schedule(due);
        }
    }
}

/// The scope a worker report needs, once its data is checked.
fn report_scope(command: &Command) -> Result<Scope> {
    Ok(match command {
        Command::Ack => Scope::JobsAck,
        Command::Progress { data } => {
            spec::check_progress(data)?;
            Scope::JobsProgress
        }
        Command::Checkpoint { data } => {
            spec::check_json("checkpoint", data)?;
            Scope::JobsEvent
        }
        Command::PublishEvent { data } => {
            spec::check_json("event", data)?;
            Scope::JobsEvent
        }
        Command::Complete { result } => {
            if let Some(result) = result {
                spec::check_json("result", result)?;
            }
            Scope::JobsComplete
        }
        Command::Fail { error } => {
            spec::check_error_text(error)?;
            Scope::JobsFail
        }
        Command::Keepalive => Scope::JobsKeepalive,
        Command::Kill { .. } => Scope::JobsKill,
        // Handing back a delivery one holds is part of polling.
        Command::Release => Scope::JobsPoll,
        Command::Deliver { .. } | Command::Retry | Command::Expire => {
            return Err(Error::invalid("not a worker report"));
        }
    })
}

fn check_filter(filter: &JobFilter) -> Result<()> {
    if let Some(name) = &filter.name {
        spec::check_text("name", name)?;
    }
    Ok(())
}

/// Ids that cannot exist are not found, without a database read.
fn target(job_id: &str, space: Option<&str>) -> Result<JobTarget> {
    if !is_well_formed(job_id) {
        return Err(Error::NotFound("job"));
    }
    Ok(JobTarget {
        job_id: job_id.to_owned(),
        space_id: space.map(str::to_owned),
    })
}

/// A long poll waiting as a waiter. Dropped before it answered (the client
/// went away), it hands back the jobs leased to it.
struct PollWaiter {
    store: Arc<Store>,
    waiter: Arc<Waiter>,
    handed: Handed,
    /// Counts this poll among the waiting ones until it drops.
    counted: Gauge,
}

impl PollWaiter {
    /// A waiting poll, counted in `gauge` until it drops.
    fn counted(store: Arc<Store>, waiter: Arc<Waiter>, handed: Handed, gauge: Gauge) -> Self {
        gauge.inc();
        Self {
            store,
            waiter,
            handed,
            counted: gauge,
        }
    }

    /// Stops waiting; returns `jobs` with whatever else was leased to the
    /// poll before it stopped. Jobs leased after that are the writer's to
    /// release.
    fn finish(mut self, mut jobs: Vec<Job>) -> Vec<Job> {
        jobs.extend(self.stop());
        jobs
    }

    fn stop(&mut self) -> Vec<Job> {
        self.store.waiters().leave(&self.waiter, &mut self.handed)
    }
}

impl Drop for PollWaiter {
    fn drop(&mut self) {
        self.counted.dec();
        let left = self.stop();
        if left.is_empty() {
            return;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            for job in left {
                let target = JobTarget {
                    job_id: job.id.clone(),
                    space_id: None,
                };
                let step = Step {
                    command: Command::Release,
                    fence: Fence::holding(&job),
                };
                // Already moved on (timed out): nothing to hand back.
                let _ = store
                    .apply(&target, vec![step], store.clock().now(), None)
                    .await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::PollWaiter;
    use crate::store::Store;
    use crate::store::testing::{create, events_once_there_are, store_with_space};

    #[tokio::test]
    async fn a_long_poll_dropped_before_it_answers_hands_back_its_jobs() {
        let (store, space_id, dir) = store_with_space().await;
        let store: Arc<Store> = Arc::new(store);
        let (waiter, handed) = store.waiters().register(&space_id, vec![], 1);
        let gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        let waiting = PollWaiter::counted(store.clone(), waiter, handed, gauge.clone());
        assert_eq!(gauge.get(), 1);
        let ids = create(&store, &space_id, 1).await;
        // The create leased the job to the poll; then its client went away.
        drop(waiting);
        assert_eq!(gauge.get(), 0);
        let seen = events_once_there_are(&store, &ids[0], 3).await;
        assert_eq!(seen, ["created", "delivered", "released"]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
