//! The canonical records of the bistro: what clients ask (the payloads that get ordered), what
//! the cluster signs (event records, tickets, status records) and what intermediaries sign
//! (receipts). Every record has one binary encoding ([`Wire`]); signatures cover
//! `tagged(domain, [cluster id, encoding])`, so a record of one cluster or kind never verifies as
//! another.

use ed25519_dalek::{Signature as EdSignature, Signer, SigningKey, VerifyingKey};
use fides_crypto::tagged;
use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};

use crate::stream::{Aead, HashAlg};

/// Domain tags of the bistro's signed and hashed messages.
pub mod domain {
    /// An owner's request to create an event.
    pub const CREATE: &[u8] = b"fides/v1/bistro-create";
    /// An event id: derived from where the creating request was ordered.
    pub const EVENT_ID: &[u8] = b"fides/v1/bistro-event-id";
    /// A relay's registration.
    pub const RELAY: &[u8] = b"fides/v1/bistro-relay";
    /// An intermediary's receipt.
    pub const RECEIPT: &[u8] = b"fides/v1/bistro-receipt";
    /// A replica's statement that it holds a submission.
    pub const STORED: &[u8] = b"fides/v1/bistro-stored";
    /// A replica's confirmation to an intermediary that it holds a submission.
    pub const CONFIRM: &[u8] = b"fides/v1/bistro-confirm";
    /// An owner's request to collect an event's submissions.
    pub const COLLECT: &[u8] = b"fides/v1/bistro-collect";
    /// The label a submission's key capsule is bound to.
    pub const CAPSULE_LABEL: &[u8] = b"fides/v1/bistro-capsule";
    /// The associated data of a submission's encrypted file.
    pub const FILE_AD: &[u8] = b"fides/v1/bistro-file";
    /// The associated data of decryption shares sealed to an owner.
    pub const SHARES_AD: &[u8] = b"fides/v1/bistro-shares";
    /// A leaf of an epoch's Merkle tree (a signed record).
    pub const LEAF: &[u8] = b"fides/v1/bistro-leaf";
    /// An inner node of that tree.
    pub const NODE: &[u8] = b"fides/v1/bistro-node";
    /// The message the cluster signs for an epoch: its tree's root.
    pub const ROOT: &[u8] = b"fides/v1/bistro-root";
}

/// The magic that starts every bistro request payload.
pub const MAGIC: &[u8; 4] = b"BST1";
/// Longest description of an event.
pub const DESCRIPTION_MAX: usize = 1024;
/// Longest contact (e-mail address) or file name.
pub const FIELD_MAX: usize = 256;
/// Length of a file digest.
pub const DIGEST_LEN: usize = 32;
/// Longest key capsule.
pub const CAPSULE_MAX: usize = 256;
/// Most tickets one status request may ask about.
pub const STATUS_TICKETS_MAX: usize = 64;

/// An upload event's id: 16 bytes, shown as 32 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    /// The id of the event created by the request at `index` of `epoch`'s batch.
    pub fn derive(cluster: &[u8; 32], epoch: u64, index: u32) -> EventId {
        let hash =
            fides_crypto::sha256_tagged(domain::EVENT_ID, &[cluster, &epoch.to_le_bytes(), &index.to_le_bytes()]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash[..16]);
        EventId(id)
    }

    /// Parse 32 hex digits.
    pub fn parse(text: &str) -> Result<EventId, String> {
        let bytes = hex::decode(text.trim()).map_err(|_| format!("event id {text:?} is not hex"))?;
        let id: [u8; 16] =
            bytes.try_into().map_err(|_| format!("event id {text:?} is not 32 hex digits (16 bytes)"))?;
        Ok(EventId(id))
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_bytes(out, text.as_bytes());
}

fn read_str(reader: &mut Reader<'_>, max: usize, what: &'static str) -> Result<String, DecodeError> {
    let bytes = reader.bytes(max)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Invalid { what, value: 0 })
}

