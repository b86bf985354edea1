//! The crossbatch gRPC API, package `crossbatch.v1` (see `crossbatch/v1/crossbatch.proto`).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("crossbatch.v1");
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/crossbatch_descriptor.bin"));
