//! The protobuf contract of emit, generated from `proto/` at build time.
//! Core and gateway both depend on this crate; proto types stay at their edges.

pub mod v1 {
    tonic::include_proto!("emit.v1");

    /// Encoded descriptors of every emit service, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("emit_descriptor");
}
