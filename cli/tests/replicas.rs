//! The scale-out topology for real: three `emit core` processes and two
//! `emit gateway` processes on one PostgreSQL database, stream workers spread
//! over the cores, producers on both gateways, a space stream watched through
//! each gateway, and one core killed with SIGKILL mid-run.

use emit_testkit as support;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emit_client::{Incoming, Session, pb};
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::AnyError;
use support::ack_worker::{Heard, ack_and_complete_all};
use support::{ADMIN_KEY, PostgresDatabase, Process};
use tokio_tungstenite::tungstenite::Message;

const JOBS: usize = 20_000;
const BATCH: usize = 100;
const SESSIONS_PER_CORE: usize = 4;
const CAPACITY: u32 = 8;
/// Jobs held by workers of the killed core come back after this. Long
/// enough that a live worker on a loaded 2-core CI machine (five processes,
/// PostgreSQL and the other tests of this file) never times out: a CI run
/// with 2 s saw live workers' jobs time out and be pushed again.
const TIMEOUT_SECONDS: u32 = 10;
/// The core that is killed (no gateway in front of it).
const DOOMED: usize = 2;

/// What the workers saw, for the exactly-once checks.
#[derive(Default)]
struct Ledger {
    /// Per job: the core index of each session it was pushed to.
    deliveries: HashMap<String, Vec<usize>>,
    /// Per job: completions the server accepted.
    completions: HashMap<String, usize>,
}

struct Cluster {
    cores: Vec<String>,
    dead: Vec<AtomicBool>,
}

impl Cluster {
    /// The next live core after `index`.
    fn next_live(&self, index: usize) -> usize {
        (1..=self.cores.len())
            .map(|step| (index + step) % self.cores.len())
            .find(|candidate| !self.dead[*candidate].load(Ordering::SeqCst))
            .expect("a live core")
    }
}

