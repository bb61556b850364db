//! The bistro service: a deterministic state machine over the ordered requests.
//!
//! Every replica applies the same batches in the same order to the same state and gets the same
//! outcomes: the event ids, ticket numbers, refusals and signed records are equal everywhere, so
//! `t + 1` replicas can sign an epoch's records and nobody needs to trust one replica's word. The
//! only clock is the epoch's agreed time.
//!
//! The bistro is a [`fides_service::Service`]: its state lives in its named tables ([`Table`]),
//! which the host backs with the replica's store (one transaction per batch) and tests with
//! [`fides_service::MemoryTables`]; its payloads are decoded once, by the registry, under the id
//! `BST1` (its magic since before the registry existed, so clients did not change); its signed
//! records are [`fides_service::Outcome::Sign`]: service leaves of the epoch's certificate
//! (ticket format 2). Tickets issued before the host (format 1, the bistro's own tree) keep
//! verifying under the rules of [`crate::proof`].

use blsttc::PublicKeySet;
use fides_service::{self as host, prefix_end, Applied, EpochStart, QueryError, ServiceId, StoreError, Tables};
use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};

use crate::commit::commit_len;
use crate::records::{
    capsule_label, domain, ed_verify, EventId, EventRecord, EventTerms, HeldReport, Request, Signed, StatusRecord,
    Ticket, TicketRequest, TicketState, UploadState, DIGEST_LEN,
};

/// The tables of the service's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// event id → [`EventState`].
    Events,
    /// event id ‖ ticket (8, big-endian) → [`Ticket`].
    Tickets,
    /// relay key → [`RelayState`].
    Relays,
    /// event id ‖ ticket ‖ upload hash → [`Upload`].
    Uploads,
    /// event id ‖ collection number → [`Collection`].
    Collections,
    /// transfer due time (8, big-endian) ‖ event id → nothing: events whose transfer window ends.
    Due,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 6] =
        [Table::Events, Table::Tickets, Table::Relays, Table::Uploads, Table::Collections, Table::Due];

    /// Every table's name, as the bistro declares them to the host.
    pub const NAMES: [&'static str; 6] = [
        Table::Events.name(),
        Table::Tickets.name(),
        Table::Relays.name(),
        Table::Uploads.name(),
        Table::Collections.name(),
        Table::Due.name(),
    ];

    /// Its name among the bistro's tables (the store's table is `bistro_` and this name).
    pub const fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Tickets => "tickets",
            Table::Relays => "relays",
            Table::Uploads => "uploads",
            Table::Collections => "collections",
            Table::Due => "due",
        }
    }
}

fn scan<K: Tables + ?Sized>(kv: &K, table: Table, prefix: &[u8], max: usize) -> Result<host::Entries, StoreError> {
    kv.range(table.name(), prefix, &prefix_end(prefix), max)
}

fn decoded<T: Wire>(table: Table, bytes: Option<Vec<u8>>) -> Result<Option<T>, StoreError> {
    bytes
        .map(|b| T::from_bytes(&b).map_err(|error| StoreError::Corrupt { table: table.name().to_owned(), error }))
        .transpose()
}

fn ticket_key(event: &EventId, ticket: u64) -> Vec<u8> {
    [&event.0[..], &ticket.to_be_bytes()].concat()
}

fn upload_key(event: &EventId, ticket: u64, hash: &[u8; 32]) -> Vec<u8> {
    [&event.0[..], &ticket.to_be_bytes(), hash].concat()
}

/// Most uploads one ticket keeps, and most collections one event allows.
pub const UPLOADS_PER_TICKET_MAX: usize = 16;
/// Most intermediaries one upload records.
pub const INTERMEDIARIES_MAX: usize = 16;
/// Most uploads one collection covers.
pub const COLLECTION_UPLOADS_MAX: usize = 1_000_000;
/// Most collections one event allows.
pub const COLLECTIONS_MAX: u64 = 1024;

/// An event's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventState {
    /// Its signed record.
    pub record: EventRecord,
    /// Tickets issued.
    pub tickets: u64,
    /// Collections made.
    pub collections: u64,
    /// Collection nonces used.
    pub nonces: Vec<u64>,
}

impl Wire for EventState {
    fn encode(&self, out: &mut Vec<u8>) {
        self.record.encode(out);
        out.extend_from_slice(&self.tickets.to_le_bytes());
        out.extend_from_slice(&self.collections.to_le_bytes());
        out.extend_from_slice(&(self.nonces.len() as u32).to_le_bytes());
        for nonce in &self.nonces {
            out.extend_from_slice(&nonce.to_le_bytes());
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let record = EventRecord::decode(reader)?;
        let tickets = reader.u64()?;
        let collections = reader.u64()?;
        let count = reader.u32()?;
        if u64::from(count) > COLLECTIONS_MAX {
            return Err(DecodeError::TooLong { len: u64::from(count), max: COLLECTIONS_MAX });
        }
        let nonces = (0..count).map(|_| reader.u64()).collect::<Result<_, _>>()?;
        Ok(EventState { record, tickets, collections, nonces })
    }
}

/// A registered relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayState {
    /// Where replicas reach it.
    pub address: String,
    /// Its registration's sequence number.
    pub seq: u64,
    /// Uploads it reported holding and did not deliver in time.
    pub undelivered: u64,
}

impl Wire for RelayState {
    fn encode(&self, out: &mut Vec<u8>) {
        put_bytes(out, self.address.as_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.undelivered.to_le_bytes());
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let address = String::from_utf8(reader.bytes(crate::records::FIELD_MAX)?.to_vec())
            .map_err(|_| DecodeError::Invalid { what: "address", value: 0 })?;
        Ok(RelayState { address, seq: reader.u64()?, undelivered: reader.u64()? })
    }
}

/// One upload of a ticket: the encrypted file some intermediaries hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    /// Its size.
    pub size: u64,
    /// Its key capsule (verified under its label).
    pub capsule: Vec<u8>,
    /// Intermediaries that reported holding it, with their receipt numbers.
    pub intermediaries: Vec<([u8; 32], u64)>,
    /// Replicas that stored it.
    pub stored_by: Vec<u32>,
    /// Whether a collection covered it.
    pub collected: bool,
}

