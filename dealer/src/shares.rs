//! Checking secret shares against a public key set without evaluating its commitment once per
//! share: `n` evaluations of a degree-`t` commitment cost `n * t` scalar multiplications, which
//! for `n = 1024` is minutes.
//!
//! The shares `s_i` of replicas `i` lie on the committed polynomial iff `g^(s_i) = Π_k C_k^((i +
//! 1)^k)` for each `i`. With random weights `r_i` this becomes one equation,
//! `g^(Σ r_i s_i) = Π_k C_k^(Σ_i r_i (i + 1)^k)`: field arithmetic and one multi-exponentiation of
//! size `t + 1`. A set of shares with a bad one passes with probability about `2^-255`. When the
//! equation fails, halving the set finds the bad shares.

use blsttc::group::Group;
use blsttc::{Fr, G1Affine, G1Projective, PublicKeySet, SecretKey, SecretKeyShare, PK_SIZE};
use fides_types::NodeIndex;
use rand::Rng;

/// The replicas among `shares` whose secret share does not match the public key share of its
/// index in `set`. With one share the check is exact and needs no randomness.
pub(crate) fn bad_shares<R: Rng>(
    set: &PublicKeySet,
    shares: &[(NodeIndex, &SecretKeyShare)],
    rng: &mut R,
) -> Vec<NodeIndex> {
    let coefficients: Vec<G1Projective> = set
        .to_bytes()
        .chunks(PK_SIZE)
        .map(|chunk| {
            let bytes: [u8; PK_SIZE] = chunk.try_into().expect("a commitment is a whole number of points");
            let point = Option::<G1Affine>::from(G1Affine::from_compressed(&bytes));
            G1Projective::from(point.expect("a public key set serialises to valid points"))
        })
        .collect();
    let scalars: Vec<(NodeIndex, Fr)> = shares
        .iter()
        .map(|(index, share)| {
            let scalar = Option::<Fr>::from(Fr::from_bytes_be(&share.to_bytes()));
            (*index, scalar.expect("a secret key share serialises to a valid scalar"))
        })
        .collect();
    let mut bad = Vec::new();
    find_bad(&coefficients, &scalars, rng, &mut bad);
    bad
}

fn find_bad<R: Rng>(coefficients: &[G1Projective], shares: &[(NodeIndex, Fr)], rng: &mut R, bad: &mut Vec<NodeIndex>) {
    if shares.is_empty() || holds(coefficients, shares, rng) {
        return;
    }
    if let [(index, _)] = shares {
        bad.push(*index);
        return;
    }
    let (first, second) = shares.split_at(shares.len() / 2);
    find_bad(coefficients, first, rng, bad);
    find_bad(coefficients, second, rng, bad);
}

/// Whether `g^(Σ r_i s_i) = Π_k C_k^(Σ_i r_i (i + 1)^k)` for random `r_i` (`r = 1` for one share).
fn holds<R: Rng>(coefficients: &[G1Projective], shares: &[(NodeIndex, Fr)], rng: &mut R) -> bool {
    let zero = Fr::from(0u64);
    let mut exponent_left = zero;
    let mut exponents_right = vec![zero; coefficients.len()];
    for (index, secret) in shares {
        let weight = if shares.len() == 1 { Fr::from(1u64) } else { Fr::from(rng.gen::<SecretKey>()) };
        exponent_left += weight * secret;
        let x = Fr::from(u64::from(index.0) + 1);
        let mut term = weight;
        for exponent in exponents_right.iter_mut() {
            *exponent += term;
            term *= x;
        }
    }
    G1Projective::generator() * exponent_left == G1Projective::multi_exp(coefficients, &exponents_right)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blsttc::SecretKeySet;
    use rand::SeedableRng;

    #[test]
    fn bad_shares_are_found_among_good_ones() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        let set = SecretKeySet::random(3, &mut rng);
        let other = SecretKeySet::random(3, &mut rng);
        let mut shares: Vec<SecretKeyShare> = (0..10).map(|i| set.secret_key_share(i)).collect();
        let public = set.public_keys();
        let all = |shares: &[SecretKeyShare]| -> Vec<(NodeIndex, SecretKeyShare)> {
            shares.iter().enumerate().map(|(i, s)| (NodeIndex(i as u32), s.clone())).collect()
        };
        let check = |pairs: &[(NodeIndex, SecretKeyShare)], rng: &mut rand_chacha::ChaCha20Rng| {
            let refs: Vec<(NodeIndex, &SecretKeyShare)> = pairs.iter().map(|(i, s)| (*i, s)).collect();
            bad_shares(&public, &refs, rng)
        };
        assert_eq!(check(&all(&shares), &mut rng), Vec::<NodeIndex>::new());
        shares[2] = other.secret_key_share(2);
        shares.swap(6, 7);
        assert_eq!(check(&all(&shares), &mut rng), vec![NodeIndex(2), NodeIndex(6), NodeIndex(7)]);
        assert_eq!(check(&all(&shares)[6..7], &mut rng), vec![NodeIndex(6)]);
        assert_eq!(check(&all(&shares)[8..9], &mut rng), Vec::<NodeIndex>::new());
    }
}
