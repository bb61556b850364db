//! The interface every service implements: contexts in, outcomes out.

use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};

use crate::tables::{StoreError, Tables};

/// What names a service in a payload: the payload's first four bytes.
///
/// Four bytes, not one, because the first service (the bistro) was ordered before the registry
/// existed and its payloads start with the magic `BST1`: making its magic its id keeps every
/// existing client's payload valid. A new service picks four bytes of its own (its name and a
/// version digit, like `BST1`); changing a service's id is a wire break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId(pub [u8; 4]);

/// The id the host keeps for its own payloads: a replica's *decision notice* ("my core decided
/// instance X with value v", signed by the replica), which the host orders so that every
/// replica applies a decision at the same point of the log (`docs/agreement.md`). No service
/// may register it.
pub const HOST_DECISION_NOTICE: ServiceId = ServiceId(*b"HDC1");

/// Ids no service may take: the host's own payloads.
pub const RESERVED_IDS: [ServiceId; 1] = [HOST_DECISION_NOTICE];

impl std::fmt::Display for ServiceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

/// Where and when an ordered request is applied: equal at every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The epoch of atomic broadcast that ordered it.
    pub epoch: u64,
    /// Its index in the epoch's batch (counting every request, of every service).
    pub index: u32,
    /// The epoch's agreed time, in ms since the Unix epoch: the only clock a service has.
    pub time_ms: u64,
    /// The client that sent it (not authenticated: a service that needs to know who asks checks
    /// a signature in the payload).
    pub client: u64,
    /// The client's id for it.
    pub request: u64,
    /// SHA-256 of the whole payload (with `client` and `request`, what names the request).
    pub payload_digest: [u8; 32],
}

/// An epoch about to be applied: its agreed time, before any of its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: u64,
    /// Its agreed time, in ms since the Unix epoch (never less than the last epoch's).
    pub time_ms: u64,
}

/// Names an agreement instance a service asked for. Chosen by the service (e.g. a hash of a
/// transaction id under its own domain tag); the host scopes it by the service's id, so two
/// services cannot collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(pub [u8; 32]);

/// The decision of an agreement instance a service asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The instance.
    pub instance: InstanceId,
    /// The value decided.
    pub value: bool,
    /// The justification that came with the decided value (what a validated agreement checked),
    /// as the service gave it in its [`Outcome::Agree`] or a peer's vote carried it.
    pub justification: Vec<u8>,
    /// The epoch in which the decision is applied.
    pub epoch: u64,
    /// That epoch's agreed time, in ms since the Unix epoch: the clock of [`Service::decided`].
    pub time_ms: u64,
}

/// A signature scheme other than the epoch certificate's threshold BLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SchemeId {
    /// Shoup's threshold RSA (PKCS#1 v1.5 over SHA-256), as the certification authority signs
    /// X.509 certificates and CRLs.
    ThresholdRsa,
}

/// Why a request was refused, as a gRPC canonical status code (the number is gRPC's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Code {
    /// Malformed or out of bounds, whatever the state.
    InvalidArgument = 3,
    /// No such thing.
    NotFound = 5,
    /// Done already (a replayed request, a name taken).
    AlreadyExists = 6,
    /// A signature that does not verify, or a key that may not do this.
    PermissionDenied = 7,
    /// A bound of the state is reached (too many of something).
    ResourceExhausted = 8,
    /// Not in this state: a deadline passed, or not yet.
    FailedPrecondition = 9,
    /// Lost to a concurrent request (e.g. an agreement decided against it).
    Aborted = 10,
    /// Past a valid range.
    OutOfRange = 11,
    /// The service does not do this.
    Unimplemented = 12,
}

impl Code {
    /// Every code.
    pub const ALL: [Code; 9] = [
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
    ];

    /// gRPC's number for it.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The code with gRPC number `number`, if a service may refuse with it.
    pub fn from_number(number: u8) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.number() == number)
    }
}

/// A refusal: the request changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The status a client gets.
    pub code: Code,
    /// Why, for people (it may quote the state, e.g. the agreed time and the deadline).
    pub reason: String,
}

impl Refusal {
    /// A refusal with `code` and `reason`.
    pub fn new(code: Code, reason: impl Into<String>) -> Refusal {
        Refusal { code, reason: reason.into() }
    }
}

