//! Live streams of job and space events.
//!
//! A stream subscribes to the hub first and reads its starting point from
//! the store second, so nothing committed in between is lost: live events at
//! or before the starting point are already reflected in it and skipped.
//! Space events carry the space's durable sequence number, so a space
//! watcher that reconnects with `since` is replayed what it missed from the
//! event log, across restarts too, as long as the gap is within
//! `replay_limit` events.

mod hub;

pub use hub::{Closing, Ended, EventHub, Subscription, Topic, Woke, last_events};

use std::collections::VecDeque;
use std::sync::Arc;

use self::hub::Chunk;
use crate::auth::{Principal, Scope};
use crate::clock::UnixMillis;
use crate::error::{Error, Result};
use crate::ids::is_well_formed;
use crate::job::{
    EventKind, JobEvent, JobLogEntry, JobStatus, LiveEvent, SpaceEvent, StatusCounts,
};
use crate::store::Store;

/// Bounds of the realtime streams.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Commits a watcher may fall behind before it is disconnected.
    pub watcher_queue: usize,
    /// Most events replayed to a reconnecting space watcher; further behind,
    /// it is told `missed` and starts from now.
    pub replay_limit: u32,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            watcher_queue: 1024,
            replay_limit: 10_000,
        }
    }
}

/// What a watcher's scope lets it see of event data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// jobs:read (or the admin): everything.
    Full,
    /// jobs:read:progress, or an anonymous watcher: data only on progress.
    ProgressOnly,
}

impl Visibility {
    fn shape(self, event: &Arc<JobEvent>) -> Arc<JobEvent> {
        if self == Self::Full || event.kind == EventKind::Progress || event.data.is_none() {
            return event.clone();
        }
        Arc::new(JobEvent {
            data: None,
            ..(**event).clone()
        })
    }
}

/// The job as a stream finds it.
#[derive(Clone, Debug)]
pub struct JobInit {
    pub space_id: String,
    pub job_id: String,
    pub job_name: String,
    pub status: JobStatus,
    /// The latest progress; shown at every visibility.
    pub progress: Option<String>,
    pub at: UnixMillis,
    /// Events up to this space sequence number are reflected here.
    pub seq: i64,
    pub visibility: Visibility,
}

#[derive(Clone, Debug)]
pub enum JobStreamItem {
    Init(JobInit),
    Event(Arc<JobEvent>),
    /// `show_line` is false where the watcher's scope hides log text.
    Log {
        entry: Arc<JobLogEntry>,
        show_line: bool,
    },
}

/// The first message of a space stream.
#[derive(Clone, Debug)]
pub struct SpaceConnected {
    pub space_id: String,
    pub seq: i64,
    pub stream_id: String,
    pub missed: bool,
    pub counts: StatusCounts,
    pub at: UnixMillis,
}

#[derive(Clone, Debug)]
pub enum SpaceStreamItem {
    Connected(SpaceConnected),
    Event(Arc<JobEvent>),
    /// The space's own event (paused, resumed), in the same sequence.
    Space(Arc<SpaceEvent>),
}

/// Where a reconnecting space watcher left off.
#[derive(Clone, Debug, Default)]
pub struct SpaceCursor {
    pub since: Option<u64>,
    pub stream_id: Option<String>,
}

pub struct RealtimeApi {
    store: Arc<Store>,
    hub: EventHub,
    replay_limit: u32,
}

impl RealtimeApi {
    pub fn new(store: Arc<Store>, hub: EventHub, limits: StreamLimits) -> Self {
        Self {
            store,
            hub,
            replay_limit: limits.replay_limit,
        }
    }

