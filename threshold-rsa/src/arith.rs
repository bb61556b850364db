//! Arithmetic helpers: fixed-width encodings, the constant-time exponentiation with a secret
//! exponent, `Δ = n!` and the integer Lagrange coefficients.

use std::sync::{Arc, Mutex};

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

/// Moduli prepared lately, at most [`PREPARED_MAX`]: preparing one costs about 0.6 ms for 2048
/// bits (a tenth of a share), and a replica signs under one key.
static PREPARED: Mutex<Vec<(BigUint, Arc<Montgomery>)>> = Mutex::new(Vec::new());
const PREPARED_MAX: usize = 4;

impl Montgomery {
    /// `modulus` prepared, from the moduli prepared lately if it is one of them.
    pub(crate) fn cached(modulus: &BigUint) -> Arc<Montgomery> {
        // A poisoned lock only means another thread panicked while holding a cache entry list
        // that is still well formed.
        let mut prepared = PREPARED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, montgomery)) = prepared.iter().find(|(known, _)| known == modulus) {
            return Arc::clone(montgomery);
        }
        let montgomery = Arc::new(Montgomery::new(modulus));
        if prepared.len() >= PREPARED_MAX {
            prepared.remove(0);
        }
        prepared.push((modulus.clone(), Arc::clone(&montgomery)));
        montgomery
    }

    /// `value` (below the modulus) in Montgomery form.
    pub(crate) fn form(&self, value: &BigUint) -> BoxedMontyForm {
        let value = BoxedUint::from_be_slice(&value.to_bytes_be(), self.precision)
            .expect("a residue is below the modulus, so it fits the modulus's precision");
        BoxedMontyForm::new(value, self.params.clone())
    }

    /// `base^exponent` for a public exponent: time depends on the exponent's length.
    pub(crate) fn pow_public(&self, base: &BoxedMontyForm, exponent: &BigUint) -> BoxedMontyForm {
        let bits = u32::try_from(exponent.bits()).expect("public exponents are short");
        let exponent = BoxedUint::from_be_slice(&exponent.to_bytes_be(), bits_precision(u64::from(bits)))
            .expect("the precision was chosen from the exponent's size");
        base.pow_bounded_exp(&exponent, bits)
    }

    /// The integer a Montgomery form stands for.
    pub(crate) fn value(form: &BoxedMontyForm) -> BigUint {
        BigUint::from_bytes_be(&form.retrieve().to_be_bytes())
    }
}

/// The inverses mod `modulus` of `values`, with one inversion for all (Montgomery's trick);
/// `None` if one has none. Variable time: only for public values.
pub(crate) fn inverses(values: &[&BigUint], modulus: &BigUint) -> Option<Vec<BigUint>> {
    let mut prefix = Vec::with_capacity(values.len());
    let mut product = BigUint::one();
    for value in values {
        prefix.push(product.clone());
        product = product * *value % modulus;
    }
    let mut inverse = product.modinv(modulus)?;
    let mut out = vec![BigUint::zero(); values.len()];
    for (at, value) in values.iter().enumerate().rev() {
        out[at] = &inverse * &prefix[at] % modulus;
        inverse = inverse * *value % modulus;
    }
    Some(out)
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
