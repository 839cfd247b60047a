//! What pruning costs dispatch. A backlog of BACKLOG completed jobs is
//! built and kept (retention 0: forever); then a trickle of RATE jobs a
//! second goes to a stream worker for a while, and the time from create to
//! delivery is measured. Then the space's retention drops to one second, so
//! the sweeper deletes the whole backlog, and the same trickle is measured
//! while it does. Prints both p50/p99 and how fast the backlog went.
//!
//!     cargo run --release --example prune -- [BACKLOG] [RATE]
//!
//! (defaults 100,000 and 500).

use emit_testkit as support;

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emit_core::retention::RetentionConfig;
use serde_json::{Value, json};
use support::ack_worker::{Heard, ack_and_complete_all};
use support::in_process::{BenchSpace, create_space, start_server_with};
use support::{ADMIN_KEY, AnyError};

const BATCH: usize = 100;
const QUIET_PHASE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let mut args = std::env::args().skip(1);
    let backlog: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let rate: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500);
    let retention = RetentionConfig {
        sweep_every: Duration::from_secs(1),
        ..RetentionConfig::default()
    };
    let dir = std::env::temp_dir().join(format!("emit-prune-{}", std::process::id()));
    let (core, gateway) = start_server_with(&dir.display().to_string(), retention).await?;
    let base = format!("http://{}/api/v1", gateway.http_addr);
    let grpc = format!("http://{}", core.grpc_addr);
    let http = reqwest::Client::new();
    let space = create_space(&http, &base).await?;
    set_retention(&http, &base, &space, json!({ "completed": 0 })).await?;

    // Each delivery's latency, from the send time its payload carries.
    let started = Instant::now();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let delivered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (latencies, delivered) = (latencies.clone(), delivered.clone());
        let (grpc, key, space_id) = (grpc.clone(), space.key.clone(), space.id.clone());
        tokio::spawn(async move {
            let _ = ack_and_complete_all(&grpc, &key, &space_id, 64, |heard| {
                if let Heard::Assigned(delivery) = heard {
                    delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let sent = delivery
                        .payload_json
                        .as_deref()
                        .and_then(|text| serde_json::from_str::<Value>(text).ok())
                        .and_then(|payload| payload["sentMicros"].as_u64());
                    if let Some(sent) = sent {
                        let now = started.elapsed();
                        latencies
                            .lock()
                            .unwrap()
                            .push(now.saturating_sub(Duration::from_micros(sent)));
                    }
                }
                ControlFlow::Continue(())
            })
            .await;
        });
    }

    println!("building a backlog of {backlog} completed jobs");
    let body: Vec<_> = (0..BATCH).map(|_| json!({ "name": "old" })).collect();
    let mut newest_old = String::new();
    for _ in 0..backlog / BATCH {
        let created: Value = http
            .post(format!("{base}/spaces/{}/jobs", space.id))
            .header("x-api-key", &space.key)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        newest_old = created[BATCH - 1]["id"].as_str().ok_or("no id")?.to_owned();
    }
    let backlog = backlog / BATCH * BATCH;
    while delivered.load(std::sync::atomic::Ordering::Relaxed) < backlog {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last completions land just after their deliveries.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let quiet = trickle(&http, &base, &space, started, rate, &latencies, |elapsed| {
        elapsed < QUIET_PHASE
    })
    .await?;

    set_retention(&http, &base, &space, json!({ "completed": 1 })).await?;
    let pruning_started = Instant::now();
    // The sweeper goes oldest first: the backlog is gone with its newest.
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (http, base, gone) = (http.clone(), base.clone(), gone.clone());
        tokio::spawn(async move {
            while exists(&http, &base, &newest_old).await {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            gone.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let pruning = trickle(&http, &base, &space, started, rate, &latencies, |_| {
        !gone.load(std::sync::atomic::Ordering::Relaxed)
    })
    .await?;
    watcher.await?;
    let prune_seconds = pruning_started.elapsed().as_secs_f64();

    let (mut quiet, mut pruning) = (quiet, pruning);
    println!(
        "without pruning: dispatch p50 {:.2} ms, p99 {:.2} ms ({} jobs)",
        ms(&mut quiet, 0.5),
        ms(&mut quiet, 0.99),
        quiet.len()
    );
    println!(
        "while pruning  : dispatch p50 {:.2} ms, p99 {:.2} ms ({} jobs)",
        ms(&mut pruning, 0.5),
        ms(&mut pruning, 0.99),
        pruning.len()
    );
    println!(
        "RESULT backlog={backlog} prune_seconds={prune_seconds:.1} pruned_per_second={:.0} \
         p99_quiet_ms={:.2} p99_pruning_ms={:.2}",
        backlog as f64 / prune_seconds,
        ms(&mut quiet, 0.99),
        ms(&mut pruning, 0.99)
    );
    gateway.stop().await;
    core.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Creates `rate` jobs a second, one at a time, while `go` holds for the
/// time since the trickle began; returns the latencies of its deliveries.
async fn trickle(
    http: &reqwest::Client,
    base: &str,
    space: &BenchSpace,
    started: Instant,
    rate: u64,
    latencies: &Mutex<Vec<Duration>>,
    go: impl Fn(Duration) -> bool,
) -> Result<Vec<Duration>, AnyError> {
    latencies.lock().unwrap().clear();
    let began = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut sent = 0;
    while go(began.elapsed()) {
        tick.tick().await;
        let payload = json!({ "sentMicros": started.elapsed().as_micros() as u64 });
        http.post(format!("{base}/spaces/{}/jobs", space.id))
            .header("x-api-key", &space.key)
            .json(&json!({ "name": "new", "payload": payload }))
            .send()
            .await?
            .error_for_status()?;
        sent += 1;
    }
    // Every job sent is delivered before the phase ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while latencies.lock().unwrap().len() < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(std::mem::take(&mut *latencies.lock().unwrap()))
}

async fn set_retention(
    http: &reqwest::Client,
    base: &str,
    space: &BenchSpace,
    retention: Value,
) -> Result<(), AnyError> {
    http.patch(format!("{base}/spaces/{}", space.id))
        .header("x-api-key", ADMIN_KEY)
        .json(&json!({ "retention": retention }))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

async fn exists(http: &reqwest::Client, base: &str, job_id: &str) -> bool {
    let response = http
        .get(format!("{base}/jobs/{job_id}"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await;
    !matches!(response, Ok(response) if response.status() == 404)
}

fn ms(samples: &mut [Duration], quantile: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let index = ((samples.len() as f64 * quantile) as usize).min(samples.len() - 1);
    samples[index].as_secs_f64() * 1000.0
}
