//! A gRPC stream worker that acks and completes every job pushed to it at
//! once: the worker of the crash and replica tests and of the benchmarks.
//! Callers watch what it hears and keep their own books.

use std::collections::HashMap;
use std::ops::ControlFlow;

use emit_proto::v1 as pb;
use emit_proto::v1::worker_service_client::WorkerServiceClient;
use pb::open_session_request::Message as Outgoing;
use pb::open_session_response::Message as Incoming;
use pb::worker_report::Action;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// What the worker heard from the server.
pub enum Heard<'a> {
    /// A job was pushed; its ack and completion are sent next.
    Assigned(&'a pb::Delivery),
    /// The answer to a job's completion (`code` 0: accepted).
    Completed {
        job_id: &'a str,
        result: &'a pb::ReportResult,
    },
    /// An ack the server refused.
    AckRefused(&'a pb::ReportResult),
}

/// Opens a session with `capacity` and works until the stream ends, the
/// server says `drained`, or `heard` breaks.
pub async fn ack_and_complete_all(
    grpc_url: &str,
    key: &str,
    space_id: &str,
    capacity: u32,
    mut heard: impl FnMut(Heard<'_>) -> ControlFlow<()>,
) -> Result<(), AnyError> {
    let (outgoing, stream) = mpsc::channel(1024);
    let hello = pb::WorkerHello {
        space_id: space_id.to_owned(),
        names: vec![],
        capacity,
    };
    outgoing
        .send(pb::OpenSessionRequest {
            message: Some(Outgoing::Hello(hello)),
        })
        .await?;
    let mut request = tonic::Request::new(ReceiverStream::new(stream));
    request.metadata_mut().insert("x-api-key", key.parse()?);
    let mut client = WorkerServiceClient::connect(grpc_url.to_owned()).await?;
    let mut incoming = client.open_session(request).await?.into_inner();
    let mut request_id = 0;
    // Completion request ids, to the job they complete.
    let mut completes: HashMap<u64, String> = HashMap::new();
    while let Some(message) = incoming.message().await? {
        let flow = match message.message {
            Some(Incoming::Assignment(job)) => {
                let flow = heard(Heard::Assigned(&job));
                for action in [
                    Action::Ack(pb::ReportAck {}),
                    Action::Complete(pb::ReportComplete { result_json: None }),
                ] {
                    request_id += 1;
                    if matches!(action, Action::Complete(_)) {
                        completes.insert(request_id, job.id.clone());
                    }
                    let report = pb::WorkerReport {
                        request_id,
                        job_id: job.id.clone(),
                        action: Some(action),
                    };
                    outgoing
                        .send(pb::OpenSessionRequest {
                            message: Some(Outgoing::Report(report)),
                        })
                        .await?;
                }
                flow
            }
            Some(Incoming::Result(result)) => match completes.remove(&result.request_id) {
                Some(job_id) => heard(Heard::Completed {
                    job_id: &job_id,
                    result: &result,
                }),
                None if result.code != 0 => heard(Heard::AckRefused(&result)),
                None => ControlFlow::Continue(()),
            },
            Some(Incoming::Drained(_)) => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        };
        if flow.is_break() {
            break;
        }
    }
    Ok(())
}
