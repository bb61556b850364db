//! File encryption for the event owner: a file of any size under a fresh 32-byte session key,
//! encrypted and decrypted in chunks so that a large file never sits in memory; and the file
//! digest with the event's hash algorithm.
//!
//! The construction is STREAM (Hoang, Reyhanitabar, Rogaway, Vizár, "Online
//! Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015): one AEAD key,
//! one nonce per chunk made of a random prefix, the chunk's position and a flag that marks the
//! last chunk. An encrypted file is
//!
//! ```text
//! header = "FIDESEF1" (8) ‖ aead id (1) ‖ chunk length u32 LE (4) ‖ nonce prefix (P)
//! file   = header ‖ chunk 0 ‖ chunk 1 ‖ … ‖ chunk n
//! chunk k = AEAD(key, nonce_k, associated ‖ header, plaintext_k) ‖ tag (16)
//! nonce_k = nonce prefix ‖ k as u32 big-endian ‖ last (1 byte: 1 for chunk n, else 0)
//! ```
//!
//! - The AEAD is AES-256-GCM (id 1, `P` = 7, 12-byte nonces) or XChaCha20-Poly1305 (id 2,
//!   `P` = 19, 24-byte nonces). The nonce prefix is random for each file.
//! - The chunk length is [`CHUNK_LEN`]; a header that names another is refused.
//! - Chunks `0..n` hold exactly [`CHUNK_LEN`] plaintext bytes each; the last chunk `n` holds
//!   fewer, `0..CHUNK_LEN` bytes. So a file of `L` bytes has `n = ⌊L / CHUNK_LEN⌋`: an empty
//!   file is one empty last chunk, and a file of exactly `k · CHUNK_LEN` bytes ends with an
//!   empty last chunk after `k` full ones. Its encrypted size is exactly
//!   `13 + P + L + 16 · (⌊L / CHUNK_LEN⌋ + 1)` ([`encrypted_len`]).
//! - The chunk counter is 32 bits: at most 2³² chunks, i.e. [`MAX_PLAINTEXT_LEN`] bytes.
//! - The associated data of every chunk is the caller's associated data (which names the
//!   context: cluster, event, ticket) followed by the whole header.
//!
//! The receiver reads `CHUNK_LEN + 16` bytes at a time. A full read is a chunk that is not the
//! last; a shorter one (the input ended) is the last chunk. Because the sender's flag is in the
//! nonce, every change is caught: a dropped, repeated or reordered chunk fails at its position,
//! a file cut at a chunk boundary has no last chunk ([`StreamError::Truncated`]), a file cut
//! inside a chunk makes that chunk fail as the last one, and bytes after an empty last chunk
//! are [`StreamError::TrailingData`]. (The format has no length field: bytes appended after a
//! non-empty last chunk run into it, and that chunk fails to authenticate.) A changed header
//! changes the associated data of every chunk, and a chunk copied into another file (another
//! key or prefix) or another context does not open there.
//!
//! Only authenticated plaintext is written, but it is written chunk by chunk: when decryption
//! fails after some chunks, the output already holds their plaintext. A caller must discard the
//! output on any error (write to a temporary file and rename it only on success).

use std::io::{self, Read, Write};
use std::str::FromStr;

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;
use chacha20poly1305::XChaCha20Poly1305;
use rand::{CryptoRng, RngCore};
use sha2::Digest;

/// The magic that starts an encrypted file.
pub const MAGIC: &[u8; 8] = b"FIDESEF1";
/// The plaintext length of every chunk but the last.
pub const CHUNK_LEN: usize = 64 * 1024;
/// The longest plaintext: 2³² chunks, the last one short by at least a byte.
pub const MAX_PLAINTEXT_LEN: u64 = (1u64 << 32) * CHUNK_LEN as u64 - 1;
/// Length of a digest.
pub const DIGEST_LEN: usize = 32;

