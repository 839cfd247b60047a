//! Jobs: what a job is, how it moves between states (`machine`) and what a
//! valid new job looks like (`spec`).

pub mod machine;
pub mod spec;

use crate::clock::UnixMillis;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobStatus {
    Scheduled,
    Pending,
    Delivered,
    Running,
    Completed,
    Dead,
    Killed,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        Self::Scheduled,
        Self::Pending,
        Self::Delivered,
        Self::Running,
        Self::Completed,
        Self::Dead,
        Self::Killed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Dead => "dead",
            Self::Killed => "killed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Dead | Self::Killed)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a job together with the data that only exists in that state.
/// Timed states carry the instant their timer fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Scheduled {
        run_at: UnixMillis,
    },
    /// Ready for dispatch from `available_at` on (later than creation only
    /// while a retry waits out its backoff).
    Pending {
        available_at: UnixMillis,
    },
    Delivered {
        lease: String,
        ack_deadline: UnixMillis,
    },
    Running {
        lease: String,
        deadline: UnixMillis,
    },
    Completed,
    Dead,
    Killed,
}

impl JobState {
    pub fn status(&self) -> JobStatus {
        match self {
            Self::Scheduled { .. } => JobStatus::Scheduled,
            Self::Pending { .. } => JobStatus::Pending,
            Self::Delivered { .. } => JobStatus::Delivered,
            Self::Running { .. } => JobStatus::Running,
            Self::Completed => JobStatus::Completed,
            Self::Dead => JobStatus::Dead,
            Self::Killed => JobStatus::Killed,
        }
    }

    /// The instant this state's clock points at: when a scheduled job is
    /// released, a pending job becomes available, or a lease expires.
    pub fn due_at(&self) -> Option<UnixMillis> {
        match *self {
            Self::Scheduled { run_at } => Some(run_at),
            Self::Pending { available_at } => Some(available_at),
            Self::Delivered { ack_deadline, .. } => Some(ack_deadline),
            Self::Running { deadline, .. } => Some(deadline),
            Self::Completed | Self::Dead | Self::Killed => None,
        }
    }

    /// The deadline a timer must act on (pending jobs need none: poll simply
    /// skips them until they are available).
    pub fn timer_at(&self) -> Option<UnixMillis> {
        match self {
            Self::Pending { .. } => None,
            other => other.due_at(),
        }
    }

    pub fn lease(&self) -> Option<&str> {
        match self {
            Self::Delivered { lease, .. } | Self::Running { lease, .. } => Some(lease),
            _ => None,
        }
    }

