use crate::resources::Health;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use emit_proto::v1 as pb;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::core_client::Caller;
use crate::{ApiError, CoreClient};

pub fn router() -> Router<CoreClient> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

/// Prometheus metrics: the core's (through the gateway's core channel)
/// and the gateway's own, as OpenMetrics text. They name spaces and job
/// names, so the admin key is required (Prometheus: `authorization:
/// {credentials: KEY}`).
async fn metrics(
    State(core): State<CoreClient>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let request = caller.request(pb::GetMetricsRequest {});
    let text = core.admin().get_metrics(request).await?.into_inner().text;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        core.metrics().render_after(&text),
    ))
}

/// Ready when the core answers its health check as serving.
async fn healthz(State(core): State<CoreClient>) -> (StatusCode, Json<Health>) {
    let check = core
        .health()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    match check.map(|response| response.into_inner().status()) {
        Ok(ServingStatus::Serving) => (
            StatusCode::OK,
            Json(Health {
                status: "ok",
                error: None,
            }),
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unavailable",
                error: Some("core is not serving"),
            }),
        ),
    }
}