impl Wire for Upload {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.size.to_le_bytes());
        put_bytes(out, &self.capsule);
        out.extend_from_slice(&(self.intermediaries.len() as u32).to_le_bytes());
        for (key, receipt) in &self.intermediaries {
            out.extend_from_slice(key);
            out.extend_from_slice(&receipt.to_le_bytes());
        }
        out.extend_from_slice(&(self.stored_by.len() as u32).to_le_bytes());
        for replica in &self.stored_by {
            out.extend_from_slice(&replica.to_le_bytes());
        }
        out.push(u8::from(self.collected));
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let size = reader.u64()?;
        let capsule = reader.bytes(crate::records::CAPSULE_MAX)?.to_vec();
        let count = reader.u32()? as usize;
        if count > INTERMEDIARIES_MAX {
            return Err(DecodeError::TooLong { len: count as u64, max: INTERMEDIARIES_MAX as u64 });
        }
        let intermediaries = (0..count).map(|_| Ok((reader.array()?, reader.u64()?))).collect::<Result<_, _>>()?;
        let count = reader.u32()? as usize;
        if count > 1024 {
            return Err(DecodeError::TooLong { len: count as u64, max: 1024 });
        }
        let stored_by = (0..count).map(|_| reader.u32()).collect::<Result<_, _>>()?;
        Ok(Upload { size, capsule, intermediaries, stored_by, collected: reader.bool()? })
    }
}

/// A collection: the owner's recipient key and the uploads it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collection {
    /// The X25519 key shares are sealed to.
    pub recipient: [u8; 32],
    /// The agreed time it was ordered at.
    pub time_ms: u64,
    /// The uploads: (ticket, upload hash).
    pub uploads: Vec<(u64, [u8; 32])>,
}

impl Wire for Collection {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.recipient);
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&(self.uploads.len() as u32).to_le_bytes());
        for (ticket, hash) in &self.uploads {
            out.extend_from_slice(&ticket.to_le_bytes());
            out.extend_from_slice(hash);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let recipient = reader.array()?;
        let time_ms = reader.u64()?;
        let count = reader.u32()? as usize;
        if count > COLLECTION_UPLOADS_MAX {
            return Err(DecodeError::TooLong { len: count as u64, max: COLLECTION_UPLOADS_MAX as u64 });
        }
        let uploads = (0..count).map(|_| Ok((reader.u64()?, reader.array()?))).collect::<Result<_, _>>()?;
        Ok(Collection { recipient, time_ms, uploads })
    }
}

/// Why a request was refused: the gRPC status a client gets (the host's codes).
pub use fides_service::Code;

/// A code's byte in an encoded [`Outcome`]: the five the bistro used before the host's codes
/// keep their bytes (outcomes stored by earlier replicas still decode); any other is 100 plus
/// its gRPC number.
fn code_id(code: Code) -> u8 {
    match code {
        Code::InvalidArgument => 1,
        Code::NotFound => 2,
        Code::FailedPrecondition => 3,
        Code::PermissionDenied => 4,
        Code::AlreadyExists => 5,
        other => 100 + other.number(),
    }
}

fn code_from_id(id: u8) -> Option<Code> {
    Some(match id {
        1 => Code::InvalidArgument,
        2 => Code::NotFound,
        3 => Code::FailedPrecondition,
        4 => Code::PermissionDenied,
        5 => Code::AlreadyExists,
        _ => return Code::from_number(id.checked_sub(100)?),
    })
}

/// What the service made of one ordered request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A record the cluster signs (its leaf index in the epoch).
    Signed {
        /// The record.
        record: Signed,
        /// Its leaf index.
        leaf: u64,
    },
    /// Refused; nothing changed.
    Refused {
        /// The status.
        code: Code,
        /// Why, for people.
        message: String,
    },
    /// A relay was registered.
    RelayRegistered,
    /// An intermediary's report was recorded (`first`: the upload was new).
    Held {
        /// Whether the upload was new.
        first: bool,
    },
    /// A replica's storage was recorded; `replicas` hold it now.
    Stored {
        /// Replicas holding it.
        replicas: u32,
    },
    /// A collection was granted.
    Collected {
        /// Its number within the event.
        number: u64,
        /// Uploads it covers.
        uploads: u64,
    },
}

impl Wire for Outcome {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Outcome::Signed { record, leaf } => {
                out.push(1);
                out.extend_from_slice(&leaf.to_le_bytes());
                record.encode(out);
            }
            Outcome::Refused { code, message } => {
                out.push(2);
                out.push(code_id(*code));
                put_bytes(out, message.as_bytes());
            }
            Outcome::RelayRegistered => out.push(3),
            Outcome::Held { first } => {
                out.push(4);
                out.push(u8::from(*first));
            }
            Outcome::Stored { replicas } => {
                out.push(5);
                out.extend_from_slice(&replicas.to_le_bytes());
            }
            Outcome::Collected { number, uploads } => {
                out.push(6);
                out.extend_from_slice(&number.to_le_bytes());
                out.extend_from_slice(&uploads.to_le_bytes());
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match reader.u8()? {
            1 => {
                let leaf = reader.u64()?;
                Outcome::Signed { leaf, record: Signed::decode(reader)? }
            }
            2 => {
                let id = reader.u8()?;
                let code = code_from_id(id).ok_or(DecodeError::Invalid { what: "code", value: u64::from(id) })?;
                let message = String::from_utf8_lossy(reader.bytes(4096)?).into_owned();
                Outcome::Refused { code, message }
            }
            3 => Outcome::RelayRegistered,
            4 => Outcome::Held { first: reader.bool()? },
            5 => Outcome::Stored { replicas: reader.u32()? },
            6 => Outcome::Collected { number: reader.u64()?, uploads: reader.u64()? },
            other => return Err(DecodeError::Invalid { what: "outcome", value: u64::from(other) }),
        })
    }
}

/// What an epoch produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochOutput {
    /// The answer to each bistro request, by its index in the batch.
    pub outcomes: Vec<(u32, Outcome)>,
    /// The leaves of the epoch's tree (one per signed record, in order).
    pub leaves: Vec<[u8; 32]>,
}

/// What the service must know of the cluster (equal at every replica).
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The cluster id.
    pub cluster: [u8; 32],
    /// `t`.
    pub t: u32,
    /// The replicas' Ed25519 identity keys, by index (replicas are intermediaries too).
    pub replicas: Vec<[u8; 32]>,
    /// The threshold encryption key set (capsules are checked against it).
    pub encryption: PublicKeySet,
}

/// The service.
#[derive(Clone, Debug)]
pub struct Service {
    config: ServiceConfig,
}

fn refused(code: Code, message: impl Into<String>) -> host::Outcome {
    host::Outcome::refuse(code, message)
}

/// An answer that needs no signature, as the host carries it: the [`Outcome`]'s encoding.
fn reply(outcome: Outcome) -> host::Outcome {
    host::Outcome::Reply(outcome.to_bytes())
}

