//! Spaces and tokens (admin key).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use emit_proto::v1 as pb;

use crate::core_client::Caller;
use crate::error::required;
use crate::requests::{Body, NameBody, Obj, Present, SpaceSettingsBody, TokenBody};
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
    Body(body): Body<NameBody>,
) -> Result<(StatusCode, Json<Space>), ApiError> {
    let name = body.name.unwrap_or_default();
    let request = caller.request(pb::CreateSpaceRequest { name });
    let space = core.admin().create_space(request).await?.into_inner().space;
    Ok((StatusCode::CREATED, Json(Space::required(space)?)))
}

/// Space settings: `slack` (the reference's Slack notifications),
/// `anonymousProgressStreams`, `push`, `retention`, `concurrency`.
async fn update_space(
    State(core): State<CoreClient>,
    caller: Caller,
    Path(space_id): Path<String>,
    Body(body): Body<SpaceSettingsBody>,
) -> Result<Json<Space>, ApiError> {
    // `"push": null` removes the push target; an object sets it.
    let (push, remove_push) = match body.push {
        None => (None, false),
        Some(Present::Null) => (None, true),
        Some(Present::Value(Obj(push))) => {
            let push = pb::PushTarget {
                url: push.url.unwrap_or_default(),
                names: push.names.unwrap_or_default().0,
                headers: push.headers.unwrap_or_default().0,
            };
            (Some(push), false)
        }
    };
    // `"slack": null` or an empty URL turns Slack notifications off.
    let slack = body.slack.map(|slack| match slack {
        Present::Null => pb::SlackSettings::default(),
        Present::Value(Obj(slack)) => pb::SlackSettings {
            url: slack.url.unwrap_or_default(),
            events: slack.events.unwrap_or_default().0,
        },
    });
    // `"concurrency": null` removes the space's limits.
    let concurrency = match body.concurrency {
        None => None,
        Some(Present::Null) => Some(pb::ConcurrencyLimits::default()),
        Some(Present::Value(Obj(limits))) => Some(limits.try_into()?),
    };
    let message = pb::UpdateSpaceRequest {
        space_id,
        anonymous_progress_streams: body.anonymous_progress_streams,
        push,
        remove_push,
        retention: body.retention.map(|Obj(retention)| retention.into()),
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
    Body(NameBody { name }): Body<NameBody>,
) -> Result<Json<Space>, ApiError> {
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
    Body(NameBody { name }): Body<NameBody>,
) -> Result<Json<Space>, ApiError> {
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
    Body(body): Body<TokenBody>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    let request = pb::CreateTokenRequest {
        space_id,
        name: body.name.unwrap_or_default(),
        scopes: body.scopes.unwrap_or_default().0,
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
