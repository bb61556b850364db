//! The keys: the public key with its verification keys, the secret shares, and dealing them.

use std::fmt;

use num_bigint::{BigUint, RandBigInt};
use num_integer::Integer;
use num_traits::{One, Zero};
use rand::{CryptoRng, Rng};

use crate::arith::Montgomery;
use crate::emsa::EMSA_BYTES_MIN;
use crate::prime::{is_safe_prime, safe_prime, SearchProgress};
use crate::DealError;

/// The public exponent `e`: a prime above any number of parties the keys allow.
pub const PUBLIC_EXPONENT: u32 = 65_537;
/// The most parties (`n`) a key is dealt for; `e` must be above it, and `Δ = n!` grows fast.
pub const PARTIES_MAX: u32 = 1024;
/// The shortest modulus, in bits: the EMSA-PKCS1-v1_5 encoding of a SHA-256 digest needs 62
/// bytes, and 512 bits is the smallest common size. Keys this short are for tests only.
pub const MODULUS_BITS_MIN: u64 = 512;
/// The longest modulus, in bits.
pub const MODULUS_BITS_MAX: u64 = 8192;

/// The public key: the RSA public key `(N, e)` and Shoup's verification keys `v` and
/// `v_i = v^{s_i}`, one per party in index order. Any `threshold + 1` signature shares make a
/// signature.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub(crate) modulus: BigUint,
    pub(crate) threshold: u32,
    pub(crate) verification: BigUint,
    pub(crate) verification_keys: Vec<BigUint>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("modulus_bits", &self.modulus.bits())
            .field("parties", &self.parties())
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// Check that the parts make a key: modulus size and oddness, `t < n ≤` [`PARTIES_MAX`],
    /// `v` and every `v_i` in `1..N`.
    pub(crate) fn new(
        modulus: BigUint,
        threshold: u32,
        verification: BigUint,
        verification_keys: Vec<BigUint>,
    ) -> Result<PublicKey, String> {
        let bits = modulus.bits();
        if !(MODULUS_BITS_MIN..=MODULUS_BITS_MAX).contains(&bits) || !bits.is_multiple_of(8) {
            return Err(format!(
                "the modulus has {bits} bits, not a multiple of 8 in {MODULUS_BITS_MIN}..={MODULUS_BITS_MAX}"
            ));
        }
        if modulus.is_even() {
            return Err("the modulus is even".to_string());
        }
        let parties = verification_keys.len();
        if parties == 0 || parties > PARTIES_MAX as usize {
            return Err(format!("{parties} verification keys, not 1..={PARTIES_MAX}"));
        }
        if threshold as usize >= parties {
            return Err(format!("threshold {threshold} is not below the {parties} parties"));
        }
        let in_range = |value: &BigUint| !value.is_zero() && *value < modulus;
        if !in_range(&verification) {
            return Err("the verification key v is not in 1..N".to_string());
        }
        if let Some(index) = verification_keys.iter().position(|key| !in_range(key)) {
            return Err(format!("the verification key of party {index} is not in 1..N"));
        }
        Ok(PublicKey { modulus, threshold, verification, verification_keys })
    }

    /// `N`, big-endian without leading zeros.
    pub fn modulus_bytes(&self) -> Vec<u8> {
        self.modulus.to_bytes_be()
    }

    /// `e`, always [`PUBLIC_EXPONENT`].
    pub fn exponent(&self) -> u32 {
        PUBLIC_EXPONENT
    }

    /// The modulus's length in bytes (`k` of RFC 8017): the length of a signature.
    pub fn modulus_len(&self) -> usize {
        (self.modulus.bits() as usize).div_ceil(8)
    }

    /// `n`: the number of parties holding a share.
    pub fn parties(&self) -> u32 {
        u32::try_from(self.verification_keys.len()).expect("at most PARTIES_MAX parties")
    }

    /// `t`: any `t + 1` signature shares make a signature, `t` reveal nothing.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Whether `share` is party `share.index()`'s share of this key: `v^{s_i} = v_i`.
    pub fn matches(&self, share: &SecretShare) -> bool {
        let Some(expected) = self.verification_keys.get(share.index as usize) else {
            return false;
        };
        share.modulus_len == self.modulus_len()
            && share.value < self.modulus
            && Montgomery::new(&self.modulus).pow_secret(&self.verification, &share.value, self.modulus.bits())
                == *expected
    }
}

/// One party's secret share `s_i = f(i + 1) mod m` of `d`. Its `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretShare {
    pub(crate) index: u32,
    pub(crate) value: BigUint,
    /// `k`: the length in bytes of the modulus it is a share for (its encoding's width).
    pub(crate) modulus_len: usize,
}

impl fmt::Debug for SecretShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretShare").field("index", &self.index).finish_non_exhaustive()
    }
}

