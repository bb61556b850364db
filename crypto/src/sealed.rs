//! Bytes sealed to an X25519 public key (e.g. the decryption shares replicas send to the owner of
//! an event): anonymous, one-shot, authenticated encryption.
//!
//! To seal `plaintext` to the recipient's public key `P`, bound to `associated`:
//!
//! ```text
//! e        ← random X25519 secret,  E = e·G  (32 bytes)
//! shared   = X25519(e, P)           (refused if all zero: P is of low order)
//! key      = SHA-256(tagged(SEALED_KEY, [E, P, shared]))
//! aad      = tagged(SEALED_AAD, [E, associated])
//! sealed   = E (32) ‖ ChaCha20-Poly1305(key, nonce = 12 zero bytes, aad)(plaintext) (|plaintext| + 16)
//! ```
//!
//! where `tagged` is [`crate::tagged`] (each part, the tag first, prefixed by its length as a
//! little-endian `u32`). The key is fresh for every sealing (a new `e` each time), so it encrypts
//! exactly one message and the constant zero nonce is safe. The sender is not authenticated:
//! anyone can seal to `P`; bind what matters (event, sender) in `associated` or inside the
//! plaintext, and authenticate the sender by other means if needed.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::{CryptoRng, RngCore};
use x25519_dalek::{EphemeralSecret, PublicKey, StaticSecret};

use crate::{domain, sha256_tagged, tagged};

/// Length of the ephemeral public key `E` at the head of sealed bytes.
pub const EPHEMERAL_LEN: usize = 32;
/// Length of the AEAD tag at the end of sealed bytes.
pub const TAG_LEN: usize = 16;
/// Bytes that sealing adds to the plaintext: `E` and the tag.
pub const OVERHEAD: usize = EPHEMERAL_LEN + TAG_LEN;

/// Why bytes could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealedError {
    /// The recipient's public key is of low order: the shared secret would be all zero.
    #[error("the recipient's public key is of low order")]
    LowOrderKey,
    /// Too short to hold an ephemeral key and a tag.
    #[error("sealed bytes of length {0} are too short")]
    TooShort(usize),
    /// Wrong key, wrong associated data, or altered bytes.
    #[error("the sealed bytes do not open")]
    DoesNotOpen,
}

/// Seal `plaintext` to the X25519 public key `recipient`, bound to `associated`.
///
/// Fails only if `recipient` is of low order (the shared secret is all zero).
pub fn seal_to(
    recipient: &[u8; 32],
    associated: &[u8],
    plaintext: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, SealedError> {
    let ephemeral = EphemeralSecret::random_from_rng(&mut *rng);
    let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&PublicKey::from(*recipient));
    if !shared.was_contributory() {
        return Err(SealedError::LowOrderKey);
    }
    let cipher = cipher(&ephemeral_public, recipient, shared.as_bytes());
    let aad = tagged(domain::SEALED_AAD, &[&ephemeral_public, associated]);
    let sealed = cipher
        .encrypt(&Nonce::default(), Payload { msg: plaintext, aad: &aad })
        .expect("ChaCha20-Poly1305 encrypts any payload below 256 GiB");
    Ok([&ephemeral_public[..], &sealed].concat())
}

