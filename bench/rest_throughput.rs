//! Throughput over REST with the Quick Start worker pattern: producers create
//! jobs in batches of 100 while polling workers (poll count 50, then ack and
//! complete each job) consume them. Prints create-only and end-to-end jobs/s.
//!
//!     cargo run --release --example rest_throughput -- [JOBS] [WORKERS]
//!
//! Server (core + gateway) and load generator run in one process on this
//! machine, as in `emit serve`: SQLite (synchronous=FULL) by default, a fresh
//! PostgreSQL database with `EMIT_BENCH_DATABASE=postgres`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;
const BATCH: usize = 100;

#[tokio::main]
async fn main() -> Result<(), support::AnyError> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map_or(Ok(20_000), |arg| arg.parse())?;
    let workers: usize = args.next().map_or(Ok(32), |arg| arg.parse())?;
    let cluster = support::Cluster::start(1).await?;
    let base = cluster.api_bases().remove(0);
    println!("storage       : {}", cluster.engine);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let space = support::create_space(&http, &base).await?;
    let (space_id, key) = (space.id, space.key);

    // Create-only: bulk batches of 100 from 4 producers, nobody consuming.
    let created = timed_creates(&http, &base, &space_id, &key, jobs).await?;
    println!(
        "create only   : {jobs} jobs in {:.2}s = {:.0} jobs/s",
        created.as_secs_f64(),
        jobs as f64 / created.as_secs_f64()
    );
    drain(&http, &base, &space_id, &key, workers, jobs).await?;

    // End to end: create while workers consume.
    let started = Instant::now();
    let producer = {
        let (http, base, space_id, key) =
            (http.clone(), base.clone(), space_id.clone(), key.clone());
        tokio::spawn(async move { timed_creates(&http, &base, &space_id, &key, jobs).await })
    };
    drain(&http, &base, &space_id, &key, workers, jobs).await?;
    producer.await??;
    let elapsed = started.elapsed();
    println!(
        "end to end    : {jobs} jobs created and completed by {workers} REST workers in {:.2}s = {:.0} jobs/s",
        elapsed.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64()
    );
    cluster.stop().await;
    Ok(())
}

async fn timed_creates(
    http: &reqwest::Client,
    base: &str,
    space_id: &str,
    key: &str,
    jobs: usize,
) -> Result<Duration, support::AnyError> {
    let started = Instant::now();
    let batches = Arc::new(AtomicUsize::new(jobs / BATCH));
    let mut producers = Vec::new();
    for _ in 0..4 {
        let (http, url, key, batches) = (
            http.clone(),
            format!("{base}/spaces/{space_id}/jobs"),
            key.to_owned(),
            batches.clone(),
        );
        producers.push(tokio::spawn(async move {
            while batches
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok()
            {
                let body: Vec<Value> = (0..BATCH)
                    .map(|i| json!({ "name": "noop", "payload": { "i": i } }))
                    .collect();
                let response = http
                    .post(&url)
                    .header("x-api-key", &key)
                    .json(&body)
                    .send()
                    .await?;
                assert_eq!(response.status(), 201);
            }
            Ok::<_, reqwest::Error>(())
        }));
    }
    for producer in producers {
        producer.await??;
    }
    Ok(started.elapsed())
}

/// Quick Start workers: poll up to 50, then ack and complete each job.
async fn drain(
    http: &reqwest::Client,
    base: &str,
    space_id: &str,
    key: &str,
    workers: usize,
    jobs: usize,
) -> Result<(), support::AnyError> {
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (http, base, space_id, key, done) = (
            http.clone(),
            base.to_owned(),
            space_id.to_owned(),
            key.to_owned(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < jobs {
                let polled: Value = http
                    .post(format!("{base}/spaces/{space_id}/jobs/poll"))
                    .header("x-api-key", &key)
                    .json(&json!({ "count": 50 }))
                    .send()
                    .await?
                    .json()
                    .await?;
                let batch = polled["jobs"].as_array().cloned().unwrap_or_default();
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                for job in batch {
                    let id = job["id"].as_str().unwrap_or_default();
                    http.post(format!("{base}/jobs/{id}/ack"))
                        .header("x-api-key", &key)
                        .send()
                        .await?;
                    let response = http
                        .post(format!("{base}/jobs/{id}/complete"))
                        .header("x-api-key", &key)
                        .json(&json!({ "result": { "ok": true } }))
                        .send()
                        .await?;
                    assert_eq!(response.status(), 200);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, reqwest::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
