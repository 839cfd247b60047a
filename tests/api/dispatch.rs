//! Long polling (`waitSeconds`): an empty poll waits and answers as soon as a
//! job becomes ready.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestApp;

/// Waits until `count` long polls wait in the core (its metrics tell).
async fn polls_waiting(app: &TestApp, count: f64) {
    emit_testkit::metric_reaches(&app.http, &app.base, "emit_long_polls_waiting", count).await;
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_matching_job_is_ready() {
    let app = Arc::new(TestApp::spawn().await);
    let space = Arc::new(app.create_space().await);
    let started = Instant::now();
    let waiting = {
        let (app, space) = (app.clone(), space.clone());
        tokio::spawn(async move {
            app.poll(&space, json!({ "waitSeconds": 20, "name": "wanted" }))
                .await
        })
    };
    polls_waiting(&app, 1.0).await;
    // A job of another name does not end the wait: the poll answers with
    // the wanted job alone, and the other stays pending.
    let other = app.create_job(&space, json!({ "name": "other" })).await;
    let wanted = app.create_job(&space, json!({ "name": "wanted" })).await;
    // The waiting poll was leased the job in the create's own commit.
    assert_eq!(app.job(&space, &wanted).await["status"], "delivered");
    let jobs = waiting.await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], wanted.as_str());
    assert_eq!(app.job(&space, &other).await["status"], "pending");
    polls_waiting(&app, 0.0).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered on the job, not at the deadline"
    );
}

#[tokio::test]
async fn a_long_poll_wakes_on_a_retry_and_ends_empty_at_its_deadline() {
    let app = Arc::new(TestApp::spawn().await);
    let space = Arc::new(app.create_space().await);
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    app.poll_one(&space).await;
    app.worker_call(&space, &job, "ack", json!({})).await;
    let waiting = {
        let (app, space) = (app.clone(), space.clone());
        tokio::spawn(async move { app.poll(&space, json!({ "waitSeconds": 20 })).await })
    };
    polls_waiting(&app, 1.0).await;
    app.worker_call(&space, &job, "fail", json!({ "error": "again" }))
        .await;
    let jobs = waiting.await.unwrap();
    assert_eq!(jobs[0]["id"], job.as_str());
    assert_eq!(jobs[0]["attemptNumber"], 1);

    let started = Instant::now();
    let jobs = app.poll(&space, json!({ "waitSeconds": 1 })).await;
    assert!(jobs.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(1), "waited");

    let (status, body) = app
        .post(
            &format!("/api/v1/spaces/{}/jobs/poll", space.id),
            &space.worker,
            json!({ "waitSeconds": 31 }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "waitSeconds must be between 0 and 30");
}