fn read_hash(reader: &mut Reader<'_>) -> Result<HashAlg, DecodeError> {
    let id = reader.u8()?;
    HashAlg::from_id(id).ok_or(DecodeError::Invalid { what: "hash algorithm", value: u64::from(id) })
}

fn read_aead(reader: &mut Reader<'_>) -> Result<Aead, DecodeError> {
    let id = reader.u8()?;
    Aead::from_id(id).ok_or(DecodeError::Invalid { what: "aead", value: u64::from(id) })
}

/// Sign `tagged(tag, [cluster, body])` with Ed25519.
pub fn ed_sign(key: &SigningKey, tag: &[u8], cluster: &[u8; 32], body: &[u8]) -> [u8; 64] {
    key.sign(&tagged(tag, &[cluster, body])).to_bytes()
}

/// Whether `signature` is `key`'s Ed25519 signature on `tagged(tag, [cluster, body])`.
pub fn ed_verify(key: &[u8; 32], tag: &[u8], cluster: &[u8; 32], body: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(key) else { return false };
    key.verify_strict(&tagged(tag, &[cluster, body]), &EdSignature::from_bytes(signature)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// The terms of a new event, signed by its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTerms {
    /// Tickets are issued while the agreed time is at most this (ms since the Unix epoch).
    pub deadline_ms: u64,
    /// What the event is, for people.
    pub description: String,
    /// The owner's Ed25519 key: it alone may collect.
    pub owner: [u8; 32],
    /// The hash of submitted files.
    pub hash: HashAlg,
    /// The AEAD of submitted files.
    pub aead: Aead,
    /// How long after the deadline intermediaries have to deliver (ms); an upload not stored by
    /// `t + 1` replicas by then is overdue and counted against the intermediaries that hold it.
    pub transfer_window_ms: u64,
    /// Makes two otherwise equal requests distinct.
    pub nonce: u64,
}

impl Wire for EventTerms {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.deadline_ms.to_le_bytes());
        put_str(out, &self.description);
        out.extend_from_slice(&self.owner);
        out.push(self.hash.id());
        out.push(self.aead.id());
        out.extend_from_slice(&self.transfer_window_ms.to_le_bytes());
        out.extend_from_slice(&self.nonce.to_le_bytes());
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(EventTerms {
            deadline_ms: reader.u64()?,
            description: read_str(reader, DESCRIPTION_MAX, "description")?,
            owner: reader.array()?,
            hash: read_hash(reader)?,
            aead: read_aead(reader)?,
            transfer_window_ms: reader.u64()?,
            nonce: reader.u64()?,
        })
    }
}

/// A client's request for a ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketRequest {
    /// The event.
    pub event: EventId,
    /// The file's digest under the event's hash.
    pub digest: Vec<u8>,
    /// The file's size in bytes.
    pub size: u64,
    /// Where the submitter is told about the submission (an e-mail address).
    pub contact: String,
    /// The file's name, if the submitter gives it.
    pub file_name: String,
}

impl Wire for TicketRequest {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.event.0);
        put_bytes(out, &self.digest);
        out.extend_from_slice(&self.size.to_le_bytes());
        put_str(out, &self.contact);
        put_str(out, &self.file_name);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(TicketRequest {
            event: EventId(reader.array()?),
            // Longer than a digest is refused by decoding; a wrong length by the service, with a reason.
            digest: reader.bytes(64)?.to_vec(),
            size: reader.u64()?,
            contact: read_str(reader, FIELD_MAX, "contact")?,
            file_name: read_str(reader, FIELD_MAX, "file name")?,
        })
    }
}

/// A relay's registration with the cluster, signed by the relay's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRegistration {
    /// The relay's Ed25519 key: it signs the relay's receipts.
    pub key: [u8; 32],
    /// Where replicas reach it (`host:port`).
    pub address: String,
    /// Higher than the relay's previous registration (a replayed old one changes nothing).
    pub seq: u64,
}

