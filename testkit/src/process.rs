//! Running the real `emit` binary: processes on free loopback ports,
//! readiness, SIGTERM and kill -9.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ADMIN_KEY;

/// The `emit` binary Cargo built for the tests running. Cargo gives its
/// path to the tests of its own crate (`CARGO_BIN_EXE_emit`); from any
/// other, it is found in `target/<profile>/`, where the test binary's
/// `deps` folder is.
fn emit_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_emit") {
        return path.into();
    }
    let test = std::env::current_exe().expect("the test binary's path");
    let profile = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test binary sits in target/<profile>/deps");
    profile.join(format!("emit{}", std::env::consts::EXE_SUFFIX))
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
    /// Where its stderr goes (warnings and errors), told when it does not
    /// become ready; removed with it unless a test failed.
    pub log: Option<PathBuf>,
}

impl Process {
    /// `emit ARGS` with the test admin key, no rate limit, quiet logs.
    pub fn spawn(args: &[&str], admin_key: Option<&str>, url: String) -> Self {
        static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "emit-test-{}-{}.log",
            std::process::id(),
            SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let stderr = std::fs::File::create(&log).expect("a log file for the process");
        let mut command = Command::new(emit_binary());
        command
            .args(args)
            .env_remove("EMIT_ADMIN_KEY")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(key) = admin_key {
            command.env("EMIT_ADMIN_KEY", key);
        }
        let child = command.spawn().expect("emit starts");
        Self {
            child,
            url,
            grpc_url: None,
            log: Some(log),
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
        panic!("{} did not become ready; {}", self.url, self.what_it_said());
    }

    /// What the process wrote to stderr, for a failure's message.
    fn what_it_said(&self) -> String {
        let Some(log) = &self.log else {
            return "its stderr was not kept".to_owned();
        };
        match std::fs::read_to_string(log) {
            Ok(text) if text.is_empty() => "it wrote nothing to stderr".to_owned(),
            Ok(text) => format!("its stderr:\n{text}"),
            Err(error) => format!("its stderr could not be read: {error}"),
        }
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
        panic!("{} did not become ready; {}", self.url, self.what_it_said());
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
        if let Some(log) = &self.log
            && !std::thread::panicking()
        {
            let _ = std::fs::remove_file(log);
        }
    }
}
