//! Labeled threshold encryption of a short secret (at most 64 bytes, e.g. a 32-byte session key
//! and an 8-byte ticket id) to the cluster's threshold encryption key: hashed ElGamal in G1 with
//! a chosen-ciphertext check that binds a *label* (e.g. the upload event id and the ticket id).
//!
//! Replicas release a decryption share only for a capsule that verifies under the label they
//! expect. A capsule copied into another event does not verify there: `W = H·r` with `H` hashed
//! from the label, and without `r` nobody can make `W` for another label.
//!
//! # Construction
//!
//! Public key `pk = g1·x` in G1 (a blsttc [`PublicKeySet`]); replica `i` holds `x_i`, the secret
//! polynomial evaluated at `i + 1` (blsttc's convention), with public key share `pk_i = g1·x_i`.
//! `tagged` is [`crate::tagged`]; points are compressed (G1: 48 bytes, G2: 96 bytes).
//!
//! ```text
//! Encrypt(pk, label, m), 1 ≤ |m| ≤ 64:
//!   r ← random nonzero Scalar
//!   U = g1·r                  S = pk·r
//!   KDF(S) = SHA-256(tagged(LABELED_KDF, [S, 0u8])) ‖ SHA-256(tagged(LABELED_KDF, [S, 1u8]))  (64 bytes)
//!   V = m XOR KDF(S)[..|m|]
//!   H = hash_to_g2(LABELED_HASH, [U, V, label])      (crate::hash_to_g2, blsttc's hash to G2)
//!   W = H·r
//! Verify(capsule, label):      e(g1, W) · e(−U, H) = 1          (one multi-Miller loop)
//! Share of replica i:          D_i = U·x_i
//! Verify share i:              e(D_i, H) · e(−pk_i, W) = 1      (one multi-Miller loop)
//! Combine t + 1 shares:        S = Σ λ_i·D_i (Lagrange at 0, share i at x = i + 1), m = V XOR KDF(S)
//! ```
//!
//! A share check assumes the capsule verifies under the label (a client checks shares of the
//! capsule it made itself).
//!
//! # Byte layouts
//!
//! - capsule ([`LabeledCapsule::to_bytes`]): `U (48) ‖ W (96) ‖ |V| (1 byte, 1..=64) ‖ V (|V|)`,
//!   so `145 + |V|` bytes.
//! - decryption share: blsttc's [`DecryptionShare::to_bytes`] / [`DecryptionShare::from_bytes`],
//!   the compressed `D_i` (48 bytes; `from_bytes` checks the point).
//!
//! # Combining
//!
//! [`LabeledCapsule::combine`] is optimistic: it interpolates the first `t + 1` shares and returns
//! the plaintext without checking anything, since the caller alone can tell a wrong plaintext from
//! a right one (e.g. an AEAD tag under the recovered key does not open). When that check fails,
//! [`LabeledCapsule::combine_checked`] verifies every share (one multi-Miller loop each), names the
//! invalid ones and decrypts with `t + 1` valid ones if there are that many.

use std::collections::BTreeMap;

use blsttc::blstrs::{Bls12, G1Affine, G1Projective, G2Affine, G2Prepared, G2Projective, Gt, Scalar};
use blsttc::group::{ff::Field, prime::PrimeCurveAffine, Curve, Group};
use blsttc::{Ciphertext, DecryptionShare, PublicKey, PublicKeySet, PublicKeyShare, PK_SIZE, SIG_SIZE};
use fides_types::NodeIndex;
use pairing::{MillerLoopResult, MultiMillerLoop};
use rand::{CryptoRng, RngCore};

use crate::{domain, hash_to_g2, sha256_tagged, CombineError, ThresholdKeys};

/// Longest message a capsule holds.
pub const MAX_MESSAGE_LEN: usize = 64;
/// Bytes of a capsule before `V`: `U`, `W` and the length of `V`.
pub const HEADER_LEN: usize = PK_SIZE + SIG_SIZE + 1;

/// Why a capsule could not be made or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabeledError {
    /// The message (or `V`) is empty or longer than [`MAX_MESSAGE_LEN`].
    #[error("message of {0} bytes; 1 to 64 allowed")]
    MessageLength(usize),
    /// The bytes are not as long as the header and `V` they announce.
    #[error("capsule of {0} bytes has the wrong length")]
    Length(usize),
    /// `U` or `W` is not a point of its subgroup.
    #[error("the capsule's points are malformed")]
    Points,
}

