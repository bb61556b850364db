//! The service's tables and the rows it keeps in them (all covered by the epoch's state digest).
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `requests` | instance \[32\] | [`RequestRow`] |
//! | `transit` | subject hash \[32\] ‖ epoch u64 BE ‖ index u32 BE | instance \[32\] |
//! | `certs` | serial magnitude | [`CertRow`] |
//! | `by_key` | key hash \[32\] ‖ serial magnitude | nothing |
//! | `by_name` | name hash \[32\] ‖ serial magnitude | nothing |
//! | `revoked` | serial magnitude | revocation time ms u64 LE ‖ reason u8 |
//! | `crl` | `0` | number u64 ‖ last time ms u64 ‖ due u8 (all LE) |
//! | `crl` | `1` ‖ number u64 BE | TBSCertList DER |
//! | `log` | sequence u64 BE | epoch u64 LE ‖ record |
//! | `meta` | `log` / `revoked` | next log sequence / revoked serials, u64 LE |

use fides_service::interface::REASON_MAX;
use fides_service::{prefix_end, Code, Entries, Refusal, StoreError, Tables};
use fides_types::codec::{get_option, put_bytes, put_option, DecodeError, Reader, Wire};

use super::record::TBS_BYTES_MAX;
use super::request::{get_key, get_serial, put_key, put_serial};
use crate::{Serial, SubjectKey};

/// The tables of the service's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Each mutation by its instance.
    Requests,
    /// The queues of mutations per subject ("in transition").
    Transit,
    /// The certificates in the store (issued, neither revoked nor replaced).
    Certs,
    /// The certificates by key.
    ByKey,
    /// The certificates by subject name.
    ByName,
    /// The revoked serials (the CRL's entries).
    Revoked,
    /// The CRL's state and the latest two TBSCertLists.
    Crl,
    /// Every issued and revoked record, in order (the list of what the CA did).
    Log,
    /// Counters.
    Meta,
}

impl Table {
    /// Every table's name, as the service declares them to the host.
    pub const NAMES: [&'static str; 9] = [
        Table::Requests.name(),
        Table::Transit.name(),
        Table::Certs.name(),
        Table::ByKey.name(),
        Table::ByName.name(),
        Table::Revoked.name(),
        Table::Crl.name(),
        Table::Log.name(),
        Table::Meta.name(),
    ];

    /// Its name among the CA's tables (the store's table is `ca_` and this name).
    pub const fn name(self) -> &'static str {
        match self {
            Table::Requests => "requests",
            Table::Transit => "transit",
            Table::Certs => "certs",
            Table::ByKey => "by_key",
            Table::ByName => "by_name",
            Table::Revoked => "revoked",
            Table::Crl => "crl",
            Table::Log => "log",
            Table::Meta => "meta",
        }
    }
}

pub(crate) fn get(tables: &dyn Tables, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    tables.get(table.name(), key)
}

pub(crate) fn get_row<T: Wire>(tables: &dyn Tables, table: Table, key: &[u8]) -> Result<Option<T>, StoreError> {
    get(tables, table, key)?.map(|bytes| decode(table, &bytes)).transpose()
}

pub(crate) fn decode<T: Wire>(table: Table, bytes: &[u8]) -> Result<T, StoreError> {
    T::from_bytes(bytes).map_err(|error| StoreError::Corrupt { table: table.name().to_owned(), error })
}

pub(crate) fn put(tables: &mut dyn Tables, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    tables.put(table.name(), key, value)
}

pub(crate) fn delete(tables: &mut dyn Tables, table: Table, key: &[u8]) -> Result<(), StoreError> {
    tables.delete(table.name(), key)
}

/// The keys and values under `prefix`, at most `max`, in key order.
pub(crate) fn scan(tables: &dyn Tables, table: Table, prefix: &[u8], max: usize) -> Result<Entries, StoreError> {
    tables.range(table.name(), prefix, &prefix_end(prefix), max)
}

/// A counter of [`Table::Meta`] (0 if never written).
pub(crate) fn counter(tables: &dyn Tables, name: &[u8]) -> Result<u64, StoreError> {
    Ok(match get(tables, Table::Meta, name)? {
        Some(bytes) => decode::<U64>(Table::Meta, &bytes)?.0,
        None => 0,
    })
}

pub(crate) fn set_counter(tables: &mut dyn Tables, name: &[u8], value: u64) -> Result<(), StoreError> {
    put(tables, Table::Meta, name, &value.to_le_bytes())
}

/// A bare `u64` (little-endian).
pub(crate) struct U64(pub u64);

impl Wire for U64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.to_le_bytes());
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(U64(reader.u64()?))
    }
}

/// Where a request was ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    /// The epoch that ordered it.
    pub epoch: u64,
    /// Its index in the epoch's batch.
    pub index: u32,
}

impl Place {
    /// Big-endian, so that keys sort in the order requests were applied.
    pub(crate) fn key(self) -> [u8; 12] {
        let mut key = [0; 12];
        key[..8].copy_from_slice(&self.epoch.to_be_bytes());
        key[8..].copy_from_slice(&self.index.to_be_bytes());
        key
    }
}

/// Where a mutation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestState {
    /// Waiting behind another request on its subject.
    Queued,
    /// Its agreement runs.
    Running,
    /// Decided and applied.
    Done,
    /// Decided against, or refused by the policy at the decision.
    Refused,
}

