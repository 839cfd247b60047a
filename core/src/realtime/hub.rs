//! Routes what each commit published to the watchers of the jobs and spaces
//! it touched. One task reads the store's broadcast; every watcher has its own
//! bounded queue. Routing never waits on a watcher: a queue that is full means
//! its watcher is too far behind, and it is cut loose (marked overrun) rather
//! than allowed to slow the others or the core.
//!
//! Queues hold chunks (the events of one commit for one job or space), so a
//! burst such as a bulk create of 1000 jobs is one queue entry. A queue is
//! bounded twice: in commits (`queue_capacity`) and in the bytes of event
//! data its chunks hold (`MAX_QUEUED_BYTES`), since one event may carry a
//! megabyte.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, mpsc, watch};

use crate::background::Background;
use crate::job::{JobEvent, JobStatus, LiveEvent};

/// The events one commit published for one job or one space, in order.
pub type Chunk = Arc<[LiveEvent]>;

/// Event data one watcher's queue may hold. A chunk is always taken into an
/// empty queue, whatever its size, so a watcher that keeps up is never cut
/// loose for one large commit.
pub const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;
/// What an event costs besides its data (ids, names, the allocation).
const EVENT_OVERHEAD_BYTES: usize = 256;

/// The bytes a chunk holds, as the byte bound counts them.
fn chunk_bytes(chunk: &[LiveEvent]) -> usize {
    chunk
        .iter()
        .map(|event| {
            EVENT_OVERHEAD_BYTES
                + match event {
                    LiveEvent::Job(event) => event.data.as_ref().map_or(0, String::len),
                    LiveEvent::Log(entry) => entry.line.message.len(),
                    LiveEvent::Space(_) => 0,
                }
        })
        .sum()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topic {
    /// Events and log lines of one job.
    Job(String),
    /// Events (not log lines) of every job in a space.
    Space(String),
}

struct Slot {
    id: u64,
    queue: mpsc::Sender<Chunk>,
    overrun: Arc<AtomicBool>,
    /// Bytes of the chunks queued and not yet received.
    queued_bytes: Arc<AtomicUsize>,
    /// Only chunks with an event of a job of these names (space topics).
    names: Option<HashSet<String>>,
}

impl Slot {
    fn wants(&self, chunk_names: &HashSet<&str>) -> bool {
        let Some(names) = &self.names else {
            return true;
        };
        if names.len() < chunk_names.len() {
            names.iter().any(|name| chunk_names.contains(name.as_str()))
        } else {
            chunk_names.iter().any(|name| names.contains(*name))
        }
    }
}

#[derive(Default)]
struct Topics {
    jobs: HashMap<String, Vec<Slot>>,
    spaces: HashMap<String, Vec<Slot>>,
    next_id: u64,
    closed: bool,
}

impl Topics {
    fn slots<'a>(&'a mut self, topic: &'a Topic) -> (&'a mut HashMap<String, Vec<Slot>>, &'a str) {
        match topic {
            Topic::Job(id) => (&mut self.jobs, id),
            Topic::Space(id) => (&mut self.spaces, id),
        }
    }
}

