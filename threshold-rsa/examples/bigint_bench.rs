//! Measures the share exponentiation of threshold RSA with candidate pure-Rust big-integer
//! crates, then the crate's own operations on a 2048-bit key for n = 4, t = 1, and prints
//! milliseconds per operation. Run it with
//! `cargo run --release -p fides-threshold-rsa --example bigint_bench`.
//!
//! The workload: a 2048-bit odd modulus and an exponent of 2048 + 6 bits, the size of
//! `2Δ·s_i` for n = 4 (`2Δ = 48`); the same with 2048 + 6 + 256 bits, the proof's nonce; and a
//! 1024-bit modulus with a 1023-bit exponent, the Fermat test of safe-prime generation.
//! Operands are fixed pseudo-random numbers (seeded), and the key is dealt from a fixed seed, so
//! every run measures the same thing.

use std::time::Instant;

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams, MontyForm, MontyParams};
use crypto_bigint::{BoxedUint, Odd, Uint};
use num_bigint::BigUint;
use rand::{RngCore, SeedableRng};

const ROUNDS: u32 = 30;

fn random_bytes(rng: &mut rand_chacha::ChaCha20Rng, bits: usize, odd: bool) -> Vec<u8> {
    let mut bytes = vec![0u8; bits.div_ceil(8)];
    rng.fill_bytes(&mut bytes);
    let spare = bytes.len() * 8 - bits;
    bytes[0] &= 0xff >> spare;
    bytes[0] |= 0x80 >> spare;
    if odd {
        let last = bytes.len() - 1;
        bytes[last] |= 1;
    }
    bytes
}

/// This thread's CPU time: on a shared machine it moves less than wall time when other
/// processes compete for the cores.
fn cpu_seconds() -> f64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// Run `f` once to warm up, then `rounds` times; print milliseconds per call (CPU and wall).
fn time_op<T>(name: &str, rounds: u32, f: impl FnMut() -> T) -> T {
    time_cpu(name, rounds, f).0
}

/// [`time_op`], also giving the CPU milliseconds per call.
fn time_cpu<T>(name: &str, rounds: u32, mut f: impl FnMut() -> T) -> (T, f64) {
    let mut out = f();
    let (start, cpu_start) = (Instant::now(), cpu_seconds());
    for _ in 0..rounds {
        out = f();
    }
    let cpu_ms = (cpu_seconds() - cpu_start) * 1000.0 / f64::from(rounds);
    let wall_ms = start.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
    println!("  {name:<46} {cpu_ms:>8.3} ms CPU {wall_ms:>8.3} ms wall");
    (out, cpu_ms)
}

fn time(name: &str, f: impl FnMut() -> Vec<u8>) -> Vec<u8> {
    time_op(name, ROUNDS, f)
}

fn strip(bytes: &[u8]) -> Vec<u8> {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes[first..].to_vec()
}

fn run(modulus_bits: usize, exponent_bits: usize) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let modulus = random_bytes(&mut rng, modulus_bits, true);
    let base = random_bytes(&mut rng, modulus_bits - 1, false);
    let exponent = random_bytes(&mut rng, exponent_bits, false);
    println!("{modulus_bits}-bit modulus, {exponent_bits}-bit exponent ({ROUNDS} rounds each):");

    let (n, b, e) =
        (BigUint::from_bytes_be(&modulus), BigUint::from_bytes_be(&base), BigUint::from_bytes_be(&exponent));
    let reference = time("num-bigint 0.4 BigUint::modpow", || b.modpow(&e, &n).to_bytes_be());

    let big = ibig::UBig::from_be_bytes(&modulus);
    let ring = ibig::modular::ModuloRing::new(&big);
    let (ib, ie) = (ring.from(ibig::UBig::from_be_bytes(&base)), ibig::UBig::from_be_bytes(&exponent));
    let got = time("ibig 0.3 Modulo::pow", || ib.pow(&ie).residue().to_be_bytes());
    assert_eq!(got, reference, "ibig disagrees");

    let precision = (modulus_bits as u32).next_multiple_of(64);
    let exponent_precision = (exponent_bits as u32).next_multiple_of(64);
    let m = BoxedUint::from_be_slice(&modulus, precision).expect("fits");
    let params = BoxedMontyParams::new_vartime(Odd::new(m).expect("odd"));
    let cb = BoxedMontyForm::new(BoxedUint::from_be_slice(&base, precision).expect("fits"), params);
    let ce = BoxedUint::from_be_slice(&exponent, exponent_precision).expect("fits");
    let got = time("crypto-bigint 0.6 BoxedMontyForm::pow", || strip(&cb.pow(&ce).retrieve().to_be_bytes()));
    assert_eq!(got, reference, "crypto-bigint (boxed) disagrees");

    if modulus_bits == 2048 {
        let pad = |bytes: &[u8], len: usize| {
            let mut out = vec![0u8; len - bytes.len()];
            out.extend_from_slice(bytes);
            out
        };
        let m = Uint::<32>::from_be_slice(&pad(&modulus, 256));
        let params = MontyParams::new_vartime(Odd::new(m).expect("odd"));
        let fb = MontyForm::new(&Uint::<32>::from_be_slice(&pad(&base, 256)), params);
        let fe = Uint::<37>::from_be_slice(&pad(&exponent, 296));
        let got = time("crypto-bigint 0.6 MontyForm<U2048>::pow", || strip(&fb.pow(&fe).retrieve().to_be_bytes()));
        assert_eq!(got, reference, "crypto-bigint (fixed) disagrees");
        // What combining does besides exponentiations: an inverse mod N, and a gcd with N.
        let reference = time("num-bigint 0.4 BigUint::modinv", || b.modinv(&n).expect("invertible").to_bytes_be());
        let odd = Odd::new(BoxedUint::from_be_slice(&modulus, precision).expect("fits")).expect("odd");
        let boxed_base = BoxedUint::from_be_slice(&base, precision).expect("fits");
        let got = time("crypto-bigint 0.6 BoxedUint::inv_odd_mod", || {
            strip(&boxed_base.inv_odd_mod(&odd).expect("invertible").to_be_bytes())
        });
        assert_eq!(got, reference, "crypto-bigint's inverse disagrees");
        time("num-integer 0.1 BigUint::gcd", || num_integer::Integer::gcd(&b, &n).to_bytes_be());
    }
}

