//! The REST routes, one module per resource, merged once.

mod admin;
mod health;
mod jobs;
mod realtime;
mod workers;

use std::collections::HashMap;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query};
use axum::http::{Request, Uri};
use tower_http::trace::TraceLayer;

use crate::{ApiError, CoreClient, MAX_BODY_BYTES};

pub fn router(core: CoreClient) -> Router {
    Router::new()
        .merge(health::router())
        .merge(admin::router())
        .merge(jobs::router())
        .merge(workers::router())
        .merge(realtime::router())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Spans name the path only: query strings may carry `?token=`.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            tracing::debug_span!("request", method = %request.method(), path = request.uri().path())
        }))
        .with_state(core)
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
