//! Concurrency keys: a key never holds more leases than its limit, whatever
//! ends a lease frees its slot, limits come from the job, its name or its
//! space and change at once, ready keyed jobs take turns between keys, and
//! a job held back says why.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, Space, TestApp};

async fn limits(app: &TestApp, space: &Space, concurrency: Value) {
    let (status, shown) = app
        .patch_space(&space.id, ADMIN_KEY, json!({ "concurrency": concurrency }))
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
}

async fn create(app: &TestApp, space: &Space, jobs: Vec<Value>) -> Vec<String> {
    let (status, created) = app
        .post(&format!("/api/v1/spaces/{}/jobs", space.id), &space.producer, json!(jobs))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created.as_array().unwrap().iter().map(|job| job["id"].as_str().unwrap().to_owned()).collect()
}

fn keyed(name: &str, key: &str, count: usize) -> Vec<Value> {
    (0..count).map(|_| json!({ "name": name, "concurrencyKey": key })).collect()
}

/// How many of `jobs` carry each key (None: no key).
fn by_key(jobs: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut counted = std::collections::BTreeMap::new();
    for job in jobs {
        *counted.entry(job_key(job)).or_default() += 1;
    }
    counted
}

fn job_key(job: &Value) -> String {
    job["concurrencyKey"].as_str().unwrap_or("-").to_owned()
}

async fn keys_of(app: &TestApp, space: &Space, polled: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut detailed = Vec::new();
    for job in polled {
        detailed.push(app.job(space, job["id"].as_str().unwrap()).await);
    }
    by_key(&detailed)
}

