//! Isolation: no client, with or without a key, can hurt another. Each test
//! pins one bound and shows that passing it costs only the one who did.

use std::time::Duration;

use emit_proto::v1 as pb;
use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Options, TestApp, next_close, next_json};

/// Reads until the server closes the connection; what it sent meanwhile.
async fn read_until_closed(socket: &mut tokio::net::TcpStream, limit: Duration) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, socket.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the server closed the connection within {limit:?}");
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn oversized_keys_are_refused_alone_and_the_shared_core_connections_survive() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let mut watcher = app.watch_job(&job, &space.producer).await;
    assert_eq!(next_json(&mut watcher).await["type"], "init");

    for size in [20_000, 60_000] {
        let (status, body) = app
            .request("GET", &format!("/api/v1/jobs/{job}"), Some(&"k".repeat(size)), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{size}: {body}");
        assert_eq!(body["error"], "invalid API key");
    }
    for _ in 0..4 {
        let (status, body) = app
            .request("GET", &format!("/api/v1/jobs/{job}"), Some(&"k".repeat(70_000)), None)
            .await;
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(body["error"].as_str().unwrap().contains("headers exceed"));
    }
    let Err(refused) = app
        .ws(
            &format!("/api/v1/realtime/{job}?token={}", "k".repeat(5_000)),
            None,
        )
        .await
    else {
        panic!("refused before the upgrade");
    };
    assert_eq!(refused.0, StatusCode::UNAUTHORIZED);

    // The stream opened before, sharing the gateway's connections to the
    // core, still gets its events.
    app.poll_one(&space).await;
    assert_eq!(next_json(&mut watcher).await["type"], "delivered");
}

#[tokio::test]
async fn more_header_lines_than_the_bound_are_refused_alone() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    // `lines` header lines in all: reqwest adds `host` and `accept`.
    let headers = |lines: usize| {
        let mut map = reqwest::header::HeaderMap::new();
        map.insert("x-api-key", crate::helpers::ADMIN_KEY.parse().unwrap());
        for line in 3..lines {
            let name = reqwest::header::HeaderName::try_from(format!("x-line-{line}")).unwrap();
            map.insert(name, "1".parse().unwrap());
        }
        map
    };
    let url = format!("{}/api/v1/spaces/{}", app.base, space.id);

    let refused = app.http.get(&url).headers(headers(101)).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // A request within the bound is served as ever.
    let served = app.http.get(&url).headers(headers(100)).send().await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
}

#[tokio::test]
async fn oversized_request_targets_answer_json() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .request("GET", &format!("/api/v1/jobs/{}", "x".repeat(10_000)), None, None)
        .await;
    assert_eq!(status, StatusCode::URI_TOO_LONG);
    assert!(body["error"].as_str().unwrap().contains("8192 bytes"));
}

