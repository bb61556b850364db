//! Threshold-encrypted envelopes: a payload of any length under a one-time ChaCha20-Poly1305 key,
//! and that key threshold-encrypted to the cluster (a blsttc ciphertext, the *capsule*).
//!
//! blsttc can encrypt a whole payload, but it hashes and XORs it byte by byte and its validity
//! check hashes all of it into G2; only the 32-byte key goes through it here. The capsule keeps
//! blsttc's chosen-ciphertext check (`e(g1, W) = e(U, H(U, V))`), which honest replicas make
//! before they release a decryption share, and that check is done for many capsules at once
//! ([`verify_capsules`]): one random linear combination, one multi-Miller loop and one final
//! exponentiation instead of two pairings per capsule.
//!
//! The associated data of the AEAD names the context (e.g. epoch and proposer): an envelope
//! copied into another context does not open there.

use blsttc::blstrs::{Bls12, G1Affine, G1Projective, G2Affine, G2Prepared, G2Projective, Gt, Scalar};
use blsttc::group::{ff::Field, prime::PrimeCurveAffine, Curve, Group};
use blsttc::{Ciphertext, PublicKey, PK_SIZE, SIG_SIZE};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use pairing::{MillerLoopResult, MultiMillerLoop};
use rand::RngCore;

/// Length of the symmetric key inside a capsule.
pub const KEY_LEN: usize = 32;
/// Length of a capsule: blsttc's `U` (G1), `W` (G2) and the encrypted key.
pub const CAPSULE_LEN: usize = PK_SIZE + SIG_SIZE + KEY_LEN;
/// Length of the AEAD tag.
pub const TAG_LEN: usize = 16;

/// Why bytes are no envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Too short to hold a capsule and a tag.
    #[error("envelope of {0} bytes is too short")]
    TooShort(usize),
    /// The capsule's points are not on the curve or not in the subgroup.
    #[error("the capsule is malformed")]
    Capsule,
}

/// A threshold-encrypted payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    capsule: Ciphertext,
    u: G1Affine,
    w: G2Affine,
    sealed: Vec<u8>,
}

impl Envelope {
    /// Encrypt `plaintext` to the cluster key `public`, bound to `associated`.
    pub fn seal(public: &PublicKey, associated: &[u8], plaintext: &[u8], rng: &mut dyn RngCore) -> Envelope {
        let mut key = [0u8; KEY_LEN];
        rng.fill_bytes(&mut key);
        let mut rng = rng;
        let capsule = public.encrypt_with_rng(&mut rng, key);
        let sealed = ChaCha20Poly1305::new(Key::from_slice(&key))
            .encrypt(&Nonce::default(), Payload { msg: plaintext, aad: associated })
            .expect("ChaCha20-Poly1305 encrypts any payload below 256 GiB");
        let bytes = capsule.to_bytes();
        let (u, w) = points(&bytes).expect("a fresh capsule parses");
        Envelope { capsule, u, w, sealed }
    }

    /// Parse; the points of the capsule are checked, its validity is not ([`verify_capsules`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() < CAPSULE_LEN + TAG_LEN {
            return Err(EnvelopeError::TooShort(bytes.len()));
        }
        let (capsule, sealed) = bytes.split_at(CAPSULE_LEN);
        // blsttc checks that both points are on the curve and in their subgroups.
        let ciphertext = Ciphertext::from_bytes(capsule).map_err(|_| EnvelopeError::Capsule)?;
        let (u, w) = points(capsule).ok_or(EnvelopeError::Capsule)?;
        Ok(Envelope { capsule: ciphertext, u, w, sealed: sealed.to_vec() })
    }

    /// The envelope as bytes: capsule, then the sealed payload with its tag.
    pub fn to_bytes(&self) -> Vec<u8> {
        [self.capsule.to_bytes(), self.sealed.clone()].concat()
    }

    /// The capsule, to make and combine decryption shares of.
    pub fn capsule(&self) -> &Ciphertext {
        &self.capsule
    }

    /// Open with the key that threshold decryption of the capsule gave.
    pub fn open(&self, key: &[u8], associated: &[u8]) -> Option<Vec<u8>> {
        if key.len() != KEY_LEN {
            return None;
        }
        ChaCha20Poly1305::new(Key::from_slice(key))
            .decrypt(&Nonce::default(), Payload { msg: &self.sealed, aad: associated })
            .ok()
    }

    /// `H(U, V)` as blsttc computes it for a capsule (V, the encrypted key, is at most 64 bytes,
    /// so it is hashed together with `U` directly).
    fn capsule_hash(&self) -> G2Affine {
        let bytes = self.capsule.to_bytes();
        let mut message = bytes[PK_SIZE + SIG_SIZE..].to_vec();
        message.extend_from_slice(&bytes[..PK_SIZE]);
        blsttc::hash_g2(&message)
    }
}

/// `U` and `W` of a capsule that blsttc has already checked (so the subgroup checks are skipped).
fn points(capsule: &[u8]) -> Option<(G1Affine, G2Affine)> {
    let u: [u8; PK_SIZE] = capsule.get(..PK_SIZE)?.try_into().ok()?;
    let w: [u8; SIG_SIZE] = capsule.get(PK_SIZE..PK_SIZE + SIG_SIZE)?.try_into().ok()?;
    let u = Option::<G1Affine>::from(G1Affine::from_compressed_unchecked(&u))?;
    let w = Option::<G2Affine>::from(G2Affine::from_compressed_unchecked(&w))?;
    Some((u, w))
}

