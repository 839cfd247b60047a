//! Callbacks against real local HTTP receivers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use axum::routing::post;
use emit_core::callbacks::{CallbackConfig, RetryPolicy};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, Options, Space, TestApp, event_types};

/// What a receiver got, and what it answers next (200 once the script ends).
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

#[derive(Clone)]
enum Reply {
    Status(u16, &'static str),
    RetryAfter(u16, u64),
    Sleep(Duration),
    Redirect(String),
}

impl Receiver {
    async fn start(script: Vec<Reply>) -> (Self, String) {
        let receiver = Self {
            script: Arc::new(Mutex::new(script.into())),
            ..Self::default()
        };
        let state = receiver.clone();
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    state.received.lock().unwrap().push((headers, body));
                    let next = state.script.lock().unwrap().pop_front();
                    match next {
                        None => (AxumStatus::OK, HeaderMap::new(), "ok").into_response(),
                        Some(Reply::Status(code, body)) => {
                            (AxumStatus::from_u16(code).unwrap(), body).into_response()
                        }
                        Some(Reply::RetryAfter(code, seconds)) => {
                            let mut headers = HeaderMap::new();
                            headers.insert("retry-after", seconds.to_string().parse().unwrap());
                            (AxumStatus::from_u16(code).unwrap(), headers, "busy").into_response()
                        }
                        Some(Reply::Redirect(location)) => {
                            let mut headers = HeaderMap::new();
                            headers.insert("location", location.parse().unwrap());
                            (AxumStatus::FOUND, headers, "moved").into_response()
                        }
                        Some(Reply::Sleep(wait)) => {
                            tokio::time::sleep(wait).await;
                            (AxumStatus::OK, "late").into_response()
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn received(&self) -> Vec<(HeaderMap, String)> {
        self.received.lock().unwrap().clone()
    }
}

/// Waits until the job's events include `count` callback events.
async fn callback_events(app: &TestApp, space: &Space, job: &str, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let events: Vec<Value> = app.job(space, job).await["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"].as_str().unwrap().starts_with("callback_"))
            .cloned()
            .collect();
        if events.len() >= count {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "callbacks: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn finish(app: &TestApp, space: &Space, job: &str, action: &str, body: Value) {
    app.poll_one(space).await;
    app.worker_call(space, job, "ack", json!({})).await;
    let (status, _) = app.worker_call(space, job, action, body).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn each_terminal_state_posts_the_documented_body_with_merged_headers() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (receiver, url) = Receiver::start(vec![]).await;
    let headers = json!({ "Authorization": "Bearer hook-secret", "X-Tenant": "t1" });
    let done = app
        .create_job(
            &space,
            json!({ "name": "a", "callbackUrl": url, "callbackHeaders": headers }),
        )
        .await;
    finish(
        &app,
        &space,
        &done,
        "complete",
        json!({ "result": { "n": 1 } }),
    )
    .await;
    let events = callback_events(&app, &space, &done, 1).await;
    assert_eq!(events[0]["type"], "callback_sent");
    assert_eq!(events[0]["data"]["statusCode"], 200);
    assert_eq!(events[0]["data"]["retryAttempt"], 0);
    assert_eq!(events[0]["data"]["url"], url.as_str());

    let (headers, body) = receiver.received().remove(0);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["jobId"], done.as_str());
    assert_eq!(body["spaceId"], space.id.as_str());
    assert_eq!(body["name"], "a");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["attemptNumber"], 0);
    assert_eq!(body["result"], json!({ "n": 1 }));
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers["user-agent"].to_str().unwrap().starts_with("emit/"));
    assert_eq!(headers["authorization"], "Bearer hook-secret");
    assert_eq!(headers["x-tenant"], "t1");
    assert!(
        headers.get("webhook-signature").is_none(),
        "unsigned without a secret"
    );

