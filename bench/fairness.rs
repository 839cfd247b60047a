//! Fair dispatch between concurrency keys, measured: key A has a backlog of
//! 100,000 jobs when key B starts getting 10 jobs a second; 4 gRPC worker
//! sessions of capacity 8 work through both. Reports B's dispatch latency
//! (from sending its create to a worker holding it), p50 and p99, with
//! keys (dispatch takes turns between A and B) and, for comparison, the
//! same jobs without keys (first in, first out over the whole space).
//!
//!     cargo run --release --example fairness
//!
//! SQLite by default; `EMIT_BENCH_DATABASE=postgres` for PostgreSQL.

use emit_testkit as support;

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::AnyError;
use support::ack_worker::Heard;

const BACKLOG: usize = 100_000;
const BATCH: usize = 1000;
const B_JOBS: usize = 100;
const B_EVERY: Duration = Duration::from_millis(100);
const SESSIONS: usize = 4;
const CAPACITY: u32 = 8;

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let mut lines = Vec::new();
    for keyed in [true, false] {
        let (p50, p99, drained) = measure(keyed).await?;
        let mode = if keyed {
            "keys, turns between them"
        } else {
            "no keys, FIFO"
        };
        let line = format!(
            "B dispatch with {mode}: p50 {p50:.1} ms, p99 {p99:.1} ms ({drained:.1} s to drain A)"
        );
        println!("{line}");
        lines.push(line);
    }
    println!("RESULT {}", json!({ "fairness": lines }));
    Ok(())
}

/// B's dispatch p50 and p99 in ms, and the seconds A's backlog took.
async fn measure(keyed: bool) -> Result<(f64, f64, f64), AnyError> {
    let cluster = support::in_process::Cluster::start(1).await?;
    let base = cluster.api_bases()[0].clone();
    let grpc = cluster.grpc_urls()[0].clone();
    let http = reqwest::Client::new();
    let space = support::in_process::create_space(&http, &base).await?;
    let url = format!("{base}/spaces/{}/jobs", space.id);
    let key_field = |key: &str| if keyed { json!(key) } else { Value::Null };
    for _ in 0..BACKLOG / BATCH {
        let jobs: Vec<Value> = (0..BATCH)
            .map(|_| json!({ "name": "a", "concurrencyKey": key_field("A") }))
            .collect();
        let response = http
            .post(&url)
            .header("x-api-key", &space.key)
            .json(&jobs)
            .send()
            .await?;
        assert_eq!(response.status(), 201);
    }

    let epoch = Instant::now();
    let waits: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let a_done: Arc<Mutex<(usize, Option<Duration>)>> = Arc::default();
    for _ in 0..SESSIONS {
        let (grpc, space_id, key) = (grpc.clone(), space.id.clone(), space.key.clone());
        let (waits, a_done) = (waits.clone(), a_done.clone());
        tokio::spawn(async move {
            let _ = support::ack_worker::ack_and_complete_all(
                &grpc,
                &key,
                &space_id,
                CAPACITY,
                |heard| {
                    if let Heard::Assigned(job) = heard {
                        let payload: Value = job
                            .payload_json
                            .as_deref()
                            .and_then(|text| serde_json::from_str(text).ok())
                            .unwrap_or_default();
                        match payload["sent"].as_u64() {
                            Some(sent) => waits
                                .lock()
                                .unwrap()
                                .push(epoch.elapsed().saturating_sub(Duration::from_micros(sent))),
                            None => {
                                let mut done = a_done.lock().unwrap();
                                done.0 += 1;
                                if done.0 == BACKLOG {
                                    done.1 = Some(epoch.elapsed());
                                }
                            }
                        }
                    }
                    ControlFlow::Continue(())
                },
            )
            .await;
        });
    }
    let mut tick = tokio::time::interval(B_EVERY);
    for _ in 0..B_JOBS {
        tick.tick().await;
        let job = json!({
            "name": "b",
            "concurrencyKey": key_field("B"),
            "payload": { "sent": epoch.elapsed().as_micros() as u64 },
        });
        let response = http
            .post(&url)
            .header("x-api-key", &space.key)
            .json(&job)
            .send()
            .await?;
        assert_eq!(response.status(), 201);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (waits.lock().unwrap().len() < B_JOBS || a_done.lock().unwrap().1.is_none())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = a_done
        .lock()
        .unwrap()
        .1
        .map_or(f64::NAN, |at| at.as_secs_f64());
    let mut waits = waits.lock().unwrap().clone();
    cluster.stop().await;
    waits.sort_unstable();
    let at = |q: f64| {
        waits
            .get(((waits.len() as f64 * q) as usize).min(waits.len().saturating_sub(1)))
            .map_or(f64::NAN, |wait| wait.as_secs_f64() * 1000.0)
    };
    Ok((at(0.5), at(0.99), drained))
}
