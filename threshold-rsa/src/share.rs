//! Signature shares and their proofs of correctness.

use std::fmt;

use num_bigint::BigUint;
use sha2::{Digest, Sha256};

use crate::arith::{delta, is_residue, pow_signed, to_fixed_fitting, Montgomery};
use crate::emsa;
use crate::key::{PublicKey, SecretShare};
use crate::SignError;

/// Bytes of a proof's challenge `c`: `L1 = 128` bits, as in the paper.
pub const CHALLENGE_BYTES: usize = 16;
/// Domain of the proof's hash `H'`.
const PROOF_DOMAIN: &[u8] = b"fides/threshold-rsa/share-proof/v1";
/// Domain of the hash that derives a proof's nonce `r` from the share and the message.
const NONCE_DOMAIN: &[u8] = b"fides/threshold-rsa/share-nonce/v1";

/// Party `index`'s share `x_i = x^{2Δ s_i}` of the signature of a message, with the proof
/// `(c, z)` that `log_v v_i = log_{x̃} x_i^2` (`x̃ = x^{4Δ}`).
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureShare {
    pub(crate) index: u32,
    pub(crate) value: BigUint,
    pub(crate) challenge: [u8; CHALLENGE_BYTES],
    pub(crate) response: BigUint,
}

impl fmt::Debug for SignatureShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureShare").field("index", &self.index).finish_non_exhaustive()
    }
}

impl SignatureShare {
    /// The index of the party that made it, `0..n`.
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// Party `index`'s share value `x_i = x^{2Δ s_i}` alone, without its proof: a third of the cost
/// of a [`SignatureShare`], for combining optimistically with [`crate::combine_values`] and asking
/// for the proofs only when that fails.
#[derive(Clone, PartialEq, Eq)]
pub struct ShareValue {
    pub(crate) index: u32,
    pub(crate) value: BigUint,
}

impl fmt::Debug for ShareValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareValue").field("index", &self.index).finish_non_exhaustive()
    }
}

impl ShareValue {
    /// The index of the party that made it, `0..n`.
    pub fn index(&self) -> u32 {
        self.index
    }
}

impl SignatureShare {
    /// The share's value without its proof (the same [`sign_share_value`] gives).
    pub fn share_value(&self) -> ShareValue {
        ShareValue { index: self.index, value: self.value.clone() }
    }
}

/// The bits of a proof's nonce `r`: `|N| + 2·L1`, so that `z = s_i c + r` hides `s_i c`.
pub(crate) fn nonce_bits(public: &PublicKey) -> u64 {
    public.modulus.bits() + 2 * 8 * CHALLENGE_BYTES as u64
}

/// The bytes of a proof's response `z` on the wire: `z < 2^{|N| - 2 + 8·CHALLENGE_BYTES} +
/// 2^{nonce_bits}`, which fits `k + 2·CHALLENGE_BYTES + 1` bytes.
pub(crate) fn response_len(modulus_len: usize) -> usize {
    modulus_len + 2 * CHALLENGE_BYTES + 1
}

/// Party `share.index()`'s signature share of `message`, with its proof. Deterministic: the
/// proof's nonce is derived from the share and the message (a hash used as a PRF keyed by the
/// secret share), so signing twice gives the same bytes and no RNG is needed. The
/// exponentiations with a secret exponent run in constant time.
pub fn sign_share(public: &PublicKey, share: &SecretShare, message: &[u8]) -> Result<SignatureShare, SignError> {
    let verification_key = check_share(public, share)?;
    let n = &public.modulus;
    let montgomery = Montgomery::cached(n);
    let x = emsa::encode(message, public.modulus_len());
    let two_delta: BigUint = delta(public.parties()) << 1u32;
    let value = share_value(public, &montgomery, share, &x);
    let x_tilde = x.modpow(&(&two_delta << 1), n);
    let nonce = nonce(public, share, &x);
    let bits = nonce_bits(public);
    let v_commit = montgomery.pow_secret(&public.verification, &nonce, bits);
    let x_commit = montgomery.pow_secret(&x_tilde, &nonce, bits);
    let value_squared = (&value * &value) % n;
    let challenge = challenge(public, share.index, &x_tilde, verification_key, &value_squared, &v_commit, &x_commit);
    let response = &share.value * BigUint::from_bytes_be(&challenge) + nonce;
    Ok(SignatureShare { index: share.index, value, challenge, response })
}

/// Party `share.index()`'s share value of `message`, without the proof: one exponentiation
/// (constant time), the same value [`sign_share`] gives.
pub fn sign_share_value(public: &PublicKey, share: &SecretShare, message: &[u8]) -> Result<ShareValue, SignError> {
    check_share(public, share)?;
    let montgomery = Montgomery::cached(&public.modulus);
    let x = emsa::encode(message, public.modulus_len());
    Ok(ShareValue { index: share.index, value: share_value(public, &montgomery, share, &x) })
}

