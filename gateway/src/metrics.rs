//! The gateway's own Prometheus metrics (HTTP requests, WebSocket
//! subscribers), served at `/metrics` after the core's (see
//! `emit_core::metrics`). Routes are labelled by their pattern, never the
//! path, so the label set is bounded.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

pub struct GatewayMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    seconds: Family<RouteLabels, Histogram>,
    subscribers: Gauge,
    job_feeds: Gauge,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("emit"),
            requests: Family::default(),
            seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 18))
            }),
            subscribers: Gauge::default(),
            job_feeds: Gauge::default(),
        };
        let registry = &mut metrics.registry;
        registry.register(
            "http_requests",
            "HTTP requests, by method, route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_seconds",
            "HTTP request time to the response headers",
            metrics.seconds.clone(),
        );
        registry.register(
            "websocket_subscribers",
            "Open WebSocket streams (job and space)",
            metrics.subscribers.clone(),
        );
        registry.register(
            "websocket_job_feeds",
            "Core streams of job events shared by the WebSocket watchers of a job",
            metrics.job_feeds.clone(),
        );
        metrics
    }
}

impl GatewayMetrics {
    /// `route` is the matched pattern (`-` when none matched).
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        // Methods are any token a client sends: only the standard ones get a
        // label of their own.
        const STANDARD: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
        let method = if STANDARD.contains(&method) {
            method
        } else {
            "other"
        };
        let (method, route) = (method.to_owned(), route.to_owned());
        self.seconds
            .get_or_create(&RouteLabels {
                method: method.clone(),
                route: route.clone(),
            })
            .observe(seconds);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
    }

    /// A WebSocket subscriber is counted until the guard drops.
    pub fn subscribed(self: &Arc<Self>) -> Subscriber {
        self.subscribers.inc();
        Subscriber(self.subscribers.clone())
    }

    /// A shared job feed is counted until the guard drops.
    pub fn job_feed(&self) -> FeedGuard {
        self.job_feeds.inc();
        FeedGuard(self.job_feeds.clone())
    }

    /// The core's metrics text followed by these, closed.
    pub fn render_after(&self, core: &str) -> String {
        let mut text = core.to_owned();
        let encoded = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        if encoded.is_err() {
            tracing::warn!("the gateway's metrics could not be encoded");
        }
        text
    }
}

/// Keeps the subscriber gauge up while a WebSocket stream lives.
pub struct Subscriber(Gauge);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Keeps the job feed gauge up while a shared feed lives.
pub struct FeedGuard(Gauge);

impl Drop for FeedGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
