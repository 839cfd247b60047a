//! An emit worker in Rust on the core's gRPC WorkerService, with the
//! `emit-client` crate: one session, jobs pushed to it, each acked and
//! completed on the same stream.
//!
//!     cargo run --example rust_worker -- http://127.0.0.1:50051 SPACE_ID emit_KEY [CAPACITY]

use emit_client::{Action, Incoming, Session, pb};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: rust_worker CORE_URL SPACE_ID KEY [CAPACITY]";
    let core_url = args.next().ok_or(usage)?;
    let space_id = args.next().ok_or(usage)?;
    let key = args.next().ok_or(usage)?;
    let capacity = args.next().map_or(Ok(8), |arg| arg.parse())?;

    let hello = pb::WorkerHello {
        space_id,
        names: vec![],
        capacity,
    };
    let mut session = Session::connect(&core_url, &key, hello).await?;
    while let Some(message) = session.next().await? {
        match message {
            Incoming::Assignment(job) => {
                println!("job {} ({}): {:?}", job.id, job.name, job.payload_json);
                // The work itself goes here; report progress as it goes.
                session.send(&job.id, Action::Ack(pb::ReportAck {})).await?;
                let complete = Action::Complete(pb::ReportComplete {
                    result_json: Some(r#"{"ok":true}"#.into()),
                });
                session.send(&job.id, complete).await?;
            }
            Incoming::Result(result) if result.code != 0 => {
                eprintln!("report on {} refused: {}", result.job_id, result.message);
            }
            Incoming::Cancellation(cancel) => {
                eprintln!("job {} cancelled: {}", cancel.job_id, cancel.reason);
            }
            Incoming::Drained(_) => break,
            _ => {}
        }
    }
    Ok(())
}