impl RequestState {
    fn code(self) -> u8 {
        match self {
            RequestState::Queued => 0,
            RequestState::Running => 1,
            RequestState::Done => 2,
            RequestState::Refused => 3,
        }
    }

    fn from_code(code: u8) -> Result<RequestState, DecodeError> {
        Ok(match code {
            0 => RequestState::Queued,
            1 => RequestState::Running,
            2 => RequestState::Done,
            3 => RequestState::Refused,
            other => return Err(DecodeError::Invalid { what: "request state", value: other.into() }),
        })
    }
}

/// A mutation as ordered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRow {
    /// Where it was ordered.
    pub place: Place,
    /// The client.
    pub client: u64,
    /// The client's id for it.
    pub request: u64,
    /// SHA-256 of its payload.
    pub payload_digest: [u8; 32],
    /// The hash of its subject (the queue it is in).
    pub subject: [u8; 32],
    /// Where it is.
    pub state: RequestState,
    /// What the policy said when it started, if it refused (the reason a decided 0 gives).
    pub refusal: Option<Refusal>,
    /// The payload, until it is decided.
    pub payload: Option<Vec<u8>>,
}

impl Wire for RequestRow {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.place.epoch.to_le_bytes());
        out.extend_from_slice(&self.place.index.to_le_bytes());
        out.extend_from_slice(&self.client.to_le_bytes());
        out.extend_from_slice(&self.request.to_le_bytes());
        out.extend_from_slice(&self.payload_digest);
        out.extend_from_slice(&self.subject);
        out.push(self.state.code());
        put_option(out, self.refusal.as_ref(), |out, refusal| {
            out.push(refusal.code.number());
            put_bytes(out, refusal.reason.as_bytes());
        });
        put_option(out, self.payload.as_ref(), |out, payload| put_bytes(out, payload));
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(RequestRow {
            place: Place { epoch: reader.u64()?, index: reader.u32()? },
            client: reader.u64()?,
            request: reader.u64()?,
            payload_digest: reader.array()?,
            subject: reader.array()?,
            state: RequestState::from_code(reader.u8()?)?,
            refusal: get_option(reader, |reader| {
                let number = reader.u8()?;
                let code =
                    Code::from_number(number).ok_or(DecodeError::Invalid { what: "code", value: number.into() })?;
                let reason = String::from_utf8_lossy(reader.bytes(REASON_MAX)?).into_owned();
                Ok(Refusal { code, reason })
            })?,
            payload: get_option(reader, |reader| Ok(reader.bytes(super::PAYLOAD_MAX)?.to_vec()))?,
        })
    }
}

/// A certificate in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRow {
    /// Its serial.
    pub serial: Serial,
    /// Its TBSCertificate's DER (signed under the cluster's threshold RSA key).
    pub tbs: Vec<u8>,
    /// The certified key.
    pub key: SubjectKey,
    /// The subject name's DER.
    pub name: Vec<u8>,
    /// Where the request that made it was ordered (its answer holds the signature).
    pub place: Place,
    /// The epoch whose certificate signed its issued record (where the decision was applied).
    pub signed_epoch: u64,
}

impl Wire for CertRow {
    fn encode(&self, out: &mut Vec<u8>) {
        put_serial(out, &self.serial);
        put_bytes(out, &self.tbs);
        put_key(out, &self.key);
        put_bytes(out, &self.name);
        out.extend_from_slice(&self.place.epoch.to_le_bytes());
        out.extend_from_slice(&self.place.index.to_le_bytes());
        out.extend_from_slice(&self.signed_epoch.to_le_bytes());
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let corrupt = |what| move |_| DecodeError::Invalid { what, value: 0 };
        Ok(CertRow {
            serial: get_serial(reader).map_err(corrupt("serial"))?,
            tbs: reader.bytes(TBS_BYTES_MAX)?.to_vec(),
            key: get_key(reader).map_err(corrupt("key"))?,
            name: reader.bytes(TBS_BYTES_MAX)?.to_vec(),
            place: Place { epoch: reader.u64()?, index: reader.u32()? },
            signed_epoch: reader.u64()?,
        })
    }
}

/// The CRL's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrlMeta {
    /// The number of the latest CRL (0: none yet).
    pub number: u64,
    /// Its thisUpdate, ms since 1970.
    pub last_ms: u64,
    /// A revocation or an update since.
    pub due: bool,
}

impl Wire for CrlMeta {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.number.to_le_bytes());
        out.extend_from_slice(&self.last_ms.to_le_bytes());
        out.push(u8::from(self.due));
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(CrlMeta { number: reader.u64()?, last_ms: reader.u64()?, due: reader.bool()? })
    }
}

/// The key of the CRL's state in [`Table::Crl`].
pub(crate) const CRL_META: &[u8] = &[0];

/// The key of CRL `number`'s TBS in [`Table::Crl`].
pub(crate) fn crl_key(number: u64) -> [u8; 9] {
    let mut key = [1; 9];
    key[1..].copy_from_slice(&number.to_be_bytes());
    key
}

/// The hash a key is indexed and queued by: SHA-256 of its type and bytes (an Ed25519 and an
/// X25519 key may have the same 32 bytes).
pub fn key_hash(key: &SubjectKey) -> [u8; 32] {
    let mut bytes = Vec::with_capacity(66);
    put_key(&mut bytes, key);
    fides_crypto::sha256(&bytes)
}
