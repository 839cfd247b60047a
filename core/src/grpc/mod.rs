//! tonic adapters: authenticate from metadata, convert proto to domain, call
//! the service, convert back. No decisions are taken here.

mod admin;
mod convert;
mod jobs;

pub use admin::AdminGrpc;
pub use jobs::JobsGrpc;

use tonic::metadata::MetadataMap;

use crate::auth::{Authenticator, Principal, presented_key};
use crate::error::Result;

async fn principal(auth: &Authenticator, metadata: &MetadataMap) -> Result<Principal> {
    let header = |name: &str| metadata.get(name).and_then(|value| value.to_str().ok());
    auth.authenticate(presented_key(header("x-api-key"), header("authorization")))
        .await
}
