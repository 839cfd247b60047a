//! A gRPC stream worker that acks and completes every job pushed to it at
//! once: the worker of the crash and replica tests and of the benchmarks.
//! Callers watch what it hears and keep their own books.

use std::collections::HashMap;
use std::ops::ControlFlow;

use emit_client::{Action, Incoming, Session, pb};

use crate::AnyError;

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
    let hello = pb::WorkerHello {
        space_id: space_id.to_owned(),
        names: vec![],
        capacity,
    };
    let mut session = Session::connect(grpc_url, key, hello).await?;
    // Completion request ids, to the job they complete.
    let mut completes: HashMap<u64, String> = HashMap::new();
    while let Some(message) = session.next().await? {
        let flow = match message {
            Incoming::Assignment(job) => {
                let flow = heard(Heard::Assigned(&job));
                session.send(&job.id, Action::Ack(pb::ReportAck {})).await?;
                let complete = Action::Complete(pb::ReportComplete { result_json: None });
                let request_id = session.send(&job.id, complete).await?;
                completes.insert(request_id, job.id.clone());
                flow
            }
            Incoming::Result(result) => match completes.remove(&result.request_id) {
                Some(job_id) => heard(Heard::Completed {
                    job_id: &job_id,
                    result: &result,
                }),
                None if result.code != 0 => heard(Heard::AckRefused(&result)),
                None => ControlFlow::Continue(()),
            },
            Incoming::Drained(_) => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        };
        if flow.is_break() {
            break;
        }
    }
    Ok(())
}
