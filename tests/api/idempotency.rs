//! Idempotency keys on create: a repeated create returns the original job
//! and makes nothing; the same key with another job is 409; bulk creates
//! say per job which were replays; keys expire after their window; and
//! concurrent creates with the same keys, through several cores where the
//! backend has them, make exactly one job per key.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp};

async fn create(app: &TestApp, base: &str, space_id: &str, key: &str, body: Value) -> (StatusCode, Option<String>, Value) {
    let response = app
        .http
        .post(format!("{base}/api/v1/spaces/{space_id}/jobs"))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|value| value.to_str().unwrap().to_owned());
    (status, replayed, response.json().await.unwrap())
}

async fn total(app: &TestApp, space_id: &str, key: &str) -> u64 {
    let response = app
        .http
        .get(format!("{}/api/v1/spaces/{space_id}/jobs?limit=1", app.base))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    response.headers()["x-total-count"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_repeated_create_returns_the_original_job_and_a_different_one_is_refused() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = json!({ "name": "charge", "payload": { "amount": 42 }, "idempotencyKey": "order-17" });
    let (status, replayed, first) = create(&app, &app.base, &space.id, &space.producer, job.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(replayed, None);
    assert_eq!(first.as_object().unwrap().len(), 2, "a first create answers {{id, spaceId}}: {first}");
    let (status, replayed, again) = create(&app, &app.base, &space.id, &space.producer, job).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["replayed"], true);
    assert_eq!(total(&app, &space.id, &space.producer).await, 1);

    // Same key, another job: refused, and nothing is made.
    let other = json!({ "name": "charge", "payload": { "amount": 43 }, "idempotencyKey": "order-17" });
    let (status, _, refused) = create(&app, &app.base, &space.id, &space.producer, other).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let message = refused["error"].as_str().unwrap();
    assert!(message.starts_with("idempotency key \"order-17\" was already used for a different job"), "{message}");
    assert_eq!(total(&app, &space.id, &space.producer).await, 1);

    // The header form, and keys are per space.
    let other_space = app.create_space().await;
    let response = app
        .http
        .post(format!("{}/api/v1/spaces/{}/jobs", app.base, other_space.id))
        .header("x-api-key", &other_space.producer)
        .header("idempotency-key", "order-17")
        .json(&json!({ "name": "charge", "payload": { "amount": 42 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let made: Value = response.json().await.unwrap();
    assert_ne!(made["id"], first["id"]);
    assert!(made.get("replayed").is_none());
}

#[tokio::test]
async fn a_bulk_create_reports_its_replays_per_job_and_fails_whole_on_a_conflict() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (status, _, first) = create(&app, &app.base, &space.id, &space.producer, json!([
        { "name": "a", "idempotencyKey": "k1" },
        { "name": "b", "idempotencyKey": "k2" },
        { "name": "plain" },
    ])).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, replayed, second) = create(&app, &app.base, &space.id, &space.producer, json!([
        { "name": "b", "idempotencyKey": "k2" },
        { "name": "c", "idempotencyKey": "k3" },
        { "name": "c", "idempotencyKey": "k3" },
    ])).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(replayed, None, "not every job was a replay");
    assert_eq!(second[0]["id"], first[1]["id"]);
    assert_eq!(second[0]["replayed"], true);
    assert!(second[1].get("replayed").is_none());
    // A key repeated inside one request: the second is a replay of the first.
    assert_eq!(second[2]["id"], second[1]["id"]);
    assert_eq!(second[2]["replayed"], true);
    assert_eq!(total(&app, &space.id, &space.producer).await, 4);

    // One conflicting job refuses the whole create, new keys included.
    let (status, _, _) = create(&app, &app.base, &space.id, &space.producer, json!([
        { "name": "d", "idempotencyKey": "k4" },
        { "name": "not-a", "idempotencyKey": "k1" },
    ])).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(total(&app, &space.id, &space.producer).await, 4);
    let (_, _, later) = create(&app, &app.base, &space.id, &space.producer, json!({ "name": "d", "idempotencyKey": "k4" })).await;
    assert!(later.get("replayed").is_none(), "k4 was not kept by the refused create: {later}");
}

#[tokio::test]
async fn a_key_expires_after_its_window_and_bad_keys_are_named() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = json!({ "name": "a", "idempotencyKey": "short", "idempotencyWindowSeconds": 1 });
    let (_, _, first) = create(&app, &app.base, &space.id, &space.producer, job.clone()).await;
    let started = Instant::now();
    loop {
        let (status, _, again) = create(&app, &app.base, &space.id, &space.producer, job.clone()).await;
        assert_eq!(status, StatusCode::CREATED);
        if again.get("replayed").is_none() {
            assert_ne!(again["id"], first["id"]);
            assert!(started.elapsed() >= Duration::from_millis(500), "the key held its window");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the key never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (body, error) in [
        (json!({ "name": "a", "idempotencyKey": "" }), "jobs[0].idempotencyKey must be 1 to 255 characters"),
        (json!({ "name": "a", "idempotencyKey": "k".repeat(256) }), "jobs[0].idempotencyKey must be 1 to 255 characters"),
        (json!({ "name": "a", "idempotencyKey": 5 }), "jobs[0].idempotencyKey must be a string"),
        (json!({ "name": "a", "idempotencyKey": "k", "idempotencyWindowSeconds": 604801 }), "jobs[0].idempotencyWindowSeconds must be between 1 and 604800"),
        (json!({ "name": "a", "idempotencyWindowSeconds": 60 }), "jobs[0].idempotencyWindowSeconds requires jobs[0].idempotencyKey"),
    ] {
        let (status, _, body) = create(&app, &app.base, &space.id, &space.producer, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, json!({ "error": error }));
    }
}

/// The checker: 40 keys, each created 6 times at once, spread over the
/// cores (three on PostgreSQL, the server's one on SQLite): every answer
/// for a key names the same job, and there is one job per key.
#[tokio::test]
async fn concurrent_creates_with_the_same_keys_make_one_job_per_key() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut bases = vec![app.base.clone()];
    let mut extra = Vec::new();
    if crate::BACKEND == Backend::Postgres {
        for _ in 0..2 {
            let replica = app.replica().await;
            bases.push(replica.base.clone());
            extra.push(replica);
        }
    }
    let mut calls = Vec::new();
    for attempt in 0..6 {
        for key in 0..40 {
            let base = bases[(attempt + key) % bases.len()].clone();
            let (http, space_id, producer) = (app.http.clone(), space.id.clone(), space.producer.clone());
            calls.push(tokio::spawn(async move {
                let response = http
                    .post(format!("{base}/api/v1/spaces/{space_id}/jobs"))
                    .header("x-api-key", producer)
                    .json(&json!({ "name": "once", "payload": { "key": key }, "idempotencyKey": format!("key-{key}") }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::CREATED);
                let body: Value = response.json().await.unwrap();
                (key, body["id"].as_str().unwrap().to_owned(), body.get("replayed").is_some())
            }));
        }
    }
    let mut ids: HashMap<usize, HashSet<String>> = HashMap::new();
    let mut made = 0;
    for call in calls {
        let (key, id, replayed) = call.await.unwrap();
        ids.entry(key).or_default().insert(id);
        made += usize::from(!replayed);
    }
    assert_eq!(ids.len(), 40);
    assert!(ids.values().all(|ids| ids.len() == 1), "a key named two jobs: {ids:?}");
    assert_eq!(made, 40, "one answer per key made a job");
    assert_eq!(total(&app, &space.id, &space.producer).await, 40);
    for replica in extra {
        replica.stop().await;
    }
}
