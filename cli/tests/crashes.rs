//! kill -9 under load, 25 times, on SQLite and on PostgreSQL.
//!
//! Each round starts `emit serve` on the same database, creates jobs at
//! 2,000 a second (bulk creates of 10, each job marked with a unique tag)
//! while 32 stream workers ack and complete them, and SIGKILLs the server.
//! After the last round the server runs once more until every job is
//! terminal. The checker then sorts every tag into:
//! - lost: its create returned 201 but the job is gone (must be none);
//! - duplicated: more than one job carries it (must be none);
//! - recovered: its create got no answer (the kill) but the job exists.
//!
//! The workers' ledger also shows that no job was leased to two workers at
//! once across all the kills, and that no job was completed twice.
//!
//! A third test puts 100,000 jobs in the queue first and has the 32 workers
//! work through them while the server is killed 10 times, to check the
//! leases at that scale.

use emit_testkit as support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::worker::{self, Ledger};
use support::{ADMIN_KEY, PostgresDatabase, Process, get_ok};

const KILLS: usize = 25;
/// Bulk creates of `BULK` jobs, `PRODUCERS` of them each every `EVERY`:
/// 2,000 jobs a second.
const PRODUCERS: usize = 20;
const BULK: usize = 10;
const EVERY: Duration = Duration::from_millis(100);
const WORKERS: usize = 32;
const CAPACITY: u32 = 4;
/// Delivery and execution timeout of every job: how soon jobs held when the
/// server died come back.
const TIMEOUT_SECONDS: u64 = 2;

/// Jobs queued before the first round of the 100k test.
const QUEUED: usize = 100_000;
const QUEUED_KILLS: usize = 10;

/// What a run does: how often it kills the server, and where its jobs come
/// from.
struct Plan {
    kills: usize,
    /// Jobs created before the first round's workers start.
    queued: usize,
    /// Producers create jobs at 2,000 a second during every round.
    produce: bool,
    /// How long each round's load runs before the kill (varied by round).
    round: Duration,
}

