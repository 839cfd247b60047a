use serde_json::json;

use crate::helpers::TestApp;
use crate::lifecycle::chrono_in;

#[tokio::test]
async fn jobs_in_every_state_survive_a_restart_and_their_timers_keep_running() {
    let mut app = TestApp::spawn().await;
    let space = app.create_space().await;
    let scheduled = app
        .create_job(
            &space,
            json!({ "name": "scheduled", "scheduledFor": chrono_in(3600) }),
        )
        .await;
    let pending = app.create_job(&space, json!({ "name": "pending" })).await;
    let delivered = app
        .create_job(&space, json!({ "name": "delivered", "timeoutSeconds": 1 }))
        .await;
    let running = app.create_job(&space, json!({ "name": "running" })).await;
    let completed = app.create_job(&space, json!({ "name": "completed" })).await;
    let dead = app
        .create_job(&space, json!({ "name": "dead", "maxRetries": 0 }))
        .await;
    let killed = app.create_job(&space, json!({ "name": "killed" })).await;

    for (name, id) in [
        ("running", &running),
        ("completed", &completed),
        ("dead", &dead),
    ] {
        app.poll(&space, json!({ "name": name })).await;
        app.worker_call(&space, id, "ack", json!({})).await;
    }
    app.worker_call(&space, &completed, "progress", json!({ "percent": 90 }))
        .await;
    app.worker_call(
        &space,
        &completed,
        "complete",
        json!({ "result": { "n": 1 } }),
    )
    .await;
    app.worker_call(&space, &dead, "fail", json!({ "error": "bad" }))
        .await;
    app.post(
        &format!("/api/v1/jobs/{killed}/kill"),
        &space.producer,
        json!({}),
    )
    .await;
    app.poll(&space, json!({ "name": "delivered" })).await;

    let before: Vec<_> = read_jobs(
        &app,
        &space,
        &[&scheduled, &pending, &running, &completed, &dead, &killed],
    )
    .await;
    app.restart().await;
    let after: Vec<_> = read_jobs(
        &app,
        &space,
        &[&scheduled, &pending, &running, &completed, &dead, &killed],
    )
    .await;
    assert_eq!(before, after, "jobs read the same after a restart");
    let statuses: Vec<&str> = after
        .iter()
        .map(|job| job["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "scheduled",
            "pending",
            "running",
            "completed",
            "dead",
            "killed"
        ]
    );

    // The delivery deadline set before the restart still fires.
    let job = app.wait_for_status(&space, &delivered, "pending").await;
    assert_eq!(
        job["events"].as_array().unwrap().last().unwrap()["type"],
        "delivery_timeout"
    );
    // And the running job can still be finished by its worker.
    let (status, _) = app
        .worker_call(&space, &running, "complete", json!({}))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
}

async fn read_jobs(
    app: &TestApp,
    space: &crate::helpers::Space,
    ids: &[&String],
) -> Vec<serde_json::Value> {
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(app.job(space, id).await);
    }
    jobs
}
