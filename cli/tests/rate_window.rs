//! The rate-limit checker: three `emit serve` processes on one PostgreSQL
//! database, REST workers polling all of them for 60 s, one job name
//! limited to 50 dispatches per 5 s. From the jobs' `delivered` events: no
//! 5-second window holds more than 50 dispatches, and the 60 s saw at least
//! 95% of the 600 the limit allows (the limit is a rate, not a trickle).

use emit_testkit as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::{ADMIN_KEY, PostgresDatabase, Process, get_ok, instant_millis, post_ok};

const LIMIT: usize = 50;
const PERIOD_MS: i64 = 5_000;
const RUN: Duration = Duration::from_secs(60);
const BACKLOG: usize = 1_000;

async fn worker(base: String, space_id: String, key: String, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    let poll = format!("{base}/api/v1/spaces/{space_id}/jobs/poll");
    while !stop.load(Ordering::Relaxed) {
        let Some(polled) =
            post_ok(&http, &poll, &key, json!({ "count": 10, "waitSeconds": 1 })).await
        else {
            continue;
        };
        for job in polled["jobs"].as_array().into_iter().flatten() {
            let url = format!("{base}/api/v1/jobs/{}", job["id"].as_str().unwrap());
            post_ok(
                &http,
                &format!("{url}/complete"),
                &key,
                json!({ "result": {} }),
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_cores_hold_a_rate_limit_for_60_seconds() {
    let database = PostgresDatabase::create().await;
    let http = reqwest::Client::new();
    let mut cores = Vec::new();
    for _ in 0..3 {
        let core = Process::serve(&database.url, Some(ADMIN_KEY), &[]);
        core.wait_http_ready(&http).await;
        cores.push(core);
    }
    let base = cores[0].url.clone();
    let limits = json!({ "concurrency": { "rates": { "tick": { "limit": LIMIT, "periodSeconds": PERIOD_MS / 1000 } } } });
    let (space_id, key) = support::space_for_workers(&http, &base, "rate", limits).await;
    let mut ids = Vec::new();
    for _ in 0..BACKLOG / 500 {
        let jobs: Vec<Value> = (0..500).map(|_| json!({ "name": "tick" })).collect();
        let created = post_ok(
            &http,
            &format!("{base}/api/v1/spaces/{space_id}/jobs"),
            ADMIN_KEY,
            json!(jobs),
        )
        .await
        .unwrap();
        ids.extend(
            created
                .as_array()
                .unwrap()
                .iter()
                .map(|job| job["id"].as_str().unwrap().to_owned()),
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let began = jiff::Timestamp::now().as_millisecond();
    let workers: Vec<_> = cores
        .iter()
        .flat_map(|core| [core.url.clone(), core.url.clone()])
        .map(|base| tokio::spawn(worker(base, space_id.clone(), key.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }

    let mut delivered = Vec::new();
    for id in &ids {
        let job = get_ok(&http, &format!("{base}/api/v1/jobs/{id}"), ADMIN_KEY)
            .await
            .expect("the job");
        for event in job["events"].as_array().unwrap() {
            if event["type"] == "delivered" {
                delivered.push(instant_millis(&event["timestamp"]));
            }
        }
    }
    delivered.sort_unstable();
    for (index, at) in delivered.iter().enumerate() {
        let window = delivered[..=index]
            .iter()
            .filter(|earlier| **earlier > at - PERIOD_MS)
            .count();
        assert!(
            window <= LIMIT,
            "{window} dispatches in the {PERIOD_MS} ms up to {at}"
        );
    }
    let in_run = delivered
        .iter()
        .filter(|at| **at >= began && **at < began + RUN.as_millis() as i64)
        .count();
    let allowed = LIMIT * (RUN.as_millis() as i64 / PERIOD_MS) as usize;
    assert!(
        in_run * 100 >= allowed * 95,
        "{in_run} dispatches of {allowed} allowed"
    );
    println!(
        "{in_run} dispatches in {} s of {allowed} allowed ({:.1}%), never more than {LIMIT} per {PERIOD_MS} ms",
        RUN.as_secs(),
        in_run as f64 * 100.0 / allowed as f64
    );
}