/// A labeled threshold capsule `(U, W, V)`. Its points are always valid group elements; whether it
/// is valid under a label is [`LabeledCapsule::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabeledCapsule {
    u: G1Affine,
    w: G2Affine,
    v: Vec<u8>,
}

/// The result of [`LabeledCapsule::combine_checked`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedDecryption {
    /// The message, decrypted with `t + 1` valid shares.
    pub plaintext: Vec<u8>,
    /// The shares that did not verify, to be dropped and recorded as faults.
    pub invalid: Vec<NodeIndex>,
}

impl LabeledCapsule {
    /// Encrypt `message` (1 to 64 bytes) to the cluster's encryption key `public`, bound to `label`.
    pub fn encrypt(
        public: &PublicKey,
        label: &[u8],
        message: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<LabeledCapsule, LabeledError> {
        LabeledCapsule::encrypt_with(public, label, message, rng)
    }

    /// [`LabeledCapsule::encrypt`] with the caller's random source, for callers that hold it as a
    /// trait object (the envelope of atomic broadcast); it must be a cryptographic one.
    pub(crate) fn encrypt_with(
        public: &PublicKey,
        label: &[u8],
        message: &[u8],
        rng: &mut dyn RngCore,
    ) -> Result<LabeledCapsule, LabeledError> {
        if message.is_empty() || message.len() > MAX_MESSAGE_LEN {
            return Err(LabeledError::MessageLength(message.len()));
        }
        let r = loop {
            let r = Scalar::random(&mut *rng);
            if !bool::from(r.is_zero()) {
                break r;
            }
        };
        let u = (G1Projective::generator() * r).to_affine();
        let s = (G1Projective::from(G1Affine::from(*public)) * r).to_affine();
        let v = xor_key_stream(message, &s);
        let h = capsule_hash(&u, &v, label);
        let w = (G2Projective::from(h) * r).to_affine();
        Ok(LabeledCapsule { u, w, v })
    }

    /// Whether the capsule is valid under `label`: `e(g1, W) · e(−U, H) = 1`.
    pub fn verify(&self, label: &[u8]) -> bool {
        let h = G2Prepared::from(capsule_hash(&self.u, &self.v, label));
        let w = G2Prepared::from(self.w);
        product_is_one(&[(&G1Affine::generator(), &w), (&-self.u, &h)])
    }

    /// Whether `share` is the valid decryption share of the replica whose public key share is
    /// `key`: `e(D_i, H) · e(−pk_i, W) = 1`. Meaningful only if the capsule verifies under `label`.
    pub fn verify_share(&self, label: &[u8], key: &PublicKeyShare, share: &DecryptionShare) -> bool {
        let h = G2Prepared::from(capsule_hash(&self.u, &self.v, label));
        let w = G2Prepared::from(self.w);
        share_holds(key, share, &h, &w)
    }

    /// Combine the first `t + 1` shares and decrypt, without checking them (optimistic): an
    /// invalid share gives a wrong plaintext, which only the caller can detect; then call
    /// [`LabeledCapsule::combine_checked`].
    pub fn combine(
        &self,
        public: &PublicKeySet,
        shares: &BTreeMap<NodeIndex, DecryptionShare>,
    ) -> Result<Vec<u8>, CombineError> {
        let need = public.threshold() + 1;
        if shares.len() < need {
            return Err(CombineError::NotEnough { have: shares.len(), need });
        }
        let mut points = Vec::with_capacity(need);
        for (index, share) in shares.iter().take(need) {
            let point = share_point(share).ok_or_else(|| CombineError::InvalidShares(vec![*index]))?;
            points.push((*index, point));
        }
        self.decrypt_with(&points)
    }

    /// Verify every share under `label`, name the invalid ones, and decrypt with the first `t + 1`
    /// valid ones. Fails with [`CombineError::NotEnough`] if fewer than `t + 1` shares are given,
    /// and with [`CombineError::InvalidShares`] (naming the invalid ones) if fewer than `t + 1` are
    /// valid. The capsule must verify under `label`, or every share is found invalid.
    pub fn combine_checked(
        &self,
        public: &PublicKeySet,
        label: &[u8],
        shares: &BTreeMap<NodeIndex, DecryptionShare>,
    ) -> Result<CheckedDecryption, CombineError> {
        let need = public.threshold() + 1;
        if shares.len() < need {
            return Err(CombineError::NotEnough { have: shares.len(), need });
        }
        let h = G2Prepared::from(capsule_hash(&self.u, &self.v, label));
        let w = G2Prepared::from(self.w);
        let mut valid = Vec::with_capacity(shares.len());
        let mut invalid = Vec::new();
        for (index, share) in shares {
            let key = public.public_key_share(index.as_usize());
            match share_point(share) {
                Some(point) if share_holds(&key, share, &h, &w) => valid.push((*index, point)),
                _ => invalid.push(*index),
            }
        }
        if valid.len() < need {
            return Err(CombineError::InvalidShares(invalid));
        }
        valid.truncate(need);
        let plaintext = self.decrypt_with(&valid)?;
        Ok(CheckedDecryption { plaintext, invalid })
    }

    /// The capsule as bytes: `U (48) ‖ W (96) ‖ |V| (1) ‖ V`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.v.len());
        out.extend_from_slice(&self.u.to_compressed());
        out.extend_from_slice(&self.w.to_compressed());
        // `V` is 1 to 64 bytes long, by construction.
        out.push(self.v.len() as u8);
        out.extend_from_slice(&self.v);
        out
    }

