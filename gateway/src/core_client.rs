//! Channels to the core. HTTP/2 multiplexes calls on one connection, but one
//! connection is served by one task on each side; a few channels used in turn
//! spread the load over cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::HeaderMap;
use emit_proto::v1::admin_service_client::AdminServiceClient;
use emit_proto::v1::event_service_client::EventServiceClient;
use emit_proto::v1::job_service_client::JobServiceClient;
use tonic::transport::{Channel, Endpoint};

const CHANNELS: usize = 4;
/// Messages carry job payloads in bulk; must match the core's limit.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Headers that carry the caller's credentials, forwarded to the core as is.
const CREDENTIAL_HEADERS: [&str; 2] = ["x-api-key", "authorization"];

#[derive(Clone)]
pub struct CoreClient {
    channels: Arc<[Channel]>,
    next: Arc<AtomicUsize>,
    stream_queue: usize,
}

impl CoreClient {
    /// `stream_queue`: messages a WebSocket client may leave unread before
    /// it is disconnected as a slow consumer.
    pub fn connect_lazy(url: &str, stream_queue: usize) -> Result<Self, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(5));
        let channels = (0..CHANNELS).map(|_| endpoint.connect_lazy()).collect();
        Ok(Self {
            channels,
            next: Arc::new(AtomicUsize::new(0)),
            stream_queue,
        })
    }

    fn channel(&self) -> Channel {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[index].clone()
    }

    pub fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn events(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel()).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn stream_queue(&self) -> usize {
        self.stream_queue
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel())
    }

    pub fn health(&self) -> tonic_health::pb::health_client::HealthClient<Channel> {
        tonic_health::pb::health_client::HealthClient::new(self.channel())
    }
}

/// A gRPC request carrying the caller's credentials.
pub fn with_credentials<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for name in CREDENTIAL_HEADERS {
        if let Some(value) = headers.get(name).and_then(|value| value.to_str().ok())
            && let Ok(value) = value.parse()
        {
            request.metadata_mut().insert(name, value);
        }
    }
    request
}