/// A worker that completes every job pushed to it, reconnecting to the next
/// live core whenever its session ends.
async fn worker(
    cluster: Arc<Cluster>,
    mut core: usize,
    space_id: String,
    key: String,
    ledger: Arc<Mutex<Ledger>>,
    completed: Arc<AtomicUsize>,
) {
    loop {
        let session = run_session(
            &cluster.cores[core],
            core,
            &space_id,
            &key,
            &ledger,
            &completed,
        );
        if let Err(error) = session.await {
            eprintln!("session on core {core} ended: {error}");
        }
        if completed.load(Ordering::SeqCst) >= JOBS {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        core = if cluster.dead[core].load(Ordering::SeqCst) {
            cluster.next_live(core)
        } else {
            core
        };
    }
}

async fn run_session(
    url: &str,
    core: usize,
    space_id: &str,
    key: &str,
    ledger: &Mutex<Ledger>,
    completed: &AtomicUsize,
) -> Result<(), AnyError> {
    ack_and_complete_all(url, key, space_id, CAPACITY, |heard| {
        let mut ledger = ledger.lock().unwrap();
        match heard {
            Heard::Assigned(job) => ledger
                .deliveries
                .entry(job.id.clone())
                .or_default()
                .push(core),
            Heard::Completed { job_id, result } if result.code == 0 => {
                *ledger.completions.entry(job_id.to_owned()).or_default() += 1;
                if completed.fetch_add(1, Ordering::SeqCst) + 1 >= JOBS {
                    return ControlFlow::Break(());
                }
            }
            Heard::Completed { result, .. } | Heard::AckRefused(result) => eprintln!(
                "core {core} refused a report: {} {}",
                result.code, result.message
            ),
        }
        ControlFlow::Continue(())
    })
    .await
}

/// Reads a space stream until it has seen every job complete; returns its
/// messages after `connected`.
async fn watch_space(gateway: String, space_id: String, token: String) -> Vec<Value> {
    let ws = gateway.replace("http://", "ws://");
    let url = format!("{ws}/api/v1/realtime/spaces/{space_id}?token={token}");
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("space stream opens");
    let mut events = Vec::new();
    while let Some(message) = socket.next().await {
        let text = match message.expect("space stream stays open") {
            Message::Text(text) => text,
            Message::Close(frame) => panic!("space stream closed: {frame:?}"),
            _ => continue,
        };
        let value: Value = serde_json::from_str(&text).expect("stream messages are JSON");
        if value["type"] == "connected" {
            continue;
        }
        let done = value["counts"]["completed"].as_u64() == Some(JOBS as u64);
        events.push(value);
        if done {
            break;
        }
    }
    events
}

async fn post(client: &reqwest::Client, url: String, key: &str, body: Value) -> Value {
    let response = support::post_json(client, &url, key, &body)
        .await
        .expect("request is answered");
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.expect("JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cores_two_gateways_one_postgres_lose_a_core_and_no_job() {
    let database = PostgresDatabase::create().await;
    let client = reqwest::Client::new();
    let mut cores: Vec<Process> = (0..3).map(|_| Process::core(&database.url)).collect();
    for core in &cores {
        core.wait_grpc_ready().await;
    }
    let gateways: Vec<Process> = cores[..2]
        .iter()
        .map(|core| Process::gateway(&core.url))
        .collect();
    for gateway in &gateways {
        gateway.wait_http_ready(&client).await;
    }

    let base = format!("{}/api/v1", gateways[0].url);
    let space = post(
        &client,
        format!("{base}/spaces"),
        ADMIN_KEY,
        json!({"name": "replicas"}),
    )
    .await;
    let space_id = space["id"].as_str().unwrap().to_owned();
    let token = |scopes: Value| {
        let url = format!("{base}/spaces/{space_id}/tokens");
        let client = client.clone();
        async move {
            let token = post(
                &client,
                url,
                ADMIN_KEY,
                json!({"name": "t", "scopes": scopes}),
            )
            .await;
            token["key"].as_str().unwrap().to_owned()
        }
    };
    let producer = token(json!(["jobs:create", "jobs:read"])).await;
    let worker_key = token(json!(["jobs:worker"])).await;

    // A space stream through each gateway (so through cores 0 and 1).
    let watchers: Vec<_> = gateways
        .iter()
        .map(|gateway| {
            tokio::spawn(watch_space(
                gateway.url.clone(),
                space_id.clone(),
                producer.clone(),
            ))
        })
        .collect();

    let cluster = Arc::new(Cluster {
        cores: cores.iter().map(|core| core.url.clone()).collect(),
        dead: (0..3).map(|_| AtomicBool::new(false)).collect(),
    });
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for core in 0..3 {
        for _ in 0..SESSIONS_PER_CORE {
            workers.push(tokio::spawn(worker(
                cluster.clone(),
                core,
                space_id.clone(),
                worker_key.clone(),
                ledger.clone(),
                completed.clone(),
            )));
        }
    }
    // The space streams see events from their connection on, so they are
    // open before the first job is made. (Workers may join late.)
    for gateway in &gateways {
        support::metric_reaches(&client, &gateway.url, "emit_websocket_subscribers", 1.0).await;
    }

    // Producers on both gateways, in bulk batches.
    let started = Instant::now();
    let mut producers = Vec::new();
    for (index, gateway) in gateways.iter().enumerate() {
        let url = format!("{}/api/v1/spaces/{space_id}/jobs", gateway.url);
        let (client, key) = (client.clone(), producer.clone());
        producers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in (index..JOBS / BATCH).step_by(2) {
                let batch: Vec<Value> = (0..BATCH)
                    .map(|_| json!({"name": "noop", "timeoutSeconds": TIMEOUT_SECONDS}))
                    .collect();
                let created = post(&client, url.clone(), &key, json!(batch)).await;
                ids.extend(
                    created
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|job| job["id"].as_str().unwrap().to_owned()),
                );
            }
            ids
        }));
    }

    // Kill a core while a third of the work is done.
    while completed.load(Ordering::SeqCst) < JOBS / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.dead[DOOMED].store(true, Ordering::SeqCst);
    cores[DOOMED].kill9();
    let completed_at_kill = completed.load(Ordering::SeqCst);

    let mut created = Vec::new();
    for producer in producers {
        created.extend(producer.await.unwrap());
    }
    // The streams end once they have seen every job completed.
    let streams: Vec<Vec<Value>> = tokio::time::timeout(
        Duration::from_secs(120),
        futures_util::future::join_all(watchers),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "not every job completed: workers saw {} completions",
            completed.load(Ordering::SeqCst)
        )
    })
    .into_iter()
    .map(|stream| stream.expect("watcher ran"))
    .collect();
    let elapsed = started.elapsed();
    eprintln!(
        "{JOBS} jobs over 3 cores / 2 gateways in {:.1}s ({:.0} jobs/s); core {DOOMED} killed after {completed_at_kill}",
        elapsed.as_secs_f64(),
        JOBS as f64 / elapsed.as_secs_f64()
    );

    // The server accepted at most one completion per job, from the worker
    // holding it. (A worker whose core died after committing its completion
    // but before answering never hears of it: that job shows 0 here and its
    // one `completed` event below.) A job was pushed twice only if its first
    // worker was on the killed core.
    assert_eq!(created.len(), JOBS);
    let ledger = ledger.lock().unwrap();
    let mut redelivered = 0;
    for id in &created {
        assert!(
            ledger.completions.get(id).copied().unwrap_or(0) <= 1,
            "job {id} completed twice"
        );
        let deliveries = &ledger.deliveries[id];
        if deliveries.len() > 1 {
            redelivered += 1;
            assert!(
                deliveries[..deliveries.len() - 1]
                    .iter()
                    .all(|core| *core == DOOMED),
                "job {id} was pushed again though its worker was alive: {deliveries:?}"
            );
        }
    }
    eprintln!("{redelivered} jobs held on the killed core were pushed again after their timeout");

    // Each space stream saw the one sequence: in order, no gap, counts
    // consistent after every event, every job completed once.
    for events in &streams {
        let mut completed_events: HashMap<&str, usize> = HashMap::new();
        let mut created_events = 0u64;
        // The stream opened before the first event: seq runs 1, 2, 3, ...
        for (seq, event) in (1..).zip(events) {
            assert_eq!(event["seq"].as_i64(), Some(seq), "contiguous seq: {event}");
            let job_id = event["jobId"].as_str().unwrap();
            if event["type"] == "completed" {
                *completed_events.entry(job_id).or_default() += 1;
            }
            if event["type"] == "created" {
                created_events += 1;
            }
            // The stream opened before the first job: the counts add up to
            // the jobs created so far, after every event.
            if let Some(counts) = event["counts"].as_object() {
                let total: u64 = counts.values().map(|count| count.as_u64().unwrap()).sum();
                assert_eq!(total, created_events, "counts add up: {event}");
            }
        }
        let last_counts = &events.last().unwrap()["counts"];
        assert_eq!(last_counts["completed"], JOBS as u64, "{last_counts}");
        for status in [
            "scheduled",
            "pending",
            "delivered",
            "running",
            "dead",
            "killed",
        ] {
            assert_eq!(last_counts[status], 0, "{last_counts}");
        }
        // Every job the producers were told about completed exactly once.
        for id in &created {
            assert_eq!(completed_events.get(id.as_str()), Some(&1), "job {id}");
        }
        assert_eq!(completed_events.len(), JOBS);
    }
    // Both streams carry the same events in the same order.
    let key = |event: &Value| {
        (
            event["seq"].clone(),
            event["type"].clone(),
            event["jobId"].clone(),
        )
    };
    let overlap_start = streams[0][0]["seq"]
        .as_i64()
        .unwrap()
        .max(streams[1][0]["seq"].as_i64().unwrap());
    let tail = |events: &Vec<Value>| -> Vec<_> {
        events
            .iter()
            .filter(|event| event["seq"].as_i64().unwrap() >= overlap_start)
            .map(key)
            .collect()
    };
    assert_eq!(tail(&streams[0]), tail(&streams[1]));
    for worker in workers {
        worker.abort();
    }
}

