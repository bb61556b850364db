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

/// A channel to the gRPC server at `address` (`host:port`, or a URL with a scheme), connected on
/// first use: giving up on a connection after 2 s and with Nagle's algorithm off, as every client of
/// the API wants (a replica's reply is small and waited for).
pub fn lazy_channel(address: &str) -> Result<tonic::transport::Channel, String> {
    let uri = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    let endpoint = tonic::transport::Endpoint::from_shared(uri).map_err(|e| e.to_string())?;
    Ok(endpoint.connect_timeout(std::time::Duration::from_secs(2)).tcp_nodelay(true).connect_lazy())
}