/// Length of each chunk's AEAD tag.
const TAG_LEN: usize = 16;
/// Length of the header before the nonce prefix: magic, aead id, chunk length.
const FIXED_HEADER_LEN: usize = MAGIC.len() + 1 + 4;
/// Length of the longest nonce (XChaCha20-Poly1305).
const MAX_NONCE_LEN: usize = 24;

/// Why a name is no algorithm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?} (expected {expected})")]
pub struct UnknownName {
    /// What was named: "hash algorithm" or "aead".
    pub kind: &'static str,
    /// The names that are known.
    pub expected: &'static str,
    /// The name given.
    pub name: String,
}

/// The event's hash algorithm for file digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-256 (wire id 1, name "sha256").
    Sha256,
    /// BLAKE3 with 32-byte output (wire id 2, name "blake3").
    Blake3,
}

impl HashAlg {
    /// The wire id.
    pub fn id(self) -> u8 {
        match self {
            HashAlg::Sha256 => 1,
            HashAlg::Blake3 => 2,
        }
    }

    /// The algorithm with wire id `id`.
    pub fn from_id(id: u8) -> Option<HashAlg> {
        match id {
            1 => Some(HashAlg::Sha256),
            2 => Some(HashAlg::Blake3),
            _ => None,
        }
    }

    /// The name in text files and APIs.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha256",
            HashAlg::Blake3 => "blake3",
        }
    }

    /// The length of a digest (32 for both).
    pub fn digest_len(self) -> usize {
        DIGEST_LEN
    }
}

impl FromStr for HashAlg {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<HashAlg, UnknownName> {
        [HashAlg::Sha256, HashAlg::Blake3].into_iter().find(|alg| alg.name() == name).ok_or_else(|| UnknownName {
            kind: "hash algorithm",
            expected: "sha256 or blake3",
            name: name.to_owned(),
        })
    }
}

/// The AEAD for file contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Aead {
    /// AES-256-GCM (wire id 1, name "aes-256-gcm"): 12-byte nonces, 7-byte prefix.
    Aes256Gcm,
    /// XChaCha20-Poly1305 (wire id 2, name "xchacha20-poly1305"): 24-byte nonces, 19-byte prefix.
    XChaCha20Poly1305,
}

impl Aead {
    /// The wire id.
    pub fn id(self) -> u8 {
        match self {
            Aead::Aes256Gcm => 1,
            Aead::XChaCha20Poly1305 => 2,
        }
    }

    /// The AEAD with wire id `id`.
    pub fn from_id(id: u8) -> Option<Aead> {
        match id {
            1 => Some(Aead::Aes256Gcm),
            2 => Some(Aead::XChaCha20Poly1305),
            _ => None,
        }
    }

    /// The name in text files and APIs.
    pub fn name(self) -> &'static str {
        match self {
            Aead::Aes256Gcm => "aes-256-gcm",
            Aead::XChaCha20Poly1305 => "xchacha20-poly1305",
        }
    }

    /// The length of a chunk nonce.
    fn nonce_len(self) -> usize {
        match self {
            Aead::Aes256Gcm => 12,
            Aead::XChaCha20Poly1305 => 24,
        }
    }

    /// The length of the random nonce prefix: the nonce less the counter and the flag.
    fn prefix_len(self) -> usize {
        self.nonce_len() - 5
    }

    /// The length of the header.
    fn header_len(self) -> usize {
        FIXED_HEADER_LEN + self.prefix_len()
    }
}

impl FromStr for Aead {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Aead, UnknownName> {
        [Aead::Aes256Gcm, Aead::XChaCha20Poly1305].into_iter().find(|aead| aead.name() == name).ok_or_else(|| {
            UnknownName { kind: "aead", expected: "aes-256-gcm or xchacha20-poly1305", name: name.to_owned() }
        })
    }
}

/// An incremental file digest.
#[derive(Clone, Debug)]
pub struct Hasher(HasherState);

#[derive(Clone, Debug)]
enum HasherState {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// A digest with `alg` of nothing yet.
    pub fn new(alg: HashAlg) -> Hasher {
        Hasher(match alg {
            HashAlg::Sha256 => HasherState::Sha256(sha2::Sha256::new()),
            HashAlg::Blake3 => HasherState::Blake3(Box::new(blake3::Hasher::new())),
        })
    }

