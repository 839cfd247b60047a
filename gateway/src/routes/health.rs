use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::CoreClient;

pub fn router() -> Router<CoreClient> {
    Router::new().route("/healthz", get(healthz))
}

/// Ready when the core answers its health check as serving.
async fn healthz(State(core): State<CoreClient>) -> (StatusCode, Json<Value>) {
    let check = core
        .health()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    match check.map(|response| response.into_inner().status()) {
        Ok(ServingStatus::Serving) => (StatusCode::OK, Json(json!({ "status": "ok" }))),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "error": "core is not serving" })),
        ),
    }
}