    /// Rebuilds the state from its stored columns.
    pub fn from_parts(
        status: JobStatus,
        due_at: Option<UnixMillis>,
        lease: Option<String>,
    ) -> Option<Self> {
        Some(match status {
            JobStatus::Scheduled => Self::Scheduled { run_at: due_at? },
            JobStatus::Pending => Self::Pending {
                available_at: due_at?,
            },
            JobStatus::Delivered => Self::Delivered {
                lease: lease?,
                ack_deadline: due_at?,
            },
            JobStatus::Running => Self::Running {
                lease: lease?,
                deadline: due_at?,
            },
            JobStatus::Completed => Self::Completed,
            JobStatus::Dead => Self::Dead,
            JobStatus::Killed => Self::Killed,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackoffKind {
    Fixed,
    Exponential,
}

impl BackoffKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Exponential => "exponential",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "fixed" => Some(Self::Fixed),
            "exponential" => Some(Self::Exponential),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBackoff {
    pub kind: BackoffKind,
    pub delay_seconds: u32,
    /// 0: no cap of the job's own.
    pub max_delay_seconds: u32,
}

/// The server's cap on any retry delay.
pub const MAX_RETRY_DELAY_SECONDS: u64 = 7 * 24 * 3600;

impl RetryBackoff {
    /// The delay before `attempt` (1 for the first retry) may run.
    pub fn delay_before(&self, attempt: u32) -> std::time::Duration {
        let base = u64::from(self.delay_seconds);
        let seconds = match self.kind {
            BackoffKind::Fixed => base,
            BackoffKind::Exponential => {
                base.saturating_mul(1u64 << attempt.saturating_sub(1).min(40))
            }
        };
        let cap = match self.max_delay_seconds {
            0 => MAX_RETRY_DELAY_SECONDS,
            max => u64::from(max).min(MAX_RETRY_DELAY_SECONDS),
        };
        std::time::Duration::from_secs(seconds.min(cap))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// A job as stored. JSON fields hold JSON text, passed through untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub space_id: String,
    pub name: String,
    pub payload: Option<String>,
    pub state: JobState,
    pub max_retries: u32,
    pub attempt_number: u32,
    pub timeout_seconds: u32,
    pub scheduled_for: Option<UnixMillis>,
    pub delivered_at: Option<UnixMillis>,
    pub started_at: Option<UnixMillis>,
    pub completed_at: Option<UnixMillis>,
    pub result: Option<String>,
    pub progress: Option<String>,
    pub checkpoint: Option<String>,
    pub last_error: Option<String>,
    pub kill_reason: Option<String>,
    pub callback: Option<Callback>,
    pub retry_backoff: Option<RetryBackoff>,
    /// Higher is dispatched first (`spec::PRIORITY_RANGE`).
    pub priority: i32,
    /// The schedule fire that made the job, if one did.
    pub schedule: Option<ScheduleFire>,
    /// The key whose leases this job counts against (`crate::concurrency`).
    pub concurrency_key: Option<String>,
    /// The job's own limit for its key, over its space's.
    pub concurrency_limit: Option<u32>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl Job {
    pub fn status(&self) -> JobStatus {
        self.state.status()
    }

    pub fn timeout_millis(&self) -> i64 {
        i64::from(self.timeout_seconds) * 1000
    }
}

/// Which schedule made a job, for which of its fire times: unique per job,
/// so a fire makes one job at most.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleFire {
    pub schedule_id: String,
    pub fire_time: UnixMillis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Created,
    Ready,
    Delivered,
    Acked,
    Progress,
    Checkpoint,
    Event,
    Log,
    Completed,
    Retried,
    Dead,
    DeliveryTimeout,
    Killed,
    CallbackSent,
    CallbackFailed,
    Released,
}

impl EventKind {
    pub const ALL: [EventKind; 16] = [
        Self::Created,
        Self::Ready,
        Self::Delivered,
        Self::Acked,
        Self::Progress,
        Self::Checkpoint,
        Self::Event,
        Self::Log,
        Self::Completed,
        Self::Retried,
        Self::Dead,
        Self::DeliveryTimeout,
        Self::Killed,
        Self::CallbackSent,
        Self::CallbackFailed,
        Self::Released,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Ready => "ready",
            Self::Delivered => "delivered",
            Self::Acked => "acked",
            Self::Progress => "progress",
            Self::Checkpoint => "checkpoint",
            Self::Event => "event",
            Self::Log => "log",
            Self::Completed => "completed",
            Self::Retried => "retried",
            Self::Dead => "dead",
            Self::DeliveryTimeout => "delivery_timeout",
            Self::Killed => "killed",
            Self::CallbackSent => "callback_sent",
            Self::CallbackFailed => "callback_failed",
            Self::Released => "released",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// An event about to be recorded; the store gives it its sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventDraft {
    pub kind: EventKind,
    pub status: JobStatus,
    pub previous_status: Option<JobStatus>,
    pub data: Option<String>,
    /// See `JobEvent::took_ms`.
    pub took_ms: Option<i64>,
}

/// An event as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEvent {
    pub seq: i64,
    pub space_id: String,
    pub job_id: String,
    pub job_name: String,
    pub kind: EventKind,
    pub status: JobStatus,
    pub previous_status: Option<JobStatus>,
    pub data: Option<String>,
    pub at: UnixMillis,
    /// The space's job counts right after this event; set by the store on
    /// live events that change them (see `changes_counts`).
    pub counts: Option<StatusCounts>,
    /// For metrics, on the live events of the replica that wrote them (not
    /// stored): a delivery's time since the job became ready, an attempt's
    /// end's time since it started running.
    pub took_ms: Option<i64>,
}

impl JobEvent {
    /// Creation and status transitions move a job between counts.
    pub fn changes_counts(&self) -> bool {
        self.kind == EventKind::Created || self.previous_status.is_some_and(|p| p != self.status)
    }
}

/// How many jobs of a space are in each status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusCounts([u64; 7]);

impl StatusCounts {
    pub fn get(&self, status: JobStatus) -> u64 {
        self.0[status as usize]
    }

    pub fn set(&mut self, status: JobStatus, count: u64) {
        self.0[status as usize] = count;
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Counts after `event`.
    pub fn apply(&mut self, event: &JobEvent) {
        if !event.changes_counts() {
            return;
        }
        if let Some(previous) = event.previous_status {
            let slot = &mut self.0[previous as usize];
            *slot = slot.saturating_sub(1);
        }
        self.0[event.status as usize] += 1;
    }

    /// Counts after a job in `status` was deleted.
    pub fn forget(&mut self, status: JobStatus) {
        let slot = &mut self.0[status as usize];
        *slot = slot.saturating_sub(1);
    }

    /// Counts before `event`, given the counts after it.
    pub fn undo(&mut self, event: &JobEvent) {
        if !event.changes_counts() {
            return;
        }
        let slot = &mut self.0[event.status as usize];
        *slot = slot.saturating_sub(1);
        if let Some(previous) = event.previous_status {
            self.0[previous as usize] += 1;
        }
    }
}

/// A log line as streamed live to the job's watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLogEntry {
    pub space_id: String,
    pub job_id: String,
    pub job_name: String,
    /// The job's status when the line was appended.
    pub status: JobStatus,
    pub line: StoredLogLine,
}

/// What happened to a space as a whole (not to one job).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceEventKind {
    Paused,
    Resumed,
}

impl SpaceEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Resumed => "resumed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "paused" => Some(Self::Paused),
            "resumed" => Some(Self::Resumed),
            _ => None,
        }
    }
}

/// A space's own event, numbered in the space's event sequence with its
/// jobs' events (stored beside them, with no job).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceEvent {
    pub seq: i64,
    pub space_id: String,
    pub kind: SpaceEventKind,
    /// The job name a pause or resume named; None for the whole space.
    pub name: Option<String>,
    pub at: UnixMillis,
}

