//! The single mapping from the core's gRPC status codes to HTTP statuses and
//! `{"error": "..."}` bodies. Messages of client errors pass through; server
//! errors get a generic message (the core logged the cause).

use axum::Json;
use axum::extract::ws::{CloseFrame, close_code};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tonic::Code;

use crate::resources::ErrorBody;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<HeaderValue>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    #[cfg(test)]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A reply the core should never send: answered 500, the cause logged.
    pub fn core_fault(what: &'static str) -> Self {
        tracing::error!(what, "a core reply breaks the gateway's contract");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

/// A field the core always sets in its reply. Its absence is a fault between
/// core and gateway: answered 500, never 200 with an empty default.
pub fn required<T>(field: Option<T>, name: &'static str) -> Result<T, ApiError> {
    field.ok_or_else(|| ApiError::core_fault(name))
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let http = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if http.is_server_error() {
            tracing::warn!(code = ?status.code(), message = status.message(), "core call failed");
            match http {
                StatusCode::SERVICE_UNAVAILABLE => "service unavailable, retry later".to_owned(),
                StatusCode::GATEWAY_TIMEOUT => "the core did not answer in time".to_owned(),
                _ => "internal error".to_owned(),
            }
        } else {
            status.message().to_owned()
        };
        let retry_after = status
            .metadata()
            .get(emit_proto::wire::RETRY_AFTER_METADATA)
            .and_then(|value| HeaderValue::from_bytes(value.as_bytes()).ok());
        Self {
            status: http,
            message,
            retry_after,
        }
    }
}

/// How a WebSocket is closed when the core ends the stream it relays: the
/// WebSocket twin of the status table above.
pub fn close_frame_for(status: &tonic::Status) -> CloseFrame {
    let (code, reason) = match status.code() {
        // The watcher fell behind: reconnecting (with `since`) is the cure.
        Code::ResourceExhausted => (close_code::AGAIN, status.message()),
        Code::Unavailable => (close_code::RESTART, "server restarting; reconnect"),
        Code::Unauthenticated | Code::PermissionDenied => (close_code::POLICY, status.message()),
        _ => {
            tracing::warn!(code = ?status.code(), message = status.message(), "core stream failed");
            (close_code::ERROR, "internal error")
        }
    };
    CloseFrame {
        code,
        reason: truncate(reason, MAX_CLOSE_REASON_BYTES).into(),
    }
}

/// RFC 6455 leaves 123 bytes for a close reason.
const MAX_CLOSE_REASON_BYTES: usize = 123;

fn truncate(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(retry_after) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_reply_field_is_a_server_error_not_an_empty_answer() {
        assert_eq!(required(Some(7), "job").unwrap(), 7);
        let response = required::<u8>(None, "job").unwrap_err().into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
