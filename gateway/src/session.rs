//! Dashboard sessions as the browser holds them: an HttpOnly, SameSite=Strict
//! cookie carrying the session token, and a CSRF token derived from it.
//!
//! The session itself lives in the core's database (so it survives restarts
//! and works on every gateway); the gateway only moves the token from the
//! cookie into the core's metadata and checks the browser-facing rules:
//! every state-changing request that rides on the cookie must carry the
//! CSRF token and come from this origin, and a WebSocket opened with the
//! cookie must come from this origin.
//!
//! The CSRF token is SHA-256 of a fixed label and the session token. A page
//! of another origin can neither read the cookie nor our responses, so it
//! cannot produce the token; the gateway checks it without any state.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ApiError;

pub const COOKIE: &str = "emit_session";
/// The header a dashboard page sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The session token in the request's cookie, if any.
pub fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The CSRF token that goes with a session token.
pub fn csrf_token(session: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"emit dashboard csrf\0")
        .chain_update(session.as_bytes())
        .finalize();
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The cookie that holds `session` for `max_age_seconds`; `Secure` when the
/// browser reached us over HTTPS (through a proxy that says so).
pub fn set_cookie(session: &str, max_age_seconds: i64, https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age_seconds.max(0)
    ))
    .unwrap_or_else(|_| clear_cookie())
}

pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("emit_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether the browser reached us over HTTPS, as a proxy in front reports.
pub fn https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// Whether the request carries a key of its own: then the cookie plays no
/// part (the core prefers a key), and neither do the browser rules.
fn presents_key(headers: &HeaderMap) -> bool {
    headers.contains_key("x-api-key") || headers.contains_key(header::AUTHORIZATION)
}

/// Whether `Origin`, when the browser sent one, names this host. Browsers
/// send it on every cross-origin request and on every WebSocket handshake.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    matches!((origin_host, host), (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host))
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"))
}

/// Applies the browser rules to requests that ride on the session cookie.
pub async fn guard(request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let Some(session) = token(headers).filter(|_| !presents_key(headers)) {
        let safe = matches!(*request.method(), Method::GET | Method::HEAD);
        if !same_origin(headers) {
            return ApiError::new(StatusCode::FORBIDDEN, "cross-origin request refused")
                .into_response();
        }
        if !safe && !is_websocket(headers) {
            let expected = csrf_token(session);
            let presented = headers
                .get(CSRF_HEADER)
                .map(HeaderValue::as_bytes)
                .unwrap_or_default();
            if !bool::from(presented.ct_eq(expected.as_bytes())) {
                return ApiError::new(StatusCode::FORBIDDEN, "missing or invalid CSRF token")
                    .into_response();
            }
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn the_session_is_read_from_any_cookie_header() {
        let found = headers(&[("cookie", "a=1"), ("cookie", "b=2; emit_session=abc ; c=3")]);
        assert_eq!(token(&found), Some("abc"));
        assert_eq!(token(&headers(&[("cookie", "emit_session=")])), None);
        assert_eq!(token(&headers(&[("cookie", "xemit_session=abc")])), None);
    }

    #[test]
    fn origin_must_name_the_host_when_sent() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "null")
        ])));
    }

    #[test]
    fn csrf_tokens_differ_per_session() {
        assert_ne!(csrf_token("a"), csrf_token("b"));
        assert_eq!(csrf_token("a").len(), 64);
    }
}