/// The tests of this file take turns: each needs the 2 CPUs to itself to
/// offer its load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const UNDER_LOAD: Plan = Plan {
    kills: KILLS,
    queued: 0,
    produce: true,
    round: Duration::from_millis(800),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_9_twenty_five_times_under_load_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("emit-crashes-{}", std::process::id()));
    let database_url = format!("sqlite://{}/emit.db", dir.display());
    run(&database_url, UNDER_LOAD).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill_9_twenty_five_times_under_load_loses_nothing() {
    let database = PostgresDatabase::create().await;
    run(&database.url, UNDER_LOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_32_workers_through_100k_jobs_with_kills_never_share_a_lease() {
    let dir = std::env::temp_dir().join(format!("emit-crashes-100k-{}", std::process::id()));
    let database_url = format!("sqlite://{}/emit.db", dir.display());
    let plan = Plan {
        kills: QUEUED_KILLS,
        queued: QUEUED,
        produce: false,
        round: Duration::from_millis(2000),
    };
    run(&database_url, plan).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the producers learned about each tag.
#[derive(Default)]
struct Creates {
    /// Tag -> the id the server answered with.
    acknowledged: HashMap<String, String>,
    /// Tags whose create got no answer.
    unanswered: HashSet<String>,
}

async fn run(database_url: &str, plan: Plan) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let http = reqwest::Client::new();
    let creates = Arc::new(Mutex::new(Creates::default()));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut space_id: Option<String> = None;
    let started = Instant::now();
    let mut load_time = Duration::ZERO;
    for round in 0..plan.kills {
        let mut server = Process::serve(database_url, Some(ADMIN_KEY), &[]);
        server.wait_http_ready(&http).await;
        if space_id.is_none() {
            let created = create_space(&http, &server.url).await;
            let url = format!("{}/api/v1/spaces/{created}/jobs", server.url);
            queue(&http, &url, plan.queued, &creates).await;
            space_id = Some(created);
        }
        let space_id = space_id.clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..PRODUCERS)
            .filter(|_| plan.produce)
            .map(|producer| {
                let url = format!("{}/api/v1/spaces/{space_id}/jobs", server.url);
                let (http, stop, creates) = (http.clone(), stop.clone(), creates.clone());
                let tag = format!("{round}-{producer}");
                tokio::spawn(produce(http, url, tag, stop, creates))
            })
            .collect();
        let workers = start_workers(&server, &space_id, &ledger);
        // Kill at a different point of each round's load.
        let load = plan.round + Duration::from_millis((round as u64 * 137) % 600);
        tokio::time::sleep(load).await;
        load_time += load;
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for task in producers.into_iter().chain(workers) {
            task.await.unwrap();
        }
    }

    // Once more, without a kill, until every job is terminal.
    let server = Process::serve(database_url, Some(ADMIN_KEY), &[]);
    server.wait_http_ready(&http).await;
    let space_id = space_id.unwrap();
    let workers = start_workers(&server, &space_id, &ledger);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !all_terminal(&http, &server.url, &space_id).await {
        assert!(
            Instant::now() < deadline,
            "jobs still not terminal after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(server);
    for task in workers {
        task.await.unwrap();
    }

    let creates = creates.lock().unwrap();
    let ledger = ledger.lock().unwrap();
    // Every job was pushed to a worker before it completed: the leases
    // name every job that exists, with its tag.
    let mut jobs_by_tag: HashMap<String, HashSet<&str>> = HashMap::new();
    for lease in &ledger.leases {
        let payload: Value = serde_json::from_str(lease.payload_json.as_deref().unwrap()).unwrap();
        let tag = payload["tag"].as_str().unwrap().to_owned();
        jobs_by_tag.entry(tag).or_default().insert(&lease.job_id);
    }
    let lost: Vec<&String> = creates
        .acknowledged
        .iter()
        .filter(|(tag, id)| {
            !jobs_by_tag
                .get(*tag)
                .is_some_and(|ids| ids.contains(id.as_str()))
        })
        .map(|(tag, _)| tag)
        .collect();
    let duplicated: Vec<&String> = jobs_by_tag
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(tag, _)| tag)
        .collect();
    let recovered = creates
        .unanswered
        .iter()
        .filter(|tag| jobs_by_tag.contains_key(*tag))
        .count();
    let strays: Vec<&String> = jobs_by_tag
        .keys()
        .filter(|tag| {
            !creates.acknowledged.contains_key(*tag) && !creates.unanswered.contains(*tag)
        })
        .collect();
    let released = ledger.assert_no_overlapping_leases(Duration::from_secs(TIMEOUT_SECONDS));
    eprintln!(
        "{database}: {} kills in {:.0} s; {} creates acknowledged ({:.0}/s over {:.1} s of load), \
         {} unanswered of which {recovered} recovered; lost {}, duplicated {}; \
         {} leases, {released} jobs leased more than once, none at the same time",
        plan.kills,
        started.elapsed().as_secs_f64(),
        creates.acknowledged.len(),
        creates.acknowledged.len() as f64 / load_time.as_secs_f64(),
        load_time.as_secs_f64(),
        creates.unanswered.len(),
        lost.len(),
        duplicated.len(),
        ledger.leases.len(),
        database = database_url.split(':').next().unwrap(),
    );
    assert!(
        lost.is_empty(),
        "acknowledged creates lost: {:?}",
        &lost[..lost.len().min(5)]
    );
    assert!(
        duplicated.is_empty(),
        "tags on two jobs: {:?}",
        &duplicated[..duplicated.len().min(5)]
    );
    assert!(strays.is_empty(), "jobs nobody created: {strays:?}");
    let least = if plan.produce {
        plan.kills * 500
    } else {
        plan.queued
    };
    assert!(
        creates.acknowledged.len() >= least,
        "the load ran: {} creates acknowledged",
        creates.acknowledged.len()
    );
}

/// Creates `count` tagged jobs in bulk creates of 100, 8 at a time.
async fn queue(http: &reqwest::Client, url: &str, count: usize, creates: &Arc<Mutex<Creates>>) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, next, creates) =
                (http.clone(), url.to_owned(), next.clone(), creates.clone());
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(100, Ordering::SeqCst);
                    if first >= count {
                        return;
                    }
                    let tags: Vec<String> = (first..count.min(first + 100))
                        .map(|n| format!("q-{n}"))
                        .collect();
                    let ids = create_tagged(&http, &url, &tags)
                        .await
                        .expect("the server answers while nothing kills it");
                    creates
                        .lock()
                        .unwrap()
                        .acknowledged
                        .extend(tags.into_iter().zip(ids));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// One bulk create of jobs tagged `tags`; the ids, or None without an answer.
async fn create_tagged(http: &reqwest::Client, url: &str, tags: &[String]) -> Option<Vec<String>> {
    let body: Value = tags
        .iter()
        .map(|tag| {
            json!({
                "name": "crash",
                "payload": { "tag": tag },
                "timeoutSeconds": TIMEOUT_SECONDS,
            })
        })
        .collect();
    let response = support::post_json(http, url, ADMIN_KEY, &body).await.ok()?;
    assert!(
        response.status() == 201 || response.status().is_server_error(),
        "create answered {}",
        response.status()
    );
    let jobs = response.json::<Vec<Value>>().await.ok()?;
    Some(
        jobs.iter()
            .map(|job| job["id"].as_str().unwrap().to_owned())
            .collect(),
    )
}

async fn create_space(http: &reqwest::Client, base: &str) -> String {
    let space: Value = http
        .post(format!("{base}/api/v1/spaces"))
        .header("x-api-key", ADMIN_KEY)
        .json(&json!({ "name": "crashes" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    space["id"].as_str().unwrap().to_owned()
}

/// Creates `BULK` tagged jobs every `EVERY` until `stop`, or until the
/// server stops answering.
async fn produce(
    http: reqwest::Client,
    url: String,
    tag: String,
    stop: Arc<AtomicBool>,
    creates: Arc<Mutex<Creates>>,
) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut request = 0;
    while !stop.load(Ordering::SeqCst) {
        ticks.tick().await;
        request += 1;
        let tags: Vec<String> = (0..BULK).map(|i| format!("{tag}-{request}-{i}")).collect();
        let answer = create_tagged(&http, &url, &tags).await;
        let mut creates = creates.lock().unwrap();
        match answer {
            Some(ids) => creates.acknowledged.extend(tags.into_iter().zip(ids)),
            None => {
                creates.unanswered.extend(tags);
                return;
            }
        }
    }
}

fn start_workers(
    server: &Process,
    space_id: &str,
    ledger: &Arc<Mutex<Ledger>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WORKERS)
        .map(|_| {
            let grpc_url = server.grpc_url.clone().unwrap();
            let (space_id, ledger) = (space_id.to_owned(), ledger.clone());
            tokio::spawn(async move {
                // The session ends when the server dies.
                let _ =
                    worker::run_session(&grpc_url, ADMIN_KEY, &space_id, CAPACITY, &ledger).await;
            })
        })
        .collect()
}

/// Whether no job of the space is scheduled, pending, delivered or running.
async fn all_terminal(http: &reqwest::Client, base: &str, space_id: &str) -> bool {
    for status in ["scheduled", "pending", "delivered", "running"] {
        let url = format!("{base}/api/v1/spaces/{space_id}/jobs?status={status}&limit=1");
        let page = get_ok(http, &url, ADMIN_KEY).await.expect("a job list");
        let jobs = page.get("jobs").unwrap_or(&page);
        if jobs.as_array().is_some_and(|jobs| !jobs.is_empty()) {
            return false;
        }
    }
    true
}
