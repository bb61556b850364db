//! Arithmetic helpers: fixed-width encodings, the constant-time exponentiation with a secret
//! exponent, `Δ = n!` and the integer Lagrange coefficients.

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use num_bigint::{BigInt, BigUint, Sign};
use num_traits::{One, Zero};

/// `value` as exactly `len` big-endian bytes; `None` if it does not fit.
pub(crate) fn to_fixed(value: &BigUint, len: usize) -> Option<Vec<u8>> {
    if value.is_zero() {
        return Some(vec![0; len]);
    }
    let bytes = value.to_bytes_be();
    if bytes.len() > len {
        return None;
    }
    let mut out = vec![0u8; len - bytes.len()];
    out.extend_from_slice(&bytes);
    Some(out)
}

/// [`to_fixed`] for a value known to fit (a residue mod a `len`-byte modulus, or a bounded
/// exponent).
pub(crate) fn to_fixed_fitting(value: &BigUint, len: usize) -> Vec<u8> {
    to_fixed(value, len).expect("the value is below the bound its width was chosen for")
}

/// A modulus prepared for constant-time Montgomery exponentiation.
pub(crate) struct Montgomery {
    params: BoxedMontyParams,
    precision: u32,
}

impl Montgomery {
    /// `modulus` must be odd (an RSA modulus is).
    pub(crate) fn new(modulus: &BigUint) -> Montgomery {
        let precision = bits_precision(modulus.bits());
        let boxed = BoxedUint::from_be_slice(&modulus.to_bytes_be(), precision)
            .expect("the precision was chosen from the modulus's size");
        let odd = Odd::new(boxed).into_option().expect("an RSA modulus is odd");
        Montgomery { params: BoxedMontyParams::new_vartime(odd), precision }
    }

    /// `base^exponent mod N`, in time that depends on `exponent_bits_max` and not on the
    /// exponent's value: for secret exponents (a key share, a proof's nonce). `exponent` must
    /// be below `2^exponent_bits_max`.
    pub(crate) fn pow_secret(&self, base: &BigUint, exponent: &BigUint, exponent_bits_max: u64) -> BigUint {
        debug_assert!(exponent.bits() <= exponent_bits_max, "exponent above its stated bound");
        let base = BoxedUint::from_be_slice(&base.to_bytes_be(), self.precision)
            .expect("a residue is below the modulus, so it fits the modulus's precision");
        let exponent = BoxedUint::from_be_slice(&exponent.to_bytes_be(), bits_precision(exponent_bits_max))
            .expect("the exponent is below its stated bound");
        let result = BoxedMontyForm::new(base, self.params.clone()).pow(&exponent).retrieve();
        BigUint::from_bytes_be(&result.to_be_bytes())
    }
}

fn bits_precision(bits: u64) -> u32 {
    let bits = u32::try_from(bits.max(64)).expect("sizes are bounded far below 2^32 bits");
    bits.next_multiple_of(64)
}

/// `base^exponent mod modulus` for a signed public exponent; `None` if the exponent is negative
/// and `base` has no inverse mod `modulus`. Variable time: only for public values.
pub(crate) fn pow_signed(base: &BigUint, exponent: &BigInt, modulus: &BigUint) -> Option<BigUint> {
    let magnitude = exponent.magnitude();
    if exponent.sign() == Sign::Minus {
        let inverse = base.modinv(modulus)?;
        Some(inverse.modpow(magnitude, modulus))
    } else {
        Some(base.modpow(magnitude, modulus))
    }
}

/// `Δ = n!`.
pub(crate) fn delta(parties: u32) -> BigUint {
    (1..=parties).fold(BigUint::one(), |acc, i| acc * i)
}

/// `Δ · λ_{0,j}` over the points `x_j = index_j + 1` of `indices`: an integer (Shoup, Lemma 1).
pub(crate) fn lagrange_times_delta(delta: &BigUint, indices: &[u32], j: u32) -> BigInt {
    let xj = BigInt::from(j) + 1;
    let mut numerator = BigInt::from(delta.clone());
    let mut denominator = BigInt::one();
    for &other in indices.iter().filter(|&&other| other != j) {
        let xo = BigInt::from(other) + 1;
        numerator *= -&xo;
        denominator *= &xj - &xo;
    }
    let quotient = &numerator / &denominator;
    assert!((&quotient * &denominator) == numerator, "Δ times a Lagrange coefficient is an integer");
    quotient
}

/// Whether `value` is in `1..modulus`.
pub(crate) fn is_residue(value: &BigUint, modulus: &BigUint) -> bool {
    !value.is_zero() && value < modulus
}
