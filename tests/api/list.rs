use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::TestApp;

/// The names of a listing's jobs, in its order.
fn names(listing: &Value) -> Vec<&str> {
    listing
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn jobs_are_listed_newest_first_with_filters_and_paging() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let path = format!("/api/v1/spaces/{}/jobs", space.id);
    let (status, empty) = app.get(&path, &space.producer).await;
    assert_eq!((status, empty), (StatusCode::OK, json!([])));

    let jobs: Vec<Value> = (0..5).map(|i| json!({ "name": format!("j{i}") })).collect();
    app.post(&path, &space.producer, Value::Array(jobs)).await;
    let delivered = app.poll_one(&space).await;
    assert_eq!(delivered["name"], "j0");

    let (_, all) = app.get(&path, &space.producer).await;
    assert_eq!(names(&all), ["j4", "j3", "j2", "j1", "j0"]);
    let item = &all[4];
    for field in [
        "id",
        "spaceId",
        "name",
        "payload",
        "status",
        "maxRetries",
        "attemptNumber",
        "timeoutSeconds",
        "deliveredAt",
        "startedAt",
        "completedAt",
        "result",
        "createdAt",
        "updatedAt",
    ] {
        assert!(item.get(field).is_some(), "list items carry {field}");
    }

    let (_, delivered) = app
        .get(&format!("{path}?status=delivered"), &space.producer)
        .await;
    assert_eq!(delivered.as_array().unwrap().len(), 1);
    let (_, page) = app
        .get(&format!("{path}?limit=2&offset=1"), &space.producer)
        .await;
    assert_eq!(names(&page), ["j3", "j2"]);
    // A page across statuses: every status's jobs merge in id order.
    let (_, page) = app
        .get(&format!("{path}?limit=2&offset=3"), &space.producer)
        .await;
    assert_eq!(names(&page), ["j1", "j0"]);

    let (status, error) = app.get(&format!("{path}?limit=101"), &space.producer).await;
    assert_eq!(
        (status, error),
        (
            StatusCode::BAD_REQUEST,
            json!({ "error": "limit must be between 1 and 100" })
        )
    );
    let (status, _) = app
        .get(&format!("{path}?status=sleeping"), &space.producer)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app.get(&format!("{path}?offset=-1"), &space.producer).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// A listing of every status merges the statuses by id: an old job in a
/// status that is read first still comes after a newer job in another.
#[tokio::test]
async fn jobs_of_every_status_merge_newest_first() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let path = format!("/api/v1/spaces/{}/jobs", space.id);
    let later = crate::lifecycle::chrono_in(3600);
    app.create_job(&space, json!({ "name": "old", "scheduledFor": later }))
        .await;
    app.create_job(&space, json!({ "name": "new" })).await;

    let (_, all) = app.get(&path, &space.producer).await;
    assert_eq!(names(&all), ["new", "old"]);
    let (_, first) = app.get(&format!("{path}?limit=1"), &space.producer).await;
    assert_eq!(names(&first), ["new"]);
    let (_, second) = app
        .get(&format!("{path}?limit=1&offset=1"), &space.producer)
        .await;
    assert_eq!(names(&second), ["old"]);
}

/// `include=progress` adds each job's latest progress to the list (the
/// dashboard shows it); without it the items are the reference's.
#[tokio::test]
async fn listed_jobs_carry_their_progress_only_when_asked() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    app.poll_one(&space).await;
    app.worker_call(&space, &job, "ack", json!({})).await;
    let (status, _) = app
        .worker_call(&space, &job, "progress", json!({ "percent": 30, "message": "a third" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let path = format!("/api/v1/spaces/{}/jobs", space.id);
    let (_, plain) = app.get(&path, &space.producer).await;
    assert!(plain[0].get("progress").is_none(), "{plain}");
    let (_, with) = app
        .get(&format!("{path}?include=progress"), &space.producer)
        .await;
    assert_eq!(with[0]["progress"]["percent"], 30);
    assert_eq!(with[0]["progress"]["message"], "a third");
}
