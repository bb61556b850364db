//! The bistro service: a deterministic state machine over the ordered requests.
//!
//! Every replica applies the same batches in the same order to the same state and gets the same
//! outcomes: the event ids, ticket numbers, refusals and signed records are equal everywhere, so
//! `t + 1` replicas can sign an epoch's records and nobody needs to trust one replica's word. The
//! only clock is the epoch's agreed time.
//!
//! State lives in an ordered key-value store ([`Kv`]): the replica backs it with redb (written in
//! one transaction per epoch), tests with a `BTreeMap`.

use std::collections::BTreeMap;

use blsttc::PublicKeySet;
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

    /// Its name in a store.
    pub fn name(self) -> &'static str {
        match self {
            Table::Events => "bistro_events",
            Table::Tickets => "bistro_tickets",
            Table::Relays => "bistro_relays",
            Table::Uploads => "bistro_uploads",
            Table::Collections => "bistro_collections",
            Table::Due => "bistro_due",
        }
    }
}

/// A failure of the store under the service (fatal for the replica: it must not go on).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// A stored value does not decode.
    #[error("corrupt {table:?} value: {error}")]
    Corrupt {
        /// The table.
        table: Table,
        /// Why.
        error: DecodeError,
    },
}

/// An ordered key-value store.
pub trait Kv {
    /// The value under `key`.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Set `key` to `value`.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), KvError>;
    /// Remove `key`.
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), KvError>;
    /// The entries with `from <= key < to`, in order (at most `max`).
    fn range(&self, table: Table, from: &[u8], to: &[u8], max: usize) -> Result<Entries, KvError>;
}

/// Key-value pairs, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A [`Kv`] in memory.
#[derive(Clone, Debug, Default)]
pub struct MemoryKv {
    tables: BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Kv for MemoryKv {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.tables.get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.tables.entry(table).or_default().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), KvError> {
        if let Some(t) = self.tables.get_mut(&table) {
            t.remove(key);
        }
        Ok(())
    }