    /// Parse, checking the length and that `U` and `W` are points of their subgroups (not whether
    /// the capsule is valid under a label: [`LabeledCapsule::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<LabeledCapsule, LabeledError> {
        if bytes.len() < HEADER_LEN {
            return Err(LabeledError::Length(bytes.len()));
        }
        let (header, v) = bytes.split_at(HEADER_LEN);
        let declared = usize::from(header[HEADER_LEN - 1]);
        if declared == 0 || declared > MAX_MESSAGE_LEN {
            return Err(LabeledError::MessageLength(declared));
        }
        if v.len() != declared {
            return Err(LabeledError::Length(bytes.len()));
        }
        let u: &[u8; PK_SIZE] = header[..PK_SIZE].try_into().map_err(|_| LabeledError::Length(bytes.len()))?;
        let w: &[u8; SIG_SIZE] =
            header[PK_SIZE..PK_SIZE + SIG_SIZE].try_into().map_err(|_| LabeledError::Length(bytes.len()))?;
        let u = Option::<G1Affine>::from(G1Affine::from_compressed(u)).ok_or(LabeledError::Points)?;
        let w = Option::<G2Affine>::from(G2Affine::from_compressed(w)).ok_or(LabeledError::Points)?;
        Ok(LabeledCapsule { u, w, v: v.to_vec() })
    }

    /// `S = Σ λ_i·D_i`, then `V XOR KDF(S)`.
    fn decrypt_with(&self, shares: &[(NodeIndex, G1Affine)]) -> Result<Vec<u8>, CombineError> {
        // The indices are distinct and far below the group order, so the denominators are
        // nonzero; this error is unreachable.
        let coefficients = lagrange_at_zero(shares).ok_or(CombineError::InvalidShares(Vec::new()))?;
        let points: Vec<G1Projective> = shares.iter().map(|(_, d)| G1Projective::from(*d)).collect();
        let s = G1Projective::multi_exp(&points, &coefficients).to_affine();
        Ok(xor_key_stream(&self.v, &s))
    }

    /// The capsule as blsttc lays out a ciphertext: `U (48) ‖ W (96) ‖ V`.
    fn as_blsttc(&self) -> Ciphertext {
        let bytes = [&self.u.to_compressed()[..], &self.w.to_compressed()[..], &self.v].concat();
        Ciphertext::from_bytes(&bytes).expect("a capsule's points are valid and V is not empty")
    }
}

/// Whether each capsule is valid under its label, checked together: with random 128-bit `r_i`,
/// `e(g1, Σ r_i W_i) · Π e(−r_i U_i, H_i) = 1` — one multi-Miller loop and one final
/// exponentiation instead of one of each per capsule. A batch holding an invalid capsule fails
/// with probability `1 − 2⁻¹²⁸`; then each is checked on its own.
pub fn verify_batch(capsules: &[(&LabeledCapsule, &[u8])], rng: &mut dyn RngCore) -> Vec<bool> {
    match capsules {
        [] => Vec::new(),
        [(one, label)] => vec![one.verify(label)],
        _ if batch_holds(capsules, rng) => vec![true; capsules.len()],
        _ => capsules.iter().map(|(capsule, label)| capsule.verify(label)).collect(),
    }
}

