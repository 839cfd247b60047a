//! Fuzzing the REST request decoding of a real `emit serve`: random bytes,
//! invalid UTF-8, mutated and deeply nested JSON, values of the wrong type
//! in every field, strange headers and bodies past the size limit. Every
//! answer must be a 4xx with a clear `{"error": "..."}` (or a 2xx where the
//! random input happens to be valid); never a 5xx, a dropped connection or
//! a crash. Huge bodies must not grow the server's memory.

use emit_testkit as support;

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{ADMIN_KEY, Process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

struct Target {
    runtime: Runtime,
    http: reqwest::Client,
    server: Process,
    space_id: String,
    job_id: String,
}

impl Target {
    fn start(name: &str) -> Arc<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("emit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let server = Process::serve(
            &format!("sqlite://{}/emit.db", dir.display()),
            Some(ADMIN_KEY),
            &[],
        );
        let http = reqwest::Client::new();
        let (space_id, job_id) = runtime.block_on(async {
            server.wait_http_ready(&http).await;
            let space = send_ok(
                &http,
                &format!("{}/api/v1/spaces", server.url),
                json!({ "name": "fuzz" }),
            )
            .await;
            let space_id = space["id"].as_str().unwrap().to_owned();
            let job = send_ok(
                &http,
                &format!("{}/api/v1/spaces/{space_id}/jobs", server.url),
                json!({ "name": "held" }),
            )
            .await;
            (space_id, job["id"].as_str().unwrap().to_owned())
        });
        Arc::new(Self {
            runtime,
            http,
            server,
            space_id,
            job_id,
        })
    }

    /// Every endpoint that decodes a body.
    fn endpoints(&self) -> Vec<(Method, String)> {
        let (base, space, job) = (&self.server.url, &self.space_id, &self.job_id);
        let mut endpoints = vec![
            (Method::POST, format!("{base}/api/v1/spaces/{space}/jobs")),
            (
                Method::POST,
                format!("{base}/api/v1/spaces/{space}/jobs/poll"),
            ),
            (Method::POST, format!("{base}/api/v1/spaces")),
            (Method::PATCH, format!("{base}/api/v1/spaces/{space}")),
            (Method::POST, format!("{base}/api/v1/spaces/{space}/tokens")),
            (Method::POST, format!("{base}/api/v1/jobs/{job}/logs")),
        ];
        for action in [
            "claim",
            "ack",
            "progress",
            "checkpoint",
            "event",
            "complete",
            "fail",
            "keepalive",
            "kill",
        ] {
            endpoints.push((Method::POST, format!("{base}/api/v1/jobs/{job}/{action}")));
        }
        endpoints
    }

    /// Sends `body` and checks the answer; returns its status.
    fn check(
        &self,
        method: &Method,
        url: &str,
        body: Vec<u8>,
        headers: &[(&str, Vec<u8>)],
    ) -> StatusCode {
        self.runtime.block_on(async {
            let mut request = self
                .http
                .request(method.clone(), url)
                .header("x-api-key", ADMIN_KEY)
                .header("content-type", "application/json")
                .body(body);
            for (name, value) in headers {
                if let Ok(value) = reqwest::header::HeaderValue::from_bytes(value) {
                    request = request.header(*name, value);
                }
            }
            let response = request.send().await.expect("the server answers");
            let status = response.status();
            let text = response.bytes().await.expect("the whole answer arrives");
            assert!(
                !status.is_server_error(),
                "{method} {url}: {status} {:?}",
                String::from_utf8_lossy(&text)
            );
            if status.is_client_error() {
                let body: Value = serde_json::from_slice(&text).unwrap_or_else(|_| {
                    panic!("{method} {url}: {status} body is not JSON: {text:?}")
                });
                let error = body["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no error message: {body}"));
                assert!(!error.is_empty());
            }
            status
        })
    }

    fn rss_kib(&self) -> u64 {
        self.server.rss_kib()
    }
}