    /// Append `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            HasherState::Sha256(hasher) => hasher.update(bytes),
            HasherState::Blake3(hasher) => {
                hasher.update(bytes);
            }
        }
    }

    /// The digest of everything appended.
    pub fn finalize(self) -> [u8; DIGEST_LEN] {
        match self.0 {
            HasherState::Sha256(hasher) => hasher.finalize().into(),
            HasherState::Blake3(hasher) => *hasher.finalize().as_bytes(),
        }
    }
}

/// The digest with `alg` of everything `reader` holds, and its length in bytes.
pub fn digest_reader(alg: HashAlg, mut reader: impl Read) -> io::Result<([u8; DIGEST_LEN], u64)> {
    let mut hasher = Hasher::new(alg);
    let mut buffer = vec![0u8; CHUNK_LEN];
    let mut total = 0u64;
    loop {
        let n = fill(&mut reader, &mut buffer)?;
        hasher.update(&buffer[..n]);
        total += n as u64;
        if n < buffer.len() {
            return Ok((hasher.finalize(), total));
        }
    }
}

/// Why a stream does not encrypt or decrypt.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the input or writing the output failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The header is not that of an encrypted file this version reads.
    #[error("bad header of the encrypted file: {0}")]
    BadHeader(String),
    /// A chunk does not authenticate: wrong key or associated data, or the file was altered
    /// (a changed, dropped, moved or cut chunk, or a changed header).
    #[error("chunk {index} of the encrypted file does not authenticate (wrong key or context, or altered file)")]
    Chunk {
        /// The position of the chunk, from 0.
        index: u64,
    },
    /// The input ends without a last chunk.
    #[error("the encrypted file is truncated: it ends without its last chunk")]
    Truncated,
    /// Bytes follow the last chunk.
    #[error("the encrypted file has bytes after its last chunk")]
    TrailingData,
    /// The plaintext needs more than 2³² chunks.
    #[error("the file is longer than {MAX_PLAINTEXT_LEN} bytes (2^32 chunks)")]
    TooLong,
}

/// The exact size of the encrypted file for a plaintext of `plaintext_len` bytes (for lengths
/// above [`MAX_PLAINTEXT_LEN`], which do not encrypt, the same formula, saturating).
pub fn encrypted_len(aead: Aead, plaintext_len: u64) -> u64 {
    let chunks = plaintext_len / CHUNK_LEN as u64 + 1;
    (aead.header_len() as u64).saturating_add(plaintext_len).saturating_add(chunks.saturating_mul(TAG_LEN as u64))
}

/// The AEAD an encrypted file names in its first 9 bytes (magic and AEAD id).
pub fn peek_aead(header: &[u8]) -> Result<Aead, StreamError> {
    let Some((magic, rest)) = header.split_first_chunk::<{ MAGIC.len() }>() else {
        return Err(StreamError::BadHeader(format!("{} bytes are too short for a header", header.len())));
    };
    if magic != MAGIC {
        return Err(StreamError::BadHeader(format!("not an encrypted file (magic {})", hex::encode(magic))));
    }
    let Some(&id) = rest.first() else {
        return Err(StreamError::BadHeader(format!("{} bytes are too short for a header", header.len())));
    };
    Aead::from_id(id).ok_or_else(|| StreamError::BadHeader(format!("unknown aead id {id}")))
}