/// `ms` since the Unix epoch as an RFC 3339 UTC time with milliseconds.
pub fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, (rem / 60) % 60, rem % 60, ms % 1000)
}

impl Service {
    /// A service for a cluster.
    pub fn new(config: ServiceConfig) -> Service {
        Service { config }
    }

    /// Its configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// A signed record, as the host carries it: the record's canonical bytes, which become a
    /// service leaf of the epoch's certificate.
    fn sign(&self, record: Signed) -> host::Outcome {
        host::Outcome::Sign(record.to_bytes())
    }

    fn handle<K: Tables + ?Sized>(
        &self,
        kv: &mut K,
        epoch: u64,
        index: u32,
        time_ms: u64,
        request: Request,
    ) -> Result<host::Outcome, StoreError> {
        let cluster = self.config.cluster;
        Ok(match request {
            Request::CreateEvent { terms, signature } => {
                if !ed_verify(&terms.owner, domain::CREATE, &cluster, &terms.to_bytes(), &signature) {
                    return Ok(refused(Code::PermissionDenied, "the owner's signature on the event does not verify"));
                }
                if terms.deadline_ms <= time_ms {
                    return Ok(refused(
                        Code::FailedPrecondition,
                        format!(
                            "the deadline {} is not after the agreed time {}",
                            format_time(terms.deadline_ms),
                            format_time(time_ms)
                        ),
                    ));
                }
                let event = EventId::derive(&cluster, epoch, index);
                let record = EventRecord { event, terms, created_ms: time_ms };
                let due = record.terms.deadline_ms.saturating_add(record.terms.transfer_window_ms);
                let state = EventState { record: record.clone(), tickets: 0, collections: 0, nonces: Vec::new() };
                kv.put(Table::Events.name(), &event.0, &state.to_bytes())?;
                kv.put(Table::Due.name(), &[&due.to_be_bytes()[..], &event.0].concat(), &[])?;
                self.sign(Signed::Event(record))
            }
            Request::Ticket(request) => match self.ticket(kv, time_ms, request)? {
                Ok(ticket) => self.sign(Signed::Ticket(ticket)),
                Err(outcome) => outcome,
            },
            Request::RegisterRelay { registration, signature } => {
                if !ed_verify(&registration.key, domain::RELAY, &cluster, &registration.to_bytes(), &signature) {
                    return Ok(refused(Code::PermissionDenied, "the relay's signature does not verify"));
                }
                if self.config.replicas.contains(&registration.key) {
                    return Ok(refused(Code::InvalidArgument, "a replica's key is no relay key"));
                }
                let old: Option<RelayState> = decoded(Table::Relays, kv.get(Table::Relays.name(), &registration.key)?)?;
                if old.as_ref().is_some_and(|o| o.seq >= registration.seq) {
                    return Ok(refused(Code::AlreadyExists, "a registration with this or a higher number exists"));
                }
                let state = RelayState {
                    address: registration.address,
                    seq: registration.seq,
                    undelivered: old.map_or(0, |o| o.undelivered),
                };
                kv.put(Table::Relays.name(), &registration.key, &state.to_bytes())?;
                reply(Outcome::RelayRegistered)
            }
            Request::Held(report) => self.held(kv, report)?,
            Request::Stored(report) => {
                let Some(key) = self.config.replicas.get(report.replica as usize) else {
                    return Ok(refused(Code::InvalidArgument, format!("no replica {}", report.replica)));
                };
                let body = crate::records::StoredReport::body(
                    &report.event,
                    report.ticket,
                    &report.upload_hash,
                    report.replica,
                );
                if !ed_verify(key, domain::STORED, &cluster, &body, &report.signature) {
                    return Ok(refused(Code::PermissionDenied, "the replica's signature does not verify"));
                }
                let key = upload_key(&report.event, report.ticket, &report.upload_hash);
                let Some(mut upload) = decoded::<Upload>(Table::Uploads, kv.get(Table::Uploads.name(), &key)?)? else {
                    return Ok(refused(Code::NotFound, "no such upload"));
                };
                if !upload.stored_by.contains(&report.replica) {
                    upload.stored_by.push(report.replica);
                    upload.stored_by.sort_unstable();
                    kv.put(Table::Uploads.name(), &key, &upload.to_bytes())?;
                }
                reply(Outcome::Stored { replicas: upload.stored_by.len() as u32 })
            }
            Request::Collect { request, signature } => {
                let Some(mut event) = self.event(kv, &request.event)? else {
                    return Ok(refused(Code::NotFound, format!("no event {}", request.event)));
                };
                let owner = event.record.terms.owner;
                if !ed_verify(&owner, domain::COLLECT, &cluster, &request.to_bytes(), &signature) {
                    return Ok(refused(Code::PermissionDenied, "the owner's signature does not verify"));
                }
                if event.nonces.contains(&request.nonce) {
                    return Ok(refused(Code::AlreadyExists, "this collection request was ordered before"));
                }
                if event.collections >= COLLECTIONS_MAX {
                    return Ok(refused(Code::FailedPrecondition, "the event's collections are used up"));
                }
                let mut uploads = Vec::new();
                for (key, value) in scan(kv, Table::Uploads, &request.event.0, COLLECTION_UPLOADS_MAX)? {
                    let Some(mut upload) = decoded::<Upload>(Table::Uploads, Some(value))? else { continue };
                    let (Some(ticket), Some(hash)) = (key.get(16..24), key.get(24..56)) else { continue };
                    let ticket = u64::from_be_bytes(ticket.try_into().unwrap_or_default());
                    let hash: [u8; 32] = hash.try_into().unwrap_or_default();
                    uploads.push((ticket, hash));
                    if !upload.collected {
                        upload.collected = true;
                        kv.put(Table::Uploads.name(), &key, &upload.to_bytes())?;
                    }
                }
                event.collections += 1;
                event.nonces.push(request.nonce);
                let number = event.collections;
                kv.put(Table::Events.name(), &request.event.0, &event.to_bytes())?;
                let count = uploads.len() as u64;
                let collection = Collection { recipient: request.recipient, time_ms, uploads };
                kv.put(Table::Collections.name(), &ticket_key(&request.event, number), &collection.to_bytes())?;
                reply(Outcome::Collected { number, uploads: count })
            }
            Request::Status { event, tickets } => {
                let Some(state) = self.event(kv, &event)? else {
                    return Ok(refused(Code::NotFound, format!("no event {event}")));
                };
                let terms = &state.record.terms;
                let due = terms.deadline_ms.saturating_add(terms.transfer_window_ms);
                let mut states = Vec::with_capacity(tickets.len());
                for ticket in tickets {
                    let issued: Option<Ticket> =
                        decoded(Table::Tickets, kv.get(Table::Tickets.name(), &ticket_key(&event, ticket))?)?;
                    let mut uploads = Vec::new();
                    for (key, value) in scan(kv, Table::Uploads, &ticket_key(&event, ticket), UPLOADS_PER_TICKET_MAX)? {
                        let Some(upload) = decoded::<Upload>(Table::Uploads, Some(value))? else { continue };
                        let hash: [u8; 32] = key.get(24..56).and_then(|h| h.try_into().ok()).unwrap_or_default();
                        let transferred = upload.stored_by.len() > self.config.t as usize;
                        uploads.push(UploadState {
                            upload_hash: hash,
                            upload_size: upload.size,
                            intermediaries: upload.intermediaries.iter().map(|(k, _)| *k).collect(),
                            stored_by: upload.stored_by.clone(),
                            collected: upload.collected,
                            overdue: !transferred && time_ms > due,
                        });
                    }
                    states.push(TicketState {
                        ticket,
                        issued: issued.is_some(),
                        time_ms: issued.map_or(0, |t| t.time_ms),
                        uploads,
                    });
                }
                let record = StatusRecord {
                    event,
                    as_of_ms: time_ms,
                    deadline_passed: time_ms > terms.deadline_ms,
                    collections: state.collections,
                    tickets: states,
                };
                self.sign(Signed::Status(record))
            }
        })
    }

