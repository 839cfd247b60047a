//! Prometheus metrics, scraped from a live server over HTTP.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use emit_testkit::metric_sample as sample;

use crate::helpers::{ADMIN_KEY, Backend, Options, TestApp, next_json};

pub async fn scrape(app: &TestApp, key: Option<&str>) -> (StatusCode, String, String) {
    let mut request = app.http.get(format!("{}/metrics", app.base));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// Scrapes until every series has at least its value (bounded).
async fn scrape_until(app: &TestApp, wanted: &[(String, f64)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, text) = scrape(app, Some(ADMIN_KEY)).await;
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(series, at_least)| sample(&text, series).is_none_or(|value| value < *at_least))
            .collect();
        if missing.is_empty() {
            return text;
        }
        assert!(Instant::now() < deadline, "never reached {missing:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_live_server_is_scraped_with_job_queue_http_grpc_and_stream_metrics() {
    let app = TestApp::spawn_with(Options {
        rate_limit: Some(1000),
        ..Options::default()
    })
    .await;
    let space = app.create_space().await;
    let id = &space.id;
    let done = app.create_job(&space, json!({ "name": "mail" })).await;
    app.poll_one(&space).await;
    app.worker_call(&space, &done, "ack", json!({})).await;
    app.worker_call(&space, &done, "complete", json!({})).await;
    let dead = app
        .create_job(&space, json!({ "name": "mail", "maxRetries": 0 }))
        .await;
    app.poll_one(&space).await;
    app.worker_call(&space, &dead, "fail", json!({ "error": "boom" }))
        .await;
    app.create_job(&space, json!({ "name": "report" })).await;
    let mut stream = app.watch_space(id, &space.producer, "").await;
    next_json(&mut stream).await;

    let text = scrape_until(
        &app,
        &[
            (format!("emit_jobs_created_total{{space=\"{id}\",name=\"mail\"}}"), 2.0),
            (format!("emit_jobs_created_total{{space=\"{id}\",name=\"report\"}}"), 1.0),
            (
                format!("emit_jobs_finished_total{{space=\"{id}\",name=\"mail\",status=\"completed\"}}"),
                1.0,
            ),
            (
                format!("emit_jobs_finished_total{{space=\"{id}\",name=\"mail\",status=\"dead\"}}"),
                1.0,
            ),
            ("emit_dispatch_seconds_count".into(), 2.0),
            ("emit_run_seconds_count".into(), 1.0),
            ("emit_websocket_subscribers".into(), 1.0),
        ],
    )
    .await;
    assert_eq!(sample(&text, &format!("emit_jobs{{space=\"{id}\",status=\"pending\"}}")), Some(1.0));
    assert_eq!(sample(&text, &format!("emit_jobs{{space=\"{id}\",status=\"completed\"}}")), Some(1.0));
    assert!(sample(&text, "emit_writer_batch_operations_count").unwrap() >= 1.0);
    assert!(sample(&text, "emit_writer_commit_seconds_count").unwrap() >= 1.0);
    // Every phase of the batches so far took some time.
    let phases: Vec<f64> = ["begin", "operations", "dispatch", "commit"]
        .iter()
        .map(|phase| {
            let series = format!("emit_writer_phase_seconds_total{{phase=\"{phase}\"}}");
            sample(&text, &series).unwrap_or_else(|| panic!("no {series}: {text}"))
        })
        .collect();
    assert!(phases.iter().all(|seconds| *seconds > 0.0), "{phases:?}");
    // SQLite's fsync after COMMIT, timed before any reply it covers;
    // PostgreSQL's COMMIT includes its own.
    let syncs = sample(&text, "emit_writer_sync_seconds_count").unwrap();
    match crate::BACKEND {
        Backend::Sqlite => assert!(syncs >= 1.0, "{syncs}"),
        Backend::Postgres => assert_eq!(syncs, 0.0),
    }
    // The core's VACUUMs of `jobs` (PostgreSQL only, and only once it
    // churns: `store/postgres/vacuum.rs` tests them).
    assert!(
        sample(&text, "emit_postgres_vacuum_seconds_count").is_some(),
        "{text}"
    );
    let creates = "emit_http_requests_total{method=\"POST\",route=\"/api/v1/spaces/{space_id}/jobs\",status=\"201\"}";
    assert_eq!(sample(&text, creates), Some(3.0), "{text}");
    assert!(
        sample(&text, "emit_grpc_requests_total{method=\"/emit.v1.JobService/CreateJobs\",code=\"0\"}")
            .unwrap()
            >= 3.0
    );
    assert!(text.contains("# TYPE emit_dispatch_seconds histogram"));
    assert!(text.trim_end().ends_with("# EOF"), "one EOF, at the end");
    assert_eq!(text.matches("# EOF").count(), 1);
    drop(stream);

    // The metrics name spaces and jobs: the admin key only.
    let (status, _, _) = scrape(&app, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = scrape(&app, Some(&space.producer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, content_type, _) = scrape(&app, Some(ADMIN_KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
}

#[tokio::test]
async fn job_name_labels_are_capped_and_refusals_are_counted() {
    let app = TestApp::spawn_with(Options {
        rate_limit: Some(5),
        ..Options::default()
    })
    .await;
    let space = app.create_space().await;
    let names: Vec<_> = (0..=emit_core::metrics::MAX_NAMES_PER_SPACE)
        .map(|n| json!({ "name": format!("name-{n}") }))
        .collect();
    let (status, _) = app
        .post(&format!("/api/v1/spaces/{}/jobs", space.id), &space.producer, json!(names))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // A burst past the key's 5 a second.
    let mut refused = 0;
    for _ in 0..20 {
        let (status, _) = app.get(&format!("/api/v1/spaces/{}/jobs", space.id), &space.producer).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    assert!(refused > 0);
    let other = format!(
        "emit_jobs_created_total{{space=\"{}\",name=\"{}\"}}",
        space.id,
        emit_core::metrics::OTHER
    );
    let text = scrape_until(&app, &[(other, 1.0), ("emit_rate_limited_total".into(), f64::from(refused))]).await;
    let labelled = text
        .lines()
        .filter(|line| line.starts_with("emit_jobs_created_total{"))
        .count();
    assert_eq!(labelled, emit_core::metrics::MAX_NAMES_PER_SPACE + 1, "100 names and other");
}
