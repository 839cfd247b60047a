//! The gRPC twins of the REST calls, with their status codes.

use emit_proto::v1 as pb;
use tonic::{Code, Request};

use crate::helpers::TestApp;

fn with_key<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-api-key", key.parse().unwrap());
    request
}

fn spec(name: &str, payload: &str) -> pb::JobSpec {
    pb::JobSpec {
        name: name.into(),
        payload_json: Some(payload.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_grpc_worker_runs_the_whole_lifecycle() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let mut jobs = app.grpc_jobs().await;
    let payload = r#"{"big":123456789012345678901234567890,"nested":{"a":[1,{"b":2}]}}"#;
    let created = jobs
        .create_jobs(with_key(
            &space.producer,
            pb::CreateJobsRequest {
                space_id: space.id.clone(),
                jobs: vec![spec("grpc", payload)],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let id = created[0].id.clone();

    let polled = jobs
        .poll_jobs(with_key(
            &space.worker,
            pb::PollJobsRequest {
                space_id: space.id.clone(),
                count: Some(10),
                names: vec![],
                wait_seconds: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(polled.len(), 1);
    assert_eq!(
        polled[0].payload_json.as_deref(),
        Some(payload),
        "JSON crosses gRPC byte for byte"
    );
    let fence = Some(pb::Fence {
        attempt_number: Some(0),
        lease_id: Some(polled[0].lease_id.clone()),
    });

    let acked = jobs
        .ack_job(with_key(
            &space.worker,
            pb::AckJobRequest {
                job_id: id.clone(),
                fence: fence.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(acked.status(), pb::JobStatus::Running);
    jobs.report_progress(with_key(
        &space.worker,
        pb::ReportProgressRequest {
            job_id: id.clone(),
            fence: fence.clone(),
            progress_json: r#"{"percent":50}"#.into(),
        },
    ))
    .await
    .unwrap();
    jobs.save_checkpoint(with_key(
        &space.worker,
        pb::SaveCheckpointRequest {
            job_id: id.clone(),
            fence: fence.clone(),
            data_json: "[1]".into(),
        },
    ))
    .await
    .unwrap();
    jobs.publish_event(with_key(
        &space.worker,
        pb::PublishEventRequest {
            job_id: id.clone(),
            fence: fence.clone(),
            data_json: "{}".into(),
        },
    ))
    .await
    .unwrap();
    jobs.keepalive_job(with_key(
        &space.worker,
        pb::KeepaliveJobRequest {
            job_id: id.clone(),
            fence: fence.clone(),
        },
    ))
    .await
    .unwrap();
    let appended = jobs
        .append_logs(with_key(
            &space.worker,
            pb::AppendLogsRequest {
                job_id: id.clone(),
                lines: vec![pb::LogLine {
                    level: "info".into(),
                    message: "hi".into(),
                }],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(appended.last_seq, 1);
    let completed = jobs
        .complete_job(with_key(
            &space.worker,
            pb::CompleteJobRequest {
                job_id: id.clone(),
                fence,
                result_json: Some("18446744073709551616".into()),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        completed.result_json.as_deref(),
        Some("18446744073709551616")
    );

    let detail = jobs
        .get_job(with_key(
            &space.producer,
            pb::GetJobRequest { job_id: id.clone() },
        ))
        .await
        .unwrap()
        .into_inner();
    let types: Vec<pb::JobEventType> = detail.events.iter().map(|event| event.r#type()).collect();
    use pb::JobEventType as T;
    assert_eq!(
        types,
        [
            T::Created,
            T::Delivered,
            T::Acked,
            T::Progress,
            T::Checkpoint,
            T::Event,
            T::Completed
        ]
    );
    let progress = jobs
        .get_job_progress(with_key(
            &space.public_token,
            pb::GetJobProgressRequest { job_id: id.clone() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(progress.progress_json.as_deref(), Some(r#"{"percent":50}"#));
    let logs = jobs
        .list_logs(with_key(
            &space.producer,
            pb::ListLogsRequest {
                job_id: id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(logs.lines[0].message, "hi");
    let listed = jobs
        .list_jobs(with_key(
            &space.producer,
            pb::ListJobsRequest {
                space_id: space.id.clone(),
                status: pb::JobStatus::Completed as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((listed.jobs.len(), listed.total), (1, 1));
}

#[tokio::test]
async fn grpc_errors_carry_the_right_codes() {
    let app = TestApp::spawn().await;
    let space = app.create_space().await;
    let other = app.create_space().await;
    let mut jobs = app.grpc_jobs().await;
    let create = |key: &str, space_id: &str, spec: pb::JobSpec| {
        with_key(
            key,
            pb::CreateJobsRequest {
                space_id: space_id.into(),
                jobs: vec![spec],
            },
        )
    };

    let invalid = jobs
        .create_jobs(create(&space.producer, &space.id, spec("", "{}")))
        .await
        .unwrap_err();
    assert_eq!(
        (invalid.code(), invalid.message()),
        (Code::InvalidArgument, "jobs[0].name is required")
    );
    let bad_json = jobs
        .create_jobs(create(&space.producer, &space.id, spec("a", "{nope")))
        .await
        .unwrap_err();
    assert_eq!(
        (bad_json.code(), bad_json.message()),
        (Code::InvalidArgument, "jobs[0].payload must be valid JSON")
    );
    let anonymous = jobs
        .create_jobs(Request::new(pb::CreateJobsRequest {
            space_id: space.id.clone(),
            jobs: vec![spec("a", "1")],
        }))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let wrong_space = jobs
        .create_jobs(create(&space.producer, &other.id, spec("a", "1")))
        .await
        .unwrap_err();
    assert_eq!(wrong_space.code(), Code::PermissionDenied);
    let no_scope = jobs
        .create_jobs(create(&space.worker, &space.id, spec("a", "1")))
        .await
        .unwrap_err();
    assert_eq!(
        (no_scope.code(), no_scope.message()),
        (
            Code::PermissionDenied,
            "Missing required scope: jobs:create"
        )
    );

    let id = jobs
        .create_jobs(create(&space.producer, &space.id, spec("a", "1")))
        .await
        .unwrap()
        .into_inner()
        .jobs[0]
        .id
        .clone();
    let hidden = jobs
        .get_job(with_key(
            &other.producer,
            pb::GetJobRequest { job_id: id.clone() },
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let early = jobs
        .ack_job(with_key(
            &space.worker,
            pb::AckJobRequest {
                job_id: id.clone(),
                fence: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);
    jobs.claim_job(with_key(
        &space.worker,
        pb::ClaimJobRequest { job_id: id.clone() },
    ))
    .await
    .unwrap();
    let stale = pb::Fence {
        attempt_number: Some(3),
        lease_id: None,
    };
    let fenced = jobs
        .ack_job(with_key(
            &space.worker,
            pb::AckJobRequest {
                job_id: id.clone(),
                fence: Some(stale),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(fenced.code(), Code::Aborted);
    let killed = jobs
        .kill_job(with_key(
            &space.producer,
            pb::KillJobRequest {
                job_id: id,
                reason: Some("stop".into()),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(killed.status(), pb::JobStatus::Killed);
}

#[tokio::test]
async fn admin_calls_exist_over_grpc_too() {
    let app = TestApp::spawn().await;
    let mut admin =
        emit_proto::v1::admin_service_client::AdminServiceClient::connect(app.grpc_url.clone())
            .await
            .unwrap();
    let space = admin
        .create_space(with_key(
            crate::helpers::ADMIN_KEY,
            pb::CreateSpaceRequest { name: "g".into() },
        ))
        .await
        .unwrap()
        .into_inner()
        .space
        .unwrap();
    let created = admin
        .create_token(with_key(
            crate::helpers::ADMIN_KEY,
            pb::CreateTokenRequest {
                space_id: space.id.clone(),
                name: "w".into(),
                scopes: vec!["jobs:write".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(created.key.starts_with("emit_"));
    let tokens = admin
        .list_tokens(with_key(
            crate::helpers::ADMIN_KEY,
            pb::ListTokensRequest {
                space_id: space.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(tokens.len(), 2);
    let refused = admin
        .list_spaces(with_key(&created.key, pb::ListSpacesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let app = TestApp::spawn().await;
    let channel = tonic::transport::Endpoint::from_shared(app.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "emit.v1.JobService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        names.contains(&"emit.v1.JobService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"emit.v1.AdminService".to_owned()),
        "{names:?}"
    );

    // The same through v1alpha, which grpcio-reflection, Postman and older
    // grpcurl speak.
    use tonic_reflection::pb::v1alpha as alpha;
    let mut reflection = alpha::server_reflection_client::ServerReflectionClient::new(
        tonic::transport::Endpoint::from_shared(app.grpc_url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let request = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let response = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection is served")
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("expected a service list");
    };
    assert!(
        list.service
            .iter()
            .any(|service| service.name == "emit.v1.WorkerService"),
        "{:?}",
        list.service
    );
}
