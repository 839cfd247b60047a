//! Running the real `emit` binary in tests: processes on free loopback
//! ports, readiness, kill -9, and throwaway PostgreSQL databases.

// Each test file uses the parts it needs.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_KEY: &str = "emit_crash_admin_key_0123456789abcdef";

/// POSTs `body` as JSON with `key` in `x-api-key`.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: &serde_json::Value,
) -> reqwest::Result<reqwest::Response> {
    http.post(url)
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
}

/// POSTs `body` and answers the JSON of a 2xx reply; None for any other
/// outcome (a refused call, a process that is down).
pub async fn post_ok(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: serde_json::Value,
) -> Option<serde_json::Value> {
    let response = post_json(http, url, key, &body).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// GETs `url` with `key` and answers the JSON of a 2xx reply; None for any
/// other outcome.
pub async fn get_ok(http: &reqwest::Client, url: &str, key: &str) -> Option<serde_json::Value> {
    let response = http.get(url).header("x-api-key", key).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// Waits (up to 10 s) until the gateway at `base` reports the sample
/// `series` (name and labels) at `wanted` on `/metrics`, which carries its
/// core's metrics too.
pub async fn metric_reaches(http: &reqwest::Client, base: &str, series: &str, wanted: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = match http
            .get(format!("{base}/metrics"))
            .header("authorization", format!("Bearer {ADMIN_KEY}"))
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let value = text
            .lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok());
        if value == Some(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed {value:?}, not {wanted}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A new space named `name` with `settings` PATCHed onto it, and a
/// `jobs:worker` key for it: (space id, key).
pub async fn space_for_workers(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    settings: serde_json::Value,
) -> (String, String) {
    let body = serde_json::json!({ "name": name });
    let space = post_ok(http, &format!("{base}/api/v1/spaces"), ADMIN_KEY, body)
        .await
        .expect("the space is created");
    let space_id = space["id"].as_str().expect("a space id").to_owned();
    let response = http
        .patch(format!("{base}/api/v1/spaces/{space_id}"))
        .header("x-api-key", ADMIN_KEY)
        .json(&settings)
        .send()
        .await
        .expect("the server answers");
    assert!(response.status().is_success(), "{settings} refused");
    let token = post_ok(
        http,
        &format!("{base}/api/v1/spaces/{space_id}/tokens"),
        ADMIN_KEY,
        serde_json::json!({ "name": "workers", "scopes": ["jobs:worker"] }),
    )
    .await
    .expect("a worker key");
    let key = token["key"].as_str().expect("a key").to_owned();
    (space_id, key)
}

/// An RFC 3339 instant of a reply, in milliseconds since the epoch.
pub fn instant_millis(iso: &serde_json::Value) -> i64 {
    iso.as_str()
        .and_then(|text| text.parse::<jiff::Timestamp>().ok())
        .unwrap_or_else(|| panic!("an RFC 3339 instant: {iso}"))
        .as_millisecond()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `emit` process.
pub struct Process {
    pub child: Child,
    /// `http://127.0.0.1:PORT` of its gRPC (core) or HTTP (gateway, serve)
    /// listener.
    pub url: String,
    /// The gRPC listener of `emit serve`.
    pub grpc_url: Option<String>,
}

impl Process {
    /// `emit ARGS` with the test admin key, no rate limit, quiet logs.
    pub fn spawn(args: &[&str], admin_key: Option<&str>, url: String) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_emit"));
        command
            .args(args)
            .env_remove("EMIT_ADMIN_KEY")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(key) = admin_key {
            command.env("EMIT_ADMIN_KEY", key);
        }
        let child = command.spawn().expect("emit starts");
        Self {
            child,
            url,
            grpc_url: None,
        }
    }

    /// `emit serve` (core and gateway in one process) on free ports, with
    /// `admin_key` (generated when `None`) and `extra` arguments; no rate
    /// limit unless `extra` sets one.
    pub fn serve(database_url: &str, admin_key: Option<&str>, extra: &[&str]) -> Self {
        let (http, grpc) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let mut args = vec![
            "serve",
            "--http-addr",
            &http,
            "--grpc-addr",
            &grpc,
            "--database-url",
            database_url,
        ];
        if !extra.contains(&"--rate-limit") {
            args.extend(["--rate-limit", "0"]);
        }
        args.extend(extra);
        let mut process = Self::spawn(&args, admin_key, format!("http://{http}"));
        process.grpc_url = Some(format!("http://{grpc}"));
        process
    }

    /// Sends SIGTERM: the graceful stop.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM delivered");
    }

    /// Waits up to `limit` for the process to exit on its own.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the process is alive");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS is listed")
    }

    /// `emit core` on a free port.
    pub fn core(database_url: &str) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let args = [
            "core",
            "--grpc-addr",
            &addr,
            "--database-url",
            database_url,
            "--rate-limit",
            "0",
        ];
        Self::spawn(&args, Some(ADMIN_KEY), format!("http://{addr}"))
    }

    /// `emit gateway` on a free port, in front of `core_url`.
    pub fn gateway(core_url: &str) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let args = ["gateway", "--http-addr", &addr, "--core-url", core_url];
        Self::spawn(&args, None, format!("http://{addr}"))
    }

    /// Waits until `GET {url}/healthz` answers 2xx.
    pub async fn wait_http_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(response) = client.get(format!("{}/healthz", self.url)).send().await
                && response.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} did not become ready", self.url);
    }

    /// Waits until the core accepts gRPC connections.
    pub async fn wait_grpc_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if tonic::transport::Endpoint::from_shared(self.url.clone())
                .unwrap()
                .connect()
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} did not become ready", self.url);
    }

    /// Everything the process printed to stdout (once it has exited).
    pub fn stdout(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
        }
        out
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub mod ack_worker;
mod postgres;
pub mod worker;
#[allow(unused_imports)]
pub use postgres::PostgresDatabase;
