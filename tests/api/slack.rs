//! Slack notifications against a local receiver standing in for Slack.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use axum::routing::post;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, Space, TestApp};

/// Every post it got, and the statuses it answers first (then 200).
#[derive(Clone, Default)]
struct Slack {
    posts: Arc<Mutex<Vec<(u16, Value)>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl Slack {
    async fn start(script: Vec<u16>) -> (Self, String) {
        let slack = Self {
            script: Arc::new(Mutex::new(script.into())),
            ..Self::default()
        };
        let state = slack.clone();
        let app = Router::new().route(
            "/services/T0/B0/secret",
            post(move |body: String| {
                let state = state.clone();
                async move {
                    let status = state.script.lock().unwrap().pop_front().unwrap_or(200);
                    let message = serde_json::from_str(&body).unwrap_or(Value::Null);
                    state.posts.lock().unwrap().push((status, message));
                    let mut headers = HeaderMap::new();
                    if status == 429 {
                        headers.insert("retry-after", "1".parse().unwrap());
                    }
                    (AxumStatus::from_u16(status).unwrap(), headers, "ok").into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/services/T0/B0/secret", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (slack, url)
    }

    /// The texts Slack accepted, once there are `count` (bounded wait).
    async fn accepted(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let accepted: Vec<String> = self
                .posts
                .lock()
                .unwrap()
                .iter()
                .filter(|(status, _)| *status == 200)
                .map(|(_, message)| message["text"].as_str().unwrap_or_default().to_owned())
                .collect();
            if accepted.len() >= count {
                return accepted;
            }
            assert!(Instant::now() < deadline, "Slack got {:?}", self.posts.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn turn_on(app: &TestApp, space: &Space, url: &str, events: Value) -> Value {
    let (status, shown) = app
        .patch_space(&space.id, ADMIN_KEY, json!({ "slack": { "url": url, "events": events } }))
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    shown
}

#[tokio::test]
async fn chosen_events_reach_slack_in_order_and_a_refused_post_is_sent_again() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    // Slack refuses the first post (rate limited, Retry-After: 1).
    let (slack, url) = Slack::start(vec![429]).await;
    let before = app.create_job(&space, json!({ "name": "before" })).await;
    let (status, _) = app
        .post(&format!("/api/v1/jobs/{before}/kill"), &space.producer, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let shown = turn_on(&app, &space, &url, json!(["created", "failed", "dead"])).await;
    assert_eq!(shown["slack"]["events"], json!(["created", "failed", "dead"]));
    let masked = shown["slack"]["url"].as_str().unwrap();
    assert!(masked.ends_with("/***") && !masked.contains("secret"), "{masked}");

    let job = app
        .create_job(&space, json!({ "name": "send-email", "maxRetries": 1 }))
        .await;
    for _ in 0..2 {
        app.poll_one(&space).await;
        let (status, failed) = app
            .worker_call(&space, &job, "fail", json!({ "error": "smtp down" }))
            .await;
        assert_eq!(status, StatusCode::OK, "{failed}");
    }
    let texts = slack.accepted(4).await;
    assert_eq!(texts.len(), 4, "{texts:?}");
    assert!(texts[0].contains("*created*") && texts[0].contains("*send-email*"), "{texts:?}");
    assert!(texts[1].contains("*failed*") && texts[1].contains("attempt 0"), "{texts:?}");
    assert!(texts[2].contains("*failed*") && texts[3].contains("*dead*"), "{texts:?}");
    assert!(texts[3].contains("smtp down"), "{texts:?}");
    let link = format!("<https://emit.example/spaces/{}/jobs/{job}|open>", space.id);
    assert!(texts.iter().all(|text| text.contains(&link)), "{texts:?}");
    assert!(!texts.iter().any(|text| text.contains("before")), "history is not posted");
    let refused = slack.posts.lock().unwrap().iter().filter(|(status, _)| *status == 429).count();
    assert_eq!(refused, 1);

    // An empty URL turns it off; bad settings are named.
    let (status, off) = app
        .patch_space(&space.id, ADMIN_KEY, json!({ "slack": { "url": "" } }))
        .await;
    assert_eq!((status, &off["slack"]), (StatusCode::OK, &Value::Null));
    let (status, error) = app
        .patch_space(&space.id, ADMIN_KEY, json!({ "slack": { "url": url, "events": ["exploded"] } }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"].as_str().unwrap().starts_with("slack.events[0] must be one of"));
}

#[tokio::test]
async fn a_burst_becomes_one_digest() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (slack, url) = Slack::start(vec![]).await;
    turn_on(&app, &space, &url, json!(["created"])).await;
    app.create_bulk(&space, "burst", 25).await;
    let texts = slack.accepted(1).await;
    assert!(texts[0].contains("25 job events") && texts[0].contains("25 created"), "{texts:?}");
    // Nothing else follows for the same events.
    app.create_job(&space, json!({ "name": "after" })).await;
    let texts = slack.accepted(2).await;
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[1].contains("*after*"), "{texts:?}");
}

#[tokio::test]
async fn a_slow_webhook_holds_up_only_its_own_space() {
    let app = TestApp::spawn().await;
    let (slow_space, quick_space) = (app.create_space().await, app.create_space().await);
    // A webhook that accepts the connection and never answers (the post
    // times out after 10 s).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/services/T0/B0/secret", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let (quick, quick_url) = Slack::start(vec![]).await;
    turn_on(&app, &slow_space, &silent_url, json!(["created"])).await;
    turn_on(&app, &quick_space, &quick_url, json!(["created"])).await;
    app.create_job(&slow_space, json!({ "name": "stuck" })).await;
    app.create_job(&quick_space, json!({ "name": "first" })).await;
    quick.accepted(1).await;
    // While the slow post still hangs, the quick space keeps being told.
    let started = Instant::now();
    app.create_job(&quick_space, json!({ "name": "second" })).await;
    let texts = quick.accepted(2).await;
    assert!(texts[1].contains("*second*"), "{texts:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
