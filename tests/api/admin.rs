use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{ADMIN_KEY, TestApp};

#[tokio::test]
async fn spaces_are_created_listed_and_fetched_with_a_public_token() {
    let app = TestApp::spawn().await;
    let (status, space) = app
        .post("/api/v1/spaces", ADMIN_KEY, json!({ "name": "production" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(space["name"], "production");
    assert!(space["publicToken"].as_str().unwrap().starts_with("emit_"));
    assert!(space["createdAt"].as_str().unwrap().ends_with('Z'));
    let id = space["id"].as_str().unwrap();

    let (status, listed) = app.get("/api/v1/spaces", ADMIN_KEY).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let (status, fetched) = app.get(&format!("/api/v1/spaces/{id}"), ADMIN_KEY).await;
    assert_eq!((status, &fetched), (StatusCode::OK, &space));

    let (status, missing) = app
        .get("/api/v1/spaces/01ARZ3NDEKTSV4RRFFQ69G5FAV", ADMIN_KEY)
        .await;
    assert_eq!(
        (status, missing),
        (StatusCode::NOT_FOUND, json!({ "error": "space not found" }))
    );
    let (status, invalid) = app
        .post("/api/v1/spaces", ADMIN_KEY, json!({ "name": "" }))
        .await;
    assert_eq!(
        (status, invalid),
        (
            StatusCode::BAD_REQUEST,
            json!({ "error": "name is required" })
        )
    );
}

#[tokio::test]
async fn tokens_show_their_key_once_and_accept_shorthands() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let path = format!("/api/v1/spaces/{}/tokens", space.id);
    let (status, token) = app
        .post(
            &path,
            ADMIN_KEY,
            json!({ "name": "my-worker", "scopes": ["jobs:worker"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(token["scopes"], json!(["jobs:worker"]));
    assert!(token["key"].as_str().unwrap().starts_with("emit_"));

    let (status, tokens) = app.get(&path, ADMIN_KEY).await;
    assert_eq!(status, StatusCode::OK);
    let tokens = tokens.as_array().unwrap();
    // The public token, the fixture's two, and this one.
    assert_eq!(tokens.len(), 4);
    assert!(tokens.iter().all(|token| token.get("key").is_none()));
    assert!(
        tokens
            .iter()
            .any(|token| token["scopes"] == json!(["jobs:read:progress"]))
    );

    let (status, error) = app
        .post(
            &path,
            ADMIN_KEY,
            json!({ "name": "x", "scopes": ["jobs:all"] }),
        )
        .await;
    assert_eq!(
        (status, error),
        (
            StatusCode::BAD_REQUEST,
            json!({ "error": "unknown scope: jobs:all" })
        )
    );
    let (status, _) = app
        .post(
            "/api/v1/spaces/01ARZ3NDEKTSV4RRFFQ69G5FAV/tokens",
            ADMIN_KEY,
            json!({ "name": "x", "scopes": ["jobs:read"] }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn revoked_keys_are_refused_at_once() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let path = format!("/api/v1/spaces/{}/tokens", space.id);
    let (_, token) = app
        .post(
            &path,
            ADMIN_KEY,
            json!({ "name": "r", "scopes": ["jobs:read"] }),
        )
        .await;
    let key = token["key"].as_str().unwrap();
    let list = format!("/api/v1/spaces/{}/jobs", space.id);
    assert_eq!(app.get(&list, key).await.0, StatusCode::OK);

    let revoke = format!("{path}/{}", token["id"].as_str().unwrap());
    let (status, _) = app.request("DELETE", &revoke, Some(ADMIN_KEY), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, error) = app.get(&list, key).await;
    assert_eq!(
        (status, error),
        (
            StatusCode::UNAUTHORIZED,
            json!({ "error": "invalid API key" })
        )
    );
    let (status, _) = app.request("DELETE", &revoke, Some(ADMIN_KEY), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn admin_calls_need_the_admin_key() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (status, error) = app
        .post("/api/v1/spaces", &space.producer, json!({ "name": "x" }))
        .await;
    assert_eq!(
        (status, error),
        (
            StatusCode::FORBIDDEN,
            json!({ "error": "this operation requires the admin key" })
        )
    );
    let (status, _) = app.request("GET", "/api/v1/spaces", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
