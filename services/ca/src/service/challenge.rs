//! Key confirmation (MAFTIA D5 §3.2, §3.4.1): each replica's own challenge to the holder of the
//! key a request names, and the check of the answer.
//!
//! Replica `i` derives, from its Ed25519 identity secret, `secret_i = SHA-256(tagged(
//! "fides/v1/ca/challenge-secret", [identity secret]))`, and for a request with digest `d`
//! ([`super::request_digest`]) `nonce_i = SHA-256(tagged("fides/v1/ca/challenge-nonce",
//! [secret_i, d]))`. Nothing is stored: the challenge is recomputed when the answer comes.
//!
//! - **Signature keys** (Ed25519, P-256): the challenge is `nonce_i`; the answer is the key's
//!   signature over [`confirm_message`]`(cluster, i, d, nonce_i)` (Ed25519 verified strictly;
//!   P-256 ECDSA over SHA-256 as 64 bytes `r ‖ s`).
//! - **X25519**: `eph_i = SHA-256(tagged("fides/v1/ca/challenge-ephemeral", [secret_i, d]))` is a
//!   static secret; `shared = X25519(eph_i, key)` (an all-zero result refuses the key: it is of
//!   low order); `pad = SHA-256(tagged("fides/v1/ca/challenge-pad", [shared, eph_pub, key,
//!   i LE, d]))`; the challenge is `eph_pub ‖ (nonce_i XOR pad)` (64 bytes) and the answer is
//!   `nonce_i` (32 bytes), compared in constant time. Only the key's holder can compute `shared`
//!   and so unmask the nonce.
//!
//! A nonce is unpredictable to anyone without the replica's identity secret and different for
//! every request (the digest binds cluster, client, request id and body), so an answer cannot be
//! replayed for another request or to another replica.

use ed25519_dalek::SigningKey;
use fides_crypto::{sha256_tagged, tagged};

use super::domain;
use crate::{InputError, SubjectKey};

/// One replica's challenges (its secret is derived from its identity key).
#[derive(Clone)]
pub struct Challenger {
    cluster: [u8; 32],
    index: u32,
    secret: [u8; 32],
}

impl std::fmt::Debug for Challenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenger").field("index", &self.index).finish_non_exhaustive()
    }
}

impl Challenger {
    /// The challenger of replica `index` of cluster `cluster`, whose identity key is `identity`.
    pub fn new(cluster: [u8; 32], index: u32, identity: &SigningKey) -> Challenger {
        let secret = sha256_tagged(domain::CHALLENGE_SECRET, &[identity.as_bytes()]);
        Challenger { cluster, index, secret }
    }

    /// The replica's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    fn nonce(&self, digest: &[u8; 32]) -> [u8; 32] {
        sha256_tagged(domain::CHALLENGE_NONCE, &[&self.secret, digest])
    }

    /// The ephemeral secret of an X25519 challenge, its public half and the shared secret with
    /// `key`; `None` if the shared secret is all zero (a low-order key).
    fn exchange(&self, key: &[u8; 32], digest: &[u8; 32]) -> Option<([u8; 32], [u8; 32])> {
        let ephemeral =
            x25519_dalek::StaticSecret::from(sha256_tagged(domain::CHALLENGE_EPHEMERAL, &[&self.secret, digest]));
        let ephemeral_public = x25519_dalek::PublicKey::from(&ephemeral).to_bytes();
        let shared = ephemeral.diffie_hellman(&x25519_dalek::PublicKey::from(*key));
        shared.was_contributory().then(|| (ephemeral_public, shared.to_bytes()))
    }

    /// The challenge for the holder of `key` in the request with digest `digest`: 32 bytes for a
    /// signature key, 64 for an X25519 key (refused if of low order).
    pub fn challenge(&self, key: &SubjectKey, digest: &[u8; 32]) -> Result<Vec<u8>, InputError> {
        let nonce = self.nonce(digest);
        match key {
            SubjectKey::Ed25519(_) | SubjectKey::P256(_) => Ok(nonce.to_vec()),
            SubjectKey::X25519(public) => {
                let (ephemeral_public, shared) = self
                    .exchange(public, digest)
                    .ok_or(InputError::BadKey { kind: "X25519", reason: "a key of low order" })?;
                let pad = pad(&shared, &ephemeral_public, public, self.index, digest);
                let mut challenge = ephemeral_public.to_vec();
                challenge.extend(nonce.iter().zip(pad).map(|(a, b)| a ^ b));
                Ok(challenge)
            }
        }
    }

    /// Whether `answer` answers this replica's challenge for `key` in the request with digest
    /// `digest`.
    pub fn check(&self, key: &SubjectKey, digest: &[u8; 32], answer: &[u8]) -> bool {
        let nonce = self.nonce(digest);
        let message = confirm_message(&self.cluster, self.index, digest, &nonce);
        match key {
            SubjectKey::Ed25519(public) => {
                let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public) else { return false };
                let Ok(signature) = ed25519_dalek::Signature::from_slice(answer) else { return false };
                key.verify_strict(&message, &signature).is_ok()
            }
            SubjectKey::P256(point) => {
                use p256::ecdsa::signature::Verifier;
                let Ok(key) = p256::ecdsa::VerifyingKey::from_sec1_bytes(point) else { return false };
                let Ok(signature) = p256::ecdsa::Signature::from_slice(answer) else { return false };
                key.verify(&message, &signature).is_ok()
            }
            SubjectKey::X25519(public) => {
                // A low-order key has no challenge, so no answer passes.
                self.exchange(public, digest).is_some() && answer.len() == nonce.len() && equal_ct(answer, &nonce)
            }
        }
    }
}

