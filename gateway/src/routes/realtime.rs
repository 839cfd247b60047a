//! WebSocket streams: each connection relays one of the core's server
//! streams (WatchJob or WatchSpace) as JSON text messages.
//!
//! The core's answer decides the handshake: a refused stream is an HTTP error
//! (401, 403, 404) before any upgrade. After it, the core's stream is read
//! promptly into a bounded per-connection queue whatever the client does: a
//! stalled client must never hold the HTTP/2 connection it shares with other
//! watchers. A client that lets that queue fill is disconnected (1013) and
//! reconnects, with `since` on a space stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use emit_proto::v1 as pb;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{integer_param, query_params};
use crate::core_client::{set_credential, with_credentials};
use crate::error::close_frame_for;
use crate::json;
use crate::{ApiError, CoreClient};

/// Client messages are only ever control frames or small; refuse big ones.
const MAX_INCOMING_BYTES: usize = 64 * 1024;
/// Bytes of messages one client may leave unread (besides the count bound,
/// `--ws-queue`): event messages can be up to about 1 MiB each.
pub const MAX_UNREAD_BYTES: usize = 16 * 1024 * 1024;
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
    let mut request = with_credentials(headers, message);
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
        .map(|upgrade| upgrade.max_message_size(MAX_INCOMING_BYTES))
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
    let request = stream_request(&headers, &params, pb::WatchJobRequest { job_id });
    let upstream = core.events().watch_job(request).await?.into_inner();
    let upgrade = upgrade_required(upgrade)?;
    let queue = core.stream_queue();
    let subscriber = core.metrics().subscribed();
    Ok(upgrade.on_upgrade(move |socket| async move {
        relay(socket, upstream, queue, |response: pb::WatchJobResponse| {
            response.message.map(json::job_stream_message)
        })
        .await;
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
    let queue = core.stream_queue();
    let subscriber = core.metrics().subscribed();
    Ok(upgrade.on_upgrade(move |socket| async move {
        relay(
            socket,
            upstream,
            queue,
            |response: pb::WatchSpaceResponse| response.message.map(json::space_stream_message),
        )
        .await;
        drop(subscriber);
    }))
}

/// How the relay of the core's stream ended.
enum Ending {
    /// Close after the messages already queued.
    AfterQueued(CloseFrame),
    /// Close at once: the client is too far behind to be worth catching up.
    Now(CloseFrame),
}

async fn relay<M: Send + 'static>(
    socket: WebSocket,
    mut upstream: tonic::Streaming<M>,
    queue: usize,
    render: fn(M) -> Option<Value>,
) {
    let (mut sink, mut incoming) = socket.split();
    let (outbox, mut outgoing) = mpsc::channel::<Message>(queue.max(1));
    // Bytes queued and not yet written to the client.
    let unread = Arc::new(AtomicUsize::new(0));
    let unread_by_reader = unread.clone();
    let (abort, mut aborted) = oneshot::channel::<CloseFrame>();
    let reader = tokio::spawn(async move {
        let ending = loop {
            match upstream.message().await {
                Ok(Some(message)) => {
                    let Some(value) = render(message) else {
                        continue;
                    };
                    let text = value.to_string();
                    let size = text.len();
                    if unread_by_reader.load(Ordering::Acquire) + size > MAX_UNREAD_BYTES {
                        break Ending::Now(CloseFrame {
                            code: close_code::AGAIN,
                            reason: format!(
                                "slow consumer: more than {MAX_UNREAD_BYTES} bytes unread; reconnect"
                            )
                            .into(),
                        });
                    }
                    unread_by_reader.fetch_add(size, Ordering::AcqRel);
                    match outbox.try_send(Message::Text(text.into())) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            break Ending::Now(CloseFrame {
                                code: close_code::AGAIN,
                                reason: format!(
                                    "slow consumer: more than {queue} messages unread; reconnect"
                                )
                                .into(),
                            });
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                Ok(None) => {
                    break Ending::AfterQueued(CloseFrame {
                        code: close_code::AWAY,
                        reason: "stream ended".into(),
                    });
                }
                Err(status) => break Ending::AfterQueued(close_frame_for(&status)),
            }
        };
        // Dropping `upstream` here cancels the core's stream at once.
        drop(upstream);
        match ending {
            Ending::Now(frame) => {
                let _ = abort.send(frame);
            }
            Ending::AfterQueued(frame) => {
                let _ = outbox.send(Message::Close(Some(frame))).await;
            }
        }
    });

    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    // Set once the reader has finished without asking for an abort.
    let mut abort_dropped = false;
    loop {
        tokio::select! {
            biased;
            frame = &mut aborted, if !abort_dropped => match frame {
                Ok(frame) => {
                    close_now(&mut sink, frame).await;
                    break;
                }
                Err(_) => abort_dropped = true,
            },
            message = outgoing.recv() => {
                let Some(message) = message else { break };
                let closing = matches!(message, Message::Close(_));
                let size = match &message {
                    Message::Text(text) => text.len(),
                    _ => 0,
                };
                // A send to a stalled client may block; an abort still wins.
                tokio::select! {
                    sent = sink.send(message) => {
                        unread.fetch_sub(size, Ordering::AcqRel);
                        if sent.is_err() || closing { break }
                    },
                    frame = &mut aborted, if !abort_dropped => {
                        if let Ok(frame) = frame {
                            close_now(&mut sink, frame).await;
                        }
                        break;
                    }
                }
            }
            received = incoming.next() => match received {
                // The WebSocket layer queued the answer to a client's close
                // (echoing its code); flushing sends it, so the client sees
                // a clean close rather than 1006.
                Some(Ok(Message::Close(_))) => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
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
                        close_now(&mut sink, frame).await;
                    }
                    break;
                }
                None => break,
                // Pings are answered by the WebSocket layer; anything else
                // from the client is ignored.
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
    reader.abort();
}

fn is_too_big(error: axum::Error) -> bool {
    error
        .into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|error| matches!(error, tungstenite::Error::Capacity(_)))
}

async fn close_now(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    frame: CloseFrame,
) {
    let close = sink.send(Message::Close(Some(frame)));
    let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
}
