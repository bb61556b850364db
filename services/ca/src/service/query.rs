//! Questions answered from the committed state (`Service::query`): no agreement, one replica's
//! word — a client that needs more asks 2t + 1 replicas and accepts matching answers (§3.2.4).

use fides_service::{Code, InstanceId, QueryError, Refusal, StoreError, Tables};

use super::policy::{certs_of_key, certs_of_name, encoded_name};
use super::store::{crl_key, decode, get, get_row, CertRow, CrlMeta, RequestRow, Table, CRL_META};
use crate::{Serial, SubjectKey, SubjectName};

/// At most this many log entries in one answer.
pub const LOG_LIST_MAX: u32 = 1000;

/// A question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// The certificates in the store of a key, of a name, or of both (at least one given).
    Retrieve {
        /// The key.
        key: Option<SubjectKey>,
        /// The subject name.
        name: Option<SubjectName>,
    },
    /// The certificate with this serial, if it is in the store (neither revoked nor replaced).
    Certificate(Serial),
    /// The latest CRL and the one before.
    Crl,
    /// The log of issued and revoked records from sequence `from`, at most `max` (≤
    /// [`LOG_LIST_MAX`]).
    Log {
        /// The first sequence number.
        from: u64,
        /// How many at most.
        max: u32,
    },
    /// A mutation's state, by its instance.
    Pending(InstanceId),
}

/// One CRL the service made (its signature is the host's, found by the message's id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlEntry {
    /// Its cRLNumber.
    pub number: u64,
    /// Its TBSCertList's DER: the message threshold-signed.
    pub tbs: Vec<u8>,
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Its sequence number (from 0, no gaps).
    pub sequence: u64,
    /// The epoch whose certificate signed the record (a leaf of that epoch's tree).
    pub epoch: u64,
    /// The record's bytes ([`super::Record`]).
    pub record: Vec<u8>,
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    /// For `Retrieve` and `Certificate`: the certificates, in the order of their serials' bytes.
    Certificates(Vec<CertRow>),
    /// For `Crl`.
    Crl {
        /// The latest CRL, if any.
        latest: Option<CrlEntry>,
        /// The one before, if any (its signature may be in while the latest's is not yet).
        previous: Option<CrlEntry>,
    },
    /// For `Log`.
    Log(Vec<LogEntry>),
    /// For `Pending`.
    Pending(RequestRow),
}

fn refused(code: Code, reason: impl Into<String>) -> QueryError {
    QueryError::Refused(Refusal::new(code, reason))
}

pub(crate) fn answer(tables: &dyn Tables, query: Query) -> Result<View, QueryError> {
    match query {
        Query::Retrieve { key, name } => {
            let name = name.as_ref().map(encoded_name).transpose().map_err(QueryError::Refused)?;
            let certs = match (&key, &name) {
                (Some(key), _) => certs_of_key(tables, key)?,
                (None, Some(name)) => certs_of_name(tables, name)?,
                (None, None) => return Err(refused(Code::InvalidArgument, "retrieve needs a key, a name or both")),
            };
            let certs = certs
                .into_iter()
                .filter(|cert| name.as_ref().is_none_or(|name| &cert.name == name))
                .collect::<Vec<_>>();
            if certs.is_empty() {
                return Err(refused(Code::NotFound, "no certificate of this key or name"));
            }
            Ok(View::Certificates(certs))
        }
        Query::Certificate(serial) => match get_row::<CertRow>(tables, Table::Certs, serial.as_be_bytes())? {
            Some(cert) => Ok(View::Certificates(vec![cert])),
            None => Err(refused(Code::NotFound, "no certificate with this serial in the store")),
        },
        Query::Crl => {
            let meta: CrlMeta = get_row(tables, Table::Crl, CRL_META)?.unwrap_or_default();
            let entry = |number: u64| -> Result<Option<CrlEntry>, StoreError> {
                if number == 0 {
                    return Ok(None);
                }
                Ok(get(tables, Table::Crl, &crl_key(number))?.map(|tbs| CrlEntry { number, tbs }))
            };
            Ok(View::Crl { latest: entry(meta.number)?, previous: entry(meta.number.saturating_sub(1))? })
        }
        Query::Log { from, max } => {
            if max > LOG_LIST_MAX {
                return Err(refused(Code::InvalidArgument, format!("at most {LOG_LIST_MAX} log entries at a time")));
            }
            let to = u64::MAX.to_be_bytes();
            let entries = tables.range(Table::Log.name(), &from.to_be_bytes(), &to, max as usize)?;
            let mut log = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let bad = || StoreError::Corrupt {
                    table: Table::Log.name().to_owned(),
                    error: fides_types::codec::DecodeError::Invalid { what: "log entry", value: 0 },
                };
                let sequence = u64::from_be_bytes(key.as_slice().try_into().map_err(|_| bad())?);
                let (epoch, record) = value.split_first_chunk::<8>().ok_or_else(bad)?;
                log.push(LogEntry { sequence, epoch: u64::from_le_bytes(*epoch), record: record.to_vec() });
            }
            Ok(View::Log(log))
        }
        Query::Pending(instance) => match get(tables, Table::Requests, &instance.0)? {
            Some(bytes) => Ok(View::Pending(decode::<RequestRow>(Table::Requests, &bytes)?)),
            None => Err(refused(Code::NotFound, "no request with this instance")),
        },
    }
}