/// Whether an X25519 key is of low order (its shared secret with any key is all zero): such a
/// key can be confirmed by anyone, so it is refused.
pub fn low_order(key: &[u8; 32]) -> bool {
    // Clamped scalars are multiples of the cofactor 8, so one exchange tells.
    let probe = x25519_dalek::StaticSecret::from([1; 32]);
    !probe.diffie_hellman(&x25519_dalek::PublicKey::from(*key)).was_contributory()
}

fn pad(shared: &[u8; 32], ephemeral_public: &[u8; 32], key: &[u8; 32], index: u32, digest: &[u8; 32]) -> [u8; 32] {
    sha256_tagged(domain::CHALLENGE_PAD, &[shared, ephemeral_public, key, &index.to_le_bytes(), digest])
}

/// Equal slices of equal length, compared without an early exit.
fn equal_ct(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the holder of a signature key signs to answer replica `index`'s challenge `nonce`:
/// `tagged("fides/v1/ca/key-confirmation", [cluster, index LE u32, digest, nonce])`.
pub fn confirm_message(cluster: &[u8; 32], index: u32, digest: &[u8; 32], nonce: &[u8]) -> Vec<u8> {
    tagged(domain::KEY_CONFIRMATION, &[cluster, &index.to_le_bytes(), digest, nonce])
}

/// A key's secret half, as the client holds it.
#[derive(Clone)]
pub enum KeySecret {
    /// Ed25519.
    Ed25519(SigningKey),
    /// ECDSA P-256.
    P256(p256::ecdsa::SigningKey),
    /// X25519.
    X25519(x25519_dalek::StaticSecret),
}

impl std::fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySecret({})", self.public().kind().name())
    }
}

impl KeySecret {
    /// The public key.
    pub fn public(&self) -> SubjectKey {
        match self {
            KeySecret::Ed25519(key) => SubjectKey::Ed25519(key.verifying_key().to_bytes()),
            KeySecret::P256(key) => SubjectKey::P256(key.verifying_key().to_encoded_point(false).as_bytes().to_vec()),
            KeySecret::X25519(secret) => SubjectKey::X25519(x25519_dalek::PublicKey::from(secret).to_bytes()),
        }
    }
}

/// Why a challenge could not be answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not as long as a challenge for this key type.
    #[error("a challenge of {len} bytes; a {kind} key's is {expected}")]
    Length {
        /// The key type.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The expected length.
        expected: usize,
    },
}

/// The client's answer to replica `index`'s `challenge` for the request with digest `digest` in
/// cluster `cluster`: a signature of [`confirm_message`] for a signature key, the unmasked nonce
/// for an X25519 key. A wrong challenge gives a wrong answer, which that replica votes against.
pub fn answer(
    secret: &KeySecret,
    challenge: &[u8],
    cluster: &[u8; 32],
    index: u32,
    digest: &[u8; 32],
) -> Result<Vec<u8>, AnswerError> {
    let kind = secret.public().kind().name();
    match secret {
        KeySecret::Ed25519(key) => {
            use ed25519_dalek::Signer;
            let nonce = nonce_challenge(kind, challenge)?;
            Ok(key.sign(&confirm_message(cluster, index, digest, nonce)).to_bytes().to_vec())
        }
        KeySecret::P256(key) => {
            use p256::ecdsa::signature::Signer;
            let nonce = nonce_challenge(kind, challenge)?;
            let signature: p256::ecdsa::Signature = key.sign(&confirm_message(cluster, index, digest, nonce));
            Ok(signature.to_bytes().to_vec())
        }
        KeySecret::X25519(secret) => {
            let challenge: &[u8; 64] =
                challenge.try_into().map_err(|_| AnswerError::Length { kind, len: challenge.len(), expected: 64 })?;
            let mut ephemeral_public = [0; 32];
            ephemeral_public.copy_from_slice(&challenge[..32]);
            let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(ephemeral_public)).to_bytes();
            let public = x25519_dalek::PublicKey::from(secret).to_bytes();
            let pad = pad(&shared, &ephemeral_public, &public, index, digest);
            Ok(challenge[32..].iter().zip(pad).map(|(a, b)| a ^ b).collect())
        }
    }
}

fn nonce_challenge<'a>(kind: &'static str, challenge: &'a [u8]) -> Result<&'a [u8], AnswerError> {
    if challenge.len() != 32 {
        return Err(AnswerError::Length { kind, len: challenge.len(), expected: 32 });
    }
    Ok(challenge)
}
