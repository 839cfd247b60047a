//! Prometheus metrics of one core, served (with the gateway's) at the
//! gateway's `/metrics` through `AdminService.GetMetrics`.
//!
//! Job counts and timings come from the live events of this core's own
//! commits, so each event is counted once, by the replica that wrote it.
//! Queue depth is read from the spaces' stored counts at scrape time.
//! Job-name labels are capped (`MAX_NAMES_PER_SPACE`, `MAX_NAMES`): names
//! past the cap are counted as `other`, so a client inventing names cannot
//! grow the scrape without bound.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, watch};

use crate::error::{Error, Result};
use crate::job::machine::TIMED_OUT;
use crate::job::{EventKind, JobEvent, JobStatus, LiveEvent};
use crate::store::Store;

/// Distinct job names labelled per space; the rest are `other`.
pub const MAX_NAMES_PER_SPACE: usize = 100;
/// Distinct (space, job name) pairs labelled in all; the rest are `other`.
pub const MAX_NAMES: usize = 2000;
/// The label of names past the caps.
pub const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    space: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    space: String,
    name: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DepthLabels {
    space: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcMethod {
    pub method: String,
}

/// Latency buckets from 0.5 ms to about 65 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 18)
}

/// What the store's writers report of their batches, and of the upkeep
/// that runs beside them.
#[derive(Clone)]
pub struct WriterMetrics {
    /// Operations per committed batch.
    pub batch_ops: Histogram,
    /// Time from BEGIN to the end of COMMIT.
    pub commit_seconds: Histogram,
    /// Time an fsync after COMMIT took (SQLite), covering one or more
    /// batches.
    pub sync_seconds: Histogram,
    /// Time spent in each phase of the batches, summed.
    pub phases: WriterPhases,
    /// Time a VACUUM of the jobs table took (PostgreSQL).
    pub vacuum_seconds: Histogram,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        Self {
            batch_ops: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            commit_seconds: Histogram::new(latency_buckets()),
            sync_seconds: Histogram::new(latency_buckets()),
            phases: WriterPhases::default(),
            vacuum_seconds: Histogram::new(latency_buckets()),
        }
    }
}

/// The phases of a write batch, in the order they run (and of `ALL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterPhase {
    /// BEGIN, locking and reading ahead what the operations name, and
    /// handing back jobs whose worker left.
    Begin,
    /// The batch's operations, with those that joined it late.
    Operations,
    /// Leasing ready jobs to the workers waiting for them.
    Dispatch,
    /// Writing what the batch staged, and COMMIT.
    Commit,
}

impl WriterPhase {
    pub const ALL: [WriterPhase; 4] = [
        WriterPhase::Begin,
        WriterPhase::Operations,
        WriterPhase::Dispatch,
        WriterPhase::Commit,
    ];

    /// Its `phase` label on `emit_writer_phase_seconds`.
    pub fn label(self) -> &'static str {
        match self {
            WriterPhase::Begin => "begin",
            WriterPhase::Operations => "operations",
            WriterPhase::Dispatch => "dispatch",
            WriterPhase::Commit => "commit",
        }
    }
}

/// Seconds the writers spent in each phase of their batches. A writer runs
/// one batch at a time, so their summed rate is how busy the writers are
/// (1.0 a writer: never idle; SQLite has one, PostgreSQL two a core), and
/// their split says whether that time goes to the database or to deciding.
#[derive(Clone)]
pub struct WriterPhases {
    family: Family<PhaseLabels, Counter<f64, AtomicU64>>,
    /// Each phase's counter, in `WriterPhase::ALL`'s order, looked up once.
    counters: [Counter<f64, AtomicU64>; 4],
}

impl Default for WriterPhases {
    fn default() -> Self {
        let family = Family::<PhaseLabels, Counter<f64, AtomicU64>>::default();
        let counters = WriterPhase::ALL.map(|phase| {
            family
                .get_or_create(&PhaseLabels {
                    phase: phase.label().to_owned(),
                })
                .clone()
        });
        Self { family, counters }
    }
}

impl WriterPhases {
    pub fn add(&self, phase: WriterPhase, took: Duration) {
        self.counters[phase as usize].inc_by(took.as_secs_f64());
    }
}

/// Push wake-ups, by outcome: `sent`; `refused` (a non-public address,
/// not sent); `failed` (an error or a non-2xx answer); `dropped` (too many
/// in flight).
#[derive(Clone, Default)]
pub struct PushWakeups(Family<OutcomeLabels, Counter>);

