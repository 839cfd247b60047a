//! The exactly-once checker for schedules: three `emit serve` processes on
//! one PostgreSQL database run a one-second schedule for two minutes while
//! one of them at a time is killed with SIGKILL and started again. With
//! catch-up `all`, every fire time from the first to the last has exactly
//! one job: none lost to a kill, none made twice by racing cores.

use emit_testkit as support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ADMIN_KEY, PostgresDatabase, Process, get_ok, instant_millis, post_json};

const RUN: Duration = Duration::from_secs(120);
/// Seconds between kills, in turn: uneven, so kills land at every point of
/// the schedule's second (and of a fire's transaction).
const KILL_GAPS_MS: [u64; 5] = [9_700, 13_300, 7_900, 16_100, 11_500];

async fn start(database_url: &str, http: &reqwest::Client) -> Process {
    let process = Process::serve(database_url, Some(ADMIN_KEY), &[]);
    process.wait_http_ready(http).await;
    process
}

/// Every job of the schedule, by fire time (a page at a time).
async fn jobs_by_fire_time(
    http: &reqwest::Client,
    base: &str,
    space_id: &str,
    schedule_id: &str,
) -> HashMap<i64, Vec<String>> {
    let mut by_time: HashMap<i64, Vec<String>> = HashMap::new();
    let mut before = String::new();
    loop {
        let url = format!(
            "{base}/api/v1/spaces/{space_id}/jobs?scheduleId={schedule_id}&limit=100{before}"
        );
        let page = get_ok(http, &url, ADMIN_KEY).await.expect("a job list");
        let jobs = page.as_array().expect("a job list").clone();
        for job in &jobs {
            by_time
                .entry(instant_millis(&job["fireTime"]))
                .or_default()
                .push(job["id"].as_str().unwrap().to_owned());
        }
        match jobs.last() {
            Some(last) if jobs.len() == 100 => {
                before = format!("&beforeId={}", last["id"].as_str().unwrap());
            }
            _ => return by_time,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_cores_killed_in_turn_make_each_fire_exactly_once() {
    let database = PostgresDatabase::create().await;
    let http = reqwest::Client::new();
    let mut cores = Vec::new();
    for _ in 0..3 {
        cores.push(start(&database.url, &http).await);
    }
    let base = cores[0].url.clone();
    let space: Value = post_json(
        &http,
        &format!("{base}/api/v1/spaces"),
        ADMIN_KEY,
        &json!({ "name": "cron" }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let space_id = space["id"].as_str().unwrap().to_owned();
    let schedule: Value = post_json(
        &http,
        &format!("{base}/api/v1/spaces/{space_id}/schedules"),
        ADMIN_KEY,
        &json!({ "cron": "* * * * * *", "catchUp": "all", "job": { "name": "tick" } }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let schedule_id = schedule["id"]
        .as_str()
        .expect("the schedule is created")
        .to_owned();

    let began = Instant::now();
    let mut kills = 0;
    let mut victim = 0;
    while began.elapsed() < RUN {
        tokio::time::sleep(Duration::from_millis(
            KILL_GAPS_MS[kills % KILL_GAPS_MS.len()],
        ))
        .await;
        if began.elapsed() >= RUN {
            break;
        }
        cores[victim].kill9();
        kills += 1;
        cores[victim] = start(&database.url, &http).await;
        victim = (victim + 1) % cores.len();
    }
    // Stop the fires through a live core, then read what they made.
    let live = cores[victim].url.clone();
    let paused: Value = post_json(
        &http,
        &format!("{live}/api/v1/spaces/{space_id}/schedules/{schedule_id}/pause"),
        ADMIN_KEY,
        &json!({}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(paused["paused"], true, "{paused}");
    let by_time = jobs_by_fire_time(&http, &live, &space_id, &schedule_id).await;

    let twice: Vec<_> = by_time.iter().filter(|(_, jobs)| jobs.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "fire times with more than one job: {twice:?}"
    );
    let mut times: Vec<i64> = by_time.keys().copied().collect();
    times.sort_unstable();
    let missing: Vec<i64> = times
        .windows(2)
        .flat_map(|pair| (pair[0] + 1000..pair[1]).step_by(1000))
        .collect();
    assert!(missing.is_empty(), "fire times without a job: {missing:?}");
    let covered = (times.last().unwrap() - times[0]) / 1000 + 1;
    assert!(kills >= 6, "{kills} kills");
    assert!(
        covered >= (RUN.as_secs() as i64) - 5,
        "{covered} consecutive fire times over a {}s run",
        RUN.as_secs()
    );
    println!("{covered} fire times, each with exactly one job, across {kills} SIGKILLs");
}
