//! Dispatch priority: a ready job of a higher priority is handed out before
//! a backlog of lower ones, on every transport; equal priorities keep the
//! order jobs became ready in; a job without one behaves as before.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, event_types};

#[tokio::test]
async fn a_later_high_priority_job_is_delivered_before_a_backlog() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let path = format!("/api/v1/spaces/{}/jobs", space.id);
    let backlog: Vec<Value> = (0..200)
        .map(|i| json!({ "name": "bulk", "payload": { "i": i } }))
        .collect();
    let (status, _) = app.post(&path, &space.producer, Value::Array(backlog)).await;
    assert_eq!(status, StatusCode::CREATED);

    // REST poll.
    let urgent = app
        .create_job(&space, json!({ "name": "urgent", "priority": 10 }))
        .await;
    let polled = app.poll_one(&space).await;
    assert_eq!(polled["id"], urgent.as_str());
    assert_eq!(polled["priority"], 10);

    // gRPC poll.
    let urgent = app
        .create_job(&space, json!({ "name": "urgent", "priority": 1 }))
        .await;
    let polled = app.grpc_poll(&space, 1).await;
    assert_eq!(polled[0].id, urgent);
    assert_eq!(polled[0].priority, 1);

    // A negative priority waits behind the whole backlog; equal priorities
    // go oldest first.
    let late = app
        .create_job(&space, json!({ "name": "whenever", "priority": -1 }))
        .await;
    let first = app
        .poll(&space, json!({ "count": 50 }))
        .await
        .iter()
        .map(|job| job["payload"]["i"].as_i64().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(first, (0..50).collect::<Vec<_>>());
    let mut rest = Vec::new();
    loop {
        let jobs = app.poll(&space, json!({ "count": 50 })).await;
        if jobs.is_empty() {
            break;
        }
        rest.extend(jobs);
    }
    assert_eq!(rest.len(), 151);
    assert_eq!(rest.last().unwrap()["id"], late.as_str());
}

#[tokio::test]
async fn priority_shows_on_the_job_in_listings_and_in_its_created_event() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let plain = app.create_job(&space, json!({ "name": "plain" })).await;
    let urgent = app
        .create_job(&space, json!({ "name": "urgent", "priority": 7 }))
        .await;

    let job = app.job(&space, &urgent).await;
    assert_eq!(job["priority"], 7);
    assert_eq!(job["events"][0]["type"], "created");
    assert_eq!(job["events"][0]["data"], json!({ "priority": 7 }));
    let plain_job = app.job(&space, &plain).await;
    assert_eq!(plain_job["priority"], 0);
    assert_eq!(event_types(&plain_job), vec!["created"]);
    assert!(plain_job["events"][0].get("data").is_none_or(Value::is_null));

    // The list shows `priority` only for jobs that have one, so a client
    // that never sets one sees the reference's items.
    let (_, listed) = app
        .get(&format!("/api/v1/spaces/{}/jobs", space.id), &space.producer)
        .await;
    let by_id = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|job| job["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_id(&urgent)["priority"], 7);
    assert!(by_id(&plain).get("priority").is_none());
}
