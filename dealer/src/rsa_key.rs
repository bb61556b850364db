//! The cluster's threshold RSA key (Shoup's scheme, for the certification authority) and its
//! self-signed root certificate.
//!
//! The dealer holds every share while dealing, so it signs the root certificate itself, by the
//! same path the replicas will use: `t + 1` signature shares, combined and verified. Nothing of
//! the key but the shares in the replica files outlives the dealing.

use std::time::{SystemTime, UNIX_EPOCH};

use fides_crypto::{domain, sha256, tagged};
use fides_threshold_rsa::{
    combine, deal, sign_share, verify_signature, Dealt, PublicKey, SearchProgress, SecretShare, PUBLIC_EXPONENT,
};
use fides_types::Quorum;
use rand::{CryptoRng, Rng};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, RemoteKeyPair,
    SerialNumber, SignatureAlgorithm,
};

use crate::{ClusterId, DealerError};

/// Name of the root certificate's file, next to the cluster file.
pub const ROOT_CERTIFICATE_FILE_NAME: &str = "ca-root.pem";
/// The size of the modulus `dealer init` deals unless told otherwise.
pub const RSA_BITS_DEFAULT: u64 = 2048;
/// How long the root certificate is valid: 20 years of 365.25 days.
const ROOT_VALIDITY_DAYS: i64 = 7305;

/// What the dealer needs to deal the threshold RSA key.
pub struct RsaOptions<'a> {
    /// Bits of the modulus (even, 512 to 8192; below 2048 only for tests).
    pub modulus_bits: u64,
    /// The root certificate's `notBefore`.
    pub not_before: SystemTime,
    /// Called now and then while the safe primes are searched for (this takes seconds to
    /// minutes for 2048 bits).
    pub progress: &'a mut dyn FnMut(SearchProgress),
}

/// Deal the key: `n` shares, any `t + 1` of which sign.
pub(crate) fn deal_rsa<R: Rng + CryptoRng>(
    quorum: Quorum,
    options: &mut RsaOptions<'_>,
    rng: &mut R,
) -> Result<Dealt, DealerError> {
    deal(options.modulus_bits, quorum.n(), quorum.t(), rng, &mut *options.progress)
        .map_err(|error| DealerError::Rsa(error.to_string()))
}

/// The root certificate in PEM: X.509 v3, self-signed with the threshold key (RSA PKCS#1 v1.5,
/// SHA-256), `CA:true`, key usage `keyCertSign` and `cRLSign`, the subject naming the cluster,
/// the serial derived from the cluster id.
pub(crate) fn root_certificate(
    cluster_id: ClusterId,
    dealt: &Dealt,
    quorum: Quorum,
    not_before: SystemTime,
) -> Result<String, DealerError> {
    let failed = |reason: String| DealerError::Rsa(format!("root certificate: {reason}"));
    let signers = dealt.shares[..quorum.one_honest() as usize].to_vec();
    let key = ThresholdKey { public_pkcs1: pkcs1_public_key(&dealt.public)?, public: dealt.public.clone(), signers };
    let key_pair = KeyPair::from_remote(Box::new(key)).map_err(|error| failed(error.to_string()))?;
    let id = cluster_id.to_string();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "Fides");
    subject.push(DnType::OrganizationalUnitName, id.as_str());
    subject.push(DnType::CommonName, format!("Fides cluster {} CA", &id[..16]));
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let seconds = not_before.duration_since(UNIX_EPOCH).map_err(|_| failed("a time before 1970".into()))?.as_secs();
    let start = time::OffsetDateTime::from_unix_timestamp(i64::try_from(seconds).unwrap_or(i64::MAX))
        .map_err(|error| failed(error.to_string()))?;
    params.not_before = start;
    params.not_after = start + time::Duration::days(ROOT_VALIDITY_DAYS);
    let mut serial = sha256(&tagged(domain::DEALER_CHECK, &[&cluster_id.0, b"ca-root-serial"]));
    serial[0] &= 0x7f; // a positive INTEGER of 16 bytes
    params.serial_number = Some(SerialNumber::from_slice(&serial[..16]));
    let certificate = params.self_signed(&key_pair).map_err(|error| failed(error.to_string()))?;
    Ok(certificate.pem())
}

/// The PKCS#1 `RSAPublicKey` DER of `(N, e)`, the "raw" public key X.509 wraps.
fn pkcs1_public_key(public: &PublicKey) -> Result<Vec<u8>, DealerError> {
    use pkcs1::der::Encode;
    let (modulus, exponent) = (public.modulus_bytes(), PUBLIC_EXPONENT.to_be_bytes());
    let encoding = |error: pkcs1::der::Error| DealerError::Rsa(format!("public key encoding: {error}"));
    let key = pkcs1::RsaPublicKey {
        modulus: pkcs1::UintRef::new(&modulus).map_err(encoding)?,
        public_exponent: pkcs1::UintRef::new(&exponent).map_err(encoding)?,
    };
    key.to_der().map_err(encoding)
}

/// `t + 1` shares of the dealt key, signing as the replicas will.
struct ThresholdKey {
    public_pkcs1: Vec<u8>,
    public: PublicKey,
    signers: Vec<SecretShare>,
}

impl RemoteKeyPair for ThresholdKey {
    fn public_key(&self) -> &[u8] {
        &self.public_pkcs1
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        threshold_sign(&self.public, &self.signers, message).ok_or(rcgen::Error::RemoteKeyError)
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

/// Sign `message` with `signers` (at least `t + 1` shares) and return the signature if it
/// verifies.
pub(crate) fn threshold_sign(public: &PublicKey, signers: &[SecretShare], message: &[u8]) -> Option<Vec<u8>> {
    let shares = signers.iter().map(|share| sign_share(public, share, message)).collect::<Result<Vec<_>, _>>().ok()?;
    let combined = combine(public, message, &shares).ok()?;
    (combined.faults.is_empty() && verify_signature(public, message, &combined.signature)).then_some(combined.signature)
}

/// The message `dealer verify` signs with each set of `t + 1` RSA shares.
pub(crate) fn check_message(cluster_id: ClusterId) -> Vec<u8> {
    tagged(domain::DEALER_CHECK, &[&cluster_id.0, b"threshold-rsa"])
}
