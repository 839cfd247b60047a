//! The REST routes, one module per resource, merged once.

mod admin;
mod dashboard;
mod fallback;
mod health;
mod jobs;
mod realtime;
mod schedules;
mod workers;

use std::collections::HashMap;

use std::time::Instant;

use tracing::Instrument;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::auth_failures::{self, AuthFailures};
use crate::{ApiError, CoreClient, MAX_BODY_BYTES};

pub fn router(core: CoreClient) -> Router {
    Router::new()
        .merge(health::router())
        .merge(crate::openapi::router())
        .merge(dashboard::router())
        .merge(admin::router())
        .merge(jobs::router())
        .merge(schedules::router())
        .merge(workers::router())
        .merge(realtime::router())
        .fallback(fallback::no_route)
        .method_not_allowed_fallback(fallback::method_not_allowed)
        .layer(middleware::from_fn(crate::session::guard))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            AuthFailures::default(),
            auth_failures::limit,
        ))
        .layer(middleware::from_fn(refuse_oversized_heads))
        .layer(middleware::from_fn_with_state(core.clone(), log_request))
        .with_state(core)
}

/// Longest request target (path and query) accepted.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes (names and values) accepted in one request.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

async fn refuse_oversized_heads(request: Request, next: Next) -> Response {
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if uri_bytes > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("the request target exceeds {MAX_URI_BYTES} bytes"),
        )
        .into_response();
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request headers exceed {MAX_HEADER_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

/// One line per request: method, route, path, status, latency (never the
/// query string: it may carry `?token=`); and the request metrics.
async fn log_request(State(core): State<CoreClient>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|route| route.as_str().to_owned());
    let span = tracing::info_span!(
        "http request",
        method = %method,
        route = route.as_deref().unwrap_or("-"),
    );
    crate::tracing_context::follow_caller(&span, request.headers());
    let response = next.run(request).instrument(span).await;
    tracing::info!(
        target: "emit::http",
        %method,
        route = route.as_deref().unwrap_or("-"),
        %path,
        status = response.status().as_u16(),
        latency_ms = format_args!("{:.2}", started.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
    core.metrics().request(
        method.as_str(),
        route.as_deref().unwrap_or("-"),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
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
