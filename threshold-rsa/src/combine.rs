//! Combining signature shares, optimistically.

use crypto_bigint::modular::BoxedMontyForm;
use num_bigint::{BigInt, BigUint, Sign};
use num_integer::Integer;
use num_traits::One;

use crate::arith::{delta, inverses, is_residue, lagrange_times_delta, to_fixed_fitting, Montgomery};
use crate::emsa;
use crate::key::{PublicKey, PUBLIC_EXPONENT};
use crate::share::{verify_share, ShareValue, SignatureShare};

/// What combining needs of a share: its index and its value `x_i`.
trait Share: PartialEq {
    fn index(&self) -> u32;
    fn value(&self) -> &BigUint;
}

impl Share for SignatureShare {
    fn index(&self) -> u32 {
        self.index
    }

    fn value(&self) -> &BigUint {
        &self.value
    }
}

impl Share for ShareValue {
    fn index(&self) -> u32 {
        self.index
    }

    fn value(&self) -> &BigUint {
        &self.value
    }
}

/// Why a share was not used: peer misbehaviour, reported as data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShareFaultKind {
    /// Its index is not below `n`.
    IndexOutOfRange,
    /// A second, different share with the index of an earlier one (the earlier one is kept).
    Duplicate,
    /// Its value is not in `1..N`, or has no inverse mod `N`.
    NotAResidue,
    /// Its proof of correctness does not hold: the share is wrong or its proof is.
    InvalidProof,
}

/// A share that was not used, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShareFault {
    /// The index the share carries.
    pub index: u32,
    /// What is wrong with it.
    pub kind: ShareFaultKind,
}

/// A combined signature and the shares found bad on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Combined {
    /// The RSA PKCS#1 v1.5 signature, `k` bytes (the modulus's length).
    pub signature: Vec<u8>,
    /// The bad shares that were found. On the optimistic path only shares refused before
    /// combining appear here (index, duplicate, range); a bad share that was not among the
    /// first `t + 1` usable ones is not looked at.
    pub faults: Vec<ShareFault>,
}

/// Why no signature was made; the bad shares found are in either case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CombineError {
    /// Fewer than `t + 1` good shares: wait for more.
    #[error("{usable} usable signature shares, {needed} needed ({} bad)", faults.len())]
    NotEnoughShares {
        /// Shares that could still be used.
        usable: usize,
        /// `t + 1`.
        needed: usize,
        /// The bad shares found.
        faults: Vec<ShareFault>,
    },
    /// `t + 1` shares whose proofs hold did not combine to a signature that verifies. With a key
    /// this crate dealt that does not happen (short of breaking the proofs' soundness); it is an
    /// error rather than a panic because the shares come from peers.
    #[error("{needed} shares with valid proofs did not combine to a valid signature")]
    ProvenSharesDisagree {
        /// `t + 1`.
        needed: usize,
        /// The bad shares found.
        faults: Vec<ShareFault>,
    },
    /// [`combine_values`] only: the first `t + 1` usable values did not combine to a signature
    /// that verifies, so one of them is bad; which one only the proofs tell. Ask the parties for
    /// their shares with proofs ([`crate::sign_share`]) and [`combine`] those.
    #[error("{needed} share values did not combine to a valid signature: their proofs are needed")]
    ValuesDisagree {
        /// `t + 1`.
        needed: usize,
        /// The bad shares found (before combining: index, duplicate, range).
        faults: Vec<ShareFault>,
    },
}

impl CombineError {
    /// The bad shares found before giving up.
    pub fn faults(&self) -> &[ShareFault] {
        match self {
            CombineError::NotEnoughShares { faults, .. }
            | CombineError::ProvenSharesDisagree { faults, .. }
            | CombineError::ValuesDisagree { faults, .. } => faults,
        }
    }
}

