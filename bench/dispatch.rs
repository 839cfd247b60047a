//! Push dispatch over gRPC worker streams.
//!
//! 1. Throughput: JOBS no-op jobs created in bulk batches of 100 while
//!    WORKERS stream sessions (capacity 8 each) ack and complete them;
//!    end-to-end jobs/s. Compare with `rest_throughput` (REST polling).
//! 2. Dispatch latency: 1000 single creates at 100/s into idle sessions;
//!    time from sending the create to the worker receiving the job, p50/p99.
//!
//!     cargo run --release --example dispatch -- [JOBS] [WORKERS] [REPLICAS]
//!
//! Server and load run in one process on this 2-core machine: SQLite
//! (synchronous=FULL) by default; with `EMIT_BENCH_DATABASE=postgres`, a
//! fresh PostgreSQL database and REPLICAS core replicas (each with a
//! gateway) sharing it, workers and producers spread over them.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use emit_proto::v1 as pb;
use emit_proto::v1::worker_service_client::WorkerServiceClient;
use pb::open_session_request::Message as Outgoing;
use pb::open_session_response::Message as Incoming;
use pb::worker_report::Action;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use support::AnyError;

const CAPACITY: u32 = 8;

/// Opens a session that completes every job it gets; each assignment's
/// arrival is reported on `arrivals`.
async fn run_worker(
    grpc_url: String,
    space_id: String,
    key: String,
    arrivals: mpsc::UnboundedSender<(String, Instant, Duration)>,
    completed: Arc<AtomicUsize>,
) -> Result<(), AnyError> {
    let (outgoing, stream) = mpsc::channel(1024);
    let hello = pb::WorkerHello {
        space_id,
        names: vec![],
        capacity: CAPACITY,
    };
    outgoing
        .send(pb::OpenSessionRequest {
            message: Some(Outgoing::Hello(hello)),
        })
        .await?;
    let mut request = tonic::Request::new(ReceiverStream::new(stream));
    request.metadata_mut().insert("x-api-key", key.parse()?);
    let mut client = WorkerServiceClient::connect(grpc_url).await?;
    let mut incoming = client.open_session(request).await?.into_inner();
    let mut request_id = 0;
    let mut send = |job_id: &str, action: Action| {
        request_id += 1;
        pb::OpenSessionRequest {
            message: Some(Outgoing::Report(pb::WorkerReport {
                request_id,
                job_id: job_id.to_owned(),
                action: Some(action),
            })),
        }
    };
    while let Some(message) = incoming.message().await? {
        match message.message {
            Some(Incoming::Assignment(job)) => {
                // Since the job was created (its commit), by the wall clock.
                let since_created = job.created_at.map_or(Duration::ZERO, |created| {
                    let created = std::time::UNIX_EPOCH
                        + Duration::new(created.seconds as u64, created.nanos as u32);
                    std::time::SystemTime::now()
                        .duration_since(created)
                        .unwrap_or_default()
                });
                let _ = arrivals.send((job.id.clone(), Instant::now(), since_created));
                outgoing
                    .send(send(&job.id, Action::Ack(pb::ReportAck {})))
                    .await?;
                let complete = Action::Complete(pb::ReportComplete { result_json: None });
                outgoing.send(send(&job.id, complete)).await?;
            }
            Some(Incoming::Result(result))
                if result
                    .job
                    .as_ref()
                    .is_some_and(|job| job.status == pb::JobStatus::Completed as i32) =>
            {
                completed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map_or(Ok(20_000), |arg| arg.parse())?;
    let workers: usize = args.next().map_or(Ok(4), |arg| arg.parse())?;
    let replicas: usize = args.next().map_or(Ok(1), |arg| arg.parse())?;
    let cluster = support::Cluster::start(replicas).await?;
    let bases = cluster.api_bases();
    let grpc_urls = cluster.grpc_urls();
    let base = bases[0].clone();
    println!(
        "storage       : {}, {replicas} core replica(s)",
        cluster.engine
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let space = support::create_space(&http, &base).await?;

    let (arrivals, mut arrived) = mpsc::unbounded_channel();
    let completed = Arc::new(AtomicUsize::new(0));
    for worker in 0..workers {
        let url = grpc_urls[worker % replicas].clone();
        let (space_id, key) = (space.id.clone(), space.key.clone());
        let (arrivals, completed) = (arrivals.clone(), completed.clone());
        tokio::spawn(async move {
            if let Err(error) = run_worker(url, space_id, key, arrivals, completed).await {
                eprintln!("worker failed: {error}");
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. Throughput.
    let started = Instant::now();
    let producers = 4;
    let batches = jobs.div_ceil(100);
    let mut creating = Vec::new();
    for producer in 0..producers {
        let (http, base, space_id, key) = (
            http.clone(),
            bases[producer % replicas].clone(),
            space.id.clone(),
            space.key.clone(),
        );
        creating.push(tokio::spawn(async move {
            for _ in (producer..batches).step_by(producers) {
                let batch: Vec<Value> = (0..100).map(|_| json!({ "name": "noop" })).collect();
                http.post(format!("{base}/spaces/{space_id}/jobs"))
                    .header("x-api-key", &key)
                    .json(&batch)
                    .send()
                    .await?
                    .error_for_status()?;
            }
            Ok::<_, reqwest::Error>(())
        }));
    }
    for task in creating {
        task.await??;
    }
    let total = batches * 100;
    while completed.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "end to end    : {total} jobs created (bulk 100) and completed by {workers} stream workers \
         (capacity {CAPACITY}) in {:.2}s = {:.0} jobs/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    while arrived.try_recv().is_ok() {}

    // 2. Dispatch latency into idle workers.
    let mut latencies = Vec::with_capacity(1000);
    let mut create_calls = Vec::with_capacity(1000);
    let mut from_created = Vec::with_capacity(1000);
    let mut sent_at = Vec::with_capacity(1000);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..1000 {
        tick.tick().await;
        let sent = Instant::now();
        let created: Value = http
            .post(format!("{base}/spaces/{}/jobs", space.id))
            .header("x-api-key", &space.key)
            .json(&json!({ "name": "ping" }))
            .send()
            .await?
            .json()
            .await?;
        create_calls.push(sent.elapsed());
        sent_at.push((created["id"].as_str().unwrap_or_default().to_owned(), sent));
    }
    // Arrivals may come before the create's response: match them afterwards.
    let mut arrived_at = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrived_at.len() < sent_at.len() && Instant::now() < deadline {
        if let Ok(Some((id, at, since_created))) =
            tokio::time::timeout(Duration::from_millis(100), arrived.recv()).await
        {
            arrived_at.insert(id, at);
            from_created.push(since_created);
        }
    }
    for (id, sent) in &sent_at {
        if let Some(at) = arrived_at.get(id) {
            latencies.push(*at - *sent);
        }
    }
    let percentile = |samples: &mut Vec<Duration>, q: f64| {
        samples.sort_unstable();
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1000.0
    };
    println!(
        "dispatch      : {} single creates at 100/s into idle workers; create sent -> job at worker: \
         p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        percentile(&mut latencies, 0.50),
        percentile(&mut latencies, 0.99)
    );
    println!(
        "ready -> push : job created (committed) -> job at worker: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut from_created, 0.50),
        percentile(&mut from_created, 0.99)
    );
    println!(
        "create call   : the REST create alone (durable before it returns): p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut create_calls, 0.50),
        percentile(&mut create_calls, 0.99)
    );
    cluster.stop().await;
    Ok(())
}
