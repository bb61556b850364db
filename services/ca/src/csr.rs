//! PKCS#10 certification requests (RFC 2986): decode, check the self-signature, and take the
//! subject, the key and the requested alternative names.
//!
//! What the CA reads from a request and what it ignores: the subject (checked as a
//! [`SubjectName`]), the key (Ed25519 or P-256), and the subjectAltName of an extensionRequest
//! attribute (DNS names and e-mail addresses only). Other requested extensions (key usage, basic
//! constraints, …) are ignored: the profile decides them. Any attribute other than
//! extensionRequest is refused. An X25519 key cannot sign, so it has no request: the client sends
//! the key itself and confirms it by decrypting each replica's challenge.

use const_oid::db::{rfc5280, rfc5912, rfc8410};
use der::{Decode, Reader, SliceReader};
use p256::ecdsa::signature::Verifier;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::request::{CertReq, ExtensionReq};

use crate::key::SpkiRefusal;
use crate::name::{DnsName, EmailAddress};
use crate::{AltNames, CsrError, InputError, SubjectKey, SubjectName};

/// A request larger than this (PEM or DER) is refused unread.
pub const CSR_BYTES_MAX: usize = 16 * 1024;
/// At most this many extensions in the extension request.
pub const CSR_EXTENSIONS_MAX: usize = 16;

/// What a request asks for, its signature checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificationRequest {
    /// The subject.
    pub subject: SubjectName,
    /// The key, which signed the request.
    pub key: SubjectKey,
    /// The requested alternative names (empty if none were asked for).
    pub alt_names: AltNames,
}

/// Decode a request in PEM (`CERTIFICATE REQUEST`) or DER and check its self-signature.
pub fn parse_csr(input: &[u8]) -> Result<CertificationRequest, CsrError> {
    if input.len() > CSR_BYTES_MAX {
        return Err(CsrError::TooLarge { len: input.len(), max: CSR_BYTES_MAX });
    }
    let der = if input.trim_ascii_start().starts_with(b"-----BEGIN") { from_pem(input)? } else { input.to_vec() };
    let request = CertReq::from_der(&der).map_err(|error| CsrError::Decode(error.to_string()))?;
    let key = match SubjectKey::from_spki(&request.info.public_key) {
        Ok(SubjectKey::X25519(_)) => return Err(CsrError::X25519Request),
        Ok(key) => key,
        Err(SpkiRefusal::Unsupported(oid)) => return Err(CsrError::UnsupportedKey(oid)),
        Err(SpkiRefusal::Bad(error)) => return Err(CsrError::Input(error)),
    };
    check_signature(&der, &request, &key)?;
    let subject = SubjectName::from_name(&request.info.subject).map_err(CsrError::Subject)?;
    let alt_names = requested_alt_names(&request)?;
    Ok(CertificationRequest { subject, key, alt_names })
}

fn from_pem(input: &[u8]) -> Result<Vec<u8>, CsrError> {
    let (label, der) = der::pem::decode_vec(input).map_err(|error| CsrError::Decode(error.to_string()))?;
    if label != "CERTIFICATE REQUEST" {
        return Err(CsrError::Decode(format!("a PEM block labelled {:?}", label.chars().take(64).collect::<String>())));
    }
    Ok(der)
}

/// The bytes the signature covers: the CertificationRequestInfo exactly as received (its first
/// TLV), not as re-encoded.
fn signed_bytes(der: &[u8]) -> Result<&[u8], CsrError> {
    let decode = |error: der::Error| CsrError::Decode(error.to_string());
    let mut reader = SliceReader::new(der).map_err(decode)?;
    reader
        .sequence(|inner| inner.tlv_bytes().and_then(|info| inner.read_slice(inner.remaining_len()).map(|_| info)))
        .map_err(decode)
}

fn check_signature(der: &[u8], request: &CertReq, key: &SubjectKey) -> Result<(), CsrError> {
    let info = signed_bytes(der)?;
    let algorithm = &request.algorithm;
    let signature = request.signature.as_bytes().ok_or(CsrError::BadSignature)?;
    let wrong_algorithm = || CsrError::SignatureAlgorithm(algorithm.oid.to_string());
    match key {
        SubjectKey::Ed25519(bytes) => {
            // RFC 8410 §6: id-Ed25519 with the parameters absent.
            if algorithm.oid != rfc8410::ID_ED_25519 || algorithm.parameters.is_some() {
                return Err(wrong_algorithm());
            }
            let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| CsrError::BadSignature)?;
            let signature = ed25519_dalek::Signature::from_slice(signature).map_err(|_| CsrError::BadSignature)?;
            key.verify_strict(info, &signature).map_err(|_| CsrError::BadSignature)
        }
        SubjectKey::P256(point) => {
            // RFC 5758 §3.2: ecdsa-with-SHA256 with the parameters absent.
            if algorithm.oid != rfc5912::ECDSA_WITH_SHA_256 || algorithm.parameters.is_some() {
                return Err(wrong_algorithm());
            }
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| CsrError::BadSignature)?;
            let signature = p256::ecdsa::Signature::from_der(signature).map_err(|_| CsrError::BadSignature)?;
            key.verify(info, &signature).map_err(|_| CsrError::BadSignature)
        }
        SubjectKey::X25519(_) => Err(CsrError::X25519Request),
    }
}

/// The DNS names and e-mail addresses of the requested subjectAltName, if any.
fn requested_alt_names(request: &CertReq) -> Result<AltNames, CsrError> {
    let mut alt_names = None;
    for attribute in request.info.attributes.iter() {
        if attribute.oid != rfc5912::ID_EXTENSION_REQ {
            return Err(CsrError::UnsupportedAttribute(attribute.oid.to_string()));
        }
        let [value] = attribute.values.as_slice() else {
            return Err(CsrError::Decode("an extensionRequest without exactly one value".into()));
        };
        let extensions: ExtensionReq = value.decode_as().map_err(|error| CsrError::Decode(error.to_string()))?;
        if extensions.0.len() > CSR_EXTENSIONS_MAX {
            return Err(CsrError::Input(InputError::TooMany {
                field: "requested extensions",
                count: extensions.0.len(),
                max: CSR_EXTENSIONS_MAX,
            }));
        }
        for extension in extensions.0.iter().filter(|extension| extension.extn_id == rfc5280::ID_CE_SUBJECT_ALT_NAME) {
            let names = SubjectAltName::from_der(extension.extn_value.as_bytes())
                .map_err(|error| CsrError::Decode(error.to_string()))?;
            if alt_names.replace(alt_names_of(&names)?).is_some() {
                return Err(CsrError::Decode("two subjectAltName extensions".into()));
            }
        }
    }
    Ok(alt_names.unwrap_or_default())
}

fn alt_names_of(names: &SubjectAltName) -> Result<AltNames, CsrError> {
    let (mut dns, mut email) = (Vec::new(), Vec::new());
    if names.0.len() > crate::ALT_NAMES_MAX {
        return Err(CsrError::Input(InputError::TooMany {
            field: "subject alternative names",
            count: names.0.len(),
            max: crate::ALT_NAMES_MAX,
        }));
    }
    for name in names.0.iter() {
        match name {
            GeneralName::DnsName(name) => dns.push(DnsName::new(name.as_str()).map_err(CsrError::Input)?),
            GeneralName::Rfc822Name(address) => {
                email.push(EmailAddress::new(address.as_str()).map_err(CsrError::Input)?)
            }
            _ => return Err(CsrError::UnsupportedAltName),
        }
    }
    AltNames::from_checked(dns, email).map_err(CsrError::Input)
}
