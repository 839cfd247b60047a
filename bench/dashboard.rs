//! The dashboard under load: a space's jobs page open in headless Chromium
//! while the space runs at EVENTS_PER_SECOND space-stream events for
//! SECONDS. Jobs are created in bulk every 50 ms and a gRPC stream worker
//! acks and completes each, so every job makes four events (created,
//! delivered, acked, completed). Prints event-to-DOM latency p50/p99/max
//! (job created to its row in the page), the longest main-thread task, and
//! whether the page's counts equal the server's at the end.
//!
//!     cargo run --release --example dashboard -- [EVENTS_PER_SECOND] [SECONDS]
//!
//! Needs /usr/bin/chromium; installs playwright-core into tests/browser
//! from npm when it is missing (as the browser test does). The browser half
//! is `tests/browser/dashboard_bench.mjs`.

use std::ops::ControlFlow;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use emit_testkit as support;

use support::{ADMIN_KEY, AnyError};

/// Events each job makes on the space stream.
const EVENTS_PER_JOB: u64 = 4;
const TICK: Duration = Duration::from_millis(50);

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let mut args = std::env::args().skip(1);
    let events_per_second: u64 = args.next().map_or(Ok(2_000), |arg| arg.parse())?;
    let seconds: u64 = args.next().map_or(Ok(60), |arg| arg.parse())?;
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !browser_dir.join("node_modules/playwright-core").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&browser_dir)
            .status()
            .await?;
        if !status.success() {
            return Err("npm ci in tests/browser failed".into());
        }
    }

    let dir = std::env::temp_dir().join(format!("emit-dashboard-bench-{}", std::process::id()));
    let (core, gateway) = support::in_process::start_server(&dir.to_string_lossy()).await?;
    let base = format!("http://{}", gateway.http_addr);
    let grpc = format!("http://{}", core.grpc_addr);
    let http = reqwest::Client::new();
    let space = support::in_process::create_space(&http, &format!("{base}/api/v1")).await?;

    let mut page = Command::new("node")
        .arg("dashboard_bench.mjs")
        .current_dir(&browser_dir)
        .env("EMIT_URL", &base)
        .env("EMIT_ADMIN_KEY", ADMIN_KEY)
        .env("EMIT_SPACE", &space.id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut tell = page.stdin.take().ok_or("no stdin")?;
    let mut said = BufReader::new(page.stdout.take().ok_or("no stdout")?).lines();
    match said.next_line().await? {
        Some(line) if line == "ready" => {}
        other => return Err(format!("the page did not get ready: {other:?}").into()),
    }

    let worker = {
        let (grpc, key, space_id) = (grpc.clone(), space.key.clone(), space.id.clone());
        tokio::spawn(async move {
            support::ack_worker::ack_and_complete_all(&grpc, &key, &space_id, 256, |_| {
                ControlFlow::Continue(())
            })
            .await
        })
    };

    // Jobs per tick, spread so the rate holds over the run.
    let jobs_per_second = events_per_second / EVENTS_PER_JOB;
    let ticks_per_second = Duration::from_secs(1).as_millis() / TICK.as_millis();
    let per_tick = (jobs_per_second as u128 / ticks_per_second).max(1) as usize;
    println!(
        "driving {} events/s ({} jobs/s, {per_tick} per {} ms) for {seconds} s, page open",
        per_tick as u64 * EVENTS_PER_JOB * ticks_per_second as u64,
        per_tick as u128 * ticks_per_second,
        TICK.as_millis()
    );
    let jobs_url = format!("{base}/api/v1/spaces/{}/jobs", space.id);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    let mut created = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        let batch: Vec<Value> = (0..per_tick)
            .map(
                |i| json!({ "name": format!("render-{}", i % 8), "payload": { "n": created + i } }),
            )
            .collect();
        let response = http
            .post(&jobs_url)
            .header("x-api-key", &space.key)
            .json(&batch)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("create answered {}", response.status()).into());
        }
        created += per_tick;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let the worker finish what is queued, so the counts settle.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let completed = http
            .get(format!("{jobs_url}?status=completed&limit=1"))
            .header("x-api-key", ADMIN_KEY)
            .send()
            .await?
            .headers()
            .get("x-total-count")
            .and_then(|value| value.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        if completed >= created || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tell.write_all(b"done\n").await?;
    let figures: Value = serde_json::from_str(&said.next_line().await?.ok_or("no figures")?)?;
    drop(tell);
    page.wait().await?;
    worker.abort();

    println!(
        "created {created} jobs in {elapsed:.1} s: {:.0} events/s",
        created as f64 * EVENTS_PER_JOB as f64 / elapsed
    );
    println!(
        "event to DOM over {} rows: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        figures["rows"],
        num(&figures["p50"]),
        num(&figures["p99"]),
        num(&figures["max"])
    );
    println!(
        "longest main-thread task: {:.0} ms",
        num(&figures["longestTask"])
    );
    println!(
        "page counts equal the server's: {} (page {}, server {})",
        figures["countsEqual"], figures["pageCounts"], figures["serverCounts"]
    );
    gateway.stop().await;
    core.stop().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn num(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}