impl SecretShare {
    /// The party's index, `0..n`.
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// A dealt key: the public key and one secret share per party, in index order.
#[derive(Clone, Debug)]
pub struct Dealt {
    /// The public key and verification keys.
    pub public: PublicKey,
    /// Party `i`'s share at position `i`.
    pub shares: Vec<SecretShare>,
}

/// Deal a new key of `modulus_bits` bits (even, in `MODULUS_BITS_MIN..=MODULUS_BITS_MAX`) for
/// `parties` parties of which any `threshold + 1` sign: two safe primes are searched for
/// (`progress` is called now and then during the search), then [`deal_with_primes`].
pub fn deal<R: Rng + CryptoRng>(
    modulus_bits: u64,
    parties: u32,
    threshold: u32,
    rng: &mut R,
    progress: &mut dyn FnMut(SearchProgress),
) -> Result<Dealt, DealError> {
    check_sizes(modulus_bits, parties, threshold)?;
    let p = safe_prime(modulus_bits / 2, rng, 1, progress);
    let q = loop {
        let q = safe_prime(modulus_bits / 2, rng, 2, progress);
        if q != p {
            break q;
        }
    };
    deal_with_primes(&p, &q, parties, threshold, rng)
}

fn check_sizes(modulus_bits: u64, parties: u32, threshold: u32) -> Result<(), DealError> {
    if !(MODULUS_BITS_MIN..=MODULUS_BITS_MAX).contains(&modulus_bits) || !modulus_bits.is_multiple_of(16) {
        return Err(DealError::ModulusBits(modulus_bits));
    }
    check_parties(parties, threshold)
}

fn check_parties(parties: u32, threshold: u32) -> Result<(), DealError> {
    if parties == 0 || parties > PARTIES_MAX || threshold >= parties {
        return Err(DealError::Parties { parties, threshold });
    }
    Ok(())
}

/// Deal a key from two given safe primes `p = 2p' + 1` and `q = 2q' + 1` (distinct, of the same
/// size, their product a whole number of bytes): `m = p'q'`, `d = e^{-1} mod m`, a random
/// polynomial `f` of degree `threshold` over `Z_m` with `f(0) = d`, `s_i = f(i + 1)`, `v` a
/// random square of `Z_N^*` and `v_i = v^{s_i}`. Fixed primes make tests fast; production keys
/// come from [`deal`].
pub fn deal_with_primes<R: Rng + CryptoRng>(
    p: &BigUint,
    q: &BigUint,
    parties: u32,
    threshold: u32,
    rng: &mut R,
) -> Result<Dealt, DealError> {
    let modulus = p * q;
    check_parties(parties, threshold)?;
    let bits = modulus.bits();
    if !(MODULUS_BITS_MIN..=MODULUS_BITS_MAX).contains(&bits) {
        return Err(DealError::ModulusBits(bits));
    }
    if p == q || p.bits() != q.bits() || !bits.is_multiple_of(8) {
        return Err(DealError::Primes("p and q must be distinct, of one size, and N a whole number of bytes"));
    }
    if !is_safe_prime(p, rng) || !is_safe_prime(q, rng) {
        return Err(DealError::Primes("p or q is not a safe prime"));
    }
    let m = (p >> 1) * (q >> 1);
    let e = BigUint::from(PUBLIC_EXPONENT);
    let d = e.modinv(&m).ok_or(DealError::Primes("e divides p' or q'"))?;
    let coefficients: Vec<BigUint> =
        std::iter::once(d).chain((0..threshold).map(|_| rng.gen_biguint_below(&m))).collect();
    let modulus_len = (bits as usize).div_ceil(8);
    let shares: Vec<SecretShare> = (0..parties)
        .map(|index| {
            let x = BigUint::from(index) + 1u32;
            // Horner, highest coefficient first.
            let value = coefficients.iter().rev().fold(BigUint::zero(), |acc, c| (acc * &x + c) % &m);
            SecretShare { index, value, modulus_len }
        })
        .collect();
    let verification = loop {
        let r = rng.gen_biguint_below(&modulus);
        let v = (&r * &r) % &modulus;
        if !v.is_one() && v.gcd(&modulus).is_one() {
            break v;
        }
    };
    let montgomery = Montgomery::new(&modulus);
    let verification_keys =
        shares.iter().map(|share| montgomery.pow_secret(&verification, &share.value, modulus.bits())).collect();
    let public = PublicKey::new(modulus, threshold, verification, verification_keys)
        .map_err(|_| DealError::Primes("the primes make a modulus the keys refuse"))?;
    assert!(public.modulus_len() >= EMSA_BYTES_MIN, "MODULUS_BITS_MIN leaves room for the encoding");
    Ok(Dealt { public, shares })
}
