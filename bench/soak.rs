//! A soak at full speed on SQLite: JOBS jobs created in bulk by 4 producers
//! while 4 stream sessions of capacity 8 ack and complete them, with the
//! WAL and database file sizes printed every few seconds, and their peaks at
//! the end.
//!
//!     cargo run --release --example soak -- [JOBS] [RETAIN_SECONDS]
//!
//! (default 200,000 jobs; with RETAIN_SECONDS, completed jobs are deleted
//! that long after they complete, swept every second, and the database
//! size stops growing once retention applies).

use emit_testkit as support;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use emit_core::retention::RetentionConfig;
use serde_json::json;
use support::AnyError;
use support::ack_worker::{Heard, ack_and_complete_all};
use support::in_process::{create_space, start_server_with};

const PRODUCERS: usize = 4;
const BATCH: usize = 100;
const SESSIONS: usize = 4;
const CAPACITY: u32 = 8;
const PRINT_EVERY: Duration = Duration::from_secs(5);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let jobs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let retain: Option<u64> = std::env::args().nth(2).map(|a| a.parse()).transpose()?;
    let mut retention = RetentionConfig::default();
    if let Some(seconds) = retain {
        retention.policy.completed = seconds;
        retention.sweep_every = Duration::from_secs(1);
    }
    let dir = std::env::temp_dir().join(format!("emit-soak-{}", std::process::id()));
    let (core, gateway) = start_server_with(&dir.display().to_string(), retention).await?;
    let base = format!("http://{}/api/v1", gateway.http_addr);
    let grpc = format!("http://{}", core.grpc_addr);
    let http = reqwest::Client::new();
    let space = create_space(&http, &base).await?;

    let completed = Arc::new(AtomicUsize::new(0));
    for _ in 0..SESSIONS {
        let (grpc, key, space_id, completed) = (
            grpc.clone(),
            space.key.clone(),
            space.id.clone(),
            completed.clone(),
        );
        tokio::spawn(async move {
            let _ = ack_and_complete_all(&grpc, &key, &space_id, CAPACITY, |heard| {
                if let Heard::Completed { result, .. } = heard
                    && result.code == 0
                {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                ControlFlow::Continue(())
            })
            .await;
        });
    }
    let batches = Arc::new(AtomicUsize::new(jobs / BATCH));
    for _ in 0..PRODUCERS {
        let (http, base, space_id, key, batches) = (
            http.clone(),
            base.clone(),
            space.id.clone(),
            space.key.clone(),
            batches.clone(),
        );
        tokio::spawn(async move {
            let body: Vec<_> = (0..BATCH).map(|_| json!({ "name": "soak" })).collect();
            while batches
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                    left.checked_sub(1)
                })
                .is_ok()
            {
                let _ = http
                    .post(format!("{base}/spaces/{space_id}/jobs"))
                    .header("x-api-key", &key)
                    .json(&body)
                    .send()
                    .await;
            }
        });
    }

    let database = dir.join("emit.db");
    let wal = dir.join("emit.db-wal");
    let started = Instant::now();
    let (mut wal_peak, mut database_peak) = (0u64, 0u64);
    println!("seconds  completed  wal_MiB  database_MiB");
    let target = jobs / BATCH * BATCH;
    let mut next_print = PRINT_EVERY;
    loop {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let done = completed.load(Ordering::Relaxed);
        let (wal_now, database_now) = (size(&wal), size(&database));
        wal_peak = wal_peak.max(wal_now);
        database_peak = database_peak.max(database_now);
        if started.elapsed() >= next_print || done >= target {
            next_print += PRINT_EVERY;
            println!(
                "{:7.1}  {done:9}  {:7.1}  {:12.1}",
                started.elapsed().as_secs_f64(),
                mib(wal_now),
                mib(database_now)
            );
        }
        if done >= target {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "RESULT jobs={target} seconds={seconds:.1} jobs_per_second={:.0} wal_peak_MiB={:.1} database_peak_MiB={:.1}",
        target as f64 / seconds,
        mib(wal_peak),
        mib(database_peak)
    );
    gateway.stop().await;
    core.stop().await;
    let _ = std::fs::remove_dir_all(PathBuf::from(&dir));
    Ok(())
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
