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

/// The dashboard pages back through a long log: `before` gives the newest
/// lines older than a sequence number, still in order, and `nextBefore`
/// continues from there; filters apply on each page.
#[tokio::test]
async fn older_log_lines_are_paged_back_by_a_before_cursor() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let lines: Vec<_> = (1..=25)
        .map(|i| json!({ "level": if i % 5 == 0 { "error" } else { "info" }, "message": format!("line {i}") }))
        .collect();
    let (status, _) = app
        .worker_call(&space, &job, "logs", json!({ "lines": lines }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let logs = format!("/api/v1/jobs/{job}/logs");
    let page = |query: &str| {
        let path = format!("{logs}?{query}");
        let app = &app;
        let key = space.producer.clone();
        async move { app.get(&path, &key).await }
    };
    let seqs = |page: &serde_json::Value| -> Vec<u64> {
        page["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|line| line["seq"].as_u64().unwrap())
            .collect()
    };

    let (status, newest) = page("before=9007199254740991&limit=10").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seqs(&newest), (16..=25).collect::<Vec<_>>());
    assert_eq!(newest["nextBefore"], 16);
    let (_, older) = page("before=16&limit=10").await;
    assert_eq!(seqs(&older), (6..=15).collect::<Vec<_>>());
    let (_, oldest) = page("before=6&limit=10").await;
    assert_eq!(seqs(&oldest), (1..=5).collect::<Vec<_>>());
    let (_, errors) = page("before=25&level=error&limit=2").await;
    assert_eq!(seqs(&errors), vec![15, 20]);
    // Without `before` the page is unchanged: no `nextBefore`.
    let (_, forward) = page("limit=3").await;
    assert_eq!(seqs(&forward), vec![1, 2, 3]);
    assert!(forward.get("nextBefore").is_none(), "{forward}");
    let (status, bad) = page("before=-1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(bad, json!({ "error": "before must be a non-negative integer" }));
}
