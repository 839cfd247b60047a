//! Feeds: what a WebSocket relay reads from. A feed reads one core stream
//! promptly, renders each message to JSON text once, and keeps the latest
//! messages in a ring bounded in messages and bytes; each client reading it
//! is a cursor into that ring. A client whose cursor falls off the ring's
//! start left too much unread and is disconnected as a slow consumer (it
//! reconnects), while the core's stream is never held up by it.
//!
//! A space stream gets a feed of its own. A job's watchers that present the
//! same credential share one feed (`JobFeeds`), so an event reaches any
//! number of them as one core message rendered once: with 10,000 browsers
//! watching one job with its space's public token, the gateway used to
//! receive, decode and render every event 10,000 times. Watchers with other
//! credentials get feeds of their own, opened with those credentials: a
//! feed ends when its credential is revoked, and then only its own watchers
//! lose it.
//! Each watcher still holds a stream of its own without events
//! (`without_events`): the core authorizes it on it, tells what it may see
//! and where its snapshot stands (`seq`), and ends it when its key is
//! revoked.
//!
//! No gaps and no repeats: a watcher starts from the later of its own
//! snapshot and the feed's. Where its own is the later one, it skips the
//! feed's events up to its `seq`; where the feed's is, it starts with the
//! feed's snapshot (the same for every watcher of that visibility). A feed
//! that already dropped messages the watcher would need, or that ended, is
//! not joined: a new one is opened for it with its credentials.
//!
//! A shared feed's caught-up watchers are written to by its lanes (see
//! `fanout`), not by a task each; a cursor is where a watcher stands either
//! way.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use axum::extract::ws::{CloseFrame, Utf8Bytes, close_code};
use emit_proto::v1 as pb;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::CoreClient;
use crate::core_client::CREDENTIAL_HEADERS;
use crate::error::{ApiError, close_frame_for};
use crate::fanout::Lanes;
use crate::metrics::FeedGuard;
use crate::resources::JobStreamMessage;
use emit_proto::wire::SESSION_METADATA;

/// Bytes of messages one client may leave unread (besides the count bound,
/// `--ws-queue`): event messages can be up to about 1 MiB each.
pub const MAX_UNREAD_BYTES: usize = 16 * 1024 * 1024;

/// How many messages and bytes a feed keeps for its slowest reader.
#[derive(Clone, Copy, Debug)]
pub struct RingBounds {
    pub messages: usize,
    pub bytes: usize,
}

impl RingBounds {
    fn too_slow(self) -> CloseFrame {
        CloseFrame {
            code: close_code::AGAIN,
            reason: format!(
                "slow consumer: more than {} messages or {} bytes unread; reconnect",
                self.messages, self.bytes
            )
            .into(),
        }
    }
}

/// A rendered message and where it stands in the space's sequence: an
/// event's own `seq`; for a log line, the `seq` of the last event before it
/// (log lines are not numbered).
#[derive(Clone)]
pub(crate) struct Item {
    text: Utf8Bytes,
    seq: u64,
    is_event: bool,
}

impl Item {
    /// Whether a watcher whose snapshot reflects events up to `seq` needs
    /// this message. A log line after that event may have been appended
    /// just before the snapshot; log lines are not part of a snapshot, so
    /// sending it repeats nothing.
    fn after(&self, seq: u64) -> bool {
        if self.is_event {
            self.seq > seq
        } else {
            self.seq >= seq
        }
    }
}

struct Ring {
    bounds: RingBounds,
    items: VecDeque<Item>,
    /// Position of `items[0]` among every message the feed has had.
    first: u64,
    bytes: usize,
    /// The newest `seq` dropped from the ring, if any was.
    dropped_upto: Option<u64>,
    last_event_seq: u64,
    ended: Option<CloseFrame>,
}

impl Ring {
    fn new(bounds: RingBounds) -> Self {
        Self {
            bounds,
            items: VecDeque::new(),
            first: 0,
            bytes: 0,
            dropped_upto: None,
            last_event_seq: 0,
            ended: None,
        }
    }

