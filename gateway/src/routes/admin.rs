//! Spaces and tokens (admin key).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use emit_proto::v1 as pb;
use serde_json::Value;

use crate::core_client::Caller;
use crate::error::required;
use crate::extract::JsonBody;
use crate::json::{self, Fields};
use crate::resources::{NewToken, Space, Token, WebhookSecret};
use crate::{ApiError, CoreClient};

pub fn router() -> Router<CoreClient> {
    Router::new()
        .route("/api/v1/spaces", get(list_spaces).post(create_space))
        .route(
            "/api/v1/spaces/{space_id}",
            get(get_space).patch(update_space),
        )
        .route(
            "/api/v1/spaces/{space_id}/public-token",
            post(rotate_public_token),
        )
        .route(
            "/api/v1/spaces/{space_id}/webhook-secret",
            post(rotate_webhook_secret).delete(delete_webhook_secret),
        )
        .route("/api/v1/spaces/{space_id}/pause", post(pause_space))
        .route("/api/v1/spaces/{space_id}/resume", post(resume_space))
        .route(
            "/api/v1/spaces/{space_id}/tokens",
            get(list_tokens).post(create_token),
        )
        .route(
            "/api/v1/spaces/{space_id}/tokens/{token_id}",
            delete(revoke_token),
        )
}

async fn create_space(
    State(core): State<CoreClient>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Space>), ApiError> {
    let fields = Fields::of(&body, "")?;
    let name = fields.string("name")?.unwrap_or_default();
    let request = caller.request(pb::CreateSpaceRequest { name });
    let space = core.admin().create_space(request).await?.into_inner().space;
    Ok((StatusCode::CREATED, Json(Space::required(space)?)))
}

/// `"retention": {"completed": 3600, "dead": 0, "killed": null}`: seconds per
/// finished status, 0 keeping jobs forever, null going back to the server's
/// age; a status left out stays as it is.
fn retention_change(value: &Value) -> Result<pb::RetentionChange, ApiError> {
    let fields = Fields::of(value, "retention")?;
    let age = |status: &str| -> Result<Option<pb::RetentionAge>, ApiError> {
        let age = match fields.raw(status) {
            None => return Ok(None),
            Some(Value::Null) => pb::retention_age::Age::ServerDefault(true),
            Some(_) => pb::retention_age::Age::Seconds(fields.u64(status)?.unwrap_or_default()),
        };
        Ok(Some(pb::RetentionAge { age: Some(age) }))
    };
    Ok(pb::RetentionChange {
        completed: age("completed")?,
        dead: age("dead")?,
        killed: age("killed")?,
    })
}