    /// `who` is None for a watcher that presented no key, allowed only where
    /// the job's space opted in to anonymous progress streams. Without
    /// `events` the watch yields its `init` and then waits for the server to
    /// stop: a relay sharing one stream of events among watchers follows
    /// each one's key with it, at no cost per event.
    pub async fn watch_job(
        &self,
        who: Option<&Principal>,
        job_id: &str,
        events: bool,
    ) -> Result<JobWatch> {
        let not_found = || match who {
            // An anonymous caller learns nothing about which jobs exist.
            None => Error::Unauthenticated("missing API key"),
            Some(_) => Error::NotFound("job"),
        };
        if !is_well_formed(job_id) {
            return Err(not_found());
        }
        let subscription = events.then(|| self.hub.subscribe(Topic::Job(job_id.to_owned())));
        let (job, after_seq) = self
            .store
            .job_snapshot(job_id)
            .await?
            .ok_or_else(not_found)?;
        let visibility = match who {
            None => {
                let space = self.store.get_space(&job.space_id).await?;
                if !space.is_some_and(|space| space.anonymous_progress_streams) {
                    return Err(Error::Unauthenticated("missing API key"));
                }
                Visibility::ProgressOnly
            }
            Some(Principal::Admin) => Visibility::Full,
            Some(Principal::ApiKey(key)) => {
                if key.space_id != job.space_id {
                    return Err(Error::Forbidden(
                        "API key does not have access to this space",
                    ));
                }
                if key.scopes.allows(Scope::JobsReadSpace) {
                    Visibility::Full
                } else if key.scopes.allows(Scope::JobsReadProgress) {
                    Visibility::ProgressOnly
                } else {
                    return Err(Error::MissingScope(Scope::JobsReadProgress));
                }
            }
        };
        let init = JobInit {
            status: job.status(),
            space_id: job.space_id,
            job_id: job.id,
            job_name: job.name,
            progress: job.progress,
            at: self.store.clock().now(),
            seq: after_seq,
            visibility,
        };
        let live = match subscription {
            Some(subscription) => Live::new(subscription, self.hub.queue_capacity()),
            None => Live::Nothing(self.hub.closing()),
        };
        Ok(JobWatch {
            init: Some(init),
            live,
            after_seq,
            visibility,
        })
    }

    pub async fn watch_space(
        &self,
        who: &Principal,
        space_id: &str,
        cursor: SpaceCursor,
    ) -> Result<SpaceWatch> {
        // The space stream needs `jobs:read` (or the live-feed-only
        // `jobs:read:space`); a refusal names `jobs:read`, as the reference does.
        who.authorize_space(space_id, Scope::JobsReadSpace)
            .map_err(|error| match error {
                Error::MissingScope(_) => Error::MissingScope(Scope::JobsRead),
                other => other,
            })?;
        if !is_well_formed(space_id) {
            return Err(Error::NotFound("space"));
        }
        let subscription = self.hub.subscribe(Topic::Space(space_id.to_owned()));
        // A cursor beyond i64 is beyond any head: it cannot be honoured.
        let since = cursor
            .since
            .map(|since| i64::try_from(since).unwrap_or(i64::MAX));
        let log = self
            .store
            .space_log(space_id, since, self.replay_limit)
            .await?
            .ok_or(Error::NotFound("space"))?;
        let head = log.head;
        let same_stream = cursor
            .stream_id
            .as_ref()
            .is_none_or(|id| *id == head.stream_id);
        let mut replay = None;
        let connected = match (since, log.missed_events) {
            (Some(since), Some(missed)) if same_stream => {
                // The missed events came without their data: enough to work
                // out the counts as of `since`. They are read whole, a page
                // at a time, as the watcher takes them.
                let mut counts = head.counts;
                for event in missed.iter().rev() {
                    counts.undo(event);
                }
                replay = Some(Replay {
                    space_id: space_id.to_owned(),
                    after: since,
                    upto: head.seq,
                    counts,
                    page: VecDeque::new(),
                });
                SpaceConnected {
                    space_id: space_id.to_owned(),
                    seq: since,
                    stream_id: head.stream_id,
                    missed: false,
                    counts,
                    at: self.store.clock().now(),
                }
            }
            (since, _) => SpaceConnected {
                space_id: space_id.to_owned(),
                seq: head.seq,
                stream_id: head.stream_id,
                missed: since.is_some(),
                counts: head.counts,
                at: self.store.clock().now(),
            },
        };
        Ok(SpaceWatch {
            connected: Some(connected),
            replay,
            store: self.store.clone(),
            live: Live::new(subscription, self.hub.queue_capacity()),
            last_seq: head.seq,
        })
    }
}

/// The live part of a stream: chunks from the hub, flattened; or nothing
/// until the server stops.
enum Live {
    Events(LiveEvents),
    Nothing(Closing),
}

struct LiveEvents {
    subscription: Subscription,
    chunk: Option<Chunk>,
    next: usize,
    queue_capacity: usize,
}

impl Live {
    fn new(subscription: Subscription, queue_capacity: usize) -> Self {
        Self::Events(LiveEvents {
            subscription,
            chunk: None,
            next: 0,
            queue_capacity,
        })
    }

    /// The next live event; `Ok(None)` when the server is stopping.
    async fn next(&mut self) -> Result<Option<LiveEvent>> {
        match self {
            Self::Events(events) => events.next().await,
            Self::Nothing(closing) => {
                closing.wait().await;
                Ok(None)
            }
        }
    }
}

