//! Operator actions and retention: retry, delete, and the pruning of
//! finished jobs, against the real server.

use std::time::{Duration, Instant};

use emit_core::retention::{RetentionConfig, RetentionPolicy};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, Options, Space, TestApp, event_types, next_json};

/// A job that ran once and failed for good.
async fn dead_job(app: &TestApp, space: &Space) -> String {
    let job = app
        .create_job(space, json!({ "name": "fragile", "maxRetries": 0 }))
        .await;
    app.poll_one(space).await;
    let (status, failed) = app
        .worker_call(space, &job, "fail", json!({ "error": "boom" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["status"], "dead");
    job
}

/// The counts a space stream opens with.
async fn counts(app: &TestApp, space: &Space) -> Value {
    let mut stream = app.watch_space(&space.id, &space.producer, "").await;
    let connected = next_json(&mut stream).await;
    connected["counts"].clone()
}

#[tokio::test]
async fn a_dead_job_is_retried_with_a_fresh_set_of_attempts() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = dead_job(&app, &space).await;

    // The scope is its own: the producer's key (create, read, kill) lacks it.
    let path = format!("/api/v1/jobs/{job}/retry");
    let (status, refused) = app.post(&path, &space.producer, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let operator = app.token(&space.id, &["jobs:read", "jobs:retry"]).await;
    let (status, retried) = app.post(&path, &operator, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["status"], "pending");
    assert_eq!(retried["attemptNumber"], 0);
    let events = event_types(&app.job(&space, &job).await);
    assert_eq!(events.last().map(String::as_str), Some("retried"));

    // It runs again like a new job, and can die and be retried again.
    let delivered = app.poll_one(&space).await;
    assert_eq!(delivered["id"], job.as_str());
    assert_eq!(delivered["attemptNumber"], 0);
    let (status, done) = app
        .worker_call(&space, &job, "complete", json!({ "result": "ok" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");

    // Only dead and killed jobs are retried.
    let (status, conflict) = app.post(&path, &operator, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["error"], "cannot retry a completed job");
    let (status, missing) = app
        .post("/api/v1/jobs/01JUNKJUNKJUNKJUNKJUNKJUNK/retry", ADMIN_KEY, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
}

#[tokio::test]
async fn a_finished_job_is_deleted_with_its_events_and_logs() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = dead_job(&app, &space).await;
    let running = app.create_job(&space, json!({ "name": "busy" })).await;
    let (status, _) = app
        .post(
            &format!("/api/v1/jobs/{job}/logs"),
            &space.worker,
            json!({ "lines": [{ "level": "info", "message": "hello" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let operator = app.token(&space.id, &["jobs:read", "jobs:delete"]).await;
    let delete = |id: &str| format!("/api/v1/jobs/{id}");
    let (status, refused) = app
        .request("DELETE", &delete(&job), Some(&space.producer), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let (status, conflict) = app
        .request("DELETE", &delete(&running), Some(&operator), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert!(
        conflict["error"].as_str().unwrap().contains("kill it first"),
        "{conflict}"
    );

    let before = counts(&app, &space).await;
    assert_eq!((before["dead"].as_u64(), before["pending"].as_u64()), (Some(1), Some(1)));
    let (status, deleted) = app
        .request("DELETE", &delete(&job), Some(&operator), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!((deleted["deleted"].as_bool(), deleted["status"].as_str()), (Some(true), Some("dead")));
    let (status, _) = app.get(&delete(&job), &space.producer).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .get(&format!("/api/v1/jobs/{job}/logs"), &space.producer)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, again) = app
        .request("DELETE", &delete(&job), Some(&operator), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{again}");
    // The space's counts lose it, and nothing else.
    let after = counts(&app, &space).await;
    assert_eq!((after["dead"].as_u64(), after["pending"].as_u64()), (Some(0), Some(1)));
    let (_, listed) = app
        .get(&format!("/api/v1/spaces/{}/jobs", space.id), &space.producer)
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

/// Polls until every job in `ids` is gone (bounded).
async fn wait_until_pruned(app: &TestApp, space: &Space, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for id in ids {
        loop {
            let (status, _) = app.get(&format!("/api/v1/jobs/{id}"), &space.producer).await;
            if status == StatusCode::NOT_FOUND {
                break;
            }
            assert!(Instant::now() < deadline, "job {id} was never pruned");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn retention_prunes_finished_jobs_by_age_and_status() {
    let app = TestApp::spawn_with(Options {
        retention: RetentionConfig {
            policy: RetentionPolicy {
                completed: 1,
                dead: 0,
                killed: 1,
            },
            sweep_every: Duration::from_millis(100),
        },
        ..Options::default()
    })
    .await;
    let space = app.create_space().await;
    let (status, shown) = app.get(&format!("/api/v1/spaces/{}", space.id), ADMIN_KEY).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["retention"], json!({ "completed": 1, "dead": 0, "killed": 1 }));
    // A second space keeps its completed jobs forever.
    let keeper = app.create_space().await;
    let (status, set) = app
        .patch_space(&keeper.id, ADMIN_KEY, json!({ "retention": { "completed": 0 } }))
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set["retention"], json!({ "completed": 0, "dead": 0, "killed": 1 }));

    let mut stream = app.watch_space(&space.id, &space.producer, "").await;
    let connected = next_json(&mut stream).await;
    let cursor = format!(
        "&since={}&streamInstanceId={}",
        connected["seq"],
        connected["streamInstanceId"].as_str().unwrap()
    );
    drop(stream);

    // Finished before any job of the first space: older than all of them.
    let kept = app.create_job(&keeper, json!({ "name": "kept" })).await;
    app.poll_one(&keeper).await;
    app.worker_call(&keeper, &kept, "complete", json!({})).await;
    let mut finished = Vec::new();
    for _ in 0..3 {
        let job = app.create_job(&space, json!({ "name": "short" })).await;
        app.poll_one(&space).await;
        app.worker_call(&space, &job, "complete", json!({})).await;
        finished.push(job);
    }
    let killed = app.create_job(&space, json!({ "name": "stopped" })).await;
    let (status, _) = app
        .post(&format!("/api/v1/jobs/{killed}/kill"), &space.producer, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    finished.push(killed);
    let dead = dead_job(&app, &space).await;
    let waiting = app.create_job(&space, json!({ "name": "waiting" })).await;

    wait_until_pruned(&app, &space, &finished).await;
    // Dead jobs are kept forever here; unfinished ones are never pruned.
    assert_eq!(app.job(&space, &dead).await["status"], "dead");
    assert_eq!(app.job(&space, &waiting).await["status"], "pending");
    // Counts stay exact.
    let now = counts(&app, &space).await;
    assert_eq!(
        (now["completed"].as_u64(), now["killed"].as_u64(), now["dead"].as_u64(), now["pending"].as_u64()),
        (Some(0), Some(0), Some(1), Some(1)),
        "{now}"
    );
    // A reconnect across pruned events cannot be replayed: it is told so.
    let mut stream = app.watch_space(&space.id, &space.producer, &cursor).await;
    let resumed = next_json(&mut stream).await;
    assert_eq!(resumed["missed"], true, "{resumed}");
    assert_eq!(resumed["counts"], now);

    // The space that keeps its jobs still has its completed one, older than
    // those pruned; back on the server's age, it goes too.
    assert_eq!(app.job(&keeper, &kept).await["status"], "completed");
    let (status, later) = app
        .patch_space(&keeper.id, ADMIN_KEY, json!({ "retention": { "completed": null } }))
        .await;
    assert_eq!(status, StatusCode::OK, "{later}");
    assert_eq!(later["retention"]["completed"], 1);
    wait_until_pruned(&app, &keeper, &[kept]).await;

    // Ages are checked.
    let (status, refused) = app
        .patch_space(&keeper.id, ADMIN_KEY, json!({ "retention": { "dead": -1 } }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["error"], "retention.dead must be a whole number of at least 0");
}

/// Replicas pruning the same backlog at once: each job is deleted by one of
/// them, so the deletions they report add up to the backlog exactly and the
/// space's counts end exact. PostgreSQL is where several replicas write
/// (SQLite has one writer); on SQLite the same pruning runs from one store.
#[tokio::test]
async fn replicas_pruning_at_once_delete_each_job_once() {
    use emit_core::job::JobStatus;
    use emit_core::retention::Expired;

    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    const JOBS: usize = 300;
    app.create_bulk(&space, "batch", JOBS).await;
    let mut done = 0;
    while done < JOBS {
        for job in app.poll(&space, json!({ "count": 50 })).await {
            let id = job["id"].as_str().unwrap();
            let (status, _) = app.worker_call(&space, id, "complete", json!({})).await;
            assert_eq!(status, StatusCode::OK);
            done += 1;
        }
    }
    let replicas = if crate::BACKEND == crate::helpers::Backend::Postgres { 3 } else { 1 };
    let mut stores = Vec::new();
    for _ in 0..replicas {
        let store = emit_core::store::open(&app.database_url(), Duration::from_secs(10), app.clock.clone())
            .await
            .expect("a replica's store opens");
        stores.push(store);
    }
    let expired = Expired {
        space_id: space.id.clone(),
        status: JobStatus::Completed,
        // Everything finished so far.
        before: app.clock.now() + 1,
        limit: 16,
    };
    let pruners = stores.into_iter().map(|store| {
        let expired = expired.clone();
        tokio::spawn(async move {
            let mut deleted = 0;
            loop {
                let pruned = store.prune(&expired).await.expect("prune");
                deleted += pruned;
                if pruned == 0 {
                    return deleted;
                }
            }
        })
    });
    let mut total = 0;
    for pruner in pruners.collect::<Vec<_>>() {
        total += pruner.await.unwrap();
    }
    assert_eq!(total as usize, JOBS);
    let now = counts(&app, &space).await;
    assert_eq!(now["completed"], 0, "{now}");
    let (_, listed) = app
        .get(&format!("/api/v1/spaces/{}/jobs", space.id), &space.producer)
        .await;
    assert_eq!(listed, json!([]));
}

#[tokio::test]
async fn listings_filter_by_name_and_creation_time_with_a_total_and_a_stable_cursor() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    app.create_bulk(&space, "a", 5).await;
    app.create_bulk(&space, "b", 3).await;
    let list = |query: String| {
        let url = format!("{}/api/v1/spaces/{}/jobs?{query}", app.base, space.id);
        let request = app.http.get(url).header("x-api-key", &space.producer);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let total = response
                .headers()
                .get("x-total-count")
                .map(|total| total.to_str().unwrap().parse::<u64>().unwrap());
            (status, total, response.json::<Value>().await.unwrap())
        }
    };
    let (status, total, page) = list("name=a&limit=2".into()).await;
    assert_eq!((status, total), (StatusCode::OK, Some(5)), "{page}");
    let page = page.as_array().unwrap().clone();
    assert_eq!(page.len(), 2);
    assert!(page.iter().all(|job| job["name"] == "a"));
    // A job arriving meanwhile does not shift the next page.
    app.create_job(&space, json!({ "name": "a" })).await;
    let last = page[1]["id"].as_str().unwrap();
    let (_, total, next) = list(format!("name=a&limit=2&beforeId={last}")).await;
    assert_eq!(total, Some(6));
    let next = next.as_array().unwrap();
    assert_eq!(next.len(), 2);
    assert!(next.iter().all(|job| job["id"].as_str().unwrap() < last));

    let (_, total, _) = list("createdAfter=2999-01-01T00:00:00Z".into()).await;
    assert_eq!(total, Some(0));
    let (_, total, _) = list("createdBefore=2999-01-01T00:00:00Z&status=pending".into()).await;
    assert_eq!(total, Some(9));
    let (status, _, error) = list("createdAfter=yesterday".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"], "createdAfter must be an ISO 8601 timestamp");
}

#[tokio::test]
async fn bulk_actions_count_first_act_in_bounded_batches_and_record_each_job() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    app.create_bulk(&space, "keep", 2).await;
    app.create_bulk(&space, "batch", 5).await;
    let operator = app
        .token(&space.id, &["jobs:read", "jobs:kill", "jobs:retry", "jobs:delete"])
        .await;
    let path = format!("/api/v1/spaces/{}/jobs/bulk", space.id);
    let bulk = |body: Value| app.post(&path, &operator, body);

    let (status, counted) = bulk(json!({ "action": "kill", "filter": { "name": "batch" }, "dryRun": true })).await;
    assert_eq!(status, StatusCode::OK, "{counted}");
    assert_eq!(counted, json!({ "matched": 5, "applied": 0, "skipped": 0, "more": false }));
    let (_, killed) = bulk(json!({ "action": "kill", "filter": { "name": "batch" } })).await;
    assert_eq!((killed["applied"].as_u64(), killed["skipped"].as_u64()), (Some(5), Some(0)));
    let (_, retried) = bulk(json!({ "action": "retry", "filter": { "status": "killed" } })).await;
    assert_eq!(retried["applied"], 5);
    let (_, listed) = app
        .get(&format!("/api/v1/spaces/{}/jobs?name=batch", space.id), &space.producer)
        .await;
    for job in listed.as_array().unwrap() {
        let events = event_types(&app.job(&space, job["id"].as_str().unwrap()).await);
        assert_eq!(events, ["created", "killed", "retried"], "each job has its own events");
    }
    // Pending jobs cannot be deleted: skipped, not failed.
    let (_, skipped) = bulk(json!({ "action": "delete", "filter": { "name": "batch" } })).await;
    assert_eq!((skipped["applied"].as_u64(), skipped["skipped"].as_u64()), (Some(0), Some(5)));

    // Bounded: two at a time until none is left.
    bulk(json!({ "action": "kill", "filter": { "name": "batch" } })).await;
    let mut rounds = Vec::new();
    loop {
        let (status, round) = bulk(json!({ "action": "delete", "filter": { "name": "batch", "status": "killed" }, "limit": 2 })).await;
        assert_eq!(status, StatusCode::OK, "{round}");
        rounds.push(round["applied"].as_u64().unwrap());
        if round["more"] == false {
            break;
        }
    }
    assert_eq!(rounds, [2, 2, 1]);
    let (_, left) = app
        .get(&format!("/api/v1/spaces/{}/jobs", space.id), &space.producer)
        .await;
    assert_eq!(left.as_array().unwrap().len(), 2, "only the other jobs are left");

    // Each action needs its scope; bad input is named.
    let (status, _) = app
        .post(&path, &space.producer, json!({ "action": "delete" }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, error) = bulk(json!({ "action": "explode" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"], "action must be one of retry, kill, delete");
    let (status, error) = bulk(json!({ "action": "kill", "filter": { "status": "sleeping" } })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"].as_str().unwrap().starts_with("filter.status must be one of"));
}
