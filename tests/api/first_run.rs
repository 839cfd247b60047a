//! What a newcomer meets first: JSON errors for unknown routes and methods,
//! the dashboard page at the root, the reference docs' own stream snippets, the live-feed
//! scope, and WebSocket closes that end cleanly.

use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{TestApp, next_close, next_json};

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors_and_the_root_the_dashboard() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .request("GET", "/api/v1/nothing-here?token=secret", None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({ "error": "no route for GET /api/v1/nothing-here" }));

    let (status, body) = app.request("DELETE", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        body,
        json!({ "error": "method DELETE is not allowed on /healthz" })
    );

    let root = app.http.get(format!("{}/", app.base)).send().await.unwrap();
    assert_eq!(root.status(), StatusCode::OK);
    assert!(
        root.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = root.text().await.unwrap();
    assert!(page.contains("/dashboard/app.js") && page.contains("/api/v1"));
}

/// space-stream.txt's Python snippet prints `event['jobName']` and
/// `event['status']` for every message, `connected` included.
#[tokio::test]
async fn every_space_stream_message_carries_job_name_and_status() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut stream = app.watch_space(&space.id, &space.producer, "").await;
    let connected = next_json(&mut stream).await;
    assert_eq!(connected["type"], "connected");
    assert!(connected.get("jobName").is_some(), "{connected}");
    assert!(connected.get("status").is_some(), "{connected}");
    app.create_job(&space, json!({ "name": "send-email" })).await;
    let created = next_json(&mut stream).await;
    assert_eq!(created["jobName"], "send-email");
    assert_eq!(created["status"], "pending");
}

/// websockets.txt's "Dashboard live feed" makes a `jobs:read:space` token:
/// it opens both streams with full data, and reads nothing over REST.
#[tokio::test]
async fn a_live_feed_token_watches_streams_in_full_but_reads_no_rest() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let feed = app.token(&space.id, &["jobs:read:space"]).await;
    let job = app
        .create_job(&space, json!({ "name": "report", "payload": {} }))
        .await;

    let mut stream = app.watch_space(&space.id, &feed, "").await;
    assert_eq!(next_json(&mut stream).await["type"], "connected");
    let mut job_stream = app.watch_job(&job, &feed).await;
    assert_eq!(next_json(&mut job_stream).await["type"], "init");

    app.poll_one(&space).await;
    app.worker_call(&space, &job, "ack", Value::Null).await;
    let (status, _) = app
        .worker_call(&space, &job, "complete", json!({ "result": { "rows": 3 } }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let completed = loop {
        let event = next_json(&mut job_stream).await;
        if event["type"] == "completed" {
            break event;
        }
    };
    assert_eq!(completed["data"], json!({ "rows": 3 }), "full data");

    let (status, body) = app
        .get(&format!("/api/v1/spaces/{}/jobs", space.id), &feed)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "Missing required scope: jobs:read");
}

#[tokio::test]
async fn a_close_started_by_the_client_is_answered_with_its_code() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    for code in [CloseCode::Normal, CloseCode::Library(4000)] {
        let mut stream = app.watch_job(&job, &space.producer).await;
        assert_eq!(next_json(&mut stream).await["type"], "init");
        stream
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: "done".into(),
            })))
            .await
            .unwrap();
        let answer = next_close(&mut stream).await;
        assert_eq!(
            answer.map(|frame| frame.code),
            Some(code),
            "the server echoes the close"
        );
    }
}
