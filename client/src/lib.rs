//! A Rust client for emit's worker sessions (`WorkerService.OpenSession`
//! on the core's gRPC port): the worker says hello with its space, job
//! names and capacity; the server pushes jobs (`Assignment`) while the
//! worker has room, and the worker reports on each (ack, progress,
//! checkpoint, complete, fail) on the same stream, every report answered
//! by a `Result` with the report's request id.
//!
//! ```no_run
//! # async fn work() -> Result<(), tonic::Status> {
//! use emit_client::{Action, Incoming, Session, pb};
//! let hello = pb::WorkerHello { space_id: "SPACE".into(), names: vec![], capacity: 8 };
//! let mut session = Session::connect("http://127.0.0.1:50051", "emit_KEY", hello).await?;
//! while let Some(message) = session.next().await? {
//!     if let Incoming::Assignment(job) = message {
//!         session.send(&job.id, Action::Ack(pb::ReportAck {})).await?;
//!         let done = pb::ReportComplete { result_json: Some("{}".into()) };
//!         session.send(&job.id, Action::Complete(done)).await?;
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::VecDeque;

pub use emit_proto::v1 as pb;
use pb::open_session_request::Message as Outgoing;
use pb::worker_service_client::WorkerServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// What the server sends on a session.
pub use pb::open_session_response::Message as Incoming;
/// What a report does to its job.
pub use pb::worker_report::Action;

/// Reports a session may have sent and not yet written to the stream.
const OUTGOING_QUEUE: usize = 1024;

/// One open worker session.
pub struct Session {
    outgoing: mpsc::Sender<pb::OpenSessionRequest>,
    incoming: tonic::Streaming<pb::OpenSessionResponse>,
    last_request_id: u64,
    /// Messages that arrived while `report` waited for its result, in the
    /// order they came: a commit that ends one job may lease the next, and
    /// the two messages may come in either order.
    held: VecDeque<Incoming>,
    welcome: pb::WorkerWelcome,
}

impl Session {
    /// Connects to the core at `core_url` and opens a session.
    pub async fn connect(
        core_url: &str,
        key: &str,
        hello: pb::WorkerHello,
    ) -> Result<Self, tonic::Status> {
        let mut client = WorkerServiceClient::connect(core_url.to_owned())
            .await
            .map_err(|error| tonic::Status::unavailable(format!("cannot connect: {error}")))?;
        Self::open(&mut client, key, hello).await
    }

    /// Opens a session on a client's connection (many sessions may share
    /// one). Returns once the server welcomed the worker; a refusal (key,
    /// scope, bounds) is the error.
    pub async fn open(
        client: &mut WorkerServiceClient<Channel>,
        key: &str,
        hello: pb::WorkerHello,
    ) -> Result<Self, tonic::Status> {
        let (outgoing, stream) = mpsc::channel(OUTGOING_QUEUE);
        let hello = pb::OpenSessionRequest {
            message: Some(Outgoing::Hello(hello)),
        };
        outgoing.send(hello).await.map_err(|_| closed())?;
        let mut request = tonic::Request::new(ReceiverStream::new(stream));
        let key = key
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("the key is not valid metadata"))?;
        request.metadata_mut().insert("x-api-key", key);
        let mut incoming = client.open_session(request).await?.into_inner();
        // A refusal after the hello arrives as the stream's first item.
        let first = incoming
            .message()
            .await?
            .and_then(|message| message.message);
        let Some(Incoming::Welcome(welcome)) = first else {
            return Err(tonic::Status::internal(format!(
                "expected a welcome, got {first:?}"
            )));
        };
        Ok(Self {
            outgoing,
            incoming,
            last_request_id: 0,
            held: VecDeque::new(),
            welcome,
        })
    }

    pub fn welcome(&self) -> &pb::WorkerWelcome {
        &self.welcome
    }

    /// The next message from the server; `None` once the stream has ended.
    pub async fn next(&mut self) -> Result<Option<Incoming>, tonic::Status> {
        if let Some(held) = self.held.pop_front() {
            return Ok(Some(held));
        }
        loop {
            match self.incoming.message().await? {
                None => return Ok(None),
                Some(pb::OpenSessionResponse { message: None }) => continue,
                Some(pb::OpenSessionResponse {
                    message: Some(message),
                }) => return Ok(Some(message)),
            }
        }
    }

    /// Sends a report on `job_id` without waiting; its result arrives from
    /// `next` as an `Incoming::Result` with the request id returned here.
    pub async fn send(&mut self, job_id: &str, action: Action) -> Result<u64, tonic::Status> {
        self.last_request_id += 1;
        let report = pb::WorkerReport {
            request_id: self.last_request_id,
            job_id: job_id.to_owned(),
            action: Some(action),
        };
        let message = pb::OpenSessionRequest {
            message: Some(Outgoing::Report(report)),
        };
        self.outgoing.send(message).await.map_err(|_| closed())?;
        Ok(self.last_request_id)
    }

    /// Asks the server to send no more jobs: it answers `Drained` once the
    /// jobs this worker holds are finished, then ends the stream.
    pub async fn drain(&mut self) -> Result<(), tonic::Status> {
        let message = pb::OpenSessionRequest {
            message: Some(Outgoing::Drain(pb::WorkerDrain {})),
        };
        self.outgoing.send(message).await.map_err(|_| closed())
    }

    /// Sends a report and waits for its result; messages that arrive
    /// meanwhile are kept, in order, for `next`.
    pub async fn report(
        &mut self,
        job_id: &str,
        action: Action,
    ) -> Result<pb::ReportResult, tonic::Status> {
        let request_id = self.send(job_id, action).await?;
        loop {
            let Some(response) = self.incoming.message().await? else {
                return Err(closed());
            };
            match response.message {
                Some(Incoming::Result(result)) if result.request_id == request_id => {
                    return Ok(result);
                }
                Some(other) => self.held.push_back(other),
                // An empty message is not the end of the stream.
                None => continue,
            }
        }
    }

    /// Messages kept by `report` that `next` has not returned yet.
    pub fn held(&self) -> impl Iterator<Item = &Incoming> {
        self.held.iter()
    }
}

fn closed() -> tonic::Status {
    tonic::Status::unavailable("the session's stream has closed")
}
