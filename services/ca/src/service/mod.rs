//! The certification authority as a service of the host (MAFTIA D5 §3): requests to issue,
//! update and revoke certificates and to sign a serial's status, each confirmed by the holder of
//! the key, decided by one validated binary agreement per request, and threshold-signed.
//!
//! - [`request`]: the payloads (`CA01 ‖ kind ‖ body`), the digest a challenge binds and the
//!   agreement instance of a request.
//! - [`challenge`]: each replica's key-confirmation challenge and its check; the client's answer.
//! - [`record`]: the signed records (issued, revoked, status), leaves of the epoch's certificate.
//! - [`config`]: what every replica has alike (cluster, identities, root, mode, policy) and what
//!   is its own (index, identity key).
//!
//! See `docs/ca.md`, "The service", for the protocol and the exact bytes.

pub mod challenge;
pub mod config;
pub mod record;
pub mod request;

#[cfg(test)]
mod tests;

pub use challenge::{answer, confirm_message, AnswerError, Challenger, KeySecret};
pub use config::{CaConfig, Mode, Own, Policy, DEFAULT_VALIDITY_SECS};
pub use record::{CertificateStatus, IssuedRecord, Record, RevokedRecord, StatusRecord, TBS_BYTES_MAX};
pub use request::{
    instance_of, name_der, name_hash, request_digest, Answer, Binding, Csr, Kind, Mutation, Request, RequestError,
    Token, ANSWERS_MAX, ANSWER_BYTES_MAX, SERVICE_ID,
};

/// The domain tags of everything the CA hashes or signs (changing one is a wire break).
pub mod domain {
    /// The digest of a request that challenges bind.
    pub const REQUEST: &[u8] = b"fides/v1/ca/request";
    /// A replica's challenge secret, from its identity secret.
    pub const CHALLENGE_SECRET: &[u8] = b"fides/v1/ca/challenge-secret";
    /// A replica's nonce for one request.
    pub const CHALLENGE_NONCE: &[u8] = b"fides/v1/ca/challenge-nonce";
    /// What a signature key signs to answer a challenge.
    pub const KEY_CONFIRMATION: &[u8] = b"fides/v1/ca/key-confirmation";
    /// The ephemeral secret of an X25519 challenge.
    pub const CHALLENGE_EPHEMERAL: &[u8] = b"fides/v1/ca/challenge-ephemeral";
    /// The pad that masks an X25519 challenge's nonce.
    pub const CHALLENGE_PAD: &[u8] = b"fides/v1/ca/challenge-pad";
    /// A replica's justification of its vote for 1: "I confirmed the key of this instance".
    pub const CONFIRMED: &[u8] = b"fides/v1/ca/confirmed";
    /// The agreement instance of a request.
    pub const INSTANCE: &[u8] = b"fides/v1/ca/instance";
    /// A certificate's serial number.
    pub const SERIAL: &[u8] = b"fides/v1/ca/serial";
    /// An administrator's registration token.
    pub const TOKEN: &[u8] = b"fides/v1/ca/token";
}
