use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, event_types};
use crate::lifecycle::iso_millis;

#[tokio::test]
async fn an_unacked_delivery_returns_to_pending_without_using_an_attempt() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let id = app
        .create_job(&space, json!({ "name": "a", "timeoutSeconds": 1 }))
        .await;
    let stale = app.poll_one(&space).await;
    let job = app.wait_for_status(&space, &id, "pending").await;
    assert_eq!(job["attemptNumber"], 0);
    assert_eq!(
        event_types(&job),
        ["created", "delivered", "delivery_timeout"]
    );

    let fresh = app.poll_one(&space).await;
    assert_eq!(fresh["attemptNumber"], 0);
    let (status, _) = app
        .worker_call(&space, &id, "ack", json!({ "leaseId": stale["leaseId"] }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "the stale delivery is fenced");
}

#[tokio::test]
async fn a_silent_running_job_times_out_as_a_failure_until_dead() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let id = app
        .create_job(
            &space,
            json!({ "name": "a", "timeoutSeconds": 1, "maxRetries": 1 }),
        )
        .await;
    // Each attempt times out unreported; the first comes back for another.
    for _ in 0..2 {
        app.poll_until_one(&space).await;
        app.worker_call(&space, &id, "ack", json!({})).await;
    }
    let job = app.wait_for_status(&space, &id, "dead").await;
    assert_eq!(job["attemptNumber"], 1);
    assert_eq!(job["error"], "timed out");
    let types = event_types(&job);
    assert_eq!(
        types,
        [
            "created",
            "delivered",
            "acked",
            "retried",
            "delivered",
            "acked",
            "dead"
        ]
    );
    assert_eq!(
        job["events"][3]["data"],
        json!({ "error": "timed out", "attemptNumber": 1 })
    );
}

#[tokio::test]
async fn keepalive_and_progress_extend_the_execution_deadline() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let id = app
        .create_job(&space, json!({ "name": "a", "timeoutSeconds": 1 }))
        .await;
    app.poll_one(&space).await;
    app.worker_call(&space, &id, "ack", json!({})).await;
    for step in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let action = if step % 2 == 0 {
            "keepalive"
        } else {
            "progress"
        };
        let body = if action == "progress" {
            json!({ "percent": step * 10 })
        } else {
            json!({})
        };
        let (status, job) = app.worker_call(&space, &id, action, body).await;
        assert_eq!(
            (status, job["status"].as_str()),
            (StatusCode::OK, Some("running")),
            "after {action}"
        );
    }
    let (status, _) = app
        .worker_call(&space, &id, "complete", json!({ "result": 1 }))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn scheduled_jobs_wait_for_their_time() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 1500;
    let id = app
        .create_job(
            &space,
            json!({ "name": "later", "scheduledFor": iso_millis(at) }),
        )
        .await;
    let job = app.job(&space, &id).await;
    assert_eq!(job["status"], "scheduled");
    assert_eq!(job["scheduledFor"], iso_millis(at));
    assert!(app.poll(&space, json!({})).await.is_empty());

    app.wait_for_status(&space, &id, "pending").await;
    let polled_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(polled_at >= at);
    assert_eq!(app.poll_one(&space).await["id"], id.as_str());
    let job = app.job(&space, &id).await;
    assert_eq!(event_types(&job), ["created", "ready", "delivered"]);
    assert_eq!(job["events"][1]["previousStatus"], "scheduled");

    let past = app
        .create_job(
            &space,
            json!({ "name": "past", "scheduledFor": "2020-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(app.job(&space, &past).await["status"], "pending");
}
