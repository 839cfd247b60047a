//! The REST routes, one module per resource, merged once.

mod admin;
mod fallback;
mod health;
mod jobs;
mod realtime;
mod workers;

use std::collections::HashMap;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request};
use axum::http::Uri;
use axum::middleware::{self, Next};
use axum::response::Response;

use crate::auth_failures::{self, AuthFailures};
use crate::{ApiError, CoreClient, MAX_BODY_BYTES};

pub fn router(core: CoreClient) -> Router {
    Router::new()
        .merge(health::router())
        .merge(admin::router())
        .merge(jobs::router())
        .merge(workers::router())
        .merge(realtime::router())
        .merge(fallback::router())
        .fallback(fallback::no_route)
        .method_not_allowed_fallback(fallback::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            AuthFailures::default(),
            auth_failures::limit,
        ))
        .layer(middleware::from_fn(log_request))
        .with_state(core)
}

/// One line per request: method, route, path, status, latency. Never the
/// query string: it may carry `?token=`.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|route| route.as_str().to_owned());
    let response = next.run(request).await;
    tracing::info!(
        target: "emit::http",
        %method,
        route = route.as_deref().unwrap_or("-"),
        %path,
        status = response.status().as_u16(),
        latency_ms = format_args!("{:.2}", started.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
    response
}

/// Query parameters, with malformed query strings reported as JSON errors.
fn query_params(uri: &Uri) -> Result<HashMap<String, String>, ApiError> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|Query(params)| params)
        .map_err(|error| ApiError::bad_request(format!("invalid query string: {error}")))
}

fn integer_param(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    params
        .get(name)
        .filter(|value| !value.is_empty())
        .map(|value| {
            value.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("{name} must be a non-negative integer"))
            })
        })
        .transpose()
}