impl Wire for RelayRegistration {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key);
        put_str(out, &self.address);
        out.extend_from_slice(&self.seq.to_le_bytes());
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(RelayRegistration {
            key: reader.array()?,
            address: read_str(reader, FIELD_MAX, "address")?,
            seq: reader.u64()?,
        })
    }
}

/// What an intermediary signs when it takes an encrypted upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The event.
    pub event: EventId,
    /// The ticket the upload belongs to.
    pub ticket: u64,
    /// SHA-256 of the encrypted upload (the whole commit file).
    pub upload_hash: [u8; 32],
    /// Its size in bytes.
    pub upload_size: u64,
    /// The intermediary's key.
    pub intermediary: [u8; 32],
    /// The intermediary's receipt number.
    pub receipt_id: u64,
    /// The intermediary's clock when it took the upload (ms since the Unix epoch; its own word).
    pub time_ms: u64,
}

impl Wire for Receipt {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.event.0);
        out.extend_from_slice(&self.ticket.to_le_bytes());
        out.extend_from_slice(&self.upload_hash);
        out.extend_from_slice(&self.upload_size.to_le_bytes());
        out.extend_from_slice(&self.intermediary);
        out.extend_from_slice(&self.receipt_id.to_le_bytes());
        out.extend_from_slice(&self.time_ms.to_le_bytes());
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Receipt {
            event: EventId(reader.array()?),
            ticket: reader.u64()?,
            upload_hash: reader.array()?,
            upload_size: reader.u64()?,
            intermediary: reader.array()?,
            receipt_id: reader.u64()?,
            time_ms: reader.u64()?,
        })
    }
}

impl Receipt {
    /// Sign as the intermediary.
    pub fn sign(&self, key: &SigningKey, cluster: &[u8; 32]) -> [u8; 64] {
        ed_sign(key, domain::RECEIPT, cluster, &self.to_bytes())
    }

    /// Whether `signature` is the intermediary's on this receipt.
    pub fn verify(&self, cluster: &[u8; 32], signature: &[u8; 64]) -> bool {
        ed_verify(&self.intermediary, domain::RECEIPT, cluster, &self.to_bytes(), signature)
    }
}

/// An intermediary's report to the cluster that it holds a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldReport {
    /// The receipt it gave.
    pub receipt: Receipt,
    /// Its signature on the receipt.
    pub signature: [u8; 64],
    /// The submission's key capsule (as in the upload), so that every replica can release
    /// decryption shares for it.
    pub capsule: Vec<u8>,
}

impl Wire for HeldReport {
    fn encode(&self, out: &mut Vec<u8>) {
        self.receipt.encode(out);
        out.extend_from_slice(&self.signature);
        put_bytes(out, &self.capsule);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(HeldReport {
            receipt: Receipt::decode(reader)?,
            signature: reader.array()?,
            capsule: reader.bytes(CAPSULE_MAX)?.to_vec(),
        })
    }
}

/// A replica's statement that it holds a submission durably.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReport {
    /// The event.
    pub event: EventId,
    /// The ticket.
    pub ticket: u64,
    /// The upload's hash.
    pub upload_hash: [u8; 32],
    /// The replica.
    pub replica: u32,
    /// Its identity key's signature on the fields above.
    pub signature: [u8; 64],
}

impl StoredReport {
    /// The signed fields.
    pub fn body(event: &EventId, ticket: u64, upload_hash: &[u8; 32], replica: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(60);
        out.extend_from_slice(&event.0);
        out.extend_from_slice(&ticket.to_le_bytes());
        out.extend_from_slice(upload_hash);
        out.extend_from_slice(&replica.to_le_bytes());
        out
    }
}

impl Wire for StoredReport {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&StoredReport::body(&self.event, self.ticket, &self.upload_hash, self.replica));
        out.extend_from_slice(&self.signature);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(StoredReport {
            event: EventId(reader.array()?),
            ticket: reader.u64()?,
            upload_hash: reader.array()?,
            replica: reader.u32()?,
            signature: reader.array()?,
        })
    }
}

