//! Fan-out: how a shared feed's messages reach its WebSocket clients. A few
//! tasks per feed (lanes) write each new message to every caught-up client,
//! instead of a task per client waking for it.
//!
//! With 10,000 browsers watching one job, every event used to wake 10,000
//! relay tasks, and each polled its end signal, its cursor, its socket's
//! read side and its ping timer to send one frame: touching that much state
//! per client cost as much as the sends themselves. A lane takes the new
//! messages from the feed's ring once and writes them to its clients in
//! turn, never waiting: a client whose socket takes the frame at once, as
//! nearly all do, costs one write.
//!
//! A client (an `Outlet`) is in one of two hands. While it is caught up and
//! its socket keeps taking frames, its feed's lane writes to it (it is
//! "inline"). The moment a write cannot complete at once, or the feed ends,
//! the lane hands it back to its relay task, which finishes the write as
//! the socket drains, catches up from the ring (or closes it with 1013 when
//! it fell off), and hands it to the lane again. The relay task also reads
//! the client, pings it and closes it; before it writes it takes the client
//! back, so the two never wait on one socket together, and one lock per
//! client keeps their frames whole.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{Sink, StreamExt};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::feeds::{Batch, Cursor, InBatch, Next, Shared};

/// Clients a lane writes to between yields, so a pass over thousands of
/// them does not hold its worker thread from other tasks.
const CLIENTS_PER_TURN: usize = 128;
/// Lanes per feed at most: one per core keeps every core writing.
const MAX_LANES: usize = 8;

/// One WebSocket client of a feed: its socket and where it stands.
pub struct Outlet {
    state: Mutex<OutletState>,
    /// Wakes the relay task when a lane hands the client back to it.
    handed_back: Notify,
}

struct OutletState {
    socket: WebSocket,
    /// The client's first message (its snapshot), before the cursor's.
    first: Option<Utf8Bytes>,
    cursor: Cursor,
    /// Whether the feed's lane writes to the client.
    inline: bool,
}

impl Outlet {
    pub fn new(socket: WebSocket, first: Option<Utf8Bytes>, cursor: Cursor) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(OutletState {
                socket,
                first,
                cursor,
                inline: false,
            }),
            handed_back: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, OutletState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Enters the client in one of its feed's lanes; false when the feed
    /// has none (a private feed: its relay task writes everything).
    pub fn join_lane(self: &Arc<Self>) -> bool {
        let state = self.lock();
        match state.cursor.lanes() {
            Some(lanes) => {
                lanes.join(Arc::downgrade(self));
                true
            }
            None => false,
        }
    }

    /// The next message the client is owed: its first, then the cursor's.
    pub fn next_message(&self) -> Option<Next> {
        let mut state = self.lock();
        match state.first.take() {
            Some(first) => Some(Next::Message(first)),
            None => state.cursor.next_now(),
        }
    }

    /// Hands the client to its lane if it has had everything so far;
    /// false when more arrived, to be sent first.
    pub fn go_inline(&self) -> bool {
        let mut state = self.lock();
        let caught_up = state.first.is_none() && state.cursor.caught_up();
        state.inline = caught_up;
        caught_up
    }

    /// Resolves when a lane handed the client back.
    pub async fn handed_back(&self) {
        self.handed_back.notified().await;
    }

