//! WebSocket streams: each connection relays the core's events of a job
//! (WatchJob) or a space (WatchSpace) as JSON text messages, read from a
//! feed (see `feeds`): a job's watchers share one, a space stream has its
//! own.
//!
//! The core's answer decides the handshake: a refused stream is an HTTP error
//! (401, 403, 404) before any upgrade. After it, the core's stream is read
//! promptly into the feed's bounded ring whatever the clients do: a stalled
//! client must never hold the HTTP/2 connection it shares with other
//! watchers. A client that falls off the ring is disconnected (1013) and
//! reconnects, with `since` on a space stream.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use emit_proto::v1 as pb;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

use super::{integer_param, query_params};
use crate::core_client::{Caller, set_credential};
use crate::error::close_frame_for;
use crate::fanout::Outlet;
use crate::feeds::{Cursor, Feed, Next};
use crate::resources::SpaceStreamMessage;
use crate::{ApiError, CoreClient};

/// Client messages are only ever control frames or small; refuse big ones.
const MAX_INCOMING_BYTES: usize = 64 * 1024;
/// Bytes read from a client's socket at once. The WebSocket layer zeroes
/// this much before every read, and a relay polls its client for input
/// each time it sends: at the layer's default (128 KiB) zeroing was a
/// quarter of the gateway's CPU in a 10k-subscriber fan-out. Clients send
/// only small frames; a bigger one is read in several chunks.
const READ_CHUNK_BYTES: usize = 4 * 1024;
/// Pings find peers that vanished without closing.
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long a disconnected slow consumer gets to take its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub fn router() -> Router<CoreClient> {
    Router::new()
        .route("/api/v1/realtime/{job_id}", get(watch_job))
        .route("/api/v1/realtime/spaces/{space_id}", get(watch_space))
}

/// `?token=` (what browsers can send) or the usual headers.
fn stream_request<T>(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    message: T,
) -> tonic::Request<T> {
    let mut request = Caller::of(headers).request(message);
    if let Some(token) = params.get("token").filter(|token| !token.is_empty()) {
        request.metadata_mut().remove("authorization");
        set_credential(&mut request, "x-api-key", token);
    }
    request
}

fn upgrade_required(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    upgrade
        .map(|upgrade| {
            upgrade
                .max_message_size(MAX_INCOMING_BYTES)
                .read_buffer_size(READ_CHUNK_BYTES)
        })
        .map_err(|_| {
            ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint is a WebSocket: connect with an Upgrade: websocket request",
            )
        })
}

async fn watch_job(
    State(core): State<CoreClient>,
    headers: HeaderMap,
    Path(job_id): Path<String>,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let params = query_params(&uri)?;
    // The watcher's own stream, without events: the core authorizes it on
    // it and ends it when its key is revoked. Events come from the job's
    // shared feed (see `feeds`).
    let own = pb::WatchJobRequest {
        job_id: job_id.clone(),
        without_events: true,
    };
    let mut watcher = core
        .events()
        .watch_job(stream_request(&headers, &params, own))
        .await?
        .into_inner();
    let upgrade = upgrade_required(upgrade)?;
    let snapshot = match watcher.message().await? {
        Some(pb::WatchJobResponse {
            message: Some(pb::watch_job_response::Message::Init(snapshot)),
        }) => snapshot,
        _ => return Err(tonic::Status::internal("the job stream did not start with init").into()),
    };
    let open = pb::WatchJobRequest {
        job_id,
        without_events: false,
    };
    let (first, cursor) = core
        .job_feeds()
        .join(&core, snapshot, stream_request(&headers, &params, open))
        .await?;
    let subscriber = core.metrics().subscribed();
    Ok(upgrade.on_upgrade(move |socket| async move {
        relay(socket, Some(first), cursor, Some(watcher)).await;
        drop(subscriber);
    }))
}

async fn watch_space(
    State(core): State<CoreClient>,
    headers: HeaderMap,
    Path(space_id): Path<String>,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let params = query_params(&uri)?;
    let message = pb::WatchSpaceRequest {
        space_id,
        since: integer_param(&params, "since")?,
        stream_instance_id: params
            .get("streamInstanceId")
            .filter(|id| !id.is_empty())
            .cloned(),
    };
    let request = stream_request(&headers, &params, message);
    let upstream = core.events().watch_space(request).await?.into_inner();
    let upgrade = upgrade_required(upgrade)?;
    let cursor = Feed::private(
        upstream,
        core.stream_bounds(),
        |response: pb::WatchSpaceResponse| {
            response.message.map(SpaceStreamMessage::text).transpose()
        },
    );
    let subscriber = core.metrics().subscribed();
    Ok(upgrade.on_upgrade(move |socket| async move {
        relay(socket, None, cursor, None).await;
        drop(subscriber);
    }))
}

/// The end of a watcher's own stream (without events): the frame to close
/// its WebSocket with. Followed by a task of its own, so the relay's loop
/// polls a oneshot per message, not the HTTP/2 stream (whose connection
/// lock every watcher shares).
struct OwnStreamEnd {
    ended: Option<oneshot::Receiver<CloseFrame>>,
    follower: Option<AbortHandle>,
}