/// Encrypt everything `input` holds under `key` for `associated` with `aead`, writing the
/// encrypted file to `output`; the nonce prefix comes from `rng`. After each chunk, `progress`
/// gets the number of plaintext bytes consumed so far. Returns the number of bytes written,
/// which is [`encrypted_len`] of the number of bytes read.
pub fn encrypt_stream(
    aead: Aead,
    key: &[u8; 32],
    associated: &[u8],
    mut input: impl Read,
    mut output: impl Write,
    rng: &mut (impl RngCore + CryptoRng),
    progress: &mut dyn FnMut(u64),
) -> Result<u64, StreamError> {
    let mut header = Vec::with_capacity(aead.header_len());
    header.extend_from_slice(MAGIC);
    header.push(aead.id());
    header.extend_from_slice(&(CHUNK_LEN as u32).to_le_bytes());
    let mut prefix = vec![0u8; aead.prefix_len()];
    rng.fill_bytes(&mut prefix);
    header.extend_from_slice(&prefix);
    output.write_all(&header)?;

    let cipher = Cipher::new(aead, key);
    let associated = [associated, &header].concat();
    let mut buffer = vec![0u8; CHUNK_LEN];
    let mut written = header.len() as u64;
    let mut consumed = 0u64;
    for index in 0u64.. {
        let n = fill(&mut input, &mut buffer)?;
        let last = n < CHUNK_LEN;
        let nonce = chunk_nonce(&prefix, index, last).ok_or(StreamError::TooLong)?;
        let tag = cipher.seal(&nonce[..aead.nonce_len()], &associated, &mut buffer[..n]);
        output.write_all(&buffer[..n])?;
        output.write_all(&tag)?;
        written += (n + TAG_LEN) as u64;
        consumed += n as u64;
        progress(consumed);
        if last {
            break;
        }
    }
    output.flush()?;
    Ok(written)
}

/// Decrypt an encrypted file from `input` with `key` for `associated`, writing the plaintext to
/// `output` chunk by chunk, each only once it authenticated. Returns the number of plaintext
/// bytes written. On an error, `output` may already hold the plaintext of earlier chunks and
/// must be discarded.
pub fn decrypt_stream(
    key: &[u8; 32],
    associated: &[u8],
    mut input: impl Read,
    mut output: impl Write,
) -> Result<u64, StreamError> {
    let mut fixed = [0u8; FIXED_HEADER_LEN];
    if fill(&mut input, &mut fixed)? < fixed.len() {
        return Err(StreamError::Truncated);
    }
    let aead = peek_aead(&fixed)?;
    let chunk_len = u32::from_le_bytes([fixed[9], fixed[10], fixed[11], fixed[12]]);
    if chunk_len as usize != CHUNK_LEN {
        return Err(StreamError::BadHeader(format!("chunk length {chunk_len}, expected {CHUNK_LEN}")));
    }
    let mut prefix = vec![0u8; aead.prefix_len()];
    if fill(&mut input, &mut prefix)? < prefix.len() {
        return Err(StreamError::Truncated);
    }

    let cipher = Cipher::new(aead, key);
    let associated = [associated, &fixed, &prefix].concat();
    let nonce_len = aead.nonce_len();
    let mut buffer = vec![0u8; CHUNK_LEN + TAG_LEN];
    let mut written = 0u64;
    for index in 0u64.. {
        let n = fill(&mut input, &mut buffer)?;
        if n < TAG_LEN {
            // Cut at a chunk boundary (n = 0) or inside the tag of the next chunk.
            return Err(StreamError::Truncated);
        }
        // A full read is not the last chunk; a short one (the input ended) is.
        let last = n < buffer.len();
        let nonce = chunk_nonce(&prefix, index, last).ok_or(StreamError::TooLong)?;
        let (plaintext, tag) = buffer[..n].split_at_mut(n - TAG_LEN);
        if !cipher.open(&nonce[..nonce_len], &associated, plaintext, tag) {
            // An empty last chunk followed by more bytes: name the trailing bytes.
            let nonce = chunk_nonce(&prefix, index, true).ok_or(StreamError::TooLong)?;
            if cipher.open(&nonce[..nonce_len], &associated, &mut [], &buffer[..TAG_LEN]) {
                return Err(StreamError::TrailingData);
            }
            return Err(StreamError::Chunk { index });
        }
        output.write_all(plaintext)?;
        written += plaintext.len() as u64;
        if last {
            break;
        }
    }
    output.flush()?;
    Ok(written)
}

