use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use emit_proto::v1 as pb;
use emit_proto::v1::worker_service_server::WorkerService;
use pb::open_session_request::Message as Inbound;
use pb::open_session_response::Message as Outbound;
use pb::worker_report::Action;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::delivery;
use super::principal;
use crate::auth::{Authenticator, Principal, Scope};
use crate::dispatch::{self, Hello, Report, WorkerInput, WorkerOutput};
use crate::error::Error;
use crate::job::machine::Command;
use crate::metrics::CoreMetrics;
use crate::realtime::EventHub;
use crate::service::JobsApi;

/// Messages a session may run ahead of what the worker has read.
const SEND_AHEAD: usize = 64;
/// How long a new worker stream may take to send its hello.
const HELLO_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Worker sessions one key may hold open on one core.
pub const MAX_SESSIONS_PER_KEY: usize = 100;

pub struct WorkersGrpc {
    auth: Arc<Authenticator>,
    jobs: Arc<JobsApi>,
    hub: EventHub,
    claims: dispatch::WakeClaims,
    open: Arc<Mutex<HashMap<String, usize>>>,
    metrics: Arc<CoreMetrics>,
}

impl WorkersGrpc {
    pub fn new(
        auth: Arc<Authenticator>,
        jobs: Arc<JobsApi>,
        hub: EventHub,
        metrics: Arc<CoreMetrics>,
    ) -> Self {
        Self {
            auth,
            jobs,
            hub,
            claims: dispatch::WakeClaims::default(),
            open: Arc::default(),
            metrics,
        }
    }

    /// Takes one of the key's session slots, or refuses when it holds all.
    fn take_slot(&self, who: &Principal) -> Result<Option<SessionSlot>, Status> {
        let Principal::ApiKey(key) = who else {
            return Ok(None);
        };
        let mut open = lock(&self.open);
        let held = open.entry(key.token_id.clone()).or_default();
        if *held >= MAX_SESSIONS_PER_KEY {
            return Err(Error::Overrun(format!(
                "this API key already holds {MAX_SESSIONS_PER_KEY} worker sessions on this server"
            ))
            .into());
        }
        *held += 1;
        Ok(Some(SessionSlot {
            open: self.open.clone(),
            token_id: key.token_id.clone(),
        }))
    }
}

/// One of a key's session slots, given back when the session ends.
struct SessionSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    token_id: String,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(held) = open.get_mut(&self.token_id) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                open.remove(&self.token_id);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn report(action: Action) -> Report {
    match action {
        Action::Ack(_) => Report::Job(Command::Ack),
        Action::Progress(progress) => Report::Job(Command::Progress {
            data: progress.progress_json,
        }),
        Action::Checkpoint(checkpoint) => Report::Job(Command::Checkpoint {
            data: checkpoint.data_json,
        }),
        Action::Event(event) => Report::Job(Command::PublishEvent {
            data: event.data_json,
        }),
        Action::Logs(logs) => Report::Logs(
            logs.lines
                .into_iter()
                .map(|line| (line.level, line.message))
                .collect(),
        ),
        Action::Complete(complete) => Report::Job(Command::Complete {
            result: complete.result_json,
        }),
        Action::Fail(fail) => Report::Job(Command::Fail { error: fail.error }),
        Action::Keepalive(_) => Report::Job(Command::Keepalive),
    }
}

