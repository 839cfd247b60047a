//! OpenTelemetry traces: `emit serve --otlp-endpoint` sends a REST call's
//! spans (gateway, core, store) to a collector, under the caller's W3C
//! `traceparent`. The collector here is a real OTLP/gRPC server.

use emit_testkit as support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use support::{ADMIN_KEY, free_port};

/// A span as received: its trace id and its name.
type Received = (Vec<u8>, String);

/// Every span received.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((span.trace_id, span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test]
async fn a_rest_call_is_traced_through_gateway_core_and_store_under_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = std::env::temp_dir().join(format!("emit-traces-{}", ulid::Ulid::new()));
    let (http, grpc) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_emit"))
        .args(["serve", "--http-addr", &http, "--grpc-addr", &grpc])
        .args([
            "--database-url",
            &format!("sqlite://{}/emit.db", dir.display()),
        ])
        .args(["--otlp-endpoint", &endpoint])
        .env("EMIT_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://{http}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let health = client.get(format!("{base}/healthz")).send().await;
        if health.is_ok_and(|response| response.status() == reqwest::StatusCode::OK) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let created = client
        .post(format!("{base}/api/v1/spaces"))
        .header("x-api-key", ADMIN_KEY)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({ "name": "traced" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // A graceful stop flushes what is still batched.
    let pid = server.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), server.wait())
        .await
        .expect("the server stops")
        .unwrap();

    let wanted = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>();
    let spans = collector.0.lock().unwrap().clone();
    let names: Vec<&str> = spans
        .iter()
        .filter(|(trace, _)| *trace == wanted)
        .map(|(_, name)| name.as_str())
        .collect();
    for expected in ["http request", "grpc request", "store write"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?} (all: {spans:?})"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