fn library() {
    use fides_threshold_rsa::{
        combine, combine_values, deal, sign_share, sign_share_value, verify_share, verify_signature,
    };
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2048);
    let start = Instant::now();
    let dealt = deal(2048, 4, 1, &mut rng, &mut |_| {}).expect("valid sizes");
    println!("fides-threshold-rsa, 2048-bit key, n = 4, t = 1 ({ROUNDS} rounds each):");
    println!("  {:<46} {:>8.3} s wall (fixed seed; varies with the seed)", "deal", start.elapsed().as_secs_f64());
    let message = b"the tbs bytes of a certificate";
    let (public, shares) = (&dealt.public, &dealt.shares);
    let (share, proven_ms) = time_cpu("sign_share (x_i and its proof)", ROUNDS, || {
        sign_share(public, &shares[0], message).expect("own share")
    });
    let (_, value_ms) = time_cpu("sign_share_value (x_i alone)", ROUNDS, || {
        sign_share_value(public, &shares[0], message).expect("own share")
    });
    let all: Vec<_> = shares.iter().map(|s| sign_share(public, s, message).expect("own share")).collect();
    let values: Vec<_> = all.iter().map(|share| share.share_value()).collect();
    let (_, combine_values_ms) = time_cpu("combine_values (2 good values)", ROUNDS, || {
        combine_values(public, message, &values[..2]).expect("good values")
    });
    time_op("verify_share (the proof)", ROUNDS, || assert!(verify_share(public, message, &share)));
    let (combined, combine_ms) = time_cpu("combine, optimistic (2 good shares)", ROUNDS, || {
        combine(public, message, &all[..2]).expect("good shares")
    });
    // What one signature costs the whole cluster (n = 4, t = 1), every replica combining.
    println!(
        "  per signature, cluster CPU: every replica a share with its proof {:.1} ms; the t + 1 designated \
         replicas a value each {:.1} ms",
        4.0 * proven_ms + 4.0 * combine_ms,
        2.0 * value_ms + 4.0 * combine_values_ms
    );
    time_op("verify_signature", ROUNDS, || assert!(verify_signature(public, message, &combined.signature)));
    let other = sign_share(public, &shares[0], b"another message").expect("own share");
    let mut bad = all.clone();
    bad[0] = fides_threshold_rsa::SignatureShare::from_bytes(public, &{
        let mut bytes = other.to_bytes(public);
        let good = all[0].to_bytes(public);
        bytes[8 + 256..].copy_from_slice(&good[8 + 256..]);
        bytes
    })
    .expect("well formed");
    time_op("combine, one bad share of 4 (proofs checked)", ROUNDS, || {
        let combined = combine(public, message, &bad).expect("3 good shares");
        assert_eq!(combined.faults.len(), 1);
    });
}

fn main() {
    run(2048, 2048 + 6);
    run(2048, 2048 + 6 + 256);
    run(1024, 1023);
    library();
}
