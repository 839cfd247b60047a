//! Dashboard sessions over real HTTP and WebSockets, on both backends:
//! signing in, the cookie's attributes, CSRF and origin checks, read-only
//! sessions of space keys, sign-out, revocation, and sessions that outlive
//! a restart and work through another gateway.

use reqwest::StatusCode;
use reqwest::header::{COOKIE, ORIGIN, SET_COOKIE};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{ADMIN_KEY, TestApp, next_json};

/// A signed-in browser: its cookie header and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

async fn sign_in(app: &TestApp, key: &str) -> (StatusCode, Option<Browser>, Value) {
    let response = app
        .http
        .post(format!("{}/dashboard/api/session", app.base))
        .json(&json!({ "key": key }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let set_cookie = response
        .headers()
        .get(SET_COOKIE)
        .map(|value| value.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap();
    let browser = set_cookie.map(|set_cookie| {
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
            assert!(set_cookie.contains(attribute), "{set_cookie}");
        }
        Browser {
            cookie: set_cookie.split(';').next().unwrap().to_owned(),
            csrf: body["csrfToken"].as_str().unwrap_or_default().to_owned(),
        }
    });
    (status, browser, body)
}

/// A request riding on the browser's cookie; `csrf` adds the token.
async fn call(
    app: &TestApp,
    base: &str,
    browser: &Browser,
    method: &str,
    path: &str,
    body: Option<Value>,
    csrf: bool,
) -> (StatusCode, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app
        .http
        .request(method, format!("{base}{path}"))
        .header(COOKIE, &browser.cookie);
    if csrf {
        request = request.header("x-csrf-token", &browser.csrf);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, value)
}

#[tokio::test]
async fn the_admin_key_signs_in_and_changes_need_the_csrf_token_and_this_origin() {
    let app = TestApp::spawn().await;
    let base = app.base.clone();
    let (status, browser, body) = sign_in(&app, ADMIN_KEY).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let browser = browser.expect("a session cookie");
    assert_eq!(body["admin"], true);
    assert!(body["expiresAt"].is_string(), "{body}");
    assert!(!browser.cookie.contains(ADMIN_KEY));

    let (status, session) = call(&app, &base, &browser, "GET", "/dashboard/api/session", None, false).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["csrfToken"], browser.csrf.as_str());

    // Reads need the cookie only; changes need the CSRF token too.
    let (status, _) = call(&app, &base, &browser, "GET", "/api/v1/spaces", None, false).await;
    assert_eq!(status, StatusCode::OK);
    let create = Some(json!({ "name": "from-the-dashboard" }));
    let (status, refused) = call(&app, &base, &browser, "POST", "/api/v1/spaces", create.clone(), false).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(refused, json!({ "error": "missing or invalid CSRF token" }));
    let forged = Browser {
        cookie: browser.cookie.clone(),
        csrf: "0".repeat(64),
    };
    let (status, _) = call(&app, &base, &forged, "POST", "/api/v1/spaces", create.clone(), true).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, space) = call(&app, &base, &browser, "POST", "/api/v1/spaces", create.clone(), true).await;
    assert_eq!(status, StatusCode::CREATED, "{space}");

    // Another origin is refused even with the right token.
    let response = app
        .http
        .post(format!("{base}/api/v1/spaces"))
        .header(COOKIE, &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
        .header(ORIGIN, "https://evil.example")
        .json(&json!({ "name": "cross-site" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let (_, spaces) = app.get("/api/v1/spaces", ADMIN_KEY).await;
    assert_eq!(spaces.as_array().unwrap().len(), 1, "{spaces}");

    // WebSockets opened with the cookie: this origin only.
    let space_id = space["id"].as_str().unwrap();
    let ws_url = format!(
        "{}/api/v1/realtime/spaces/{space_id}",
        base.replace("http://", "ws://")
    );
    let host = base.trim_start_matches("http://").to_owned();
    let mut request = ws_url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(COOKIE, browser.cookie.parse().unwrap());
    request
        .headers_mut()
        .insert(ORIGIN, "https://evil.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(response)) if response.status() == StatusCode::FORBIDDEN),
        "{refused:?}"
    );
    let mut request = ws_url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(COOKIE, browser.cookie.parse().unwrap());
    request
        .headers_mut()
        .insert(ORIGIN, format!("http://{host}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let connected = next_json(&mut socket).await;
    assert_eq!(connected["type"], "connected", "{connected}");

    // Sign out: the session ends, the cookie is cleared.
    let (status, _) = call(&app, &base, &browser, "DELETE", "/dashboard/api/session", None, false).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "sign-out is a change: it needs the token");
    let response = app
        .http
        .delete(format!("{base}/dashboard/api/session"))
        .header(COOKIE, &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(
        response.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    for path in ["/dashboard/api/session", "/api/v1/spaces"] {
        let (status, body) = call(&app, &base, &browser, "GET", path, None, false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    let (status, body) = call(&app, &base, &browser, "GET", "/api/v1/spaces", None, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({ "error": "session expired or signed out" }));
}

#[tokio::test]
async fn a_space_key_with_jobs_read_gets_a_read_only_session_of_its_space() {
    let app = TestApp::spawn().await;
    let base = app.base.clone();
    let space = app.create_space().await;
    let other = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "x" })).await;

    // A key without jobs:read may not sign in; a wrong key neither.
    let (status, browser, body) = sign_in(&app, &space.worker.replace("emit_", "emit_0")).await;
    assert_eq!((status, browser.is_none()), (StatusCode::UNAUTHORIZED, true), "{body}");
    let progress_only = app.token(&space.id, &["jobs:read:progress"]).await;
    let (status, _, body) = sign_in(&app, &progress_only).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, body) = sign_in(&app, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({ "error": "key is required" }));

    // The producer key holds jobs:kill, but its session only reads.
    let (status, browser, body) = sign_in(&app, &space.producer).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let browser = browser.unwrap();
    assert_eq!(body["admin"], false);
    assert_eq!(body["spaceId"], space.id.as_str());
    assert_eq!(body["scopes"], json!(["jobs:read"]));
    let (status, _) = call(&app, &base, &browser, "GET", &format!("/api/v1/jobs/{job}"), None, false).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&app, &base, &browser, "POST", &format!("/api/v1/jobs/{job}/kill"), None, true).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let other_jobs = format!("/api/v1/spaces/{}/jobs", other.id);
    let (status, _) = call(&app, &base, &browser, "GET", &other_jobs, None, false).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Revoking the key ends its sessions.
    let (_, tokens) = app
        .get(&format!("/api/v1/spaces/{}/tokens", space.id), ADMIN_KEY)
        .await;
    for token in tokens.as_array().unwrap() {
        let path = format!("/api/v1/spaces/{}/tokens/{}", space.id, token["id"].as_str().unwrap());
        app.request("DELETE", &path, Some(ADMIN_KEY), None).await;
    }
    let (status, _) = call(&app, &base, &browser, "GET", &format!("/api/v1/jobs/{job}"), None, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sessions_survive_a_restart_and_work_through_another_gateway() {
    let mut app = TestApp::spawn().await;
    let (_, browser, _) = sign_in(&app, ADMIN_KEY).await;
    let browser = browser.unwrap();
    app.restart().await;
    let base = app.base.clone();
    let (status, body) = call(&app, &base, &browser, "GET", "/api/v1/spaces", None, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A second gateway in front of the same core knows the session too:
    // gateways hold no session state.
    let second = emit_gateway::start(emit_gateway::GatewayConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        core: emit_gateway::CoreLink::Url(app.grpc_url.clone()),
        stream_queue: emit_gateway::GatewayConfig::DEFAULT_STREAM_QUEUE,
        timeouts: emit_gateway::ConnectionTimeouts::default(),
    })
    .await
    .unwrap();
    let second_base = format!("http://{}", second.http_addr);
    let (status, body) = call(&app, &second_base, &browser, "GET", "/dashboard/api/session", None, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["csrfToken"], browser.csrf.as_str());
    second.stop().await;
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_strict_policy() {
    let app = TestApp::spawn().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let response = app.http.get(format!("{}{path}", app.base)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    // No session: the session endpoint says so in the API's error shape.
    let (status, body) = app.request("GET", "/dashboard/api/session", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({ "error": "not signed in" }));
    let response = app
        .http
        .post(format!("{}/dashboard/api/session", app.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().starts_with("invalid JSON body"), "{body}");
}
