//! Safe primes `p = 2p' + 1` (`p'` prime), for the modulus.
//!
//! Search: a random odd `p'` of `bits - 1` bits with its top two bits set (so that two such `p`
//! make a modulus of exactly `2·bits` bits), then a window of candidates `p' + 2k` sieved at
//! once by the small primes, for both `p'` and `2p' + 1`; survivors take a base-2 Fermat test on
//! `p'`, then on `p`, then Miller–Rabin rounds with random bases on both. Variable time: the
//! dealer is trusted and runs alone.

use num_bigint::{BigUint, RandBigInt};
use num_integer::Integer;
use num_traits::{One, ToPrimitive, Zero};
use rand::{CryptoRng, Rng};

/// Candidates per sieved window.
const WINDOW: usize = 1 << 14;
/// The small primes sieved by are those below this.
const SIEVE_LIMIT: u32 = 1 << 15;
/// Miller–Rabin rounds with random bases, after the Fermat tests; the error bound `4^-ROUNDS`
/// is far below what FIPS 186-5 asks of random candidates of these sizes.
const MILLER_RABIN_ROUNDS: usize = 32;

/// How a search is going, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchProgress {
    /// Which safe prime is being looked for: 1 or 2.
    pub prime: u8,
    /// Candidates that passed the sieve and were tested so far, for this prime.
    pub tested: u64,
}

pub(crate) fn small_primes() -> Vec<u32> {
    let limit = SIEVE_LIMIT as usize;
    let mut composite = vec![false; limit];
    let mut primes = Vec::new();
    for i in 2..limit {
        if !composite[i] {
            primes.push(i as u32);
            let mut j = i * i;
            while j < limit {
                composite[j] = true;
                j += i;
            }
        }
    }
    primes
}

/// A safe prime of exactly `bits` bits with its top two bits set. `bits` is at least 16.
pub fn safe_prime<R: Rng + CryptoRng>(
    bits: u64,
    rng: &mut R,
    prime_number: u8,
    progress: &mut dyn FnMut(SearchProgress),
) -> BigUint {
    assert!(bits >= 16, "safe primes this small are not searched for");
    let primes = small_primes();
    let mut tested = 0u64;
    loop {
        let start = random_start(bits - 1, rng);
        let survivors = sieve(&start, &primes);
        for k in survivors {
            let q = &start + BigUint::from(2 * k as u64);
            if q.bits() != bits - 1 {
                break;
            }
            tested += 1;
            if tested.is_multiple_of(64) {
                progress(SearchProgress { prime: prime_number, tested });
            }
            let p = (&q << 1) + 1u32;
            if is_safe_prime_pair(&q, &p, rng) {
                progress(SearchProgress { prime: prime_number, tested });
                return p;
            }
        }
    }
}

fn random_start<R: Rng + CryptoRng>(bits: u64, rng: &mut R) -> BigUint {
    let mut q = rng.gen_biguint(bits);
    q.set_bit(bits - 1, true);
    q.set_bit(bits - 2, true);
    q.set_bit(0, true);
    q
}

/// The offsets `k < WINDOW` such that no small prime divides `start + 2k` or `2(start + 2k) + 1`
/// (except a small prime equal to the candidate itself, which only matters for tiny sizes).
fn sieve(start: &BigUint, primes: &[u32]) -> Vec<usize> {
    let mut bad = vec![false; WINDOW];
    for &r in primes.iter().skip(1) {
        let r64 = u64::from(r);
        let rem = (start % r).to_u64().expect("a remainder mod a u32 fits u64");
        // 2k ≡ -rem (mod r) makes r | q; 2k ≡ (r - 1)/2 - rem makes r | 2q + 1.
        let inverse_of_two = r64.div_ceil(2);
        for target in [0, (r64 - 1) / 2] {
            let mut k = ((target + r64 - rem) % r64 * inverse_of_two % r64) as usize;
            while k < WINDOW {
                bad[k] = true;
                k += r as usize;
            }
        }
    }
    (0..WINDOW).filter(|&k| !bad[k]).collect()
}

fn is_safe_prime_pair<R: Rng + CryptoRng>(q: &BigUint, p: &BigUint, rng: &mut R) -> bool {
    let two = BigUint::from(2u32);
    fermat(q, &two) && fermat(p, &two) && miller_rabin(q, MILLER_RABIN_ROUNDS, rng) && miller_rabin(p, 4, rng)
}

fn fermat(candidate: &BigUint, base: &BigUint) -> bool {
    base.modpow(&(candidate - 1u32), candidate).is_one()
}

/// Miller–Rabin with `rounds` random bases; `candidate` is odd and above 3.
pub(crate) fn miller_rabin<R: Rng + CryptoRng>(candidate: &BigUint, rounds: usize, rng: &mut R) -> bool {
    let minus_one = candidate - 1u32;
    let shift = minus_one.trailing_zeros().expect("an odd candidate minus one is non-zero");
    let odd_part = &minus_one >> shift;
    let two = BigUint::from(2u32);
    'rounds: for _ in 0..rounds {
        let base = rng.gen_biguint_range(&two, &minus_one);
        let mut x = base.modpow(&odd_part, candidate);
        if x.is_one() || x == minus_one {
            continue;
        }
        for _ in 1..shift {
            x = (&x * &x) % candidate;
            if x == minus_one {
                continue 'rounds;
            }
        }
        return false;
    }
    true
}

/// Whether `p` is a safe prime (with high probability): for primes given to the dealer rather
/// than searched for.
pub fn is_safe_prime<R: Rng + CryptoRng>(p: &BigUint, rng: &mut R) -> bool {
    if p.bits() < 4 || p.is_even() || (p % 4u32) != BigUint::from(3u32) {
        return false;
    }
    let q: BigUint = p >> 1;
    if q.is_zero() {
        return false;
    }
    let small = small_primes();
    for &r in &small {
        let r = BigUint::from(r);
        if (&q % &r).is_zero() && q != r || (p % &r).is_zero() && *p != r {
            return false;
        }
        if r.pow(2) > *p {
            return true;
        }
    }
    miller_rabin(&q, MILLER_RABIN_ROUNDS, rng) && miller_rabin(p, MILLER_RABIN_ROUNDS, rng)
}
