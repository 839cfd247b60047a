//! The two workloads of the peer comparison (`bench/run`), against emit:
//!
//! - A: 20,000 no-op jobs created in bulk batches of 100 by 4 producers.
//!   First with nobody consuming (create-only jobs/s); then, once that
//!   backlog is drained, again while workers of total concurrency 32
//!   consume them (end-to-end jobs/s, until the last completion).
//! - B: 1000 single creates at 100/s into idle workers: from sending the
//!   create to the worker holding the job (dispatch) and to the server
//!   having accepted its completion (completion), p50/p99.
//!
//!     cargo run --release --example workloads -- rest|stream [REPLICAS]
//!
//! `rest`: 32 REST workers, each long-polling up to 50 jobs, then acking and
//! completing each in turn. `stream`: 4 gRPC worker sessions of capacity 8.
//! SQLite (synchronous=FULL) by default; with `EMIT_BENCH_DATABASE=postgres`,
//! a fresh PostgreSQL database shared by REPLICAS cores. With
//! `EMIT_BENCH_KEYS=N`, every job carries one of N concurrency keys (no
//! limit: the cost of keyed dispatch and its turns). With
//! `EMIT_BENCH_CREATE_ONLY=1`, it stops after A's create-only figure (to
//! measure creates many times over). Server and load run in
//! this one process. For A end to end it also prints where the first
//! core's writer spent its time, per job and by phase
//! (`emit_writer_phase_seconds`), and how busy it was. Ends with a
//! `RESULT {...}` line for `bench/run`.

use emit_testkit as support;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Notify;

use support::AnyError;
use support::ack_worker::Heard;

const JOBS: usize = 20_000;
const BATCH: usize = 100;
const PRODUCERS: usize = 4;
const REST_WORKERS: usize = 32;
const SESSIONS: usize = 4;
const CAPACITY: u32 = 8;
const SINGLES: usize = 1000;

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Rest,
    Stream,
}

/// What the workers report, shared with the load.
struct Tally {
    epoch: Instant,
    completed: AtomicUsize,
    /// The count `until` waits for: only reaching it wakes the waiter. A
    /// wake per completion cost the server's cores a futex call and a
    /// context switch per job, since the waiter runs on the main thread.
    awaited: AtomicUsize,
    progress: Notify,
    /// Single creates, since each create was sent: to the worker holding the
    /// job, and to its completion accepted.
    dispatch: std::sync::Mutex<Vec<Duration>>,
    completion: std::sync::Mutex<Vec<Duration>>,
}

impl Tally {
    /// Since the job's create was sent, for the single creates of B.
    fn since_sent(&self, payload: &Value) -> Option<Duration> {
        let sent = Duration::from_micros(payload["sent"].as_u64()?);
        Some(self.epoch.elapsed().saturating_sub(sent))
    }

    fn started(&self, payload: &Value) {
        if let Some(since) = self.since_sent(payload) {
            self.dispatch.lock().unwrap().push(since);
        }
    }

    fn completed(&self, payload: &Value) {
        if let Some(since) = self.since_sent(payload) {
            self.completion.lock().unwrap().push(since);
        }
        let completed = self.completed.fetch_add(1, Ordering::SeqCst) + 1;
        if completed >= self.awaited.load(Ordering::SeqCst) {
            self.progress.notify_waiters();
        }
    }