impl SpaceEvent {
    /// The event's `data`, as stored and streamed: `{"name": ...}`.
    pub fn data(&self) -> String {
        serde_json::json!({ "name": self.name }).to_string()
    }
}

/// Something a commit published to watchers, in commit order.
#[derive(Clone, Debug)]
pub enum LiveEvent {
    Job(std::sync::Arc<JobEvent>),
    Log(std::sync::Arc<JobLogEntry>),
    Space(std::sync::Arc<SpaceEvent>),
}

impl LiveEvent {
    pub fn space_id(&self) -> &str {
        match self {
            Self::Job(event) => &event.space_id,
            Self::Log(entry) => &entry.space_id,
            Self::Space(event) => &event.space_id,
        }
    }

    /// Empty for a space's own events: no job's watchers get them.
    pub fn job_id(&self) -> &str {
        match self {
            Self::Job(event) => &event.job_id,
            Self::Log(entry) => &entry.job_id,
            Self::Space(_) => "",
        }
    }

    /// The event's place in its space's sequence (log lines have none).
    pub fn seq(&self) -> Option<i64> {
        match self {
            Self::Job(event) => Some(event.seq),
            Self::Space(event) => Some(event.seq),
            Self::Log(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLogLine {
    pub seq: i64,
    pub level: LogLevel,
    pub message: String,
    pub at: UnixMillis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "debug" | "trace" => Some(Self::Debug),
            "info" => Some(Self::Info),
            "warn" | "warning" => Some(Self::Warn),
            "error" | "fatal" => Some(Self::Error),
            _ => None,
        }
    }
}
