//! The fixed encodings of the public key, a secret share and a signature share.
//!
//! Every encoding starts with a kind byte and a version byte, then fixed-size big-endian fields;
//! integers mod `N` take exactly `k` bytes (the modulus's length). A decoder reads the header,
//! computes the one length the rest must have, and refuses anything else before allocating.

use num_bigint::BigUint;
use num_integer::Integer;

use crate::arith::to_fixed_fitting;
use crate::key::{PublicKey, SecretShare, MODULUS_BITS_MAX, MODULUS_BITS_MIN, PARTIES_MAX, PUBLIC_EXPONENT};
use crate::share::{response_len, ShareValue, SignatureShare, CHALLENGE_BYTES};

/// Kind byte of an encoded [`PublicKey`].
pub const KIND_PUBLIC_KEY: u8 = 0x01;
/// Kind byte of an encoded [`SecretShare`].
pub const KIND_SECRET_SHARE: u8 = 0x02;
/// Kind byte of an encoded [`SignatureShare`].
pub const KIND_SIGNATURE_SHARE: u8 = 0x03;
/// Kind byte of an encoded [`ShareValue`].
pub const KIND_SHARE_VALUE: u8 = 0x04;
/// The version byte of every encoding.
pub const VERSION: u8 = 0x01;

/// Why bytes are not an encoding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the header, or not the length its header implies.
    #[error("{got} bytes, expected {expected}")]
    Length {
        /// What the header implies (or the header's own length).
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// Another kind of encoding, or another version.
    #[error("kind {kind:#04x} version {version:#04x}, expected kind {expected:#04x} version {VERSION:#04x}")]
    Kind {
        /// The kind byte found.
        kind: u8,
        /// The version byte found.
        version: u8,
        /// The kind byte expected.
        expected: u8,
    },
    /// A field out of its range.
    #[error("{0}")]
    Invalid(String),
}

/// Reads fixed-size fields from a slice whose total length was checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> &'a [u8] {
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        head
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().expect("took 2 bytes"))
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().expect("took 4 bytes"))
    }

    fn integer(&mut self, len: usize) -> BigUint {
        BigUint::from_bytes_be(self.take(len))
    }
}

/// Check the kind and version bytes and that at least `header` bytes are there.
fn header(bytes: &[u8], expected: u8, header: usize) -> Result<Reader<'_>, DecodeError> {
    if bytes.len() < header {
        return Err(DecodeError::Length { expected: header, got: bytes.len() });
    }
    if bytes[0] != expected || bytes[1] != VERSION {
        return Err(DecodeError::Kind { kind: bytes[0], version: bytes[1], expected });
    }
    Ok(Reader { bytes: &bytes[2..] })
}

fn exact(bytes: &[u8], expected: Option<usize>) -> Result<(), DecodeError> {
    match expected {
        Some(expected) if expected == bytes.len() => Ok(()),
        Some(expected) => Err(DecodeError::Length { expected, got: bytes.len() }),
        None => Err(DecodeError::Invalid("the header implies an impossible length".to_string())),
    }
}

/// `k` in bytes, within the modulus sizes allowed.
fn modulus_len(k: u16) -> Result<usize, DecodeError> {
    let k = usize::from(k);
    let (min, max) = (MODULUS_BITS_MIN as usize / 8, MODULUS_BITS_MAX as usize / 8);
    if !(min..=max).contains(&k) {
        return Err(DecodeError::Invalid(format!("modulus length {k} bytes, not in {min}..={max}")));
    }
    Ok(k)
}

fn k_u16(k: usize) -> [u8; 2] {
    u16::try_from(k).expect("moduli are at most 8192 bits").to_be_bytes()
}

/// Public key: `01 01 | k: u16 | e: u32 | n: u32 | t: u32 | N: k | v: k | v_0 … v_{n-1}: k each`.
const PUBLIC_KEY_HEADER: usize = 2 + 2 + 4 + 4 + 4;
/// Secret share: `02 01 | index: u32 | k: u16 | s_i: k`.
const SECRET_SHARE_HEADER: usize = 2 + 4 + 2;
/// Signature share: `03 01 | index: u32 | k: u16 | x_i: k | c: 16 | z: k + 33`.
const SIGNATURE_SHARE_HEADER: usize = 2 + 4 + 2;
/// Share value: `04 01 | index: u32 | k: u16 | x_i: k`.
const SHARE_VALUE_HEADER: usize = 2 + 4 + 2;

/// The index, `k` and `x_i` that begin a signature share or a share value of `public`'s key
/// (their headers have one layout); `rest(k)` is the length of what follows `x_i`.
fn index_and_value<'a>(
    public: &PublicKey,
    bytes: &'a [u8],
    kind: u8,
    rest: impl Fn(usize) -> usize,
) -> Result<(u32, BigUint, Reader<'a>), DecodeError> {
    let mut reader = header(bytes, kind, SIGNATURE_SHARE_HEADER)?;
    let index = reader.u32();
    let k = modulus_len(reader.u16())?;
    if k != public.modulus_len() {
        return Err(DecodeError::Invalid(format!("made for a {k}-byte modulus, not {}", public.modulus_len())));
    }
    exact(bytes, Some(SIGNATURE_SHARE_HEADER + k + rest(k)))?;
    if index >= public.parties() {
        return Err(DecodeError::Invalid(format!("index {index} is not below n = {}", public.parties())));
    }
    let value = reader.integer(k);
    if value == BigUint::ZERO || value >= public.modulus {
        return Err(DecodeError::Invalid("the share is not in 1..N".to_string()));
    }
    Ok((index, value, reader))
}