/// Whether each capsule is valid (blsttc's chosen-ciphertext check), checked together: with
/// random 128-bit `r_i`, `e(g1, Σ r_i W_i) · Π e(−r_i U_i, H_i) = 1`. A batch holding an invalid
/// capsule fails with probability `1 − 2⁻¹²⁸`; then each is checked on its own.
pub fn verify_capsules(envelopes: &[&Envelope], rng: &mut dyn RngCore) -> Vec<bool> {
    match envelopes {
        [] => Vec::new(),
        [one] => vec![one.capsule.verify()],
        _ => {
            if batch_holds(envelopes, rng) {
                vec![true; envelopes.len()]
            } else {
                envelopes.iter().map(|e| e.capsule.verify()).collect()
            }
        }
    }
}

fn batch_holds(envelopes: &[&Envelope], rng: &mut dyn RngCore) -> bool {
    let shift = Scalar::from(1u64 << 32).square();
    let scalars: Vec<Scalar> =
        envelopes.iter().map(|_| Scalar::from(rng.next_u64()) * shift + Scalar::from(rng.next_u64())).collect();
    let ws: Vec<G2Projective> = envelopes.iter().map(|e| G2Projective::from(e.w)).collect();
    let w_sum = G2Projective::multi_exp(&ws, &scalars).to_affine();
    let us: Vec<G1Affine> =
        envelopes.iter().zip(&scalars).map(|(e, r)| (-(G1Projective::from(e.u) * r)).to_affine()).collect();
    let hashes: Vec<G2Prepared> = envelopes.iter().map(|e| G2Prepared::from(e.capsule_hash())).collect();
    let generator = G1Affine::generator();
    let w_prepared = G2Prepared::from(w_sum);
    let mut terms: Vec<(&G1Affine, &G2Prepared)> = vec![(&generator, &w_prepared)];
    terms.extend(us.iter().zip(&hashes));
    let product: Gt = Bls12::multi_miller_loop(&terms).final_exponentiation();
    bool::from(product.is_identity())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blsttc::SecretKeySet;
    use rand::SeedableRng;

    #[test]
    fn envelopes_open_with_the_combined_key_and_only_in_their_context() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let set = SecretKeySet::random(1, &mut rng);
        let envelope = Envelope::seal(&set.public_keys().public_key(), b"epoch 1", b"hello", &mut rng);
        let envelope = Envelope::from_bytes(&envelope.to_bytes()).expect("round trip");
        let shares: Vec<(usize, blsttc::DecryptionShare)> =
            (0..2).map(|i| (i, set.secret_key_share(i).decrypt_share_no_verify(envelope.capsule()))).collect();
        let key = set.public_keys().decrypt(shares.iter().map(|(i, s)| (*i, s)), envelope.capsule()).expect("key");
        assert_eq!(envelope.open(&key, b"epoch 1").as_deref(), Some(&b"hello"[..]));
        assert_eq!(envelope.open(&key, b"epoch 2"), None);
    }

    #[test]
    fn batch_verification_agrees_with_one_by_one_and_names_the_bad_capsule() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        let public = SecretKeySet::random(2, &mut rng).public_keys().public_key();
        let mut envelopes: Vec<Envelope> =
            (0..5).map(|i| Envelope::seal(&public, b"", &[i as u8; 100], &mut rng)).collect();
        assert!(envelopes.iter().all(|e| e.capsule.verify()));
        assert_eq!(verify_capsules(&envelopes.iter().collect::<Vec<_>>(), &mut rng), vec![true; 5]);
        // Replace the encrypted key of capsule 2: the points stay valid, the check must fail.
        let mut bytes = envelopes[2].to_bytes();
        bytes[PK_SIZE + SIG_SIZE] ^= 1;
        envelopes[2] = Envelope::from_bytes(&bytes).expect("points are intact");
        assert!(!envelopes[2].capsule.verify());
        let verdicts = verify_capsules(&envelopes.iter().collect::<Vec<_>>(), &mut rng);
        assert_eq!(verdicts, vec![true, true, false, true, true]);
        // Swap W between two capsules: each fails.
        let (a, b) = (envelopes[0].to_bytes(), envelopes[1].to_bytes());
        let mut swapped = a.clone();
        swapped[PK_SIZE..PK_SIZE + SIG_SIZE].copy_from_slice(&b[PK_SIZE..PK_SIZE + SIG_SIZE]);
        let swapped = Envelope::from_bytes(&swapped).expect("points are intact");
        assert_eq!(verify_capsules(&[&swapped, &envelopes[1], &envelopes[3]], &mut rng), vec![false, true, true]);
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        assert_eq!(Envelope::from_bytes(&[0; 10]), Err(EnvelopeError::TooShort(10)));
        assert_eq!(Envelope::from_bytes(&[0xff; CAPSULE_LEN + TAG_LEN]), Err(EnvelopeError::Capsule));
    }
}