impl PushWakeups {
    pub fn count(&self, outcome: &str) {
        self.0
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

pub struct CoreMetrics {
    registry: Registry,
    jobs_created: Family<JobLabels, Counter>,
    jobs_finished: Family<FinishedLabels, Counter>,
    jobs_retried: Family<JobLabels, Counter>,
    jobs_timed_out: Family<JobLabels, Counter>,
    queue_depth: Family<DepthLabels, Gauge>,
    dispatch_seconds: Histogram,
    run_seconds: Histogram,
    callback_tries: Family<OutcomeLabels, Counter>,
    push_wakeups: PushWakeups,
    worker_sessions: Gauge,
    pub grpc_requests: Family<GrpcLabels, Counter>,
    pub grpc_seconds: Family<GrpcMethod, Histogram>,
    names: Mutex<NameCap>,
}

impl CoreMetrics {
    /// `rate_limited` counts requests refused by the per-key rate limit;
    /// `long_polls` gauges the long polls waiting for a job.
    pub fn new(writer: WriterMetrics, rate_limited: Counter, long_polls: Gauge) -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("emit"),
            jobs_created: Family::default(),
            jobs_finished: Family::default(),
            jobs_retried: Family::default(),
            jobs_timed_out: Family::default(),
            queue_depth: Family::default(),
            dispatch_seconds: Histogram::new(latency_buckets()),
            run_seconds: Histogram::new(latency_buckets()),
            callback_tries: Family::default(),
            push_wakeups: PushWakeups::default(),
            worker_sessions: Gauge::default(),
            grpc_requests: Family::default(),
            grpc_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            names: Mutex::default(),
        };
        let registry = &mut metrics.registry;
        registry.register(
            "jobs_created",
            "Jobs created, by space and job name",
            metrics.jobs_created.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs that reached completed, dead or killed",
            metrics.jobs_finished.clone(),
        );
        registry.register(
            "jobs_retried",
            "Failed attempts that will be retried (operator retries included)",
            metrics.jobs_retried.clone(),
        );
        registry.register(
            "jobs_timed_out",
            "Delivery and execution timeouts",
            metrics.jobs_timed_out.clone(),
        );
        registry.register(
            "jobs",
            "Jobs in each status, per space (read at scrape time)",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "dispatch_seconds",
            "Time from ready to delivered",
            metrics.dispatch_seconds.clone(),
        );
        registry.register(
            "run_seconds",
            "Time an attempt ran, from ack to completion or failure",
            metrics.run_seconds.clone(),
        );
        registry.register(
            "callback_tries",
            "Callback delivery tries, by outcome",
            metrics.callback_tries.clone(),
        );
        registry.register(
            "push_wakeups",
            "Push wake-ups, by outcome",
            metrics.push_wakeups.0.clone(),
        );
        registry.register(
            "worker_sessions",
            "Open gRPC worker sessions",
            metrics.worker_sessions.clone(),
        );
        registry.register(
            "writer_batch_operations",
            "Operations per committed write batch",
            writer.batch_ops,
        );
        registry.register(
            "writer_commit_seconds",
            "Write batch time, BEGIN to the end of COMMIT",
            writer.commit_seconds,
        );
        registry.register(
            "writer_sync_seconds",
            "Time of an fsync making committed batches durable (SQLite)",
            writer.sync_seconds,
        );
        registry.register(
            "writer_phase_seconds",
            "Time the writers spent in each phase of their batches",
            writer.phases.family,
        );
        registry.register(
            "postgres_vacuum_seconds",
            "Time a VACUUM of the jobs table took (PostgreSQL)",
            writer.vacuum_seconds,
        );
        registry.register(
            "rate_limited",
            "Requests refused by the per-key rate limit",
            rate_limited,
        );
        registry.register(
            "long_polls_waiting",
            "REST polls waiting (waitSeconds) for a job to become ready",
            long_polls,
        );
        registry.register(
            "grpc_requests",
            "gRPC requests, by method and status code",
            metrics.grpc_requests.clone(),
        );
        registry.register(
            "grpc_request_seconds",
            "gRPC request time to the response headers",
            metrics.grpc_seconds.clone(),
        );
        metrics
    }

    /// Where the push notifier counts its wake-ups.
    pub fn push_wakeups(&self) -> PushWakeups {
        self.push_wakeups.clone()
    }

