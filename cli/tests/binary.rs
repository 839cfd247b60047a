//! Tests of the real `emit` binary: the CLI and the generated admin key.

use emit_testkit as support;

use std::process::Command;

use support::Process;

fn grpc_url(server: &Process) -> &str {
    server.grpc_url.as_deref().expect("emit serve")
}

/// Runs `emit ARGS` against the server and parses its JSON output.
fn cli(server: &Process, admin_key: &str, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&cli_text(server, admin_key, args)).expect("cli prints JSON")
}

/// Runs `emit ARGS` against the server, expecting success; its output.
fn cli_text(server: &Process, admin_key: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_emit"))
        .args(args)
        .args(["--core-url", grpc_url(server), "--admin-key", admin_key])
        .output()
        .expect("cli runs");
    assert!(
        output.status.success(),
        "emit {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_admin_key_is_generated_once_and_the_cli_manages_spaces_and_tokens() {
    let dir = std::env::temp_dir().join(format!("emit-cli-{}", std::process::id()));
    let database_url = format!("sqlite://{}/emit.db", dir.display());
    let client = reqwest::Client::new();
    let server = Process::serve(&database_url, None, &[]);
    server.wait_http_ready(&client).await;

    let space_probe = Command::new(env!("CARGO_BIN_EXE_emit"))
        .args([
            "space",
            "list",
            "--core-url",
            grpc_url(&server),
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
    first.kill9();
    let printed = first.stdout();
    let admin_key = printed
        .lines()
        .find_map(|line| line.split("store it now): ").nth(1))
        .expect("the generated key is printed")
        .trim()
        .to_owned();
    assert!(admin_key.starts_with("emit_"));

    let mut second = Process::serve(&database_url, None, &[]);
    second.wait_http_ready(&client).await;
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
            // Comma-separated scopes work as well as a repeated --scope.
            "--scope",
            "jobs:create,jobs:read",
            "--name",
            "producer",
        ],
    );
    let key = token["key"].as_str().unwrap();
    let created = client
        .post(format!("{}/api/v1/spaces/{space_id}/jobs", second.url))
        .header("x-api-key", key)
        .json(&serde_json::json!({ "name": "hello" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let tokens = cli(&second, &admin_key, &["token", "list", space_id]);
    assert_eq!(tokens.as_array().unwrap().len(), 2);
    let producer = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|token| token["name"] == "producer")
        .expect("the created token is listed");
    assert_eq!(
        producer["scopes"],
        serde_json::json!(["jobs:create", "jobs:read"])
    );
    second.kill9();
    assert!(
        !second.stdout().contains("store it now"),
        "the key is shown only on the first start"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `emit ARGS` to its exit (bounded) with `env`, and returns it.
async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_emit"));
    command
        .args(args)
        .env_remove("EMIT_ADMIN_KEY")
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), command.output())
        .await
        .expect("emit exits within 60s")
        .expect("emit runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scratch_database(tag: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("emit-{tag}-{}", ulid::Ulid::new()));
    let url = format!("sqlite://{}/emit.db", dir.display());
    (dir, url)
}

#[tokio::test]
async fn a_start_that_cannot_serve_shows_no_key_and_the_next_start_does() {
    let (dir, database_url) = scratch_database("port-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap().to_string();
    let grpc = format!("127.0.0.1:{}", support::free_port());
    let args = [
        "serve",
        "--http-addr",
        &http,
        "--grpc-addr",
        &grpc,
        "--database-url",
        &database_url,
    ];
    let failed = run_to_exit(&args, &[]).await;
    assert!(!failed.status.success());
    let stderr = text(&failed.stderr);
    assert!(
        stderr.contains(&format!("error: cannot listen for HTTP on {http}")),
        "{stderr}"
    );
    assert!(!text(&failed.stdout).contains("store it now"));
    drop(taken);

    // The port is free now: this is the first start that serves, and it
    // shows the key, which works.
    let client = reqwest::Client::new();
    let mut server = Process::spawn(&args, None, format!("http://{http}"));
    server.wait_http_ready(&client).await;
    server.terminate();
    server.wait_exit(std::time::Duration::from_secs(30)).await;
    let printed = server.stdout();
    let key = printed
        .lines()
        .find_map(|line| line.split("store it now): ").nth(1))
        .unwrap_or_else(|| panic!("the key is printed: {printed}"));
    assert!(
        printed.contains(&format!("emit is serving: http://{http}")),
        "{printed}"
    );
    assert!(key.starts_with("emit_"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn weak_admin_keys_are_refused_and_a_lost_key_is_replaced_by_reset() {
    let (dir, database_url) = scratch_database("admin-key");
    let grpc = format!("127.0.0.1:{}", support::free_port());
    let weak = run_to_exit(
        &[
            "core",
            "--grpc-addr",
            &grpc,
            "--database-url",
            &database_url,
        ],
        &[("EMIT_ADMIN_KEY", "short")],
    )
    .await;
    assert!(!weak.status.success());
    let stderr = text(&weak.stderr);
    assert!(
        stderr.contains("the admin key from --admin-key/EMIT_ADMIN_KEY is refused")
            && stderr.contains("at least 32"),
        "{stderr}"
    );

    // A first start stores a generated key; it is "lost"; reset replaces it.
    let client = reqwest::Client::new();
    let mut first = Process::serve(&database_url, None, &[]);
    first.wait_http_ready(&client).await;
    first.kill9();
    let lost = first
        .stdout()
        .lines()
        .find_map(|line| line.split("store it now): ").nth(1).map(str::to_owned))
        .expect("the first start prints its key");
    let reset = run_to_exit(
        &["admin-key", "reset", "--database-url", &database_url],
        &[],
    )
    .await;
    assert!(reset.status.success(), "{}", text(&reset.stderr));
    let printed = text(&reset.stdout);
    let new_key = printed
        .lines()
        .find_map(|line| line.split("store it now): ").nth(1))
        .unwrap_or_else(|| panic!("reset prints the new key: {printed}"))
        .trim()
        .to_owned();

    let second = Process::serve(&database_url, None, &[]);
    second.wait_http_ready(&client).await;
    let spaces = |key: String| {
        client
            .get(format!("{}/api/v1/spaces", second.url))
            .header("x-api-key", key)
            .send()
    };
    assert_eq!(spaces(new_key).await.unwrap().status(), 200);
    assert_eq!(spaces(lost.trim().to_owned()).await.unwrap().status(), 401);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn failures_name_what_failed_and_where() {
    // The CLI with no core at the address.
    let port = support::free_port();
    let core_url = format!("http://127.0.0.1:{port}");
    let cli = run_to_exit(
        &["space", "list", "--core-url", &core_url],
        &[("EMIT_ADMIN_KEY", support::ADMIN_KEY)],
    )
    .await;
    assert!(!cli.status.success());
    let stderr = text(&cli.stderr);
    assert!(
        stderr.contains(&format!("cannot reach the core at {core_url}"))
            && stderr.to_lowercase().contains("refused"),
        "{stderr}"
    );

    // PostgreSQL that is not there: retried with progress, then named.
    let grpc = format!("127.0.0.1:{}", support::free_port());
    let database_url = format!("postgres://postgres@127.0.0.1:{port}/emit");
    let serve = run_to_exit(
        &[
            "core",
            "--grpc-addr",
            &grpc,
            "--database-url",
            &database_url,
            "--database-wait",
            "2",
        ],
        &[("EMIT_ADMIN_KEY", support::ADMIN_KEY)],
    )
    .await;
    assert!(!serve.status.success());
    let stderr = text(&serve.stderr);
    assert!(stderr.contains("waiting for PostgreSQL"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: cannot connect to PostgreSQL at 127.0.0.1:{port}/emit"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn logs_are_plain_or_json_and_log_each_request_without_its_query() {
    for format in ["text", "json"] {
        let (dir, database_url) = scratch_database("logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("stderr.log");
        let http = format!("127.0.0.1:{}", support::free_port());
        let grpc = format!("127.0.0.1:{}", support::free_port());
        let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_emit"))
            .args([
                "serve",
                "--http-addr",
                &http,
                "--grpc-addr",
                &grpc,
                "--database-url",
                &database_url,
                "--log-format",
                format,
            ])
            .env("EMIT_ADMIN_KEY", support::ADMIN_KEY)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let client = reqwest::Client::new();
        let probe = Process {
            child: std::process::Command::new("true").spawn().unwrap(),
            url: format!("http://{http}"),
            grpc_url: None,
            log: None,
            printed: None,
        };
        probe.wait_http_ready(&client).await;
        let answered = client
            .get(format!(
                "http://{http}/api/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV?token=sekrit"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(answered.status(), 401);
        let _ = server.start_kill();
        let _ = server.wait().await;
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(!log.contains('\u{1b}'), "no colour codes in a file: {log}");
        assert!(!log.contains("sekrit"), "no query strings: {log}");
        let request_line = log
            .lines()
            .find(|line| line.contains("/api/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV"))
            .unwrap_or_else(|| panic!("a request line: {log}"));
        assert!(request_line.contains("401"), "{request_line}");
        assert!(
            request_line.contains("/api/v1/jobs/{job_id}"),
            "{request_line}"
        );
        if format == "json" {
            for line in log.lines() {
                let parsed: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|_| panic!("a JSON line: {line}"));
                assert!(parsed["level"].is_string(), "{line}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn every_flag_and_subcommand_has_help() {
    let cases: [(&[&str], &[&str]); 7] = [
        (&["job", "retry", "--help"], &["fresh set of attempts"]),
        (
            &["space", "set-retention", "--help"],
            &["How long dead jobs are kept"],
        ),
        (&["backup", "--help"], &["Where the copy goes"]),
        (
            &["serve", "--help"],
            &[
                "Address the REST/WebSocket gateway listens on",
                "Address the gRPC core listens on",
                "Where jobs live",
                "Log format on stderr",
            ],
        ),
        (&["gateway", "--help"], &["The core's gRPC address"]),
        (
            &["token", "create", "--help"],
            &["repeated or comma-separated"],
        ),
        (&["--help"], &["Recover access", "Manage spaces"]),
    ];
    for (args, expected) in cases {
        let help = run_to_exit(args, &[]).await;
        assert!(help.status.success());
        let printed = text(&help.stdout);
        for phrase in expected {
            assert!(
                printed.contains(phrase),
                "{args:?} lacks {phrase:?}:\n{printed}"
            );
        }
        // clap prints a bare flag line with nothing after it when a flag
        // has no help; every option line must carry text.
        for line in printed.lines().map(str::trim) {
            if line.starts_with("--") && !line.contains("  ") {
                panic!("{args:?}: {line:?} has no help");
            }
        }
    }
}

/// The job CLI works on one job, and `emit backup` copies a serving
/// database consistently (creates keep landing while it runs); a server
/// started on the copy has everything created before the backup began.
#[tokio::test]
async fn the_job_cli_operates_on_jobs_and_a_backup_taken_while_serving_restores() {
    let (dir, database_url) = scratch_database("backup");
    let client = reqwest::Client::new();
    let key = support::ADMIN_KEY;
    let server = Process::serve(&database_url, Some(key), &[]);
    server.wait_http_ready(&client).await;
    let space = cli(&server, key, &["space", "create", "kept"]);
    let space_id = space["id"].as_str().unwrap().to_owned();
    let jobs_url = format!("{}/api/v1/spaces/{space_id}/jobs", server.url);
    let batch: Vec<_> = (0..200)
        .map(|n| serde_json::json!({ "name": format!("j{n}") }))
        .collect();
    let created = support::post_json(&client, &jobs_url, key, &serde_json::json!(batch))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let ids: Vec<String> = created
        .json::<serde_json::Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().to_owned())
        .collect();

    // One job through kill, retry, kill and delete from the command line.
    let killed = cli(
        &server,
        key,
        &["job", "kill", &ids[0], "--reason", "by hand"],
    );
    assert_eq!(killed["status"], "killed");
    let retried = cli(&server, key, &["job", "retry", &ids[0]]);
    assert_eq!(
        (
            retried["status"].as_str(),
            retried["attemptNumber"].as_u64()
        ),
        (Some("pending"), Some(0))
    );
    cli(&server, key, &["job", "kill", &ids[0]]);
    let deleted = cli(&server, key, &["job", "delete", &ids[0]]);
    assert_eq!(deleted["id"], ids[0].as_str());
    let shown = cli(&server, key, &["job", "get", &ids[1]]);
    assert_eq!(shown["status"], "pending");
    let table = cli_text(&server, key, &["job", "get", &ids[1], "--output", "table"]);
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("status") && line.ends_with("pending")),
        "{table}"
    );
    let listed = cli(
        &server,
        key,
        &["job", "list", &space_id, "--name", "j7", "--output", "json"],
    );
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["jobs"][0]["id"], ids[7].as_str());
    let table = cli_text(
        &server,
        key,
        &[
            "job", "list", &space_id, "--status", "pending", "--limit", "3",
        ],
    );
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("3 of 199 shown"), "{table}");

    // `tail` follows the space stream: a job created once it follows shows up.
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_emit"))
        .args(["job", "tail", &space_id, "--output", "json"])
        .args(["--core-url", grpc_url(&server), "--admin-key", key])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tail.stdout.take().unwrap()));
    let mut next_line = async || {
        let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
            .await
            .expect("tail prints a line")
            .unwrap()
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()
    };
    assert_eq!(next_line().await["type"], "connected");
    let tailed = support::post_json(
        &client,
        &jobs_url,
        key,
        &serde_json::json!({ "name": "tailed" }),
    )
    .await
    .unwrap();
    assert_eq!(tailed.status(), 201);
    let event = next_line().await;
    assert_eq!(
        (event["type"].as_str(), event["name"].as_str()),
        (Some("created"), Some("tailed"))
    );
    tail.kill().await.unwrap();

    let retention = cli(
        &server,
        key,
        &[
            "space",
            "set-retention",
            &space_id,
            "--completed",
            "12h",
            "--dead",
            "0",
        ],
    );
    assert_eq!(retention["retention"]["completed"], 43_200);
    assert_eq!(retention["retention"]["dead"], 0);

    // Creates keep landing while the backup runs.
    let load = {
        let (client, url) = (client.clone(), jobs_url.clone());
        tokio::spawn(async move {
            for n in 0..200 {
                let body = serde_json::json!({ "name": format!("during{n}") });
                let response = support::post_json(&client, &url, key, &body).await.unwrap();
                assert_eq!(response.status(), 201);
            }
        })
    };
    let copy = dir.join("copy.db");
    let backup_args = [
        "backup",
        copy.to_str().unwrap(),
        "--database-url",
        &database_url,
    ];
    let backup = run_to_exit(&backup_args, &[]).await;
    assert!(backup.status.success(), "{}", text(&backup.stderr));
    load.await.unwrap();
    let again = run_to_exit(&backup_args, &[]).await;
    assert!(
        !again.status.success(),
        "an existing file is never overwritten"
    );
    assert!(
        text(&again.stderr).contains("exists already"),
        "{}",
        text(&again.stderr)
    );

    // Restore: a server on the copy reads everything back.
    let restored = Process::serve(&format!("sqlite://{}", copy.display()), Some(key), &[]);
    restored.wait_http_ready(&client).await;
    let restored_space = cli(&restored, key, &["space", "get", &space_id]);
    assert_eq!(restored_space["retention"]["completed"], 43_200);
    for id in &ids[1..] {
        let job = cli(&restored, key, &["job", "get", id]);
        assert_eq!(job["status"], "pending", "{id}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
