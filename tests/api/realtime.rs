//! Job and space streams over WebSocket (tokio-tungstenite), as the
//! reference service documents them, plus emit's durable replay.

use std::collections::HashMap;
use std::time::Duration;

use emit_core::realtime::StreamLimits;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{
    ADMIN_KEY, Options, Space, TestApp, WebSocket, next_close, next_json, stays_quiet,
};
use crate::lifecycle::chrono_in;

const STATUSES: [&str; 7] = [
    "scheduled",
    "pending",
    "delivered",
    "running",
    "completed",
    "dead",
    "killed",
];

/// Runs one job through every worker-driven event type: delivered, acked,
/// progress, checkpoint, event, log, retried, delivery_timeout, completed.
async fn drive_through_every_event(app: &TestApp, space: &Space, job: &str) {
    app.poll_one(space).await;
    app.worker_call(space, job, "ack", json!({})).await;
    let progress = json!({ "percent": 40, "message": "encoding" });
    let (status, _) = app.worker_call(space, job, "progress", progress).await;
    assert_eq!(status, StatusCode::OK);
    app.worker_call(space, job, "checkpoint", json!({ "frame": 7 }))
        .await;
    app.worker_call(space, job, "event", json!({ "kind": "custom" }))
        .await;
    let lines = json!({ "lines": [{ "level": "info", "message": "halfway" }] });
    app.worker_call(space, job, "logs", lines).await;
    app.worker_call(space, job, "fail", json!({ "error": "flaky disk" }))
        .await;
    // Attempt 1 is delivered but never acked: the delivery times out.
    app.poll_one(space).await;
    app.wait_for_status(space, job, "pending").await;
    app.poll_one(space).await;
    app.worker_call(space, job, "ack", json!({})).await;
    app.worker_call(
        space,
        job,
        "complete",
        json!({ "result": { "url": "s3://out" } }),
    )
    .await;
}