    // A failure with retries left sends nothing; the final one does.
    let dying = app
        .create_job(
            &space,
            json!({ "name": "b", "maxRetries": 1, "callbackUrl": url }),
        )
        .await;
    finish(&app, &space, &dying, "fail", json!({ "error": "first" })).await;
    finish(&app, &space, &dying, "fail", json!({ "error": "second" })).await;
    callback_events(&app, &space, &dying, 1).await;
    let killed = app
        .create_job(&space, json!({ "name": "c", "callbackUrl": url }))
        .await;
    app.post(
        &format!("/api/v1/jobs/{killed}/kill"),
        &space.producer,
        json!({ "reason": "operator" }),
    )
    .await;
    callback_events(&app, &space, &killed, 1).await;
    let bodies: Vec<Value> = receiver
        .received()
        .iter()
        .map(|(_, body)| serde_json::from_str(body).unwrap())
        .collect();
    assert_eq!(
        bodies.len(),
        3,
        "one per terminal state, none for the retry"
    );
    assert_eq!(bodies[1]["status"], "dead");
    assert_eq!(bodies[1]["attemptNumber"], 1);
    assert_eq!(bodies[1]["result"], json!({ "error": "second" }));
    assert_eq!(bodies[2]["status"], "killed");
    assert_eq!(bodies[2]["result"], json!({ "reason": "operator" }));
}

#[tokio::test]
async fn failed_tries_are_retried_and_recorded_until_a_2xx_or_given_up() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (_, url) = Receiver::start(vec![
        Reply::Status(500, "boom"),
        Reply::Sleep(Duration::from_secs(2)),
    ])
    .await;
    let job = app
        .create_job(&space, json!({ "name": "a", "callbackUrl": url }))
        .await;
    finish(&app, &space, &job, "complete", json!({ "result": 1 })).await;
    let events = callback_events(&app, &space, &job, 3).await;
    assert_eq!(
        event_types(&json!({ "events": events })),
        ["callback_failed", "callback_failed", "callback_sent"]
    );
    assert_eq!(events[0]["data"]["statusCode"], 500);
    assert_eq!(events[0]["data"]["responseBody"], "boom");
    assert_eq!(events[0]["data"]["willRetry"], true);
    assert_eq!(events[0]["data"]["retryAttempt"], 0);
    assert!(
        events[1]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{}",
        events[1]
    );
    assert_eq!(events[1]["data"]["statusCode"], Value::Null);
    assert_eq!(events[2]["data"]["retryAttempt"], 2);

    // A redirect is a failure, and is not followed.
    let (elsewhere, elsewhere_url) = Receiver::start(vec![]).await;
    let (_, url) = Receiver::start(vec![Reply::Redirect(elsewhere_url)]).await;
    let job = app
        .create_job(&space, json!({ "name": "r", "callbackUrl": url }))
        .await;
    finish(&app, &space, &job, "complete", json!({})).await;
    let events = callback_events(&app, &space, &job, 2).await;
    assert_eq!(events[0]["type"], "callback_failed");
    assert_eq!(events[0]["data"]["statusCode"], 302);
    assert_eq!(events[1]["type"], "callback_sent");
    assert!(elsewhere.received().is_empty(), "redirect not followed");

    // Nothing listening: tries run out (test schedule: 2 retries).
    let job = app
        .create_job(
            &space,
            json!({ "name": "b", "callbackUrl": "http://127.0.0.1:9/hook" }),
        )
        .await;
    finish(&app, &space, &job, "complete", json!({})).await;
    let events = callback_events(&app, &space, &job, 3).await;
    assert!(events.iter().all(|e| e["type"] == "callback_failed"));
    assert_eq!(events[2]["data"]["willRetry"], false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        callback_events(&app, &space, &job, 3).await.len(),
        3,
        "given up"
    );
}

#[tokio::test]
async fn an_outboxed_callback_survives_a_restart_and_honours_retry_after() {
    let mut app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (receiver, url) = Receiver::start(vec![Reply::RetryAfter(503, 2)]).await;
    let job = app
        .create_job(&space, json!({ "name": "a", "callbackUrl": url }))
        .await;
    finish(&app, &space, &job, "complete", json!({ "result": "x" })).await;
    let first = callback_events(&app, &space, &job, 1).await;
    assert_eq!(first[0]["data"]["statusCode"], 503);
    // Down while the retry waits out Retry-After: the outbox keeps it.
    app.restart().await;
    let events = callback_events(&app, &space, &job, 2).await;
    assert_eq!(events[1]["type"], "callback_sent");
    assert_eq!(events[1]["data"]["retryAttempt"], 1);
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].1, received[1].1, "the same body on every try");
}

