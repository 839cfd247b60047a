//! The dashboard in a real browser: `tests/browser/dashboard.mjs` drives
//! Debian's Chromium (through playwright-core from npm) against the real
//! server this test starts, and restarts that server in place when the
//! script asks. The script's flows and checks are listed at its top; its
//! screenshots land in `docs/screenshots/` (the README shows them).
//!
//! Runs on SQLite only: the page and the gateway are the same on both
//! backends, and `dashboard.rs` tests sessions on both.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::helpers::{ADMIN_KEY, TestApp};

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Installs playwright-core from the npm registry (pinned by the lock file)
/// unless it is there already.
async fn install_driver() {
    if browser_dir().join("node_modules/playwright-core").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(browser_dir())
        .status()
        .await
        .expect("npm runs");
    assert!(status.success(), "npm ci in tests/browser failed");
}

#[tokio::test]
async fn dashboard_flows_in_chromium() {
    if !Path::new(CHROMIUM).exists() {
        // CI installs Chromium (.ci/run); elsewhere the test says why it did nothing.
        assert!(
            std::env::var_os("CI").is_none(),
            "{CHROMIUM} is missing: .ci/run installs Debian's chromium package"
        );
        eprintln!("skipped: {CHROMIUM} is not installed (apt-get install chromium)");
        return;
    }
    install_driver().await;
    let mut app = TestApp::spawn().await;
    let mut script = Command::new("node")
        .arg("dashboard.mjs")
        .current_dir(browser_dir())
        .env("EMIT_URL", &app.base)
        .env("EMIT_ADMIN_KEY", ADMIN_KEY)
        .env(
            "EMIT_SCREENSHOTS",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut answers = script.stdin.take().expect("stdin");
    let mut said = BufReader::new(script.stdout.take().expect("stdout")).lines();
    let run = async {
        while let Some(line) = said.next_line().await.expect("script output") {
            println!("browser: {line}");
            if line == "restart" {
                app.restart_in_place().await;
                answers
                    .write_all(b"restarted\n")
                    .await
                    .expect("answer the script");
            }
        }
        script.wait().await.expect("script ends")
    };
    let status = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser flows finish within 4 minutes");
    assert!(status.success(), "the browser flows failed: {status}");
}
