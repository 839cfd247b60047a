//! Recurring schedules: each fire makes one job that carries the schedule's
//! id and fire time; the fields are validated by name; overlap, pause and
//! catch-up after downtime behave as documented; fire times follow the
//! zone's wall clock through daylight-saving changes.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, Space, TestApp};

fn millis(iso: &Value) -> i64 {
    iso.as_str()
        .and_then(|text| text.parse::<jiff::Timestamp>().ok())
        .unwrap_or_else(|| panic!("an RFC 3339 instant: {iso}"))
        .as_millisecond()
}

async fn create(app: &TestApp, space: &Space, body: Value) -> Value {
    let (status, created) = app
        .post(&format!("/api/v1/spaces/{}/schedules", space.id), &space.producer, body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

async fn schedule(app: &TestApp, space: &Space, id: &str) -> Value {
    let (status, shown) = app
        .get(&format!("/api/v1/spaces/{}/schedules/{id}", space.id), &space.producer)
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    shown
}

/// The fire times of the jobs schedule `id` made, sorted (every page).
async fn fire_times(app: &TestApp, space: &Space, id: &str) -> Vec<i64> {
    let mut times = Vec::new();
    let mut before = String::new();
    loop {
        let (status, page) = app
            .get(
                &format!(
                    "/api/v1/spaces/{}/jobs?scheduleId={id}&limit=100{before}",
                    space.id
                ),
                &space.producer,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let jobs = page.as_array().unwrap();
        for job in jobs {
            assert_eq!(job["scheduleId"], id, "{job}");
            times.push(millis(&job["fireTime"]));
        }
        match jobs.last() {
            Some(last) if jobs.len() == 100 => before = format!("&beforeId={}", last["id"].as_str().unwrap()),
            _ => break,
        }
    }
    times.sort_unstable();
    times
}

/// Waits (bounded) until schedule `id` has made at least `count` jobs.
async fn wait_for_fires(app: &TestApp, space: &Space, id: &str, count: usize) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let times = fire_times(app, space, id).await;
        if times.len() >= count {
            return times;
        }
        assert!(Instant::now() < deadline, "{id} made only {times:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_consecutive_seconds(times: &[i64]) {
    for pair in times.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "one job per second, once: {times:?}");
    }
}

#[tokio::test]
async fn a_schedule_fires_once_per_fire_time_and_its_jobs_carry_its_id() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let created = create(
        &app,
        &space,
        json!({
            "cron": "* * * * * *",
            "job": { "name": "tick", "payload": { "report": "daily" }, "priority": 5, "concurrencyKey": "tenant" },
        }),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["timeZone"], "UTC");
    assert_eq!(created["overlap"], "allow");
    assert_eq!(created["catchUp"], "one");
    assert_eq!(created["catchUpLimit"], 100);
    assert_eq!(created["paused"], false);
    assert_eq!(
        created["job"],
        json!({ "name": "tick", "payload": { "report": "daily" }, "priority": 5, "concurrencyKey": "tenant" })
    );
    let next: Vec<i64> = created["nextFireTimes"].as_array().unwrap().iter().map(millis).collect();
    assert_eq!(next.len(), 5, "{created}");
    assert_consecutive_seconds(&next);

    let times = wait_for_fires(&app, &space, id, 3).await;
    assert_consecutive_seconds(&times);
    let (_, jobs) = app
        .get(&format!("/api/v1/spaces/{}/jobs?scheduleId={id}", space.id), &space.producer)
        .await;
    let job = &jobs[0];
    assert_eq!((job["name"].clone(), job["payload"].clone(), job["priority"].clone()), (json!("tick"), json!({ "report": "daily" }), json!(5)));
    let detail = app.job(&space, job["id"].as_str().unwrap()).await;
    assert_eq!((detail["scheduleId"].as_str(), detail["concurrencyKey"].as_str()), (Some(id), Some("tenant")));
    // Its created event names the fire.
    let events = detail["events"].as_array().unwrap();
    let created_event = events.iter().find(|event| event["type"] == "created").unwrap();
    assert_eq!(created_event["data"]["scheduleId"], id, "{detail}");
    assert_eq!(created_event["data"]["fireTime"], job["fireTime"], "{detail}");

    let shown = schedule(&app, &space, id).await;
    assert!(shown["lastJobId"].is_string(), "{shown}");
    assert!(millis(&shown["lastFireTime"]) >= times[2]);
    let (status, listed) = app
        .get(&format!("/api/v1/spaces/{}/schedules?next=2", space.id), &space.producer)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["nextFireTimes"].as_array().unwrap().len(), 2);

    let path = format!("/api/v1/spaces/{}/schedules/{id}", space.id);
    let (status, deleted) = app.request("DELETE", &path, Some(&space.producer), None).await;
    assert_eq!((status, deleted), (StatusCode::OK, json!({ "id": id, "deleted": true })));
    let (status, gone) = app.get(&path, &space.producer).await;
    assert_eq!((status, gone), (StatusCode::NOT_FOUND, json!({ "error": "schedule not found" })));
}