/// A session's output as a stream item; a revoked key ends the stream.
fn outbound(output: WorkerOutput) -> Result<pb::OpenSessionResponse, Status> {
    let message = match output {
        WorkerOutput::Welcome { session_id } => Outbound::Welcome(pb::WorkerWelcome { session_id }),
        WorkerOutput::Assignment(job) => Outbound::Assignment(delivery(job)),
        WorkerOutput::Result {
            request_id,
            job_id,
            outcome,
        } => {
            let (code, message, job) = match outcome {
                Ok(job) => (tonic::Code::Ok, String::new(), job.map(Into::into)),
                Err(error) => {
                    let status = Status::from(error);
                    (status.code(), status.message().to_owned(), None)
                }
            };
            Outbound::Result(pb::ReportResult {
                request_id,
                job_id,
                code: code as i32,
                message,
                job,
            })
        }
        WorkerOutput::Cancellation {
            job_id,
            lease,
            reason,
        } => Outbound::Cancellation(pb::Cancellation {
            job_id,
            lease_id: lease,
            reason: reason.to_owned(),
        }),
        WorkerOutput::Drained => Outbound::Drained(pb::WorkerDrained {}),
        WorkerOutput::Revoked => return Err(Error::Unauthenticated("API key revoked").into()),
    };
    Ok(pb::OpenSessionResponse {
        message: Some(message),
    })
}

/// Feeds the worker's messages to its session; ends when the stream does,
/// or when the session does (drained, revoked, server stopping). Dropping the
/// inbound half then resets the stream, so a worker that keeps its side open
/// does not hold the server's graceful stop.
async fn forward(mut inbound: Streaming<pb::OpenSessionRequest>, input: mpsc::Sender<WorkerInput>) {
    loop {
        let request = tokio::select! {
            request = inbound.next() => request,
            () = input.closed() => return,
        };
        let Some(Ok(request)) = request else { return };
        let message = match request.message {
            Some(Inbound::Capacity(capacity)) => WorkerInput::Capacity(capacity.capacity),
            Some(Inbound::Drain(_)) => WorkerInput::Drain,
            Some(Inbound::Report(report_message)) => {
                let Some(action) = report_message.action else {
                    continue;
                };
                WorkerInput::Report {
                    request_id: report_message.request_id,
                    job_id: report_message.job_id,
                    report: report(action),
                }
            }
            // A second hello or an empty message changes nothing.
            Some(Inbound::Hello(_)) | None => continue,
        };
        if input.send(message).await.is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkersGrpc {
    type OpenSessionStream = ReceiverStream<Result<pb::OpenSessionResponse, Status>>;

    async fn open_session(
        &self,
        request: Request<Streaming<pb::OpenSessionRequest>>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        let who = principal(&self.auth, request.metadata()).await?;
        let mut inbound = request.into_inner();
        // A stream that never says hello holds nothing for long.
        let first = tokio::time::timeout(HELLO_WITHIN, inbound.next())
            .await
            .map_err(|_| {
                Error::invalid(format!(
                    "the first message must be hello, within {}s",
                    HELLO_WITHIN.as_secs()
                ))
            })?;
        let hello = match first {
            Some(Ok(pb::OpenSessionRequest {
                message: Some(Inbound::Hello(hello)),
            })) => Hello {
                space_id: hello.space_id,
                names: hello.names,
                capacity: hello.capacity,
            },
            Some(Err(status)) => return Err(status),
            _ => return Err(Error::invalid("the first message must be hello").into()),
        };
        hello.validate()?;
        who.authorize_space(&hello.space_id, Scope::JobsPoll)?;

        let slot = self.take_slot(&who)?;
        let (input, session_input) = mpsc::channel(SEND_AHEAD);
        let (session_output, mut outputs) = mpsc::channel(SEND_AHEAD);
        let (responses, stream) = mpsc::channel(SEND_AHEAD);
        tokio::spawn(forward(inbound, input));
        let revocation = self.auth.revocation(Some(&who));
        let claims = self.claims.for_space(&hello.space_id);
        let session = dispatch::run_session(
            self.jobs.clone(),
            self.auth.clone(),
            self.hub.clone(),
            claims,
            revocation,
            who,
            hello,
            session_input,
            session_output,
        );
        let counted = self.metrics.session_opened();
        tokio::spawn(async move {
            session.await;
            drop((slot, counted));
        });
        tokio::spawn(async move {
            while let Some(output) = outputs.recv().await {
                let item = outbound(output);
                let last = item.is_err();
                if responses.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}
