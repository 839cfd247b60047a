//! Push dispatch over WorkerService.OpenSession: real bidirectional gRPC
//! streams against the real server.

use std::time::Duration;

use emit_proto::v1 as pb;
use emit_proto::v1::worker_service_client::WorkerServiceClient;
use emit_client::{Action, Incoming, Session};
use serde_json::json;

use crate::helpers::{Space, TestApp, event_types};

/// A session with the test's patience: every wait is bounded, every
/// failure a panic.
struct Worker(Session);

impl Worker {
    async fn open(app: &TestApp, key: &str, hello: pb::WorkerHello) -> Result<Self, tonic::Status> {
        let mut client = WorkerServiceClient::connect(app.grpc_url.clone())
            .await
            .unwrap();
        Session::open(&mut client, key, hello).await.map(Self)
    }

    /// How the stream goes on: a message, its end (`None`) or its error.
    async fn end(&mut self) -> Result<Option<Incoming>, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(10), self.0.next())
            .await
            .expect("a message or the end within 10s")
    }

    async fn next(&mut self) -> Incoming {
        self.end()
            .await
            .expect("stream healthy")
            .expect("stream open")
    }

    async fn assignment(&mut self) -> pb::Delivery {
        match self.next().await {
            Incoming::Assignment(delivery) => delivery,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    /// Sends a report without waiting for its result; returns its id.
    async fn send_report(&mut self, job_id: &str, action: Action) -> u64 {
        self.0.send(job_id, action).await.unwrap()
    }

    /// Sends a report and waits for its result.
    async fn report(&mut self, job_id: &str, action: Action) -> pb::ReportResult {
        tokio::time::timeout(Duration::from_secs(10), self.0.report(job_id, action))
            .await
            .expect("a result within 10s")
            .expect("stream healthy")
    }

    /// Asserts that nothing arrives for `wait`.
    async fn expect_quiet(&mut self, wait: Duration, why: &str) {
        if let Some(early) = self.0.held().next() {
            panic!("{why}: got {early:?}");
        }
        if let Ok(heard) = tokio::time::timeout(wait, self.0.next()).await {
            panic!("{why}: got {heard:?}");
        }
    }
}

fn hello(space: &Space, capacity: u32, names: &[&str]) -> pb::WorkerHello {
    pb::WorkerHello {
        space_id: space.id.clone(),
        names: names.iter().map(|n| n.to_string()).collect(),
        capacity,
    }
}

fn complete(result: serde_json::Value) -> Action {
    Action::Complete(pb::ReportComplete {
        result_json: Some(result.to_string()),
    })
}

#[tokio::test]
async fn jobs_are_pushed_while_capacity_remains_and_reports_are_answered() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut worker = Worker::open(&app, &space.worker, hello(&space, 2, &[]))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.create_job(&space, json!({ "name": "a" })).await);
    }
    let first = worker.assignment().await;
    let second = worker.assignment().await;
    assert!(!first.lease_id.is_empty());
    worker
        .expect_quiet(Duration::from_millis(300), "capacity 2")
        .await;

    let acked = worker
        .report(&first.id, Action::Ack(pb::ReportAck {}))
        .await;
    assert_eq!(acked.code, 0, "{acked:?}");
    assert_eq!(acked.job.unwrap().status, pb::JobStatus::Running as i32);
    let progress = Action::Progress(pb::ReportProgress {
        progress_json: json!({ "percent": 50 }).to_string(),
    });
    assert_eq!(worker.report(&first.id, progress).await.code, 0);
    let logs = Action::Logs(pb::ReportLogs {
        lines: vec![pb::LogLine {
            level: "info".into(),
            message: "hi".into(),
        }],
    });
    assert_eq!(worker.report(&first.id, logs).await.code, 0);
    let done = worker.report(&first.id, complete(json!({ "ok": 1 }))).await;
    assert_eq!(done.code, 0);
    // Room freed: the third job arrives.
    let third = worker.assignment().await;
    let mut pushed = [first.id.clone(), second.id, third.id.clone()];
    pushed.sort();
    assert_eq!(pushed.to_vec(), ids);

    // Bad input and wrong state are answered, not fatal.
    let invalid = Action::Progress(pb::ReportProgress {
        progress_json: "{}".into(),
    });
    let refused = worker.report(&third.id, invalid).await;
    assert_eq!(refused.code, tonic::Code::InvalidArgument as i32);
    assert_eq!(refused.message, "percent is required");
    let again = worker.report(&first.id, complete(json!(null))).await;
    assert_eq!(again.code, tonic::Code::FailedPrecondition as i32);

    let job = app.job(&space, &first.id).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"], json!({ "ok": 1 }));
}

