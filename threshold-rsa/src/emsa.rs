//! EMSA-PKCS1-v1_5 with SHA-256 (RFC 8017 §9.2), the message representative that is signed.

use num_bigint::BigUint;
use sha2::{Digest, Sha256};

/// DER of `DigestInfo { AlgorithmIdentifier { id-sha256, NULL }, OCTET STRING (32 bytes) }`
/// without the digest (RFC 8017 §9.2, note 1).
const SHA256_DIGEST_INFO_PREFIX: [u8; 19] =
    [0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20];

/// The shortest encoded message: `T` (19 + 32 bytes) and at least 8 bytes of `0xff` padding and
/// three fixed bytes (RFC 8017 §9.2 step 3).
pub const EMSA_BYTES_MIN: usize = SHA256_DIGEST_INFO_PREFIX.len() + 32 + 11;

/// `EM = 0x00 || 0x01 || PS || 0x00 || T` of `em_len` bytes, as an integer (OS2IP).
/// `em_len` is the modulus's length in bytes and at least [`EMSA_BYTES_MIN`] (checked when a key
/// is made or decoded).
pub(crate) fn encode(message: &[u8], em_len: usize) -> BigUint {
    assert!(em_len >= EMSA_BYTES_MIN, "keys shorter than the encoding are refused before signing");
    let digest = Sha256::digest(message);
    let mut em = vec![0xffu8; em_len];
    em[0] = 0x00;
    em[1] = 0x01;
    let t_start = em_len - SHA256_DIGEST_INFO_PREFIX.len() - digest.len();
    em[t_start - 1] = 0x00;
    em[t_start..t_start + SHA256_DIGEST_INFO_PREFIX.len()].copy_from_slice(&SHA256_DIGEST_INFO_PREFIX);
    em[em_len - digest.len()..].copy_from_slice(&digest);
    BigUint::from_bytes_be(&em)
}
