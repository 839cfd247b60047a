//! The dashboard: its page and assets (compiled into the binary), and
//! signing in and out. The page itself talks to the same REST and
//! WebSocket API as any client, authenticated by its session cookie.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use emit_proto::v1 as pb;
use serde_json::{Value, json};

use crate::core_client::{Caller, set_credential};
use crate::error::required;
use crate::requests::{Body, SignInBody};
use crate::session;
use crate::{ApiError, CoreClient};

const INDEX: &str = include_str!("../../dashboard/index.html");
const SCRIPT: &str = include_str!("../../dashboard/app.js");
const STYLE: &str = include_str!("../../dashboard/app.css");

/// Only our own script and style run; the page is never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Router<CoreClient> {
    Router::new()
        .route("/", get(index))
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/app.css", get(style))
        .route(
            "/dashboard/api/session",
            get(get_session).post(sign_in).delete(sign_out),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// What the page learns of its session: who it is, until when, and the
/// CSRF token it must send with every change.
fn session_json(session: Option<pb::DashboardSession>, token: &str) -> Result<Value, ApiError> {
    let session = required(session, "session")?;
    Ok(json!({
        "admin": session.admin,
        "spaceId": (!session.space_id.is_empty()).then_some(session.space_id),
        "scopes": session.scopes,
        "expiresAt": crate::resources::Time(session.expires_at).text(),
        "csrfToken": session::csrf_token(token),
    }))
}

/// `POST /dashboard/api/session {"key": "..."}`: the key buys a session.
async fn sign_in(
    State(core): State<CoreClient>,
    headers: HeaderMap,
    Body(body): Body<SignInBody>,
) -> Result<Response, ApiError> {
    if !session::same_origin(&headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross-origin request refused",
        ));
    }
    let key = body
        .key
        .filter(|key| !key.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("key is required"))?;
    let mut request = tonic::Request::new(pb::StartDashboardSessionRequest {});
    set_credential(&mut request, "x-api-key", key.trim());
    let started = core
        .admin()
        .start_dashboard_session(request)
        .await?
        .into_inner();
    let max_age = started
        .session
        .as_ref()
        .and_then(|session| session.expires_at)
        .map_or(0, |expires| {
            expires.seconds - chrono::Utc::now().timestamp()
        });
    let cookie = session::set_cookie(&started.token, max_age, session::https(&headers));
    let body = session_json(started.session, &started.token)?;
    Ok((
        StatusCode::CREATED,
        [(header::SET_COOKIE, cookie)],
        Json(body),
    )
        .into_response())
}

/// `GET /dashboard/api/session`: the signed-in session, or 401.
async fn get_session(
    State(core): State<CoreClient>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = signed_in(&headers)?;
    let request = Caller::of(&headers).request(pb::GetDashboardSessionRequest {});
    let session = core
        .admin()
        .get_dashboard_session(request)
        .await?
        .into_inner()
        .session;
    Ok(Json(session_json(session, token)?))
}

/// `DELETE /dashboard/api/session` (with the CSRF token): signs out on
/// every gateway and core, and clears the cookie.
async fn sign_out(
    State(core): State<CoreClient>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    signed_in(&headers)?;
    let request = Caller::of(&headers).request(pb::EndDashboardSessionRequest {});
    core.admin().end_dashboard_session(request).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session::clear_cookie())],
    )
        .into_response())
}

fn signed_in(headers: &HeaderMap) -> Result<&str, ApiError> {
    session::token(headers).ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "not signed in"))
}