#[tokio::test]
async fn a_dropped_stream_releases_delivered_jobs_and_leaves_running_ones() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut worker = Worker::open(&app, &space.worker, hello(&space, 2, &[]))
        .await
        .unwrap();
    let running = app.create_job(&space, json!({ "name": "a" })).await;
    let first = worker.assignment().await;
    assert_eq!(first.id, running);
    worker.report(&running, Action::Ack(pb::ReportAck {})).await;
    let delivered = app.create_job(&space, json!({ "name": "a" })).await;
    assert_eq!(worker.assignment().await.id, delivered);
    drop(worker);

    let job = app.wait_for_status(&space, &delivered, "pending").await;
    assert_eq!(event_types(&job), ["created", "delivered", "released"]);
    assert_eq!(job["attemptNumber"], 0, "no attempt used");
    assert_eq!(app.job(&space, &running).await["status"], "running");
    // Another worker picks the released job up at once.
    let mut next = Worker::open(&app, &space.worker, hello(&space, 1, &[]))
        .await
        .unwrap();
    assert_eq!(next.assignment().await.id, delivered);
}

#[tokio::test]
async fn a_killed_job_is_cancelled_on_its_worker_and_drain_finishes_held_work() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut worker = Worker::open(&app, &space.worker, hello(&space, 5, &["wanted"]))
        .await
        .unwrap();
    let doomed = app.create_job(&space, json!({ "name": "wanted" })).await;
    worker.assignment().await;
    worker.report(&doomed, Action::Ack(pb::ReportAck {})).await;
    app.post(
        &format!("/api/v1/jobs/{doomed}/kill"),
        &space.producer,
        json!({}),
    )
    .await;
    match worker.next().await {
        Incoming::Cancellation(cancel) => {
            assert_eq!(cancel.job_id, doomed);
            assert_eq!(cancel.reason, "killed");
        }
        other => panic!("expected a cancellation, got {other:?}"),
    }

    // Names filter: other names are not pushed.
    app.create_job(&space, json!({ "name": "other" })).await;
    let kept = app.create_job(&space, json!({ "name": "wanted" })).await;
    assert_eq!(worker.assignment().await.id, kept);
    worker.0.drain().await.unwrap();
    // The session takes a worker's messages in order, so once the ack
    // after the drain is answered, the drain has been taken.
    let acked = worker.report(&kept, Action::Ack(pb::ReportAck {})).await;
    assert_eq!(acked.code, 0);
    app.create_job(&space, json!({ "name": "wanted" })).await;
    worker
        .expect_quiet(Duration::from_millis(300), "draining: nothing new")
        .await;
    assert_eq!(worker.report(&kept, complete(json!(1))).await.code, 0);
    assert!(matches!(worker.next().await, Incoming::Drained(_)));
    let ended = worker.end().await;
    assert!(matches!(ended, Ok(None)), "the stream ends after drained");
}

#[tokio::test]
async fn an_execution_timeout_cancels_and_the_next_worker_gets_the_retry() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut worker = Worker::open(&app, &space.worker, hello(&space, 1, &[]))
        .await
        .unwrap();
    let job = app
        .create_job(&space, json!({ "name": "a", "timeoutSeconds": 1 }))
        .await;
    let first = worker.assignment().await;
    worker.report(&job, Action::Ack(pb::ReportAck {})).await;
    match worker.next().await {
        Incoming::Cancellation(cancel) => {
            assert_eq!(cancel.lease_id, first.lease_id);
            assert_eq!(cancel.reason, "the attempt timed out");
        }
        other => panic!("expected a cancellation, got {other:?}"),
    }
    // The retry comes back to this (now free) worker under a new lease; the
    // old lease is fenced by the server.
    let retry = worker.assignment().await;
    assert_eq!((retry.id.as_str(), retry.attempt_number), (job.as_str(), 1));
    assert_ne!(retry.lease_id, first.lease_id);
}

#[tokio::test]
async fn sessions_are_refused_without_scope_or_hello_and_share_the_work() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let refused = Worker::open(&app, &space.public_token, hello(&space, 1, &[]))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(refused.message(), "Missing required scope: jobs:poll");
    let refused = Worker::open(&app, &space.worker, hello(&space, 0, &[]))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let mut a = Worker::open(&app, &space.worker, hello(&space, 5, &[]))
        .await
        .unwrap();
    let mut b = Worker::open(&app, &space.worker, hello(&space, 5, &[]))
        .await
        .unwrap();
    let jobs: Vec<_> = (0..10).map(|_| json!({ "name": "a" })).collect();
    app.post(
        &format!("/api/v1/spaces/{}/jobs", space.id),
        &space.producer,
        json!(jobs),
    )
    .await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        assert!(seen.insert(a.assignment().await.id));
        assert!(seen.insert(b.assignment().await.id));
    }
    assert_eq!(seen.len(), 10, "each job pushed to exactly one worker");
}

