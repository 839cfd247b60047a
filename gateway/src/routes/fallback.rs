//! What answers when no route does: `{"error": ...}` for unknown paths and
//! methods, like every other route.

use axum::http::{Method, StatusCode, Uri};

use crate::ApiError;

/// Names the path only: a query string may carry `?token=`.
pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}
