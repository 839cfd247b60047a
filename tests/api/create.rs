use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::TestApp;

#[tokio::test]
async fn a_single_job_returns_its_reference_and_gets_the_documented_defaults() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (status, created) = app
        .post(
            &format!("/api/v1/spaces/{}/jobs", space.id),
            &space.producer,
            json!({ "name": "send-email", "payload": { "to": "u@example.com" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        created.as_object().unwrap().len(),
        2,
        "only id and spaceId: {created}"
    );
    assert_eq!(created["spaceId"], space.id.as_str());
    let job = app.job(&space, created["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "pending");
    assert_eq!(job["maxRetries"], 3);
    assert_eq!(job["timeoutSeconds"], 300);
    assert_eq!(job["attemptNumber"], 0);
    assert_eq!(job["payload"], json!({ "to": "u@example.com" }));
    assert_eq!(job["events"][0]["type"], "created");
}

#[tokio::test]
async fn a_bulk_create_returns_references_in_order() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let jobs: Vec<Value> = (0..250)
        .map(|i| json!({ "name": "bulk", "payload": { "i": i } }))
        .collect();
    let (status, created) = app
        .post(
            &format!("/api/v1/spaces/{}/jobs", space.id),
            &space.producer,
            Value::Array(jobs),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let created = created.as_array().unwrap();
    assert_eq!(created.len(), 250);
    let last = app.job(&space, created[249]["id"].as_str().unwrap()).await;
    assert_eq!(last["payload"]["i"], 249);
    // Creation order is dispatch order.
    let first = app.poll_one(&space).await;
    assert_eq!(first["payload"]["i"], 0);
}

#[tokio::test]
async fn payloads_keep_large_numbers_and_deep_nesting_exactly() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let raw = r#"{"name":"n","payload":{"big":123456789012345678901234567890,"neg":-9223372036854775809,"pi":3.14159265358979323846264338327950288,"deep":[[[[{"a":[1,2,{"b":null}]}]]]]}}"#;
    let response = app
        .http
        .post(format!("{}/api/v1/spaces/{}/jobs", app.base, space.id))
        .header("x-api-key", &space.producer)
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = app
        .http
        .get(format!("{}/api/v1/jobs/{id}", app.base))
        .header("x-api-key", &space.producer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#""big":123456789012345678901234567890"#),
        "{text}"
    );
    assert!(text.contains(r#""neg":-9223372036854775809"#), "{text}");
    assert!(
        text.contains(r#""pi":3.14159265358979323846264338327950288"#),
        "{text}"
    );
    assert!(
        text.contains(r#""deep":[[[[{"a":[1,2,{"b":null}]}]]]]"#),
        "{text}"
    );
}

async fn create_error(
    app: &TestApp,
    space_id: &str,
    key: &str,
    body: Value,
) -> (StatusCode, String) {
    let (status, error) = app
        .post(&format!("/api/v1/spaces/{space_id}/jobs"), key, body)
        .await;
    (
        status,
        error["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn every_invalid_field_is_named_in_a_400() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let cases = [
        (json!({}), "jobs[0].name is required"),
        (
            json!([{ "name": "ok" }, { "name": "  " }]),
            "jobs[1].name is required",
        ),
        (
            json!({ "name": "x".repeat(201) }),
            "jobs[0].name must be at most 200 characters",
        ),
        (json!({ "name": 5 }), "jobs[0].name must be a string"),
        (
            json!({ "name": "a", "maxRetries": 26 }),
            "jobs[0].maxRetries must be between 0 and 25",
        ),
        (
            json!({ "name": "a", "maxRetries": -1 }),
            "jobs[0].maxRetries must be between 0 and 25",
        ),
        (
            json!({ "name": "a", "maxRetries": 1.5 }),
            "jobs[0].maxRetries must be an integer",
        ),
        (
            json!({ "name": "a", "priority": 1001 }),
            "jobs[0].priority must be between -1000 and 1000",
        ),
        (
            json!({ "name": "a", "priority": -5000000000_i64 }),
            "jobs[0].priority must be between -1000 and 1000",
        ),
        (
            json!({ "name": "a", "priority": "high" }),
            "jobs[0].priority must be an integer",
        ),
        (
            json!({ "name": "a", "timeoutSeconds": 0 }),
            "jobs[0].timeoutSeconds must be between 1 and 86400",
        ),
        (
            json!({ "name": "a", "timeoutSeconds": 86401 }),
            "jobs[0].timeoutSeconds must be between 1 and 86400",
        ),
        (
            json!({ "name": "a", "scheduledFor": "tomorrow" }),
            "jobs[0].scheduledFor must be an ISO 8601 timestamp",
        ),
        (
            json!({ "name": "a", "callbackUrl": "ftp://x" }),
            "jobs[0].callbackUrl must be an absolute http or https URL of at most 2048 bytes",
        ),
        (
            json!({ "name": "a", "callbackUrl": "https://x.test", "callbackHeaders": { "A": 1 } }),
            "jobs[0].callbackHeaders.A must be a string",
        ),
        (
            json!({ "name": "a", "callbackUrl": "https://x.test", "callbackHeaders": { "Content-Length": "1" } }),
            "jobs[0].callbackHeaders.Content-Length cannot be overridden",
        ),
        (
            json!({ "name": "a", "retryBackoff": { "type": "linear", "delaySeconds": 1 } }),
            "jobs[0].retryBackoff.type must be \"exponential\" or \"fixed\"",
        ),
        (json!([]), "at least one job is required"),
        (
            json!("job"),
            "request body must be a job object or an array of job objects",
        ),
        (json!([1]), "jobs[0] must be a JSON object"),
    ];
    for (body, expected) in cases {
        let (status, message) = create_error(&app, &space.id, &space.producer, body.clone()).await;
        assert_eq!(
            (status, message.as_str()),
            (StatusCode::BAD_REQUEST, expected),
            "for {body}"
        );
    }
}

#[tokio::test]
async fn limits_on_size_and_count_are_enforced() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let too_many = Value::Array((0..1001).map(|_| json!({ "name": "a" })).collect());
    let (status, message) = create_error(&app, &space.id, &space.producer, too_many).await;
    assert_eq!(
        (status, message.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "at most 1000 jobs can be created per request"
        )
    );

    let big = "x".repeat(1024 * 1024);
    let (status, message) = create_error(
        &app,
        &space.id,
        &space.producer,
        json!({ "name": "a", "payload": big }),
    )
    .await;
    assert_eq!(
        (status, message.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "jobs[0].payload must be at most 1048576 bytes"
        )
    );

    let huge = vec![b' '; 33 * 1024 * 1024];
    let response = app
        .http
        .post(format!("{}/api/v1/spaces/{}/jobs", app.base, space.id))
        .header("x-api-key", &space.producer)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("request body exceeds")
    );

    let response = app
        .http
        .post(format!("{}/api/v1/spaces/{}/jobs", app.base, space.id))
        .header("x-api-key", &space.producer)
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body"),
        "{body}"
    );
}

#[tokio::test]
async fn jobs_cannot_be_created_in_a_space_that_does_not_exist() {
    let app = TestApp::spawn().await;
    let (status, error) = app
        .post(
            "/api/v1/spaces/01ARZ3NDEKTSV4RRFFQ69G5FAV/jobs",
            crate::helpers::ADMIN_KEY,
            json!({ "name": "a" }),
        )
        .await;
    assert_eq!(
        (status, error),
        (StatusCode::NOT_FOUND, json!({ "error": "space not found" }))
    );
}

#[tokio::test]
async fn the_largest_bulk_create_is_stored_whole() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let jobs = Value::Array(
        (0..1000)
            .map(|n| json!({ "name": "bulk", "payload": { "n": n } }))
            .collect(),
    );
    let (status, created) = app
        .post(&format!("/api/v1/spaces/{}/jobs", space.id), &space.producer, jobs)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created.as_array().unwrap().len(), 1000);
    let listed = app
        .http
        .get(format!("{}/api/v1/spaces/{}/jobs?limit=1", app.base, space.id))
        .header("x-api-key", &space.producer)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.headers()["x-total-count"], "1000");
    let last = created[999]["id"].as_str().unwrap();
    assert_eq!(app.job(&space, last).await["payload"], json!({ "n": 999 }));
}
