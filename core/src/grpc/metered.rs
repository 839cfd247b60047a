//! A tower layer around every gRPC request: a span (`grpc request`) whose
//! parent is the caller's W3C trace context (`traceparent` metadata, as the
//! gateway sends it), and metrics: requests counted by method and status
//! code, timed to their response headers (for streams: to the stream's
//! start). The code is read from the headers, where tonic puts it for every
//! refusal (trailers-only responses); a response that starts normally
//! counts as OK.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::{CoreMetrics, GrpcLabels, GrpcMethod};

#[derive(Clone)]
pub struct MeteredLayer(pub Arc<CoreMetrics>);

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<CoreMetrics>,
}

impl<S, B, R> Service<http::Request<B>> for Metered<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let span = tracing::info_span!("grpc request", method = %method);
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&Headers(request.headers()))
        });
        let _ = span.set_parent(parent);
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = response.await?;
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|code| code.to_str().ok())
                    .unwrap_or("0")
                    .to_owned();
                // Paths nobody serves are answered UNIMPLEMENTED and counted
                // under one label, so callers cannot grow the label set.
                let method = if code == "12" {
                    "unknown".to_owned()
                } else {
                    method
                };
                metrics
                    .grpc_seconds
                    .get_or_create(&GrpcMethod {
                        method: method.clone(),
                    })
                    .observe(started.elapsed().as_secs_f64());
                metrics
                    .grpc_requests
                    .get_or_create(&GrpcLabels { method, code })
                    .inc();
                Ok(response)
            }
            .instrument(span),
        )
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}
