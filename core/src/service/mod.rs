//! The core's operations, independent of any transport: each takes the
//! authenticated principal and domain input, checks authorization, and goes
//! to the store. The gRPC adapters in `grpc` are one line of translation per
//! call around these.

mod admin;
mod jobs;
mod schedules;

pub use admin::AdminApi;
pub use jobs::{BulkAction, BulkOutcome, FlowUsage, JobsApi, ListLimits, MAX_POLL_COUNT};
pub use schedules::SchedulesApi;