/// The next text message of a WebSocket as JSON, or the close frame.
async fn next_message(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Result<Value, Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10s")
            .expect("stream open")
            .expect("stream healthy");
        match message {
            Message::Text(text) => return Ok(serde_json::from_str(&text).unwrap()),
            Message::Close(frame) => return Err(frame),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_happens_on_one_replica_reaches_streams_and_sessions_on_another() {
    let database = PostgresDatabase::create().await;
    let client = reqwest::Client::new();
    let cores: Vec<Process> = (0..2).map(|_| Process::core(&database.url)).collect();
    for core in &cores {
        core.wait_grpc_ready().await;
    }
    let gateways: Vec<Process> = cores
        .iter()
        .map(|core| Process::gateway(&core.url))
        .collect();
    for gateway in &gateways {
        gateway.wait_http_ready(&client).await;
    }
    let a = format!("{}/api/v1", gateways[0].url);
    let space = post(
        &client,
        format!("{a}/spaces"),
        ADMIN_KEY,
        json!({"name": "x"}),
    )
    .await;
    let space_id = space["id"].as_str().unwrap().to_owned();
    let token = post(
        &client,
        format!("{a}/spaces/{space_id}/tokens"),
        ADMIN_KEY,
        json!({"name": "t", "scopes": ["jobs:create", "jobs:read", "jobs:worker"]}),
    )
    .await;
    let key = token["key"].as_str().unwrap().to_owned();

    let create_job = async |name: &str| {
        let url = format!("{a}/spaces/{space_id}/jobs");
        post(&client, url, &key, json!({ "name": name })).await
    };

    // A job created and worked through replica A, watched through replica B.
    let job = create_job("x").await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    let ws_b = gateways[1].url.replace("http://", "ws://");
    let (mut job_stream, _) =
        tokio_tungstenite::connect_async(format!("{ws_b}/api/v1/realtime/{job_id}?token={key}"))
            .await
            .expect("job stream opens on B");
    assert_eq!(next_message(&mut job_stream).await.unwrap()["type"], "init");
    let polled = post(
        &client,
        format!("{a}/spaces/{space_id}/jobs/poll"),
        &key,
        json!({}),
    )
    .await;
    assert_eq!(polled["jobs"][0]["id"], job_id.as_str());
    for action in ["ack", "complete"] {
        post(
            &client,
            format!("{a}/jobs/{job_id}/{action}"),
            &key,
            json!({}),
        )
        .await;
    }
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("completed") {
        let event = next_message(&mut job_stream).await.unwrap();
        seen.push(event["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["delivered", "acked", "completed"]);

    // A long poll through B gets a job created through A: B is woken by
    // A's commit.
    let b = format!("{}/api/v1", gateways[1].url);
    let waiting = {
        let (client, url, key) = (
            client.clone(),
            format!("{b}/spaces/{space_id}/jobs/poll"),
            key.clone(),
        );
        tokio::spawn(async move { post(&client, url, &key, json!({"waitSeconds": 20})).await })
    };
    // Created only once the poll waits, so only a wake-up from A's commit
    // can answer it.
    support::metric_reaches(&client, &gateways[1].url, "emit_long_polls_waiting", 1.0).await;
    let created = create_job("z").await;
    let polled = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("polled within 10s")
        .unwrap();
    assert_eq!(polled["jobs"][0]["id"], created["id"]);

    // A worker session on B gets a job created through A.
    let hello = pb::WorkerHello {
        space_id: space_id.clone(),
        names: vec![],
        capacity: 1,
    };
    let mut session = Session::connect(&cores[1].url, &key, hello).await.unwrap();
    let pushed = create_job("y").await;
    let assignment = tokio::time::timeout(Duration::from_secs(10), session.next())
        .await
        .expect("pushed within 10s")
        .unwrap();
    match assignment {
        Some(Incoming::Assignment(job)) => assert_eq!(job.id, pushed["id"].as_str().unwrap()),
        other => panic!("expected an assignment, got {other:?}"),
    }

    // Revoking the key through A ends the stream it holds open on B.
    let token_id = token["id"].as_str().unwrap();
    let revoked = client
        .delete(format!("{a}/spaces/{space_id}/tokens/{token_id}"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let close = loop {
        match next_message(&mut job_stream).await {
            Ok(_) => continue,
            Err(close) => break close.expect("a close frame"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "API key revoked");
    drop(session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_loses_its_listen_connection_catches_up_from_the_table() {
    let database = PostgresDatabase::create().await;
    let client = reqwest::Client::new();
    let core = Process::core(&database.url);
    core.wait_grpc_ready().await;
    let gateway = Process::gateway(&core.url);
    gateway.wait_http_ready(&client).await;
    let api = format!("{}/api/v1", gateway.url);
    let space = post(
        &client,
        format!("{api}/spaces"),
        ADMIN_KEY,
        json!({"name": "x"}),
    )
    .await;
    let space_id = space["id"].as_str().unwrap().to_owned();
    let ws = gateway.url.replace("http://", "ws://");
    let (mut stream, _) = tokio_tungstenite::connect_async(format!(
        "{ws}/api/v1/realtime/spaces/{space_id}?token={ADMIN_KEY}"
    ))
    .await
    .expect("space stream opens");
    assert_eq!(
        next_message(&mut stream).await.unwrap()["type"],
        "connected"
    );
    let create = |n: usize| {
        let (client, url) = (client.clone(), format!("{api}/spaces/{space_id}/jobs"));
        async move {
            let batch: Vec<Value> = (0..n).map(|_| json!({"name": "x"})).collect();
            post(&client, url, ADMIN_KEY, json!(batch)).await
        }
    };
    create(1).await;
    assert_eq!(next_message(&mut stream).await.unwrap()["seq"], 1);

    // Cut the core's LISTEN connection and keep it from reconnecting (the
    // connections it holds stay up), and write while it is gone: those
    // commits' notifications are lost for good.
    let database_name = database.url.rsplit('/').next().unwrap().to_owned();
    let admin_url = database.url.replace(&database_name, "postgres");
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap();
    let allow_connections =
        |allowed: bool| format!("ALTER DATABASE {database_name} ALLOW_CONNECTIONS {allowed}");
    sqlx::query(&allow_connections(false))
        .execute(&mut admin)
        .await
        .unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(&database_name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!cut.is_empty(), "the relay's LISTEN connection was found");
    create(50).await;
    create(50).await;
    sqlx::query(&allow_connections(true))
        .execute(&mut admin)
        .await
        .unwrap();

    // The stream still gets every event, in order, with no gap.
    for seq in 2..=101 {
        let event = next_message(&mut stream).await.unwrap();
        assert_eq!(event["seq"], seq, "{event}");
        assert_eq!(event["type"], "created");
    }
}
