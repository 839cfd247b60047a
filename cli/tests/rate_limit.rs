//! The per-key rate limit under a real overload: one key offers 1,500
//! requests a second for 10 s against the default limit of 1,000; another
//! key offers 50 a second at the same time. This file holds one test so
//! that nothing else competes for the CPU while it measures.
//!
//! The limit promises at most `LIMIT × t + BURST` requests in any span `t`.
//! The server sees the requests over a span that starts after the first send
//! and ends before the last answer, which on a loaded machine comes well
//! after the sending stops; so the ceiling is checked against that span and
//! the floor (the limit is a rate, not a trickle) against the sending window.

use emit_testkit as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{ADMIN_KEY, Process};
use tokio::sync::Semaphore;

const LIMIT: f64 = 1000.0;
/// The burst the server allows a key: a tenth of a second's worth.
const BURST: f64 = LIMIT / 10.0;
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Default, Debug)]
struct Tally {
    sent: usize,
    accepted: usize,
    limited: usize,
    /// From the first send to the last answer.
    span: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_limit_gets_the_limit_and_429s_and_other_keys_are_unaffected() {
    let dir = std::env::temp_dir().join(format!("emit-rate-{}", std::process::id()));
    let database_url = format!("sqlite://{}/emit.db", dir.display());
    let server = Process::serve(&database_url, Some(ADMIN_KEY), &["--rate-limit", "1000"]);
    let http = reqwest::Client::new();
    server.wait_http_ready(&http).await;

    let space = post(
        &http,
        &format!("{}/api/v1/spaces", server.url),
        json!({ "name": "rate" }),
    )
    .await;
    let space_id = space["id"].as_str().unwrap();
    let tokens_url = format!("{}/api/v1/spaces/{space_id}/tokens", server.url);
    let token = json!({ "name": "reader", "scopes": ["jobs:read"] });
    let busy = post(&http, &tokens_url, token.clone()).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let quiet = post(&http, &tokens_url, token).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = post(
        &http,
        &format!("{}/api/v1/spaces/{space_id}/jobs", server.url),
        json!({ "name": "read-me" }),
    )
    .await;
    let url = format!("{}/api/v1/jobs/{}", server.url, job["id"].as_str().unwrap());

    let (busy, quiet) = tokio::join!(
        offer(&http, &url, &busy, 1500.0),
        offer(&http, &url, &quiet, 50.0)
    );
    eprintln!("busy key: {busy:?}; quiet key: {quiet:?}");
    let seconds = WINDOW.as_secs_f64();
    let offered = busy.sent as f64 / seconds;
    // The load is offered at 1,500/s; on a slow hour the client alone may
    // fall short of that. What the test needs is a load well over the limit.
    assert!(
        offered >= LIMIT * 1.25,
        "the load reached 1.25x the limit (it reached {offered:.0}/s)"
    );
    // At most 512 requests are unanswered when the sending stops, so the
    // server answered well over its limit within the window: some of those
    // answers must be 429s, however slowly it answered.
    assert!(busy.limited > 0, "the busy key was never limited");
    let ceiling = LIMIT * busy.span.as_secs_f64() + BURST;
    assert!(
        busy.accepted as f64 <= ceiling,
        "accepted {} in {:?}, over the {ceiling:.0} the limit allows",
        busy.accepted,
        busy.span
    );
    let accepted = busy.accepted as f64 / seconds;
    assert!(
        accepted >= LIMIT * 0.95,
        "accepted {accepted:.0}/s, under 95% of {LIMIT}"
    );
    assert_eq!(
        busy.accepted + busy.limited,
        busy.sent,
        "every other answer was a 429"
    );
    assert_eq!(
        quiet.accepted, quiet.sent,
        "the quiet key was never limited"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Value {
    let response = support::post_json(http, url, ADMIN_KEY, &body)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

/// Sends GET `url` at `per_second` for `WINDOW`, open loop (a slow answer
/// does not slow the sending), and sorts the answers. Each 429 must carry a
/// Retry-After of at least one second and the documented error body.
async fn offer(http: &reqwest::Client, url: &str, key: &str, per_second: f64) -> Tally {
    let in_flight = Arc::new(Semaphore::new(512));
    let mut answers = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while started.elapsed() < WINDOW {
        ticks.tick().await;
        let due = (started.elapsed().as_secs_f64() * per_second) as usize;
        while sent < due {
            sent += 1;
            let permit = in_flight.clone().acquire_owned().await.unwrap();
            let request = http.get(url).header("x-api-key", key).send();
            answers.spawn(async move {
                let response = request.await.expect("the server answers");
                drop(permit);
                let status = response.status();
                if status == StatusCode::TOO_MANY_REQUESTS {
                    let retry_after: u64 = response.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(retry_after >= 1, "Retry-After {retry_after}");
                    let body: Value = response.json().await.unwrap();
                    assert_eq!(body, json!({ "error": "rate limit exceeded" }));
                }
                status
            });
        }
    }
    let mut tally = Tally {
        sent,
        ..Tally::default()
    };
    while let Some(status) = answers.join_next().await {
        tally.span = started.elapsed();
        match status.unwrap() {
            StatusCode::OK => tally.accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => tally.limited += 1,
            other => panic!("unexpected answer {other}"),
        }
    }
    tally
}
