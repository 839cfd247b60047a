//! The concurrency-key checker. Workers on every transport (REST polls and
//! long polls, claims by id, gRPC polls, gRPC worker streams that drop their
//! stream now and then) run the jobs of 20 keys with a limit of 2, while the server is
//! killed with SIGKILL and started again: on SQLite its one process, on
//! PostgreSQL one of three cores at a time. Afterwards every job's events
//! are replayed in the space's commit order (`seq`): no key ever held more
//! than 2 leases, no job was held twice at once, and every job finished
//! exactly once.

use emit_testkit as support;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use emit_proto::v1 as pb;
use serde_json::{Value, json};
use support::ack_worker::ack_and_complete_all;
use support::{ADMIN_KEY, PostgresDatabase, Process, get_ok, post_ok};
use tokio::sync::RwLock;

const KEYS: usize = 20;
const LIMIT: u32 = 2;
const JOBS_PER_KEY: usize = 60;
/// A lease of a killed core or a dropped stream comes back after this.
const TIMEOUT_SECONDS: u32 = 3;
/// Kills while jobs are still running, at least.
const KILLS: usize = 4;
const KILL_EVERY: Duration = Duration::from_millis(2500);
/// How long each worker holds a job, so the work outlasts the kills.
const HOLD: Duration = Duration::from_millis(40);

/// The running servers, as workers find them.
struct Cluster {
    /// (REST base, gRPC URL) per process; replaced on restart.
    addresses: RwLock<Vec<(String, String)>>,
    turn: AtomicUsize,
}

impl Cluster {
    async fn next(&self) -> (String, String) {
        let addresses = self.addresses.read().await;
        addresses[self.turn.fetch_add(1, Ordering::Relaxed) % addresses.len()].clone()
    }
}

async fn start(database_url: &str, http: &reqwest::Client) -> Process {
    let process = Process::serve(database_url, Some(ADMIN_KEY), &[]);
    process.wait_http_ready(http).await;
    process
}

fn addresses(process: &Process) -> (String, String) {
    (
        process.url.clone(),
        process.grpc_url.clone().expect("serve has gRPC"),
    )
}

/// Acks, then completes (or now and then fails) a polled job over REST.
async fn work(http: &reqwest::Client, base: &str, key: &str, job_id: &str, fail: bool) {
    let job = format!("{base}/api/v1/jobs/{job_id}");
    if post_ok(http, &format!("{job}/ack"), key, json!({}))
        .await
        .is_none()
    {
        return;
    }
    tokio::time::sleep(HOLD).await;
    if fail {
        post_ok(
            http,
            &format!("{job}/fail"),
            key,
            json!({ "error": "checker" }),
        )
        .await;
    } else {
        post_ok(
            http,
            &format!("{job}/complete"),
            key,
            json!({ "result": {} }),
        )
        .await;
    }
}

async fn rest_poller(
    cluster: Arc<Cluster>,
    space_id: String,
    key: String,
    wait: u32,
    stop: Arc<AtomicBool>,
) {
    let http = reqwest::Client::new();
    let mut polls = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (base, _) = cluster.next().await;
        let url = format!("{base}/api/v1/spaces/{space_id}/jobs/poll");
        let Some(polled) = post_ok(
            &http,
            &url,
            &key,
            json!({ "count": 3, "waitSeconds": wait }),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for job in polled["jobs"].as_array().into_iter().flatten() {
            polls += 1;
            work(
                &http,
                &base,
                &key,
                job["id"].as_str().unwrap(),
                polls.is_multiple_of(10),
            )
            .await;
        }
    }
}