/// Space settings: `slack` (the reference's Slack notifications),
/// `anonymousProgressStreams`, `push`, `retention`, `concurrency`.
async fn update_space(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Space>, ApiError> {
    let fields = Fields::of(&body, "")?;
    // `"push": null` removes the push target; an object sets it.
    let remove_push = body.get("push").is_some_and(Value::is_null);
    let push = match fields.get("push") {
        Some(value) => {
            let push = Fields::of(value, "push")?;
            Some(pb::PushTarget {
                url: push.string("url")?.unwrap_or_default(),
                names: push.strings("names")?.unwrap_or_default(),
                headers: push.string_map("headers")?,
            })
        }
        None => None,
    };
    let retention = match fields.get("retention") {
        Some(value) => Some(retention_change(value)?),
        None => None,
    };
    // `"slack": null` or an empty URL turns Slack notifications off.
    let slack = match body.get("slack") {
        Some(Value::Null) => Some(pb::SlackSettings::default()),
        Some(value) => {
            let slack = Fields::of(value, "slack")?;
            Some(pb::SlackSettings {
                url: slack.string("url")?.unwrap_or_default(),
                events: slack.strings("events")?.unwrap_or_default(),
            })
        }
        None => None,
    };
    // `"concurrency": null` removes the space's limits.
    let concurrency = match body.get("concurrency") {
        Some(Value::Null) => Some(pb::ConcurrencyLimits::default()),
        Some(value) => Some(json::concurrency_limits(value)?),
        None => None,
    };
    let message = pb::UpdateSpaceRequest {
        space_id,
        anonymous_progress_streams: fields.bool("anonymousProgressStreams")?,
        push,
        remove_push,
        retention,
        slack,
        concurrency,
    };
    let request = caller.request(message);
    let space = core.admin().update_space(request).await?.into_inner().space;
    Ok(Json(Space::required(space)?))
}

/// A new public token for the space; the one before stops working.
async fn rotate_public_token(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
) -> Result<Json<Space>, ApiError> {
    let request = caller.request(pb::RotatePublicTokenRequest { space_id });
    let space = core
        .admin()
        .rotate_public_token(request)
        .await?
        .into_inner()
        .space;
    Ok(Json(Space::required(space)?))
}

/// Standard Webhooks signing for the space's callbacks: `{"secret": "whsec_..."}`.
async fn rotate_webhook_secret(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
) -> Result<(StatusCode, Json<WebhookSecret>), ApiError> {
    let request = caller.request(pb::RotateWebhookSecretRequest { space_id });
    let secret = core
        .admin()
        .rotate_webhook_secret(request)
        .await?
        .into_inner()
        .secret;
    Ok((StatusCode::CREATED, Json(WebhookSecret { secret })))
}

async fn delete_webhook_secret(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let request = caller.request(pb::DeleteWebhookSecretRequest { space_id });
    core.admin().delete_webhook_secret(request).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/spaces/:id/pause {"name"?}`: pauses dispatch of the space,
/// or of one job name in it.
async fn pause_space(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Space>, ApiError> {
    let name = Fields::of(&body, "")?.string("name")?;
    let request = caller.request(pb::PauseSpaceRequest { space_id, name });
    let space = core.admin().pause_space(request).await?.into_inner().space;
    Ok(Json(Space::required(space)?))
}

/// `POST /api/v1/spaces/:id/resume {"name"?}`: lifts that pause. (The two
/// calls differ only in their messages, which the proto keeps apart.)
async fn resume_space(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Space>, ApiError> {
    let name = Fields::of(&body, "")?.string("name")?;
    let request = caller.request(pb::ResumeSpaceRequest { space_id, name });
    let space = core.admin().resume_space(request).await?.into_inner().space;
    Ok(Json(Space::required(space)?))
}

async fn list_spaces(
    State(core): State<CoreClient>,
    caller: Caller,
) -> Result<Json<Vec<Space>>, ApiError> {
    let request = caller.request(pb::ListSpacesRequest {});
    let spaces = core.admin().list_spaces(request).await?.into_inner().spaces;
    Ok(Json(spaces.into_iter().map(Space::from).collect()))
}

async fn get_space(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
) -> Result<Json<Space>, ApiError> {
    let request = caller.request(pb::GetSpaceRequest { space_id });
    let space = core.admin().get_space(request).await?.into_inner().space;
    Ok(Json(Space::required(space)?))
}

async fn create_token(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    let fields = Fields::of(&body, "")?;
    let request = pb::CreateTokenRequest {
        space_id,
        name: fields.string("name")?.unwrap_or_default(),
        scopes: fields.strings("scopes")?.unwrap_or_default(),
    };
    let response = core
        .admin()
        .create_token(caller.request(request))
        .await?
        .into_inner();
    let token = NewToken {
        token: required(response.token, "token")?.into(),
        key: response.key,
    };
    Ok((StatusCode::CREATED, Json(token)))
}

async fn list_tokens(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
) -> Result<Json<Vec<Token>>, ApiError> {
    let request = caller.request(pb::ListTokensRequest { space_id });
    let tokens = core.admin().list_tokens(request).await?.into_inner().tokens;
    Ok(Json(tokens.into_iter().map(Token::from).collect()))
}

async fn revoke_token(
    State(core): State<CoreClient>,
    caller: Caller,
    Path((space_id, token_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let request = caller.request(pb::RevokeTokenRequest { space_id, token_id });
    core.admin().revoke_token(request).await?;
    Ok(StatusCode::NO_CONTENT)
}
