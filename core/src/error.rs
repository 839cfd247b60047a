//! The one error type of the core. Every failure a caller can see is one of
//! these variants; `code()` is the single table mapping them to gRPC codes
//! (the gateway maps gRPC codes to HTTP statuses in its own single place).

use std::time::Duration;

use crate::auth::Scope;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: 400 / INVALID_ARGUMENT.
    #[error("{0}")]
    Invalid(String),
    /// No key, or a key we do not know: 401 / UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// 403 / PERMISSION_DENIED with the reference service's exact wording.
    #[error("Missing required scope: {0}")]
    MissingScope(Scope),
    /// Authenticated, but not for this space or operation: 403 / PERMISSION_DENIED.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404 / NOT_FOUND. Jobs of other spaces are reported as not found too, so
    /// a key never learns that they exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The job is in a state where the call makes no sense: 409 / FAILED_PRECONDITION.
    #[error("{0}")]
    Conflict(String),
    /// The caller holds a stale attempt or lease: 409 / ABORTED.
    #[error("{0}")]
    Stale(String),
    /// 429 / RESOURCE_EXHAUSTED, with a `retry-after` hint.
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration },
    /// A watcher fell too far behind its stream and was disconnected:
    /// RESOURCE_EXHAUSTED (a WebSocket close with code 1013).
    #[error("{0}")]
    Overrun(String),
    /// Shutting down or overloaded: 503 / UNAVAILABLE.
    #[error("service unavailable")]
    Unavailable,
    /// The server cannot start as configured (a port taken, a database
    /// unreachable, a weak admin key); the message names what and where.
    #[error("{0}")]
    Startup(String),
    /// Anything else. The cause is logged, never sent to the caller.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(cause.into())
    }

    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Invalid(_) => tonic::Code::InvalidArgument,
            Self::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Self::MissingScope(_) | Self::Forbidden(_) => tonic::Code::PermissionDenied,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::Conflict(_) => tonic::Code::FailedPrecondition,
            Self::Stale(_) => tonic::Code::Aborted,
            Self::RateLimited { .. } | Self::Overrun(_) => tonic::Code::ResourceExhausted,
            Self::Unavailable | Self::Startup(_) => tonic::Code::Unavailable,
            Self::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Self::internal(error)
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::internal(error)
    }
}

pub use emit_proto::wire::RETRY_AFTER_METADATA;

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        if let Error::Internal(cause) = &error {
            tracing::error!(error = %cause, "internal error");
        }
        let mut status = tonic::Status::new(error.code(), error.to_string());
        if let Error::RateLimited { retry_after } = error {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = seconds.to_string().parse() {
                status.metadata_mut().insert(RETRY_AFTER_METADATA, value);
            }
        }
        status
    }
}