    async fn until(&self, target: usize) {
        self.awaited.store(target, Ordering::SeqCst);
        loop {
            let notified = self.progress.notified();
            if self.completed.load(Ordering::SeqCst) >= target {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}

/// The cluster runs on the server's own runtime, the producers and workers
/// on `support::load_runtime` (why: there).
fn main() -> Result<(), AnyError> {
    let mut args = std::env::args().skip(1);
    let path = match args.next().as_deref() {
        Some("rest") => Path::Rest,
        Some("stream") => Path::Stream,
        _ => return Err("usage: workloads rest|stream [REPLICAS]".into()),
    };
    let replicas: usize = args.next().map_or(Ok(1), |arg| arg.parse())?;
    let keys: usize = std::env::var("EMIT_BENCH_KEYS").map_or(Ok(0), |keys| keys.parse())?;
    let server = emit_core::server::runtime()?;
    let cluster = server.block_on(support::in_process::Cluster::start(replicas))?;
    support::load_runtime()?.block_on(run(path, replicas, keys, cluster, &server))
}

async fn run(
    path: Path,
    replicas: usize,
    keys: usize,
    cluster: support::in_process::Cluster,
    server: &tokio::runtime::Runtime,
) -> Result<(), AnyError> {
    let bases = cluster.api_bases();
    let grpc_urls = cluster.grpc_urls();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let space = support::in_process::create_space(&http, &bases[0]).await?;
    let tally = Arc::new(Tally {
        epoch: Instant::now(),
        completed: AtomicUsize::new(0),
        awaited: AtomicUsize::new(usize::MAX),
        progress: Notify::new(),
        dispatch: Default::default(),
        completion: Default::default(),
    });

    // A, create only.
    let started = Instant::now();
    create_all(&http, &bases, &space, keys).await?;
    let create_only = JOBS as f64 / started.elapsed().as_secs_f64();
    if std::env::var_os("EMIT_BENCH_CREATE_ONLY").is_some() {
        println!("  A create only : {create_only:.0} jobs/s");
        server.spawn(cluster.stop()).await?;
        return Ok(());
    }
    // Drain (not timed), then A end to end.
    match path {
        Path::Rest => {
            for worker in 0..REST_WORKERS {
                let base = bases[worker % bases.len()].clone();
                let (http, space_id, key, tally) = (
                    http.clone(),
                    space.id.clone(),
                    space.key.clone(),
                    tally.clone(),
                );
                tokio::spawn(rest_worker(http, base, space_id, key, tally));
            }
        }
        Path::Stream => {
            for session in 0..SESSIONS {
                let url = grpc_urls[session % grpc_urls.len()].clone();
                let (space_id, key, tally) = (space.id.clone(), space.key.clone(), tally.clone());
                tokio::spawn(async move {
                    if let Err(error) = stream_worker(url, space_id, key, tally).await {
                        eprintln!("session failed: {error}");
                    }
                });
            }
        }
    }
    tally.until(JOBS).await;
    let phases_before = writer_phases(&http, &bases[0]).await?;
    let started = Instant::now();
    create_all(&http, &bases, &space, keys).await?;
    tally.until(2 * JOBS).await;
    let elapsed = started.elapsed().as_secs_f64();
    let end_to_end = JOBS as f64 / elapsed;
    let phases_after = writer_phases(&http, &bases[0]).await?;

    // B: single creates at 100/s into idle workers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = tally.completed.load(Ordering::SeqCst);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for n in 0..SINGLES {
        tick.tick().await;
        let mut body = json!({
            "name": "ping",
            "payload": { "n": n, "sent": tally.epoch.elapsed().as_micros() as u64 },
        });
        if keys > 0 {
            body["concurrencyKey"] = format!("k{}", n % keys).into();
        }
        let request = http
            .post(format!(
                "{}/spaces/{}/jobs",
                bases[n % bases.len()],
                space.id
            ))
            .header("x-api-key", &space.key)
            .json(&body)
            .send();
        tokio::spawn(async move {
            if let Ok(response) = request.await {
                assert_eq!(response.status(), 201);
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), tally.until(before + SINGLES)).await;
    let mut dispatch = tally.dispatch.lock().unwrap().clone();
    let mut completion = tally.completion.lock().unwrap().clone();
    let engine = cluster.engine;
    server.spawn(cluster.stop()).await?;

    let ms = |samples: &mut Vec<Duration>, q: f64| {
        samples.sort_unstable();
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .map_or(f64::NAN, |sample| sample.as_secs_f64() * 1000.0)
    };
    let path_name = match (path, keys) {
        (Path::Rest, 0) => "REST polling".to_owned(),
        (Path::Stream, 0) => "gRPC stream".to_owned(),
        (Path::Rest, keys) => format!("REST polling, {keys} keys"),
        (Path::Stream, keys) => format!("gRPC stream, {keys} keys"),
    };
    println!("emit, {path_name}, {engine}, {replicas} core(s)");
    println!("  A create only : {create_only:.0} jobs/s");
    println!("  A end to end  : {end_to_end:.0} jobs/s");
    // Where the first core's writer spent A end to end, per job.
    let mut busy = 0.0;
    let mut split = Vec::new();
    let mut per_job = serde_json::Map::new();
    for ((phase, before), (_, after)) in phases_before.iter().zip(&phases_after) {
        busy += after - before;
        let micros = (after - before) * 1e6 / JOBS as f64;
        split.push(format!("{phase} {micros:.1}"));
        per_job.insert(phase.clone(), json!(micros));
    }
    let busy = busy / elapsed;
    println!(
        "  A writer      : {} µs a job; busy {:.0}% (core 1)",
        split.join(", "),
        busy * 100.0
    );
    let result = json!({
        "system": "emit",
        "path": path_name,
        "storage": engine,
        "replicas": replicas,
        "createOnly": create_only,
        "endToEnd": end_to_end,
        "dispatchP50": ms(&mut dispatch, 0.5),
        "dispatchP99": ms(&mut dispatch, 0.99),
        "completionP50": ms(&mut completion, 0.5),
        "completionP99": ms(&mut completion, 0.99),
        "singles": completion.len(),
        "writerMicrosPerJob": per_job,
        "writerBusy": busy,
    });
    println!(
        "  B dispatch    : p50 {:.2} ms, p99 {:.2} ms; completion p50 {:.2} ms, p99 {:.2} ms ({} of {SINGLES})",
        result["dispatchP50"].as_f64().unwrap_or(f64::NAN),
        result["dispatchP99"].as_f64().unwrap_or(f64::NAN),
        result["completionP50"].as_f64().unwrap_or(f64::NAN),
        result["completionP99"].as_f64().unwrap_or(f64::NAN),
        completion.len()
    );
    println!("RESULT {result}");
    Ok(())
}

/// The first core's writer time so far, by phase, in seconds
/// (`emit_writer_phase_seconds`), in the order the phases run.
async fn writer_phases(
    http: &reqwest::Client,
    api_base: &str,
) -> Result<Vec<(String, f64)>, AnyError> {
    let text = support::scrape_metrics(http, api_base.trim_end_matches("/api/v1")).await?;
    let mut phases = Vec::new();
    for phase in emit_core::metrics::WriterPhase::ALL.map(|phase| phase.label()) {
        let series = format!("emit_writer_phase_seconds_total{{phase=\"{phase}\"}}");
        let seconds = support::metric_sample(&text, &series)
            .ok_or_else(|| format!("no {series} on /metrics"))?;
        phases.push((phase.to_owned(), seconds));
    }
    Ok(phases)
}

/// JOBS jobs in bulk batches of BATCH from PRODUCERS producers, spread over
/// `keys` concurrency keys (none when 0).
async fn create_all(
    http: &reqwest::Client,
    bases: &[String],
    space: &support::in_process::BenchSpace,
    keys: usize,
) -> Result<(), AnyError> {
    let batches = Arc::new(AtomicUsize::new(JOBS / BATCH));
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let url = format!("{}/spaces/{}/jobs", bases[producer % bases.len()], space.id);
        let (http, key, batches) = (http.clone(), space.key.clone(), batches.clone());
        producers.push(tokio::spawn(async move {
            while let Ok(batch) = batches.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            }) {
                let body: Vec<Value> = (0..BATCH)
                    .map(|i| {
                        let mut job = json!({ "name": "noop", "payload": { "i": i } });
                        if keys > 0 {
                            job["concurrencyKey"] =
                                format!("k{}", (batch * BATCH + i) % keys).into();
                        }
                        job
                    })
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
    Ok(())
}

/// The Quick Start worker: long-poll up to 50 jobs, then ack and complete
/// each in turn.
async fn rest_worker(
    http: reqwest::Client,
    base: String,
    space_id: String,
    key: String,
    tally: Arc<Tally>,
) -> Result<(), reqwest::Error> {
    loop {
        let polled: Value = http
            .post(format!("{base}/spaces/{space_id}/jobs/poll"))
            .header("x-api-key", &key)
            .json(&json!({ "count": 50, "waitSeconds": 5 }))
            .send()
            .await?
            .json()
            .await?;
        for job in polled["jobs"].as_array().into_iter().flatten() {
            tally.started(&job["payload"]);
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
            tally.completed(&job["payload"]);
        }
    }
}

/// A worker session: ack and complete every pushed job at once.
async fn stream_worker(
    grpc_url: String,
    space_id: String,
    key: String,
    tally: Arc<Tally>,
) -> Result<(), AnyError> {
    let mut payloads = std::collections::HashMap::new();
    let mut refused = None;
    support::ack_worker::ack_and_complete_all(&grpc_url, &key, &space_id, CAPACITY, |heard| {
        match heard {
            Heard::Assigned(job) => {
                let payload: Value = job
                    .payload_json
                    .as_deref()
                    .and_then(|text| serde_json::from_str(text).ok())
                    .unwrap_or_default();
                tally.started(&payload);
                payloads.insert(job.id.clone(), payload);
            }
            Heard::Completed { job_id, result } => {
                let payload = payloads.remove(job_id).unwrap_or_default();
                if result.code != 0 {
                    refused = Some(format!("completion refused: {}", result.message));
                    return ControlFlow::Break(());
                }
                tally.completed(&payload);
            }
            Heard::AckRefused(_) => {}
        }
        ControlFlow::Continue(())
    })
    .await?;
    refused.map_or(Ok(()), |refused| Err(refused.into()))
}