/// The nonce of chunk `index` (in the first `prefix.len() + 5` bytes), or `None` past 2³² chunks.
fn chunk_nonce(prefix: &[u8], index: u64, last: bool) -> Option<[u8; MAX_NONCE_LEN]> {
    let counter = u32::try_from(index).ok()?;
    let mut nonce = [0u8; MAX_NONCE_LEN];
    nonce[..prefix.len()].copy_from_slice(prefix);
    nonce[prefix.len()..prefix.len() + 4].copy_from_slice(&counter.to_be_bytes());
    nonce[prefix.len() + 4] = u8::from(last);
    Some(nonce)
}

/// Fill `buffer` from `reader` as far as it goes; fewer bytes than `buffer.len()` only at the
/// end of the input.
fn fill(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One file's AEAD under its session key.
enum Cipher {
    Aes(Box<Aes256Gcm>),
    XChaCha(Box<XChaCha20Poly1305>),
}

impl Cipher {
    fn new(aead: Aead, key: &[u8; 32]) -> Cipher {
        let key = GenericArray::from_slice(key);
        match aead {
            Aead::Aes256Gcm => Cipher::Aes(Box::new(Aes256Gcm::new(key))),
            Aead::XChaCha20Poly1305 => Cipher::XChaCha(Box::new(XChaCha20Poly1305::new(key))),
        }
    }

    /// Encrypt `buffer` in place; the tag. `nonce` has the AEAD's nonce length.
    fn seal(&self, nonce: &[u8], associated: &[u8], buffer: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = match self {
            Cipher::Aes(cipher) => {
                cipher.encrypt_in_place_detached(GenericArray::from_slice(nonce), associated, buffer)
            }
            Cipher::XChaCha(cipher) => {
                cipher.encrypt_in_place_detached(GenericArray::from_slice(nonce), associated, buffer)
            }
        };
        tag.expect("both AEADs encrypt a chunk of 64 KiB with any associated data below 2^36 bytes").into()
    }

    /// Decrypt `buffer` in place if `tag` authenticates it; else leave it as it was.
    fn open(&self, nonce: &[u8], associated: &[u8], buffer: &mut [u8], tag: &[u8]) -> bool {
        let tag = GenericArray::from_slice(tag);
        match self {
            Cipher::Aes(cipher) => {
                cipher.decrypt_in_place_detached(GenericArray::from_slice(nonce), associated, buffer, tag)
            }
            Cipher::XChaCha(cipher) => {
                cipher.decrypt_in_place_detached(GenericArray::from_slice(nonce), associated, buffer, tag)
            }
        }
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const AD: &[u8] = b"cluster, event 5, ticket 9";
    const KEY: [u8; 32] = [0x42; 32];
    const SIZES: [usize; 6] = [0, 1, CHUNK_LEN - 1, CHUNK_LEN, CHUNK_LEN + 1, 3 * CHUNK_LEN + 5];

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut bytes);
        bytes
    }

    fn encrypt(aead: Aead, plaintext: &[u8]) -> Vec<u8> {
        let mut rng = ChaCha20Rng::seed_from_u64(plaintext.len() as u64);
        let mut out = Vec::new();
        let written = encrypt_stream(aead, &KEY, AD, plaintext, &mut out, &mut rng, &mut |_| {}).expect("encrypts");
        assert_eq!(written, out.len() as u64);
        out
    }

    fn decrypt(file: &[u8]) -> Result<Vec<u8>, StreamError> {
        decrypt_with(&KEY, AD, file)
    }

    fn decrypt_with(key: &[u8; 32], associated: &[u8], file: &[u8]) -> Result<Vec<u8>, StreamError> {
        let mut out = Vec::new();
        let n = decrypt_stream(key, associated, file, &mut out)?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    /// The byte range of chunk `index` in an encrypted file.
    fn chunk_range(aead: Aead, file_len: usize, index: usize) -> std::ops::Range<usize> {
        let start = aead.header_len() + index * (CHUNK_LEN + TAG_LEN);
        start..(start + CHUNK_LEN + TAG_LEN).min(file_len)
    }

    /// A reader that hands out at most a few bytes per call.
    struct Dribble<'a>(&'a [u8], usize);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = self.1 % 7 + 1;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn files_of_every_size_round_trip_with_the_predicted_length() {
        for aead in [Aead::Aes256Gcm, Aead::XChaCha20Poly1305] {
            for size in SIZES {
                let plaintext = random_bytes(size, 1);
                let file = encrypt(aead, &plaintext);
                assert_eq!(file.len() as u64, encrypted_len(aead, size as u64), "{aead:?} {size}");
                assert_eq!(&file[..8], MAGIC);
                assert_eq!(peek_aead(&file).expect("header"), aead);
                assert_eq!(decrypt(&file).expect("decrypts"), plaintext, "{aead:?} {size}");
            }
        }
        assert_eq!(encrypted_len(Aead::Aes256Gcm, 0), 20 + 16);
        assert_eq!(encrypted_len(Aead::XChaCha20Poly1305, CHUNK_LEN as u64), 32 + CHUNK_LEN as u64 + 32);
        assert_eq!(encrypted_len(Aead::XChaCha20Poly1305, u64::MAX), u64::MAX);
    }

    #[test]
    fn short_reads_change_nothing() {
        let plaintext = random_bytes(2 * CHUNK_LEN + 3, 2);
        let file = encrypt(Aead::XChaCha20Poly1305, &plaintext);
        let mut rng = ChaCha20Rng::seed_from_u64(plaintext.len() as u64);
        let mut dribbled = Vec::new();
        encrypt_stream(Aead::XChaCha20Poly1305, &KEY, AD, Dribble(&plaintext, 0), &mut dribbled, &mut rng, &mut |_| {})
            .expect("encrypts");
        assert_eq!(dribbled, file);
        let mut out = Vec::new();
        decrypt_stream(&KEY, AD, Dribble(&file, 0), &mut out).expect("decrypts");
        assert_eq!(out, plaintext);
    }

    #[test]
    fn progress_reaches_the_file_length() {
        for size in SIZES {
            let plaintext = random_bytes(size, 3);
            let mut seen = Vec::new();
            let mut rng = ChaCha20Rng::seed_from_u64(3);
            encrypt_stream(Aead::Aes256Gcm, &KEY, AD, &plaintext[..], io::sink(), &mut rng, &mut |n| seen.push(n))
                .expect("encrypts");
            assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
            assert_eq!(seen.last().copied(), Some(size as u64));
        }
    }

    #[test]
    fn wrong_key_or_context_fails_at_the_first_chunk() {
        for aead in [Aead::Aes256Gcm, Aead::XChaCha20Poly1305] {
            let file = encrypt(aead, &random_bytes(CHUNK_LEN + 1, 4));
            assert!(matches!(decrypt_with(&[0x43; 32], AD, &file), Err(StreamError::Chunk { index: 0 })));
            assert!(matches!(decrypt_with(&KEY, b"another ticket", &file), Err(StreamError::Chunk { index: 0 })));
        }
    }

    #[test]
    fn cut_files_are_truncated() {
        for aead in [Aead::Aes256Gcm, Aead::XChaCha20Poly1305] {
            let file = encrypt(aead, &random_bytes(3 * CHUNK_LEN + 5, 5));
            // At each chunk boundary, and inside the header.
            for boundary in [0, 1, 2, 3] {
                let cut = chunk_range(aead, file.len(), boundary).start;
                assert!(matches!(decrypt(&file[..cut]), Err(StreamError::Truncated)), "{aead:?} {boundary}");
            }
            assert!(matches!(decrypt(&file[..5]), Err(StreamError::Truncated)));
            assert!(matches!(decrypt(&file[..aead.header_len() - 1]), Err(StreamError::Truncated)));
            // Inside the last chunk, or inside a full one: it fails as the last chunk.
            assert!(matches!(decrypt(&file[..file.len() - 1]), Err(StreamError::Chunk { index: 3 })));
            assert!(matches!(decrypt(&file[..file.len() - 30]), Err(StreamError::Chunk { index: 2 })));
            // A file of full chunks cut before its empty last chunk.
            let file = encrypt(aead, &random_bytes(2 * CHUNK_LEN, 5));
            assert!(matches!(decrypt(&file[..file.len() - TAG_LEN]), Err(StreamError::Truncated)));
        }
    }

    #[test]
    fn appended_bytes_are_refused() {
        for aead in [Aead::Aes256Gcm, Aead::XChaCha20Poly1305] {
            // After an empty last chunk: trailing data, whether a whole chunk or a byte.
            for size in [0, CHUNK_LEN, 2 * CHUNK_LEN] {
                let file = encrypt(aead, &random_bytes(size, 6));
                let first = file[chunk_range(aead, file.len(), 0)].to_vec();
                for extra in [&first[..], &[0u8][..]] {
                    let longer = [&file[..], extra].concat();
                    assert!(matches!(decrypt(&longer), Err(StreamError::TrailingData)), "{aead:?} {size}");
                }
            }
            // After a short last chunk the bytes run into it.
            let file = encrypt(aead, &random_bytes(CHUNK_LEN + 1, 6));
            let first = file[chunk_range(aead, file.len(), 0)].to_vec();
            assert!(matches!(decrypt(&[&file[..], &first].concat()), Err(StreamError::Chunk { index: 1 })));
        }
    }

    #[test]
    fn swapped_dropped_and_repeated_chunks_fail() {
        for aead in [Aead::Aes256Gcm, Aead::XChaCha20Poly1305] {
            let file = encrypt(aead, &random_bytes(3 * CHUNK_LEN + 5, 7));
            let header = &file[..aead.header_len()];
            let chunk = |i| &file[chunk_range(aead, file.len(), i)];
            let swapped = [header, chunk(1), chunk(0), chunk(2), chunk(3)].concat();
            assert!(matches!(decrypt(&swapped), Err(StreamError::Chunk { index: 0 })));
            let swapped = [header, chunk(0), chunk(2), chunk(1), chunk(3)].concat();
            assert!(matches!(decrypt(&swapped), Err(StreamError::Chunk { index: 1 })));
            let dropped = [header, chunk(0), chunk(2), chunk(3)].concat();
            assert!(matches!(decrypt(&dropped), Err(StreamError::Chunk { index: 1 })));
            let repeated = [header, chunk(0), chunk(1), chunk(1), chunk(2), chunk(3)].concat();
            assert!(matches!(decrypt(&repeated), Err(StreamError::Chunk { index: 2 })));
            // A chunk of another file under the same key and context.
            let other = encrypt(aead, &random_bytes(3 * CHUNK_LEN + 6, 7));
            let moved = [header, chunk(0), &other[chunk_range(aead, other.len(), 1)], chunk(2), chunk(3)].concat();
            assert!(matches!(decrypt(&moved), Err(StreamError::Chunk { index: 1 })));
        }
    }

    #[test]
    fn flipped_bits_fail() {
        for aead in [Aead::Aes256Gcm, Aead::XChaCha20Poly1305] {
            let file = encrypt(aead, &random_bytes(2 * CHUNK_LEN + 5, 8));
            let flipped = |at: usize| {
                let mut copy = file.clone();
                copy[at] ^= 0x10;
                decrypt(&copy)
            };
            assert!(matches!(flipped(0), Err(StreamError::BadHeader(_))), "magic");
            assert!(matches!(flipped(8), Err(StreamError::BadHeader(_))), "aead id");
            assert!(matches!(flipped(10), Err(StreamError::BadHeader(_))), "chunk length");
            assert!(matches!(flipped(aead.header_len() - 1), Err(StreamError::Chunk { index: 0 })), "prefix");
            let body = chunk_range(aead, file.len(), 1).start + 100;
            assert!(matches!(flipped(body), Err(StreamError::Chunk { index: 1 })), "body");
            let tag = chunk_range(aead, file.len(), 1).end - 1;
            assert!(matches!(flipped(tag), Err(StreamError::Chunk { index: 1 })), "tag");
            assert!(matches!(flipped(file.len() - 1), Err(StreamError::Chunk { index: 2 })), "last tag");
        }
    }

    #[test]
    fn headers_are_checked() {
        assert!(matches!(peek_aead(b"FIDESEF"), Err(StreamError::BadHeader(_))));
        assert!(matches!(peek_aead(b"FIDESEF1"), Err(StreamError::BadHeader(_))));
        assert!(matches!(peek_aead(b"FIDESEF1\x03"), Err(StreamError::BadHeader(_))));
        assert!(matches!(peek_aead(b"FIDESBC1\x01"), Err(StreamError::BadHeader(_))));
        assert_eq!(peek_aead(b"FIDESEF1\x01").expect("aes"), Aead::Aes256Gcm);
        assert_eq!(peek_aead(b"FIDESEF1\x02").expect("xchacha"), Aead::XChaCha20Poly1305);
        let mut file = encrypt(Aead::Aes256Gcm, b"hello");
        file[9..13].copy_from_slice(&(CHUNK_LEN as u32 * 2).to_le_bytes());
        assert!(matches!(decrypt(&file), Err(StreamError::BadHeader(message)) if message.contains("chunk length")));
    }

    #[test]
    fn chunk_counter_stops_at_two_to_the_32() {
        let prefix = [7u8; 7];
        let nonce = chunk_nonce(&prefix, u64::from(u32::MAX), true).expect("the last possible chunk");
        assert_eq!(&nonce[..12], &[7, 7, 7, 7, 7, 7, 7, 0xff, 0xff, 0xff, 0xff, 1]);
        assert_eq!(chunk_nonce(&prefix, 1 << 32, true), None);
        assert_eq!(&chunk_nonce(&prefix, 258, false).expect("nonce")[7..12], &[0, 0, 1, 2, 0]);
    }

    #[test]
    fn names_and_ids_round_trip() {
        for alg in [HashAlg::Sha256, HashAlg::Blake3] {
            assert_eq!(HashAlg::from_id(alg.id()), Some(alg));
            assert_eq!(alg.name().parse::<HashAlg>(), Ok(alg));
            assert_eq!(alg.digest_len(), 32);
        }
        for aead in [Aead::Aes256Gcm, Aead::XChaCha20Poly1305] {
            assert_eq!(Aead::from_id(aead.id()), Some(aead));
            assert_eq!(aead.name().parse::<Aead>(), Ok(aead));
        }
        assert_eq!((HashAlg::Sha256.id(), HashAlg::Blake3.id()), (1, 2));
        assert_eq!((Aead::Aes256Gcm.id(), Aead::XChaCha20Poly1305.id()), (1, 2));
        assert_eq!(HashAlg::from_id(0), None);
        assert_eq!(Aead::from_id(3), None);
        assert!("md5".parse::<HashAlg>().is_err());
        assert!("AES-256-GCM".parse::<Aead>().is_err());
    }

    #[test]
    fn digests_match_the_one_shot_hashes() {
        for size in SIZES {
            let bytes = random_bytes(size, 9);
            let (digest, len) = digest_reader(HashAlg::Sha256, &bytes[..]).expect("reads");
            assert_eq!((digest, len), (<[u8; 32]>::from(sha2::Sha256::digest(&bytes)), size as u64));
            let (digest, len) = digest_reader(HashAlg::Blake3, Dribble(&bytes, 0)).expect("reads");
            assert_eq!((digest, len), (*blake3::hash(&bytes).as_bytes(), size as u64));
            let mut hasher = Hasher::new(HashAlg::Blake3);
            for part in bytes.chunks(1000) {
                hasher.update(part);
            }
            assert_eq!(hasher.finalize(), *blake3::hash(&bytes).as_bytes());
        }
    }
}
