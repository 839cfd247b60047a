//! A worker in another language: examples/python-worker (grpcio, stubs
//! generated from proto/ by grpcio-tools) against the real server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::TestApp;

/// A Python with grpcio, grpcio-tools and websockets: the system one if it
/// has them, else a virtualenv under target/ made once from the example's
/// requirements and websockets (the reference's stream snippets use it).
fn python_with_grpc(root: &Path) -> PathBuf {
    // Tests of this binary run side by side: one makes the virtualenv.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MAKING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let has_grpc = |python: &Path| {
        Command::new(python)
            .args(["-c", "import grpc, grpc_tools, websockets"])
            .status()
            .is_ok_and(|status| status.success())
    };
    let system = PathBuf::from("python3");
    if has_grpc(&system) {
        return system;
    }
    let venv = root.join("target/python-worker-venv");
    let python = venv.join("bin/python");
    if !has_grpc(&python) {
        let created = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs");
        assert!(created.success(), "python3 -m venv failed");
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "websockets>=12", "-r"])
            .arg(root.join("examples/python-worker/requirements.txt"))
            .status()
            .expect("pip runs");
        assert!(installed.success(), "pip install of grpcio failed");
    }
    python
}

#[tokio::test]
async fn the_python_worker_completes_pushed_jobs() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            app.create_job(&space, json!({ "name": "double", "payload": { "n": n } }))
                .await,
        );
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = tokio::task::spawn_blocking({
        let root = root.clone();
        move || python_with_grpc(&root)
    })
    .await
    .unwrap();
    let target = app.grpc_url.trim_start_matches("http://").to_owned();
    let worker = tokio::process::Command::new(python)
        .arg(root.join("examples/python-worker/worker.py"))
        .args([
            "--target",
            &target,
            "--space",
            &space.id,
            "--key",
            &space.worker,
        ])
        .args(["--jobs", "5"])
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), worker)
        .await
        .expect("the worker finishes")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "worker failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("completed 5 jobs"), "{stdout}");
    for (n, id) in ids.iter().enumerate() {
        let job = app.job(&space, id).await;
        assert_eq!(job["status"], "completed");
        assert_eq!(
            job["result"],
            json!({ "doubled": n * 2, "worker": "python" })
        );
        assert_eq!(job["progress"]["percent"], 50, "{job}");
    }
}

/// space-stream.txt's Python snippet prints `jobName` and `status` of every
/// message; run as published, it must follow the stream without a KeyError.
#[tokio::test]
async fn the_reference_python_space_stream_snippet_runs_unchanged() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = tokio::task::spawn_blocking({
        let root = root.clone();
        move || python_with_grpc(&root)
    })
    .await
    .unwrap();
    let base = app.base.replacen("http", "ws", 1);
    let mut snippet = tokio::process::Command::new(python)
        .arg(root.join("tests/api/snippets/watch_space.py"))
        .args([&base, &space.id, &space.producer])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        snippet.stdout.take().unwrap(),
    ));
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the snippet prints within 60s")
            .unwrap()
    };
    let first = next_line().await;
    assert_eq!(first.as_deref(), Some("[None] connected → None"));
    app.create_job(&space, json!({ "name": "send-email" })).await;
    let created = next_line().await;
    assert_eq!(created.as_deref(), Some("[send-email] created → pending"));
    let _ = snippet.start_kill();
}
