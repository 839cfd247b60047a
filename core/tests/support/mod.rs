//! Running the real `emit` binary in tests: processes on free loopback
//! ports, readiness, kill -9, and throwaway PostgreSQL databases.

// Each test file uses the parts it needs.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_KEY: &str = "emit_crash_admin";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `emit` process.
pub struct Process {
    child: Child,
    /// `http://127.0.0.1:PORT` of its gRPC (core) or HTTP (gateway) listener.
    pub url: String,
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
        Self { child, url }
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

mod postgres;
pub use postgres::PostgresDatabase;
