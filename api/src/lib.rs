//! The client API of a Fides cluster: the gRPC services and messages of package `fides.v1`,
//! generated from `proto/fides/v1/*.proto` at build time (with protox, so no `protoc` is needed).
//!
//! The replica serves them, a relay serves `Intermediary`, and the clients call them; each of
//! those crates depends on this one, and none of them on another for the wire types.

#![forbid(unsafe_code)]

pub mod proto {
    //! The gRPC API (package `fides.v1`), generated from `proto/fides/v1/ordering.proto`,
    //! `proto/fides/v1/bistro.proto` and `proto/fides/v1/ca.proto`.
    #![allow(missing_docs)]
    #![allow(clippy::all)]
    tonic::include_proto!("fides.v1");

    /// The encoded descriptor set of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fides_descriptor.bin"));
}

pub mod rpc {
    //! The error details of `google.rpc` (a subset of googleapis' `status.proto` and
    //! `error_details.proto`, same names and numbers) that the services put in a refusal's
    //! `grpc-status-details-bin` trailer.
    #![allow(missing_docs)]
    #![allow(clippy::all)]
    tonic::include_proto!("google.rpc");
}

/// A refusal with details: `code` and `message` as usual, and in the `grpc-status-details-bin`
/// trailer a `google.rpc.Status` holding a `google.rpc.BadRequest` with `violations` (field path,
/// description) if any, and a `google.rpc.ErrorInfo` with `reason` in `domain` if given.
pub fn status_with_details(
    code: tonic::Code,
    message: impl Into<String>,
    violations: &[(&str, &str)],
    reason: Option<(&str, &str)>,
) -> tonic::Status {
    use prost::Message;
    let message = message.into();
    let mut details = Vec::new();
    if !violations.is_empty() {
        let bad = rpc::BadRequest {
            field_violations: violations
                .iter()
                .map(|(field, description)| rpc::bad_request::FieldViolation {
                    field: field.to_string(),
                    description: description.to_string(),
                })
                .collect(),
        };
        details.push(prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
            value: bad.encode_to_vec(),
        });
    }
    if let Some((reason, domain)) = reason {
        let info = rpc::ErrorInfo { reason: reason.into(), domain: domain.into(), metadata: Default::default() };
        details.push(prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
            value: info.encode_to_vec(),
        });
    }
    let status = rpc::Status { code: code as i32, message: message.clone(), details };
    tonic::Status::with_details(code, message, status.encode_to_vec().into())
}

/// The `google.rpc.Status` in a status's details, if it carries one that decodes.
pub fn status_details(status: &tonic::Status) -> Option<rpc::Status> {
    use prost::Message;
    rpc::Status::decode(status.details()).ok().filter(|_| !status.details().is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_refusal_carries_its_bad_request_and_error_info_in_google_rpc_status() {
        let status = status_with_details(
            tonic::Code::InvalidArgument,
            "the name is too long",
            &[("fields.name.common_name", "65 characters, above 64")],
            Some(("NAME_TOO_LONG", "ca.fides")),
        );
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let details = status_details(&status).expect("details decode");
        assert_eq!(details.code, tonic::Code::InvalidArgument as i32);
        assert_eq!(details.message, "the name is too long");
        assert_eq!(details.details.len(), 2);
        assert_eq!(details.details[0].type_url, "type.googleapis.com/google.rpc.BadRequest");
        let bad = rpc::BadRequest::decode(details.details[0].value.as_slice()).expect("a BadRequest");
        assert_eq!(bad.field_violations[0].field, "fields.name.common_name");
        let info = rpc::ErrorInfo::decode(details.details[1].value.as_slice()).expect("an ErrorInfo");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("NAME_TOO_LONG", "ca.fides"));
        assert!(status_details(&tonic::Status::internal("plain")).is_none());
    }

    #[test]
    fn the_descriptor_set_holds_the_certification_authority_service() {
        let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("a descriptor set");
        let ca = set.file.iter().find(|file| file.name() == "fides/v1/ca.proto").expect("ca.proto compiled");
        assert_eq!(ca.service[0].name(), "CertificationAuthorityService");
        let methods: Vec<&str> = ca.service[0].method.iter().map(|m| m.name()).collect();
        assert_eq!(
            methods,
            ["GetChallenge", "Issue", "Update", "Revoke", "GetStatus", "Retrieve", "GetCrl", "ListIssued"]
        );
    }
}