    fn range(&self, table: Table, from: &[u8], to: &[u8], max: usize) -> Result<Entries, KvError> {
        Ok(self
            .tables
            .get(&table)
            .map(|t| t.range(from.to_vec()..to.to_vec()).take(max).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }
}

/// The end of the range of keys that start with `prefix` (prefixes here never are all 0xff).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

fn scan<K: Kv + ?Sized>(kv: &K, table: Table, prefix: &[u8], max: usize) -> Result<Entries, KvError> {
    kv.range(table, prefix, &prefix_end(prefix), max)
}

fn decoded<T: Wire>(table: Table, bytes: Option<Vec<u8>>) -> Result<Option<T>, KvError> {
    bytes.map(|b| T::from_bytes(&b).map_err(|error| KvError::Corrupt { table, error })).transpose()
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

/// Why a request was refused: the gRPC status a client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Malformed or out of bounds.
    InvalidArgument,
    /// No such event or ticket.
    NotFound,
    /// Not now: the deadline passed, or not yet.
    FailedPrecondition,
    /// A signature that does not verify, or a key that may not do this.
    PermissionDenied,
    /// Done already (a replayed request).
    AlreadyExists,
}

impl Code {
    fn id(self) -> u8 {
        match self {
            Code::InvalidArgument => 1,
            Code::NotFound => 2,
            Code::FailedPrecondition => 3,
            Code::PermissionDenied => 4,
            Code::AlreadyExists => 5,
        }
    }

    fn from_id(id: u8) -> Option<Code> {
        Some(match id {
            1 => Code::InvalidArgument,
            2 => Code::NotFound,
            3 => Code::FailedPrecondition,
            4 => Code::PermissionDenied,
            5 => Code::AlreadyExists,
            _ => return None,
        })
    }
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
                out.push(code.id());
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
                let code = Code::from_id(id).ok_or(DecodeError::Invalid { what: "code", value: u64::from(id) })?;
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
    /// The outcome of each bistro request, by its index in the batch.
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

fn refused(code: Code, message: impl Into<String>) -> Outcome {
    Outcome::Refused { code, message: message.into() }
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

    /// Apply one epoch's batch: `requests` are (index in the batch, payload) of every request;
    /// those that are not bistro requests are skipped.
    pub fn apply<'a, K: Kv + ?Sized>(
        &self,
        kv: &mut K,
        epoch: u64,
        time_ms: u64,
        requests: impl IntoIterator<Item = (u32, &'a [u8])>,
    ) -> Result<EpochOutput, KvError> {
        self.expire(kv, time_ms)?;
        let mut output = EpochOutput::default();
        for (index, payload) in requests {
            if !Request::is_bistro(payload) {
                continue;
            }
            let outcome = match Request::from_payload(payload) {
                Ok(request) => self.handle(kv, epoch, index, time_ms, request, &mut output)?,
                Err(error) => refused(Code::InvalidArgument, format!("malformed bistro request: {error}")),
            };
            output.outcomes.push((index, outcome));
        }
        Ok(output)
    }

    fn sign(&self, output: &mut EpochOutput, record: Signed) -> Outcome {
        let leaf = output.leaves.len() as u64;
        output.leaves.push(record.leaf(&self.config.cluster));
        Outcome::Signed { record, leaf }
    }

    fn handle<K: Kv + ?Sized>(
        &self,
        kv: &mut K,
        epoch: u64,
        index: u32,
        time_ms: u64,
        request: Request,
        output: &mut EpochOutput,
    ) -> Result<Outcome, KvError> {
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
                kv.put(Table::Events, &event.0, &state.to_bytes())?;
                kv.put(Table::Due, &[&due.to_be_bytes()[..], &event.0].concat(), &[])?;
                self.sign(output, Signed::Event(record))
            }
            Request::Ticket(request) => match self.ticket(kv, time_ms, request)? {
                Ok(ticket) => self.sign(output, Signed::Ticket(ticket)),
                Err(outcome) => outcome,
            },
            Request::RegisterRelay { registration, signature } => {
                if !ed_verify(&registration.key, domain::RELAY, &cluster, &registration.to_bytes(), &signature) {
                    return Ok(refused(Code::PermissionDenied, "the relay's signature does not verify"));
                }
                if self.config.replicas.contains(&registration.key) {
                    return Ok(refused(Code::InvalidArgument, "a replica's key is no relay key"));
                }
                let old: Option<RelayState> = decoded(Table::Relays, kv.get(Table::Relays, &registration.key)?)?;
                if old.as_ref().is_some_and(|o| o.seq >= registration.seq) {
                    return Ok(refused(Code::AlreadyExists, "a registration with this or a higher number exists"));
                }
                let state = RelayState {
                    address: registration.address,
                    seq: registration.seq,
                    undelivered: old.map_or(0, |o| o.undelivered),
                };
                kv.put(Table::Relays, &registration.key, &state.to_bytes())?;
                Outcome::RelayRegistered
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
                let Some(mut upload) = decoded::<Upload>(Table::Uploads, kv.get(Table::Uploads, &key)?)? else {
                    return Ok(refused(Code::NotFound, "no such upload"));
                };
                if !upload.stored_by.contains(&report.replica) {
                    upload.stored_by.push(report.replica);
                    upload.stored_by.sort_unstable();
                    kv.put(Table::Uploads, &key, &upload.to_bytes())?;
                }
                Outcome::Stored { replicas: upload.stored_by.len() as u32 }
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
                        kv.put(Table::Uploads, &key, &upload.to_bytes())?;
                    }
                }
                event.collections += 1;
                event.nonces.push(request.nonce);
                let number = event.collections;
                kv.put(Table::Events, &request.event.0, &event.to_bytes())?;
                let count = uploads.len() as u64;
                let collection = Collection { recipient: request.recipient, time_ms, uploads };
                kv.put(Table::Collections, &ticket_key(&request.event, number), &collection.to_bytes())?;
                Outcome::Collected { number, uploads: count }
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
                        decoded(Table::Tickets, kv.get(Table::Tickets, &ticket_key(&event, ticket))?)?;
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
                self.sign(output, Signed::Status(record))
            }
        })
    }

    fn event<K: Kv + ?Sized>(&self, kv: &K, event: &EventId) -> Result<Option<EventState>, KvError> {
        decoded(Table::Events, kv.get(Table::Events, &event.0)?)
    }

    fn ticket<K: Kv + ?Sized>(
        &self,
        kv: &mut K,
        time_ms: u64,
        request: TicketRequest,
    ) -> Result<Result<Ticket, Outcome>, KvError> {
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
        kv.put(Table::Events, &request.event.0, &event.to_bytes())?;
        kv.put(Table::Tickets, &ticket_key(&request.event, ticket.ticket), &ticket.to_bytes())?;
        Ok(Ok(ticket))
    }

    fn held<K: Kv + ?Sized>(&self, kv: &mut K, report: HeldReport) -> Result<Outcome, KvError> {
        let cluster = self.config.cluster;
        let receipt = &report.receipt;
        let is_replica = self.config.replicas.contains(&receipt.intermediary);
        if !is_replica && kv.get(Table::Relays, &receipt.intermediary)?.is_none() {
            return Ok(refused(Code::PermissionDenied, "the intermediary is neither a replica nor a registered relay"));
        }
        if !receipt.verify(&cluster, &report.signature) {
            return Ok(refused(Code::PermissionDenied, "the receipt's signature does not verify"));
        }
        let Some(event) = self.event(kv, &receipt.event)? else {
            return Ok(refused(Code::NotFound, format!("no event {}", receipt.event)));
        };
        let Some(ticket) =
            decoded::<Ticket>(Table::Tickets, kv.get(Table::Tickets, &ticket_key(&receipt.event, receipt.ticket))?)?
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
        let existing = decoded::<Upload>(Table::Uploads, kv.get(Table::Uploads, &key)?)?;
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
            return Ok(Outcome::Held { first });
        }
        if upload.intermediaries.len() >= INTERMEDIARIES_MAX {
            return Ok(refused(Code::FailedPrecondition, "this upload has the most intermediaries allowed"));
        }
        upload.intermediaries.push((receipt.intermediary, receipt.receipt_id));
        kv.put(Table::Uploads, &key, &upload.to_bytes())?;
        Ok(Outcome::Held { first })
    }

    /// Count undelivered uploads against their relays for events whose transfer window ended.
    fn expire<K: Kv + ?Sized>(&self, kv: &mut K, time_ms: u64) -> Result<(), KvError> {
        let due = kv.range(Table::Due, &[], &time_ms.to_be_bytes(), 64)?;
        for (key, _) in due {
            kv.delete(Table::Due, &key)?;
            let Some(event) = key.get(8..24).and_then(|e| <[u8; 16]>::try_from(e).ok()) else { continue };
            for (_, value) in scan(kv, Table::Uploads, &event, COLLECTION_UPLOADS_MAX)? {
                let Some(upload) = decoded::<Upload>(Table::Uploads, Some(value))? else { continue };
                if upload.stored_by.len() > self.config.t as usize {
                    continue;
                }
                for (relay, _) in &upload.intermediaries {
                    if let Some(mut state) = decoded::<RelayState>(Table::Relays, kv.get(Table::Relays, relay)?)? {
                        state.undelivered += 1;
                        kv.put(Table::Relays, relay, &state.to_bytes())?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Read-only views of the state, for the replica's answers.
pub mod view {
    use super::*;

    /// An event's state.
    pub fn event<K: Kv + ?Sized>(kv: &K, event: &EventId) -> Result<Option<EventState>, KvError> {
        decoded(Table::Events, kv.get(Table::Events, &event.0)?)
    }

    /// A ticket.
    pub fn ticket<K: Kv + ?Sized>(kv: &K, event: &EventId, ticket: u64) -> Result<Option<Ticket>, KvError> {
        decoded(Table::Tickets, kv.get(Table::Tickets, &ticket_key(event, ticket))?)
    }

    /// An upload.
    pub fn upload<K: Kv + ?Sized>(
        kv: &K,
        event: &EventId,
        ticket: u64,
        hash: &[u8; 32],
    ) -> Result<Option<Upload>, KvError> {
        decoded(Table::Uploads, kv.get(Table::Uploads, &upload_key(event, ticket, hash))?)
    }

    /// Every upload of an event: (ticket, hash, upload).
    pub fn uploads<K: Kv + ?Sized>(kv: &K, event: &EventId) -> Result<Vec<(u64, [u8; 32], Upload)>, KvError> {
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
    pub fn collection<K: Kv + ?Sized>(kv: &K, event: &EventId, number: u64) -> Result<Option<Collection>, KvError> {
        decoded(Table::Collections, kv.get(Table::Collections, &ticket_key(event, number))?)
    }

    /// A relay.
    pub fn relay<K: Kv + ?Sized>(kv: &K, key: &[u8; 32]) -> Result<Option<RelayState>, KvError> {
        decoded(Table::Relays, kv.get(Table::Relays, key)?)
    }

    /// Every relay.
    pub fn relays<K: Kv + ?Sized>(kv: &K) -> Result<Vec<([u8; 32], RelayState)>, KvError> {
        let mut out = Vec::new();
        for (key, value) in kv.range(Table::Relays, &[], &[0xff; 33], 100_000)? {
            if let (Ok(key), Some(state)) = (<[u8; 32]>::try_from(key.as_slice()), decoded(Table::Relays, Some(value))?)
            {
                out.push((key, state));
            }
        }
        Ok(out)
    }

    /// Events, from `after` on (exclusive), at most `max`.
    pub fn events<K: Kv + ?Sized>(kv: &K, after: Option<&EventId>, max: usize) -> Result<Vec<EventState>, KvError> {
        let from = after.map(|e| prefix_end(&e.0)).unwrap_or_default();
        kv.range(Table::Events, &from, &[0xff; 17], max)?
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

    fn apply(s: &Setup, kv: &mut MemoryKv, epoch: u64, time: u64, requests: &[Request]) -> EpochOutput {
        let payloads: Vec<Vec<u8>> = requests.iter().map(Request::to_payload).collect();
        s.service
            .apply(kv, epoch, time, payloads.iter().enumerate().map(|(i, p)| (i as u32, p.as_slice())))
            .expect("apply")
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
        let mut kv = MemoryKv::default();
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
        assert_eq!(format!("{:?}", kv.tables), format!("{:?}", before.tables), "refusals change nothing");
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
        let mut other = MemoryKv::default();
        let a = apply(&s, &mut other, 0, 1_000, &[create(&s, 5_000, 1_000)]);
        assert_eq!(a.leaves.len(), 1);
        assert_eq!(apply(&s, &mut other, 2, 5_000, &[ticket(event, 10), ticket(event, 20)]).leaves, out_leaves(&s));
    }

    fn out_leaves(s: &Setup) -> Vec<[u8; 32]> {
        let mut kv = MemoryKv::default();
        apply(s, &mut kv, 0, 1_000, &[create(s, 5_000, 1_000)]);
        let event = EventId::derive(&CLUSTER, 0, 0);
        apply(s, &mut kv, 2, 5_000, &[ticket(event, 10), ticket(event, 20)]).leaves
    }

    #[test]
    fn uploads_are_held_stored_collected_and_counted_against_a_relay_that_does_not_deliver() {
        let mut s = setup();
        let mut kv = MemoryKv::default();
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
        let relay = view::relay(&kv, &s.relay.verifying_key().to_bytes()).expect("kv").expect("relay");
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
        let collection = view::collection(&kv, &event, 1).expect("kv").expect("collection");
        assert_eq!(collection.uploads.len(), 2);
        assert!(view::uploads(&kv, &event).expect("kv").iter().all(|(_, _, u)| u.collected));
    }
}