/// The owner's request to collect: decryption shares, sealed to `recipient`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectRequest {
    /// The event.
    pub event: EventId,
    /// The X25519 key the replicas seal their shares to.
    pub recipient: [u8; 32],
    /// Fresh for each collection (a replayed request is refused).
    pub nonce: u64,
}

impl Wire for CollectRequest {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.event.0);
        out.extend_from_slice(&self.recipient);
        out.extend_from_slice(&self.nonce.to_le_bytes());
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(CollectRequest { event: EventId(reader.array()?), recipient: reader.array()?, nonce: reader.u64()? })
    }
}

/// A request to be ordered by the bistro service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Create an event (the owner's signature on the terms).
    CreateEvent {
        /// The terms.
        terms: EventTerms,
        /// The owner's signature on them.
        signature: [u8; 64],
    },
    /// Ask for a ticket.
    Ticket(TicketRequest),
    /// Register a relay (its signature on the registration).
    RegisterRelay {
        /// The registration.
        registration: RelayRegistration,
        /// The relay's signature.
        signature: [u8; 64],
    },
    /// An intermediary holds a submission.
    Held(HeldReport),
    /// A replica stored a submission.
    Stored(StoredReport),
    /// The owner collects.
    Collect {
        /// What.
        request: CollectRequest,
        /// The owner's signature.
        signature: [u8; 64],
    },
    /// A signed status of some tickets.
    Status {
        /// The event.
        event: EventId,
        /// The tickets (at most [`STATUS_TICKETS_MAX`]).
        tickets: Vec<u64>,
    },
}

impl Request {
    /// The payload to order: [`MAGIC`], a kind byte, the fields.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        match self {
            Request::CreateEvent { terms, signature } => {
                out.push(1);
                terms.encode(&mut out);
                out.extend_from_slice(signature);
            }
            Request::Ticket(request) => {
                out.push(2);
                request.encode(&mut out);
            }
            Request::RegisterRelay { registration, signature } => {
                out.push(3);
                registration.encode(&mut out);
                out.extend_from_slice(signature);
            }
            Request::Held(report) => {
                out.push(4);
                report.encode(&mut out);
            }
            Request::Stored(report) => {
                out.push(5);
                report.encode(&mut out);
            }
            Request::Collect { request, signature } => {
                out.push(6);
                request.encode(&mut out);
                out.extend_from_slice(signature);
            }
            Request::Status { event, tickets } => {
                out.push(7);
                out.extend_from_slice(&event.0);
                out.extend_from_slice(&(tickets.len() as u32).to_le_bytes());
                for ticket in tickets {
                    out.extend_from_slice(&ticket.to_le_bytes());
                }
            }
        }
        out
    }

    /// Whether a payload is meant for the bistro (starts with [`MAGIC`]).
    pub fn is_bistro(payload: &[u8]) -> bool {
        payload.starts_with(MAGIC)
    }

    /// Decode a payload (that starts with [`MAGIC`]).
    pub fn from_payload(payload: &[u8]) -> Result<Request, DecodeError> {
        let mut reader = Reader::new(payload);
        if reader.array::<4>()? != *MAGIC {
            return Err(DecodeError::Invalid { what: "magic", value: 0 });
        }
        let kind = reader.u8()?;
        let request = match kind {
            1 => Request::CreateEvent { terms: EventTerms::decode(&mut reader)?, signature: reader.array()? },
            2 => Request::Ticket(TicketRequest::decode(&mut reader)?),
            3 => Request::RegisterRelay {
                registration: RelayRegistration::decode(&mut reader)?,
                signature: reader.array()?,
            },
            4 => Request::Held(HeldReport::decode(&mut reader)?),
            5 => Request::Stored(StoredReport::decode(&mut reader)?),
            6 => Request::Collect { request: CollectRequest::decode(&mut reader)?, signature: reader.array()? },
            7 => {
                let event = EventId(reader.array()?);
                let count = reader.u32()? as usize;
                if count > STATUS_TICKETS_MAX {
                    return Err(DecodeError::TooLong { len: count as u64, max: STATUS_TICKETS_MAX as u64 });
                }
                let tickets = (0..count).map(|_| reader.u64()).collect::<Result<Vec<_>, _>>()?;
                Request::Status { event, tickets }
            }
            other => return Err(DecodeError::Invalid { what: "bistro request kind", value: u64::from(other) }),
        };
        reader.finish()?;
        Ok(request)
    }
}