struct Shared {
    topics: Mutex<Topics>,
    queue_capacity: usize,
    /// Set once when the hub closes.
    closed: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Topics> {
        self.topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn route(&self, commit: &[LiveEvent]) {
        let mut topics = self.lock();
        if topics.jobs.is_empty() && topics.spaces.is_empty() {
            return;
        }
        let mut by_space: HashMap<&str, Vec<LiveEvent>> = HashMap::new();
        let mut by_job: HashMap<&str, Vec<LiveEvent>> = HashMap::new();
        for event in commit {
            let in_sequence = matches!(event, LiveEvent::Job(_) | LiveEvent::Space(_));
            if in_sequence && topics.spaces.contains_key(event.space_id()) {
                by_space
                    .entry(event.space_id())
                    .or_default()
                    .push(event.clone());
            }
            if topics.jobs.contains_key(event.job_id()) {
                by_job
                    .entry(event.job_id())
                    .or_default()
                    .push(event.clone());
            }
        }
        for (space_id, events) in by_space {
            deliver(&mut topics.spaces, space_id, events.into());
        }
        for (job_id, events) in by_job {
            deliver(&mut topics.jobs, job_id, events.into());
        }
    }

    /// Cuts every watcher loose: used when routing itself fell behind, so
    /// any watcher may have missed something.
    fn overrun_all(&self) {
        let mut topics = self.lock();
        for slot in topics.jobs.values().chain(topics.spaces.values()).flatten() {
            slot.overrun.store(true, Ordering::Release);
        }
        topics.jobs.clear();
        topics.spaces.clear();
    }
}

fn deliver(slots: &mut HashMap<String, Vec<Slot>>, key: &str, chunk: Chunk) {
    let Some(watchers) = slots.get_mut(key) else {
        return;
    };
    let filtered = watchers.iter().any(|slot| slot.names.is_some());
    let chunk_names: HashSet<&str> = if filtered {
        chunk
            .iter()
            .filter_map(|event| match event {
                LiveEvent::Job(event) => Some(event.job_name.as_str()),
                LiveEvent::Space(event) => event.name.as_deref(),
                LiveEvent::Log(_) => None,
            })
            .collect()
    } else {
        HashSet::new()
    };
    // A space's own event about all its names (a whole-space resume)
    // concerns every watcher, whatever names it filters on.
    let for_everyone = chunk
        .iter()
        .any(|event| matches!(event, LiveEvent::Space(event) if event.name.is_none()));
    let bytes = chunk_bytes(&chunk);
    watchers.retain(|slot| {
        // A watcher that wants none of it is not woken: idle worker
        // sessions of other names cost a busy space nothing per commit.
        if filtered && !for_everyone && !slot.wants(&chunk_names) {
            return true;
        }
        deliver_to(slot, &chunk, bytes)
    });
    if watchers.is_empty() {
        slots.remove(key);
    }
}

fn deliver_to(slot: &Slot, chunk: &Chunk, bytes: usize) -> bool {
    let queued = slot.queued_bytes.load(Ordering::Acquire);
    if queued > 0 && queued.saturating_add(bytes) > MAX_QUEUED_BYTES {
        slot.overrun.store(true, Ordering::Release);
        return false;
    }
    slot.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
    match slot.queue.try_send(chunk.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            slot.overrun.store(true, Ordering::Release);
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

#[derive(Clone)]
pub struct EventHub {
    shared: Arc<Shared>,
}

impl EventHub {
    /// Starts routing `published` (a loop of `background`, ending when the
    /// hub closes); each watcher may fall `queue_capacity` commits behind
    /// before it is cut loose.
    pub fn start(
        published: broadcast::Receiver<Arc<[LiveEvent]>>,
        queue_capacity: usize,
        background: &mut Background,
    ) -> Self {
        let shared = Arc::new(Shared {
            topics: Mutex::new(Topics::default()),
            queue_capacity: queue_capacity.max(1),
            closed: watch::Sender::new(false),
        });
        background.spawn("event routing", route(shared.clone(), published));
        Self { shared }
    }

    pub fn queue_capacity(&self) -> usize {
        self.shared.queue_capacity
    }

    /// Starts queueing what is published for `topic` from now on.
    pub fn subscribe(&self, topic: Topic) -> Subscription {
        self.subscribe_filtered(topic, None)
    }

    /// Like `subscribe`, but only commits with an event of a job named in
    /// `names` (empty: any name) reach this subscription.
    pub fn subscribe_to_names(&self, topic: Topic, names: &[String]) -> Subscription {
        let names = (!names.is_empty()).then(|| names.iter().cloned().collect());
        self.subscribe_filtered(topic, names)
    }

    fn subscribe_filtered(&self, topic: Topic, names: Option<HashSet<String>>) -> Subscription {
        let (queue, receiver) = mpsc::channel(self.shared.queue_capacity);
        let overrun = Arc::new(AtomicBool::new(false));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let mut topics = self.shared.lock();
        let id = topics.next_id;
        topics.next_id += 1;
        if !topics.closed {
            let (slots, key) = topics.slots(&topic);
            slots.entry(key.to_owned()).or_default().push(Slot {
                id,
                queue,
                overrun: overrun.clone(),
                queued_bytes: queued_bytes.clone(),
                names,
            });
        }
        Subscription {
            receiver,
            overrun,
            queued_bytes,
            topic,
            id,
            shared: self.shared.clone(),
        }
    }

    /// Ends every subscription (the server is stopping) and refuses new ones.
    pub fn close(&self) {
        let mut topics = self.shared.lock();
        topics.closed = true;
        topics.jobs.clear();
        topics.spaces.clear();
        self.shared.closed.send_replace(true);
    }

    /// Resolves when the hub closes, for a watcher that takes no events.
    pub fn closing(&self) -> Closing {
        Closing(self.shared.closed.subscribe())
    }

    #[cfg(test)]
    pub(crate) fn route(&self, commit: &[LiveEvent]) {
        self.shared.route(commit);
    }
}

async fn route(shared: Arc<Shared>, mut published: broadcast::Receiver<Arc<[LiveEvent]>>) {
    let mut closing = shared.closed.subscribe();
    loop {
        let received = tokio::select! {
            received = published.recv() => received,
            _ = closing.wait_for(|closed| *closed) => break,
        };
        match received {
            Ok(commit) => shared.route(&commit),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "event routing fell behind; disconnecting watchers");
                shared.overrun_all();
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    shared.closed.send_replace(true);
}

/// The hub's closing, awaited by a watcher that takes no events.
pub struct Closing(watch::Receiver<bool>);

impl Closing {
    pub async fn wait(&mut self) {
        // An error means the hub itself is gone: closed too.
        let _ = self.0.wait_for(|closed| *closed).await;
    }
}

/// Why a subscription stopped delivering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The watcher fell too far behind.
    Overrun,
    /// The hub closed: the server is stopping.
    Closed,
}

pub struct Subscription {
    receiver: mpsc::Receiver<Chunk>,
    overrun: Arc<AtomicBool>,
    queued_bytes: Arc<AtomicUsize>,
    topic: Topic,
    id: u64,
    shared: Arc<Shared>,
}

impl Subscription {
    /// The next chunk. After an overrun the chunks already queued are still
    /// delivered first, then `Ended::Overrun`.
    pub async fn recv(&mut self) -> Result<Chunk, Ended> {
        match self.receiver.recv().await {
            Some(chunk) => {
                self.queued_bytes
                    .fetch_sub(chunk_bytes(&chunk), Ordering::AcqRel);
                Ok(chunk)
            }
            None if self.overrun.load(Ordering::Acquire) => Err(Ended::Overrun),
            None => Err(Ended::Closed),
        }
    }
}

/// Why `Subscription::until_left_ready` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woke {
    /// A commit left a wanted job ready.
    Ready,
    Deadline,
    /// Wake-ups were missed: subscribe again and look.
    Overrun,
    /// The server is stopping.
    Closed,
}

impl Subscription {
    /// Waits until a commit leaves a job of the subscribed space ready (one
    /// named in `names`, or any when empty), or until `deadline`. A job
    /// that the same commit also leased (handed to a waiting worker) does
    /// not count: only one still ready at the end of the commit does.
    pub async fn until_left_ready(
        &mut self,
        names: &[String],
        deadline: tokio::time::Instant,
    ) -> Woke {
        loop {
            let chunk = tokio::select! {
                chunk = self.recv() => chunk,
                () = tokio::time::sleep_until(deadline) => return Woke::Deadline,
            };
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(Ended::Overrun) => return Woke::Overrun,
                Err(Ended::Closed) => return Woke::Closed,
            };
            if left_ready(&chunk, |name| {
                names.is_empty() || names.iter().any(|n| n == name)
            }) {
                return Woke::Ready;
            }
        }
    }
}

/// Whether `chunk` leaves a job that `wanted` (by name) ready: its last
/// event in the chunk has it pending.
fn left_ready(chunk: &[LiveEvent], wanted: impl Fn(&str) -> bool) -> bool {
    last_events(chunk)
        .values()
        .any(|event| event.status == JobStatus::Pending && wanted(&event.job_name))
}

/// Each job's last event in `chunk`: where the chunk leaves it.
pub fn last_events(chunk: &[LiveEvent]) -> HashMap<&str, &JobEvent> {
    let mut last = HashMap::new();
    for event in chunk {
        if let LiveEvent::Job(event) = event {
            last.insert(event.job_id.as_str(), &**event);
        }
    }
    last
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.shared.lock();
        let (slots, key) = topics.slots(&self.topic);
        if let Some(watchers) = slots.get_mut(key) {
            watchers.retain(|slot| slot.id != self.id);
            if watchers.is_empty() {
                slots.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{EventKind, JobEvent, JobStatus};

    fn event(space: &str, job: &str, seq: i64) -> LiveEvent {
        LiveEvent::Job(Arc::new(JobEvent {
            seq,
            space_id: space.into(),
            job_id: job.into(),
            job_name: "n".into(),
            kind: EventKind::Progress,
            status: JobStatus::Running,
            previous_status: None,
            data: None,
            at: 0,
            counts: None,
            took_ms: None,
        }))
    }

    #[tokio::test]
    async fn a_name_filtered_watcher_gets_only_commits_about_its_names() {
        let (sender, receiver) = broadcast::channel(4);
        let mut background = Background::new(watch::channel(false).1);
        let hub = EventHub::start(receiver, 2, &mut background);
        drop(sender);
        let named = |name: &str| {
            let LiveEvent::Job(event) = event("s1", "j1", 1) else {
                unreachable!()
            };
            let mut event = (*event).clone();
            event.job_name = name.into();
            LiveEvent::Job(Arc::new(event))
        };
        let mut wants_a = hub.subscribe_to_names(Topic::Space("s1".into()), &["a".into()]);
        let mut wants_any = hub.subscribe_to_names(Topic::Space("s1".into()), &[]);
        // More commits of other names than the queue holds: the filtered
        // watcher is neither woken nor cut loose by them.
        for _ in 0..5 {
            hub.route(&[named("b")]);
        }
        hub.route(&[named("b"), named("a")]);
        let chunk = wants_a.recv().await.unwrap();
        assert_eq!(chunk.len(), 2, "the whole commit, once it names a");
        assert_eq!(wants_any.recv().await.unwrap().len(), 1);
        assert_eq!(wants_any.recv().await.unwrap().len(), 1);
        assert_eq!(wants_any.recv().await.unwrap_err(), Ended::Overrun);
    }

    #[tokio::test]
    async fn a_queue_is_bounded_in_bytes_too() {
        let (sender, receiver) = broadcast::channel(4);
        let mut background = Background::new(watch::channel(false).1);
        let hub = EventHub::start(receiver, 1000, &mut background);
        drop(sender);
        let big = |seq: i64| {
            let LiveEvent::Job(event) = event("s1", "j1", seq) else {
                unreachable!()
            };
            let mut event = (*event).clone();
            event.data = Some("x".repeat(MAX_QUEUED_BYTES / 4));
            LiveEvent::Job(Arc::new(event))
        };
        let mut reader = hub.subscribe(Topic::Job("j1".into()));
        let mut stalled = hub.subscribe(Topic::Job("j1".into()));
        // One chunk larger than the bound still reaches an empty queue.
        hub.route(&[big(1), big(2), big(3), big(4), big(5)]);
        assert_eq!(reader.recv().await.unwrap().len(), 5);
        // Four more quarters: the reader keeps up, the stalled one (still
        // holding the first chunk) is cut loose well before 1000 commits.
        for seq in 6..10 {
            hub.route(&[big(seq)]);
            assert_eq!(reader.recv().await.unwrap().len(), 1);
        }
        assert_eq!(stalled.recv().await.unwrap().len(), 5);
        assert_eq!(stalled.recv().await.unwrap_err(), Ended::Overrun);
    }

    #[tokio::test]
    async fn routes_by_job_and_space_and_cuts_loose_a_full_queue() {
        let (sender, receiver) = broadcast::channel(4);
        let mut background = Background::new(watch::channel(false).1);
        let hub = EventHub::start(receiver, 2, &mut background);
        drop(sender);
        let mut job = hub.subscribe(Topic::Job("j1".into()));
        let mut space = hub.subscribe(Topic::Space("s1".into()));
        let mut other = hub.subscribe(Topic::Space("s2".into()));

        hub.route(&[event("s1", "j1", 1), event("s1", "j2", 2)]);
        assert_eq!(job.recv().await.unwrap().len(), 1);
        assert_eq!(space.recv().await.unwrap().len(), 2);

        // `other` never reads: two commits fill it, the third cuts it loose.
        for seq in 1..=3 {
            hub.route(&[event("s2", "j9", seq)]);
        }
        assert!(other.recv().await.is_ok());
        assert!(other.recv().await.is_ok());
        assert_eq!(other.recv().await.unwrap_err(), Ended::Overrun);

        drop(job);
        assert!(hub.shared.lock().jobs.is_empty(), "dropping unsubscribes");
        hub.close();
        assert_eq!(space.recv().await.unwrap_err(), Ended::Closed);
    }
}
