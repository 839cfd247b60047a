//! Calls to the core. Over the network, HTTP/2 multiplexes calls on one
//! connection, but one connection is served by one task on each side; a few
//! channels used in turn spread the load over cores. In the same process
//! the core's services are called directly (`CoreLink::InProcess`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::HeaderMap;
use emit_proto::v1::admin_service_client::AdminServiceClient;
use emit_proto::v1::event_service_client::EventServiceClient;
use emit_proto::v1::job_service_client::JobServiceClient;
use emit_proto::v1::schedule_service_client::ScheduleServiceClient;
use emit_proto::wire::{MAX_MESSAGE_BYTES, SESSION_METADATA};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::Endpoint;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceExt};

use crate::feeds::{JobFeeds, MAX_UNREAD_BYTES, RingBounds};
use crate::metrics::GatewayMetrics;

const CHANNELS: usize = 4;
/// Headers that carry the caller's credentials, forwarded to the core as is.
pub const CREDENTIAL_HEADERS: [&str; 2] = ["x-api-key", "authorization"];
/// Longest credential forwarded. Keys are 69 characters; a much longer one is
/// certainly not a key, and metadata that large would break the HTTP/2
/// connection to the core that every other caller shares.
pub const MAX_CREDENTIAL_BYTES: usize = 1024;
/// Sent instead of a credential that cannot be one: the core refuses it
/// with 401 like any unknown key.
pub const NOT_A_KEY: &str = "invalid";

/// A way to make gRPC calls to the core: a channel over the network, or the
/// core's own services in this process.
pub type CoreService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, CallError>;

/// A call that did not reach the core (a connection refused or lost). It
/// says what its cause says and keeps it as its source, where tonic looks
/// when it turns the failure into a `Status` (a refused connect is
/// UNAVAILABLE). A named type rather than `BoxError`: the client's bounds
/// hold for it without naming a lifetime.
#[derive(Debug)]
pub struct CallError(BoxError);

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Where the gateway reaches the core.
#[derive(Clone)]
pub enum CoreLink {
    /// A core elsewhere, over the network: `http://HOST:PORT`.
    Url(String),
    /// A core in this process (`emit serve`): its gRPC services called
    /// directly. The calls, metadata, layers and messages are those of the
    /// network path; only the socket and the HTTP/2 framing are skipped.
    InProcess(CoreService),
}

impl CoreLink {
    pub fn in_process<S>(service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Self::InProcess(BoxCloneSyncService::new(
            service.map_err(|error| CallError(error.into())),
        ))
    }
}

impl std::fmt::Display for CoreLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(url) => f.write_str(url),
            Self::InProcess(_) => f.write_str("in-process"),
        }
    }
}

impl std::fmt::Debug for CoreLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[derive(Clone)]
pub struct CoreClient {
    channels: Arc<[CoreService]>,
    next: Arc<AtomicUsize>,
    stream_queue: usize,
    metrics: Arc<GatewayMetrics>,
    /// The job streams WebSocket watchers share (not job state: a relay's
    /// buffers).
    job_feeds: Arc<JobFeeds>,
}

impl CoreClient {
    /// Calls over the network connect on first use. `stream_queue`:
    /// messages a WebSocket client may leave unread before it is
    /// disconnected as a slow consumer.
    pub fn new(link: &CoreLink, stream_queue: usize) -> Result<Self, tonic::transport::Error> {
        let channels = match link {
            CoreLink::Url(url) => {
                let endpoint = Endpoint::from_shared(url.clone())?
                    .tcp_nodelay(true)
                    .connect_timeout(std::time::Duration::from_secs(5));
                (0..CHANNELS)
                    .map(|_| {
                        BoxCloneSyncService::new(
                            endpoint
                                .connect_lazy()
                                .map_err(|error| CallError(error.into())),
                        )
                    })
                    .collect()
            }
            // No connection to spread over: every call runs on its caller's
            // task.
            CoreLink::InProcess(service) => Arc::from([service.clone()]),
        };
        Ok(Self {
            channels,
            next: Arc::new(AtomicUsize::new(0)),
            stream_queue,
            metrics: Arc::default(),
            job_feeds: Arc::new(JobFeeds::new(Self::ring_bounds(stream_queue))),
        })
    }

    /// The gateway's own metrics (not job state: counters of its traffic).
    pub fn metrics(&self) -> &Arc<GatewayMetrics> {
        &self.metrics
    }

    fn channel(&self) -> CoreService {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[index].clone()
    }

    pub fn jobs(&self) -> JobServiceClient<CoreService> {
        JobServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn events(&self) -> EventServiceClient<CoreService> {
        EventServiceClient::new(self.channel()).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// What a WebSocket client may leave unread before it is disconnected
    /// as a slow consumer.
    pub fn ring_bounds(stream_queue: usize) -> RingBounds {
        RingBounds {
            messages: stream_queue,
            bytes: MAX_UNREAD_BYTES,
        }
    }

    pub fn stream_bounds(&self) -> RingBounds {
        Self::ring_bounds(self.stream_queue)
    }

    pub fn job_feeds(&self) -> &Arc<JobFeeds> {
        &self.job_feeds
    }

    pub fn schedules(&self) -> ScheduleServiceClient<CoreService> {
        ScheduleServiceClient::new(self.channel()).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn admin(&self) -> AdminServiceClient<CoreService> {
        AdminServiceClient::new(self.channel())
    }

    pub fn health(&self) -> tonic_health::pb::health_client::HealthClient<CoreService> {
        tonic_health::pb::health_client::HealthClient::new(self.channel())
    }
}

/// Puts a credential into `request`'s metadata, or `NOT_A_KEY` when it is
/// too long or not representable there.
pub fn set_credential<T>(request: &mut tonic::Request<T>, name: &'static str, value: &str) {
    let value = Some(value)
        .filter(|value| value.len() <= MAX_CREDENTIAL_BYTES)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| tonic::metadata::MetadataValue::from_static(NOT_A_KEY));
    request.metadata_mut().insert(name, value);
}

/// Who is calling, as the core is to be told: the credentials the request
/// carries (its key headers, and the dashboard session from its cookie; the
/// core prefers a key). Handlers take it as an extractor and make each call
/// to the core on its behalf. No `Debug`: it holds secrets.
#[derive(Clone)]
pub struct Caller {
    credentials: Vec<(&'static str, String)>,
}

impl Caller {
    pub fn of(headers: &HeaderMap) -> Self {
        let mut credentials: Vec<(&'static str, String)> = CREDENTIAL_HEADERS
            .into_iter()
            .filter_map(|name| {
                let value = headers.get(name)?.to_str().ok()?;
                Some((name, value.to_owned()))
            })
            .collect();
        if let Some(session) = crate::session::token(headers) {
            credentials.push((SESSION_METADATA, session.to_owned()));
        }
        Self { credentials }
    }

    /// `message` as a call to the core on the caller's behalf, in the
    /// caller's trace.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        for (name, value) in &self.credentials {
            set_credential(&mut request, name, value);
        }
        crate::tracing_context::inject(&mut request);
        request
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core that cannot be reached is UNAVAILABLE (a 503 to the caller),
    /// as it was before calls were boxed: tonic still finds the refused
    /// connect behind `CallError`.
    #[tokio::test]
    async fn a_refused_connection_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let core = CoreClient::new(&CoreLink::Url(url), 16).unwrap();
        let status = core
            .health()
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    }
}
