//! What idle worker sessions of one tenant cost another: create latency in
//! space B alone, then while space A keeps creating jobs, then while A
//! also holds SESSIONS idle worker sessions, each with a name filter of its
//! own that none of those jobs matches.
//!
//!     cargo run --release --example idle_sessions -- [SESSIONS] [CREATES]
//!
//! (defaults 2000 and 500). The sessions are spread over several keys, as
//! the per-key session bound requires.

use emit_testkit as support;

use std::time::{Duration, Instant};

use emit_client::{Session, pb};
use emit_proto::v1::worker_service_client::WorkerServiceClient;
use serde_json::json;
use support::AnyError;
use support::in_process::{BenchSpace, create_space, start_server};

const SESSIONS_PER_KEY: usize = 100;

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let mut args = std::env::args().skip(1);
    let sessions: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let creates: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500);
    let dir = std::env::temp_dir().join(format!("emit-idle-{}", std::process::id()));
    let (core, gateway) = start_server(&dir.display().to_string()).await?;
    let base = format!("http://{}/api/v1", gateway.http_addr);
    let grpc = format!("http://{}", core.grpc_addr);
    let http = reqwest::Client::new();
    let victim = create_space(&http, &base).await?;
    let noisy = create_space(&http, &base).await?;

    let alone = create_latencies(&http, &base, &victim, creates).await?;
    // The noisy tenant keeps making jobs ready in its space, which its
    // sessions do not want: every batch touches the space of 2,000 waiters.
    let noise_http = http.clone();
    let noise_base = base.clone();
    let noise_space = noisy.id.clone();
    let noise_key = noisy.key.clone();
    let noise = tokio::spawn(async move {
        loop {
            let _ = noise_http
                .post(format!("{noise_base}/spaces/{noise_space}/jobs"))
                .header("x-api-key", &noise_key)
                .json(&json!({ "name": "unwanted" }))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let noise_only = create_latencies(&http, &base, &victim, creates).await?;

    let mut held = Vec::new();
    for batch in 0..sessions.div_ceil(SESSIONS_PER_KEY) {
        let key = worker_key(&http, &base, &noisy).await?;
        let mut client = WorkerServiceClient::connect(grpc.clone()).await?;
        for i in 0..SESSIONS_PER_KEY.min(sessions - batch * SESSIONS_PER_KEY) {
            let hello = pb::WorkerHello {
                space_id: noisy.id.clone(),
                names: vec![format!("wanted-{batch}-{i}")],
                capacity: 1,
            };
            held.push(Session::open(&mut client, &key, hello).await?);
        }
    }
    let crowded = create_latencies(&http, &base, &victim, creates).await?;
    noise.abort();

    println!("another space's create latency, {creates} sequential creates (ms):");
    println!(
        "  alone:                                  {}",
        summary(alone)
    );
    println!(
        "  while another space creates jobs:       {}",
        summary(noise_only)
    );
    println!(
        "  the same, and {} idle sessions there: {}",
        held.len(),
        summary(crowded)
    );
    drop(held);
    gateway.stop().await;
    core.stop().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

async fn worker_key(
    http: &reqwest::Client,
    base: &str,
    space: &BenchSpace,
) -> Result<String, AnyError> {
    let token: serde_json::Value = http
        .post(format!("{base}/spaces/{}/tokens", space.id))
        .header("x-api-key", support::ADMIN_KEY)
        .json(&json!({ "name": "idle", "scopes": ["jobs:worker"] }))
        .send()
        .await?
        .json()
        .await?;
    Ok(token["key"].as_str().ok_or("no key")?.to_owned())
}

async fn create_latencies(
    http: &reqwest::Client,
    base: &str,
    space: &BenchSpace,
    count: usize,
) -> Result<Vec<f64>, AnyError> {
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let response = http
            .post(format!("{base}/spaces/{}/jobs", space.id))
            .header("x-api-key", &space.key)
            .json(&json!({ "name": "victim" }))
            .send()
            .await?;
        if response.status() != 201 {
            return Err(format!("create answered {}", response.status()).into());
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(latencies)
}

fn summary(mut latencies: Vec<f64>) -> String {
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    format!("p50 {:.2}  p99 {:.2}", at(0.5), at(0.99))
}