#[tokio::test]
async fn every_field_is_checked_and_named() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = json!({ "name": "x" });
    let cases = [
        (json!({ "job": job }), "cron is required"),
        (json!({ "cron": "* * * * *" }), "job is required"),
        (json!({ "cron": "* * * *", "job": job }), "5 fields"),
        (json!({ "cron": "* 99 * * *", "job": job }), "cron hour field: 99 is out of range 0-23"),
        (json!({ "cron": "0 0 30 2 *", "job": job }), "matches no time"),
        (json!({ "cron": "* * * * *", "timeZone": "Mars/Base", "job": job }), "timeZone must be an IANA time zone"),
        (json!({ "cron": "* * * * *", "job": { "name": "" } }), "job.name is required"),
        (json!({ "cron": "* * * * *", "job": { "name": "x", "maxRetries": 99 } }), "job.maxRetries must be between 0 and 25"),
        (json!({ "cron": "* * * * *", "job": { "name": "x", "scheduledFor": "2030-01-01T00:00:00Z" } }), "job.scheduledFor cannot be set"),
        (json!({ "cron": "* * * * *", "job": { "name": "x", "idempotencyKey": "k" } }), "job.idempotencyKey cannot be set"),
        (json!({ "cron": "* * * * *", "job": "x" }), "job must be a JSON object"),
        (json!({ "cron": "* * * * *", "job": job, "overlap": "sometimes" }), "overlap must be allow or skip"),
        (json!({ "cron": "* * * * *", "job": job, "catchUp": "most" }), "catchUp must be none, one or all"),
        (json!({ "cron": "* * * * *", "job": job, "catchUpLimit": 0 }), "catchUpLimit must be between 1 and 1000"),
        (json!({ "cron": 5, "job": job }), "cron"),
    ];
    let path = format!("/api/v1/spaces/{}/schedules", space.id);
    for (body, message) in cases {
        let (status, refused) = app.post(&path, &space.producer, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {refused}");
        let error = refused["error"].as_str().unwrap();
        assert!(error.contains(message), "{body}: {error}");
    }
    let (status, refused) = app.get(&format!("{path}?next=101"), &space.producer).await;
    assert_eq!((status, refused["error"].clone()), (StatusCode::BAD_REQUEST, json!("next must be between 0 and 100")));

    // Scopes and spaces: a worker key cannot create; another space's key
    // cannot read; an unknown schedule is 404.
    let body = json!({ "cron": "* * * * *", "job": job });
    let (status, refused) = app.post(&path, &space.worker, body.clone()).await;
    assert_eq!((status, refused), (StatusCode::FORBIDDEN, json!({ "error": "Missing required scope: jobs:create" })));
    let other = app.create_space().await;
    let (status, _) = app.get(&path, &other.producer).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, missing) = app.get(&format!("{path}/01JUNKJUNKJUNKJUNKJUNKJUNK"), &space.producer).await;
    assert_eq!((status, missing), (StatusCode::NOT_FOUND, json!({ "error": "schedule not found" })));
    let (status, _) = app.post("/api/v1/spaces/nope/schedules", ADMIN_KEY, body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // An update checks the same way and changes only what it names.
    let created = create(&app, &space, json!({ "cron": "0 0 * * *", "job": job })).await;
    let one = format!("{path}/{}", created["id"].as_str().unwrap());
    let (status, refused) = app.request("PATCH", &one, Some(&space.producer), Some(json!({ "cron": "nope" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (status, updated) = app
        .request("PATCH", &one, Some(&space.producer), Some(json!({ "timeZone": "Asia/Tokyo", "overlap": "skip" })))
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!((updated["cron"].clone(), updated["timeZone"].clone(), updated["overlap"].clone()), (json!("0 0 * * *"), json!("Asia/Tokyo"), json!("skip")));
    // Midnight in Tokyo is 15:00 UTC.
    assert!(updated["nextFireTimes"][0].as_str().unwrap().contains("T15:00:00"), "{updated}");
}

#[tokio::test]
async fn overlap_skip_waits_for_the_live_job_to_finish() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let created = create(
        &app,
        &space,
        json!({ "cron": "* * * * * *", "overlap": "skip", "job": { "name": "long" } }),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let first = wait_for_fires(&app, &space, id, 1).await[0];
    // Two more fire times pass while the first job is live: both skipped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while millis(&schedule(&app, &space, id).await["nextFireTimes"][0]) < first + 3000 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fire_times(&app, &space, id).await, vec![first]);
    // Once it completes, the next fire makes a job again.
    let job = app.poll_one(&space).await;
    let (status, _) = app.worker_call(&space, job["id"].as_str().unwrap(), "complete", json!({ "result": {} })).await;
    assert_eq!(status, StatusCode::OK);
    let times = wait_for_fires(&app, &space, id, 2).await;
    assert!(times[1] >= first + 3000, "{times:?}");
}

#[tokio::test]
async fn a_paused_schedule_makes_nothing_and_a_resume_does_not_catch_up() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let created = create(&app, &space, json!({ "cron": "* * * * * *", "job": { "name": "t" } })).await;
    let id = created["id"].as_str().unwrap();
    wait_for_fires(&app, &space, id, 1).await;
    let path = format!("/api/v1/spaces/{}/schedules/{id}", space.id);
    let (status, paused) = app.post(&format!("{path}/pause"), &space.producer, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!((paused["paused"].clone(), paused["nextFireTimes"].clone()), (json!(true), json!([])));
    let paused_at = app.clock.now();
    let before = fire_times(&app, &space, id).await;
    // The pause lasts 3 s of fire times: the core's clock is moved on
    // rather than waited for.
    app.clock.advance(Duration::from_secs(3));
    let (status, resumed) = app.post(&format!("{path}/resume"), &space.producer, json!({})).await;
    let resumed_at = app.clock.now();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resumed["paused"], false);
    assert!(millis(&resumed["nextFireTimes"][0]) > resumed_at - 1000, "{resumed}");
    let times = wait_for_fires(&app, &space, id, before.len() + 1).await;
    assert!(
        times.iter().all(|at| *at <= paused_at + 1000 || *at >= resumed_at - 1000),
        "no fire while paused: {times:?} ({paused_at}..{resumed_at})"
    );
}

/// Down longer than the misfire grace (10 s): `all` makes every missed
/// fire, once; `none` makes none of those more than 10 s late.
#[tokio::test]
async fn after_downtime_missed_fires_follow_the_catch_up_policy() {
    let mut app = TestApp::spawn().await;
    let space = app.create_space().await;
    let every = json!({ "cron": "* * * * * *", "catchUp": "all", "job": { "name": "all" } });
    let every = create(&app, &space, every).await["id"].as_str().unwrap().to_owned();
    let none = json!({ "cron": "* * * * * *", "catchUp": "none", "job": { "name": "none" } });
    let none = create(&app, &space, none).await["id"].as_str().unwrap().to_owned();
    wait_for_fires(&app, &space, &none, 1).await;
    app.stop().await;
    let stopped = app.clock.now();
    // 14 s down, by the core's clock.
    app.clock.advance(Duration::from_secs(14));
    let restarted = app.clock.now();
    app.restart().await;
    wait_for_fires(&app, &space, &every, 16).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = fire_times(&app, &space, &every).await;
        if last.last().is_some_and(|at| *at >= restarted + 1000) {
            assert_consecutive_seconds(&last);
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dropped = fire_times(&app, &space, &none).await;
    let missed: Vec<i64> = dropped
        .iter()
        .copied()
        .filter(|at| *at > stopped && *at < restarted - 11_000)
        .collect();
    assert!(missed.is_empty(), "none makes no fire missed by over 10 s: {missed:?}");
}

#[tokio::test]
async fn fire_times_follow_the_zone_through_daylight_saving() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    // 02:30 on each March day in New York: the day the clocks jump from
    // 02:00 to 03:00 it fires at the jump (07:00 UTC), once.
    let created = create(
        &app,
        &space,
        json!({ "cron": "0 30 2 * 3 *", "timeZone": "America/New_York", "job": { "name": "dst" } }),
    )
    .await;
    let (_, shown) = app
        .get(
            &format!("/api/v1/spaces/{}/schedules/{}?next=31", space.id, created["id"].as_str().unwrap()),
            &space.producer,
        )
        .await;
    let times: Vec<String> = shown["nextFireTimes"].as_array().unwrap().iter().map(|at| at.as_str().unwrap().to_owned()).collect();
    let jumps: Vec<&String> = times.iter().filter(|at| at.contains("T07:00:00")).collect();
    assert_eq!(jumps.len(), 1, "{times:?}");
    assert!(times.iter().all(|at| at.contains("T07:30:00") || at.contains("T06:30:00") || at.contains("T07:00:00")), "{times:?}");
}

#[tokio::test]
async fn grpc_schedules_speak_the_same_rules() {
    use emit_proto::v1 as pb;
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let channel = tonic::transport::Endpoint::from_shared(app.grpc_url.clone()).unwrap().connect().await.unwrap();
    let mut client = pb::schedule_service_client::ScheduleServiceClient::new(channel);
    let request = |settings: pb::ScheduleSettings| {
        let mut request = tonic::Request::new(pb::CreateScheduleRequest {
            space_id: space.id.clone(),
            settings: Some(settings),
            next_count: Some(3),
        });
        request.metadata_mut().insert("x-api-key", space.producer.parse().unwrap());
        request
    };
    let refused = client
        .create_schedule(request(pb::ScheduleSettings { cron: Some("61 * * * * *".into()), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let created = client
        .create_schedule(request(pb::ScheduleSettings {
            cron: Some("@hourly".into()),
            job: Some(pb::JobSpec { name: "hourly".into(), ..Default::default() }),
            catch_up: pb::ScheduleCatchUp::All as i32,
            catch_up_limit: Some(7),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!((created.catch_up, created.catch_up_limit, created.next_fire_times.len()), (pb::ScheduleCatchUp::All as i32, 7, 3));
    assert!(created.next_fire_times.iter().all(|at| at.seconds % 3600 == 0));
}