    /// The frame to close the client with, once it has fallen off the ring.
    pub fn fallen_behind(&self) -> Option<axum::extract::ws::CloseFrame> {
        self.lock().cursor.fallen_behind()
    }

    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.lock().cursor.changes()
    }

    /// Sends `message` and flushes it, taking the client back from its lane.
    pub async fn send(&self, message: Message) -> Result<(), axum::Error> {
        self.write(Some(message)).await
    }

    /// Sends `message`, if any, and flushes whatever is buffered (a lane
    /// may have left a frame half written), taking the client back from its
    /// lane.
    pub async fn write(&self, mut message: Option<Message>) -> Result<(), axum::Error> {
        poll_fn(|cx| {
            let mut state = self.lock();
            state.inline = false;
            if let Some(unsent) = message.take() {
                match Pin::new(&mut state.socket).poll_ready(cx) {
                    Poll::Ready(Ok(())) => Pin::new(&mut state.socket).start_send(unsent)?,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        message = Some(unsent);
                        return Poll::Pending;
                    }
                }
            }
            Pin::new(&mut state.socket).poll_flush(cx)
        })
        .await
    }

    /// Flushes and closes the WebSocket (after queuing the answer to a
    /// client's close, the WebSocket layer's).
    pub async fn close(&self) -> Result<(), axum::Error> {
        poll_fn(|cx| {
            let mut state = self.lock();
            state.inline = false;
            Pin::new(&mut state.socket).poll_close(cx)
        })
        .await
    }

    /// The client's next message.
    pub async fn recv(&self) -> Option<Result<Message, axum::Error>> {
        poll_fn(|cx| self.lock().socket.poll_next_unpin(cx)).await
    }

    /// A lane's turn: writes what `batch` holds for the client, as far as
    /// its socket takes it without waiting, or hands the client back.
    fn deliver(&self, batch: &Batch) {
        let mut state = self.lock();
        if !state.inline {
            return;
        }
        // Nobody is woken by this context: a write that would wait hands
        // the client to its relay task, which waits with its own.
        let mut cx = Context::from_waker(Waker::noop());
        let hand_back = loop {
            if !matches!(
                Pin::new(&mut state.socket).poll_ready(&mut cx),
                Poll::Ready(Ok(()))
            ) {
                break true;
            }
            let text = match state.cursor.next_in(batch) {
                InBatch::Message(text) => text,
                InBatch::Done => break false,
                InBatch::Relay => break true,
            };
            let socket = Pin::new(&mut state.socket);
            if socket.start_send(Message::Text(text)).is_err()
                || !matches!(
                    Pin::new(&mut state.socket).poll_flush(&mut cx),
                    Poll::Ready(Ok(()))
                )
            {
                break true;
            }
        };
        if hand_back {
            state.inline = false;
            drop(state);
            self.handed_back.notify_one();
        }
    }
}

/// One lane per core, up to `MAX_LANES`; read once, since finding the
/// cores reads the cgroup's files and a join should not.
fn lanes_per_feed() -> usize {
    static LANES: OnceLock<usize> = OnceLock::new();
    *LANES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(MAX_LANES)
    })
}

/// A shared feed's lanes, started as clients join; they stop when the
/// feed drops.
pub struct Lanes {
    shared: Arc<Shared>,
    lanes: Mutex<Vec<Lane>>,
    /// Clients joined so far: the next goes to lane `joined % lanes`.
    joined: AtomicUsize,
}

struct Lane {
    members: Arc<Mutex<Vec<Weak<Outlet>>>>,
    task: AbortHandle,
}

impl Lanes {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            lanes: Mutex::default(),
            joined: AtomicUsize::new(0),
        }
    }

    /// Adds a client to the lanes in turn, starting a lane while there are
    /// fewer than cores.
    fn join(&self, outlet: Weak<Outlet>) {
        let turn = self.joined.fetch_add(1, Ordering::Relaxed);
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if lanes.len() < lanes_per_feed() {
            let members = Arc::new(Mutex::new(Vec::new()));
            let task = tokio::spawn(run_lane(self.shared.clone(), members.clone()));
            lanes.push(Lane {
                members,
                task: task.abort_handle(),
            });
        }
        let lane = &lanes[turn % lanes.len()];
        let mut members = lane.members.lock().unwrap_or_else(|p| p.into_inner());
        // A lane drops departed clients as it writes; on a quiet feed they
        // are dropped here, before the list would grow, and it grows by
        // doubling when most are still there, so each join costs O(1) on
        // average and the list never holds more than twice its live clients.
        if members.len() == members.capacity() {
            members.retain(|member| member.strong_count() > 0);
            let live = members.len();
            members.reserve(live.max(4));
        }
        members.push(outlet);
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        let lanes = self.lanes.get_mut().unwrap_or_else(|p| p.into_inner());
        for lane in lanes.iter() {
            lane.task.abort();
        }
    }
}

/// A lane: on every change of the feed, writes the new messages to each of
/// its clients that is inline.
async fn run_lane(shared: Arc<Shared>, members: Arc<Mutex<Vec<Weak<Outlet>>>>) {
    let mut changes = shared.changes();
    let mut seen = 0;
    loop {
        changes.borrow_and_update();
        let batch = shared.batch_since(seen);
        seen = batch.head();
        let outlets: Vec<Arc<Outlet>> = {
            let mut members = members.lock().unwrap_or_else(|p| p.into_inner());
            members.retain(|member| member.strong_count() > 0);
            members.iter().filter_map(Weak::upgrade).collect()
        };
        for turn in outlets.chunks(CLIENTS_PER_TURN) {
            // Each write would count against the task's budget and soon be
            // refused; the turn is bounded instead, and yields after.
            tokio::task::coop::unconstrained(async {
                for outlet in turn {
                    outlet.deliver(&batch);
                }
            })
            .await;
            tokio::task::yield_now().await;
        }
        drop(outlets);
        if changes.changed().await.is_err() {
            break;
        }
    }
}
