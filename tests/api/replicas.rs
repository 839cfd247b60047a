//! What takes several cores sharing one database: PostgreSQL only (this
//! module is part of the PostgreSQL test binary alone).

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestApp, next_json};

async fn pause(app: &TestApp, space_id: &str, action: &str, body: Value) {
    let (status, answer) = app
        .post(
            &format!("/api/v1/spaces/{space_id}/{action}"),
            ADMIN_KEY,
            body,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
}

/// With several cores (PostgreSQL): a pause taken through one core reaches
/// the space streams of another, and a resume there lets a long poll
/// waiting on the other core have its job.
#[tokio::test]
async fn a_pause_and_resume_reach_the_other_cores() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let replica = app.replica().await;
    pause(&app, &space.id, "pause", json!({})).await;
    let job = app.create_job(&space, json!({ "name": "held" })).await;

    let url = format!(
        "{}/api/v1/realtime/spaces/{}?token={}",
        replica.base.replace("http://", "ws://"),
        space.id,
        space.producer
    );
    let (mut stream, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    next_json(&mut stream).await;
    let waiting = app.long_poll(&replica.base, &space);
    pause(&app, &space.id, "resume", json!({})).await;
    let resumed = next_json(&mut stream).await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    let delivered = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the poll on the other core is answered")
        .unwrap();
    assert_eq!(delivered["jobs"][0]["id"], job.as_str());
    replica.stop().await;
}

/// A worker session on one core gets the jobs a pause held as soon as the
/// space is resumed through another core (the `resumed` event wakes it).
#[tokio::test]
async fn a_resume_on_one_core_wakes_the_worker_sessions_of_another() {
    use emit_client::{Incoming, Session, pb};

    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let replica = app.replica().await;
    pause(&app, &space.id, "pause", json!({})).await;
    let job = app.create_job(&space, json!({ "name": "held" })).await;

    let hello = pb::WorkerHello {
        space_id: space.id.clone(),
        names: Vec::new(),
        capacity: 1,
    };
    let mut session = Session::connect(&replica.grpc_url, &space.worker, hello)
        .await
        .unwrap();
    pause(&app, &space.id, "resume", json!({})).await;
    let next = tokio::time::timeout(Duration::from_secs(10), session.next()).await;
    match next.expect("a message within 10 s").unwrap() {
        Some(Incoming::Assignment(delivery)) => assert_eq!(delivery.id, job),
        other => panic!("expected the held job, got {other:?}"),
    }
    drop(session);
    replica.stop().await;
}