async fn grpc_poller(cluster: Arc<Cluster>, space_id: String, key: String, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    while !stop.load(Ordering::Relaxed) {
        let (base, grpc) = cluster.next().await;
        let Ok(mut client) = pb::job_service_client::JobServiceClient::connect(grpc).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut request = tonic::Request::new(pb::PollJobsRequest {
            space_id: space_id.clone(),
            count: Some(2),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("x-api-key", key.parse().unwrap());
        let Ok(polled) = client.poll_jobs(request).await else {
            continue;
        };
        let jobs = polled.into_inner().jobs;
        if jobs.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for job in jobs {
            work(&http, &base, &key, &job.id, false).await;
        }
    }
}

/// Claim by id, as a worker woken by a push would: a pending job from the
/// list, claimed, then worked (a claim past its key's limit is refused).
async fn claimer(cluster: Arc<Cluster>, space_id: String, key: String, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    while !stop.load(Ordering::Relaxed) {
        let (base, _) = cluster.next().await;
        let listed = http
            .get(format!(
                "{base}/api/v1/spaces/{space_id}/jobs?status=pending&limit=5"
            ))
            .header("x-api-key", &key)
            .send()
            .await;
        let Ok(listed) = listed else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let pending: Value = listed.json().await.unwrap_or_default();
        for job in pending.as_array().into_iter().flatten() {
            let id = job["id"].as_str().unwrap_or_default();
            let claim = format!("{base}/api/v1/jobs/{id}/claim");
            if post_ok(&http, &claim, &key, json!({})).await.is_some() {
                work(&http, &base, &key, id, false).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stream worker that drops its stream after a while, leaving delivered
/// jobs to be released and acked ones to time out.
async fn stream_worker(
    cluster: Arc<Cluster>,
    space_id: String,
    key: String,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut round = seed;
    while !stop.load(Ordering::Relaxed) {
        let (_, grpc) = cluster.next().await;
        round += 1;
        let lifetime = Duration::from_millis(400 + (round * 379) % 1500);
        // Each pushed job is held a while before its ack and completion.
        let session = ack_and_complete_all(&grpc, &key, &space_id, 3, |_| {
            tokio::task::block_in_place(|| std::thread::sleep(HOLD));
            ControlFlow::Continue(())
        });
        let _ = tokio::time::timeout(lifetime, session).await;
    }
}

async fn job_detail(http: &reqwest::Client, base: &str, job_id: &str) -> Option<Value> {
    get_ok(http, &format!("{base}/api/v1/jobs/{job_id}"), ADMIN_KEY).await
}

async fn finished(http: &reqwest::Client, base: &str, space_id: &str) -> Option<u64> {
    let mut total = 0;
    for status in ["completed", "dead"] {
        let response = http
            .get(format!(
                "{base}/api/v1/spaces/{space_id}/jobs?status={status}&limit=1"
            ))
            .header("x-api-key", ADMIN_KEY)
            .send()
            .await
            .ok()?;
        total += response
            .headers()
            .get("x-total-count")?
            .to_str()
            .ok()?
            .parse::<u64>()
            .ok()?;
    }
    Some(total)
}

async fn run(database_url: &str, cores: usize) {
    let http = reqwest::Client::new();
    let mut processes = Vec::new();
    for _ in 0..cores {
        processes.push(start(database_url, &http).await);
    }
    let cluster = Arc::new(Cluster {
        addresses: RwLock::new(processes.iter().map(addresses).collect()),
        turn: AtomicUsize::new(0),
    });
    let base = processes[0].url.clone();
    let limits = json!({ "concurrency": { "default": LIMIT } });
    let (space_id, key) = support::space_for_workers(&http, &base, "keys", limits).await;
    let jobs: Vec<Value> = (0..KEYS * JOBS_PER_KEY)
        .map(|n| {
            json!({
                "name": "keyed",
                "concurrencyKey": format!("customer-{}", n % KEYS),
                "timeoutSeconds": TIMEOUT_SECONDS,
                "maxRetries": 10,
            })
        })
        .collect();
    let mut ids: Vec<String> = Vec::new();
    for chunk in jobs.chunks(500) {
        let created = post_ok(
            &http,
            &format!("{base}/api/v1/spaces/{space_id}/jobs"),
            ADMIN_KEY,
            json!(chunk),
        )
        .await
        .expect("the jobs are created");
        ids.extend(
            created
                .as_array()
                .unwrap()
                .iter()
                .map(|job| job["id"].as_str().unwrap().to_owned()),
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for wait in [0, 2] {
        workers.push(tokio::spawn(rest_poller(
            cluster.clone(),
            space_id.clone(),
            key.clone(),
            wait,
            stop.clone(),
        )));
    }
    workers.push(tokio::spawn(claimer(
        cluster.clone(),
        space_id.clone(),
        key.clone(),
        stop.clone(),
    )));
    workers.push(tokio::spawn(grpc_poller(
        cluster.clone(),
        space_id.clone(),
        key.clone(),
        stop.clone(),
    )));
    for seed in 0..2 {
        workers.push(tokio::spawn(stream_worker(
            cluster.clone(),
            space_id.clone(),
            key.clone(),
            stop.clone(),
            seed,
        )));
    }

    // Kill one process every few seconds for as long as jobs remain.
    let mut victim = 0;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut next_kill = Instant::now() + KILL_EVERY;
    loop {
        let (base, _) = cluster.next().await;
        if finished(&http, &base, &space_id).await == Some(ids.len() as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "jobs did not all finish");
        if Instant::now() >= next_kill {
            processes[victim].kill9();
            processes[victim] = start(database_url, &http).await;
            cluster.addresses.write().await[victim] = addresses(&processes[victim]);
            victim = (victim + 1) % cores;
            kills += 1;
            next_kill = Instant::now() + KILL_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(kills >= KILLS, "only {kills} kills happened while jobs ran");
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.abort();
    }

    // The ledger: every event of every job, in the space's commit order.
    let (base, _) = cluster.next().await;
    let mut events: Vec<(i64, String, String, Value)> = Vec::new();
    let mut completions: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let job = job_detail(&http, &base, id)
            .await
            .expect("the job is readable");
        let job_key = job["concurrencyKey"].as_str().unwrap().to_owned();
        assert!(
            ["completed", "dead"].contains(&job["status"].as_str().unwrap()),
            "{job}"
        );
        for event in job["events"].as_array().unwrap() {
            if event["type"] == "completed" {
                *completions.entry(id.clone()).or_default() += 1;
            }
            events.push((
                event["seq"].as_i64().unwrap(),
                id.clone(),
                job_key.clone(),
                event.clone(),
            ));
        }
    }
    events.sort_by_key(|(seq, ..)| *seq);
    let leased = |status: &Value| matches!(status.as_str(), Some("delivered" | "running"));
    let mut held: HashMap<String, u32> = HashMap::new();
    let mut holding: HashMap<String, bool> = HashMap::new();
    let mut most = 0;
    let mut leases = 0;
    for (seq, job_id, job_key, event) in &events {
        if event["type"] == "delivered" {
            let was = holding.insert(job_id.clone(), true).unwrap_or(false);
            assert!(!was, "job {job_id} leased twice at once (seq {seq})");
            let count = held.entry(job_key.clone()).or_default();
            *count += 1;
            leases += 1;
            most = most.max(*count);
            assert!(
                *count <= LIMIT,
                "key {job_key} held {count} leases at seq {seq}"
            );
        } else if leased(&event["previousStatus"]) && !leased(&event["status"]) {
            holding.insert(job_id.clone(), false);
            let count = held.get_mut(job_key).expect("a lease to end");
            *count -= 1;
        }
    }
    assert!(
        completions.values().all(|count| *count <= 1),
        "a job completed twice"
    );
    assert_eq!(most, LIMIT, "the limit was reached (the test exercised it)");
    println!(
        "{} jobs, {leases} leases, {kills} kills: no key above {LIMIT} leases, no job held twice",
        ids.len(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keys_never_exceed_their_limit_through_kills_and_dropped_streams() {
    let dir = std::env::temp_dir().join(format!("emit-keys-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    run(&format!("sqlite://{}/emit.db", dir.display()), 1).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_cores_keep_every_key_within_its_limit() {
    let database = PostgresDatabase::create().await;
    run(&database.url, 3).await;
}
