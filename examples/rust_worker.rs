//! An emit worker in Rust on the core's gRPC WorkerService: one session,
//! jobs pushed to it, each acked and completed on the same stream.
//!
//!     cargo run --example rust_worker -- http://127.0.0.1:50051 SPACE_ID emit_KEY [CAPACITY]

use emit_proto::v1 as pb;
use emit_proto::v1::worker_service_client::WorkerServiceClient;
use pb::open_session_request::Message as Outgoing;
use pb::open_session_response::Message as Incoming;
use pb::worker_report::Action;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn report(request_id: u64, job_id: &str, action: Action) -> pb::OpenSessionRequest {
    pb::OpenSessionRequest {
        message: Some(Outgoing::Report(pb::WorkerReport {
            request_id,
            job_id: job_id.to_owned(),
            action: Some(action),
        })),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: rust_worker CORE_URL SPACE_ID KEY [CAPACITY]";
    let core_url = args.next().ok_or(usage)?;
    let space_id = args.next().ok_or(usage)?;
    let key = args.next().ok_or(usage)?;
    let capacity = args.next().map_or(Ok(8), |arg| arg.parse())?;

    let (outgoing, stream) = mpsc::channel(256);
    outgoing
        .send(pb::OpenSessionRequest {
            message: Some(Outgoing::Hello(pb::WorkerHello {
                space_id,
                names: vec![],
                capacity,
            })),
        })
        .await?;
    let mut request = tonic::Request::new(ReceiverStream::new(stream));
    request.metadata_mut().insert("x-api-key", key.parse()?);
    let mut client = WorkerServiceClient::connect(core_url).await?;
    let mut incoming = client.open_session(request).await?.into_inner();
    let mut request_id = 0;
    while let Some(message) = incoming.message().await? {
        match message.message {
            Some(Incoming::Assignment(job)) => {
                println!("job {} ({}): {:?}", job.id, job.name, job.payload_json);
                // The work itself goes here; report progress as it goes.
                request_id += 1;
                outgoing
                    .send(report(request_id, &job.id, Action::Ack(pb::ReportAck {})))
                    .await?;
                request_id += 1;
                let complete = Action::Complete(pb::ReportComplete {
                    result_json: Some(r#"{"ok":true}"#.into()),
                });
                outgoing.send(report(request_id, &job.id, complete)).await?;
            }
            Some(Incoming::Result(result)) if result.code != 0 => {
                eprintln!("report on {} refused: {}", result.job_id, result.message);
            }
            Some(Incoming::Cancellation(cancel)) => {
                eprintln!("job {} cancelled: {}", cancel.job_id, cancel.reason);
            }
            Some(Incoming::Drained(_)) => break,
            _ => {}
        }
    }
    Ok(())
}