#[tokio::test]
async fn a_key_never_holds_more_than_its_limit_and_ending_a_lease_frees_a_slot() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    limits(&app, &space, json!({ "default": 2 })).await;
    let mut jobs = keyed("sync", "a", 5);
    jobs.extend(keyed("sync", "b", 5));
    jobs.extend([json!({ "name": "sync" }), json!({ "name": "sync" })]);
    create(&app, &space, jobs).await;

    let polled = app.poll(&space, json!({ "count": 50 })).await;
    let counted = keys_of(&app, &space, &polled).await;
    assert_eq!(counted, [("-".to_owned(), 2), ("a".to_owned(), 2), ("b".to_owned(), 2)].into());
    assert!(app.poll(&space, json!({ "count": 50 })).await.is_empty(), "every key is full");

    // The held-back jobs say why; the usage is readable.
    let (_, listed) = app
        .get(&format!("/api/v1/spaces/{}/jobs?status=pending", space.id), &space.producer)
        .await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 6);
    assert!(listed.iter().all(|job| job["waitingReason"] == "concurrency_limit"), "{listed:?}");
    let (status, usage) = app
        .get(&format!("/api/v1/spaces/{}/concurrency", space.id), &space.producer)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        usage,
        json!({
            "limits": { "default": 2, "names": {}, "rates": {} },
            "keys": [{ "key": "a", "leases": 2 }, { "key": "b", "leases": 2 }],
            "rates": [],
        })
    );

    // A claim of a full key's job is refused.
    let waiting = listed.iter().find(|job| job["concurrencyKey"] == "a").unwrap();
    let (status, refused) = app
        .worker_call(&space, waiting["id"].as_str().unwrap(), "claim", json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("holds its 2 leases"), "{refused}");

    // Completing one of a's jobs frees one slot of a; killing one of b's
    // frees one of b.
    let mut a_job = None;
    let mut b_job = None;
    for job in &polled {
        let id = job["id"].as_str().unwrap().to_owned();
        let detail = app.job(&space, &id).await;
        match detail["concurrencyKey"].as_str() {
            Some("a") if a_job.is_none() => a_job = Some(id),
            Some("b") if b_job.is_none() => b_job = Some(id),
            _ => {}
        }
    }
    let (status, _) = app
        .worker_call(&space, a_job.as_deref().unwrap(), "complete", json!({ "result": {} }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .post(&format!("/api/v1/jobs/{}/kill", b_job.unwrap()), &space.producer, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let next = app.poll(&space, json!({ "count": 50 })).await;
    assert_eq!(keys_of(&app, &space, &next).await, [("a".to_owned(), 1), ("b".to_owned(), 1)].into());
}

#[tokio::test]
async fn the_job_then_its_name_then_the_space_set_the_limit_and_changes_apply_at_once() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    limits(&app, &space, json!({ "default": 3, "names": { "report": 1 } })).await;
    create(&app, &space, keyed("report", "r", 3)).await;
    create(&app, &space, keyed("email", "e", 4)).await;
    create(
        &app,
        &space,
        (0..3).map(|_| json!({ "name": "email", "concurrencyKey": "own", "concurrencyLimit": 2 })).collect(),
    )
    .await;
    let polled = app.poll(&space, json!({ "count": 50 })).await;
    assert_eq!(
        keys_of(&app, &space, &polled).await,
        [("e".to_owned(), 3), ("own".to_owned(), 2), ("r".to_owned(), 1)].into()
    );
    // Raising the default lets one more of e go at once; removing the
    // limits lets r's go too.
    limits(&app, &space, json!({ "default": 4, "names": { "report": 1 } })).await;
    let more = app.poll(&space, json!({ "count": 50 })).await;
    assert_eq!(keys_of(&app, &space, &more).await, [("e".to_owned(), 1)].into());
    limits(&app, &space, Value::Null).await;
    let rest = app.poll(&space, json!({ "count": 50 })).await;
    assert_eq!(keys_of(&app, &space, &rest).await, [("r".to_owned(), 2)].into());
    let (_, shown) = app.get(&format!("/api/v1/spaces/{}", space.id), ADMIN_KEY).await;
    assert_eq!(shown["concurrency"], Value::Null);
}

#[tokio::test]
async fn keys_take_turns_so_a_backlog_does_not_hold_up_another_key() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    create(&app, &space, keyed("work", "big", 40)).await;
    let small = create(&app, &space, keyed("work", "small", 2)).await;
    let polled = app.poll(&space, json!({ "count": 4 })).await;
    let ids: Vec<&str> = polled.iter().map(|job| job["id"].as_str().unwrap()).collect();
    for id in &small {
        assert!(ids.contains(&id.as_str()), "the small key's jobs go in the first turns: {ids:?}");
    }
    // Without keys, the same jobs go first in, first out.
    let fifo = app.create_space().await;
    create(&app, &fifo, (0..40).map(|_| json!({ "name": "work" })).collect()).await;
    let late = create(&app, &fifo, (0..2).map(|_| json!({ "name": "work" })).collect()).await;
    let polled = app.poll(&fifo, json!({ "count": 4 })).await;
    assert!(polled.iter().all(|job| !late.contains(&job["id"].as_str().unwrap().to_owned())));
}