// ---------------------------------------------------------------------------------------------
// What the cluster signs
// ---------------------------------------------------------------------------------------------

/// An event, as the cluster records and signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Its id.
    pub event: EventId,
    /// The owner's terms.
    pub terms: EventTerms,
    /// The agreed time of the epoch that created it.
    pub created_ms: u64,
}

impl Wire for EventRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.event.0);
        self.terms.encode(out);
        out.extend_from_slice(&self.created_ms.to_le_bytes());
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(EventRecord {
            event: EventId(reader.array()?),
            terms: EventTerms::decode(reader)?,
            created_ms: reader.u64()?,
        })
    }
}

/// A ticket: the cluster saw `digest` for `event` at agreed time `time_ms`, before the deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The event.
    pub event: EventId,
    /// Its number within the event, from 1.
    pub ticket: u64,
    /// The hash `digest` was made with.
    pub hash: HashAlg,
    /// The file's digest.
    pub digest: [u8; 32],
    /// The file's size.
    pub size: u64,
    /// The submitter's contact.
    pub contact: String,
    /// The file's name, if given.
    pub file_name: String,
    /// The agreed time of the epoch that ordered the request (ms since the Unix epoch).
    pub time_ms: u64,
}

impl Wire for Ticket {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.event.0);
        out.extend_from_slice(&self.ticket.to_le_bytes());
        out.push(self.hash.id());
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.size.to_le_bytes());
        put_str(out, &self.contact);
        put_str(out, &self.file_name);
        out.extend_from_slice(&self.time_ms.to_le_bytes());
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Ticket {
            event: EventId(reader.array()?),
            ticket: reader.u64()?,
            hash: read_hash(reader)?,
            digest: reader.array()?,
            size: reader.u64()?,
            contact: read_str(reader, FIELD_MAX, "contact")?,
            file_name: read_str(reader, FIELD_MAX, "file name")?,
            time_ms: reader.u64()?,
        })
    }
}

/// Where one upload of a ticket stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadState {
    /// The upload's hash.
    pub upload_hash: [u8; 32],
    /// Its size.
    pub upload_size: u64,
    /// Intermediaries that reported holding it.
    pub intermediaries: Vec<[u8; 32]>,
    /// Replicas that stored it (it is transferred once `t + 1` did).
    pub stored_by: Vec<u32>,
    /// Whether the owner collected the event after this upload was reported.
    pub collected: bool,
    /// Whether the transfer is overdue: the grace after the deadline passed and fewer than
    /// `t + 1` replicas stored it (resend it directly to a replica).
    pub overdue: bool,
}

impl Wire for UploadState {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.upload_hash);
        out.extend_from_slice(&self.upload_size.to_le_bytes());
        out.extend_from_slice(&(self.intermediaries.len() as u32).to_le_bytes());
        for key in &self.intermediaries {
            out.extend_from_slice(key);
        }
        out.extend_from_slice(&(self.stored_by.len() as u32).to_le_bytes());
        for replica in &self.stored_by {
            out.extend_from_slice(&replica.to_le_bytes());
        }
        out.push(u8::from(self.collected));
        out.push(u8::from(self.overdue));
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let upload_hash = reader.array()?;
        let upload_size = reader.u64()?;
        let count = bounded_count(reader, 1024)?;
        let intermediaries = (0..count).map(|_| reader.array()).collect::<Result<_, _>>()?;
        let count = bounded_count(reader, 1024)?;
        let stored_by = (0..count).map(|_| reader.u32()).collect::<Result<_, _>>()?;
        Ok(UploadState {
            upload_hash,
            upload_size,
            intermediaries,
            stored_by,
            collected: reader.bool()?,
            overdue: reader.bool()?,
        })
    }
}

