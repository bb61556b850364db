//! Shoup's threshold RSA ("Practical Threshold Signatures", Eurocrypt 2000): any `t + 1` of `n`
//! parties make a standard RSASSA-PKCS1-v1_5 (SHA-256) signature; `t` of them learn nothing of
//! the key. Sans-IO: no clock, no disk, no thread; signing is deterministic.
//!
//! The scheme (`Δ = n!`, `e` = 65537, a prime above `n`):
//! - **Dealing** ([`deal`], [`deal_with_primes`]): `N = pq` with safe primes `p = 2p' + 1`,
//!   `q = 2q' + 1`; `m = p'q'`; `d = e^{-1} mod m`; `f(X) = d + a_1 X + … + a_t X^t` with `a_j`
//!   uniform in `Z_m`; party `i` (`0..n`) gets `s_i = f(i + 1) mod m`. The verification key `v` is
//!   a random square of `Z_N^*`, and `v_i = v^{s_i}`.
//! - **Signature share** ([`sign_share`]): `x` = EMSA-PKCS1-v1_5(SHA-256, message) as an integer
//!   (RFC 8017 §9.2), `x_i = x^{2Δ s_i}`, and a proof that `log_v v_i = log_{x̃} x_i^2` with
//!   `x̃ = x^{4Δ}`: nonce `r < 2^{|N| + 2·128}`, `c = H'(v, x̃, v_i, x_i^2, v^r, x̃^r)`,
//!   `z = s_i c + r`.
//! - **Proof check** ([`verify_share`]): `c = H'(v, x̃, v_i, x_i^2, v^z v_i^{-c}, x̃^z x_i^{-2c})`.
//! - **Combining** ([`combine`]) a set `S` of `t + 1` shares: `λ_j = Δ·Π_{j'≠j} (0 - x_{j'}) /
//!   (x_j - x_{j'})` (an integer), `w = Π x_j^{2λ_j}`, so `w^e = x^{4Δ²}`; with `4Δ²a + eb = 1`
//!   (extended Euclid), `y = w^a x^b` and `y^e = x`: `y` is the RSA signature.
//! - **Optimistic combining**: the first `t + 1` usable shares are combined and `y^e = x` checked;
//!   only if that fails are all shares' proofs checked, each bad one named as a [`ShareFault`],
//!   and `t + 1` good ones combined.
//! - **Proofs on demand** ([`sign_share_value`], [`combine_values`]): a signer may send `x_i`
//!   alone (a third of the cost) and be asked for its proof only when the values do not combine
//!   to a signature that verifies; [`combine`] of the proven shares then names the bad ones.
//!
//! Encodings ([`wire`]) are fixed-size, and decoding refuses every malformed input with an error.
//!
//! Deviations from the paper:
//! - `H'` is SHA-256 truncated to its first 128 bits (the paper's `L1 = 128`), over a domain tag
//!   and fixed-width encodings of its inputs, plus `N`, the party's index and `k`.
//! - The proof's nonce is derived from the secret share and the message (a hash used as a PRF
//!   keyed by the share) instead of drawn at random, so signing needs no RNG and is
//!   deterministic; the nonce is still unknown to anyone without the share.
//! - The paper checks every share's proof before combining; here proofs are checked only when the
//!   optimistic combination fails to verify (the outcome is the same: a signature that verifies).
//! - The message representative is the standard EMSA-PKCS1-v1_5 encoding rather than a
//!   full-domain hash, so the combined signature is an ordinary RSA signature (the paper's
//!   security proof is in the random-oracle model for a full-domain hash).

#![forbid(unsafe_code)]

mod arith;
mod combine;
mod emsa;
mod key;
mod prime;
mod share;
pub mod wire;

pub use combine::{combine, combine_values, verify_signature, CombineError, Combined, ShareFault, ShareFaultKind};
pub use emsa::EMSA_BYTES_MIN;
pub use key::{
    deal, deal_with_primes, Dealt, PublicKey, SecretShare, MODULUS_BITS_MAX, MODULUS_BITS_MIN, PARTIES_MAX,
    PUBLIC_EXPONENT,
};
pub use prime::{is_safe_prime, safe_prime, SearchProgress};
pub use share::{sign_share, sign_share_value, verify_share, ShareValue, SignatureShare, CHALLENGE_BYTES};
pub use wire::DecodeError;

/// Why a key was not dealt.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DealError {
    /// The modulus size is not a multiple of 16 bits in the allowed range.
    #[error("a {0}-bit modulus: sizes are multiples of 16 in {MODULUS_BITS_MIN}..={MODULUS_BITS_MAX}")]
    ModulusBits(u64),
    /// `n` or `t` is out of range.
    #[error("{parties} parties with threshold {threshold}: need 0 <= t < n <= {PARTIES_MAX}")]
    Parties {
        /// `n`.
        parties: u32,
        /// `t`.
        threshold: u32,
    },
    /// The given primes cannot make a key.
    #[error("{0}")]
    Primes(&'static str),
}

/// Why a share was not signed: the local share does not fit the key (a configuration error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The share's index is not below `n`.
    #[error("share index {index} is not below n = {parties}")]
    IndexOutOfRange {
        /// The share's index.
        index: u32,
        /// `n`.
        parties: u32,
    },
    /// The share cannot be a share of this key.
    #[error("share {index} is not a share of this key")]
    NotOfThisKey {
        /// The share's index.
        index: u32,
    },
}