#[tokio::test]
async fn revoking_the_key_ends_the_session_and_releases_its_jobs() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let (_, token) = app
        .post(
            &format!("/api/v1/spaces/{}/tokens", space.id),
            crate::helpers::ADMIN_KEY,
            json!({ "name": "w", "scopes": ["jobs:worker"] }),
        )
        .await;
    let key = token["key"].as_str().unwrap();
    let mut worker = Worker::open(&app, key, hello(&space, 1, &[]))
        .await
        .unwrap();
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    worker.assignment().await;
    app.request(
        "DELETE",
        &format!(
            "/api/v1/spaces/{}/tokens/{}",
            space.id,
            token["id"].as_str().unwrap()
        ),
        Some(crate::helpers::ADMIN_KEY),
        None,
    )
    .await;
    let ended = worker.end().await.expect_err("ended with a status");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated);
    assert_eq!(ended.message(), "API key revoked");
    let released = app.wait_for_status(&space, &job, "pending").await;
    assert_eq!(event_types(&released).last().unwrap(), "released");
}

// Multi-threaded, as the server runs: on one thread, spawned reports would
// run in the order they were spawned and an ordering bug would not show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_about_one_job_apply_in_the_order_they_were_sent() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut worker = Worker::open(&app, &space.worker, hello(&space, 50, &[]))
        .await
        .unwrap();
    let ids: Vec<String> = futures_util::future::join_all(
        (0..50).map(|_| app.create_job(&space, json!({ "name": "ordered" }))),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..ids.len() {
        held.push(worker.assignment().await.id);
    }
    // Ack, progress and complete for every job, sent without waiting.
    for id in &held {
        let progress = Action::Progress(pb::ReportProgress {
            progress_json: json!({ "percent": 50 }).to_string(),
        });
        for action in [Action::Ack(pb::ReportAck {}), progress, complete(json!({}))] {
            worker.send_report(id, action).await;
        }
    }
    let mut answered = 0;
    while answered < held.len() * 3 {
        match worker.next().await {
            Incoming::Result(result) => {
                assert_eq!(result.code, 0, "{result:?}");
                answered += 1;
            }
            Incoming::Assignment(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    for id in &ids {
        let job = app.job(&space, id).await;
        assert_eq!(job["status"], "completed");
        assert_eq!(job["progress"]["percent"], 50, "{job}");
        let types = event_types(&job);
        assert_eq!(types, ["created", "delivered", "acked", "progress", "completed"]);
    }
}

#[tokio::test]
async fn reports_sent_together_each_get_their_own_answer() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut worker = Worker::open(&app, &space.worker, hello(&space, 1, &[]))
        .await
        .unwrap();
    let id = app.create_job(&space, json!({ "name": "together" })).await;
    assert_eq!(worker.assignment().await.id, id);
    let progress = |percent: serde_json::Value| {
        Action::Progress(pb::ReportProgress {
            progress_json: json!({ "percent": percent }).to_string(),
        })
    };
    let logs = Action::Logs(pb::ReportLogs {
        lines: vec![pb::LogLine {
            level: "info".into(),
            message: "between".into(),
        }],
    });
    // Sent without waiting, so the session takes them up together; refused
    // ones in the middle must not stop or undo the others.
    let sent = [
        (Action::Ack(pb::ReportAck {}), tonic::Code::Ok),
        (progress(json!("half")), tonic::Code::InvalidArgument),
        (progress(json!(40)), tonic::Code::Ok),
        (logs, tonic::Code::Ok),
        (complete(json!({ "n": 1 })), tonic::Code::Ok),
        (complete(json!({ "n": 2 })), tonic::Code::FailedPrecondition),
        (progress(json!(90)), tonic::Code::FailedPrecondition),
    ];
    let mut expected = std::collections::HashMap::new();
    for (action, code) in sent {
        let request_id = worker.send_report(&id, action).await;
        expected.insert(request_id, code as i32);
    }
    while !expected.is_empty() {
        match worker.next().await {
            Incoming::Result(result) => {
                let code = expected.remove(&result.request_id).expect("one answer each");
                assert_eq!(result.code, code, "{result:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let job = app.job(&space, &id).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"], json!({ "n": 1 }));
    assert_eq!(job["progress"]["percent"], 40, "{job}");
    assert_eq!(
        event_types(&job),
        ["created", "delivered", "acked", "progress", "completed"]
    );
    let (status, logs) = app
        .get(&format!("/api/v1/jobs/{id}/logs"), &space.producer)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(logs["lines"][0]["message"], "between", "{logs}");
}

#[tokio::test]
async fn a_session_with_a_name_filter_past_its_bound_is_refused_at_hello() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let names: Vec<String> = (0..40_000).map(|i| format!("n{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let Err(refused) = Worker::open(&app, &space.worker, hello(&space, 4, &names)).await else {
        panic!("refused");
    };
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(refused.message(), "names must list at most 100 job names");
}

#[tokio::test]
async fn a_stream_that_never_says_hello_is_ended() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    // Below the client: a stream that sends nothing at all.
    let (_send, outgoing) = tokio::sync::mpsc::channel::<pb::OpenSessionRequest>(1);
    let outgoing = tokio_stream::wrappers::ReceiverStream::new(outgoing);
    let mut request = tonic::Request::new(outgoing);
    request
        .metadata_mut()
        .insert("x-api-key", space.worker.parse().unwrap());
    let mut client = WorkerServiceClient::connect(app.grpc_url.clone())
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        match client.open_session(request).await {
            Err(status) => status,
            Ok(response) => response
                .into_inner()
                .message()
                .await
                .expect_err("no message before the refusal"),
        }
    })
    .await
    .expect("the server ends the stream");
    assert_eq!(ended.code(), tonic::Code::InvalidArgument);
    assert!(ended.message().contains("hello"), "{}", ended.message());
}

#[tokio::test]
async fn reports_on_a_session_count_against_the_keys_rate_limit() {
    let app = TestApp::spawn_with_rate_limit(Some(100)).await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let mut worker = Worker::open(&app, &space.worker, hello(&space, 1, &[]))
        .await
        .unwrap();
    assert_eq!(worker.assignment().await.id, job);
    let keepalive = || Action::Keepalive(pb::ReportKeepalive {});
    for _ in 0..300 {
        worker.send_report(&job, keepalive()).await;
    }
    let mut limited = 0;
    let mut answered = 0;
    while answered < 300 {
        if let Incoming::Result(result) = worker.next().await {
            answered += 1;
            if result.code == tonic::Code::ResourceExhausted as i32 {
                limited += 1;
            }
        }
    }
    assert!(limited >= 150, "{limited} of 300 reports refused at 100/s");
}

#[tokio::test]
async fn one_key_holds_a_bounded_number_of_sessions() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut sessions = Vec::new();
    for _ in 0..100 {
        sessions.push(
            Worker::open(&app, &space.worker, hello(&space, 1, &[]))
                .await
                .unwrap(),
        );
    }
    let Err(refused) = Worker::open(&app, &space.worker, hello(&space, 1, &[])).await else {
        panic!("the 101st session is refused");
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    // Another key of the same space is not affected.
    let other = app.token(&space.id, &["jobs:worker"]).await;
    Worker::open(&app, &other, hello(&space, 1, &[]))
        .await
        .unwrap();
    // A closed session gives its slot back.
    drop(sessions.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Worker::open(&app, &space.worker, hello(&space, 1, &[])).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                assert!(std::time::Instant::now() < deadline, "the slot came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A session is handed the ready job of the highest priority first, even
/// when a backlog was created before it.
#[tokio::test]
async fn a_session_gets_the_highest_priority_ready_job_first() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    app.create_bulk(&space, "bulk", 50).await;
    let urgent = app
        .create_job(&space, json!({ "name": "urgent", "priority": 100 }))
        .await;
    let mut worker = Worker::open(&app, &space.worker, hello(&space, 1, &[]))
        .await
        .unwrap();
    let first = worker.assignment().await;
    assert_eq!((first.id.as_str(), first.priority), (urgent.as_str(), 100));
    worker.report(&first.id, complete(json!({}))).await;
    // While the session is busy, a later urgent job still jumps the queue.
    let second_urgent = app
        .create_job(&space, json!({ "name": "urgent", "priority": 5 }))
        .await;
    let next = worker.assignment().await;
    if next.id != second_urgent {
        // The completion's commit may have leased the next job before the
        // second urgent one existed; the one after must be it.
        assert_eq!(next.name, "bulk");
        worker.report(&next.id, complete(json!({}))).await;
        assert_eq!(worker.assignment().await.id, second_urgent);
    }
}

/// A session of a paused space is handed nothing; a resume hands it the
/// jobs the pause held.
#[tokio::test]
async fn a_session_gets_nothing_while_its_space_is_paused() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let pause = format!("/api/v1/spaces/{}/pause", space.id);
    let (status, _) = app.post(&pause, crate::helpers::ADMIN_KEY, json!({})).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let job = app.create_job(&space, json!({ "name": "held" })).await;
    let mut worker = Worker::open(&app, &space.worker, hello(&space, 2, &[]))
        .await
        .unwrap();
    worker
        .expect_quiet(Duration::from_millis(1500), "a paused space hands out nothing")
        .await;
    let resume = format!("/api/v1/spaces/{}/resume", space.id);
    let (status, _) = app.post(&resume, crate::helpers::ADMIN_KEY, json!({})).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(worker.assignment().await.id, job);
}
