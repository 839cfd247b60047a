//! The HTTP server loop: axum's router on hyper, with the timeouts that
//! `axum::serve` leaves out, so no connection is held for free:
//! - headers must arrive within `HEADER_READ_TIMEOUT` (half-sent headers,
//!   slowloris);
//! - a connection on which no byte moves either way for the read-idle
//!   timeout while the server waits to read is closed (idle keep-alive, a
//!   body shorter than its Content-Length, a WebSocket whose client stopped
//!   answering pings);
//! - HTTP/2 connections are pinged and dropped when the pings go unanswered.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// How long a connection may keep the server waiting.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionTimeouts {
    /// Time a client has to send a request's headers.
    pub header_read: Duration,
    /// Silence tolerated while the server waits for bytes. The default is
    /// above the longest long poll (30 s) and the WebSocket ping interval
    /// (30 s), so live clients never meet it.
    pub read_idle: Duration,
}

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            read_idle: Duration::from_secs(75),
        }
    }
}
const HTTP2_PING_EVERY: Duration = Duration::from_secs(20);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest request head (request line and headers) hyper buffers. It sits
/// well above the limits the router enforces (`routes::MAX_URI_BYTES`,
/// `routes::MAX_HEADER_BYTES`), so an oversized request gets its 414 or 431
/// as JSON from the router, not an empty one from hyper.
///
/// The number of header lines keeps hyper's default (100), beyond which
/// hyper itself answers 431 with no body. A higher cap costs every request:
/// hyper then allocates and fills room for that many headers before parsing
/// (2,000 lines were 110 KiB per request, 5% of the REST path's CPU).
const MAX_HEAD_BYTES: usize = 1024 * 1024;

/// Serves `app` until `stop` turns true, then lets requests in flight finish.
pub async fn run(
    listener: TcpListener,
    app: Router,
    timeouts: ConnectionTimeouts,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_PING_EVERY)
        .keep_alive_timeout(HTTP2_PING_TIMEOUT)
        // HTTP/2 WebSockets need the CONNECT protocol.
        .enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    loop {
        let (socket, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, most likely: wait for some to close
                    // rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = socket.set_nodelay(true);
        let app = app.clone();
        let service = TowerToHyperService::new(tower::service_fn(
            move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                app.clone().oneshot(request.map(Body::new))
            },
        ));
        let connection = builder
            .serve_connection_with_upgrades(
                TokioIo::new(ReadIdle::new(socket, timeouts.read_idle)),
                service,
            )
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %remote, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// A socket whose pending reads fail with `TimedOut` after `limit` without
/// progress either way: bytes received or sent restart the clock, so a slow
/// but live download is never cut.
///
/// Progress only notes the time; the timer is moved when it fires and
/// finds progress since. Re-arming it after every write made each message
/// of a WebSocket fan-out a timer-wheel update (about 3% of the gateway's
/// samples in a 10,000-watcher profile).
struct ReadIdle {
    io: TcpStream,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    /// When bytes last moved either way.
    progress: Instant,
}

impl ReadIdle {
    fn new(io: TcpStream, limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            io,
            limit,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
            progress: now,
        }
    }
}

impl AsyncRead for ReadIdle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(result) = Pin::new(&mut this.io).poll_read(cx, buf) {
            this.progress = Instant::now();
            return Poll::Ready(result);
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            let deadline = this.progress + this.limit;
            if deadline <= Instant::now() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing received for too long",
                )));
            }
            this.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

impl AsyncWrite for ReadIdle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(sent)) if sent > 0) {
            self.progress = Instant::now();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(sent)) if sent > 0) {
            self.progress = Instant::now();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The address a request came from, when the server loop recorded it.
pub fn client_address(request: &axum::extract::Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| *address)
}
