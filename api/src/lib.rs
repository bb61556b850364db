//! The client API of a Fides cluster: the gRPC services and messages of package `fides.v1`,
//! generated from `proto/fides/v1/*.proto` at build time (with protox, so no `protoc` is needed).
//!
//! The replica serves them, a relay serves `Intermediary`, and the clients call them; each of
//! those crates depends on this one, and none of them on another for the wire types.

#![forbid(unsafe_code)]

pub mod proto {
    //! The gRPC API (package `fides.v1`), generated from `proto/fides/v1/ordering.proto` and
    //! `proto/fides/v1/bistro.proto`.
    #![allow(missing_docs)]
    #![allow(clippy::all)]
    tonic::include_proto!("fides.v1");

    /// The encoded descriptor set of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fides_descriptor.bin"));
}

/// Size of the chunks that uploads and fetches of files are cut into (`UploadChunk`,
/// `FetchChunk`): the uploading client and a serving intermediary both use it.
pub const CHUNK: usize = 64 * 1024;