fn bounded_count(reader: &mut Reader<'_>, max: usize) -> Result<usize, DecodeError> {
    let count = reader.u32()? as usize;
    if count > max {
        return Err(DecodeError::TooLong { len: count as u64, max: max as u64 });
    }
    Ok(count)
}

/// One ticket's state in a status record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketState {
    /// The ticket number.
    pub ticket: u64,
    /// Whether the cluster issued it (false: no such ticket).
    pub issued: bool,
    /// Its agreed time.
    pub time_ms: u64,
    /// Its uploads.
    pub uploads: Vec<UploadState>,
}

impl Wire for TicketState {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ticket.to_le_bytes());
        out.push(u8::from(self.issued));
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&(self.uploads.len() as u32).to_le_bytes());
        for upload in &self.uploads {
            upload.encode(out);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let ticket = reader.u64()?;
        let issued = reader.bool()?;
        let time_ms = reader.u64()?;
        let count = bounded_count(reader, 1024)?;
        let uploads = (0..count).map(|_| UploadState::decode(reader)).collect::<Result<_, _>>()?;
        Ok(TicketState { ticket, issued, time_ms, uploads })
    }
}

/// A signed status of some tickets of an event, as of an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRecord {
    /// The event.
    pub event: EventId,
    /// The agreed time it was made at.
    pub as_of_ms: u64,
    /// Whether the event's deadline has passed.
    pub deadline_passed: bool,
    /// How many times the owner collected.
    pub collections: u64,
    /// The tickets asked about.
    pub tickets: Vec<TicketState>,
}

impl Wire for StatusRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.event.0);
        out.extend_from_slice(&self.as_of_ms.to_le_bytes());
        out.push(u8::from(self.deadline_passed));
        out.extend_from_slice(&self.collections.to_le_bytes());
        out.extend_from_slice(&(self.tickets.len() as u32).to_le_bytes());
        for ticket in &self.tickets {
            ticket.encode(out);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let event = EventId(reader.array()?);
        let as_of_ms = reader.u64()?;
        let deadline_passed = reader.bool()?;
        let collections = reader.u64()?;
        let count = bounded_count(reader, STATUS_TICKETS_MAX)?;
        let tickets = (0..count).map(|_| TicketState::decode(reader)).collect::<Result<_, _>>()?;
        Ok(StatusRecord { event, as_of_ms, deadline_passed, collections, tickets })
    }
}

/// A record the cluster signs, as a leaf of its epoch's Merkle tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signed {
    /// An event record.
    Event(EventRecord),
    /// A ticket.
    Ticket(Ticket),
    /// A status.
    Status(StatusRecord),
}

impl Signed {
    /// The kind byte that starts the leaf.
    pub fn kind(&self) -> u8 {
        match self {
            Signed::Event(_) => 1,
            Signed::Ticket(_) => 2,
            Signed::Status(_) => 3,
        }
    }

    /// The leaf's hash: `SHA-256(tagged(LEAF, [cluster id, kind, record]))`.
    pub fn leaf(&self, cluster: &[u8; 32]) -> [u8; 32] {
        let body = match self {
            Signed::Event(record) => record.to_bytes(),
            Signed::Ticket(ticket) => ticket.to_bytes(),
            Signed::Status(status) => status.to_bytes(),
        };
        fides_crypto::sha256_tagged(domain::LEAF, &[cluster, &[self.kind()], &body])
    }
}

impl Wire for Signed {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind());
        match self {
            Signed::Event(record) => record.encode(out),
            Signed::Ticket(ticket) => ticket.encode(out),
            Signed::Status(status) => status.encode(out),
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match reader.u8()? {
            1 => Ok(Signed::Event(EventRecord::decode(reader)?)),
            2 => Ok(Signed::Ticket(Ticket::decode(reader)?)),
            3 => Ok(Signed::Status(StatusRecord::decode(reader)?)),
            other => Err(DecodeError::Invalid { what: "signed record kind", value: u64::from(other) }),
        }
    }
}

