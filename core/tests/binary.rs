//! Tests of the real `emit` binary: crash safety under kill -9, and the CLI.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ADMIN_KEY: &str = "emit_crash_admin";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    base: String,
    grpc: String,
}

impl Server {
    fn start(database_url: &str) -> Self {
        Self::start_with(database_url, Some(ADMIN_KEY))
    }

    fn start_with(database_url: &str, admin_key: Option<&str>) -> Self {
        let (http, grpc) = (free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_emit"));
        command
            .args([
                "serve",
                "--http-addr",
                &format!("127.0.0.1:{http}"),
                "--grpc-addr",
                &format!("127.0.0.1:{grpc}"),
            ])
            .args(["--database-url", database_url, "--rate-limit", "0"])
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
            base: format!("http://127.0.0.1:{http}"),
            grpc: format!("http://127.0.0.1:{grpc}"),
        }
    }

    async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(response) = client.get(format!("{}/healthz", self.base)).send().await
                && response.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not become ready");
    }

    /// Everything the server printed to stdout (after it was killed).
    fn stdout(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
        }
        out
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL delivered");
        self.child.wait().unwrap();
    }
}

#[tokio::test]
async fn acknowledged_creates_survive_kill_9() {
    let dir = std::env::temp_dir().join(format!("emit-crash-{}", std::process::id()));
    let database_url = format!("sqlite://{}/emit.db", dir.display());
    let client = reqwest::Client::new();
    let server = Server::start(&database_url);
    server.wait_ready(&client).await;

    let space: serde_json::Value = client
        .post(format!("{}/api/v1/spaces", server.base))
        .header("x-api-key", ADMIN_KEY)
        .json(&serde_json::json!({ "name": "crash" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let space_id = space["id"].as_str().unwrap().to_owned();

    // Eight producers create jobs as fast as they can until the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for producer in 0..8 {
        let (client, stop) = (client.clone(), stop.clone());
        let url = format!("{}/api/v1/spaces/{space_id}/jobs", server.base);
        producers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = serde_json::json!([{ "name": "c", "payload": { "p": producer, "n": n } }, { "name": "c" }]);
                let sent = client.post(&url).header("x-api-key", ADMIN_KEY).json(&body).send().await;
                let Ok(response) = sent else { break };
                if response.status().as_u16() != 201 {
                    break;
                }
                let Ok(created) = response.json::<serde_json::Value>().await else { break };
                acknowledged.extend(created.as_array().unwrap().iter().map(|job| job["id"].as_str().unwrap().to_owned()));
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for producer in producers {
        acknowledged.extend(producer.await.unwrap());
    }
    assert!(
        acknowledged.len() > 100,
        "the load ran ({} creates acknowledged)",
        acknowledged.len()
    );

    let server = Server::start(&database_url);
    server.wait_ready(&client).await;
    let mut lost = Vec::new();
    for id in &acknowledged {
        let response = client
            .get(format!("{}/api/v1/jobs/{id}", server.base))
            .header("x-api-key", ADMIN_KEY)
            .send()
            .await
            .unwrap();
        if response.status() != 200 {
            lost.push(id.clone());
        }
    }
    server.kill9();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged jobs lost: {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Runs `emit ARGS` against the server and parses its JSON output.
fn cli(server: &Server, admin_key: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_emit"))
        .args(args)
        .args(["--core-url", &server.grpc, "--admin-key", admin_key])
        .output()
        .expect("cli runs");
    assert!(
        output.status.success(),
        "emit {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cli prints JSON")
}

#[tokio::test]
async fn the_admin_key_is_generated_once_and_the_cli_manages_spaces_and_tokens() {
    let dir = std::env::temp_dir().join(format!("emit-cli-{}", std::process::id()));
    let database_url = format!("sqlite://{}/emit.db", dir.display());
    let client = reqwest::Client::new();
    let server = Server::start_with(&database_url, None);
    server.wait_ready(&client).await;

    let space_probe = Command::new(env!("CARGO_BIN_EXE_emit"))
        .args([
            "space",
            "list",
            "--core-url",
            &server.grpc,
            "--admin-key",
            "emit_wrong",
        ])
        .output()
        .unwrap();
    assert!(
        !space_probe.status.success(),
        "a wrong admin key is refused"
    );

    let mut first = server;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let printed = first.stdout();
    let admin_key = printed
        .lines()
        .find_map(|line| line.split("store it now): ").nth(1))
        .expect("the generated key is printed")
        .trim()
        .to_owned();
    assert!(admin_key.starts_with("emit_"));

    let mut second = Server::start_with(&database_url, None);
    second.wait_ready(&client).await;
    let space = cli(&second, &admin_key, &["space", "create", "from-cli"]);
    assert_eq!(space["name"], "from-cli");
    let space_id = space["id"].as_str().unwrap();
    let token = cli(
        &second,
        &admin_key,
        &[
            "token",
            "create",
            space_id,
            "--scope",
            "jobs:create",
            "--name",
            "producer",
        ],
    );
    let key = token["key"].as_str().unwrap();
    let created = client
        .post(format!("{}/api/v1/spaces/{space_id}/jobs", second.base))
        .header("x-api-key", key)
        .json(&serde_json::json!({ "name": "hello" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let tokens = cli(&second, &admin_key, &["token", "list", space_id]);
    assert_eq!(tokens.as_array().unwrap().len(), 2);
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    assert!(
        !second.stdout().contains("store it now"),
        "the key is shown only on the first start"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