impl PublicKey {
    /// The encoding (see the crate's documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let k = self.modulus_len();
        let mut out = Vec::with_capacity(PUBLIC_KEY_HEADER + (2 + self.verification_keys.len()) * k);
        out.extend_from_slice(&[KIND_PUBLIC_KEY, VERSION]);
        out.extend_from_slice(&k_u16(k));
        out.extend_from_slice(&PUBLIC_EXPONENT.to_be_bytes());
        out.extend_from_slice(&self.parties().to_be_bytes());
        out.extend_from_slice(&self.threshold.to_be_bytes());
        for value in std::iter::once(&self.modulus).chain(std::iter::once(&self.verification)) {
            out.extend_from_slice(&to_fixed_fitting(value, k));
        }
        for value in &self.verification_keys {
            out.extend_from_slice(&to_fixed_fitting(value, k));
        }
        out
    }

    /// Decode and check a public key: `e` = 65537, `t < n ≤ 1024`, `N` odd of exactly `8k` bits,
    /// `v` and each `v_i` in `1..N`.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, DecodeError> {
        let mut reader = header(bytes, KIND_PUBLIC_KEY, PUBLIC_KEY_HEADER)?;
        let k = modulus_len(reader.u16())?;
        let e = reader.u32();
        let parties = reader.u32();
        let threshold = reader.u32();
        if e != PUBLIC_EXPONENT {
            return Err(DecodeError::Invalid(format!("public exponent {e}, not {PUBLIC_EXPONENT}")));
        }
        if parties == 0 || parties > PARTIES_MAX {
            return Err(DecodeError::Invalid(format!("{parties} parties, not 1..={PARTIES_MAX}")));
        }
        let integers = (parties as usize).checked_add(2);
        exact(bytes, integers.and_then(|count| count.checked_mul(k)?.checked_add(PUBLIC_KEY_HEADER)))?;
        let modulus = reader.integer(k);
        if modulus.bits() != 8 * k as u64 || modulus.is_even() {
            return Err(DecodeError::Invalid("the modulus is even or has a leading zero byte".to_string()));
        }
        let verification = reader.integer(k);
        let verification_keys = (0..parties).map(|_| reader.integer(k)).collect();
        PublicKey::new(modulus, threshold, verification, verification_keys).map_err(DecodeError::Invalid)
    }
}

impl SecretShare {
    /// The encoding, `k` being the modulus's length in bytes. It holds the secret.
    pub fn to_bytes(&self) -> Vec<u8> {
        let k = self.modulus_len;
        let mut out = Vec::with_capacity(SECRET_SHARE_HEADER + k);
        out.extend_from_slice(&[KIND_SECRET_SHARE, VERSION]);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&k_u16(k));
        out.extend_from_slice(&to_fixed_fitting(&self.value, k));
        out
    }

    /// Decode a secret share on its own; [`PublicKey::matches`] checks it against its key. No
    /// error quotes the secret.
    pub fn from_bytes(bytes: &[u8]) -> Result<SecretShare, DecodeError> {
        let mut reader = header(bytes, KIND_SECRET_SHARE, SECRET_SHARE_HEADER)?;
        let index = reader.u32();
        let k = modulus_len(reader.u16())?;
        exact(bytes, Some(SECRET_SHARE_HEADER + k))?;
        if index >= PARTIES_MAX {
            return Err(DecodeError::Invalid(format!("index {index} is not below {PARTIES_MAX}")));
        }
        Ok(SecretShare { index, value: reader.integer(k), modulus_len: k })
    }
}

impl SignatureShare {
    /// The encoding (see the crate's documentation).
    pub fn to_bytes(&self, public: &PublicKey) -> Vec<u8> {
        let k = public.modulus_len();
        let mut out = Vec::with_capacity(SIGNATURE_SHARE_HEADER + k + CHALLENGE_BYTES + response_len(k));
        out.extend_from_slice(&[KIND_SIGNATURE_SHARE, VERSION]);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&k_u16(k));
        out.extend_from_slice(&to_fixed_fitting(&self.value, k));
        out.extend_from_slice(&self.challenge);
        out.extend_from_slice(&to_fixed_fitting(&self.response, response_len(k)));
        out
    }

    /// Decode a signature share made for `public`'s modulus: refused if its `k` is not that
    /// modulus's length, its index is not below `n`, or `x_i` is not in `1..N`. (Its proof is
    /// checked by [`crate::verify_share`] or [`crate::combine`].)
    pub fn from_bytes(public: &PublicKey, bytes: &[u8]) -> Result<SignatureShare, DecodeError> {
        let rest = |k| CHALLENGE_BYTES + response_len(k);
        let (index, value, mut reader) = index_and_value(public, bytes, KIND_SIGNATURE_SHARE, rest)?;
        let challenge = reader.take(CHALLENGE_BYTES).try_into().expect("took CHALLENGE_BYTES bytes");
        let response = reader.integer(response_len(public.modulus_len()));
        Ok(SignatureShare { index, value, challenge, response })
    }
}

impl ShareValue {
    /// The encoding (see the crate's documentation).
    pub fn to_bytes(&self, public: &PublicKey) -> Vec<u8> {
        let k = public.modulus_len();
        let mut out = Vec::with_capacity(SHARE_VALUE_HEADER + k);
        out.extend_from_slice(&[KIND_SHARE_VALUE, VERSION]);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&k_u16(k));
        out.extend_from_slice(&to_fixed_fitting(&self.value, k));
        out
    }

    /// Decode a share value made for `public`'s modulus, refused as [`SignatureShare::from_bytes`]
    /// refuses.
    pub fn from_bytes(public: &PublicKey, bytes: &[u8]) -> Result<ShareValue, DecodeError> {
        let (index, value, _) = index_and_value(public, bytes, KIND_SHARE_VALUE, |_| 0)?;
        Ok(ShareValue { index, value })
    }
}
