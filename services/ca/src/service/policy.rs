//! The policy, checked when a mutation starts (so that honest replicas vote against a request
//! the policy refuses) and again when its decision is applied (the state may have changed in
//! between: another request on the same name, for instance). Deterministic: it reads the
//! service's tables and the agreed time only.

use fides_service::{Code, Refusal, StoreError, Tables};

use super::config::{CaConfig, Mode, Policy};
use super::request::{name_der, Mutation, Token};
use super::store::{decode, get, key_hash, scan, CertRow, Table};
use crate::{SubjectKey, SubjectName};

/// At most this many certificates are read for one key or one name (a key has at most one in
/// key-major mode, a name at most one in name-major mode; the other way round, a key may carry
/// several names, each issued by a request its holder confirmed).
pub(crate) const CERTS_PER_SUBJECT_MAX: usize = 256;

/// The certificates indexed under `hash` in `index` ([`Table::ByKey`] or [`Table::ByName`]).
pub(crate) fn certs_under(tables: &dyn Tables, index: Table, hash: &[u8; 32]) -> Result<Vec<CertRow>, StoreError> {
    let mut certs = Vec::new();
    for (key, _) in scan(tables, index, hash, CERTS_PER_SUBJECT_MAX)? {
        let serial = &key[hash.len()..];
        if let Some(bytes) = get(tables, Table::Certs, serial)? {
            certs.push(decode::<CertRow>(Table::Certs, &bytes)?);
        }
    }
    Ok(certs)
}

/// The certificates of `key`.
pub(crate) fn certs_of_key(tables: &dyn Tables, key: &SubjectKey) -> Result<Vec<CertRow>, StoreError> {
    certs_under(tables, Table::ByKey, &key_hash(key))
}

/// The certificates of the name whose DER is `name`.
pub(crate) fn certs_of_name(tables: &dyn Tables, name: &[u8]) -> Result<Vec<CertRow>, StoreError> {
    certs_under(tables, Table::ByName, &fides_crypto::sha256(name))
}

/// A name's DER, or the refusal of a name that does not encode.
pub(crate) fn encoded_name(name: &SubjectName) -> Result<Vec<u8>, Refusal> {
    name_der(name).map_err(|error| Refusal::new(Code::InvalidArgument, format!("the subject name: {error}")))
}

/// The certificates a mutation removes if it is applied: an update's subject's (the key's in
/// key-major mode, the name's in name-major mode), a revocation's key's (with the name, if
/// given). None for an issue.
pub(crate) fn removed_certs(
    config: &CaConfig,
    tables: &dyn Tables,
    mutation: &Mutation,
) -> Result<Vec<CertRow>, Failure> {
    Ok(match mutation {
        Mutation::Issue { .. } => Vec::new(),
        Mutation::Update { binding, .. } => match config.mode {
            Mode::KeyMajor => certs_of_key(tables, binding.key())?,
            Mode::NameMajor => certs_of_name(tables, &encoded_name(binding.name())?)?,
        },
        Mutation::Revoke { key, name, .. } => {
            let name = name.as_ref().map(encoded_name).transpose()?;
            let mut certs = certs_of_key(tables, key)?;
            certs.retain(|cert| name.as_ref().is_none_or(|name| &cert.name == name));
            certs
        }
    })
}

/// Why a check did not pass: a refusal, or the store failed.
#[derive(Debug)]
pub(crate) enum Failure {
    Refused(Refusal),
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Store(error)
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Failure {
        Failure::Refused(refusal)
    }
}

fn refuse(code: Code, reason: impl Into<String>) -> Failure {
    Failure::Refused(Refusal::new(code, reason))
}

/// Whether the policy lets `mutation` be applied at agreed time `time_ms`.
pub(crate) fn check(config: &CaConfig, tables: &dyn Tables, mutation: &Mutation, time_ms: u64) -> Result<(), Failure> {
    match mutation {
        Mutation::Issue { binding, token } => {
            let name = encoded_name(binding.name())?;
            let key = binding.key();
            match config.mode {
                Mode::KeyMajor if !certs_of_key(tables, key)?.is_empty() => {
                    return Err(refuse(Code::AlreadyExists, "the key has a certificate already: use update"));
                }
                Mode::NameMajor if !certs_of_name(tables, &name)?.is_empty() => {
                    return Err(refuse(Code::AlreadyExists, "the name has a certificate already: use update"));
                }
                _ => {}
            }
            match config.policy {
                Policy::Open => check_name_free(tables, &name, key),
                Policy::Token { admin } => check_token(config, &admin, token.as_ref(), &name, time_ms),
            }
        }
        Mutation::Update { binding, token } => {
            let name = encoded_name(binding.name())?;
            let key = binding.key();
            let subject = match config.mode {
                Mode::KeyMajor => certs_of_key(tables, key)?,
                Mode::NameMajor => certs_of_name(tables, &name)?,
            };
            if subject.is_empty() {
                let what = if config.mode == Mode::KeyMajor { "key" } else { "name" };
                return Err(refuse(Code::NotFound, format!("the {what} has no certificate to update: use issue")));
            }
            match (config.policy, config.mode) {
                (Policy::Open, Mode::KeyMajor) => check_name_free(tables, &name, key),
                (Policy::Open, Mode::NameMajor) => {
                    if subject.iter().any(|cert| &cert.key != key) {
                        return Err(refuse(
                            Code::PermissionDenied,
                            "the name is bound to another key; with the open policy only a token rebinds a name",
                        ));
                    }
                    Ok(())
                }
                (Policy::Token { admin }, _) => check_token(config, &admin, token.as_ref(), &name, time_ms),
            }
        }
        Mutation::Revoke { .. } => {
            if removed_certs(config, tables, mutation)?.is_empty() {
                return Err(refuse(Code::NotFound, "no certificate of this key (and name) to revoke"));
            }
            Ok(())
        }
    }
}

/// The open policy: a name bound to no other key may be bound by anyone.
fn check_name_free(tables: &dyn Tables, name: &[u8], key: &SubjectKey) -> Result<(), Failure> {
    if certs_of_name(tables, name)?.iter().any(|cert| &cert.key != key) {
        return Err(refuse(Code::AlreadyExists, "the name is bound to another key"));
    }
    Ok(())
}

/// The token policy: a token for exactly this name, signed by the administrator for this
/// cluster, not expired at the agreed time.
fn check_token(
    config: &CaConfig,
    admin: &[u8; 32],
    token: Option<&Token>,
    name: &[u8],
    time_ms: u64,
) -> Result<(), Failure> {
    let Some(token) = token else {
        return Err(refuse(Code::PermissionDenied, "the token policy needs a registration token for the name"));
    };
    if token.name_hash != fides_crypto::sha256(name) {
        return Err(refuse(Code::PermissionDenied, "the registration token is for another name"));
    }
    if !token.verify(admin, &config.cluster) {
        return Err(refuse(Code::PermissionDenied, "the registration token is not signed by the administrator"));
    }
    if token.not_after_ms < time_ms {
        return Err(refuse(
            Code::PermissionDenied,
            format!("the registration token expired at {} ms, before the agreed time {time_ms} ms", token.not_after_ms),
        ));
    }
    Ok(())
}