#[tokio::test]
async fn keys_and_limits_are_checked_and_named() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let path = format!("/api/v1/spaces/{}/jobs", space.id);
    for (job, message) in [
        (json!({ "name": "x", "concurrencyKey": "" }), "jobs[0].concurrencyKey must be 1 to 255 characters"),
        (json!({ "name": "x", "concurrencyKey": "k".repeat(256) }), "jobs[0].concurrencyKey must be 1 to 255 characters"),
        (json!({ "name": "x", "concurrencyLimit": 2 }), "jobs[0].concurrencyLimit requires jobs[0].concurrencyKey"),
        (json!({ "name": "x", "concurrencyKey": "k", "concurrencyLimit": 0 }), "jobs[0].concurrencyLimit must be between 1 and 10000"),
    ] {
        let (status, refused) = app.post(&path, &space.producer, job.clone()).await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::BAD_REQUEST, Some(message)), "{job}");
    }
    for (concurrency, message) in [
        (json!({ "rates": { "report": { "limit": 0, "periodSeconds": 1 } } }), "concurrency.rates.report.limit must be between 1 and 1000000"),
        (json!({ "rates": { "report": { "limit": 5, "periodSeconds": 0 } } }), "concurrency.rates.report.periodSeconds must be between 1 and 86400"),
        (json!({ "rates": { "report": { "limit": 5 } } }), "concurrency.rates.report.periodSeconds is required"),
        (json!({ "rates": 5 }), "concurrency.rates must be an object of job names to rate limits"),
        (json!({ "default": 0 }), "concurrency.default must be between 1 and 10000"),
        (json!({ "names": { "report": 20000 } }), "concurrency.names.report must be between 1 and 10000"),
        (json!({ "names": { "report": "two" } }), "concurrency.names.report must be a whole number"),
        (json!({ "names": [1] }), "concurrency.names must be an object of job names to limits"),
    ] {
        let (status, refused) = app
            .patch_space(&space.id, ADMIN_KEY, json!({ "concurrency": concurrency }))
            .await;
        assert_eq!((status, refused["error"].as_str()), (StatusCode::BAD_REQUEST, Some(message)), "{concurrency}");
    }
    // Limits are the admin's; usage is readable with jobs:read only.
    let (status, _) = app
        .patch_space(&space.id, &space.producer, json!({ "concurrency": { "default": 1 } }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let poller = app.token(&space.id, &["jobs:poll"]).await;
    let (status, _) = app
        .get(&format!("/api/v1/spaces/{}/concurrency", space.id), &poller)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_rate_limit_holds_a_name_to_its_limit_per_window_without_holding_up_others() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    limits(&app, &space, json!({ "rates": { "report": { "limit": 3, "periodSeconds": 2 } } })).await;
    create(&app, &space, (0..6).map(|_| json!({ "name": "report" })).collect()).await;
    let email = create(&app, &space, vec![json!({ "name": "email" })]).await;
    let first = app.poll(&space, json!({ "count": 10 })).await;
    let names: Vec<&str> = first.iter().map(|job| job["name"].as_str().unwrap()).collect();
    assert_eq!(names.iter().filter(|name| **name == "report").count(), 3, "{names:?}");
    assert!(first.iter().any(|job| job["id"] == email[0].as_str()), "the other name is not held up");
    let began = std::time::Instant::now();
    assert!(app.poll(&space, json!({ "count": 10 })).await.is_empty());

    let (_, pending) = app
        .get(&format!("/api/v1/spaces/{}/jobs?status=pending", space.id), &space.producer)
        .await;
    let pending = pending.as_array().unwrap();
    assert_eq!(pending.len(), 3);
    assert!(pending.iter().all(|job| job["waitingReason"] == "rate_limit"), "{pending:?}");
    let (_, usage) = app
        .get(&format!("/api/v1/spaces/{}/concurrency", space.id), &space.producer)
        .await;
    assert_eq!(usage["rates"], json!([{ "name": "report", "used": 3 }]));
    let (status, refused) = app
        .worker_call(&space, pending[0]["id"].as_str().unwrap(), "claim", json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(refused["error"].as_str().unwrap().contains("rate limit of 3 per 2 s"), "{refused}");

    // The window moves on: the next three go, not before.
    let deadline = began + std::time::Duration::from_secs(10);
    let next = loop {
        let polled = app.poll(&space, json!({ "count": 10 })).await;
        if !polled.is_empty() {
            break polled;
        }
        assert!(std::time::Instant::now() < deadline, "the window never moved on");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(began.elapsed() >= std::time::Duration::from_millis(1500), "{:?}", began.elapsed());
    assert!(next.len() <= 3, "{next:?}");
}

#[tokio::test]
async fn a_per_key_rate_limit_counts_each_key_apart() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    limits(
        &app,
        &space,
        json!({ "rates": { "sync": { "limit": 1, "periodSeconds": 60, "perKey": true } } }),
    )
    .await;
    let mut jobs = keyed("sync", "a", 2);
    jobs.extend(keyed("sync", "b", 2));
    create(&app, &space, jobs).await;
    let polled = app.poll(&space, json!({ "count": 10 })).await;
    assert_eq!(keys_of(&app, &space, &polled).await, [("a".to_owned(), 1), ("b".to_owned(), 1)].into());
    assert!(app.poll(&space, json!({ "count": 10 })).await.is_empty());
}