#[tokio::test]
async fn signed_callbacks_verify_with_an_independent_implementation() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (status, secret) = app
        .post(
            &format!("/api/v1/spaces/{}/webhook-secret", space.id),
            ADMIN_KEY,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = secret["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let (receiver, url) = Receiver::start(vec![]).await;
    let job = app
        .create_job(&space, json!({ "name": "a", "callbackUrl": url }))
        .await;
    finish(&app, &space, &job, "complete", json!({ "result": 1 })).await;
    callback_events(&app, &space, &job, 1).await;
    let (headers, body) = receiver.received().remove(0);
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    assert_eq!(header("webhook-id"), format!("msg_{job}"));
    // Python's standard library, not our code, computes the expected signature.
    let script = "import base64,hashlib,hmac,sys\n\
        key=base64.b64decode(sys.argv[1].split('_',1)[1])\n\
        msg=(sys.argv[2]+'.'+sys.argv[3]+'.'+sys.stdin.read()).encode()\n\
        print('v1,'+base64.b64encode(hmac.new(key,msg,hashlib.sha256).digest()).decode())";
    let mut python = tokio::process::Command::new("python3")
        .args([
            "-c",
            script,
            &secret,
            &header("webhook-id"),
            &header("webhook-timestamp"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use tokio::io::AsyncWriteExt;
    python
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .await
        .unwrap();
    let output = python.wait_with_output().await.unwrap();
    let expected = String::from_utf8(output.stdout).unwrap();
    assert_eq!(header("webhook-signature"), expected.trim());

    let (status, _) = app
        .request(
            "DELETE",
            &format!("/api/v1/spaces/{}/webhook-secret", space.id),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .post(
            &format!("/api/v1/spaces/{}/webhook-secret", space.id),
            &space.producer,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_ssrf_guard_refuses_every_non_public_address_class() {
    let app = TestApp::spawn_with(Options {
        callbacks: CallbackConfig {
            allow_private: false,
            ..Options::default().callbacks
        },
        ..Options::default()
    })
    .await;
    let space = app.create_space().await;
    let (receiver, url) = Receiver::start(vec![]).await;
    let port = url
        .split(':')
        .nth(2)
        .unwrap()
        .trim_end_matches("/hook")
        .to_owned();
    let targets = [
        url.clone(),                                      // loopback, literal
        format!("http://localhost:{port}/hook"), // loopback by name (resolved, then refused)
        "http://10.0.0.1/hook".to_owned(),       // private
        "http://192.168.1.10/hook".to_owned(),   // private
        "http://172.16.5.4/hook".to_owned(),     // private
        "http://169.254.169.254/latest".to_owned(), // cloud metadata
        "http://169.254.10.1/hook".to_owned(),   // link-local
        "http://100.64.1.1/hook".to_owned(),     // CGNAT
        format!("http://[::1]:{port}/hook"),     // IPv6 loopback
        format!("http://[::ffff:127.0.0.1]:{port}/hook"), // IPv4-mapped
        "http://[fe80::1]/hook".to_owned(),      // IPv6 link-local
        "http://[fd00:ec2::254]/hook".to_owned(), // IPv6 metadata
        "http://0.0.0.0/hook".to_owned(),        // unspecified
    ];
    let mut jobs = Vec::new();
    for target in &targets {
        let job = app
            .create_job(&space, json!({ "name": "a", "callbackUrl": target }))
            .await;
        app.post(
            &format!("/api/v1/jobs/{job}/kill"),
            &space.producer,
            json!({}),
        )
        .await;
        jobs.push(job);
    }
    for (job, target) in jobs.iter().zip(&targets) {
        let events = callback_events(&app, &space, job, 1).await;
        assert_eq!(events[0]["type"], "callback_failed", "{target}");
        let error = events[0]["data"]["error"].as_str().unwrap();
        assert!(error.contains("refused"), "{target}: {error}");
        if target.contains("localhost") {
            // What a name resolves to is never told (no DNS oracle).
            assert!(error.contains("non-public address"), "{error}");
            assert!(!error.contains("127.0.0.1") && !error.contains("::1"), "{error}");
        }
    }
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );

    // Push wake-ups go through the same guard.
    let (status, _) = app
        .patch_space(&space.id, ADMIN_KEY, json!({ "push": { "url": url } }))
        .await;
    assert_eq!(status, StatusCode::OK);
    // The jobs above had the space's push settings (none) read and cached
    // for 2 s.
    app.clock.advance(Duration::from_secs(2));
    app.create_job(&space, json!({ "name": "a" })).await;
    let series = r#"emit_push_wakeups_total{outcome="refused"}"#;
    emit_testkit::metric_reaches(&app.http, &app.base, series, 1.0).await;
    assert!(receiver.received().is_empty(), "no wake-up to loopback");
}

#[tokio::test]
async fn push_wake_ups_announce_ready_jobs_of_the_chosen_names() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (receiver, url) = Receiver::start(vec![]).await;
    let push =
        json!({ "push": { "url": url, "names": ["wanted"], "headers": { "X-Push-Key": "k1" } } });
    let (status, updated) = app.patch_space(&space.id, ADMIN_KEY, push).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["push"]["url"], url.as_str());
    assert_eq!(
        updated["push"]["headers"]["X-Push-Key"], "***",
        "values are not shown"
    );

    app.create_job(&space, json!({ "name": "other" })).await;
    let wanted = app
        .create_job(&space, json!({ "name": "wanted", "maxRetries": 1 }))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while receiver.received().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no wake-up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A retry makes it ready again: a second wake-up.
    app.worker_call(&space, &wanted, "claim", json!({})).await;
    app.worker_call(&space, &wanted, "ack", json!({})).await;
    let (status, _) = app
        .worker_call(&space, &wanted, "fail", json!({ "error": "again" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    while receiver.received().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no second wake-up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (headers, body) in receiver.received() {
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["type"], "job.pending");
        assert_eq!(body["jobId"], wanted.as_str());
        assert_eq!(body["jobName"], "wanted");
        assert_eq!(body["spaceId"], space.id.as_str());
        assert_eq!(headers["x-push-key"], "k1");
    }
    // The woken worker claims exactly that job.
    let (status, claimed) = app.worker_call(&space, &wanted, "claim", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");

    let bad = json!({ "push": { "url": "ftp://x" } });
    let (status, body) = app.patch_space(&space.id, ADMIN_KEY, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("push.url must be"),
        "{body}"
    );
    let (status, cleared) = app
        .patch_space(&space.id, ADMIN_KEY, json!({ "push": null }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cleared["push"], Value::Null);
    // Push settings are cached for up to 2 s.
    app.clock.advance(Duration::from_secs(2));
    app.create_job(&space, json!({ "name": "wanted" })).await;
    // A wake-up not sent leaves no trace: allow the time one takes to
    // arrive (a few milliseconds here) many times over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 2, "no wake-ups once removed");
    let sent = r#"emit_push_wakeups_total{outcome="sent"}"#;
    emit_testkit::metric_reaches(&app.http, &app.base, sent, 2.0).await;
}

/// Accepts connections and never answers them; counts them.
async fn silent_receiver() -> (Arc<std::sync::atomic::AtomicUsize>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    (accepted, url)
}

#[tokio::test]
async fn one_spaces_slow_receivers_do_not_hold_up_another_spaces_callbacks() {
    let app = TestApp::spawn_with(Options {
        callbacks: CallbackConfig {
            // Tries to the silent receiver outlast the test: the noisy
            // space's tries in flight can only be the ones it started.
            retry: RetryPolicy {
                delays: vec![],
                timeout: Duration::from_secs(120),
            },
            ..Options::default().callbacks
        },
        ..Options::default()
    })
    .await;
    let noisy = app.create_space().await;
    let victim = app.create_space().await;
    let (accepted, slow_url) = silent_receiver().await;
    // More callbacks to a receiver that never answers than the deliverer
    // has tries in flight (64).
    for _ in 0..150 {
        let job = app
            .create_job(&noisy, json!({ "name": "a", "callbackUrl": slow_url }))
            .await;
        app.post(&format!("/api/v1/jobs/{job}/kill"), &noisy.producer, json!({}))
            .await;
    }
    let (receiver, url) = Receiver::start(vec![]).await;
    let job = app
        .create_job(&victim, json!({ "name": "b", "callbackUrl": url }))
        .await;
    app.post(&format!("/api/v1/jobs/{job}/kill"), &victim.producer, json!({}))
        .await;
    let events = callback_events(&app, &victim, &job, 1).await;
    assert_eq!(events[0]["type"], "callback_sent");
    assert_eq!(receiver.received().len(), 1);
    let noisy_tries = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        noisy_tries <= 8,
        "the noisy space had {noisy_tries} tries in flight when the victim's was made"
    );
}

#[tokio::test]
async fn a_retried_job_calls_back_again_when_it_next_ends() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (receiver, url) = Receiver::start(vec![]).await;
    let job = app
        .create_job(
            &space,
            json!({ "name": "once", "maxRetries": 0, "callbackUrl": url }),
        )
        .await;
    app.poll_one(&space).await;
    app.worker_call(&space, &job, "fail", json!({ "error": "boom" }))
        .await;
    callback_events(&app, &space, &job, 1).await;

    let (status, retried) = app
        .post(&format!("/api/v1/jobs/{job}/retry"), ADMIN_KEY, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    app.poll_one(&space).await;
    app.worker_call(&space, &job, "complete", json!({ "result": 7 }))
        .await;
    callback_events(&app, &space, &job, 2).await;
    let bodies: Vec<Value> = receiver
        .received()
        .iter()
        .map(|(_, body)| serde_json::from_str(body).unwrap())
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[0]["status"], "dead");
    assert_eq!(bodies[1]["status"], "completed");
    assert_eq!(bodies[1]["result"], 7);
}