fn batch_holds(capsules: &[(&LabeledCapsule, &[u8])], rng: &mut dyn RngCore) -> bool {
    let shift = Scalar::from(1u64 << 32).square();
    let scalars: Vec<Scalar> =
        capsules.iter().map(|_| Scalar::from(rng.next_u64()) * shift + Scalar::from(rng.next_u64())).collect();
    let ws: Vec<G2Projective> = capsules.iter().map(|(c, _)| G2Projective::from(c.w)).collect();
    let w_sum = G2Projective::multi_exp(&ws, &scalars).to_affine();
    let us: Vec<G1Affine> =
        capsules.iter().zip(&scalars).map(|((c, _), r)| (-(G1Projective::from(c.u) * r)).to_affine()).collect();
    let hashes: Vec<G2Prepared> =
        capsules.iter().map(|(c, label)| G2Prepared::from(capsule_hash(&c.u, &c.v, label))).collect();
    let generator = G1Affine::generator();
    let w_prepared = G2Prepared::from(w_sum);
    let mut terms: Vec<(&G1Affine, &G2Prepared)> = vec![(&generator, &w_prepared)];
    terms.extend(us.iter().zip(&hashes));
    product_is_one(&terms)
}

impl ThresholdKeys {
    /// Our decryption share of a labeled capsule, `D_i = U·x_i`. Release it only for a capsule
    /// that verifies under the label expected ([`LabeledCapsule::verify`]).
    pub fn labeled_share(&self, capsule: &LabeledCapsule) -> DecryptionShare {
        self.secret.decrypt_share_no_verify(&capsule.as_blsttc())
    }
}

/// `H = hash_to_g2(LABELED_HASH, [U, V, label])`.
fn capsule_hash(u: &G1Affine, v: &[u8], label: &[u8]) -> G2Affine {
    hash_to_g2(domain::LABELED_HASH, &[&u.to_compressed(), v, label])
}

/// `data XOR KDF(S)[..|data|]`, `|data| ≤ 64`.
fn xor_key_stream(data: &[u8], s: &G1Affine) -> Vec<u8> {
    let s = s.to_compressed();
    let first = sha256_tagged(domain::LABELED_KDF, &[&s, &[0u8]]);
    let second = sha256_tagged(domain::LABELED_KDF, &[&s, &[1u8]]);
    data.iter().zip(first.iter().chain(second.iter())).map(|(d, k)| d ^ k).collect()
}

/// The G1 point of a decryption share (blsttc checked it when decoding; checked again here).
fn share_point(share: &DecryptionShare) -> Option<G1Affine> {
    Option::from(G1Affine::from_compressed(&share.to_bytes()))
}

/// `e(D_i, H) · e(−pk_i, W) = 1`.
fn share_holds(key: &PublicKeyShare, share: &DecryptionShare, h: &G2Prepared, w: &G2Prepared) -> bool {
    let Some(d) = share_point(share) else { return false };
    let Some(pk) = Option::<G1Affine>::from(G1Affine::from_compressed(&key.to_bytes())) else { return false };
    product_is_one(&[(&d, h), (&-pk, w)])
}

/// Whether the product of the pairings is one: one multi-Miller loop, one final exponentiation.
fn product_is_one(terms: &[(&G1Affine, &G2Prepared)]) -> bool {
    let product: Gt = Bls12::multi_miller_loop(terms).final_exponentiation();
    bool::from(product.is_identity())
}

