use std::sync::Arc;

use emit_proto::v1 as pb;
use emit_proto::v1::event_service_server::EventService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{optional_principal, principal};
use crate::auth::{Authenticator, Revocation};
use crate::error::{Error, Result};
use crate::realtime::{RealtimeApi, SpaceCursor};

/// Messages converted ahead of what the client has read; the real buffer is
/// the watcher's queue in the hub, which is what decides when it is too far
/// behind.
const SEND_AHEAD: usize = 16;

type Reply<T> = Result<Response<T>, Status>;
type Outbox<T> = ReceiverStream<Result<T, Status>>;

pub struct EventsGrpc {
    auth: Arc<Authenticator>,
    realtime: Arc<RealtimeApi>,
}

impl EventsGrpc {
    pub fn new(auth: Arc<Authenticator>, realtime: Arc<RealtimeApi>) -> Self {
        Self { auth, realtime }
    }
}

/// Something that yields stream items until the server stops or the watcher
/// falls behind.
trait Watch: Send + 'static {
    type Item: Send;
    fn next(&mut self) -> impl Future<Output = Result<Option<Self::Item>>> + Send;
}

impl Watch for crate::realtime::JobWatch {
    type Item = crate::realtime::JobStreamItem;
    fn next(&mut self) -> impl Future<Output = Result<Option<Self::Item>>> + Send {
        crate::realtime::JobWatch::next(self)
    }
}

impl Watch for crate::realtime::SpaceWatch {
    type Item = crate::realtime::SpaceStreamItem;
    fn next(&mut self) -> impl Future<Output = Result<Option<Self::Item>>> + Send {
        crate::realtime::SpaceWatch::next(self)
    }
}

/// Pumps a watch into a response stream until the client goes away, the
/// watcher falls behind (RESOURCE_EXHAUSTED) or the server stops (UNAVAILABLE).
fn pump<W, T>(mut watch: W, mut revocation: Revocation) -> Outbox<T>
where
    W: Watch,
    T: From<W::Item> + Send + 'static,
{
    let (outbox, stream) = mpsc::channel(SEND_AHEAD);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                () = outbox.closed() => return,
                () = revocation.revoked() => Err(Error::Unauthenticated("API key revoked")),
                next = watch.next() => next,
            };
            let (message, last) = match next {
                Ok(Some(item)) => (Ok(T::from(item)), false),
                Ok(None) => (Err(Status::unavailable("server shutting down")), true),
                Err(error) => (Err(Status::from(error)), true),
            };
            if outbox.send(message).await.is_err() || last {
                return;
            }
        }
    });
    ReceiverStream::new(stream)
}

#[tonic::async_trait]
impl EventService for EventsGrpc {
    type WatchJobStream = Outbox<pb::WatchJobResponse>;
    type WatchSpaceStream = Outbox<pb::WatchSpaceResponse>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Reply<Self::WatchJobStream> {
        let who = optional_principal(&self.auth, request.metadata()).await?;
        let request = request.get_ref();
        let watch = self
            .realtime
            .watch_job(who.as_ref(), &request.job_id, !request.without_events)
            .await?;
        let revocation = self.auth.revocation(who.as_ref());
        Ok(Response::new(pump(watch, revocation)))
    }

    async fn watch_space(
        &self,
        request: Request<pb::WatchSpaceRequest>,
    ) -> Reply<Self::WatchSpaceStream> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let cursor = SpaceCursor {
            since: request.since,
            stream_id: request.stream_instance_id,
        };
        let watch = self
            .realtime
            .watch_space(&who, &request.space_id, cursor)
            .await?;
        let revocation = self.auth.revocation(Some(&who));
        Ok(Response::new(pump(watch, revocation)))
    }
}