    /// Counts what this core's commits did until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        mut commits: broadcast::Receiver<Arc<[LiveEvent]>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                received = commits.recv() => match received {
                    Ok(commit) => commit.iter().for_each(|live| {
                        if let LiveEvent::Job(event) = live {
                            self.count(event);
                        }
                    }),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "metrics fell behind; some job counts are low");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    fn count(&self, event: &JobEvent) {
        let job = || self.job_labels(&event.space_id, &event.job_name);
        let took = || {
            event
                .took_ms
                .map(|ms| Duration::from_millis(ms.max(0) as u64).as_secs_f64())
        };
        let timed_out = || {
            event.data.as_deref().is_some_and(|data| {
                serde_json::from_str::<serde_json::Value>(data)
                    .is_ok_and(|data| data["error"] == TIMED_OUT)
            })
        };
        match event.kind {
            EventKind::Created => {
                self.jobs_created.get_or_create(&job()).inc();
            }
            EventKind::Delivered => {
                if let Some(seconds) = took() {
                    self.dispatch_seconds.observe(seconds);
                }
            }
            EventKind::Completed | EventKind::Dead | EventKind::Killed => {
                let JobLabels { space, name } = job();
                let status = event.status.as_str().to_owned();
                self.jobs_finished
                    .get_or_create(&FinishedLabels {
                        space,
                        name,
                        status,
                    })
                    .inc();
                if let Some(seconds) = took() {
                    self.run_seconds.observe(seconds);
                }
                if event.kind == EventKind::Dead && timed_out() {
                    self.jobs_timed_out.get_or_create(&job()).inc();
                }
            }
            EventKind::Retried => {
                self.jobs_retried.get_or_create(&job()).inc();
                if let Some(seconds) = took() {
                    self.run_seconds.observe(seconds);
                }
                if timed_out() {
                    self.jobs_timed_out.get_or_create(&job()).inc();
                }
            }
            EventKind::DeliveryTimeout => {
                self.jobs_timed_out.get_or_create(&job()).inc();
            }
            EventKind::CallbackSent | EventKind::CallbackFailed => {
                let outcome = if event.kind == EventKind::CallbackSent {
                    "delivered"
                } else {
                    "failed"
                };
                self.callback_tries
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.to_owned(),
                    })
                    .inc();
            }
            _ => {}
        }
    }

    fn job_labels(&self, space: &str, name: &str) -> JobLabels {
        let labelled = self
            .names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .admit(space, name);
        JobLabels {
            space: space.to_owned(),
            name: if labelled { name } else { OTHER }.to_owned(),
        }
    }

    /// A worker session is open until the guard drops.
    pub fn session_opened(&self) -> SessionGauge {
        self.worker_sessions.inc();
        SessionGauge(self.worker_sessions.clone())
    }

    /// The metrics as OpenMetrics text, without the closing `# EOF` (the
    /// gateway appends its own and closes).
    pub async fn render(&self, store: &Store) -> Result<String> {
        for space in store.list_spaces().await? {
            let Some(log) = store.space_log(&space.id, None, 0).await? else {
                continue;
            };
            for status in JobStatus::ALL {
                self.queue_depth
                    .get_or_create(&DepthLabels {
                        space: space.id.clone(),
                        status: status.as_str().to_owned(),
                    })
                    .set(log.head.counts.get(status) as i64);
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &self.registry)
            .map_err(Error::internal)?;
        Ok(text)
    }
}

/// Keeps the open-sessions gauge up while a session lives.
pub struct SessionGauge(Gauge);

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Which job names get a label of their own: the first ones seen, up to
/// the caps.
#[derive(Default)]
struct NameCap {
    per_space: HashMap<String, HashSet<String>>,
    total: usize,
}

impl NameCap {
    fn admit(&mut self, space: &str, name: &str) -> bool {
        if self
            .per_space
            .get(space)
            .is_some_and(|names| names.contains(name))
        {
            return true;
        }
        let names = self.per_space.entry(space.to_owned()).or_default();
        if names.len() >= MAX_NAMES_PER_SPACE || self.total >= MAX_NAMES {
            return false;
        }
        names.insert(name.to_owned());
        self.total += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_the_cap_are_other() {
        let mut cap = NameCap::default();
        for n in 0..MAX_NAMES_PER_SPACE {
            assert!(cap.admit("s", &format!("n{n}")));
        }
        assert!(cap.admit("s", "n0"), "a known name keeps its label");
        assert!(!cap.admit("s", "one-too-many"));
        assert!(cap.admit("t", "n0"), "each space has its own share");
    }
}
