//! The cluster's root certificate (`ca-root.pem`, written by the dealer): the issuer of every
//! certificate and CRL.

use const_oid::db::rfc5912;
use der::{Decode, DecodePem};
use fides_threshold_rsa::PublicKey;
use sha2::{Digest, Sha256};
use x509_cert::ext::pkix::{BasicConstraints, SubjectKeyIdentifier};
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::RootError;

/// A root certificate larger than this is refused unread.
pub const ROOT_BYTES_MAX: usize = 64 * 1024;

/// What the CA takes from its root certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    /// The root's subject, as decoded: the issuer of what the CA signs.
    subject: Name,
    /// The root's key identifier: its subjectKeyIdentifier, or if it has none, the leftmost 160
    /// bits of the SHA-256 of its subjectPublicKey (RFC 7093 §2, method 1).
    key_identifier: Vec<u8>,
    /// Its RSA modulus, big-endian without leading zeros.
    modulus: Vec<u8>,
    /// Its RSA public exponent, big-endian without leading zeros.
    exponent: Vec<u8>,
}

impl Root {
    /// Read the root from PEM (`CERTIFICATE`).
    pub fn from_pem(pem: &[u8]) -> Result<Root, RootError> {
        check_size(pem.len())?;
        let certificate = Certificate::from_pem(pem).map_err(|error| RootError::Decode(error.to_string()))?;
        Root::from_certificate(&certificate)
    }

    /// Read the root from DER.
    pub fn from_der(der: &[u8]) -> Result<Root, RootError> {
        check_size(der.len())?;
        let certificate = Certificate::from_der(der).map_err(|error| RootError::Decode(error.to_string()))?;
        Root::from_certificate(&certificate)
    }

    /// Take what the CA needs, refusing a root that is not a version 3 CA certificate with an
    /// RSA key.
    fn from_certificate(certificate: &Certificate) -> Result<Root, RootError> {
        let tbs = &certificate.tbs_certificate;
        if tbs.version != x509_cert::Version::V3 {
            return Err(RootError::Unusable("not a version 3 certificate"));
        }
        match tbs.get::<BasicConstraints>() {
            Ok(Some((_, constraints))) if constraints.ca => {}
            _ => return Err(RootError::Unusable("no basicConstraints with CA:true")),
        }
        let spki = &tbs.subject_public_key_info;
        if spki.algorithm.oid != rfc5912::RSA_ENCRYPTION {
            return Err(RootError::Unusable("its key is not an RSA key"));
        }
        let key_bytes = spki.subject_public_key.as_bytes().ok_or(RootError::Unusable("a malformed key"))?;
        let rsa = pkcs1::RsaPublicKey::from_der(key_bytes).map_err(|_| RootError::Unusable("a malformed RSA key"))?;
        let key_identifier = match tbs.get::<SubjectKeyIdentifier>() {
            Ok(Some((_, identifier))) => identifier.0.as_bytes().to_vec(),
            Ok(None) => Sha256::digest(key_bytes)[..20].to_vec(),
            Err(_) => return Err(RootError::Unusable("a malformed subjectKeyIdentifier")),
        };
        Ok(Root {
            subject: tbs.subject.clone(),
            key_identifier,
            modulus: rsa.modulus.as_bytes().to_vec(),
            exponent: rsa.public_exponent.as_bytes().to_vec(),
        })
    }

    /// Refuse a root whose key is not `public` (the cluster's threshold RSA key): a certificate
    /// signed with the threshold key would not verify under it.
    pub fn check_key(&self, public: &PublicKey) -> Result<(), RootError> {
        let exponent = public.exponent().to_be_bytes();
        let exponent = &exponent[exponent.iter().position(|byte| *byte != 0).unwrap_or(exponent.len())..];
        let modulus = public.modulus_bytes();
        let modulus = &modulus[modulus.iter().position(|byte| *byte != 0).unwrap_or(modulus.len())..];
        if modulus != self.modulus.as_slice() || exponent != self.exponent.as_slice() {
            return Err(RootError::KeyMismatch);
        }
        Ok(())
    }

    /// The subject, which is the issuer of everything the CA signs.
    pub fn subject(&self) -> &Name {
        &self.subject
    }

    /// The key identifier put in every authorityKeyIdentifier.
    pub fn key_identifier(&self) -> &[u8] {
        &self.key_identifier
    }

    /// The modulus's length in bytes: the length of every signature.
    pub fn signature_len(&self) -> usize {
        self.modulus.len()
    }
}

fn check_size(len: usize) -> Result<(), RootError> {
    if len > ROOT_BYTES_MAX {
        return Err(RootError::TooLarge { len, max: ROOT_BYTES_MAX });
    }
    Ok(())
}
