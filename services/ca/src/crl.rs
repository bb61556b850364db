//! Certificate revocation lists (RFC 5280 §5): the TBSCertList every replica encodes from the
//! same inputs, then the CRL once a threshold signature over those bytes exists.

use der::asn1::{BitString, Uint};
use der::Encode;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::{CrlNumber, CrlReason};
use x509_cert::Version;

use crate::certificate::{authority_key_identifier, extension, pem, signature_algorithm};
use crate::value::check_order;
use crate::{InputError, Root, Serial, UnixTime};

/// At most this many revoked serials in one CRL (about 40 bytes each in DER).
pub const REVOKED_MAX: usize = 100_000;

/// Why a certificate was revoked (RFC 5280 §5.3.1's `CRLReason`; `certificateHold` and
/// `removeFromCRL` are left out: this CA's revocations are final).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// `unspecified` (0); RFC 5280 prefers the extension left out, which `None` does.
    Unspecified,
    /// `keyCompromise` (1).
    KeyCompromise,
    /// `affiliationChanged` (3).
    AffiliationChanged,
    /// `superseded` (4): an update replaced the certificate.
    Superseded,
    /// `cessationOfOperation` (5).
    CessationOfOperation,
    /// `privilegeWithdrawn` (9).
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every reason, in the order of their codes.
    pub const ALL: [RevocationReason; 6] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
    ];

    /// Its `CRLReason` number (RFC 5280 §5.3.1): what requests and records carry.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
            RevocationReason::PrivilegeWithdrawn => 9,
        }
    }

    /// The reason numbered `code`, if it is one this CA uses.
    pub fn from_code(code: u8) -> Option<RevocationReason> {
        RevocationReason::ALL.into_iter().find(|reason| reason.code() == code)
    }

    fn to_x509(self) -> CrlReason {
        match self {
            RevocationReason::Unspecified => CrlReason::Unspecified,
            RevocationReason::KeyCompromise => CrlReason::KeyCompromise,
            RevocationReason::AffiliationChanged => CrlReason::AffiliationChanged,
            RevocationReason::Superseded => CrlReason::Superseded,
            RevocationReason::CessationOfOperation => CrlReason::CessationOfOperation,
            RevocationReason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
        }
    }
}

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial.
    pub serial: Serial,
    /// The agreed time of the revocation; not after the CRL's `thisUpdate`.
    pub revoked_at: UnixTime,
    /// The reasonCode entry extension, or none.
    pub reason: Option<RevocationReason>,
}

/// Everything a CRL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlParams {
    /// `thisUpdate`: the agreed time the CRL is made at.
    pub this_update: UnixTime,
    /// `nextUpdate`: when the next CRL will be out at the latest; after `this_update`.
    pub next_update: UnixTime,
    /// The cRLNumber, increasing from one CRL to the next.
    pub number: u64,
    /// The revoked certificates, at most [`REVOKED_MAX`], each serial once. They are encoded in
    /// increasing order of serial, whatever the order given.
    pub revoked: Vec<Revoked>,
}

/// A CRL before its signature: the DER of its TBSCertList is what the replicas sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedCrl {
    tbs: TbsCertList,
    tbs_der: Vec<u8>,
    signature_len: usize,
}

/// A signed CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCrl {
    der: Vec<u8>,
}

/// Encode the TBSCertList of `params` under `root` (see `docs/ca.md` for the profile).
pub fn crl_tbs(root: &Root, params: &CrlParams) -> Result<UnsignedCrl, InputError> {
    check_order("the CRL's update times", params.this_update, params.next_update)?;
    if params.revoked.len() > REVOKED_MAX {
        return Err(InputError::TooMany { field: "revoked serials", count: params.revoked.len(), max: REVOKED_MAX });
    }
    let mut revoked: Vec<&Revoked> = params.revoked.iter().collect();
    revoked.sort_by(|a, b| a.serial.cmp(&b.serial));
    if let Some(pair) = revoked.windows(2).find(|pair| pair[0].serial == pair[1].serial) {
        return Err(InputError::Duplicate { field: "the CRL", value: hex(pair[0].serial.as_be_bytes()) });
    }
    let mut entries = Vec::with_capacity(revoked.len());
    for entry in revoked {
        if entry.revoked_at > params.this_update {
            return Err(InputError::RevokedInFuture {
                revoked: entry.revoked_at.seconds(),
                this_update: params.this_update.seconds(),
            });
        }
        let reason = entry.reason.map(|reason| extension(&reason.to_x509(), false)).transpose()?;
        entries.push(RevokedCert {
            serial_number: entry.serial.to_x509()?,
            revocation_date: entry.revoked_at.to_x509()?,
            crl_entry_extensions: reason.map(|extension| vec![extension]),
        });
    }
    let number = CrlNumber(Uint::new(&params.number.to_be_bytes())?);
    let tbs = TbsCertList {
        version: Version::V2,
        signature: signature_algorithm(),
        issuer: root.subject().clone(),
        this_update: params.this_update.to_x509()?,
        next_update: Some(params.next_update.to_x509()?),
        // An empty list is left out (RFC 5280 §5.1.2.6).
        revoked_certificates: (!entries.is_empty()).then_some(entries),
        crl_extensions: Some(vec![authority_key_identifier(root)?, extension(&number, false)?]),
    };
    let tbs_der = tbs.to_der()?;
    Ok(UnsignedCrl { tbs, tbs_der, signature_len: root.signature_len() })
}

impl UnsignedCrl {
    /// The DER of the TBSCertList: the message each replica signs its share of.
    pub fn tbs_der(&self) -> &[u8] {
        &self.tbs_der
    }

    /// The CRL with `signature` (the combined threshold RSA signature over [`Self::tbs_der`]).
    pub fn with_signature(self, signature: &[u8]) -> Result<IssuedCrl, InputError> {
        if signature.len() != self.signature_len {
            return Err(InputError::SignatureLength { len: signature.len(), expected: self.signature_len });
        }
        let list = CertificateList {
            tbs_cert_list: self.tbs,
            signature_algorithm: signature_algorithm(),
            signature: BitString::from_bytes(signature)?,
        };
        Ok(IssuedCrl { der: list.to_der()? })
    }
}

/// The CRL made of a TBSCertList's DER as the service made it and the combined threshold
/// signature over it (as long as `root`'s modulus). The TBS must decode as strict DER; the
/// signature is not checked here.
pub fn crl_from_tbs(root: &Root, tbs_der: &[u8], signature: &[u8]) -> Result<IssuedCrl, InputError> {
    use der::Decode;
    let tbs = TbsCertList::from_der(tbs_der)?;
    UnsignedCrl { tbs, tbs_der: tbs_der.to_vec(), signature_len: root.signature_len() }.with_signature(signature)
}

impl IssuedCrl {
    /// The CRL's DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The CRL in PEM (`X509 CRL`, LF line endings).
    pub fn pem(&self) -> String {
        pem("X509 CRL", &self.der)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