/// The label a submission's capsule is bound to: the cluster, the event and the ticket.
pub fn capsule_label(cluster: &[u8; 32], event: &EventId, ticket: u64) -> Vec<u8> {
    tagged(domain::CAPSULE_LABEL, &[cluster, &event.0, &ticket.to_le_bytes()])
}

/// The associated data of a submission's encrypted file.
pub fn file_associated(cluster: &[u8; 32], event: &EventId, ticket: u64) -> Vec<u8> {
    tagged(domain::FILE_AD, &[cluster, &event.0, &ticket.to_le_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn every_request_round_trips_and_bad_payloads_are_refused() {
        let cluster = [1u8; 32];
        let event = EventId([9; 16]);
        let terms = EventTerms {
            deadline_ms: 5,
            description: "papers".into(),
            owner: key().verifying_key().to_bytes(),
            hash: HashAlg::Blake3,
            aead: Aead::XChaCha20Poly1305,
            transfer_window_ms: 1000,
            nonce: 3,
        };
        let receipt = Receipt {
            event,
            ticket: 4,
            upload_hash: [2; 32],
            upload_size: 100,
            intermediary: key().verifying_key().to_bytes(),
            receipt_id: 1,
            time_ms: 77,
        };
        let requests = vec![
            Request::CreateEvent { signature: ed_sign(&key(), domain::CREATE, &cluster, &terms.to_bytes()), terms },
            Request::Ticket(TicketRequest {
                event,
                digest: vec![1; 32],
                size: 10,
                contact: "a@b".into(),
                file_name: String::new(),
            }),
            Request::RegisterRelay {
                registration: RelayRegistration { key: [3; 32], address: "127.0.0.1:9".into(), seq: 1 },
                signature: [4; 64],
            },
            Request::Held(HeldReport { signature: receipt.sign(&key(), &cluster), receipt, capsule: vec![5; 100] }),
            Request::Stored(StoredReport { event, ticket: 4, upload_hash: [2; 32], replica: 1, signature: [6; 64] }),
            Request::Collect { request: CollectRequest { event, recipient: [8; 32], nonce: 2 }, signature: [9; 64] },
            Request::Status { event, tickets: vec![1, 2, 3] },
        ];
        for request in requests {
            let payload = request.to_payload();
            assert!(Request::is_bistro(&payload));
            assert_eq!(Request::from_payload(&payload), Ok(request));
            // Every strict prefix fails to decode, and so does an extra byte.
            for cut in 0..payload.len() {
                assert!(Request::from_payload(&payload[..cut]).is_err());
            }
            let mut longer = payload.clone();
            longer.push(0);
            assert!(Request::from_payload(&longer).is_err());
        }
        assert!(Request::from_payload(b"BST1\x09").is_err());
    }

    #[test]
    fn receipts_verify_only_unchanged_and_in_their_cluster() {
        let cluster = [1u8; 32];
        let receipt = Receipt {
            event: EventId([9; 16]),
            ticket: 4,
            upload_hash: [2; 32],
            upload_size: 100,
            intermediary: key().verifying_key().to_bytes(),
            receipt_id: 1,
            time_ms: 77,
        };
        let signature = receipt.sign(&key(), &cluster);
        assert!(receipt.verify(&cluster, &signature));
        assert!(!receipt.verify(&[2u8; 32], &signature));
        let changed = Receipt { upload_size: 101, ..receipt };
        assert!(!changed.verify(&cluster, &signature));
    }

    #[test]
    fn event_ids_print_and_parse() {
        let id = EventId::derive(&[1; 32], 3, 4);
        assert_eq!(EventId::parse(&id.to_string()), Ok(id));
        assert!(EventId::parse("zz").is_err());
        assert!(EventId::parse("abcd").is_err());
    }
}