    fn push(&mut self, text: Utf8Bytes, event_seq: Option<u64>) {
        if let Some(seq) = event_seq {
            self.last_event_seq = seq;
        }
        self.bytes += text.len();
        self.items.push_back(Item {
            text,
            seq: self.last_event_seq,
            is_event: event_seq.is_some(),
        });
        while self.items.len() > self.bounds.messages.max(1)
            || (self.bytes > self.bounds.bytes && self.items.len() > 1)
        {
            let Some(dropped) = self.items.pop_front() else {
                break;
            };
            self.bytes -= dropped.text.len();
            self.first += 1;
            self.dropped_upto = Some(dropped.seq);
        }
    }

    fn head(&self) -> u64 {
        self.first + self.items.len() as u64
    }
}

/// The part of a feed its reading task writes to (and its lanes read).
pub(crate) struct Shared {
    ring: Mutex<Ring>,
    /// Bumped on every change of the ring, to wake the cursors.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, text: Utf8Bytes, event_seq: Option<u64>) {
        let head = {
            let mut ring = self.lock();
            ring.push(text, event_seq);
            ring.head()
        };
        self.changed.send_replace(head);
    }

    fn end(&self, frame: CloseFrame) {
        let head = {
            let mut ring = self.lock();
            ring.ended = Some(frame);
            ring.head()
        };
        self.changed.send_replace(head + 1);
    }

    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The messages from position `from` on (or from the ring's start, if
    /// it dropped those), copied out under one lock.
    pub(crate) fn batch_since(&self, from: u64) -> Batch {
        let ring = self.lock();
        let first = from.max(ring.first);
        let skip = usize::try_from(first - ring.first).unwrap_or(usize::MAX);
        Batch {
            first,
            items: ring.items.iter().skip(skip).cloned().collect(),
            ended: ring.ended.is_some(),
        }
    }
}

/// The next message a cursor at `next` owes its client, from items held
/// from position `first` on (`item_at` counts from there): it moves past
/// messages the client's snapshot already holds (`seq` at or before
/// `skip_upto`) and past the one it returns. The ring and a lane's batch
/// are read alike through this.
fn owed_from<'a>(
    next: &mut u64,
    skip_upto: u64,
    first: u64,
    item_at: impl Fn(usize) -> Option<&'a Item>,
) -> Option<Utf8Bytes> {
    while let Some(item) = item_at(usize::try_from(*next - first).ok()?) {
        *next += 1;
        if item.after(skip_upto) {
            return Some(item.text.clone());
        }
    }
    None
}

/// New messages of a feed, as a lane writes them to its watchers.
pub(crate) struct Batch {
    /// Position of `items[0]`.
    first: u64,
    items: Vec<Item>,
    /// Whether the feed ended after these.
    ended: bool,
}

impl Batch {
    pub(crate) fn head(&self) -> u64 {
        self.first + self.items.len() as u64
    }
}

/// What a cursor found in a lane's batch.
pub(crate) enum InBatch {
    Message(Utf8Bytes),
    /// The watcher has everything the batch holds.
    Done,
    /// Its relay task must take over: the watcher stands before the batch,
    /// or the feed ended and its close is due.
    Relay,
}

/// A rendered message: its text and, for an event, its `seq`; None for a
/// message clients do not see. Err ends the feed: the core's message lacked
/// what it always sends.
type Rendered = Result<Option<(Utf8Bytes, Option<u64>)>, ApiError>;

pub struct Feed {
    shared: Arc<Shared>,
    reader: AbortHandle,
    /// The first message for a watcher that starts from the feed's
    /// snapshot, and that snapshot's `seq` (job feeds).
    snapshot: Option<(Utf8Bytes, u64)>,
    /// Where a shared feed is registered, to be removed when it drops.
    registration: Option<(Weak<JobFeeds>, FeedKey)>,
    /// The tasks writing a shared feed to its caught-up watchers; None for
    /// a private feed, whose one watcher's relay task writes it all.
    lanes: Option<Lanes>,
    _counted: Option<FeedGuard>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        // The core's stream is cancelled with the task reading it.
        self.reader.abort();
        if let Some((feeds, key)) = &self.registration
            && let Some(feeds) = feeds.upgrade()
        {
            feeds.forget(key);
        }
    }
}

