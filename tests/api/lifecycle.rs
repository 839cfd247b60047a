use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, event_types};

#[tokio::test]
async fn the_quick_start_worker_loop_runs_a_job_to_completion() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let id = app
        .create_job(
            &space,
            json!({ "name": "send-email", "payload": { "to": "u@example.com" } }),
        )
        .await;

    let jobs = app.poll(&space, json!({ "count": 5 })).await;
    assert_eq!(jobs.len(), 1);
    let delivery = &jobs[0];
    assert_eq!(delivery["id"], id.as_str());
    assert_eq!(delivery["payload"], json!({ "to": "u@example.com" }));
    for field in [
        "name",
        "timeoutSeconds",
        "maxRetries",
        "attemptNumber",
        "createdAt",
    ] {
        assert!(delivery.get(field).is_some(), "poll carries {field}");
    }
    assert!(
        app.poll(&space, json!({ "count": 5 })).await.is_empty(),
        "a delivered job is not polled again"
    );

    let (status, acked) = app.worker_call(&space, &id, "ack", json!(null)).await;
    assert_eq!(
        (status, acked["status"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    let progress = json!({ "percent": 65, "message": "Encoding video", "subProgress": { "download": { "percent": 100, "message": "Source fetched" } } });
    assert_eq!(
        app.worker_call(&space, &id, "progress", progress.clone())
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        app.worker_call(&space, &id, "checkpoint", json!({ "offset": 42 }))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        app.worker_call(&space, &id, "event", json!({ "kind": "note" }))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        app.worker_call(&space, &id, "keepalive", json!({})).await.0,
        StatusCode::OK
    );
    let (_, read) = app
        .get(&format!("/api/v1/jobs/{id}/progress"), &space.public_token)
        .await;
    assert_eq!(read["progress"], progress);

    let (status, done) = app
        .worker_call(
            &space,
            &id,
            "complete",
            json!({ "result": { "sent": true } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["status"], "completed");

    let job = app.job(&space, &id).await;
    assert_eq!(job["result"], json!({ "sent": true }));
    assert_eq!(job["checkpoint"], json!({ "offset": 42 }));
    for field in ["deliveredAt", "startedAt", "completedAt"] {
        assert!(job[field].is_string(), "{field} is set");
    }
    assert_eq!(
        event_types(&job),
        [
            "created",
            "delivered",
            "acked",
            "progress",
            "checkpoint",
            "event",
            "completed"
        ]
    );
    let events = job["events"].as_array().unwrap();
    assert_eq!(events[2]["previousStatus"], "delivered");
    assert_eq!(events[6]["data"], json!({ "sent": true }));
    let seqs: Vec<u64> = events
        .iter()
        .map(|event| event["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{seqs:?}"
    );
}

#[tokio::test]
async fn bad_worker_input_is_refused_with_400() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let id = app.create_job(&space, json!({ "name": "a" })).await;
    app.poll_one(&space).await;
    app.worker_call(&space, &id, "ack", json!({})).await;
    let cases = [
        (
            json!({ "percent": 101 }),
            "percent must be a number from 0 to 100",
        ),
        (json!({ "message": "no percent" }), "percent is required"),
        (
            json!({ "percent": 5, "message": "" }),
            "message must be a non-empty string",
        ),
        (
            json!({ "percent": 5, "subProgress": 3 }),
            "subProgress must be an object keyed by stage",
        ),
    ];
    for (body, expected) in cases {
        let (status, error) = app.worker_call(&space, &id, "progress", body).await;
        assert_eq!(
            (status, error),
            (StatusCode::BAD_REQUEST, json!({ "error": expected }))
        );
    }
    let (status, _) = app
        .worker_call(&space, &id, "ack", json!({ "attemptNumber": "zero" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, error) = app.worker_call(&space, "not-a-job", "ack", json!({})).await;
    assert_eq!(
        (status, error),
        (StatusCode::NOT_FOUND, json!({ "error": "job not found" }))
    );
}

#[tokio::test]
async fn poll_filters_by_name_with_the_documented_precedence_and_limits() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let path = format!("/api/v1/spaces/{}/jobs", space.id);
    let jobs: Vec<Value> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| json!({ "name": name }))
        .collect();
    app.post(&path, &space.producer, Value::Array(jobs)).await;

    let names = |jobs: Vec<Value>| {
        jobs.iter()
            .map(|job| job["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    // `types` wins over `type`, `names` and `name`.
    let got = app
        .poll(
            &space,
            json!({ "count": 5, "types": ["b"], "type": "a", "names": ["c"], "name": "d" }),
        )
        .await;
    assert_eq!(names(got), ["b"]);
    let got = app
        .poll(
            &space,
            json!({ "count": 5, "type": ["a", "c"], "name": "d" }),
        )
        .await;
    assert_eq!(names(got), ["a", "c"]);
    let got = app.poll(&space, json!({ "count": 5, "name": "d" })).await;
    assert_eq!(names(got), ["d"]);
    assert!(app.poll(&space, json!({ "count": 5 })).await.is_empty());

    let poll = format!("/api/v1/spaces/{}/jobs/poll", space.id);
    let (status, error) = app.post(&poll, &space.worker, json!({ "count": 51 })).await;
    assert_eq!(
        (status, error),
        (
            StatusCode::BAD_REQUEST,
            json!({ "error": "count must be between 1 and 50" })
        )
    );
    let (status, _) = app
        .post(&poll, &space.worker, json!({ "types": [1] }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn failures_retry_with_the_checkpoint_and_end_dead() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let id = app
        .create_job(&space, json!({ "name": "flaky", "maxRetries": 1 }))
        .await;

    app.poll_one(&space).await;
    app.worker_call(&space, &id, "ack", json!({})).await;
    app.worker_call(&space, &id, "checkpoint", json!({ "page": 7 }))
        .await;
    let (status, retried) = app
        .worker_call(&space, &id, "fail", json!({ "error": "connection reset" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            retried["status"].as_str(),
            retried["attemptNumber"].as_u64()
        ),
        (Some("pending"), Some(1))
    );

    let second = app.poll_one(&space).await;
    assert_eq!(second["attemptNumber"], 1);
    assert_eq!(
        second["checkpoint"],
        json!({ "page": 7 }),
        "a retry can resume"
    );
    app.worker_call(&space, &id, "ack", json!({ "attemptNumber": 1 }))
        .await;
    let (_, dead) = app
        .worker_call(&space, &id, "fail", json!({ "error": "still broken" }))
        .await;
    assert_eq!(dead["status"], "dead");

    let job = app.job(&space, &id).await;
    let events = job["events"].as_array().unwrap();
    let retried = events
        .iter()
        .find(|event| event["type"] == "retried")
        .unwrap();
    assert_eq!(
        retried["data"],
        json!({ "error": "connection reset", "attemptNumber": 1 })
    );
    assert_eq!(retried["status"], "pending");
    let dead = events.last().unwrap();
    assert_eq!(
        (dead["type"].as_str(), &dead["data"]),
        (Some("dead"), &json!({ "error": "still broken" }))
    );
}

#[tokio::test]
async fn retry_backoff_delays_the_next_attempt() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let id = app
        .create_job(
            &space,
            json!({ "name": "a", "retryBackoff": { "type": "fixed", "delaySeconds": 1 } }),
        )
        .await;
    app.poll_one(&space).await;
    let failed_at = std::time::Instant::now();
    app.worker_call(&space, &id, "fail", json!({ "error": "x" }))
        .await;
    assert!(
        app.poll(&space, json!({})).await.is_empty(),
        "not before the backoff"
    );
    assert_eq!(app.poll_until_one(&space).await["attemptNumber"], 1);
    // The backoff began when the failure was written, after `failed_at`
    // (less the server clock's millisecond rounding).
    assert!(failed_at.elapsed() >= std::time::Duration::from_millis(990));
}

#[tokio::test]
async fn calls_in_the_wrong_state_get_409() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let id = app.create_job(&space, json!({ "name": "a" })).await;
    let (status, error) = app.worker_call(&space, &id, "ack", json!({})).await;
    assert_eq!(
        (status, error),
        (
            StatusCode::CONFLICT,
            json!({ "error": "cannot ack a pending job" })
        )
    );
    app.poll_one(&space).await;
    let (status, _) = app
        .worker_call(&space, &id, "progress", json!({ "percent": 1 }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "progress needs an ack first");
    app.worker_call(&space, &id, "complete", json!({})).await;
    let (status, error) = app
        .worker_call(&space, &id, "fail", json!({ "error": "late" }))
        .await;
    assert_eq!(
        (status, error),
        (
            StatusCode::CONFLICT,
            json!({ "error": "cannot fail a completed job" })
        )
    );
}

#[tokio::test]
async fn stale_attempts_and_leases_are_fenced() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let id = app
        .create_job(&space, json!({ "name": "a", "maxRetries": 2 }))
        .await;
    let first = app.poll_one(&space).await;
    app.worker_call(&space, &id, "ack", json!({})).await;
    app.worker_call(&space, &id, "fail", json!({ "error": "x" }))
        .await;
    let second = app.poll_one(&space).await;
    assert_ne!(first["leaseId"], second["leaseId"]);

    let (status, error) = app
        .worker_call(&space, &id, "ack", json!({ "attemptNumber": 0 }))
        .await;
    assert_eq!(
        (status, error),
        (
            StatusCode::CONFLICT,
            json!({ "error": "stale attempt 0: job is on attempt 1" })
        )
    );
    let (status, _) = app
        .worker_call(&space, &id, "ack", json!({ "leaseId": first["leaseId"] }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, job) = app
        .worker_call(
            &space,
            &id,
            "ack",
            json!({ "attemptNumber": 1, "leaseId": second["leaseId"] }),
        )
        .await;
    assert_eq!(
        (status, job["status"].as_str()),
        (StatusCode::OK, Some("running"))
    );
}

#[tokio::test]
async fn kill_stops_jobs_in_any_live_state() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let pending = app.create_job(&space, json!({ "name": "a" })).await;
    let in_an_hour = chrono_in(3600);
    let scheduled = app
        .create_job(&space, json!({ "name": "s", "scheduledFor": in_an_hour }))
        .await;
    let running = app.create_job(&space, json!({ "name": "r" })).await;
    app.poll(&space, json!({ "name": "r" })).await;
    app.worker_call(&space, &running, "ack", json!({})).await;

    for id in [&pending, &scheduled, &running] {
        let (status, job) = app
            .post(
                &format!("/api/v1/jobs/{id}/kill"),
                &space.producer,
                json!({ "reason": "operator" }),
            )
            .await;
        assert_eq!(
            (status, job["status"].as_str()),
            (StatusCode::OK, Some("killed"))
        );
        assert_eq!(job["killReason"], "operator");
    }
    let (status, _) = app
        .post(
            &format!("/api/v1/jobs/{pending}/kill"),
            &space.producer,
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = app
        .worker_call(&space, &running, "complete", json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a killed job's worker cannot complete it"
    );
    let job = app.job(&space, &running).await;
    assert_eq!(
        job["events"].as_array().unwrap().last().unwrap()["data"],
        json!({ "reason": "operator" })
    );
}

#[tokio::test]
async fn claim_takes_exactly_that_pending_job_once() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    app.create_job(&space, json!({ "name": "first" })).await;
    let wanted = app.create_job(&space, json!({ "name": "second" })).await;
    let (status, claimed) = app.worker_call(&space, &wanted, "claim", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (claimed["id"].as_str(), claimed["name"].as_str()),
        (Some(wanted.as_str()), Some("second"))
    );
    assert!(claimed["leaseId"].is_string());
    let (status, error) = app.worker_call(&space, &wanted, "claim", json!({})).await;
    assert_eq!(
        (status, error),
        (
            StatusCode::CONFLICT,
            json!({ "error": "cannot deliver a delivered job" })
        )
    );
}

#[tokio::test]
async fn concurrent_pollers_never_share_a_job() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let path = format!("/api/v1/spaces/{}/jobs", space.id);
    let total = 600;
    for _ in 0..(total / 200) {
        let jobs: Vec<Value> = (0..200).map(|_| json!({ "name": "race" })).collect();
        app.post(&path, &space.producer, Value::Array(jobs)).await;
    }
    let app = std::sync::Arc::new(app);
    let space = std::sync::Arc::new(space);
    let mut pollers = Vec::new();
    for _ in 0..12 {
        let (app, space) = (app.clone(), space.clone());
        pollers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let jobs = app.poll(&space, json!({ "count": 7 })).await;
                if jobs.is_empty() {
                    return mine;
                }
                mine.extend(
                    jobs.into_iter()
                        .map(|job| job["id"].as_str().unwrap().to_owned()),
                );
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut delivered = 0;
    for poller in pollers {
        for id in poller.await.unwrap() {
            delivered += 1;
            assert!(seen.insert(id.clone()), "job {id} was delivered twice");
        }
    }
    assert_eq!(delivered, total);
}

pub fn chrono_in(seconds: i64) -> String {
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(seconds as u64);
    let millis = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    iso_millis(millis)
}

pub fn iso_millis(millis: i64) -> String {
    // Civil-from-days (Howard Hinnant), to avoid a date crate in tests.
    let days = millis.div_euclid(86_400_000);
    let rem = millis.rem_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}
