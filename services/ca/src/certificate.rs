//! Leaf certificates: the TBSCertificate every replica encodes from the same inputs, then the
//! certificate once a threshold signature over those bytes exists.

use const_oid::db::rfc5280;
use const_oid::{AssociatedOid, ObjectIdentifier};
use der::asn1::{BitString, OctetString};
use der::Encode;
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::time::Validity;
use x509_cert::{Certificate, TbsCertificate, Version};

use crate::value::check_order;
use crate::{AltNames, InputError, Root, Serial, SubjectKey, SubjectName, UnixTime};

/// Everything a certificate says, all of it agreed on by the replicas before they encode it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateParams {
    /// Unique per certificate under the root (the service derives it; no randomness here).
    pub serial: Serial,
    /// `notBefore`: the agreed time of the request.
    pub not_before: UnixTime,
    /// `notAfter`: must be later than `not_before`.
    pub not_after: UnixTime,
    /// The subject.
    pub subject: SubjectName,
    /// The subject's public key.
    pub key: SubjectKey,
    /// The subjectAltName entries (may be empty: then the extension is left out).
    pub alt_names: AltNames,
}

/// A certificate before its signature: the DER of its TBSCertificate is what the replicas sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedCertificate {
    tbs: TbsCertificate,
    tbs_der: Vec<u8>,
    signature_len: usize,
}

/// A signed certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    der: Vec<u8>,
}

/// `sha256WithRSAEncryption` with NULL parameters (RFC 4055 §5: the parameters MUST be NULL).
pub(crate) fn signature_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: const_oid::db::rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
        parameters: Some(der::asn1::Null.into()),
    }
}

/// An extension whose value is `value`'s DER, critical as the profile says.
pub(crate) fn extension<T: AssociatedOid + Encode>(value: &T, critical: bool) -> Result<Extension, InputError> {
    Ok(Extension { extn_id: T::OID, critical, extn_value: OctetString::new(value.to_der()?)? })
}

/// The authorityKeyIdentifier of everything the root signs: its key identifier alone.
pub(crate) fn authority_key_identifier(root: &Root) -> Result<Extension, InputError> {
    let identifier = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(root.key_identifier())?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    extension(&identifier, false)
}

/// Encode the TBSCertificate of `params` under `root` (see `docs/ca.md` for the profile).
/// The same inputs give the same bytes on every replica.
pub fn certificate_tbs(root: &Root, params: &CertificateParams) -> Result<UnsignedCertificate, InputError> {
    check_order("the validity", params.not_before, params.not_after)?;
    let subject = params.subject.to_name()?;
    let subject_public_key_info = params.key.to_spki()?;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: params.serial.to_x509()?,
        signature: signature_algorithm(),
        issuer: root.subject().clone(),
        validity: Validity { not_before: params.not_before.to_x509()?, not_after: params.not_after.to_x509()? },
        subject,
        subject_public_key_info,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions(root, params)?),
    };
    let tbs_der = tbs.to_der()?;
    Ok(UnsignedCertificate { tbs, tbs_der, signature_len: root.signature_len() })
}

/// The extensions, in this order: basicConstraints, keyUsage, extendedKeyUsage (if any
/// purpose), subjectAltName (if any name), subjectKeyIdentifier, authorityKeyIdentifier.
fn extensions(root: &Root, params: &CertificateParams) -> Result<Vec<Extension>, InputError> {
    let mut extensions = Vec::with_capacity(6);
    let constraints = BasicConstraints { ca: false, path_len_constraint: None };
    extensions.push(extension(&constraints, true)?);
    let usage = if params.key.kind().signs() { KeyUsages::DigitalSignature } else { KeyUsages::KeyAgreement };
    extensions.push(extension(&KeyUsage(usage.into()), true)?);
    let purposes = extended_key_usage(params);
    if !purposes.is_empty() {
        extensions.push(extension(&ExtendedKeyUsage(purposes), false)?);
    }
    if !params.alt_names.is_empty() {
        // Not critical: the subject is never empty (RFC 5280 §4.2.1.6).
        extensions.push(extension(&SubjectAltName(params.alt_names.to_general_names()?), false)?);
    }
    let key_identifier = Sha256::digest(params.key.public_key_bytes());
    extensions.push(extension(&SubjectKeyIdentifier(OctetString::new(&key_identifier[..20])?), false)?);
    extensions.push(authority_key_identifier(root)?);
    Ok(extensions)
}

/// serverAuth for a signature key with a DNS name, clientAuth for every signature key,
/// emailProtection for any key with an e-mail address.
fn extended_key_usage(params: &CertificateParams) -> Vec<ObjectIdentifier> {
    let signs = params.key.kind().signs();
    let mut purposes = Vec::with_capacity(3);
    if signs && !params.alt_names.dns().is_empty() {
        purposes.push(rfc5280::ID_KP_SERVER_AUTH);
    }
    if signs {
        purposes.push(rfc5280::ID_KP_CLIENT_AUTH);
    }
    if !params.alt_names.email().is_empty() {
        purposes.push(rfc5280::ID_KP_EMAIL_PROTECTION);
    }
    purposes
}

impl UnsignedCertificate {
    /// The DER of the TBSCertificate: the message each replica signs its share of.
    pub fn tbs_der(&self) -> &[u8] {
        &self.tbs_der
    }

    /// The certificate with `signature` (the combined threshold RSA signature over
    /// [`Self::tbs_der`], as long as the root's modulus). The signature is not checked here:
    /// combining checks it.
    pub fn with_signature(self, signature: &[u8]) -> Result<IssuedCertificate, InputError> {
        if signature.len() != self.signature_len {
            return Err(InputError::SignatureLength { len: signature.len(), expected: self.signature_len });
        }
        let certificate = Certificate {
            tbs_certificate: self.tbs,
            signature_algorithm: signature_algorithm(),
            signature: BitString::from_bytes(signature)?,
        };
        Ok(IssuedCertificate { der: certificate.to_der()? })
    }
}

/// The certificate made of a TBSCertificate's DER as the service recorded it (an issued
/// record's TBS) and the combined threshold signature over it (as long as `root`'s modulus).
/// The TBS must decode as strict DER; the signature is not checked here.
pub fn certificate_from_tbs(root: &Root, tbs_der: &[u8], signature: &[u8]) -> Result<IssuedCertificate, InputError> {
    use der::Decode;
    let tbs = TbsCertificate::from_der(tbs_der)?;
    UnsignedCertificate { tbs, tbs_der: tbs_der.to_vec(), signature_len: root.signature_len() }
        .with_signature(signature)
}

impl IssuedCertificate {
    /// The certificate's DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate in PEM (`CERTIFICATE`, LF line endings).
    pub fn pem(&self) -> String {
        pem(CERTIFICATE_LABEL, &self.der)
    }
}

const CERTIFICATE_LABEL: &str = "CERTIFICATE";

/// PEM with 64-character lines and LF endings.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    // Encoding bytes this crate encoded cannot fail: the label is a constant, and the length is
    // far below the encoder's limit.
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).expect("PEM of a bounded DER encodes")
}
