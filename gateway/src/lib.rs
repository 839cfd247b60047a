//! emit's REST/WebSocket gateway: translates the emit.run HTTP API onto the
//! core's gRPC calls. It holds no job state; authentication and every
//! decision happen in the core, which receives the caller's key as metadata.

/// Gives a type a fixed JSON Schema, written inline where it is used (the
/// value types of request and response bodies).
macro_rules! fixed_schema {
    ($type:ty, $name:literal, $schema:tt) => {
        impl schemars::JsonSchema for $type {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($schema)
            }
        }
    };
}

mod auth_failures;
mod core_client;
mod error;
mod fanout;
mod feeds;
pub mod metrics;
mod openapi;
mod requests;
mod resources;
mod routes;
mod serve;
mod session;
mod tracing_context;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use core_client::{CoreClient, CoreLink, CoreService};
pub use error::ApiError;
pub use serve::ConnectionTimeouts;

/// Largest request body accepted (a bulk create of many large payloads).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub http_addr: SocketAddr,
    pub core: CoreLink,
    /// Messages a WebSocket client may leave unread before it is
    /// disconnected as a slow consumer.
    pub stream_queue: usize,
    pub timeouts: ConnectionTimeouts,
}

impl GatewayConfig {
    pub const DEFAULT_STREAM_QUEUE: usize = 4096;
}

pub fn app(core: CoreClient) -> Router {
    routes::router(core)
}

pub struct RunningGateway {
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl RunningGateway {
    /// Stops accepting connections and lets requests in flight finish.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(Duration::from_secs(30), self.server)
            .await
            .is_err()
        {
            tracing::warn!("gateway did not drain within 30s");
        }
    }
}

/// Binds the HTTP listener and starts serving on it.
pub async fn start(
    config: GatewayConfig,
) -> Result<RunningGateway, Box<dyn std::error::Error + Send + Sync>> {
    bind(config.http_addr).await?.serve(&config)
}

/// Binds the HTTP listener without serving yet, so `emit serve` can find a
/// taken port before the core starts (and generates its admin key).
pub async fn bind(
    http_addr: SocketAddr,
) -> Result<BoundGateway, Box<dyn std::error::Error + Send + Sync>> {
    let listener = TcpListener::bind(http_addr)
        .await
        .map_err(|error| format!("cannot listen for HTTP on {http_addr}: {error}"))?;
    Ok(BoundGateway { listener })
}

pub struct BoundGateway {
    listener: TcpListener,
}

impl BoundGateway {
    pub fn serve(
        self,
        config: &GatewayConfig,
    ) -> Result<RunningGateway, Box<dyn std::error::Error + Send + Sync>> {
        let core = CoreClient::new(&config.core, config.stream_queue)
            .map_err(|error| format!("invalid core URL {}: {error}", config.core))?;
        let http_addr = self.listener.local_addr()?;
        let (shutdown, stop) = watch::channel(false);
        let server = tokio::spawn(serve::run(self.listener, app(core), config.timeouts, stop));
        tracing::info!(%http_addr, core = %config.core, "gateway listening");
        Ok(RunningGateway {
            http_addr,
            shutdown,
            server,
        })
    }
}
