//! The protobuf contract of emit, generated from `proto/` at build time.
//! Core and gateway both depend on this crate; proto types stay at their edges.

pub mod v1 {
    tonic::include_proto!("emit.v1");

    /// Encoded descriptors of every emit service, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("emit_descriptor");
}

/// What the core and its clients (the gateway, workers) must agree on
/// beyond the messages themselves.
pub mod wire {
    /// Largest gRPC message either side sends or accepts: job payloads are up
    /// to 1 MiB each, and a bulk create carries up to 1000 of them.
    pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
    /// Metadata key of the seconds to wait after RESOURCE_EXHAUSTED.
    pub const RETRY_AFTER_METADATA: &str = "retry-after";
    /// Metadata key of a dashboard session's token (the gateway reads it
    /// from the browser's cookie). A key, when one is presented too, wins.
    pub const SESSION_METADATA: &str = "x-emit-session";
}