#[tokio::test]
async fn a_name_filter_past_its_bound_is_refused_and_other_spaces_are_untouched() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let other = app.create_space().await;
    let names: Vec<String> = (0..40_000).map(|i| format!("n{i}")).collect();
    let (status, body) = app
        .post(
            &format!("/api/v1/spaces/{}/jobs/poll", space.id),
            &space.worker,
            json!({ "names": names, "waitSeconds": 5 }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "names must list at most 100 job names");
    let (status, body) = app
        .post(
            &format!("/api/v1/spaces/{}/jobs/poll", space.id),
            &space.worker,
            json!({ "names": ["ok", ""] }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "names[1] must be 1 to 200 characters");
    app.create_job(&other, json!({ "name": "fine" })).await;
}

#[tokio::test]
async fn connections_that_hold_the_server_for_free_are_closed() {
    let app = TestApp::spawn_with(Options {
        timeouts: emit_gateway::ConnectionTimeouts {
            header_read: Duration::from_millis(500),
            read_idle: Duration::from_millis(800),
        },
        ..Options::default()
    })
    .await;
    let address = app.base.trim_start_matches("http://").to_owned();

    // Headers that never finish.
    let mut half_head = tokio::net::TcpStream::connect(&address).await.unwrap();
    half_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_until_closed(&mut half_head, Duration::from_secs(5)).await;

    // A body shorter than its Content-Length.
    let mut short_body = tokio::net::TcpStream::connect(&address).await.unwrap();
    short_body
        .write_all(b"POST /api/v1/spaces HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    read_until_closed(&mut short_body, Duration::from_secs(5)).await;

    // An idle keep-alive connection after a complete exchange.
    let mut idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // The server still answers new clients.
    let (status, _) = app.request("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn header_values_no_client_could_send_are_refused_at_create() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    for value in ["a\u{1}b", "tab\tok\u{7f}", "line\nbreak"] {
        let (status, body) = app
            .post(
                &format!("/api/v1/spaces/{}/jobs", space.id),
                &space.producer,
                json!({
                    "name": "a",
                    "callbackUrl": "https://example.com/hook",
                    "callbackHeaders": { "x-token": value },
                }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{value:?}");
        assert_eq!(
            body["error"],
            "jobs[0].callbackHeaders.x-token must not contain control characters or line breaks"
        );
    }
    let (status, _) = app
        .patch_space(
            &space.id,
            crate::helpers::ADMIN_KEY,
            json!({ "push": { "url": "https://example.com/push", "headers": { "x-a": "b\u{1}" } } }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn grpc_refuses_what_rest_refuses_and_bad_input_is_invalid_argument() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut jobs = app.grpc_jobs().await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut request = tonic::Request::new(pb::CreateJobsRequest {
        space_id: space.id.clone(),
        jobs: vec![pb::JobSpec {
            name: "deep".into(),
            payload_json: Some(deep),
            ..Default::default()
        }],
    });
    request
        .metadata_mut()
        .insert("x-api-key", space.producer.parse().unwrap());
    let refused = jobs.create_jobs(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(refused.message(), "jobs[0].payload must nest at most 127 levels deep");

    let mut request = tonic::Request::new(pb::ListJobsRequest {
        space_id: space.id.clone(),
        status: 99,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-api-key", space.producer.parse().unwrap());
    let refused = jobs.list_jobs(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // A string field that is not UTF-8: the same field number as
    // GetJobRequest.job_id, sent as raw bytes.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawGetJob {
        #[prost(bytes = "vec", tag = "1")]
        job_id: Vec<u8>,
    }
    let channel = tonic::transport::Endpoint::from_shared(app.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(RawGetJob {
        job_id: vec![0xff, 0xfe, 0x41],
    });
    request
        .metadata_mut()
        .insert("x-api-key", space.producer.parse().unwrap());
    let answer: Result<tonic::Response<pb::Job>, _> = grpc
        .unary(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static("/emit.v1.JobService/GetJob"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_eq!(answer.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_websocket_message_over_the_limit_is_closed_with_1009() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let mut stream = app.watch_job(&job, &space.producer).await;
    assert_eq!(next_json(&mut stream).await["type"], "init");
    let _ = stream
        .send(Message::Binary(vec![0u8; 2 * 1024 * 1024].into()))
        .await;
    let close = next_close(&mut stream).await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1009);
}

#[tokio::test]
async fn a_websocket_client_that_never_reads_is_cut_off_by_bytes_not_count() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let job = app.create_job(&space, json!({ "name": "big" })).await;
    let mut stalled = app.watch_job(&job, &space.producer).await;
    app.poll_one(&space).await;
    app.worker_call(&space, &job, "ack", Value::Null).await;
    // 24 progress reports of about 1 MiB: far fewer than the count bound
    // (4096 messages), more than the byte bound (16 MiB) plus what the
    // sockets buffer (20 were enough here). No more than that, and four at
    // a time, so that the reports after the cut-off are in before the
    // server's grace for flushing its close frame (5 s) runs out on a slow
    // disk: with 40 sent one by one, a CI run missed the frame. Their order
    // does not matter here.
    let filler = "x".repeat(1024 * 1024 - 100);
    let lanes = (0..4).map(|lane| {
        let (app, space, job, filler) = (&app, &space, &job, &filler);
        async move {
            for percent in (lane * 6)..(lane * 6 + 6) {
                let (status, body) = app
                    .worker_call(
                        space,
                        job,
                        "progress",
                        json!({ "percent": percent, "message": "m", "blob": filler }),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        }
    });
    futures_util::future::join_all(lanes).await;
    let close = next_close(&mut stalled).await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1013);
    assert!(close.reason.contains("bytes unread"), "{}", close.reason);
}

#[tokio::test]
async fn a_client_presenting_bad_keys_is_slowed_but_known_keys_from_it_are_not() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let path = format!("/api/v1/spaces/{}/jobs", space.id);
    // Known before the flood.
    assert_eq!(app.get(&path, &space.producer).await.0, StatusCode::OK);
    // Eight guessers side by side, until one is slowed (bounded): at any
    // machine speed they pass 50 refused keys a second together.
    let slowed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let guessers: Vec<_> = (0..8)
        .map(|guesser| {
            let (http, url, slowed) = (app.http.clone(), format!("{}{path}", app.base), slowed.clone());
            tokio::spawn(async move {
                let mut attempt = 0;
                while !slowed.load(std::sync::atomic::Ordering::Acquire)
                    && std::time::Instant::now() < deadline
                {
                    attempt += 1;
                    let status = http
                        .get(&url)
                        .header("x-api-key", format!("emit_guess_{guesser}_{attempt}"))
                        .send()
                        .await
                        .unwrap()
                        .status();
                    match status {
                        StatusCode::TOO_MANY_REQUESTS => {
                            slowed.store(true, std::sync::atomic::Ordering::Release)
                        }
                        other => assert_eq!(other, StatusCode::UNAUTHORIZED),
                    }
                }
            })
        })
        .collect();
    for guesser in guessers {
        guesser.await.unwrap();
    }
    assert!(
        slowed.load(std::sync::atomic::Ordering::Acquire),
        "guessing is slowed"
    );
    assert_eq!(app.get(&path, &space.producer).await.0, StatusCode::OK);
}

/// Text with NUL characters cannot be stored by PostgreSQL: accepted, it
/// would fail the write batch it landed in, other tenants' writes with it.
/// Every text field refuses it up front, on both backends alike.
#[tokio::test]
async fn text_with_nul_characters_is_refused_up_front() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let jobs = format!("/api/v1/spaces/{}/jobs", space.id);
    for job in [
        json!({ "name": "a\u{0}b" }),
        json!({ "name": "a", "callbackUrl": "https://example.com/\u{0}" }),
    ] {
        let (status, body) = app.post(&jobs, &space.producer, job.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{job}: {body}");
    }
    let job = app.create_job(&space, json!({ "name": "a" })).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/jobs/{job}/kill"),
            &space.producer,
            json!({ "reason": "x\u{0}" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    app.poll_one(&space).await;
    app.worker_call(&space, &job, "ack", Value::Null).await;
    for (action, body) in [
        ("logs", json!({ "lines": [{ "level": "info", "message": "m\u{0}" }] })),
        ("fail", json!({ "error": "e\u{0}" })),
    ] {
        let (status, answer) = app.worker_call(&space, &job, action, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{action}: {answer}");
    }
    for (path, body) in [
        ("/api/v1/spaces".to_owned(), json!({ "name": "s\u{0}" })),
        (
            format!("/api/v1/spaces/{}/tokens", space.id),
            json!({ "name": "t\u{0}", "scopes": ["jobs:read"] }),
        ),
    ] {
        let (status, answer) = app.post(&path, crate::helpers::ADMIN_KEY, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
    }
    // The space still works.
    app.create_job(&space, json!({ "name": "fine" })).await;
}