impl Feed {
    /// A feed of its own for one client.
    pub fn private<M: Send + 'static>(
        upstream: tonic::Streaming<M>,
        bounds: RingBounds,
        render: fn(M) -> Result<Option<String>, ApiError>,
    ) -> Cursor {
        let feed = Arc::new(Self::start(upstream, bounds, None, None, move |message| {
            Ok(render(message)?.map(|text| (Utf8Bytes::from(text), None)))
        }));
        Cursor {
            feed,
            next: 0,
            skip_upto: 0,
        }
    }

    fn start<M: Send + 'static>(
        mut upstream: tonic::Streaming<M>,
        bounds: RingBounds,
        snapshot: Option<(Utf8Bytes, u64)>,
        counted: Option<FeedGuard>,
        render: impl Fn(M) -> Rendered + Send + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring::new(bounds)),
            changed: watch::Sender::new(0),
        });
        let writer = shared.clone();
        let reader = tokio::spawn(async move {
            let frame = loop {
                match upstream.message().await {
                    Ok(Some(message)) => match render(message) {
                        Ok(Some((text, seq))) => writer.push(text, seq),
                        Ok(None) => {}
                        Err(_) => {
                            break CloseFrame {
                                code: close_code::ERROR,
                                reason: "internal error".into(),
                            };
                        }
                    },
                    Ok(None) => {
                        break CloseFrame {
                            code: close_code::AWAY,
                            reason: "stream ended".into(),
                        };
                    }
                    Err(status) => break close_frame_for(&status),
                }
            };
            writer.end(frame);
        })
        .abort_handle();
        Self {
            shared,
            reader,
            snapshot,
            registration: None,
            lanes: None,
            _counted: counted,
        }
    }

    /// A cursor for a watcher whose own snapshot stands at `seq`, with the
    /// watcher's first message; None when the feed cannot serve it without
    /// a gap. Decided and placed under one lock of the ring, so nothing is
    /// dropped in between.
    fn join_at(
        self: &Arc<Self>,
        seq: u64,
        own_snapshot: &Utf8Bytes,
    ) -> Option<(Utf8Bytes, Cursor)> {
        let (snapshot, snapshot_seq) = self.snapshot.as_ref()?;
        let ring = self.shared.lock();
        if ring.ended.is_some() {
            return None;
        }
        let (first, skip_upto) = if seq >= *snapshot_seq {
            // Everything after the feed's snapshot came through the feed:
            // what the watcher needs is there unless it was dropped.
            if ring.dropped_upto.is_some_and(|dropped| dropped > seq) {
                return None;
            }
            (own_snapshot.clone(), seq)
        } else {
            // The feed's snapshot is the later one: the watcher needs all
            // of the feed since.
            if ring.dropped_upto.is_some() {
                return None;
            }
            (snapshot.clone(), *snapshot_seq)
        };
        let cursor = Cursor {
            feed: self.clone(),
            next: ring.first,
            skip_upto,
        };
        Some((first, cursor))
    }
}

/// The shared job feeds, one per job and visibility.
pub struct JobFeeds {
    bounds: RingBounds,
    feeds: Mutex<HashMap<FeedKey, Arc<FeedSlot>>>,
}

#[derive(Clone, Hash, PartialEq, Eq)]
struct FeedKey {
    job_id: String,
    visibility: i32,
    /// The credentials the feed was opened with, as sent to the core.
    credential: String,
}

/// A key's current feed. Its lock is held while a feed is opened, so the
/// watchers of a job arriving together open one feed, not one each.
#[derive(Default)]
struct FeedSlot {
    feed: tokio::sync::Mutex<Weak<Feed>>,
}