    fn event<K: Tables + ?Sized>(&self, kv: &K, event: &EventId) -> Result<Option<EventState>, StoreError> {
        decoded(Table::Events, kv.get(Table::Events.name(), &event.0)?)
    }

    fn ticket<K: Tables + ?Sized>(
        &self,
        kv: &mut K,
        time_ms: u64,
        request: TicketRequest,
    ) -> Result<Result<Ticket, host::Outcome>, StoreError> {
        let Some(mut event) = self.event(kv, &request.event)? else {
            return Ok(Err(refused(Code::NotFound, format!("no event {}", request.event))));
        };
        let Ok(digest) = <[u8; DIGEST_LEN]>::try_from(request.digest.as_slice()) else {
            return Ok(Err(refused(
                Code::InvalidArgument,
                format!("a digest is {DIGEST_LEN} bytes, not {}", request.digest.len()),
            )));
        };
        if request.size > crate::stream::MAX_PLAINTEXT_LEN {
            return Ok(Err(refused(
                Code::InvalidArgument,
                format!("a file of {} bytes is above the bound of {}", request.size, crate::stream::MAX_PLAINTEXT_LEN),
            )));
        }
        let terms: &EventTerms = &event.record.terms;
        if time_ms > terms.deadline_ms {
            return Ok(Err(refused(
                Code::FailedPrecondition,
                format!(
                    "the deadline {} has passed: the agreed time is {}",
                    format_time(terms.deadline_ms),
                    format_time(time_ms)
                ),
            )));
        }
        event.tickets += 1;
        let ticket = Ticket {
            event: request.event,
            ticket: event.tickets,
            hash: terms.hash,
            digest,
            size: request.size,
            contact: request.contact,
            file_name: request.file_name,
            time_ms,
        };
        kv.put(Table::Events.name(), &request.event.0, &event.to_bytes())?;
        kv.put(Table::Tickets.name(), &ticket_key(&request.event, ticket.ticket), &ticket.to_bytes())?;
        Ok(Ok(ticket))
    }

    fn held<K: Tables + ?Sized>(&self, kv: &mut K, report: HeldReport) -> Result<host::Outcome, StoreError> {
        let cluster = self.config.cluster;
        let receipt = &report.receipt;
        let is_replica = self.config.replicas.contains(&receipt.intermediary);
        if !is_replica && kv.get(Table::Relays.name(), &receipt.intermediary)?.is_none() {
            return Ok(refused(Code::PermissionDenied, "the intermediary is neither a replica nor a registered relay"));
        }
        if !receipt.verify(&cluster, &report.signature) {
            return Ok(refused(Code::PermissionDenied, "the receipt's signature does not verify"));
        }
        let Some(event) = self.event(kv, &receipt.event)? else {
            return Ok(refused(Code::NotFound, format!("no event {}", receipt.event)));
        };
        let Some(ticket) = decoded::<Ticket>(
            Table::Tickets,
            kv.get(Table::Tickets.name(), &ticket_key(&receipt.event, receipt.ticket))?,
        )?
        else {
            return Ok(refused(Code::NotFound, format!("no ticket {} in event {}", receipt.ticket, receipt.event)));
        };
        let expected = commit_len(event.record.terms.aead, ticket.size, report.capsule.len());
        if receipt.upload_size != expected {
            return Ok(refused(
                Code::InvalidArgument,
                format!(
                    "an upload of a {}-byte file is {expected} bytes, the receipt says {}",
                    ticket.size, receipt.upload_size
                ),
            ));
        }
        let label = capsule_label(&cluster, &receipt.event, receipt.ticket);
        let capsule_ok = fides_crypto::labeled::LabeledCapsule::from_bytes(&report.capsule)
            .map(|c| c.verify(&label))
            .unwrap_or(false);
        if !capsule_ok {
            return Ok(refused(Code::InvalidArgument, "the key capsule is not valid for this event and ticket"));
        }
        let key = upload_key(&receipt.event, receipt.ticket, &receipt.upload_hash);
        let existing = decoded::<Upload>(Table::Uploads, kv.get(Table::Uploads.name(), &key)?)?;
        let first = existing.is_none();
        let mut upload = match existing {
            Some(upload) => {
                if upload.capsule != report.capsule {
                    return Ok(refused(Code::InvalidArgument, "the capsule differs from the one recorded"));
                }
                upload
            }
            None => {
                let count =
                    scan(kv, Table::Uploads, &ticket_key(&receipt.event, receipt.ticket), UPLOADS_PER_TICKET_MAX)?
                        .len();
                if count >= UPLOADS_PER_TICKET_MAX {
                    return Ok(refused(Code::FailedPrecondition, "this ticket has the most uploads allowed"));
                }
                Upload {
                    size: receipt.upload_size,
                    capsule: report.capsule.clone(),
                    intermediaries: Vec::new(),
                    stored_by: Vec::new(),
                    collected: false,
                }
            }
        };
        if upload.intermediaries.iter().any(|(k, _)| *k == receipt.intermediary) {
            return Ok(reply(Outcome::Held { first }));
        }
        if upload.intermediaries.len() >= INTERMEDIARIES_MAX {
            return Ok(refused(Code::FailedPrecondition, "this upload has the most intermediaries allowed"));
        }
        upload.intermediaries.push((receipt.intermediary, receipt.receipt_id));
        kv.put(Table::Uploads.name(), &key, &upload.to_bytes())?;
        Ok(reply(Outcome::Held { first }))
    }

