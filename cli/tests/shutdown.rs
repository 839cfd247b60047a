//! Graceful stop on SIGTERM: requests in flight finish, nothing is leased
//! from the signal on, a worker may finish the job it holds, and nothing
//! acknowledged is lost.

use emit_testkit as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use emit_client::{Action, Incoming, Session, pb};
use serde_json::{Value, json};
use support::{ADMIN_KEY, Process};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_work_in_flight_leases_nothing_and_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("emit-sigterm-{}", std::process::id()));
    let database_url = format!("sqlite://{}/emit.db", dir.display());
    let mut server = Process::serve(&database_url, Some(ADMIN_KEY), &[]);
    let http = reqwest::Client::new();
    server.wait_http_ready(&http).await;
    let space: Value = send(
        http.post(format!("{}/api/v1/spaces", server.url))
            .json(&json!({ "name": "stop" })),
    )
    .await
    .json()
    .await
    .unwrap();
    let space_id = space["id"].as_str().unwrap().to_owned();
    let jobs_url = format!("{}/api/v1/spaces/{space_id}/jobs", server.url);
    let waiting: Vec<Value> = send(
        http.post(&jobs_url)
            .json(&json!([{ "name": "work" }, { "name": "work" }, { "name": "work" }])),
    )
    .await
    .json()
    .await
    .unwrap();

    // A worker with room for one holds one job, acked.
    let hello = pb::WorkerHello {
        space_id: space_id.clone(),
        names: vec!["work".into()],
        capacity: 1,
    };
    let grpc_url = server.grpc_url.clone().unwrap();
    let mut session = Session::connect(&grpc_url, ADMIN_KEY, hello).await.unwrap();
    let held = match next(&mut session).await {
        Incoming::Assignment(job) => job.id,
        other => panic!("expected an assignment, got {other:?}"),
    };
    let acked = session.report(&held, Action::Ack(pb::ReportAck {})).await;
    assert_eq!(acked.unwrap().code, 0);

    // In flight at the signal: a long poll for work nobody creates, and a
    // stream of creates.
    let poll = tokio::spawn(
        http.post(format!("{}/api/v1/spaces/{space_id}/jobs/poll", server.url))
            .header("x-api-key", ADMIN_KEY)
            .json(&json!({ "names": ["other"], "waitSeconds": 20 }))
            .send(),
    );
    let answered = Arc::new(AtomicUsize::new(0));
    let creates: Vec<_> = (0..50)
        .map(|n| {
            let request = http
                .post(&jobs_url)
                .header("x-api-key", ADMIN_KEY)
                .json(&json!({ "name": "late", "payload": { "n": n } }))
                .send();
            let answered = answered.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(n * 4)).await;
                let response = request.await;
                answered.fetch_add(1, Ordering::SeqCst);
                response
            })
        })
        .collect();
    // The signal comes once the poll waits and creates are flowing: some
    // answered, most still to come.
    support::metric_reaches(&http, &server.url, "emit_long_polls_waiting", 1.0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.load(Ordering::SeqCst) < 5 {
        assert!(Instant::now() < deadline, "creates are answered");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.terminate();
    let signalled = Instant::now();

    // The waiting poll answers at once, with nothing.
    let polled = poll.await.unwrap().expect("the poll is answered");
    assert_eq!(polled.status(), 200);
    assert_eq!(polled.json::<Value>().await.unwrap(), json!({ "jobs": [] }));
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "the poll did not wait out its 20 s"
    );

    // The worker finishes its job; it is not given another though two are
    // pending and it has room: the server says `drained` and ends the stream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let complete = Action::Complete(pb::ReportComplete { result_json: None });
    let result = session.report(&held, complete).await.unwrap();
    assert_eq!(result.code, 0, "complete refused: {}", result.message);
    // Anything pushed meanwhile would come first.
    assert!(matches!(next(&mut session).await, Incoming::Drained(_)));

    // Creates sent before the signal were answered 201; any later ones were
    // refused at the door, never half done.
    let mut acknowledged = Vec::new();
    for create in creates {
        if let Ok(response) = create.await.unwrap() {
            assert_eq!(response.status(), 201, "a create in flight at SIGTERM");
            let job: Value = response.json().await.unwrap();
            acknowledged.push(job["id"].as_str().unwrap().to_owned());
        }
    }
    assert!(!acknowledged.is_empty(), "some creates were in flight");
    let status = server
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the server exits");
    assert!(status.success(), "exit status {status}");

    // After a restart: every acknowledged job is there, the finished job is
    // completed, and the waiting jobs were never leased.
    let server = Process::serve(&database_url, Some(ADMIN_KEY), &[]);
    server.wait_http_ready(&http).await;
    for id in &acknowledged {
        let job = get_job(&http, &server.url, id).await;
        assert_eq!(job["status"], "pending", "job {id}");
    }
    assert_eq!(
        get_job(&http, &server.url, &held).await["status"],
        "completed"
    );
    let pending = waiting
        .iter()
        .map(|job| job["id"].as_str().unwrap())
        .filter(|id| *id != held)
        .collect::<Vec<_>>();
    assert_eq!(pending.len(), 2);
    for id in pending {
        let job = get_job(&http, &server.url, id).await;
        assert_eq!(
            job["status"], "pending",
            "job {id} was leased after SIGTERM"
        );
        assert_eq!(
            job["deliveredAt"],
            Value::Null,
            "job {id} was leased after SIGTERM"
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    let response = request.header("x-api-key", ADMIN_KEY).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response
}

async fn get_job(http: &reqwest::Client, base: &str, id: &str) -> Value {
    send(http.get(format!("{base}/api/v1/jobs/{id}")))
        .await
        .json()
        .await
        .unwrap()
}

async fn next(session: &mut Session) -> Incoming {
    tokio::time::timeout(Duration::from_secs(10), session.next())
        .await
        .expect("the server answers within 10 s")
        .expect("the stream is healthy")
        .expect("the stream is open")
}
