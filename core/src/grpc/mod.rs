//! tonic adapters: authenticate from metadata, convert proto to domain, call
//! the service, convert back. No decisions are taken here.

mod admin;
mod convert;
mod events;
mod jobs;
mod metered;
mod schedules;
mod workers;

pub use admin::AdminGrpc;
pub use events::EventsGrpc;
pub use jobs::JobsGrpc;
pub use metered::{Metered, MeteredLayer};
pub use schedules::SchedulesGrpc;
pub use workers::WorkersGrpc;

use tonic::metadata::MetadataMap;

use emit_proto::wire::SESSION_METADATA;

use crate::auth::{Authenticator, Credential, Principal, presented_key};
use crate::error::Result;

fn presented(metadata: &MetadataMap) -> Option<Credential<'_>> {
    let header = |name: &str| metadata.get(name).and_then(|value| value.to_str().ok());
    presented_key(header("x-api-key"), header("authorization"))
        .map(Credential::Key)
        .or_else(|| {
            header(SESSION_METADATA)
                .filter(|token| !token.is_empty())
                .map(Credential::Session)
        })
}

async fn principal(auth: &Authenticator, metadata: &MetadataMap) -> Result<Principal> {
    auth.authenticate(presented(metadata)).await
}

/// None when no key was presented at all; a key that was presented must be valid.
async fn optional_principal(
    auth: &Authenticator,
    metadata: &MetadataMap,
) -> Result<Option<Principal>> {
    match presented(metadata) {
        Some(key) => auth.authenticate(Some(key)).await.map(Some),
        None => Ok(None),
    }
}