    /// Count undelivered uploads against their relays for events whose transfer window ended.
    fn expire<K: Tables + ?Sized>(&self, kv: &mut K, time_ms: u64) -> Result<(), StoreError> {
        let due = kv.range(Table::Due.name(), &[], &time_ms.to_be_bytes(), 64)?;
        for (key, _) in due {
            kv.delete(Table::Due.name(), &key)?;
            let Some(event) = key.get(8..24).and_then(|e| <[u8; 16]>::try_from(e).ok()) else { continue };
            for (_, value) in scan(kv, Table::Uploads, &event, COLLECTION_UPLOADS_MAX)? {
                let Some(upload) = decoded::<Upload>(Table::Uploads, Some(value))? else { continue };
                if upload.stored_by.len() > self.config.t as usize {
                    continue;
                }
                for (relay, _) in &upload.intermediaries {
                    if let Some(mut state) = decoded::<RelayState>(Table::Relays, kv.get(Table::Relays.name(), relay)?)?
                    {
                        state.undelivered += 1;
                        kv.put(Table::Relays.name(), relay, &state.to_bytes())?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Payloads longer than this are refused undecoded (the longest bistro request, a held report
/// with its receipt and capsule, is under 1 KiB).
pub const PAYLOAD_MAX: usize = 64 * 1024;

impl host::Service for Service {
    const ID: ServiceId = ServiceId(*crate::records::MAGIC);
    const NAME: &'static str = "bistro";
    const TABLES: &'static [&'static str] = &Table::NAMES;
    const PAYLOAD_MAX: usize = PAYLOAD_MAX;
    type Request = Request;
    type Query = view::Query;
    type View = view::View;

    fn decode(&self, payload: &[u8]) -> Result<Request, DecodeError> {
        Request::from_payload(payload)
    }

    fn apply(&self, tables: &mut dyn Tables, at: &Applied, request: Request) -> Result<Vec<host::Outcome>, StoreError> {
        Ok(vec![self.handle(tables, at.epoch, at.index, at.time_ms, request)?])
    }

    /// Transfer windows that the agreed time closed: their undelivered uploads count against
    /// their relays (before the epoch's requests, as the bistro always did).
    fn begin_epoch(&self, tables: &mut dyn Tables, at: &EpochStart) -> Result<Vec<host::Outcome>, StoreError> {
        self.expire(tables, at.time_ms)?;
        Ok(Vec::new())
    }

    fn query(&self, tables: &dyn Tables, query: view::Query) -> Result<view::View, QueryError> {
        Ok(view::answer(tables, query)?)
    }
}

/// The hash of the epoch-certificate leaf of a bistro record (its canonical bytes): the service
/// leaf `(BST1, record)` of docs/certificate.md.
pub fn record_leaf(record: &[u8]) -> [u8; 32] {
    fides_service::certificate::Leaf::Service { service: <Service as host::Service>::ID, record: record.to_vec() }
        .hash()
}

/// The bistro's answer for one of its outcomes as the host carries it; a signed record gets
/// leaf index `leaf` in its epoch's tree.
pub fn answer(outcome: &host::Outcome, leaf: u64) -> Result<Outcome, DecodeError> {
    Ok(match outcome {
        host::Outcome::Sign(record) => Outcome::Signed { record: Signed::from_bytes(record)?, leaf },
        host::Outcome::Reply(reply) => Outcome::from_bytes(reply)?,
        host::Outcome::Refuse(refusal) => Outcome::Refused { code: refusal.code, message: refusal.reason.clone() },
        // The bistro asks for neither agreements nor other signatures.
        host::Outcome::Agree { .. } | host::Outcome::ThresholdSign { .. } | host::Outcome::Await { .. } => {
            return Err(DecodeError::Invalid { what: "bistro outcome", value: 0 })
        }
    })
}

/// The bistro's part of a batch the registry applied, alone: its answers by index, and the leaf
/// hashes of its signed records in order (each answer's leaf index is its place there). The
/// host's epoch tree holds more leaves (the ordering leaves, other services' records): it numbers
/// them itself; this is for tests and tools that look at the bistro alone.
pub fn epoch_output(batch: &host::BatchOutcomes) -> Result<EpochOutput, DecodeError> {
    let mut output = EpochOutput::default();
    let ours = batch.requests.iter().filter(|(_, service, _)| *service == Some(<Service as host::Service>::ID));
    for (index, _, outcomes) in ours {
        for outcome in outcomes {
            let answer = answer(outcome, output.leaves.len() as u64)?;
            if let host::Outcome::Sign(record) = outcome {
                output.leaves.push(record_leaf(record));
            }
            output.outcomes.push((*index, answer));
        }
    }
    Ok(output)
}

/// Read-only views of the state, for the replica's answers.
pub mod view {
    use super::*;

    /// A question about the state (each is one of the functions below).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Query {
        /// [`event`].
        Event(EventId),
        /// [`events`].
        Events {
            /// Start after this event.
            after: Option<EventId>,
            /// At most this many.
            max: usize,
        },
        /// [`ticket`].
        Ticket(EventId, u64),
        /// [`upload`].
        Upload(EventId, u64, [u8; 32]),
        /// [`uploads`].
        Uploads(EventId),
        /// [`collection`].
        Collection(EventId, u64),
        /// [`relay`].
        Relay([u8; 32]),
        /// [`relays`].
        Relays,
    }

    /// The answer to a [`Query`], of the same name.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum View {
        /// An event's state.
        Event(Option<EventState>),
        /// Events.
        Events(Vec<EventState>),
        /// A ticket.
        Ticket(Option<Ticket>),
        /// An upload.
        Upload(Option<Upload>),
        /// Uploads: (ticket, hash, upload).
        Uploads(Vec<(u64, [u8; 32], Upload)>),
        /// A collection.
        Collection(Option<Collection>),
        /// A relay.
        Relay(Option<RelayState>),
        /// Relays.
        Relays(Vec<([u8; 32], RelayState)>),
    }

    /// Answer `query` from the bistro's tables.
    pub fn answer<K: Tables + ?Sized>(kv: &K, query: Query) -> Result<View, StoreError> {
        Ok(match query {
            Query::Event(e) => View::Event(event(kv, &e)?),
            Query::Events { after, max } => View::Events(events(kv, after.as_ref(), max)?),
            Query::Ticket(e, t) => View::Ticket(ticket(kv, &e, t)?),
            Query::Upload(e, t, h) => View::Upload(upload(kv, &e, t, &h)?),
            Query::Uploads(e) => View::Uploads(uploads(kv, &e)?),
            Query::Collection(e, n) => View::Collection(collection(kv, &e, n)?),
            Query::Relay(key) => View::Relay(relay(kv, &key)?),
            Query::Relays => View::Relays(relays(kv)?),
        })
    }

    /// An event's state.
    pub fn event<K: Tables + ?Sized>(kv: &K, event: &EventId) -> Result<Option<EventState>, StoreError> {
        decoded(Table::Events, kv.get(Table::Events.name(), &event.0)?)
    }

    /// A ticket.
    pub fn ticket<K: Tables + ?Sized>(kv: &K, event: &EventId, ticket: u64) -> Result<Option<Ticket>, StoreError> {
        decoded(Table::Tickets, kv.get(Table::Tickets.name(), &ticket_key(event, ticket))?)
    }

    /// An upload.
    pub fn upload<K: Tables + ?Sized>(
        kv: &K,
        event: &EventId,
        ticket: u64,
        hash: &[u8; 32],
    ) -> Result<Option<Upload>, StoreError> {
        decoded(Table::Uploads, kv.get(Table::Uploads.name(), &upload_key(event, ticket, hash))?)
    }

    /// Every upload of an event: (ticket, hash, upload).
    pub fn uploads<K: Tables + ?Sized>(kv: &K, event: &EventId) -> Result<Vec<(u64, [u8; 32], Upload)>, StoreError> {
        let mut out = Vec::new();
        for (key, value) in scan(kv, Table::Uploads, &event.0, COLLECTION_UPLOADS_MAX)? {
            let (Some(ticket), Some(hash)) = (key.get(16..24), key.get(24..56)) else { continue };
            let (Ok(ticket), Ok(hash)) = (<[u8; 8]>::try_from(ticket), <[u8; 32]>::try_from(hash)) else { continue };
            if let Some(upload) = decoded::<Upload>(Table::Uploads, Some(value))? {
                out.push((u64::from_be_bytes(ticket), hash, upload));
            }
        }
        Ok(out)
    }

    /// A collection.
    pub fn collection<K: Tables + ?Sized>(
        kv: &K,
        event: &EventId,
        number: u64,
    ) -> Result<Option<Collection>, StoreError> {
        decoded(Table::Collections, kv.get(Table::Collections.name(), &ticket_key(event, number))?)
    }

    /// A relay.
    pub fn relay<K: Tables + ?Sized>(kv: &K, key: &[u8; 32]) -> Result<Option<RelayState>, StoreError> {
        decoded(Table::Relays, kv.get(Table::Relays.name(), key)?)
    }

    /// Every relay.
    pub fn relays<K: Tables + ?Sized>(kv: &K) -> Result<Vec<([u8; 32], RelayState)>, StoreError> {
        let mut out = Vec::new();
        for (key, value) in kv.range(Table::Relays.name(), &[], &[0xff; 33], 100_000)? {
            if let (Ok(key), Some(state)) = (<[u8; 32]>::try_from(key.as_slice()), decoded(Table::Relays, Some(value))?)
            {
                out.push((key, state));
            }
        }
        Ok(out)
    }

    /// Events, from `after` on (exclusive), at most `max`.
    pub fn events<K: Tables + ?Sized>(
        kv: &K,
        after: Option<&EventId>,
        max: usize,
    ) -> Result<Vec<EventState>, StoreError> {
        let from = after.map(|e| prefix_end(&e.0)).unwrap_or_default();
        kv.range(Table::Events.name(), &from, &[0xff; 17], max)?
            .into_iter()
            .filter_map(|(_, value)| decoded(Table::Events, Some(value)).transpose())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::seal_commit;
    use crate::records::{ed_sign, CollectRequest, Receipt, RelayRegistration, StoredReport};
    use crate::stream::{Aead, HashAlg};
    use ed25519_dalek::SigningKey;
    use fides_service::MemoryTables;
    use rand::SeedableRng;

    const CLUSTER: [u8; 32] = [5; 32];

    struct Setup {
        service: Service,
        replicas: Vec<SigningKey>,
        encryption: blsttc::SecretKeySet,
        owner: SigningKey,
        relay: SigningKey,
        rng: rand_chacha::ChaCha20Rng,
    }

    fn setup() -> Setup {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let replicas: Vec<SigningKey> = (0..4).map(|_| SigningKey::generate(&mut rng)).collect();
        let encryption = blsttc::SecretKeySet::random(1, &mut rng);
        let service = Service::new(ServiceConfig {
            cluster: CLUSTER,
            t: 1,
            replicas: replicas.iter().map(|k| k.verifying_key().to_bytes()).collect(),
            encryption: encryption.public_keys(),
        });
        Setup {
            service,
            replicas,
            encryption,
            owner: SigningKey::generate(&mut rng),
            relay: SigningKey::generate(&mut rng),
            rng,
        }
    }

    /// Apply a batch the way the host does: through a registry with the bistro in it, with a
    /// request for no service last (skipped, as before the host).
    fn apply(s: &Setup, kv: &mut MemoryTables, epoch: u64, time: u64, requests: &[Request]) -> EpochOutput {
        let mut registry = host::Registry::new();
        registry.register(s.service.clone()).expect("the only service");
        let mut payloads: Vec<Vec<u8>> = requests.iter().map(Request::to_payload).collect();
        payloads.push(b"not for any service".to_vec());
        let ordered = payloads.iter().map(|p| host::Ordered { client: 1, request: 1, payload: p });
        let batch = registry.apply_batch(kv, epoch, time, ordered).expect("memory");
        let output = epoch_output(&batch).expect("the bistro's outcomes decode");
        assert_eq!(output.outcomes.len(), requests.len(), "one answer per bistro request, none for the other");
        output
    }

    /// The bistro's view of a store.
    fn view<T>(kv: &MemoryTables, query: view::Query, pick: impl FnOnce(view::View) -> Option<T>) -> T {
        let mut registry = host::Registry::new();
        registry.register(setup().service).expect("the only service");
        pick(registry.query::<Service>(kv, query).expect("memory")).expect("the view asked for")
    }

    fn create(s: &Setup, deadline: u64, window: u64) -> Request {
        let terms = EventTerms {
            deadline_ms: deadline,
            description: "d".into(),
            owner: s.owner.verifying_key().to_bytes(),
            hash: HashAlg::Sha256,
            aead: Aead::XChaCha20Poly1305,
            transfer_window_ms: window,
            nonce: 1,
        };
        let signature = ed_sign(&s.owner, domain::CREATE, &CLUSTER, &terms.to_bytes());
        Request::CreateEvent { terms, signature }
    }

    fn ticket(event: EventId, size: u64) -> Request {
        Request::Ticket(TicketRequest { event, digest: vec![7; 32], size, contact: "c".into(), file_name: "f".into() })
    }

    fn code(outcome: &Outcome) -> Option<Code> {
        match outcome {
            Outcome::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A commit file's upload hash, size and capsule for `ticket` of `event` (a 100-byte file).
    fn commit(s: &mut Setup, event: EventId, ticket: u64) -> ([u8; 32], u64, Vec<u8>) {
        let mut out = Vec::new();
        let public = s.encryption.public_keys().public_key();
        let size = seal_commit(
            &CLUSTER,
            &public,
            Aead::XChaCha20Poly1305,
            &event,
            ticket,
            &[1u8; 100][..],
            &mut out,
            &mut s.rng,
            &mut |_| {},
        )
        .expect("seal");
        let header = crate::commit::CommitHeader::read(&mut out.as_slice()).expect("header");
        (fides_crypto::sha256(&out), size, header.capsule)
    }

    fn held(key: &SigningKey, event: EventId, ticket: u64, upload: &([u8; 32], u64, Vec<u8>)) -> Request {
        let receipt = Receipt {
            event,
            ticket,
            upload_hash: upload.0,
            upload_size: upload.1,
            intermediary: key.verifying_key().to_bytes(),
            receipt_id: 1,
            time_ms: 0,
        };
        Request::Held(HeldReport { signature: receipt.sign(key, &CLUSTER), receipt, capsule: upload.2.clone() })
    }

    fn stored(s: &Setup, event: EventId, ticket: u64, hash: [u8; 32], replica: u32) -> Request {
        let body = StoredReport::body(&event, ticket, &hash, replica);
        let signature = ed_sign(&s.replicas[replica as usize], domain::STORED, &CLUSTER, &body);
        Request::Stored(StoredReport { event, ticket, upload_hash: hash, replica, signature })
    }

    #[test]
    fn tickets_count_up_until_the_deadline_and_refusals_change_nothing() {
        let s = setup();
        let mut kv = MemoryTables::default();
        let out = apply(&s, &mut kv, 0, 1_000, &[create(&s, 5_000, 1_000)]);
        let Outcome::Signed { record: Signed::Event(record), leaf: 0 } = &out.outcomes[0].1 else {
            panic!("no event record: {out:?}")
        };
        let event = record.event;
        assert_eq!(event, EventId::derive(&CLUSTER, 0, 0));
        let before = kv.clone();
        let bad = [
            ticket(EventId([0; 16]), 1),
            Request::Ticket(TicketRequest {
                event,
                digest: vec![1; 31],
                size: 1,
                contact: String::new(),
                file_name: String::new(),
            }),
            ticket(event, u64::MAX),
        ];
        let out = apply(&s, &mut kv, 1, 2_000, &bad);
        let codes: Vec<_> = out.outcomes.iter().map(|(_, o)| code(o)).collect();
        assert_eq!(codes, vec![Some(Code::NotFound), Some(Code::InvalidArgument), Some(Code::InvalidArgument)]);
        assert!(out.leaves.is_empty());
        assert_eq!(kv, before, "refusals change nothing");
        let out = apply(&s, &mut kv, 2, 5_000, &[ticket(event, 10), ticket(event, 20)]);
        let numbers: Vec<u64> = out
            .outcomes
            .iter()
            .map(|(_, o)| match o {
                Outcome::Signed { record: Signed::Ticket(t), .. } => t.ticket,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(numbers, vec![1, 2], "at the deadline itself tickets are still issued");
        assert_eq!(out.leaves.len(), 2);
        let out = apply(&s, &mut kv, 3, 5_001, &[ticket(event, 10)]);
        match &out.outcomes[0].1 {
            Outcome::Refused { code: Code::FailedPrecondition, message } => {
                assert!(message.contains("deadline") && message.contains("agreed time"), "{message}")
            }
            other => panic!("a late ticket: {other:?}"),
        }
        // The same batches give the same outcomes at another replica.
        let mut other = MemoryTables::default();
        let a = apply(&s, &mut other, 0, 1_000, &[create(&s, 5_000, 1_000)]);
        assert_eq!(a.leaves.len(), 1);
        assert_eq!(apply(&s, &mut other, 2, 5_000, &[ticket(event, 10), ticket(event, 20)]).leaves, out_leaves(&s));
    }

    #[test]
    fn a_malformed_bistro_payload_is_refused_by_the_registry_and_changes_nothing() {
        let s = setup();
        let mut registry = host::Registry::new();
        registry.register(s.service.clone()).expect("the only service");
        let mut kv = MemoryTables::default();
        let payloads = [b"BST1\x09".to_vec(), [&b"BST1\x02"[..], &vec![0; PAYLOAD_MAX]].concat()];
        let ordered = payloads.iter().map(|p| host::Ordered { client: 1, request: 1, payload: p });
        let output = epoch_output(&registry.apply_batch(&mut kv, 0, 1_000, ordered).expect("memory")).expect("decode");
        let codes: Vec<_> = output.outcomes.iter().map(|(_, o)| code(o)).collect();
        assert_eq!(codes, vec![Some(Code::InvalidArgument); 2]);
        match &output.outcomes[0].1 {
            Outcome::Refused { message, .. } => assert!(message.starts_with("malformed bistro request"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(kv, MemoryTables::default());
    }

    #[test]
    fn a_ticket_through_the_registry_is_signed_as_its_canonical_bytes() {
        let s = setup();
        let mut registry = host::Registry::new();
        registry.register(s.service.clone()).expect("the only service");
        let mut kv = MemoryTables::default();
        let payloads =
            [create(&s, 5_000, 1_000).to_payload(), ticket(EventId::derive(&CLUSTER, 0, 0), 10).to_payload()];
        let ordered = payloads.iter().map(|p| host::Ordered { client: 1, request: 1, payload: p });
        let batch = registry.apply_batch(&mut kv, 0, 1_000, ordered).expect("memory");
        let host::Outcome::Sign(bytes) = &batch.requests[1].2[0] else { panic!("{batch:?}") };
        let record = Signed::from_bytes(bytes).expect("the signed bytes are the record");
        // Format 1's leaf, SHA-256(tagged(LEAF, [cluster, 2, ticket])), of this ticket, as computed
        // before the host: a change here breaks every format-1 ticket already issued.
        let leaf = record.leaf(&CLUSTER);
        assert_eq!(hex::encode(leaf), "5201664e8744c801f8e76a961067dd10e5534e39533b798b5e2f35d5bef4f64e");
        // Format 2's leaf: the certificate's service leaf of the same bytes.
        let framed = [&b"\x02BST1"[..], &(bytes.len() as u32).to_le_bytes(), bytes].concat();
        assert_eq!(record_leaf(bytes), fides_service::certificate::leaf_hash(&framed));
    }

    fn out_leaves(s: &Setup) -> Vec<[u8; 32]> {
        let mut kv = MemoryTables::default();
        apply(s, &mut kv, 0, 1_000, &[create(s, 5_000, 1_000)]);
        let event = EventId::derive(&CLUSTER, 0, 0);
        apply(s, &mut kv, 2, 5_000, &[ticket(event, 10), ticket(event, 20)]).leaves
    }

    #[test]
    fn uploads_are_held_stored_collected_and_counted_against_a_relay_that_does_not_deliver() {
        let mut s = setup();
        let mut kv = MemoryTables::default();
        apply(&s, &mut kv, 0, 1_000, &[create(&s, 5_000, 1_000)]);
        let event = EventId::derive(&CLUSTER, 0, 0);
        apply(&s, &mut kv, 1, 2_000, &[ticket(event, 100), ticket(event, 100)]);
        let registration = RelayRegistration { key: s.relay.verifying_key().to_bytes(), address: "r:1".into(), seq: 1 };
        let signature = ed_sign(&s.relay, domain::RELAY, &CLUSTER, &registration.to_bytes());
        let register = Request::RegisterRelay { registration, signature };
        let out = apply(&s, &mut kv, 2, 2_100, &[register.clone(), register]);
        assert_eq!(out.outcomes[0].1, Outcome::RelayRegistered);
        assert_eq!(code(&out.outcomes[1].1), Some(Code::AlreadyExists), "a replayed registration");

        let first = commit(&mut s, event, 1);
        let second = commit(&mut s, event, 2);
        let stranger = SigningKey::from_bytes(&[9; 32]);
        let mut moved = held(&s.relay, event, 2, &first);
        if let Request::Held(report) = &mut moved {
            report.receipt.upload_hash = second.0;
            report.receipt.upload_size = second.1;
            report.signature = report.receipt.sign(&s.relay, &CLUSTER);
        }
        let mut short = held(&s.relay, event, 1, &first);
        if let Request::Held(report) = &mut short {
            report.receipt.upload_size -= 1;
            report.signature = report.receipt.sign(&s.relay, &CLUSTER);
        }
        let out = apply(
            &s,
            &mut kv,
            3,
            3_000,
            &[
                held(&s.relay, event, 1, &first),
                held(&s.relay, event, 1, &first),
                held(&s.replicas[2], event, 2, &second),
                held(&stranger, event, 1, &first),
                moved,
                short,
            ],
        );
        let got: Vec<_> = out.outcomes.iter().map(|(_, o)| o.clone()).collect();
        assert_eq!(got[0], Outcome::Held { first: true });
        assert_eq!(got[1], Outcome::Held { first: false });
        assert_eq!(got[2], Outcome::Held { first: true });
        assert_eq!(code(&got[3]), Some(Code::PermissionDenied), "not a replica nor a relay");
        assert_eq!(code(&got[4]), Some(Code::InvalidArgument), "a capsule moved to another ticket");
        assert_eq!(code(&got[5]), Some(Code::InvalidArgument), "a size that does not fit the ticket");

        // Ticket 2's upload is stored by two replicas (t + 1); ticket 1's by one.
        let out = apply(
            &s,
            &mut kv,
            4,
            4_000,
            &[stored(&s, event, 2, second.0, 0), stored(&s, event, 2, second.0, 1), stored(&s, event, 1, first.0, 3)],
        );
        assert_eq!(out.outcomes[1].1, Outcome::Stored { replicas: 2 });
        // The transfer window ends at 6,000: the relay's upload is overdue and counted.
        let status = Request::Status { event, tickets: vec![1, 2, 3] };
        let out = apply(&s, &mut kv, 5, 6_001, std::slice::from_ref(&status));
        let Outcome::Signed { record: Signed::Status(record), .. } = &out.outcomes[0].1 else { panic!("{out:?}") };
        assert!(record.deadline_passed);
        assert!(record.tickets[0].uploads[0].overdue);
        assert!(!record.tickets[1].uploads[0].overdue);
        assert!(!record.tickets[2].issued);
        let relay = view(&kv, view::Query::Relay(s.relay.verifying_key().to_bytes()), |v| match v {
            view::View::Relay(relay) => relay,
            _ => None,
        });
        assert_eq!(relay.undelivered, 1);

        // Collections: the owner's, once per nonce; nobody else's.
        let request = CollectRequest { event, recipient: [1; 32], nonce: 4 };
        let owner_signature = ed_sign(&s.owner, domain::COLLECT, &CLUSTER, &request.to_bytes());
        let forged = ed_sign(&stranger, domain::COLLECT, &CLUSTER, &request.to_bytes());
        let out = apply(
            &s,
            &mut kv,
            6,
            7_000,
            &[
                Request::Collect { request: request.clone(), signature: forged },
                Request::Collect { request: request.clone(), signature: owner_signature },
                Request::Collect { request, signature: owner_signature },
            ],
        );
        assert_eq!(code(&out.outcomes[0].1), Some(Code::PermissionDenied));
        assert_eq!(out.outcomes[1].1, Outcome::Collected { number: 1, uploads: 2 });
        assert_eq!(code(&out.outcomes[2].1), Some(Code::AlreadyExists));
        let collection = view(&kv, view::Query::Collection(event, 1), |v| match v {
            view::View::Collection(collection) => collection,
            _ => None,
        });
        assert_eq!(collection.uploads.len(), 2);
        let uploads = view(&kv, view::Query::Uploads(event), |v| match v {
            view::View::Uploads(uploads) => Some(uploads),
            _ => None,
        });
        assert!(uploads.iter().all(|(_, _, u)| u.collected));
    }
}
