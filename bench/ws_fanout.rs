//! Fan-out of one job's progress events to many WebSocket subscribers.
//! SUBSCRIBERS clients watch the same job with the space's public token; a
//! worker reports progress ROUNDS times, 500 ms apart, each report stamped
//! with the time it was sent. Prints the delivery latency (report sent to
//! message received, over every subscriber and round) at p50/p99/max, when
//! each round reached its first and its last subscriber (the first is the
//! report's own path: the write, its fsync, the feed), and the median and
//! worst of the last.
//!
//!     cargo run --release --example ws_fanout -- [SUBSCRIBERS] [ROUNDS]
//!
//! The server (core + gateway, SQLite) runs in a child process (this program
//! re-executed with `--serve`), since 10k clients and their 10k server-side
//! sockets exceed one process's descriptor limit. Both share the 2 cores.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Barrier, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use emit_testkit as support;

use support::AnyError;
const CONNECTS_AT_ONCE: usize = 200;

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// The server child runs on the server's own runtime, the clients on
/// `support::load_runtime` (why: there).
fn main() -> Result<(), AnyError> {
    if std::env::args().nth(1).as_deref() == Some("--serve") {
        return emit_core::server::runtime()?.block_on(run());
    }
    support::load_runtime()?.block_on(run())
}

async fn run() -> Result<(), AnyError> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--serve") {
        let dir = args.nth(1).ok_or("--serve needs a directory")?;
        return serve(dir).await;
    }
    let subscribers: usize = args.next().map_or(Ok(10_000), |arg| arg.parse())?;
    let rounds: usize = args.next().map_or(Ok(20), |arg| arg.parse())?;

    let dir = std::env::temp_dir().join(format!("emit-fanout-{}", std::process::id()));
    let mut server = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(server.stdout.take().ok_or("no stdout")?).lines();
    let http_addr = lines.next_line().await?.ok_or("server did not start")?;
    let base = format!("http://{http_addr}/api/v1");
    let http = reqwest::Client::new();

    let space = support::in_process::create_space(&http, &base).await?;
    let (space_id, public_token, key) = (space.id, space.public_token, space.key);
    let created: Value = http
        .post(format!("{base}/spaces/{space_id}/jobs"))
        .header("x-api-key", &key)
        .json(&json!({ "name": "render" }))
        .send()
        .await?
        .json()
        .await?;
    let job_id = created["id"].as_str().ok_or("no job id")?.to_owned();

    // Subscribe everyone (a bounded number of handshakes at a time).
    let url = format!("ws://{http_addr}/api/v1/realtime/{job_id}?token={public_token}");
    let (latencies, mut samples) = mpsc::unbounded_channel::<(usize, u64)>();
    let ready = Arc::new(Barrier::new(subscribers + 1));
    let connected_at = std::time::Instant::now();
    let mut connecting = futures_util::stream::iter((0..subscribers).map(|_| {
        let url = url.clone();
        async move {
            tokio_tungstenite::connect_async_with_config(url, Some(client_config()), false).await
        }
    }))
    .buffer_unordered(CONNECTS_AT_ONCE);
    while let Some(connected) = connecting.next().await {
        let (mut socket, _) = connected?;
        let (latencies, ready) = (latencies.clone(), ready.clone());
        tokio::spawn(async move {
            // init first, then progress messages stamped by the sender.
            let _ = socket.next().await;
            ready.wait().await;
            while let Some(Ok(message)) = socket.next().await {
                let received = micros_now();
                if let Message::Text(text) = message
                    && let Some((round, sent)) = stamp(&text)
                {
                    let _ = latencies.send((round, received.saturating_sub(sent)));
                }
            }
        });
    }
    drop(latencies);
    ready.wait().await;
    println!(
        "{subscribers} subscribers connected in {:.1}s",
        connected_at.elapsed().as_secs_f64()
    );

    let worker = |action: &str, body: Value| {
        http.post(format!("{base}/jobs/{job_id}/{action}"))
            .header("x-api-key", &key)
            .json(&body)
            .send()
    };
    http.post(format!("{base}/spaces/{space_id}/jobs/poll"))
        .header("x-api-key", &key)
        .json(&json!({}))
        .send()
        .await?;
    worker("ack", json!({})).await?;
    let expected = subscribers * rounds;
    let mut all = Vec::with_capacity(expected);
    let mut last_per_round = vec![0u64; rounds];
    let mut first_per_round = vec![u64::MAX; rounds];
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let progress = json!({ "percent": round.min(100), "round": round, "sentAt": micros_now() });
        worker("progress", progress).await?.error_for_status()?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while all.len() < expected {
        let Ok(Some((round, latency))) = tokio::time::timeout_at(deadline, samples.recv()).await
        else {
            break;
        };
        last_per_round[round] = last_per_round[round].max(latency);
        first_per_round[round] = first_per_round[round].min(latency);
        all.push(latency);
    }
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)] as f64 / 1000.0;
    println!(
        "delivered {} of {expected} progress messages ({rounds} rounds)",
        all.len()
    );
    println!(
        "delivery latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.50),
        at(0.99),
        at(1.0)
    );
    println!(
        "FANOUT {}",
        json!({ "subscribers": subscribers, "p50": at(0.50), "p99": at(0.99), "max": at(1.0) })
    );
    let ms = |micros: &u64| format!("{:.1}", *micros as f64 / 1000.0);
    println!(
        "per round, first and last subscriber reached (ms): {}",
        first_per_round
            .iter()
            .zip(&last_per_round)
            .map(|(first, last)| format!("{}-{}", ms(first), ms(last)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    last_per_round.sort_unstable();
    println!(
        "time for a round to reach every subscriber: median {:.1} ms, worst {:.1} ms",
        last_per_round[rounds / 2] as f64 / 1000.0,
        last_per_round[rounds - 1] as f64 / 1000.0
    );
    server.kill().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// The clients share the 2 cores with the server, so they read small
/// chunks: at tungstenite's default (128 KiB, zeroed before every read) the
/// 10,000 clients spent more CPU zeroing buffers than the server spent
/// delivering.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024)
}

/// `round` and `sentAt` from a progress message, without a full parse.
fn stamp(text: &str) -> Option<(usize, u64)> {
    let number_after = |key: &str| -> Option<u64> {
        let start = text.find(key)? + key.len();
        let digits: String = text[start..]
            .chars()
            .skip_while(|c| *c == ':' || *c == ' ')
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    Some((
        number_after("\"round\"")? as usize,
        number_after("\"sentAt\"")?,
    ))
}

/// The child: core and gateway on loopback; prints the HTTP address.
async fn serve(dir: String) -> Result<(), AnyError> {
    let (_core, gateway) = support::in_process::start_server(&dir).await?;
    println!("{}", gateway.http_addr);
    // Runs until the parent kills it.
    std::future::pending::<()>().await;
    Ok(())
}
