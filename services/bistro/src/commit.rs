//! The encrypted upload (the *commit file*): what a submitter gives an intermediary, and what the
//! owner decrypts.
//!
//! Layout: `"FIDESBC1"` (8) ‖ event id (16) ‖ ticket (8, little-endian) ‖ capsule length (2,
//! little-endian) ‖ capsule ‖ the file encrypted by [`crate::stream`] under a fresh session key,
//! with associated data [`file_associated`]`(cluster, event, ticket)`.
//!
//! The capsule is a labeled threshold encryption of `session key (32) ‖ ticket (8, LE)` to the
//! cluster's encryption key, with label [`capsule_label`]`(cluster, event, ticket)`: replicas
//! release decryption shares only for a capsule valid under the label of the event and ticket it
//! is recorded for, so a capsule copied into another event opens nowhere.

use std::io::{Read, Write};

use blsttc::PublicKey;
use fides_crypto::labeled::LabeledCapsule;
use rand::{CryptoRng, RngCore};

use crate::records::{capsule_label, file_associated, EventId, CAPSULE_MAX};
use crate::stream::{decrypt_stream, encrypt_stream, encrypted_len, Aead, StreamError};

/// The magic that starts a commit file.
pub const COMMIT_MAGIC: &[u8; 8] = b"FIDESBC1";
/// Length of the header before the capsule.
pub const HEADER_LEN: usize = 8 + 16 + 8 + 2;

/// The exact size of a commit file for a file of `size` bytes.
pub fn commit_len(aead: Aead, size: u64, capsule_len: usize) -> u64 {
    (HEADER_LEN as u64 + capsule_len as u64).saturating_add(encrypted_len(aead, size))
}

/// The header of a commit file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitHeader {
    /// The event.
    pub event: EventId,
    /// The ticket.
    pub ticket: u64,
    /// The capsule's bytes.
    pub capsule: Vec<u8>,
}

/// Why a commit file is refused.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a commit file.
    #[error("not a commit file: {0}")]
    Header(String),
    /// The encrypted file does not decrypt.
    #[error("the encrypted file does not decrypt: {0}")]
    Stream(#[from] StreamError),
}

impl CommitHeader {
    /// The header's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.capsule.len());
        out.extend_from_slice(COMMIT_MAGIC);
        out.extend_from_slice(&self.event.0);
        out.extend_from_slice(&self.ticket.to_le_bytes());
        out.extend_from_slice(&(self.capsule.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.capsule);
        out
    }

    /// Read a header from the front of `input`.
    pub fn read(input: &mut impl Read) -> Result<CommitHeader, CommitError> {
        let mut fixed = [0u8; HEADER_LEN];
        input.read_exact(&mut fixed).map_err(|_| CommitError::Header("shorter than its header".into()))?;
        if &fixed[..8] != COMMIT_MAGIC {
            return Err(CommitError::Header("wrong magic".into()));
        }
        let mut event = [0u8; 16];
        event.copy_from_slice(&fixed[8..24]);
        let mut ticket = [0u8; 8];
        ticket.copy_from_slice(&fixed[24..32]);
        let len = u16::from_le_bytes([fixed[32], fixed[33]]) as usize;
        if len == 0 || len > CAPSULE_MAX {
            return Err(CommitError::Header(format!("capsule of {len} bytes")));
        }
        let mut capsule = vec![0u8; len];
        input.read_exact(&mut capsule).map_err(|_| CommitError::Header("the capsule is cut short".into()))?;
        Ok(CommitHeader { event: EventId(event), ticket: u64::from_le_bytes(ticket), capsule })
    }
}

/// Encrypt `input` (a file of the ticket) into a commit file on `output`; returns its size.
#[allow(clippy::too_many_arguments)]
pub fn seal_commit(
    cluster: &[u8; 32],
    encryption: &PublicKey,
    aead: Aead,
    event: &EventId,
    ticket: u64,
    input: impl Read,
    mut output: impl Write,
    rng: &mut (impl RngCore + CryptoRng),
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CommitError> {
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    let mut secret = key.to_vec();
    secret.extend_from_slice(&ticket.to_le_bytes());
    let capsule = LabeledCapsule::encrypt(encryption, &capsule_label(cluster, event, ticket), &secret, rng)
        .map_err(|e| CommitError::Header(format!("cannot make the key capsule: {e}")))?;
    let header = CommitHeader { event: *event, ticket, capsule: capsule.to_bytes() };
    let header = header.to_bytes();
    output.write_all(&header)?;
    let written = encrypt_stream(aead, &key, &file_associated(cluster, event, ticket), input, output, rng, progress)?;
    Ok(header.len() as u64 + written)
}

/// The session key in a capsule's plaintext, if it names `ticket`.
pub fn session_key(plaintext: &[u8], ticket: u64) -> Option<[u8; 32]> {
    if plaintext.len() != 40 || plaintext[32..] != ticket.to_le_bytes() {
        return None;
    }
    plaintext[..32].try_into().ok()
}

/// Decrypt the rest of a commit file (after its header) with the session key.
pub fn open_commit(
    cluster: &[u8; 32],
    header: &CommitHeader,
    key: &[u8; 32],
    input: impl Read,
    output: impl Write,
) -> Result<u64, CommitError> {
    Ok(decrypt_stream(key, &file_associated(cluster, &header.event, header.ticket), input, output)?)
}