impl JobFeeds {
    pub fn new(bounds: RingBounds) -> Self {
        Self {
            bounds,
            feeds: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<FeedKey, Arc<FeedSlot>>> {
        self.feeds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins a watcher whose own snapshot is `own` (from its stream without
    /// events) to its job's feed, opening one with `open` (a WatchJob with
    /// events and the watcher's credentials) when none can serve it.
    /// Returns the watcher's first message and its cursor.
    pub async fn join(
        self: &Arc<Self>,
        core: &CoreClient,
        own: pb::JobSnapshot,
        open: tonic::Request<pb::WatchJobRequest>,
    ) -> Result<(Utf8Bytes, Cursor), tonic::Status> {
        let key = FeedKey {
            job_id: own.job_id.clone(),
            visibility: own.visibility,
            credential: credential_of(&open),
        };
        let own_seq = own.seq;
        let own_snapshot = render_snapshot(own)?;
        let slot = self.lock().entry(key.clone()).or_default().clone();
        let mut current = slot.feed.lock().await;
        if let Some(joined) = current
            .upgrade()
            .and_then(|feed| feed.join_at(own_seq, &own_snapshot))
        {
            return Ok(joined);
        }
        let opened = self.open(core, open, &key).await;
        let feed = match opened {
            Ok(feed) => feed,
            Err(status) => {
                drop(current);
                self.forget(&key);
                return Err(status);
            }
        };
        *current = Arc::downgrade(&feed);
        feed.join_at(own_seq, &own_snapshot)
            .ok_or_else(|| tonic::Status::unavailable("the job's stream ended; reconnect"))
    }

    async fn open(
        self: &Arc<Self>,
        core: &CoreClient,
        open: tonic::Request<pb::WatchJobRequest>,
        key: &FeedKey,
    ) -> Result<Arc<Feed>, tonic::Status> {
        let mut upstream = core.events().watch_job(open).await?.into_inner();
        let snapshot = match upstream.message().await? {
            Some(pb::WatchJobResponse {
                message: Some(pb::watch_job_response::Message::Init(init)),
            }) => init,
            _ => {
                return Err(tonic::Status::internal(
                    "the job stream did not start with init",
                ));
            }
        };
        let seq = snapshot.seq;
        let mut feed = Feed::start(
            upstream,
            self.bounds,
            Some((render_snapshot(snapshot)?, seq)),
            Some(core.metrics().job_feed()),
            |response: pb::WatchJobResponse| {
                let Some(message) = response.message else {
                    return Ok(None);
                };
                let seq = match &message {
                    pb::watch_job_response::Message::Event(event) => Some(event.seq),
                    pb::watch_job_response::Message::Log(_) => None,
                    // Only the first message is a snapshot.
                    pb::watch_job_response::Message::Init(_) => return Ok(None),
                };
                let text = JobStreamMessage::text(message)?;
                Ok(Some((Utf8Bytes::from(text), seq)))
            },
        );
        feed.registration = Some((Arc::downgrade(self), key.clone()));
        feed.lanes = Some(Lanes::new(feed.shared.clone()));
        Ok(Arc::new(feed))
    }

    /// Removes `key`'s slot once no feed lives in it and nobody is opening
    /// one.
    fn forget(&self, key: &FeedKey) {
        let mut feeds = self.lock();
        let idle = feeds.get(key).is_some_and(|slot| {
            slot.feed
                .try_lock()
                .is_ok_and(|current| current.strong_count() == 0)
        });
        if idle {
            feeds.remove(key);
        }
    }
}

/// The credentials a request carries to the core, as one string.
fn credential_of<T>(request: &tonic::Request<T>) -> String {
    let metadata = request.metadata();
    [
        CREDENTIAL_HEADERS[0],
        CREDENTIAL_HEADERS[1],
        SESSION_METADATA,
    ]
    .into_iter()
    .map(|name| {
        metadata
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    })
    .collect::<Vec<_>>()
    .join("\n")
}

/// A snapshot the gateway cannot show (the core broke the contract, which
/// `core_fault` logged) ends the watch as an internal error.
fn render_snapshot(snapshot: pb::JobSnapshot) -> Result<Utf8Bytes, tonic::Status> {
    let message = pb::watch_job_response::Message::Init(snapshot);
    JobStreamMessage::text(message)
        .map(Utf8Bytes::from)
        .map_err(|_| tonic::Status::internal("internal error"))
}

/// What a cursor read.
pub enum Next {
    Message(Utf8Bytes),
    /// The client left more unread than the feed keeps.
    TooSlow(CloseFrame),
    /// The core's stream ended, after every message before the end.
    Ended(CloseFrame),
}

/// One client's place in a feed.
pub struct Cursor {
    feed: Arc<Feed>,
    next: u64,
    /// Messages at or before this `seq` are in the client's snapshot.
    skip_upto: u64,
}

impl Cursor {
    /// The next message for the client, if the ring has one now.
    pub fn next_now(&mut self) -> Option<Next> {
        let ring = self.feed.shared.lock();
        if self.next < ring.first {
            return Some(Next::TooSlow(ring.bounds.too_slow()));
        }
        let owed = owed_from(&mut self.next, self.skip_upto, ring.first, |at| {
            ring.items.get(at)
        });
        match owed {
            Some(text) => Some(Next::Message(text)),
            None => ring.ended.clone().map(Next::Ended),
        }
    }

    /// Whether the client has had everything the feed holds, and the feed
    /// goes on. Passes over messages its snapshot already holds.
    pub fn caught_up(&mut self) -> bool {
        let ring = self.feed.shared.lock();
        if self.next < ring.first || ring.ended.is_some() {
            return false;
        }
        while let Some(item) = ring.items.get((self.next - ring.first) as usize) {
            if item.after(self.skip_upto) {
                return false;
            }
            self.next += 1;
        }
        true
    }

    /// The frame to close the client with when it has fallen off the ring.
    pub fn fallen_behind(&self) -> Option<CloseFrame> {
        let ring = self.feed.shared.lock();
        (self.next < ring.first).then(|| ring.bounds.too_slow())
    }

    /// Wakes on every change of the feed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.feed.shared.changes()
    }

    /// The lanes of the feed, when it is shared.
    pub(crate) fn lanes(&self) -> Option<&Lanes> {
        self.feed.lanes.as_ref()
    }

    /// The next message in a lane's batch.
    pub(crate) fn next_in(&mut self, batch: &Batch) -> InBatch {
        if self.next < batch.first {
            return InBatch::Relay;
        }
        let owed = owed_from(&mut self.next, self.skip_upto, batch.first, |at| {
            batch.items.get(at)
        });
        if let Some(text) = owed {
            return InBatch::Message(text);
        }
        if batch.ended && self.next >= batch.head() {
            InBatch::Relay
        } else {
            InBatch::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(messages: usize, bytes: usize) -> RingBounds {
        RingBounds { messages, bytes }
    }

    fn texts(ring: &Ring) -> Vec<&str> {
        ring.items.iter().map(|item| item.text.as_str()).collect()
    }

    #[test]
    fn a_ring_keeps_the_newest_messages_within_both_bounds() {
        let mut ring = Ring::new(bounds(3, 10));
        for (text, seq) in [("aa", 1), ("bb", 2), ("cc", 3), ("dd", 4)] {
            ring.push(text.into(), Some(seq));
        }
        assert_eq!(texts(&ring), ["bb", "cc", "dd"]);
        assert_eq!((ring.first, ring.dropped_upto), (1, Some(1)));
        ring.push("eeeeeee".into(), Some(5));
        // 2 + 2 + 7 > 10: bytes bound the ring too.
        assert_eq!(texts(&ring), ["dd", "eeeeeee"]);
        assert_eq!((ring.first, ring.head(), ring.bytes), (3, 5, 9));
        // One message bigger than the byte bound is still kept.
        ring.push("ffffffffffff".into(), Some(6));
        assert_eq!(texts(&ring), ["ffffffffffff"]);
    }

    #[test]
    fn log_lines_stand_at_the_event_before_them() {
        let mut ring = Ring::new(bounds(10, 1000));
        ring.push("e4".into(), Some(4));
        ring.push("log".into(), None);
        ring.push("e5".into(), Some(5));
        let wanted = |after: u64| -> Vec<&str> {
            ring.items
                .iter()
                .filter(|item| item.after(after))
                .map(|item| item.text.as_str())
                .collect()
        };
        // A snapshot at 4 holds e4; the log line after it may be newer.
        assert_eq!(wanted(4), ["log", "e5"]);
        assert_eq!(wanted(3), ["e4", "log", "e5"]);
        assert!(wanted(5).is_empty());
    }
}