/// Combine `shares` of `message`'s signature, optimistically: the first `t + 1` usable shares
/// (in the order given) are combined and the signature is verified; only if it does not verify
/// is every share's proof checked, each share with a bad proof named as a fault, and `t + 1` good
/// ones combined.
pub fn combine(public: &PublicKey, message: &[u8], shares: &[SignatureShare]) -> Result<Combined, CombineError> {
    let needed = public.threshold as usize + 1;
    let (candidates, mut faults) = usable(public, shares);
    if candidates.len() < needed {
        return Err(CombineError::NotEnoughShares { usable: candidates.len(), needed, faults });
    }
    let x = emsa::encode(message, public.modulus_len());
    let candidates = match combine_first(public, &x, needed, candidates.clone(), &mut faults) {
        Ok(Some(signature)) => return Ok(Combined { signature, faults }),
        Ok(None) | Err(_) => candidates,
    };
    let mut good = Vec::with_capacity(candidates.len());
    for share in candidates {
        if faults.iter().any(|f| f.index == share.index && f.kind == ShareFaultKind::NotAResidue) {
            continue;
        }
        if verify_share(public, message, share) {
            good.push(share);
        } else {
            faults.push(ShareFault { index: share.index, kind: ShareFaultKind::InvalidProof });
        }
    }
    match combine_first(public, &x, needed, good, &mut faults) {
        Ok(Some(signature)) => Ok(Combined { signature, faults }),
        Ok(None) => Err(CombineError::ProvenSharesDisagree { needed, faults }),
        Err(usable) => Err(CombineError::NotEnoughShares { usable, needed, faults }),
    }
}

/// Combine share values without proofs, optimistically: the first `t + 1` usable values (in the
/// order given) are combined and the signature is verified. The cheap path of a signer that asks
/// for proofs only when needed: on [`CombineError::ValuesDisagree`], get the shares with their
/// proofs and [`combine`] them, which names the bad ones.
pub fn combine_values(public: &PublicKey, message: &[u8], values: &[ShareValue]) -> Result<Combined, CombineError> {
    let needed = public.threshold as usize + 1;
    let (candidates, faults) = usable(public, values);
    if candidates.len() < needed {
        return Err(CombineError::NotEnoughShares { usable: candidates.len(), needed, faults });
    }
    let mut faults = faults;
    let x = emsa::encode(message, public.modulus_len());
    match combine_first(public, &x, needed, candidates, &mut faults) {
        Ok(Some(signature)) => Ok(Combined { signature, faults }),
        Ok(None) => Err(CombineError::ValuesDisagree { needed, faults }),
        Err(usable) => Err(CombineError::NotEnoughShares { usable, needed, faults }),
    }
}

/// The shares that may be combined, each index once, and the faults of the others. Whether a
/// value is invertible mod `N` is checked when it is combined ([`Checked::NotInvertible`]).
fn usable<'a, S: Share>(public: &PublicKey, shares: &'a [S]) -> (Vec<&'a S>, Vec<ShareFault>) {
    let mut candidates: Vec<&S> = Vec::with_capacity(shares.len());
    let mut faults = Vec::new();
    for share in shares {
        let fault = |kind| ShareFault { index: share.index(), kind };
        if share.index() >= public.parties() {
            faults.push(fault(ShareFaultKind::IndexOutOfRange));
        } else if let Some(earlier) = candidates.iter().find(|c| c.index() == share.index()) {
            if *earlier != share {
                faults.push(fault(ShareFaultKind::Duplicate));
            }
        } else if !is_residue(share.value(), &public.modulus) {
            faults.push(fault(ShareFaultKind::NotAResidue));
        } else {
            candidates.push(share);
        }
    }
    (candidates, faults)
}

/// Drop the candidates that have no inverse mod `N` (sharing a factor with it), as faults: the
/// slow check (a gcd each), made only once a combination found a value without an inverse.
fn drop_not_invertible<'a, S: Share>(
    public: &PublicKey,
    candidates: Vec<&'a S>,
    faults: &mut Vec<ShareFault>,
) -> Vec<&'a S> {
    let (kept, dropped): (Vec<&S>, Vec<&S>) =
        candidates.into_iter().partition(|share| share.value().gcd(&public.modulus).is_one());
    faults.extend(dropped.iter().map(|share| ShareFault { index: share.index(), kind: ShareFaultKind::NotAResidue }));
    kept
}

/// What combining `t + 1` shares gave.
enum Checked {
    /// The signature, which verifies.
    Signature(Vec<u8>),
    /// A signature that does not verify: a share is wrong.
    Wrong,
    /// A value (or the message's representative) has no inverse mod `N`.
    NotInvertible,
}