/// The share's verification key, if the share can be one of `public`.
fn check_share<'a>(public: &'a PublicKey, share: &SecretShare) -> Result<&'a BigUint, SignError> {
    let Some(verification_key) = public.verification_keys.get(share.index as usize) else {
        return Err(SignError::IndexOutOfRange { index: share.index, parties: public.parties() });
    };
    if share.value >= public.modulus {
        return Err(SignError::NotOfThisKey { index: share.index });
    }
    Ok(verification_key)
}

/// `x_i = x^{2Δ s_i} mod N`.
fn share_value(public: &PublicKey, montgomery: &Montgomery, share: &SecretShare, x: &BigUint) -> BigUint {
    let two_delta: BigUint = delta(public.parties()) << 1u32;
    let share_bits = public.modulus.bits() + two_delta.bits();
    montgomery.pow_secret(x, &(&two_delta * &share.value), share_bits)
}

/// Whether `share`'s proof holds for `message`: `c = H'(v, x̃, v_i, x_i^2, v^z v_i^{-c},
/// x̃^z x_i^{-2c})`. A share whose proof holds combines with any other `t` such shares.
pub fn verify_share(public: &PublicKey, message: &[u8], share: &SignatureShare) -> bool {
    let Some(verification_key) = public.verification_keys.get(share.index as usize) else {
        return false;
    };
    let n = &public.modulus;
    if !is_residue(&share.value, n) || share.response.bits() > 8 * response_len(public.modulus_len()) as u64 {
        return false;
    }
    let x = emsa::encode(message, public.modulus_len());
    let four_delta = delta(public.parties()) << 2;
    let x_tilde = x.modpow(&four_delta, n);
    let c = BigUint::from_bytes_be(&share.challenge);
    let minus_c = -num_bigint::BigInt::from(c.clone());
    let Some(v_inverse) = pow_signed(verification_key, &minus_c, n) else {
        return false;
    };
    let Some(x_inverse) = pow_signed(&share.value, &(minus_c << 1), n) else {
        return false;
    };
    let v_commit = public.verification.modpow(&share.response, n) * v_inverse % n;
    let x_commit = x_tilde.modpow(&share.response, n) * x_inverse % n;
    let value_squared = (&share.value * &share.value) % n;
    challenge(public, share.index, &x_tilde, verification_key, &value_squared, &v_commit, &x_commit) == share.challenge
}

/// `H'`: the first [`CHALLENGE_BYTES`] of SHA-256 over the domain, the index (4 bytes
/// big-endian), `k` (2 bytes big-endian), then `N, v, x̃, v_i, x_i^2, v', x'` as `k` bytes each.
fn challenge(
    public: &PublicKey,
    index: u32,
    x_tilde: &BigUint,
    verification_key: &BigUint,
    value_squared: &BigUint,
    v_commit: &BigUint,
    x_commit: &BigUint,
) -> [u8; CHALLENGE_BYTES] {
    let k = public.modulus_len();
    let mut hash = Sha256::new();
    hash.update(PROOF_DOMAIN);
    hash.update(index.to_be_bytes());
    hash.update(u16::try_from(k).expect("moduli are at most 8192 bits").to_be_bytes());
    for value in [&public.modulus, &public.verification, x_tilde, verification_key, value_squared, v_commit, x_commit] {
        hash.update(to_fixed_fitting(value, k));
    }
    let digest = hash.finalize();
    let mut out = [0u8; CHALLENGE_BYTES];
    out.copy_from_slice(&digest[..CHALLENGE_BYTES]);
    out
}

/// The nonce `r < 2^{nonce_bits}`: SHA-256 in counter mode over the domain, the counter (4 bytes
/// big-endian), `s_i` and `x` (`k` bytes each), truncated to the bits needed.
fn nonce(public: &PublicKey, share: &SecretShare, x: &BigUint) -> BigUint {
    let k = public.modulus_len();
    let bits = nonce_bits(public);
    let len = (bits as usize).div_ceil(8);
    let (secret, message) = (to_fixed_fitting(&share.value, k), to_fixed_fitting(x, k));
    let mut bytes = Vec::with_capacity(len + 32);
    let mut counter = 0u32;
    while bytes.len() < len {
        let mut hash = Sha256::new();
        hash.update(NONCE_DOMAIN);
        hash.update(counter.to_be_bytes());
        hash.update(&secret);
        hash.update(&message);
        bytes.extend_from_slice(&hash.finalize());
        counter += 1;
    }
    bytes.truncate(len);
    let spare = len * 8 - bits as usize;
    bytes[0] &= 0xff >> spare;
    BigUint::from_bytes_be(&bytes)
}
