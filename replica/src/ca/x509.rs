//! Certificates and CRLs from the bytes the replicas signed (a TBS and its threshold RSA
//! signature), with decoded copies of their fields for the API's answers. DER through the
//! RustCrypto `der` and `x509-cert` crates only.

use der::asn1::BitString;
use der::{Decode, Encode};
use fides_api::proto;
use spki::AlgorithmIdentifierOwned;
use x509_cert::crl::{CertificateList, TbsCertList};
use x509_cert::{Certificate, TbsCertificate};

/// A `google.protobuf.Timestamp` of milliseconds since 1970.
pub fn timestamp_ms(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

fn timestamp(time: x509_cert::time::Time) -> prost_types::Timestamp {
    let since = time.to_unix_duration();
    prost_types::Timestamp { seconds: since.as_secs() as i64, nanos: 0 }
}

/// `sha256WithRSAEncryption` with NULL parameters, as every TBS the CA makes names.
fn signature_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: const_oid::db::rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
        parameters: Some(der::asn1::Null.into()),
    }
}

/// The certificate made of `tbs` (a TBSCertificate's DER) and its `signature`.
pub fn certificate(tbs: &[u8], signature: &[u8]) -> Result<proto::IssuedCertificate, String> {
    let tbs = TbsCertificate::from_der(tbs).map_err(|e| format!("the signed TBSCertificate does not decode: {e}"))?;
    let certificate = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: signature_algorithm(),
        signature: BitString::from_bytes(signature).map_err(|e| e.to_string())?,
    };
    let der = certificate.to_der().map_err(|e| e.to_string())?;
    let tbs = &certificate.tbs_certificate;
    Ok(proto::IssuedCertificate {
        der,
        serial: tbs.serial_number.as_bytes().to_vec(),
        subject: tbs.subject.to_string(),
        not_before: Some(timestamp(tbs.validity.not_before)),
        not_after: Some(timestamp(tbs.validity.not_after)),
    })
}

/// The CRL made of `tbs` (a TBSCertList's DER) and its `signature`.
pub fn crl(tbs: &[u8], signature: &[u8]) -> Result<proto::GetCrlResponse, String> {
    let tbs = TbsCertList::from_der(tbs).map_err(|e| format!("the signed TBSCertList does not decode: {e}"))?;
    let list = CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: signature_algorithm(),
        signature: BitString::from_bytes(signature).map_err(|e| e.to_string())?,
    };
    let der = list.to_der().map_err(|e| e.to_string())?;
    let tbs = &list.tbs_cert_list;
    let number = tbs
        .crl_extensions
        .iter()
        .flatten()
        .find(|extension| extension.extn_id == const_oid::db::rfc5280::ID_CE_CRL_NUMBER)
        .and_then(|extension| x509_cert::ext::pkix::CrlNumber::from_der(extension.extn_value.as_bytes()).ok())
        .map_or(0, |number| number.0.as_bytes().iter().fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte)));
    Ok(proto::GetCrlResponse {
        der,
        number,
        this_update: Some(timestamp(tbs.this_update)),
        next_update: tbs.next_update.map(timestamp),
        revoked_count: tbs.revoked_certificates.as_ref().map_or(0, |revoked| revoked.len() as u32),
    })
}
