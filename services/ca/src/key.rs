//! The subject public keys this CA certifies and their `SubjectPublicKeyInfo` (RFC 8410 for
//! Ed25519 and X25519, RFC 5480 for ECDSA P-256).

use const_oid::db::{rfc5912, rfc8410};
use der::asn1::{Any, BitString};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use crate::InputError;

/// A subject public key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SubjectKey {
    /// An Ed25519 signature key (RFC 8032), 32 bytes; must decode to a curve point.
    Ed25519([u8; 32]),
    /// An ECDSA P-256 signature key, kept as its uncompressed SEC1 point (65 bytes, `04 ‖ x ‖ y`);
    /// must be on the curve and not the identity.
    P256(Vec<u8>),
    /// An X25519 key-agreement (encryption) key (RFC 7748), 32 bytes.
    X25519([u8; 32]),
}

/// What a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Ed25519.
    Ed25519,
    /// ECDSA P-256.
    P256,
    /// X25519.
    X25519,
}

impl KeyKind {
    /// A key that signs (key confirmation by a signature; key usage `digitalSignature`), as
    /// opposed to one that agrees keys (confirmation by decryption; `keyAgreement`).
    pub fn signs(self) -> bool {
        !matches!(self, KeyKind::X25519)
    }

    /// Its usual name.
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Ed25519 => "Ed25519",
            KeyKind::P256 => "ECDSA P-256",
            KeyKind::X25519 => "X25519",
        }
    }
}

impl SubjectKey {
    /// An Ed25519 key from its 32 bytes.
    pub fn ed25519(bytes: &[u8]) -> Result<SubjectKey, InputError> {
        let bad = |reason| InputError::BadKey { kind: "Ed25519", reason };
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("not 32 bytes"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a curve point"))?;
        Ok(SubjectKey::Ed25519(bytes))
    }

    /// A P-256 key from its SEC1 encoding, compressed (33 bytes) or not (65 bytes).
    pub fn p256(sec1: &[u8]) -> Result<SubjectKey, InputError> {
        let key = p256::PublicKey::from_sec1_bytes(sec1)
            .map_err(|_| InputError::BadKey { kind: "ECDSA P-256", reason: "not a SEC1 point on the curve" })?;
        Ok(SubjectKey::P256(key.to_encoded_point(false).as_bytes().to_vec()))
    }

    /// An X25519 key from its 32 bytes (the all-zero key, which agrees only on zero, is refused).
    pub fn x25519(bytes: &[u8]) -> Result<SubjectKey, InputError> {
        let bad = |reason| InputError::BadKey { kind: "X25519", reason };
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("not 32 bytes"))?;
        if bytes == [0; 32] {
            return Err(bad("the all-zero key"));
        }
        Ok(SubjectKey::X25519(bytes))
    }

    /// The key's type.
    pub fn kind(&self) -> KeyKind {
        match self {
            SubjectKey::Ed25519(_) => KeyKind::Ed25519,
            SubjectKey::P256(_) => KeyKind::P256,
            SubjectKey::X25519(_) => KeyKind::X25519,
        }
    }

    /// The bytes of the `subjectPublicKey` BIT STRING.
    pub fn public_key_bytes(&self) -> &[u8] {
        match self {
            SubjectKey::Ed25519(bytes) | SubjectKey::X25519(bytes) => bytes,
            SubjectKey::P256(point) => point,
        }
    }

    /// The `SubjectPublicKeyInfo`: `id-Ed25519` / `id-X25519` without parameters (RFC 8410 §3),
    /// or `id-ecPublicKey` with the named curve `secp256r1` (RFC 5480 §2.1.1).
    pub fn to_spki(&self) -> Result<SubjectPublicKeyInfoOwned, InputError> {
        let algorithm = match self {
            SubjectKey::Ed25519(_) => AlgorithmIdentifierOwned { oid: rfc8410::ID_ED_25519, parameters: None },
            SubjectKey::X25519(_) => AlgorithmIdentifierOwned { oid: rfc8410::ID_X_25519, parameters: None },
            SubjectKey::P256(_) => AlgorithmIdentifierOwned {
                oid: rfc5912::ID_EC_PUBLIC_KEY,
                parameters: Some(Any::from(&rfc5912::SECP_256_R_1)),
            },
        };
        Ok(SubjectPublicKeyInfoOwned { algorithm, subject_public_key: BitString::from_bytes(self.public_key_bytes())? })
    }

    /// The key in a `SubjectPublicKeyInfo`, if it is one this CA certifies.
    pub(crate) fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<SubjectKey, SpkiRefusal> {
        let bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or(SpkiRefusal::Bad(InputError::BadKey { kind: "subject", reason: "a BIT STRING with unused bits" }))?;
        let oid = spki.algorithm.oid;
        let parameters = spki.algorithm.parameters.as_ref();
        if oid == rfc8410::ID_ED_25519 && parameters.is_none() {
            SubjectKey::ed25519(bytes).map_err(SpkiRefusal::Bad)
        } else if oid == rfc8410::ID_X_25519 && parameters.is_none() {
            SubjectKey::x25519(bytes).map_err(SpkiRefusal::Bad)
        } else if oid == rfc5912::ID_EC_PUBLIC_KEY
            && parameters.and_then(|any| any.decode_as::<const_oid::ObjectIdentifier>().ok())
                == Some(rfc5912::SECP_256_R_1)
        {
            SubjectKey::p256(bytes).map_err(SpkiRefusal::Bad)
        } else {
            Err(SpkiRefusal::Unsupported(oid.to_string()))
        }
    }
}

/// Why a `SubjectPublicKeyInfo` was not taken.
pub(crate) enum SpkiRefusal {
    /// An algorithm (or curve) this CA does not certify.
    Unsupported(String),
    /// A supported algorithm with a bad key.
    Bad(InputError),
}