/// Lagrange coefficients at 0 for shares evaluated at `x = index + 1`:
/// `λ_i = Π_{j≠i} x_j / (x_j − x_i)`. `None` if two indices are equal.
fn lagrange_at_zero(shares: &[(NodeIndex, G1Affine)]) -> Option<Vec<Scalar>> {
    let xs: Vec<Scalar> = shares.iter().map(|(i, _)| Scalar::from(u64::from(i.0) + 1)).collect();
    xs.iter()
        .enumerate()
        .map(|(i, xi)| {
            let mut numerator = Scalar::one();
            let mut denominator = Scalar::one();
            for (j, xj) in xs.iter().enumerate() {
                if i != j {
                    numerator *= xj;
                    denominator *= *xj - xi;
                }
            }
            Option::<Scalar>::from(denominator.invert()).map(|inverse| numerator * inverse)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use blsttc::SecretKeySet;
    use rand::SeedableRng;

    const LABEL: &[u8] = b"event 42 / ticket 7";

    fn cluster(n: u32, t: usize, seed: u64) -> (PublicKeySet, Vec<ThresholdKeys>, rand_chacha::ChaCha20Rng) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let set = SecretKeySet::random(t, &mut rng);
        let keys = (0..n)
            .map(|i| ThresholdKeys::new(NodeIndex(i), n, set.public_keys(), set.secret_key_share(i as usize)))
            .collect();
        (set.public_keys(), keys, rng)
    }

    fn shares(keys: &[ThresholdKeys], capsule: &LabeledCapsule, of: &[u32]) -> BTreeMap<NodeIndex, DecryptionShare> {
        of.iter().map(|&i| (NodeIndex(i), keys[i as usize].labeled_share(capsule))).collect()
    }

    fn doubled(share: &DecryptionShare) -> DecryptionShare {
        let point = share_point(share).expect("valid share");
        DecryptionShare::from_bytes((G1Projective::from(point).double()).to_affine().to_compressed()).expect("point")
    }

    #[test]
    fn capsules_round_trip_and_decrypt_with_any_t_plus_1_shares() {
        for (n, t) in [(4u32, 1usize), (7, 2)] {
            let (public, keys, mut rng) = cluster(n, t, 5 + n as u64);
            for message in [&[9u8][..], &[0xab; 40], &[0x5a; MAX_MESSAGE_LEN]] {
                let capsule = LabeledCapsule::encrypt(&public.public_key(), LABEL, message, &mut rng).expect("encrypt");
                let bytes = capsule.to_bytes();
                assert_eq!(bytes.len(), HEADER_LEN + message.len());
                let capsule = LabeledCapsule::from_bytes(&bytes).expect("round trip");
                assert!(capsule.verify(LABEL));
                let all: Vec<u32> = (0..n).collect();
                let every = shares(&keys, &capsule, &all);
                for (index, share) in &every {
                    assert!(capsule.verify_share(LABEL, &public.public_key_share(index.as_usize()), share));
                    let bytes = share.to_bytes();
                    assert_eq!(DecryptionShare::from_bytes(bytes).as_ref(), Ok(share));
                }
                for subset in [&all[..=t], &all[n as usize - t - 1..]] {
                    let chosen = shares(&keys, &capsule, subset);
                    assert_eq!(capsule.combine(&public, &chosen).as_deref(), Ok(message));
                    let checked = capsule.combine_checked(&public, LABEL, &chosen).expect("valid shares");
                    assert_eq!(checked, CheckedDecryption { plaintext: message.to_vec(), invalid: Vec::new() });
                }
                assert_eq!(capsule.combine(&public, &every).as_deref(), Ok(message));
            }
        }
    }

    #[test]
    fn capsules_verify_only_under_their_label_and_unaltered() {
        let (public, _, mut rng) = cluster(4, 1, 1);
        let a = LabeledCapsule::encrypt(&public.public_key(), LABEL, &[1; 40], &mut rng).expect("encrypt");
        let b = LabeledCapsule::encrypt(&public.public_key(), LABEL, &[1; 40], &mut rng).expect("encrypt");
        assert!(a.verify(LABEL) && b.verify(LABEL));
        assert!(!a.verify(b"event 43 / ticket 7"));
        assert!(!a.verify(b""));
        let mut flipped = a.to_bytes();
        *flipped.last_mut().expect("V is not empty") ^= 1;
        assert!(!LabeledCapsule::from_bytes(&flipped).expect("points intact").verify(LABEL));
        let mut swapped = a.to_bytes();
        swapped[PK_SIZE..PK_SIZE + SIG_SIZE].copy_from_slice(&b.to_bytes()[PK_SIZE..PK_SIZE + SIG_SIZE]);
        assert!(!LabeledCapsule::from_bytes(&swapped).expect("points intact").verify(LABEL));
    }

    #[test]
    fn a_wrong_share_is_detected_and_named() {
        for (n, t) in [(4u32, 1usize), (7, 2)] {
            let (public, keys, mut rng) = cluster(n, t, 20 + n as u64);
            let message = [0x42u8; 40];
            let capsule = LabeledCapsule::encrypt(&public.public_key(), LABEL, &message, &mut rng).expect("encrypt");
            let other = LabeledCapsule::encrypt(&public.public_key(), LABEL, &message, &mut rng).expect("encrypt");
            let good: Vec<u32> = (1..=t as u32 + 1).collect();
            let key0 = public.public_key_share(0usize);
            for bad in [keys[0].labeled_share(&other), doubled(&keys[0].labeled_share(&capsule))] {
                assert!(!capsule.verify_share(LABEL, &key0, &bad));
                let mut given = shares(&keys, &capsule, &good);
                given.insert(NodeIndex(0), bad.clone());
                // Optimistic: the bad share is among the first t + 1, so the plaintext is wrong.
                let wrong = capsule.combine(&public, &given).expect("enough shares");
                assert_ne!(wrong, message);
                let checked = capsule.combine_checked(&public, LABEL, &given).expect("t + 1 valid shares remain");
                assert_eq!(checked, CheckedDecryption { plaintext: message.to_vec(), invalid: vec![NodeIndex(0)] });
                // With only t valid shares left, the bad one is named and nothing is decrypted.
                given.remove(&NodeIndex(1));
                given.insert(NodeIndex(n - 1), doubled(&keys[n as usize - 1].labeled_share(&capsule)));
                assert_eq!(
                    capsule.combine_checked(&public, LABEL, &given),
                    Err(CombineError::InvalidShares(vec![NodeIndex(0), NodeIndex(n - 1)]))
                );
            }
        }
    }

    #[test]
    fn fewer_than_t_plus_1_shares_do_not_combine() {
        let (public, keys, mut rng) = cluster(7, 2, 3);
        let capsule = LabeledCapsule::encrypt(&public.public_key(), LABEL, b"secret", &mut rng).expect("encrypt");
        let given = shares(&keys, &capsule, &[3, 5]);
        assert_eq!(capsule.combine(&public, &given), Err(CombineError::NotEnough { have: 2, need: 3 }));
        assert_eq!(capsule.combine_checked(&public, LABEL, &given), Err(CombineError::NotEnough { have: 2, need: 3 }));
        assert_eq!(capsule.combine(&public, &BTreeMap::new()), Err(CombineError::NotEnough { have: 0, need: 3 }));
    }

    #[test]
    fn malformed_input_is_refused() {
        let (public, _, mut rng) = cluster(4, 1, 9);
        let pk = public.public_key();
        assert_eq!(LabeledCapsule::encrypt(&pk, LABEL, b"", &mut rng), Err(LabeledError::MessageLength(0)));
        assert_eq!(LabeledCapsule::encrypt(&pk, LABEL, &[0; 65], &mut rng), Err(LabeledError::MessageLength(65)));
        let good = LabeledCapsule::encrypt(&pk, LABEL, &[7; 40], &mut rng).expect("encrypt").to_bytes();
        assert_eq!(LabeledCapsule::from_bytes(&[]), Err(LabeledError::Length(0)));
        assert_eq!(LabeledCapsule::from_bytes(&good[..HEADER_LEN - 1]), Err(LabeledError::Length(HEADER_LEN - 1)));
        assert_eq!(LabeledCapsule::from_bytes(&good[..good.len() - 1]), Err(LabeledError::Length(good.len() - 1)));
        assert_eq!(LabeledCapsule::from_bytes(&[&good[..], &[0]].concat()), Err(LabeledError::Length(good.len() + 1)));
        let mut length = good.clone();
        length[HEADER_LEN - 1] = 0;
        assert_eq!(LabeledCapsule::from_bytes(&length[..HEADER_LEN]), Err(LabeledError::MessageLength(0)));
        length[HEADER_LEN - 1] = 65;
        assert_eq!(LabeledCapsule::from_bytes(&[&length[..], &[0; 25]].concat()), Err(LabeledError::MessageLength(65)));
        let mut u = good.clone();
        u[..PK_SIZE].fill(0xff);
        assert_eq!(LabeledCapsule::from_bytes(&u), Err(LabeledError::Points));
        let mut w = good.clone();
        w[PK_SIZE..PK_SIZE + SIG_SIZE].fill(0xff);
        assert_eq!(LabeledCapsule::from_bytes(&w), Err(LabeledError::Points));
        // A point on the curve but not in the subgroup of G1 (the cofactor is large, so almost any
        // x on the curve gives one).
        let off_subgroup = (1u8..=255)
            .map(|x| {
                let mut bytes = [0u8; PK_SIZE];
                bytes[0] = 0x80;
                bytes[PK_SIZE - 1] = x;
                bytes
            })
            .find(|bytes| bool::from(G1Affine::from_compressed_unchecked(bytes).is_some()))
            .expect("some small x is on the curve");
        assert!(bool::from(G1Affine::from_compressed(&off_subgroup).is_none()));
        let mut off = good.clone();
        off[..PK_SIZE].copy_from_slice(&off_subgroup);
        assert_eq!(LabeledCapsule::from_bytes(&off), Err(LabeledError::Points));
        assert!(DecryptionShare::from_bytes([0xff; PK_SIZE]).is_err());
    }
}
