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

#[tokio::test]
async fn a_revoked_public_token_leaves_the_space_without_one_until_rotated() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let progress = format!("/api/v1/jobs/{job}/progress");
    let space_path = format!("/api/v1/spaces/{}", space.id);
    assert_eq!(app.get(&progress, &space.public_token).await.0, StatusCode::OK);

    // Rotating revokes the old key (its stream ends) and shows the new one.
    let mut watcher = app.watch_job(&job, &space.public_token).await;
    let (status, rotated) = app
        .post(&format!("{space_path}/public-token"), ADMIN_KEY, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_key = rotated["publicToken"].as_str().unwrap().to_owned();
    assert_ne!(new_key, space.public_token);
    assert_eq!(app.get(&space_path, ADMIN_KEY).await.1["publicToken"], new_key.as_str());
    assert_eq!(
        app.get(&progress, &space.public_token).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.get(&progress, &new_key).await.0, StatusCode::OK);
    let close = crate::helpers::next_close(&mut watcher).await.expect("closed");
    assert_eq!(u16::from(close.code), 1008);

    // Revoking it like any token: the space no longer shows a dead key.
    let (_, tokens) = app.get(&format!("{space_path}/tokens"), ADMIN_KEY).await;
    let public = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|token| token["scopes"] == json!(["jobs:read:progress"]))
        .expect("the public token is listed");
    let (status, _) = app
        .request(
            "DELETE",
            &format!("{space_path}/tokens/{}", public["id"].as_str().unwrap()),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&space_path, ADMIN_KEY).await.1["publicToken"], json!(null));
    let (status, again) = app
        .post(&format!("{space_path}/public-token"), ADMIN_KEY, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let newest = again["publicToken"].as_str().unwrap();
    assert_eq!(app.get(&progress, newest).await.0, StatusCode::OK);

    let (status, _) = app
        .post(
            "/api/v1/spaces/01ARZ3NDEKTSV4RRFFQ69G5FAV/public-token",
            ADMIN_KEY,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
