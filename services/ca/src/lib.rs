//! The certification authority's formats: X.509 v3 certificates and CRLs (RFC 5280) signed with
//! the cluster's threshold RSA key, and PKCS#10 certification requests (RFC 2986).
//!
//! Deterministic and sans-IO: no clock, no randomness, no disk. Every input — serial number,
//! times, names, key — is a parameter, because the `t + 1` replicas that sign a certificate each
//! encode its TBSCertificate and sign their share of *those bytes*: the same inputs must give the
//! same bytes on every replica, or the shares do not combine.
//!
//! Rules:
//! - [`Root`] is read from the cluster's root certificate (`ca-root.pem`): its subject is the
//!   issuer of everything the CA signs, its key identifier goes in every
//!   authorityKeyIdentifier, and [`Root::check_key`] ties it to the threshold RSA public key.
//! - [`certificate_tbs`] encodes a leaf's TBSCertificate from [`CertificateParams`]; the
//!   combined threshold signature over [`UnsignedCertificate::tbs_der`] then makes the
//!   certificate ([`UnsignedCertificate::with_signature`]). Signature algorithm
//!   `sha256WithRSAEncryption`; extensions basicConstraints `CA:false` (critical), keyUsage
//!   (critical; `digitalSignature` for Ed25519 and P-256, `keyAgreement` for X25519),
//!   extendedKeyUsage, subjectAltName, subjectKeyIdentifier, authorityKeyIdentifier.
//! - [`crl_tbs`] and [`UnsignedCrl::with_signature`] do the same for a version 2 CRL with the
//!   cRLNumber and authorityKeyIdentifier extensions and optional reason codes.
//! - [`parse_csr`] reads a PEM or DER PKCS#10 request, checks its self-signature (Ed25519 or
//!   ECDSA P-256) and returns the subject, key and requested DNS / e-mail alternative names.
//! - Every input is bounded (lengths of each name, counts of attributes, alternative names,
//!   revoked serials, bytes of a request) and a bad one is an error ([`InputError`],
//!   [`CsrError`], [`RootError`]), never a panic. DER is encoded and decoded by the RustCrypto
//!   `der`/`x509-cert` crates only.
//!
//! - [`service`]: the CA as a service of the host — requests, key confirmation, one agreement
//!   per request, binding modes, revocation, CRLs and signed status (`docs/ca.md`, "The
//!   service").
//!
//! Deviations from the paper (MAFTIA D5 §3.4): the paper's certificates were in a proprietary
//! format, with X.509 named as a future extension; these are X.509 v3, so that `openssl verify`
//! and TLS stacks accept them. The CRL is not in the paper (it removes revoked certificates from
//! its store only); relying parties who do not ask the CA need one. See `docs/ca.md`.

#![forbid(unsafe_code)]

mod certificate;
mod crl;
mod csr;
mod error;
mod key;
mod name;
mod root;
pub mod service;
mod value;

pub use certificate::{
    certificate_from_tbs, certificate_tbs, CertificateParams, IssuedCertificate, UnsignedCertificate,
};
pub use crl::{crl_from_tbs, crl_tbs, CrlParams, IssuedCrl, RevocationReason, Revoked, UnsignedCrl, REVOKED_MAX};
pub use csr::{parse_csr, CertificationRequest, CSR_BYTES_MAX, CSR_EXTENSIONS_MAX};
pub use error::{CsrError, InputError, RootError};
pub use key::{KeyKind, SubjectKey};
pub use name::{
    AltNames, AttributeKind, DnsName, EmailAddress, SubjectName, ALT_NAMES_MAX, ATTRIBUTES_MAX, COMMON_NAME_CHARS_MAX,
    DNS_LABEL_CHARS_MAX, DNS_NAME_CHARS_MAX, EMAIL_CHARS_MAX, EMAIL_LOCAL_CHARS_MAX,
};
pub use root::{Root, ROOT_BYTES_MAX};
pub use value::{Serial, UnixTime, SERIAL_OCTETS_MAX};