/// What a service made of a request, an epoch's start or a decision: data the host acts on.
///
/// From [`Service::apply`], a `Sign`, `Reply` or `Refuse` answers the request applied; the host
/// answers its waiter once. A `Refuse` stands alone: a refused request's writes and other
/// outcomes are dropped. `Agree` and `ThresholdSign` are work for the host; what they lead to
/// comes back through [`Service::decided`] (whose answering outcomes go to the request that
/// asked for the instance).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A record for this epoch's certificate: the host makes it the service leaf
    /// `(Self::ID, record)` of the epoch's tree (docs/certificate.md), so the bytes signed are the
    /// service's canonical record, framed by the host. The answer a client gets is the record, its
    /// inclusion path and the epoch's certificate: it verifies alone.
    Sign(Vec<u8>),
    /// An answer that needs no signature (the service's encoding).
    Reply(Vec<u8>),
    /// Refused; nothing the request wrote is kept.
    Refuse(Refusal),
    /// Ask for a validated binary agreement on `instance` with this replica's `vote`;
    /// `justification` is what lets the others check the vote (e.g. a signed abort request).
    Agree {
        /// The instance.
        instance: InstanceId,
        /// This replica's vote.
        vote: bool,
        /// Why the vote is valid, checked by the others.
        justification: Vec<u8>,
    },
    /// Ask the replicas to threshold-sign `message` under another scheme (e.g. an X.509
    /// certificate's TBS bytes under threshold RSA). The host routes it to that scheme's signer.
    ThresholdSign {
        /// The scheme.
        scheme: SchemeId,
        /// The bytes to sign.
        message: Vec<u8>,
    },
    /// From `apply` only: this request's answer waits for `instance`, which the service will ask
    /// for later with an [`Outcome::Agree`] (from any of its callbacks, typically the `decided` of
    /// the instance it queued behind). The host records this request as the instance's asker
    /// without starting it; the decision's outcomes answer this request, whoever started it.
    Await {
        /// The instance reserved for this request.
        instance: InstanceId,
    },
}

/// Longest record, reply, justification or message an [`Outcome`] decodes (16 MiB): what the
/// host stores is what a service made, so the bound only keeps a corrupt store from allocating
/// without limit.
pub const OUTCOME_BYTES_MAX: usize = 16 << 20;
/// Longest refusal reason an [`Outcome`] decodes.
pub const REASON_MAX: usize = 4096;

/// The host's encoding of an outcome (it stores each request's outcomes): a tag byte — `Sign` 1,
/// `Reply` 2, `Refuse` 3, `Agree` 4, `ThresholdSign` 5, `Await` 6 — then the fields, byte strings as a
/// 4-byte little-endian length and the bytes.
impl Wire for Outcome {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Outcome::Sign(record) => {
                out.push(1);
                put_bytes(out, record);
            }
            Outcome::Reply(reply) => {
                out.push(2);
                put_bytes(out, reply);
            }
            Outcome::Refuse(refusal) => {
                out.push(3);
                out.push(refusal.code.number());
                put_bytes(out, refusal.reason.as_bytes());
            }
            Outcome::Agree { instance, vote, justification } => {
                out.push(4);
                out.extend_from_slice(&instance.0);
                out.push(u8::from(*vote));
                put_bytes(out, justification);
            }
            Outcome::ThresholdSign { scheme: SchemeId::ThresholdRsa, message } => {
                out.push(5);
                out.push(1);
                put_bytes(out, message);
            }
            Outcome::Await { instance } => {
                out.push(6);
                out.extend_from_slice(&instance.0);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match reader.u8()? {
            1 => Outcome::Sign(reader.bytes(OUTCOME_BYTES_MAX)?.to_vec()),
            2 => Outcome::Reply(reader.bytes(OUTCOME_BYTES_MAX)?.to_vec()),
            3 => {
                let number = reader.u8()?;
                let code =
                    Code::from_number(number).ok_or(DecodeError::Invalid { what: "code", value: number.into() })?;
                let reason = String::from_utf8_lossy(reader.bytes(REASON_MAX)?).into_owned();
                Outcome::Refuse(Refusal { code, reason })
            }
            4 => Outcome::Agree {
                instance: InstanceId(reader.array()?),
                vote: reader.bool()?,
                justification: reader.bytes(OUTCOME_BYTES_MAX)?.to_vec(),
            },
            5 => match reader.u8()? {
                1 => Outcome::ThresholdSign {
                    scheme: SchemeId::ThresholdRsa,
                    message: reader.bytes(OUTCOME_BYTES_MAX)?.to_vec(),
                },
                other => return Err(DecodeError::Invalid { what: "signature scheme", value: other.into() }),
            },
            6 => Outcome::Await { instance: InstanceId(reader.array()?) },
            other => return Err(DecodeError::Invalid { what: "outcome", value: other.into() }),
        })
    }
}

impl Outcome {
    /// A refusal with `code` and `reason`.
    pub fn refuse(code: Code, reason: impl Into<String>) -> Outcome {
        Outcome::Refuse(Refusal::new(code, reason))
    }
}