/// Combine the first `needed` candidates; a value without an inverse is dropped as a fault and
/// the combination tried again.
fn combine_first<S: Share>(
    public: &PublicKey,
    x: &BigUint,
    needed: usize,
    candidates: Vec<&S>,
    faults: &mut Vec<ShareFault>,
) -> Result<Option<Vec<u8>>, usize> {
    if candidates.len() < needed {
        return Err(candidates.len());
    }
    match combine_checked(public, x, &candidates[..needed]) {
        Checked::Signature(signature) => Ok(Some(signature)),
        Checked::Wrong => Ok(None),
        Checked::NotInvertible => {
            let candidates = drop_not_invertible(public, candidates, faults);
            if candidates.len() < needed {
                return Err(candidates.len());
            }
            match combine_checked(public, x, &candidates[..needed]) {
                Checked::Signature(signature) => Ok(Some(signature)),
                Checked::Wrong | Checked::NotInvertible => Ok(None),
            }
        }
    }
}

/// Combine exactly `t + 1` shares of distinct indices, and return the signature if it verifies:
/// `w = Π x_j^{2λ_j}` (`λ_j = Δ·λ_{0,j}`), `w^e = x^{4Δ²}`, and with `4Δ²a + eb = 1`,
/// `y = w^a x^b`. `a` is taken non-negative, so `b` is negative; the inverses of `x` and of the
/// values with a negative `λ_j` are made with one inversion. The exponents are public and short
/// (a few bits for `λ_j`, 17 for `a`, `e`): Montgomery arithmetic with the modulus prepared once.
fn combine_checked<S: Share>(public: &PublicKey, x: &BigUint, shares: &[&S]) -> Checked {
    let n = &public.modulus;
    let delta = delta(public.parties());
    let indices: Vec<u32> = shares.iter().map(|share| share.index()).collect();
    let exponents: Vec<BigInt> =
        shares.iter().map(|share| lagrange_times_delta(&delta, &indices, share.index()) << 1).collect();
    let e = BigInt::from(PUBLIC_EXPONENT);
    let e_prime: BigInt = BigInt::from(&delta * &delta) << 2u32;
    let bezout = e_prime.extended_gcd(&e);
    if !bezout.gcd.is_one() {
        return Checked::Wrong;
    }
    let (mut a, mut b) = (bezout.x, bezout.y);
    while a.sign() == Sign::Minus {
        a += &e;
        b -= &e_prime;
    }
    // 4Δ²a + eb = 1 with a ≥ 0 makes b negative.
    assert!(b.sign() == Sign::Minus, "a non-negative a makes b negative");
    // Every value is inverted (which also checks that each has an inverse: the batch costs three
    // multiplications a value), and x.
    let mut to_invert: Vec<&BigUint> = shares.iter().map(|share| share.value()).collect();
    to_invert.push(x);
    let Some(mut inverted) = inverses(&to_invert, n) else { return Checked::NotInvertible };
    let x_inverse = inverted.pop().expect("x was inverted last");
    let montgomery = Montgomery::cached(n);
    let mut w: Option<BoxedMontyForm> = None;
    for ((share, exponent), inverse) in shares.iter().zip(&exponents).zip(inverted) {
        let base = if exponent.sign() == Sign::Minus { inverse } else { share.value().clone() };
        let power = montgomery.pow_public(&montgomery.form(&base), exponent.magnitude());
        w = Some(match w {
            Some(w) => w * power,
            None => power,
        });
    }
    let Some(w) = w else { return Checked::Wrong };
    let y =
        montgomery.pow_public(&w, a.magnitude()) * montgomery.pow_public(&montgomery.form(&x_inverse), b.magnitude());
    let check = montgomery.pow_public(&y, &BigUint::from(PUBLIC_EXPONENT));
    let y = Montgomery::value(&y);
    if Montgomery::value(&check) != *x {
        return Checked::Wrong;
    }
    Checked::Signature(to_fixed_fitting(&y, public.modulus_len()))
}

/// Whether `signature` is a valid RSASSA-PKCS1-v1_5 SHA-256 signature of `message` under the
/// public key `(N, e)`.
pub fn verify_signature(public: &PublicKey, message: &[u8], signature: &[u8]) -> bool {
    if signature.len() != public.modulus_len() {
        return false;
    }
    let y = BigUint::from_bytes_be(signature);
    if y >= public.modulus {
        return false;
    }
    let montgomery = Montgomery::cached(&public.modulus);
    let power = montgomery.pow_public(&montgomery.form(&y), &BigUint::from(PUBLIC_EXPONENT));
    Montgomery::value(&power) == emsa::encode(message, public.modulus_len())
}