async fn read_until(socket: &mut WebSocket, last_type: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = next_json(socket).await;
        let done = event["type"] == last_type;
        events.push(event);
        if done {
            return events;
        }
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn job_stream_sends_init_then_every_event_with_scope_based_stripping() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app
        .create_job(&space, json!({ "name": "video", "timeoutSeconds": 1 }))
        .await;
    let mut full = app.watch_job(&job, &space.producer).await;
    let mut limited = app.watch_job(&job, &space.public_token).await;

    drive_through_every_event(&app, &space, &job).await;

    let expected = [
        "init",
        "delivered",
        "acked",
        "progress",
        "checkpoint",
        "event",
        "log",
        "retried",
        "delivered",
        "delivery_timeout",
        "delivered",
        "acked",
        "completed",
    ];
    let full_events = read_until(&mut full, "completed").await;
    let limited_events = read_until(&mut limited, "completed").await;
    assert_eq!(types(&full_events), expected);
    assert_eq!(types(&limited_events), expected);

    for event in full_events.iter().chain(&limited_events) {
        assert_eq!(event["jobId"], job.as_str());
        assert_eq!(event["jobName"], "video");
        assert!(event["status"].is_string(), "{event}");
        assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    let full_by_type = |kind: &str| full_events.iter().find(|e| e["type"] == kind).unwrap();
    assert_eq!(full_events[0]["status"], "pending");
    assert!(full_events[0].get("data").is_none(), "init carries no data");
    assert_eq!(full_by_type("progress")["data"]["percent"], 40);
    assert_eq!(full_by_type("checkpoint")["data"], json!({ "frame": 7 }));
    assert_eq!(full_by_type("event")["data"], json!({ "kind": "custom" }));
    assert_eq!(full_by_type("log")["data"]["message"], "halfway");
    assert_eq!(full_by_type("log")["data"]["level"], "info");
    assert_eq!(
        full_by_type("retried")["data"],
        json!({ "error": "flaky disk", "attemptNumber": 1 })
    );
    assert_eq!(full_by_type("retried")["status"], "pending");
    assert_eq!(
        full_by_type("completed")["data"],
        json!({ "url": "s3://out" })
    );
    assert_eq!(full_by_type("completed")["status"], "completed");

    // jobs:read:progress sees type and status of everything, data only on progress.
    for (limited, full) in limited_events.iter().zip(&full_events) {
        assert_eq!(limited["type"], full["type"]);
        assert_eq!(limited["status"], full["status"]);
        if limited["type"] == "progress" {
            assert_eq!(limited["data"], full["data"]);
        } else {
            assert!(limited.get("data").is_none(), "stripped: {limited}");
        }
    }

    // The server keeps the stream open after the job ended.
    assert!(stays_quiet(&mut full, Duration::from_millis(300)).await);
}

#[tokio::test]
async fn job_stream_shows_dead_and_killed_per_scope_and_init_carries_progress() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let dying = app
        .create_job(&space, json!({ "name": "a", "maxRetries": 0 }))
        .await;
    app.poll_one(&space).await;
    app.worker_call(&space, &dying, "ack", json!({})).await;
    let progress = json!({ "percent": 65, "message": "encoding", "fps": 30 });
    app.worker_call(&space, &dying, "progress", progress.clone())
        .await;

    // A late subscriber learns the latest progress from init, at either scope.
    let mut full = app.watch_job(&dying, &space.producer).await;
    let mut limited = app.watch_job(&dying, &space.public_token).await;
    for socket in [&mut full, &mut limited] {
        let init = next_json(socket).await;
        assert_eq!(init["type"], "init");
        assert_eq!(init["status"], "running");
        assert_eq!(init["progress"], progress);
        assert!(init.get("data").is_none());
    }
    app.worker_call(&space, &dying, "fail", json!({ "error": "out of memory" }))
        .await;
    let dead = next_json(&mut full).await;
    assert_eq!(dead["type"], "dead");
    assert_eq!(dead["status"], "dead");
    assert_eq!(dead["data"]["error"], "out of memory");
    let dead = next_json(&mut limited).await;
    assert_eq!(
        (dead["type"].as_str(), dead.get("data")),
        (Some("dead"), None)
    );

    let doomed = app.create_job(&space, json!({ "name": "b" })).await;
    let mut full = app.watch_job(&doomed, &space.producer).await;
    let mut limited = app.watch_job(&doomed, &space.public_token).await;
    let (status, _) = app
        .post(
            &format!("/api/v1/jobs/{doomed}/kill"),
            &space.producer,
            json!({ "reason": "operator" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for socket in [&mut full, &mut limited] {
        assert_eq!(next_json(socket).await["type"], "init");
        let killed = next_json(socket).await;
        assert_eq!(killed["type"], "killed");
        assert_eq!(killed["status"], "killed");
    }
}

#[tokio::test]
async fn stream_handshakes_enforce_tokens_spaces_and_scopes() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let other = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let job_path = format!("/api/v1/realtime/{job}");
    let space_path = format!("/api/v1/realtime/spaces/{}", space.id);

    let refused = |path: String| {
        let app = &app;
        async move { app.ws(&path, None).await.expect_err("refused") }
    };
    let (status, body) = refused(format!("{job_path}?token=emit_nope")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid API key"))
    );
    let (status, _) = refused(job_path.clone()).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a token is required by default"
    );
    let (status, body) = refused(format!("{job_path}?token={}", other.producer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let creator = app.token(&space.id, &["jobs:create"]).await;
    let (status, body) = refused(format!("{job_path}?token={creator}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "Missing required scope: jobs:read:progress");
    let unknown = ulid::Ulid::new().to_string();
    let (status, _) = refused(format!(
        "/api/v1/realtime/{unknown}?token={}",
        space.producer
    ))
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The space stream needs jobs:read: the public token cannot open it.
    let (status, body) = refused(format!("{space_path}?token={}", space.public_token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "Missing required scope: jobs:read");
    let (status, _) = refused(format!("{space_path}?token={}", other.producer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = refused(format!("{space_path}?token=emit_nope")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = refused(format!("{space_path}?token={}&since=abc", space.producer)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Non-browser clients may use the usual header.
    let mut socket = app.ws(&job_path, Some(&space.producer)).await.unwrap();
    assert_eq!(next_json(&mut socket).await["type"], "init");
    // A plain request is told to upgrade.
    let (status, body) = app.get(&job_path, &space.producer).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED, "{body}");

    // Per-space opt-in to token-less job streams, which see what the public token sees.
    let (status, updated) = app
        .patch_space(
            &space.id,
            ADMIN_KEY,
            json!({ "anonymousProgressStreams": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["anonymousProgressStreams"], true);
    let mut anonymous = app.ws(&job_path, None).await.expect("anonymous allowed");
    assert_eq!(next_json(&mut anonymous).await["type"], "init");
    app.poll_one(&space).await;
    app.worker_call(&space, &job, "ack", json!({})).await;
    app.worker_call(
        &space,
        &job,
        "complete",
        json!({ "result": { "secret": 1 } }),
    )
    .await;
    let events = read_until(&mut anonymous, "completed").await;
    assert!(events.iter().all(|event| event.get("data").is_none()));
    // Still not for the space stream, and not for other spaces' jobs.
    let (status, _) = refused(space_path.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let elsewhere = app.create_job(&other, json!({ "name": "a" })).await;
    let (status, _) = refused(format!("/api/v1/realtime/{elsewhere}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = app
        .patch_space(
            &space.id,
            &space.producer,
            json!({ "anonymousProgressStreams": false }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app
        .patch_space(
            &space.id,
            ADMIN_KEY,
            json!({ "anonymousProgressStreams": "yes" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "anonymousProgressStreams must be a boolean");
}

fn counts_of(event: &Value) -> HashMap<String, u64> {
    event["counts"]
        .as_object()
        .unwrap_or_else(|| panic!("counts in {event}"))
        .iter()
        .map(|(status, count)| (status.clone(), count.as_u64().unwrap()))
        .collect()
}

#[tokio::test]
async fn space_stream_numbers_events_and_carries_counts_and_previous_status() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut stream = app.watch_space(&space.id, &space.producer, "").await;
    let connected = next_json(&mut stream).await;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["seq"], 0);
    assert_eq!(connected["missed"], false);
    assert!(
        connected["streamInstanceId"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let zero: HashMap<String, u64> = [STATUSES.as_slice(), &["failed"]]
        .concat()
        .iter()
        .map(|status| (status.to_string(), 0))
        .collect();
    assert_eq!(counts_of(&connected), zero);

    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let later = chrono_in(3600);
    app.create_job(&space, json!({ "name": "b", "scheduledFor": later }))
        .await;
    app.poll_one(&space).await;
    app.worker_call(&space, &job, "ack", json!({})).await;
    app.worker_call(&space, &job, "progress", json!({ "percent": 5 }))
        .await;
    app.worker_call(&space, &job, "complete", json!({ "result": 1 }))
        .await;

    let events = read_until(&mut stream, "completed").await;
    assert_eq!(
        types(&events),
        [
            "created",
            "created",
            "delivered",
            "acked",
            "progress",
            "completed"
        ]
    );
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event["seq"], index as u64 + 1, "seq increases by one");
        assert!(event["jobName"].is_string());
    }
    assert_eq!(events[1]["status"], "scheduled");
    assert!(events[0].get("previousStatus").is_none());
    assert_eq!(events[2]["previousStatus"], "pending");
    assert_eq!(events[3]["previousStatus"], "delivered");
    assert!(
        events[4].get("counts").is_none(),
        "progress changes no count"
    );
    assert!(events[4].get("previousStatus").is_none());
    assert_eq!(events[5]["previousStatus"], "running");
    assert_eq!(events[5]["data"], 1, "full data on the space stream");
    let last = counts_of(&events[5]);
    assert_eq!(
        (last["completed"], last["scheduled"], last["pending"]),
        (1, 1, 0)
    );
    assert_eq!(counts_of(&events[2])["delivered"], 1);
}

/// Reads `n` space events and checks they continue `after` without a gap.
async fn read_space_events(socket: &mut WebSocket, after: u64, n: usize) -> Vec<Value> {
    let mut events = Vec::with_capacity(n);
    for index in 0..n {
        let event = next_json(socket).await;
        assert_eq!(event["seq"], after + index as u64 + 1, "{event}");
        events.push(event);
    }
    events
}

#[tokio::test]
async fn space_stream_replays_what_a_reconnect_missed_even_across_a_restart() {
    let mut app = TestApp::spawn_with(Options {
        streams: StreamLimits {
            replay_limit: 50,
            ..StreamLimits::default()
        },
        ..Options::default()
    })
    .await;
    let space = app.create_space().await;
    let mut stream = app.watch_space(&space.id, &space.producer, "").await;
    let connected = next_json(&mut stream).await;
    let instance = connected["streamInstanceId"].as_str().unwrap().to_owned();
    let first = app.create_job(&space, json!({ "name": "a" })).await;
    let seen = read_space_events(&mut stream, 0, 1).await;
    drop(stream);

    // Missed while away: a delivery and two creations.
    app.poll_one(&space).await;
    app.create_job(&space, json!({ "name": "b" })).await;
    app.create_job(&space, json!({ "name": "c" })).await;
    let resume = format!("&since=1&streamInstanceId={instance}");
    let mut stream = app.watch_space(&space.id, &space.producer, &resume).await;
    let connected = next_json(&mut stream).await;
    assert_eq!(connected["missed"], false, "{connected}");
    assert_eq!(connected["seq"], 1);
    assert_eq!(connected["streamInstanceId"], instance.as_str());
    assert_eq!(
        counts_of(&connected),
        counts_of(&seen[0]),
        "counts as of seq 1"
    );
    let replayed = read_space_events(&mut stream, 1, 3).await;
    assert_eq!(types(&replayed), ["delivered", "created", "created"]);
    assert_eq!(replayed[0]["jobId"], first.as_str());
    assert_eq!(replayed[0]["previousStatus"], "pending");
    let counts = counts_of(&replayed[2]);
    assert_eq!((counts["pending"], counts["delivered"]), (2, 1));
    // Live events follow the replay seamlessly.
    app.create_job(&space, json!({ "name": "d" })).await;
    read_space_events(&mut stream, 4, 1).await;
    drop(stream);

    // The sequence is durable: after a restart the same cursor still replays.
    app.create_job(&space, json!({ "name": "e" })).await;
    app.restart().await;
    app.create_job(&space, json!({ "name": "f" })).await;
    let resume = format!("&since=5&streamInstanceId={instance}");
    let mut stream = app.watch_space(&space.id, &space.producer, &resume).await;
    let connected = next_json(&mut stream).await;
    assert_eq!(
        (connected["missed"].as_bool(), connected["seq"].as_u64()),
        (Some(false), Some(5))
    );
    let replayed = read_space_events(&mut stream, 5, 2).await;
    assert_eq!(types(&replayed), ["created", "created"]);
    assert_eq!(counts_of(&replayed[1])["pending"], 5);

    // Cursors that cannot be honoured: the stream starts from now, missed.
    for query in [
        "&since=1&streamInstanceId=someone-else".to_owned(),
        format!("&since=999&streamInstanceId={instance}"),
    ] {
        let mut stream = app.watch_space(&space.id, &space.producer, &query).await;
        let connected = next_json(&mut stream).await;
        assert_eq!(connected["missed"], true, "{query}");
        assert_eq!(connected["seq"], 7);
        assert_eq!(counts_of(&connected)["pending"], 5);
    }
    // Further behind than the replay limit (50): missed.
    app.create_bulk(&space, "bulk", 60).await;
    let resume = format!("&since=7&streamInstanceId={instance}");
    let mut stream = app.watch_space(&space.id, &space.producer, &resume).await;
    let connected = next_json(&mut stream).await;
    assert_eq!(
        (connected["missed"].as_bool(), connected["seq"].as_u64()),
        (Some(true), Some(67))
    );
}

/// Counts on the space stream always equal what listing the space returns:
/// under concurrent producers and workers, every counts snapshot adds up to
/// the jobs created so far, and at rest they equal the list per status.
#[tokio::test]
async fn space_stream_counts_match_the_list_under_concurrent_load() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut stream = app.watch_space(&space.id, &space.producer, "").await;
    next_json(&mut stream).await;

    const PRODUCERS: usize = 4;
    const BATCHES: usize = 5;
    const PER_BATCH: usize = 20;
    let total = PRODUCERS * BATCHES * PER_BATCH;
    let app = std::sync::Arc::new(app);
    let space = std::sync::Arc::new(space);
    let mut tasks = Vec::new();
    for _ in 0..PRODUCERS {
        let (app, space) = (app.clone(), space.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..BATCHES {
                let jobs: Vec<Value> = (0..PER_BATCH)
                    .map(|i| json!({ "name": "load", "maxRetries": i % 2 }))
                    .collect();
                let (status, _) = app
                    .post(
                        &format!("/api/v1/spaces/{}/jobs", space.id),
                        &space.producer,
                        json!(jobs),
                    )
                    .await;
                assert_eq!(status, StatusCode::CREATED);
            }
        }));
    }
    for worker in 0..4 {
        let (app, space) = (app.clone(), space.clone());
        tasks.push(tokio::spawn(async move {
            let mut idle = 0;
            while idle < 20 {
                let jobs = app.poll(&space, json!({ "count": 10 })).await;
                if jobs.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    continue;
                }
                idle = 0;
                for (index, job) in jobs.iter().enumerate() {
                    let id = job["id"].as_str().unwrap();
                    app.worker_call(&space, id, "ack", json!({})).await;
                    let action = match (worker + index) % 3 {
                        0 => ("fail", json!({ "error": "no" })),
                        _ => ("complete", json!({ "result": null })),
                    };
                    app.worker_call(&space, id, action.0, action.1).await;
                }
            }
        }));
    }
    // Read while the load runs: each snapshot sums to the jobs created so far.
    let mut created = 0u64;
    let mut last_seq = 0;
    let mut latest = None;
    let mut settled = 0;
    while settled < total {
        let event = next_json(&mut stream).await;
        assert_eq!(event["seq"], last_seq + 1);
        last_seq += 1;
        if event["type"] == "created" {
            created += 1;
        }
        if let Some(counts) = event.get("counts") {
            let sum: u64 = counts
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            assert_eq!(sum, created, "counts add up at seq {last_seq}: {event}");
            latest = Some(counts_of(&event));
        }
        if ["completed", "dead"].contains(&event["type"].as_str().unwrap()) {
            settled += 1;
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let latest = latest.unwrap();
    for status in STATUSES {
        let mut listed = 0;
        loop {
            let (_, page) = app
                .get(
                    &format!(
                        "/api/v1/spaces/{}/jobs?status={status}&limit=100&offset={listed}",
                        space.id
                    ),
                    &space.producer,
                )
                .await;
            let n = page.as_array().unwrap().len();
            listed += n;
            if n < 100 {
                break;
            }
        }
        assert_eq!(latest[status], listed as u64, "{status}");
    }
    assert_eq!(latest["completed"] + latest["dead"], total as u64);
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_without_slowing_the_others() {
    let app = TestApp::spawn_with(Options {
        streams: StreamLimits {
            watcher_queue: 8,
            ..StreamLimits::default()
        },
        ws_queue: 8,
        ..Options::default()
    })
    .await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    app.poll_one(&space).await;
    app.worker_call(&space, &job, "ack", json!({})).await;
    let mut slow = app.watch_job(&job, &space.producer).await;
    let mut fast = app.watch_job(&job, &space.producer).await;
    assert_eq!(next_json(&mut fast).await["type"], "init");

    // 200 progress reports of 100 KB each: far more than socket buffers hold.
    let padding = "x".repeat(100 * 1024);
    for percent in 0..200 {
        let progress = json!({ "percent": percent / 2, "pad": padding });
        let (status, _) = app.worker_call(&space, &job, "progress", progress).await;
        assert_eq!(status, StatusCode::OK);
        let event = next_json(&mut fast).await;
        assert_eq!(
            event["data"]["percent"],
            percent / 2,
            "fast reader keeps up"
        );
    }
    let close = next_close(&mut slow).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Again, "{close:?}");
    assert!(close.reason.contains("slow consumer"), "{}", close.reason);
}

#[tokio::test]
async fn a_thousand_concurrent_subscribers_each_get_the_event() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let mut sockets = Vec::new();
    for _ in 0..1000 {
        sockets.push(app.watch_job(&job, &space.public_token).await);
    }
    for socket in &mut sockets {
        assert_eq!(next_json(socket).await["type"], "init");
    }
    app.poll_one(&space).await;
    app.worker_call(&space, &job, "ack", json!({})).await;
    app.worker_call(&space, &job, "progress", json!({ "percent": 99 }))
        .await;
    for socket in &mut sockets {
        assert_eq!(next_json(socket).await["type"], "delivered");
        assert_eq!(next_json(socket).await["type"], "acked");
        let progress = next_json(socket).await;
        assert_eq!(progress["data"]["percent"], 99);
    }
}

/// Watchers joining one job between its events, each read by its own task
/// as a browser would while later events arrive, each get their snapshot
/// and then every later event once, in order, whether their feed's lane or
/// their own relay writes it.
#[tokio::test]
async fn watchers_joining_mid_stream_get_every_later_event_in_order() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    app.poll_one(&space).await;
    app.worker_call(&space, &job, "ack", json!({})).await;
    let last = 100;
    let mut readers = Vec::new();
    for percent in 0..=last {
        let progress = json!({ "percent": percent });
        let (status, _) = app.worker_call(&space, &job, "progress", progress).await;
        assert_eq!(status, StatusCode::OK);
        for _ in 0..2 {
            let mut socket = app.watch_job(&job, &space.public_token).await;
            readers.push(tokio::spawn(async move {
                let init = next_json(&mut socket).await;
                assert_eq!(init["type"], "init");
                assert_eq!(init["progress"]["percent"], percent, "its own snapshot");
                let mut seen = percent;
                while seen < last {
                    let event = next_json(&mut socket).await;
                    assert_eq!(event["type"], "progress", "{event}");
                    let next = event["data"]["percent"].as_i64().unwrap();
                    assert_eq!(next, seen + 1, "no gap, no repeat");
                    seen = next;
                }
            }));
        }
    }
    for reader in readers {
        reader.await.expect("every watcher reads to the end");
    }
}

#[tokio::test]
async fn streams_end_with_a_restart_close_when_the_server_stops() {
    let mut app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let mut socket = app.watch_job(&job, &space.producer).await;
    next_json(&mut socket).await;
    app.restart().await;
    let close = next_close(&mut socket).await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Restart);
}

mod grpc {
    use emit_proto::v1 as pb;
    use emit_proto::v1::event_service_client::EventServiceClient;
    use pb::watch_job_response::Message as JobMessage;
    use pb::watch_space_response::Message as SpaceMessage;
    use tonic::transport::Channel;

    use super::*;

    async fn client(app: &TestApp) -> EventServiceClient<Channel> {
        EventServiceClient::connect(app.grpc_url.clone())
            .await
            .expect("grpc connects")
    }

    fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("x-api-key", key.parse().unwrap());
        request
    }

    async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a message within 10s")
            .expect("stream healthy")
            .expect("stream open")
    }

    #[tokio::test]
    async fn watch_job_and_watch_space_stream_over_grpc() {
        let app = TestApp::spawn().await;
        let space = app.create_space().await;
        let mut events = client(&app).await;
        let job = app.create_job(&space, json!({ "name": "a" })).await;

        let request = pb::WatchJobRequest {
            job_id: job.clone(),
            ..Default::default()
        };
        let mut limited = events
            .watch_job(keyed(request.clone(), &space.public_token))
            .await
            .unwrap()
            .into_inner();
        let request = pb::WatchSpaceRequest {
            space_id: space.id.clone(),
            ..Default::default()
        };
        let mut space_stream = events
            .watch_space(keyed(request, &space.producer))
            .await
            .unwrap()
            .into_inner();
        let Some(JobMessage::Init(init)) = next(&mut limited).await.message else {
            panic!("init first");
        };
        assert_eq!(init.status, pb::JobStatus::Pending as i32);
        assert_eq!(init.seq, 1, "the snapshot reflects the created event");
        assert_eq!(init.visibility, pb::WatchVisibility::ProgressOnly as i32);
        // Without events: the snapshot, then nothing until the stream ends.
        let request = pb::WatchJobRequest {
            job_id: job.clone(),
            without_events: true,
        };
        let mut quiet = events
            .watch_job(keyed(request, &space.producer))
            .await
            .unwrap()
            .into_inner();
        let Some(JobMessage::Init(init)) = next(&mut quiet).await.message else {
            panic!("init first");
        };
        assert_eq!(init.visibility, pb::WatchVisibility::Full as i32);
        let Some(SpaceMessage::Connected(connected)) = next(&mut space_stream).await.message else {
            panic!("connected first");
        };
        assert_eq!((connected.seq, connected.missed), (1, false));
        assert_eq!(connected.counts.unwrap().pending, 1);

        app.poll_one(&space).await;
        app.worker_call(&space, &job, "ack", json!({})).await;
        app.worker_call(
            &space,
            &job,
            "complete",
            json!({ "result": { "ok": true } }),
        )
        .await;
        for expected in [
            pb::JobEventType::Delivered,
            pb::JobEventType::Acked,
            pb::JobEventType::Completed,
        ] {
            let Some(JobMessage::Event(event)) = next(&mut limited).await.message else {
                panic!("an event");
            };
            assert_eq!(event.r#type, expected as i32);
            assert_eq!(event.data_json, None, "stripped for jobs:read:progress");
            let Some(SpaceMessage::Event(event)) = next(&mut space_stream).await.message else {
                panic!("an event");
            };
            assert_eq!(event.r#type, expected as i32);
            assert!(event.counts.is_some());
        }

        let nothing = tokio::time::timeout(Duration::from_millis(100), quiet.message()).await;
        assert!(nothing.is_err(), "no events on a stream without them: {nothing:?}");

        // Handshake refusals are gRPC status codes.
        let refused = events
            .watch_job(pb::WatchJobRequest {
                job_id: job.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let request = pb::WatchSpaceRequest {
            space_id: space.id.clone(),
            ..Default::default()
        };
        let refused = events
            .watch_space(keyed(request, &space.public_token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(refused.message(), "Missing required scope: jobs:read");
    }

    #[tokio::test]
    async fn a_grpc_watcher_that_stops_reading_is_ended_with_resource_exhausted() {
        let app = TestApp::spawn_with(Options {
            streams: StreamLimits {
                watcher_queue: 4,
                ..StreamLimits::default()
            },
            ..Options::default()
        })
        .await;
        let space = app.create_space().await;
        let job = app.create_job(&space, json!({ "name": "a" })).await;
        app.poll_one(&space).await;
        app.worker_call(&space, &job, "ack", json!({})).await;
        let request = pb::WatchSpaceRequest {
            space_id: space.id.clone(),
            ..Default::default()
        };
        let mut stalled = client(&app)
            .await
            .watch_space(keyed(request, &space.producer))
            .await
            .unwrap()
            .into_inner();
        let padding = "x".repeat(100 * 1024);
        for _ in 0..200 {
            let progress = json!({ "percent": 1, "pad": padding });
            let (status, _) = app.worker_call(&space, &job, "progress", progress).await;
            assert_eq!(status, StatusCode::OK);
        }
        let mut received = 0;
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(10), stalled.message()).await {
                Ok(Ok(Some(_))) => received += 1,
                Ok(Err(status)) => break status,
                other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
            }
        };
        assert_eq!(ended.code(), tonic::Code::ResourceExhausted);
        assert!(ended.message().contains("slow consumer"), "{ended:?}");
        assert!(received < 200, "ended before the backlog: {received}");
    }
}

/// Waits until the gateway's shared job feeds number `wanted`.
async fn job_feeds_reach(app: &TestApp, wanted: f64) {
    emit_testkit::metric_reaches(&app.http, &app.base, "emit_websocket_job_feeds", wanted).await;
}

/// Watchers of a job that present one credential share one core stream:
/// each still starts from its own snapshot, gets every later event once and
/// sees what its scope shows; the shared streams close with their watchers.
#[tokio::test]
async fn watchers_of_a_job_share_one_core_stream_per_credential() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let (mut limited, mut full) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        limited.push(app.watch_job(&job, &space.public_token).await);
        full.push(app.watch_job(&job, &space.producer).await);
    }
    for socket in limited.iter_mut().chain(&mut full) {
        let init = next_json(socket).await;
        assert_eq!((init["type"].as_str(), init["status"].as_str()), (Some("init"), Some("pending")));
    }
    job_feeds_reach(&app, 2.0).await;

    app.poll_one(&space).await;
    app.worker_call(&space, &job, "ack", json!({})).await;
    app.worker_call(&space, &job, "progress", json!({ "percent": 50 }))
        .await;
    // Joining later: its own snapshot, then only what follows it.
    let mut late = app.watch_job(&job, &space.public_token).await;
    let init = next_json(&mut late).await;
    assert_eq!((init["type"].as_str(), init["status"].as_str()), (Some("init"), Some("running")));
    assert_eq!(init["progress"]["percent"], 50);
    let result = json!({ "result": { "url": "s3://out" } });
    app.worker_call(&space, &job, "complete", result).await;

    let expected = ["delivered", "acked", "progress", "completed"];
    for socket in &mut full {
        let events = read_until(socket, "completed").await;
        assert_eq!(types(&events), expected);
        assert_eq!(events[2]["data"]["percent"], 50);
        assert_eq!(events[3]["data"], json!({ "url": "s3://out" }));
    }
    for socket in &mut limited {
        let events = read_until(socket, "completed").await;
        assert_eq!(types(&events), expected);
        assert_eq!(events[2]["data"]["percent"], 50, "progress shows at every scope");
        assert!(events[3].get("data").is_none(), "{}", events[3]);
    }
    let events = read_until(&mut late, "completed").await;
    assert_eq!(types(&events), ["completed"]);
    job_feeds_reach(&app, 2.0).await;

    drop((limited, full, late));
    job_feeds_reach(&app, 0.0).await;
}

#[tokio::test]
async fn revoking_a_key_closes_the_streams_it_holds_open() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let (status, token) = app
        .post(
            &format!("/api/v1/spaces/{}/tokens", space.id),
            ADMIN_KEY,
            json!({ "name": "dashboard", "scopes": ["jobs:read"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let key = token["key"].as_str().unwrap();
    let mut job_stream = app.watch_job(&job, key).await;
    let mut space_stream = app.watch_space(&space.id, key, "").await;
    let mut unaffected = app.watch_job(&job, &space.producer).await;
    next_json(&mut job_stream).await;
    next_json(&mut space_stream).await;
    next_json(&mut unaffected).await;

    let (status, _) = app
        .request(
            "DELETE",
            &format!(
                "/api/v1/spaces/{}/tokens/{}",
                space.id,
                token["id"].as_str().unwrap()
            ),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for socket in [&mut job_stream, &mut space_stream] {
        let close = next_close(socket).await.expect("a close frame");
        assert_eq!(close.code, CloseCode::Policy);
        assert_eq!(close.reason.as_str(), "API key revoked");
    }
    assert!(stays_quiet(&mut unaffected, Duration::from_millis(200)).await);
}

/// A replay is read in pages (256 events, or 4 MiB of data): a reconnect
/// that missed more than a page of events, some of them near 1 MiB, gets
/// every one in order, with exact counts, then the live events.
#[tokio::test]
async fn a_long_replay_arrives_whole_across_pages() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut stream = app.watch_space(&space.id, &space.producer, "").await;
    let connected = next_json(&mut stream).await;
    let instance = connected["streamInstanceId"].as_str().unwrap().to_owned();
    drop(stream);

    let big = "x".repeat(900 * 1024);
    let big_job = app.create_job(&space, json!({ "name": "big" })).await;
    app.poll_one(&space).await;
    app.worker_call(&space, &big_job, "ack", Value::Null).await;
    for percent in 0..10 {
        let (status, _) = app
            .worker_call(
                &space,
                &big_job,
                "progress",
                json!({ "percent": percent, "message": "m", "blob": big }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    app.create_bulk(&space, "bulk", 600).await;
    // created, delivered, acked, 10 progress, 600 created.
    let missed = 613;

    let resume = format!("&since=0&streamInstanceId={instance}");
    let mut stream = app.watch_space(&space.id, &space.producer, &resume).await;
    let connected = next_json(&mut stream).await;
    assert_eq!(connected["missed"], false, "{connected}");
    let replayed = read_space_events(&mut stream, 0, missed).await;
    let progress: Vec<&Value> = replayed
        .iter()
        .filter(|event| event["type"] == "progress")
        .collect();
    assert_eq!(progress.len(), 10);
    assert!(
        progress
            .iter()
            .all(|event| event["data"]["blob"].as_str().map(str::len) == Some(big.len())),
        "progress data arrives whole"
    );
    let last = replayed.last().unwrap();
    assert_eq!(counts_of(last)["pending"], 600);
    assert_eq!(counts_of(last)["running"], 1);
    app.create_job(&space, json!({ "name": "live" })).await;
    read_space_events(&mut stream, missed as u64, 1).await;
}