/// Open bytes sealed by [`seal_to`] to the public key of `secret`, with the same `associated`.
pub fn open_sealed(secret: &StaticSecret, associated: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealedError> {
    if sealed.len() < OVERHEAD {
        return Err(SealedError::TooShort(sealed.len()));
    }
    let (ephemeral_public, ciphertext) = sealed.split_at(EPHEMERAL_LEN);
    let ephemeral_public: [u8; EPHEMERAL_LEN] =
        ephemeral_public.try_into().map_err(|_| SealedError::TooShort(sealed.len()))?;
    let shared = secret.diffie_hellman(&PublicKey::from(ephemeral_public));
    if !shared.was_contributory() {
        // A low-order `E` gives a key anyone can compute; such bytes were not made by `seal_to`.
        return Err(SealedError::DoesNotOpen);
    }
    let recipient = PublicKey::from(secret).to_bytes();
    let cipher = cipher(&ephemeral_public, &recipient, shared.as_bytes());
    let aad = tagged(domain::SEALED_AAD, &[&ephemeral_public, associated]);
    cipher.decrypt(&Nonce::default(), Payload { msg: ciphertext, aad: &aad }).map_err(|_| SealedError::DoesNotOpen)
}

/// The one-time AEAD of a sealing: key `SHA-256(tagged(SEALED_KEY, [E, P, shared]))`.
fn cipher(ephemeral_public: &[u8; 32], recipient: &[u8; 32], shared: &[u8; 32]) -> ChaCha20Poly1305 {
    let key = sha256_tagged(domain::SEALED_KEY, &[ephemeral_public, recipient, shared]);
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn setup() -> (rand_chacha::ChaCha20Rng, StaticSecret, [u8; 32]) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let secret = StaticSecret::random_from_rng(&mut rng);
        let public = PublicKey::from(&secret).to_bytes();
        (rng, secret, public)
    }

    #[test]
    fn sealed_bytes_open_with_the_right_secret_and_associated_data() {
        let (mut rng, secret, public) = setup();
        for plaintext in [&b""[..], b"a decryption share", &[7u8; 1000]] {
            let sealed = seal_to(&public, b"event 9", plaintext, &mut rng).expect("seal");
            assert_eq!(sealed.len(), plaintext.len() + OVERHEAD);
            assert_eq!(open_sealed(&secret, b"event 9", &sealed).as_deref(), Ok(plaintext));
        }
        // Two sealings of the same plaintext differ (fresh ephemeral key).
        let a = seal_to(&public, b"", b"same", &mut rng).expect("seal");
        let b = seal_to(&public, b"", b"same", &mut rng).expect("seal");
        assert_ne!(a, b);
    }

    #[test]
    fn sealed_bytes_do_not_open_otherwise() {
        let (mut rng, secret, public) = setup();
        let sealed = seal_to(&public, b"event 9", b"a decryption share", &mut rng).expect("seal");
        let other = StaticSecret::random_from_rng(&mut rng);
        assert_eq!(open_sealed(&other, b"event 9", &sealed), Err(SealedError::DoesNotOpen));
        assert_eq!(open_sealed(&secret, b"event 8", &sealed), Err(SealedError::DoesNotOpen));
        for position in [0, EPHEMERAL_LEN, sealed.len() - 1] {
            let mut flipped = sealed.clone();
            flipped[position] ^= 1;
            assert_eq!(open_sealed(&secret, b"event 9", &flipped), Err(SealedError::DoesNotOpen));
        }
        assert_eq!(open_sealed(&secret, b"event 9", &sealed[..sealed.len() - 1]), Err(SealedError::DoesNotOpen));
        assert_eq!(open_sealed(&secret, b"event 9", &sealed[..OVERHEAD - 1]), Err(SealedError::TooShort(OVERHEAD - 1)));
        assert_eq!(open_sealed(&secret, b"event 9", &[]), Err(SealedError::TooShort(0)));
        // An all-zero (low-order) ephemeral key is refused.
        let mut low = sealed.clone();
        low[..EPHEMERAL_LEN].fill(0);
        assert_eq!(open_sealed(&secret, b"event 9", &low), Err(SealedError::DoesNotOpen));
    }

    #[test]
    fn sealing_to_a_low_order_key_is_refused() {
        let (mut rng, _, _) = setup();
        assert_eq!(seal_to(&[0u8; 32], b"", b"x", &mut rng), Err(SealedError::LowOrderKey));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(seal_to(&one, b"", b"x", &mut rng), Err(SealedError::LowOrderKey));
    }
}