impl OwnStreamEnd {
    fn follow(watcher: Option<tonic::Streaming<pb::WatchJobResponse>>) -> Self {
        let Some(mut stream) = watcher else {
            return Self {
                ended: None,
                follower: None,
            };
        };
        let (end, ended) = oneshot::channel();
        let follower = tokio::spawn(async move {
            let frame = loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        break CloseFrame {
                            code: close_code::AWAY,
                            reason: "stream ended".into(),
                        };
                    }
                    Err(status) => break close_frame_for(&status),
                }
            };
            let _ = end.send(frame);
        });
        Self {
            ended: Some(ended),
            follower: Some(follower.abort_handle()),
        }
    }

    async fn wait(&mut self) -> CloseFrame {
        if let Some(ended) = &mut self.ended
            && let Ok(frame) = ended.await
        {
            return frame;
        }
        std::future::pending().await
    }
}

impl Drop for OwnStreamEnd {
    fn drop(&mut self) {
        // Cancels the core's stream with the task reading it.
        if let Some(follower) = &self.follower {
            follower.abort();
        }
    }
}

/// Writes `first` and then what `cursor` reads to the client, answers its
/// control frames and pings it, until either side ends. While the client
/// is caught up, its feed's lane writes to it (see `fanout`); this task
/// takes over whenever the lane hands it back. A client that cannot keep up
/// falls off its feed and is closed (1013) even while a send to it is
/// stuck; the feed's end is sent after everything before it.
async fn relay(
    socket: WebSocket,
    first: Option<Utf8Bytes>,
    cursor: Cursor,
    watcher: Option<tonic::Streaming<pb::WatchJobResponse>>,
) {
    let mut own_end = OwnStreamEnd::follow(watcher);
    let outlet = Outlet::new(socket, first, cursor);
    // What wakes a client without a lane for new messages.
    let mut changes = outlet.changes();
    let in_lane = outlet.join_lane();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    // Whether the client is owed messages only this task will send.
    let mut owed = true;
    loop {
        if owed {
            match catch_up(&outlet, in_lane, &mut changes, &mut own_end).await {
                Ok(()) => owed = false,
                Err(Some(frame)) => {
                    close_now(&outlet, frame).await;
                    break;
                }
                Err(None) => break,
            }
        }
        tokio::select! {
            biased;
            frame = own_end.wait() => {
                close_now(&outlet, frame).await;
                break;
            }
            () = outlet.handed_back(), if in_lane => owed = true,
            changed = changes.changed(), if !in_lane => {
                // The feed outlives its watchers' cursors; this is not seen.
                if changed.is_err() {
                    break;
                }
                owed = true;
            }
            received = outlet.recv() => match received {
                // The WebSocket layer queued the answer to a client's close
                // (echoing its code); flushing sends it, so the client sees
                // a clean close rather than 1006.
                Some(Ok(Message::Close(_))) => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, outlet.close()).await;
                    break;
                }
                // A message over the limit gets 1009 (too big), so the client
                // learns why; other failures end the connection as it is.
                Some(Err(error)) => {
                    if is_too_big(error) {
                        let frame = CloseFrame {
                            code: close_code::SIZE,
                            reason: format!("messages to the server are limited to {MAX_INCOMING_BYTES} bytes").into(),
                        };
                        close_now(&outlet, frame).await;
                    }
                    break;
                }
                None => break,
                // Pings are answered by the WebSocket layer; anything else
                // from the client is ignored.
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                // The ping took the client back from its lane.
                owed = true;
                let ping = outlet.send(Message::Ping(Default::default()));
                let pinged = tokio::select! {
                    biased;
                    pinged = ping => pinged.is_ok(),
                    frame = fallen_behind(&outlet) => {
                        close_now(&outlet, frame).await;
                        break;
                    }
                };
                if !pinged {
                    break;
                }
            }
        }
    }
}

/// Sends what the client is owed until it has everything and its socket
/// took it all; then hands it to its feed's lane. Err carries the frame to
/// close the client with, or None when its connection failed.
async fn catch_up(
    outlet: &Outlet,
    in_lane: bool,
    changes: &mut watch::Receiver<u64>,
    own_end: &mut OwnStreamEnd,
) -> Result<(), Option<CloseFrame>> {
    loop {
        // Seen before the ring is read: a message after it wakes the relay.
        changes.borrow_and_update();
        // A send to a stalled client may block; falling off the feed, or
        // the watcher's end, still wins.
        let message = match outlet.next_message() {
            Some(Next::Message(text)) => Some(Message::Text(text)),
            Some(Next::TooSlow(frame) | Next::Ended(frame)) => return Err(Some(frame)),
            None => None,
        };
        let all_sent = message.is_none();
        let written = outlet.write(message);
        tokio::select! {
            biased;
            written = written => written.map_err(|_| None)?,
            frame = fallen_behind(outlet) => return Err(Some(frame)),
            frame = own_end.wait() => return Err(Some(frame)),
        }
        if all_sent && (!in_lane || outlet.go_inline()) {
            return Ok(());
        }
    }
}

/// Resolves once the client has fallen off its feed's ring.
async fn fallen_behind(outlet: &Outlet) -> CloseFrame {
    let mut changes = outlet.changes();
    loop {
        changes.borrow_and_update();
        if let Some(frame) = outlet.fallen_behind() {
            return frame;
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

fn is_too_big(error: axum::Error) -> bool {
    error
        .into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|error| matches!(error, tungstenite::Error::Capacity(_)))
}

async fn close_now(outlet: &Outlet, frame: CloseFrame) {
    let close = outlet.send(Message::Close(Some(frame)));
    let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
}
