//! emit's gRPC core: the job state machine, storage, dispatch, timers,
//! events and auth, served over tonic.

pub mod auth;
pub mod background;
pub mod callbacks;
pub mod clock;
pub mod concurrency;
pub mod dispatch;
pub mod error;
pub mod grpc;
pub mod ids;
pub mod job;
pub mod metrics;
pub mod realtime;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;
pub mod timers;

pub use server::{CoreConfig, RunningCore, Secret, start};
