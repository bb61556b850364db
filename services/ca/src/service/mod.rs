//! The certification authority as a service of the host (MAFTIA D5 §3): requests to issue,
//! update and revoke certificates and to sign a serial's status, each mutation confirmed by the
//! holder of the key, decided by one validated binary agreement, and threshold-signed.
//!
//! Rules (`docs/ca.md`, "The service", has the bytes):
//! - before ordering, the client fetches each replica's challenge for its request's digest
//!   ([`request_digest`]) and puts its answers in the payload;
//! - upon an ordered mutation: refuse a reused (client, request id); queue it on its subject (its
//!   key in key-major mode, its name in name-major mode); if it is the head, start it, else
//!   `Await` its instance ([`instance_of`]);
//! - upon starting: check the policy at the agreed time; vote 1 iff the policy accepts and this
//!   replica's own challenge was answered right, with a signed justification ([`validate`] checks
//!   it); ask for the agreement (`Agree`);
//! - upon a decided 1: check the policy again; issue (serial, TBS, `Sign` of the issued record,
//!   `ThresholdSign` of the TBS), replacing the subject's certificates for an update, or revoke;
//!   upon a 0: refuse with the stored policy refusal or "not confirmed"; then start the next
//!   request queued on the subject;
//! - upon an epoch's start: publish a CRL if one is due, at a checkpoint, or if none exists.
//!
//! Deviations from the paper: challenges are fetched before ordering and answered in the
//! payload; the policy is checked again at the decision; retrieval is answered from committed
//! state; a revocation is confirmed by the key's holder.
//!
//! [`validate`]: fides_service::Service::validate
//!
//! - [`request`]: the payloads (`CA01 ‖ kind ‖ body`), the digest a challenge binds and the
//!   agreement instance of a request.
//! - [`challenge`]: each replica's key-confirmation challenge and its check; the client's answer.
//! - [`record`]: the signed records (issued, revoked, status), leaves of the epoch's certificate.
//! - [`config`]: what every replica has alike (cluster, identities, root, mode, policy) and what
//!   is its own (index, identity key).
//! - [`store`]: the tables and their rows; [`query`]: the questions and their answers.

pub mod challenge;
pub mod config;
mod crl;
mod flow;
mod policy;
pub mod query;
pub mod record;
pub mod request;
pub mod store;

#[cfg(test)]
mod tests;

use fides_service::{Applied, Decision, EpochStart, InstanceId, Outcome, QueryError, ServiceId, StoreError, Tables};
use fides_types::codec::DecodeError;

pub use challenge::{answer, confirm_message, low_order, AnswerError, Challenger, KeySecret};
pub use config::{CaConfig, Mode, Own, Policy, DEFAULT_VALIDITY_SECS};
pub use flow::{confirmed_message, serial_of};
pub use query::{CrlEntry, LogEntry, Query, View, LOG_LIST_MAX};
pub use record::{CertificateStatus, IssuedRecord, Record, RevokedRecord, StatusRecord, TBS_BYTES_MAX};
pub use request::{
    instance_of, name_der, name_hash, request_digest, Answer, Binding, Csr, Kind, Mutation, Request, RequestError,
    Token, ANSWERS_MAX, ANSWER_BYTES_MAX, SERVICE_ID,
};
pub use store::{key_hash, CertRow, Place, RequestRow, RequestState, Table};

/// The longest payload the service takes (a CSR is at most 16 KiB).
pub const PAYLOAD_MAX: usize = 32 * 1024;
/// At most this many mutations wait on one subject (key or name); more are refused with
/// `ResourceExhausted`.
pub const QUEUE_MAX: usize = 64;
/// A CRL's nextUpdate is its thisUpdate plus this (a new one comes at the latest at the next
/// checkpoint or within an epoch of a revocation).
pub const CRL_VALIDITY_MS: u64 = 24 * 3600 * 1000;

/// The certification authority's service: the configuration every replica has alike and this
/// replica's own key; its state is in its tables.
#[derive(Debug)]
pub struct Service {
    config: CaConfig,
    own: Option<Own>,
    challenger: Option<Challenger>,
}

impl Service {
    /// The service of a replica with identity `own` (`None`: a replica that only follows, and
    /// votes 0 on everything).
    pub fn new(config: CaConfig, own: Option<Own>) -> Service {
        let challenger = own.as_ref().map(|own| Challenger::new(config.cluster, own.index, &own.identity));
        Service { config, own, challenger }
    }

    /// The configuration.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// This replica's challenger (for the adapter's `GetChallenge`), if it has an identity.
    pub fn challenger(&self) -> Option<&Challenger> {
        self.challenger.as_ref()
    }

    /// This replica's identity, if it may vote 1: its key must be the one the configuration
    /// names for its index, or the others' `validate` would refuse its justifications (then it
    /// votes 0 on everything, like a replica without identity).
    fn voter(&self) -> Option<&Own> {
        self.own.as_ref().filter(|own| {
            self.config.identities.get(own.index as usize) == Some(&own.identity.verifying_key().to_bytes())
        })
    }
}

impl fides_service::Service for Service {
    const ID: ServiceId = ServiceId(SERVICE_ID);
    const NAME: &'static str = "ca";
    const TABLES: &'static [&'static str] = &Table::NAMES;
    const PAYLOAD_MAX: usize = PAYLOAD_MAX;

    /// A request, or why what it says is refused (`InvalidArgument` with the reason); bytes
    /// that do not decode at all are the registry's refusal.
    type Request = Result<Request, RequestError>;
    type Query = Query;
    type View = View;

    fn decode(&self, payload: &[u8]) -> Result<Self::Request, DecodeError> {
        match Request::from_payload(payload) {
            Err(RequestError::Decode(error)) => Err(error),
            other => Ok(other),
        }
    }

    fn apply(&self, tables: &mut dyn Tables, at: &Applied, request: Self::Request) -> Result<Vec<Outcome>, StoreError> {
        match request {
            Err(error) => Ok(vec![Outcome::refuse(fides_service::Code::InvalidArgument, error.to_string())]),
            Ok(Request::Status { serial }) => self.apply_status(tables, at, serial),
            Ok(Request::Mutation { mutation, answers }) => self.apply_mutation(tables, at, mutation, answers),
        }
    }

    fn begin_epoch(&self, tables: &mut dyn Tables, at: &EpochStart) -> Result<Vec<Outcome>, StoreError> {
        self.publish_crl(tables, at)
    }

    /// `index u32 LE ‖ Ed25519 signature` by replica `index`'s identity key over
    /// [`confirmed_message`]: a replica of the cluster says it confirmed the key.
    fn validate(&self, instance: InstanceId, justification: &[u8]) -> bool {
        let Some((index, signature)) = justification.split_first_chunk::<4>() else { return false };
        let Some(identity) = self.config.identities.get(u32::from_le_bytes(*index) as usize) else { return false };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else { return false };
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(identity) else { return false };
        key.verify_strict(&confirmed_message(&self.config.cluster, &instance), &signature).is_ok()
    }

    fn decided(&self, tables: &mut dyn Tables, decision: &Decision) -> Result<Vec<Outcome>, StoreError> {
        self.decide(tables, decision)
    }

    fn query(&self, tables: &dyn Tables, query: Query) -> Result<View, QueryError> {
        query::answer(tables, query)
    }
}

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
