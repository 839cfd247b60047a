//! Running the real `emit` binary: processes on loopback ports they pick
//! themselves, readiness, SIGTERM and kill -9.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
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

/// How long a spawned server may take to say where it listens, and then to
/// answer.
const START_LIMIT: Duration = Duration::from_secs(30);

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
    /// Its stdout, line by line, from a thread that reads it as it comes
    /// (a full pipe never blocks the process); `None` without one.
    pub printed: Option<Printed>,
}

/// What a process printed to stdout: the lines taken so far, and the rest
/// as they come.
pub struct Printed {
    taken: Vec<String>,
    /// In a mutex only so that a `Process` can be shared between threads
    /// (a receiver is not `Sync`); reached through `&mut`, never locked.
    lines: Mutex<mpsc::Receiver<String>>,
}

impl Printed {
    /// Reads `child`'s stdout on a thread of its own.
    fn follow(child: &mut Child) -> Option<Self> {
        let stdout = child.stdout.take()?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Some(Self {
            taken: Vec::new(),
            lines: Mutex::new(lines),
        })
    }

    /// Waits, until `deadline`, for a line holding `marker`; `None` if the
    /// process closed its stdout (exited) or the deadline passed first.
    fn wait_for(&mut self, marker: &str, deadline: Instant) -> Option<String> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let lines = self
                .lines
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let line = lines.recv_timeout(left).ok()?;
            self.taken.push(line.clone());
            if line.contains(marker) {
                return Some(line);
            }
        }
    }

    /// Everything, once stdout is closed.
    fn into_text(mut self) -> String {
        let lines = self
            .lines
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.taken.extend(lines.iter());
        self.taken.iter().map(|line| format!("{line}\n")).collect()
    }
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
        let mut child = command.spawn().expect("emit starts");
        let printed = Printed::follow(&mut child);
        Self {
            child,
            url,
            grpc_url: None,
            log: Some(log),
            printed,
        }
    }

    /// Spawns a server told to listen on port 0 (`ARGS`), and waits for the
    /// line where it says which ports it got. Ports a test picked ahead
    /// could be taken (by any socket's ephemeral port) before the server
    /// binds them; the kernel's own pick cannot. Blocks the calling thread
    /// while it waits: a server's start needs nothing from the test's tasks.
    fn spawn_announced(args: &[&str], admin_key: Option<&str>) -> Self {
        let mut process = Self::spawn(args, admin_key, String::new());
        let deadline = Instant::now() + START_LIMIT;
        let announced = process
            .printed
            .as_mut()
            .and_then(|printed| printed.wait_for(" is serving: ", deadline));
        let Some(line) = announced else {
            panic!(
                "emit {} did not say where it listens; {}",
                args[0],
                process.what_it_said()
            );
        };
        let http = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next());
        let grpc = line.split("gRPC on ").nth(1).map(str::trim);
        let Some(addr) = http.or(grpc) else {
            panic!("no address in {line:?}");
        };
        process.url = format!("http://{addr}");
        process.grpc_url = grpc.map(|grpc| format!("http://{grpc}"));
        process
    }

    /// `emit serve` (core and gateway in one process) on ports of its own,
    /// with `admin_key` (generated when `None`) and `extra` arguments; no
    /// rate limit unless `extra` sets one.
    pub fn serve(database_url: &str, admin_key: Option<&str>, extra: &[&str]) -> Self {
        let mut args = vec![
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--database-url",
            database_url,
        ];
        if !extra.contains(&"--rate-limit") {
            args.extend(["--rate-limit", "0"]);
        }
        args.extend(extra);
        Self::spawn_announced(&args, admin_key)
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

    /// `emit core` on a port of its own.
    pub fn core(database_url: &str) -> Self {
        let args = [
            "core",
            "--grpc-addr",
            "127.0.0.1:0",
            "--database-url",
            database_url,
            "--rate-limit",
            "0",
        ];
        Self::spawn_announced(&args, Some(ADMIN_KEY))
    }

    /// `emit gateway` on a port of its own, in front of `core_url`.
    pub fn gateway(core_url: &str) -> Self {
        let args = [
            "gateway",
            "--http-addr",
            "127.0.0.1:0",
            "--core-url",
            core_url,
        ];
        Self::spawn_announced(&args, None)
    }

    /// Waits until `GET {url}/healthz` answers 2xx.
    pub async fn wait_http_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + START_LIMIT;
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
        let deadline = Instant::now() + START_LIMIT;
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
        self.printed
            .take()
            .map(Printed::into_text)
            .unwrap_or_default()
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