impl LiveEvents {
    async fn next(&mut self) -> Result<Option<LiveEvent>> {
        loop {
            if let Some(chunk) = &self.chunk
                && let Some(event) = chunk.get(self.next)
            {
                self.next += 1;
                return Ok(Some(event.clone()));
            }
            match self.subscription.recv().await {
                Ok(chunk) => {
                    self.chunk = Some(chunk);
                    self.next = 0;
                }
                Err(Ended::Closed) => return Ok(None),
                Err(Ended::Overrun) => {
                    return Err(Error::Overrun(format!(
                        "slow consumer: fell more than {} commits behind; reconnect (with since)",
                        self.queue_capacity
                    )));
                }
            }
        }
    }
}

pub struct JobWatch {
    init: Option<JobInit>,
    live: Live,
    /// Events up to this space sequence number are reflected in `init`.
    after_seq: i64,
    visibility: Visibility,
}

impl JobWatch {
    /// `init` first, then each event as it is committed. `Ok(None)` when the
    /// server is stopping; an error when the watcher fell behind.
    pub async fn next(&mut self) -> Result<Option<JobStreamItem>> {
        if let Some(init) = self.init.take() {
            return Ok(Some(JobStreamItem::Init(init)));
        }
        loop {
            let Some(live) = self.live.next().await? else {
                return Ok(None);
            };
            match live {
                LiveEvent::Job(event) if event.seq <= self.after_seq => continue,
                LiveEvent::Job(event) => {
                    return Ok(Some(JobStreamItem::Event(self.visibility.shape(&event))));
                }
                LiveEvent::Log(entry) => {
                    return Ok(Some(JobStreamItem::Log {
                        entry,
                        show_line: self.visibility == Visibility::Full,
                    }));
                }
                LiveEvent::Space(_) => continue,
            }
        }
    }
}

pub struct SpaceWatch {
    connected: Option<SpaceConnected>,
    /// The events a reconnecting watcher missed, still to be sent.
    replay: Option<Replay>,
    store: Arc<Store>,
    live: Live,
    last_seq: i64,
}

/// A replay read in pages (`Store::space_events`), so a watcher holds one
/// page of events in memory, never the whole range.
struct Replay {
    space_id: String,
    /// The last seq read so far.
    after: i64,
    upto: i64,
    /// Counts as of `after`.
    counts: StatusCounts,
    page: VecDeque<LiveEvent>,
}

impl Replay {
    async fn next(&mut self, store: &Store) -> Result<Option<SpaceStreamItem>> {
        if self.page.is_empty() && self.after < self.upto {
            self.page = store
                .space_events(&self.space_id, self.after, self.upto)
                .await?
                .into();
            if self
                .page
                .front()
                .is_none_or(|event| event.seq() != Some(self.after + 1))
            {
                // Pruned meanwhile: the client must revalidate.
                return Err(Error::Overrun(format!(
                    "replay interrupted after seq {}; reconnect with since",
                    self.after
                )));
            }
        }
        match self.page.pop_front() {
            None => Ok(None),
            Some(LiveEvent::Job(event)) => {
                let mut event = Arc::unwrap_or_clone(event);
                self.after = event.seq;
                if event.changes_counts() {
                    self.counts.apply(&event);
                    event.counts = Some(self.counts);
                }
                Ok(Some(SpaceStreamItem::Event(Arc::new(event))))
            }
            Some(LiveEvent::Space(event)) => {
                self.after = event.seq;
                Ok(Some(SpaceStreamItem::Space(event)))
            }
            // Replays read the sequence only; log lines are not in it.
            Some(LiveEvent::Log(_)) => Err(Error::internal("a log line in a space's sequence")),
        }
    }
}

impl SpaceWatch {
    /// `connected` first, then the replay, then live events with consecutive
    /// sequence numbers. `Ok(None)` when the server is stopping.
    pub async fn next(&mut self) -> Result<Option<SpaceStreamItem>> {
        if let Some(connected) = self.connected.take() {
            return Ok(Some(SpaceStreamItem::Connected(connected)));
        }
        if let Some(replay) = &mut self.replay {
            match replay.next(&self.store).await? {
                Some(item) => return Ok(Some(item)),
                None => self.replay = None,
            }
        }
        loop {
            let Some(live) = self.live.next().await? else {
                return Ok(None);
            };
            let (seq, item) = match live {
                LiveEvent::Job(event) => (event.seq, SpaceStreamItem::Event(event)),
                LiveEvent::Space(event) => (event.seq, SpaceStreamItem::Space(event)),
                LiveEvent::Log(_) => continue,
            };
            if seq <= self.last_seq {
                continue;
            }
            if seq != self.last_seq + 1 {
                // Cannot happen while commits are routed in order; if it
                // does, ending the stream lets the client replay the gap.
                return Err(Error::Overrun(format!(
                    "event stream interrupted after seq {}; reconnect with since",
                    self.last_seq
                )));
            }
            self.last_seq = seq;
            return Ok(Some(item));
        }
    }
}
