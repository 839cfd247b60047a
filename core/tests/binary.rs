//! Tests of the real `emit` binary: the CLI and the generated admin key.

mod support;

use std::process::Command;

use support::Process;

fn grpc_url(server: &Process) -> &str {
    server.grpc_url.as_deref().expect("emit serve")
}

/// Runs `emit ARGS` against the server and parses its JSON output.
fn cli(server: &Process, admin_key: &str, args: &[&str]) -> serde_json::Value {
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
    serde_json::from_slice(&output.stdout).expect("cli prints JSON")
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
            "--scope",
            "jobs:create",
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
    second.kill9();
    assert!(
        !second.stdout().contains("store it now"),
        "the key is shown only on the first start"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
