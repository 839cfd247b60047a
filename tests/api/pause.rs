//! Pausing dispatch of a space or of one job name: nothing it covers is
//! delivered (poll, gRPC poll, claim, long poll), creates go on, scheduled
//! jobs come due and wait, and a resume lets them go; the state shows on
//! the space.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestApp, next_json};
use crate::lifecycle::iso_millis;

async fn pause(app: &TestApp, space_id: &str, action: &str, body: Value) -> (StatusCode, Value) {
    app.post(&format!("/api/v1/spaces/{space_id}/{action}"), ADMIN_KEY, body)
        .await
}

#[tokio::test]
async fn a_paused_space_delivers_nothing_until_it_is_resumed() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (status, shown) = pause(&app, &space.id, "pause", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!((shown["paused"].clone(), shown["pausedNames"].clone()), (json!(true), json!([])));

    // Creates are accepted; nothing is handed out, on any transport.
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    assert!(app.poll(&space, json!({ "count": 10 })).await.is_empty());
    assert!(app.grpc_poll(&space, 10).await.is_empty());
    let (status, refused) = app
        .worker_call(&space, &job, "claim", json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        refused["error"],
        format!("job {job} is paused: dispatch of its space or its name is paused")
    );

    // A long poll waits through the pause and gets the job on resume.
    let waiting = app.long_poll(&app.base, &space);
    let (status, shown) = pause(&app, &space.id, "resume", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["paused"], false);
    let delivered = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the waiting poll is answered")
        .unwrap();
    assert_eq!(delivered["jobs"][0]["id"], job.as_str());
}

#[tokio::test]
async fn pausing_one_name_holds_only_its_jobs_and_scheduled_ones_wait() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (status, shown) = pause(&app, &space.id, "pause", json!({ "name": "report" })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((shown["paused"].clone(), shown["pausedNames"].clone()), (json!(false), json!(["report"])));
    // Pausing again changes nothing.
    let (status, _) = pause(&app, &space.id, "pause", json!({ "name": "report" })).await;
    assert_eq!(status, StatusCode::OK);

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let scheduled = app
        .create_job(&space, json!({ "name": "report", "scheduledFor": iso_millis(now + 300) }))
        .await;
    let ready = app.create_job(&space, json!({ "name": "report" })).await;
    let other = app.create_job(&space, json!({ "name": "email" })).await;
    let polled = app.poll(&space, json!({ "count": 10 })).await;
    assert_eq!(polled.len(), 1);
    assert_eq!(polled[0]["id"], other.as_str());
    // The scheduled job comes due and waits, pending, with the other.
    app.wait_for_status(&space, &scheduled, "pending").await;
    assert!(app.poll(&space, json!({ "count": 10 })).await.is_empty());

    let (status, shown) = pause(&app, &space.id, "resume", json!({ "name": "report" })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["pausedNames"], json!([]));
    let mut ids: Vec<String> = app
        .poll(&space, json!({ "count": 10 }))
        .await
        .iter()
        .map(|job| job["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected = vec![scheduled, ready];
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn pause_requests_are_checked() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    for (body, error) in [
        (json!({ "name": "" }), "name is required"),
        (json!({ "name": "n".repeat(201) }), "name must be at most 200 characters"),
        (json!({ "name": 7 }), "name must be a string"),
    ] {
        let (status, answer) = pause(&app, &space.id, "pause", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(answer, json!({ "error": error }));
    }
    let (status, _) = pause(&app, "01JNOSUCHSPACE0000000000000", "pause", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post(&format!("/api/v1/spaces/{}/pause", space.id), &space.producer, json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// `paused` and `resumed` are numbered in the space's sequence with its
/// jobs' events: live, and replayed to a reconnecting client.
#[tokio::test]
async fn pauses_and_resumes_appear_on_the_space_stream_and_in_its_replay() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut stream = app.watch_space(&space.id, &space.producer, "").await;
    let connected = next_json(&mut stream).await;
    let start = connected["seq"].as_u64().unwrap();

    pause(&app, &space.id, "pause", json!({})).await;
    pause(&app, &space.id, "pause", json!({ "name": "report" })).await;
    let job = app.create_job(&space, json!({ "name": "report" })).await;
    pause(&app, &space.id, "resume", json!({ "name": "report" })).await;
    pause(&app, &space.id, "resume", json!({})).await;
    // Changing nothing records nothing.
    pause(&app, &space.id, "resume", json!({})).await;

    let expected = [
        ("paused", Value::Null),
        ("paused", json!("report")),
        ("created", json!("report")),
        ("resumed", json!("report")),
        ("resumed", Value::Null),
    ];
    let mut live = Vec::new();
    for _ in 0..expected.len() {
        live.push(next_json(&mut stream).await);
    }
    for (offset, (message, (kind, name))) in live.iter().zip(&expected).enumerate() {
        assert_eq!(message["seq"], start + 1 + offset as u64, "{message}");
        assert_eq!(message["type"], *kind, "{message}");
        assert_eq!(message["jobName"], *name, "{message}");
    }
    assert_eq!(live[0]["status"], Value::Null);
    assert_eq!(live[0]["jobId"], Value::Null);
    assert_eq!(live[1]["data"], json!({ "name": "report" }));
    assert_eq!(live[2]["jobId"], job.as_str());

    // A reconnect from the start gets the same five, in order.
    let query = format!(
        "&since={start}&streamInstanceId={}",
        connected["streamInstanceId"].as_str().unwrap()
    );
    let mut again = app.watch_space(&space.id, &space.producer, &query).await;
    let reconnected = next_json(&mut again).await;
    assert_eq!(reconnected["missed"], false, "{reconnected}");
    for message in &live {
        let replayed = next_json(&mut again).await;
        assert_eq!(replayed["seq"], message["seq"]);
        assert_eq!(replayed["type"], message["type"]);
        assert_eq!(replayed["jobName"], message["jobName"]);
    }
}
