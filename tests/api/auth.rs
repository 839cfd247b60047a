use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn keys_are_read_from_either_header_and_unknown_keys_get_401() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let url = format!("{}/api/v1/spaces/{}/jobs", app.base, space.id);
    let bearer = app
        .http
        .get(&url)
        .bearer_auth(&space.producer)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);

    let (status, error) = app
        .request(
            "GET",
            &format!("/api/v1/spaces/{}/jobs", space.id),
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, error),
        (
            StatusCode::UNAUTHORIZED,
            json!({ "error": "missing API key" })
        )
    );
    let (status, error) = app
        .get(&format!("/api/v1/spaces/{}/jobs", space.id), "emit_nope")
        .await;
    assert_eq!(
        (status, error),
        (
            StatusCode::UNAUTHORIZED,
            json!({ "error": "invalid API key" })
        )
    );
}

#[tokio::test]
async fn missing_scopes_get_the_documented_403() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let producer_only = app.token(&space.id, &["jobs:create"]).await;
    let (status, error) = app
        .get(&format!("/api/v1/spaces/{}/jobs", space.id), &producer_only)
        .await;
    assert_eq!(
        (status, error),
        (
            StatusCode::FORBIDDEN,
            json!({ "error": "Missing required scope: jobs:read" })
        )
    );

    let (status, error) = app
        .post(
            &format!("/api/v1/spaces/{}/jobs", space.id),
            &space.worker,
            json!({ "name": "a" }),
        )
        .await;
    assert_eq!(
        (status, error),
        (
            StatusCode::FORBIDDEN,
            json!({ "error": "Missing required scope: jobs:create" })
        )
    );

    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let (status, error) = app.worker_call(&space, &job, "kill", json!({})).await;
    assert_eq!(
        (status, error),
        (
            StatusCode::FORBIDDEN,
            json!({ "error": "Missing required scope: jobs:kill" })
        )
    );
    let (status, error) = app
        .post(
            &format!("/api/v1/jobs/{job}/ack"),
            &producer_only,
            json!({}),
        )
        .await;
    assert_eq!(
        (status, error),
        (
            StatusCode::FORBIDDEN,
            json!({ "error": "Missing required scope: jobs:ack" })
        )
    );
}

#[tokio::test]
async fn the_public_token_reads_progress_and_nothing_else() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let (status, progress) = app
        .get(&format!("/api/v1/jobs/{job}/progress"), &space.public_token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(progress["status"], "pending");
    let (status, _) = app
        .get(&format!("/api/v1/jobs/{job}"), &space.public_token)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .post(
            &format!("/api/v1/spaces/{}/jobs", space.id),
            &space.public_token,
            json!({ "name": "a" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn other_spaces_are_forbidden_and_their_jobs_do_not_exist() {
    let app = TestApp::spawn().await;
    let mine = app.create_space().await;
    let theirs = app.create_space().await;
    let their_job = app.create_job(&theirs, json!({ "name": "secret" })).await;

    let (status, error) = app
        .get(
            &format!("/api/v1/spaces/{}/jobs", theirs.id),
            &mine.producer,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    let (status, _) = app
        .post(
            &format!("/api/v1/spaces/{}/jobs/poll", theirs.id),
            &mine.worker,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, error) = app
        .get(&format!("/api/v1/jobs/{their_job}"), &mine.producer)
        .await;
    assert_eq!(
        (status, error),
        (StatusCode::NOT_FOUND, json!({ "error": "job not found" }))
    );
    let (status, _) = app.worker_call(&mine, &their_job, "claim", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .get(
            &format!("/api/v1/jobs/{their_job}/progress"),
            &mine.public_token,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn keys_over_their_rate_get_429_with_retry_after_and_other_keys_do_not() {
    let app = TestApp::spawn_with_rate_limit(Some(5)).await;
    let space = app.create_space().await;
    let url = format!("{}/api/v1/spaces/{}/jobs", app.base, space.id);
    let mut limited = None;
    for _ in 0..20 {
        let response = app
            .http
            .get(&url)
            .header("x-api-key", &space.producer)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the sixth call within a second is limited");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body, json!({ "error": "rate limit exceeded" }));
    let (status, _) = app
        .get(&format!("/api/v1/spaces/{}/jobs", space.id), &space.worker)
        .await;
    assert_eq!(status, StatusCode::OK);
}