/// A deterministic service, fed by ordered requests.
///
/// Rules (what lets `t + 1` replicas sign what each computes alone):
/// - **Deterministic**: the same tables, context and request give the same writes and the same
///   outcomes at every replica. No clock but [`Applied::time_ms`], no randomness, no iteration
///   over unordered maps, no I/O.
/// - **All state in its tables**: the methods take `&self`; what the service keeps in `self` is
///   configuration equal at every replica. State outside the tables would be missed by
///   checkpoints and lost on a restart.
/// - **Refusals are data, store failures are errors**: a bad request is an [`Outcome::Refuse`];
///   an `Err` means the store failed and the host stops.
pub trait Service: Send + Sync + 'static {
    /// The payload's first four bytes.
    const ID: ServiceId;
    /// Its name: the namespace of its tables in the store. Lowercase letters and digits only,
    /// so that `name_table` names one table of one service.
    const NAME: &'static str;
    /// The tables it uses (the host refuses any other).
    const TABLES: &'static [&'static str];
    /// Payloads longer than this are refused before decoding.
    const PAYLOAD_MAX: usize;

    /// A decoded request.
    type Request: Send + 'static;
    /// A read-only question.
    type Query;
    /// Its answer.
    type View;

    /// Decode a payload (all of it, [`Service::ID`] included). Called once per ordered payload,
    /// by the registry, on at most [`Service::PAYLOAD_MAX`] bytes; an error becomes a refusal.
    fn decode(&self, payload: &[u8]) -> Result<Self::Request, DecodeError>;

    /// Apply one ordered request.
    fn apply(&self, tables: &mut dyn Tables, at: &Applied, request: Self::Request) -> Result<Vec<Outcome>, StoreError>;

    /// What the epoch's agreed time makes due (deadlines, windows), before its requests: a
    /// request ordered at agreed time `T` sees everything `T` made due.
    fn begin_epoch(&self, tables: &mut dyn Tables, at: &EpochStart) -> Result<Vec<Outcome>, StoreError> {
        let _ = (tables, at);
        Ok(Vec::new())
    }

    /// Whether `justification` makes a vote for 1 in `instance` valid (a validated agreement:
    /// a decided 1 always comes with a justification this accepts). It must be a **pure**
    /// function of its two arguments — typically a signature check against keys in `self` —
    /// since every replica judges the others' votes with it, and a replay of the log or a restore
    /// from a snapshot must judge as the first run did: no tables, no time. The default accepts
    /// nothing (every instance of such a service decides 0).
    fn validate(&self, instance: InstanceId, justification: &[u8]) -> bool {
        let _ = (instance, justification);
        false
    }

    /// The decision of an agreement instance this service asked for, applied at an ordered point:
    /// the host calls it while applying the epoch in which the `t + 1`-th matching decision notice
    /// was ordered, after that epoch's requests, at every replica alike (`docs/service.md`). Its
    /// `Sign` records are leaves of that epoch's certificate; its answering outcomes go to the
    /// request that asked for the instance; an `Agree` asks for another instance for that request.
    fn decided(&self, tables: &mut dyn Tables, decision: &Decision) -> Result<Vec<Outcome>, StoreError> {
        let _ = (tables, decision);
        Ok(Vec::new())
    }

    /// Answer a question from the state (the host passes a read-only view).
    fn query(&self, tables: &dyn Tables, query: Self::Query) -> Result<Self::View, QueryError>;
}

/// Why a query has no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The question is refused (not found, malformed…).
    #[error("{}: {}", .0.code.number(), .0.reason)]
    Refused(Refusal),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_and_bad_bytes_are_refused() {
        let outcomes = [
            Outcome::Sign(vec![1, 2, 3]),
            Outcome::Reply(Vec::new()),
            Outcome::refuse(Code::FailedPrecondition, "the deadline passed"),
            Outcome::Agree { instance: InstanceId([7; 32]), vote: true, justification: vec![9; 70] },
            Outcome::ThresholdSign { scheme: SchemeId::ThresholdRsa, message: b"tbs".to_vec() },
            Outcome::Await { instance: InstanceId([3; 32]) },
        ];
        for outcome in outcomes {
            let bytes = outcome.to_bytes();
            assert_eq!(Outcome::from_bytes(&bytes), Ok(outcome));
            for cut in 0..bytes.len() {
                assert!(Outcome::from_bytes(&bytes[..cut]).is_err(), "{cut} bytes of {bytes:?} decode");
            }
        }
        assert!(Outcome::from_bytes(&[9]).is_err());
        assert!(Outcome::from_bytes(&[3, 99, 0, 0, 0, 0]).is_err(), "no such code");
        assert!(Outcome::from_bytes(&[5, 2, 0, 0, 0, 0]).is_err(), "no such scheme");
    }
}
