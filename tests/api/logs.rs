use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn log_lines_are_appended_and_read_by_cursor_level_and_text() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let lines = json!({ "lines": [
        { "level": "info", "message": "starting download" },
        { "level": "warn", "message": "slow mirror" },
        { "level": "error", "message": "download failed: 100% packet loss" },
        { "message": "retrying download" },
    ] });
    let (status, appended) = app.worker_call(&space, &job, "logs", lines).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(appended, json!({ "count": 4, "lastSeq": 4 }));

    let (status, all) = app
        .get(&format!("/api/v1/jobs/{job}/logs"), &space.producer)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["lines"].as_array().unwrap().len(), 4);
    assert_eq!(all["lines"][3]["level"], "info");
    let (_, after) = app
        .get(&format!("/api/v1/jobs/{job}/logs?after=2"), &space.producer)
        .await;
    assert_eq!(after["lines"][0]["seq"], 3);
    let (_, errors) = app
        .get(
            &format!("/api/v1/jobs/{job}/logs?level=error"),
            &space.producer,
        )
        .await;
    assert_eq!(errors["lines"].as_array().unwrap().len(), 1);
    let (_, found) = app
        .get(
            &format!("/api/v1/jobs/{job}/logs?q=DOWNLOAD"),
            &space.producer,
        )
        .await;
    assert_eq!(found["lines"].as_array().unwrap().len(), 3);
    let (_, literal) = app
        .get(
            &format!("/api/v1/jobs/{job}/logs?q=100%25"),
            &space.producer,
        )
        .await;
    assert_eq!(literal["lines"].as_array().unwrap().len(), 1);

    let (status, error) = app
        .worker_call(
            &space,
            &job,
            "logs",
            json!({ "lines": [{ "level": "loud", "message": "x" }] }),
        )
        .await;
    assert_eq!(
        (status, error),
        (
            StatusCode::BAD_REQUEST,
            json!({ "error": "lines[0].level must be one of debug, info, warn, error" })
        )
    );
    let (status, _) = app
        .worker_call(&space, &job, "logs", json!({ "lines": "x" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .get(&format!("/api/v1/jobs/{job}/logs"), &space.public_token)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
