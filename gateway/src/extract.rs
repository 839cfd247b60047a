//! Request extractors whose failures are `{"error": ...}` responses too.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::Value;

use crate::ApiError;

/// A JSON body; an empty body reads as `null` so optional bodies may be left out.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection {
                    BytesRejection::FailedToBufferBody(_)
                        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
                    {
                        ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("request body exceeds {} bytes", crate::MAX_BODY_BYTES),
                        )
                    }
                    other => ApiError::new(other.status(), other.body_text()),
                })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(Value::Null));
        }
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))
    }
}