async fn send_ok(http: &reqwest::Client, url: &str, body: Value) -> Value {
    let response = support::post_json(http, url, ADMIN_KEY, &body)
        .await
        .unwrap();
    assert!(response.status().is_success());
    response.json().await.unwrap()
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        Just(json!(1e300)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A request object whose known fields hold arbitrary values.
fn typed_fields() -> impl Strategy<Value = Value> {
    const FIELDS: [&str; 16] = [
        "name",
        "payload",
        "maxRetries",
        "timeoutSeconds",
        "scheduledFor",
        "runAt",
        "callbackUrl",
        "callbackHeaders",
        "retryBackoff",
        "count",
        "names",
        "waitSeconds",
        "scopes",
        "error",
        "result",
        "lines",
    ];
    prop::collection::vec((prop::sample::select(&FIELDS[..]), any_json()), 0..6).prop_map(
        |fields| Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
    )
}

/// Valid-looking JSON, then cut, spliced and flipped.
fn mutated_json() -> impl Strategy<Value = Vec<u8>> {
    (
        typed_fields(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..6),
    )
        .prop_map(|(value, edits)| {
            let mut bytes = serde_json::to_vec(&value).unwrap();
            for (at, byte, how) in edits {
                if bytes.is_empty() {
                    break;
                }
                let at = at.index(bytes.len());
                match how {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => bytes.truncate(at),
                }
            }
            bytes
        })
}

fn nested(depth: usize, open: &str, close: &str) -> Vec<u8> {
    let mut body = format!(r#"{{"name":"deep","payload":{}"#, open.repeat(depth)).into_bytes();
    body.extend(close.repeat(depth).into_bytes());
    body.push(b'}');
    body
}

#[test]
fn request_decoding_never_fails_the_server() {
    let target = Target::start("fuzz");
    let endpoints = target.endpoints();
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        mutated_json(),
        typed_fields().prop_map(|value| serde_json::to_vec(&value).unwrap()),
        prop::collection::vec(typed_fields(), 0..4)
            .prop_map(|values| serde_json::to_vec(&values).unwrap()),
        any_json().prop_map(|value| serde_json::to_vec(&value).unwrap()),
    ];
    let header = prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|bytes| vec![("x-api-key", bytes)]),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|bytes| vec![("authorization", bytes)]),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|bytes| vec![("content-type", bytes)]),
    ];
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::new());
    runner
        .run(
            &(prop::sample::select(endpoints), body, header),
            |((method, url), body, headers)| {
                let status = target.check(&method, &url, body, &headers);
                *statuses.lock().unwrap().entry(status.as_u16()).or_insert(0) += 1;
                Ok(())
            },
        )
        .unwrap();
    eprintln!("answers by status: {:?}", statuses.lock().unwrap());

    // Values of the wrong type in each field of a create get a 400 that
    // names the field.
    let create = format!(
        "{}/api/v1/spaces/{}/jobs",
        target.server.url, target.space_id
    );
    for (field, value) in [
        ("name", json!(7)),
        ("name", json!(null)),
        ("maxRetries", json!("three")),
        ("maxRetries", json!(-1)),
        ("maxRetries", json!(1.5)),
        ("timeoutSeconds", json!([])),
        ("scheduledFor", json!({})),
        ("callbackUrl", json!(false)),
        ("retryBackoff", json!("fast")),
    ] {
        let mut job = json!({ "name": "typed" });
        job[field] = value.clone();
        let status = target.check(
            &Method::POST,
            &create,
            serde_json::to_vec(&job).unwrap(),
            &[],
        );
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {value}");
    }

    // Deep nesting: arrays and objects, past any recursion limit.
    for depth in [64, 200, 10_000, 1_000_000] {
        for (open, close) in [("[", "]"), (r#"{"a":"#, "}")] {
            let status = target.check(&Method::POST, &create, nested(depth, open, close), &[]);
            assert!(
                status.is_success()
                    || status == StatusCode::BAD_REQUEST
                    || status == StatusCode::PAYLOAD_TOO_LARGE,
                "depth {depth}: {status}"
            );
        }
    }
    // Invalid UTF-8 inside a JSON string.
    let status = target.check(
        &Method::POST,
        &create,
        b"{\"name\":\"\xff\xfe\"}".to_vec(),
        &[],
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[test]
fn huge_bodies_are_refused_and_memory_stays_flat() {
    let target = Target::start("huge");
    let create = format!(
        "{}/api/v1/spaces/{}/jobs",
        target.server.url, target.space_id
    );
    // Past the limit, with and without a length: refused with 413, or the
    // connection closed once the server has refused the body.
    let over_limit = |chunked| {
        let status = target
            .runtime
            .block_on(raw_post(&create, 40 * MIB, chunked));
        assert!(
            status.as_deref().is_none_or(|line| line.contains(" 413 ")),
            "over the limit (chunked: {chunked}): {status:?}"
        );
    };
    // Just under the limit, not JSON: buffered, then refused.
    let under_limit = || {
        let mut body = vec![b' '; 30 * MIB];
        body.push(b'x');
        assert_eq!(
            target.check(&Method::POST, &create, body, &[]),
            StatusCode::BAD_REQUEST
        );
    };
    // Warm the allocator up with each kind once.
    over_limit(false);
    over_limit(true);
    under_limit();
    let before = target.rss_kib();
    for _ in 0..10 {
        over_limit(false);
        over_limit(true);
        under_limit();
    }
    let after = target.rss_kib();
    eprintln!("server RSS before {before} KiB, after 30 huge bodies {after} KiB");
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

const MIB: usize = 1024 * 1024;

/// POSTs `size` bytes of `{` to `url` in 1 MiB writes, as chunks (no length)
/// or with a content-length; returns the status line, or `None` if the
/// server closed the connection before the answer could be read (allowed:
/// it has refused the body).
async fn raw_post(url: &str, size: usize, chunked: bool) -> Option<String> {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut socket = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\nx-api-key: {ADMIN_KEY}\r\n\
         content-type: application/json\r\n{}\r\n",
        if chunked {
            "transfer-encoding: chunked\r\n".to_owned()
        } else {
            format!("content-length: {size}\r\n")
        }
    );
    socket.write_all(head.as_bytes()).await.ok()?;
    let chunk = vec![b'{'; 1024 * 1024];
    for _ in 0..size / chunk.len() {
        let sent = async {
            socket
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            socket.write_all(&chunk).await?;
            socket.write_all(b"\r\n").await
        };
        if sent.await.is_err() {
            break;
        }
    }
    let _ = socket.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0; 256];
    let read = socket.read(&mut answer).await.ok()?;
    let answer = String::from_utf8_lossy(&answer[..read]);
    answer
        .lines()
        .next()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
}
