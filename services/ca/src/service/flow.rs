//! What the service does with a mutation: dedup, the queue of its subject, the vote when it
//! starts, the effect when its decision comes, and the start of the next one in the queue.

use ed25519_dalek::Signer;
use fides_crypto::{sha256_tagged, tagged};
use fides_service::{Applied, Code, Decision, InstanceId, Outcome, Refusal, SchemeId, StoreError, Tables};
use fides_types::codec::{DecodeError, Wire};

use super::challenge::low_order;
use super::config::Mode;
use super::policy::{self, encoded_name, Failure};
use super::record::{CertificateStatus, IssuedRecord, Record, RevokedRecord, StatusRecord};
use super::request::{instance_of, mutation_payload, Answer, Mutation, Request};
use super::store::{
    counter, delete, get, get_row, key_hash, put, scan, set_counter, CertRow, CrlMeta, Place, RequestRow, RequestState,
    Table, CRL_META,
};
use super::{domain, Service, QUEUE_MAX};
use crate::{certificate_tbs, CertificateParams, RevocationReason, Serial, SubjectKey, UnixTime, REVOKED_MAX};

/// The counter of the next log sequence in [`Table::Meta`].
pub(crate) const LOG_NEXT: &[u8] = b"log";
/// The counter of revoked serials in [`Table::Meta`].
pub(crate) const REVOKED_COUNT: &[u8] = b"revoked";

/// What a replica signs to justify its vote for 1: `tagged("fides/v1/ca/confirmed", [cluster,
/// instance])`.
pub fn confirmed_message(cluster: &[u8; 32], instance: &InstanceId) -> Vec<u8> {
    tagged(domain::CONFIRMED, &[cluster, &instance.0])
}

/// The serial of the certificate a decided instance issues: the first 16 bytes of
/// `SHA-256(tagged("fides/v1/ca/serial", [cluster, instance]))`, top bit cleared (at most 127
/// bits: positive, 16 octets in DER).
pub fn serial_of(cluster: &[u8; 32], instance: &InstanceId) -> Option<Serial> {
    let hash = sha256_tagged(domain::SERIAL, &[cluster, &instance.0]);
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&hash[..16]);
    bytes[0] &= 0x7f;
    Serial::from_be_bytes(&bytes).ok()
}

fn refuse(code: Code, reason: impl Into<String>) -> Vec<Outcome> {
    vec![Outcome::refuse(code, reason)]
}

fn corrupt(table: Table, what: &'static str) -> StoreError {
    StoreError::Corrupt { table: table.name().to_owned(), error: DecodeError::Invalid { what, value: 0 } }
}

fn transit_key(subject: &[u8; 32], place: Place) -> Vec<u8> {
    [&subject[..], &place.key()].concat()
}

impl Service {
    /// The hash of the subject a mutation queues on: its key's (key-major) or its name's
    /// (name-major; a revocation without a name queues on its key).
    fn subject(&self, mutation: &Mutation) -> Result<[u8; 32], Refusal> {
        let name = match mutation {
            Mutation::Issue { binding, .. } | Mutation::Update { binding, .. } => Some(binding.name()),
            Mutation::Revoke { name, .. } => name.as_ref(),
        };
        match (self.config.mode, name) {
            (Mode::NameMajor, Some(name)) => Ok(fides_crypto::sha256(&encoded_name(name)?)),
            _ => Ok(key_hash(mutation.key())),
        }
    }

    pub(crate) fn apply_status(
        &self,
        tables: &dyn Tables,
        at: &Applied,
        serial: Serial,
    ) -> Result<Vec<Outcome>, StoreError> {
        let key = serial.as_be_bytes();
        let status = if get(tables, Table::Certs, key)?.is_some() {
            CertificateStatus::Good
        } else if let Some(bytes) = get(tables, Table::Revoked, key)? {
            let (at_ms, reason) = revoked_entry(&bytes)?;
            CertificateStatus::Revoked { at_ms, reason }
        } else {
            CertificateStatus::Unknown
        };
        Ok(vec![Outcome::Sign(Record::Status(StatusRecord { serial, status, time_ms: at.time_ms }).to_bytes())])
    }

    pub(crate) fn apply_mutation(
        &self,
        tables: &mut dyn Tables,
        at: &Applied,
        mutation: Mutation,
        answers: Vec<Answer>,
    ) -> Result<Vec<Outcome>, StoreError> {
        if answers.len() > self.config.identities.len()
            || answers.iter().any(|answer| answer.replica as usize >= self.config.identities.len())
        {
            return Ok(refuse(Code::InvalidArgument, "answers from replicas the cluster does not have"));
        }
        if let SubjectKey::X25519(key) = mutation.key() {
            if low_order(key) {
                return Ok(refuse(Code::InvalidArgument, "the X25519 key is of low order: it cannot be confirmed"));
            }
        }
        let instance = instance_of(at.client, at.request);
        if let Some(row) = get_row::<RequestRow>(tables, Table::Requests, &instance.0)? {
            if row.payload_digest != at.payload_digest {
                return Ok(refuse(Code::AlreadyExists, "request id reused with other content"));
            }
            return Ok(refuse(
                Code::AlreadyExists,
                format!("this request was ordered already (epoch {}, index {})", row.place.epoch, row.place.index),
            ));
        }
        let subject = match self.subject(&mutation) {
            Ok(subject) => subject,
            Err(refusal) => return Ok(vec![Outcome::Refuse(refusal)]),
        };
        let queue = scan(tables, Table::Transit, &subject, QUEUE_MAX)?;
        if queue.len() >= QUEUE_MAX {
            return Ok(refuse(
                Code::ResourceExhausted,
                format!("{QUEUE_MAX} requests wait on this subject already; try again later"),
            ));
        }
        let place = Place { epoch: at.epoch, index: at.index };
        put(tables, Table::Transit, &transit_key(&subject, place), &instance.0)?;
        let mut row = RequestRow {
            place,
            client: at.client,
            request: at.request,
            payload_digest: at.payload_digest,
            subject,
            state: RequestState::Queued,
            refusal: None,
            payload: Some(mutation_payload(&mutation, &answers)),
        };
        let outcome = if queue.is_empty() {
            self.start(tables, instance, &mut row, &mutation, &answers, at.time_ms)?
        } else {
            Outcome::Await { instance }
        };
        put(tables, Table::Requests, &instance.0, &row.to_bytes())?;
        Ok(vec![outcome])
    }

    /// Start a mutation: check the policy now, vote, and ask for its agreement.
    fn start(
        &self,
        tables: &dyn Tables,
        instance: InstanceId,
        row: &mut RequestRow,
        mutation: &Mutation,
        answers: &[Answer],
        time_ms: u64,
    ) -> Result<Outcome, StoreError> {
        let refusal = match policy::check(&self.config, tables, mutation, time_ms) {
            Ok(()) => None,
            Err(Failure::Refused(refusal)) => Some(refusal),
            Err(Failure::Store(error)) => return Err(error),
        };
        row.state = RequestState::Running;
        let vote = refusal.is_none() && self.confirmed(mutation, answers, row.client, row.request);
        row.refusal = refusal;
        // The vote is the one thing that differs between replicas: it depends on this replica's
        // own challenge.
        let justification = match (self.voter(), vote) {
            (Some(own), true) => {
                let signature = own.identity.sign(&confirmed_message(&self.config.cluster, &instance));
                [&own.index.to_le_bytes()[..], &signature.to_bytes()].concat()
            }
            _ => Vec::new(),
        };
        Ok(Outcome::Agree { instance, vote: !justification.is_empty(), justification })
    }

    /// Whether this replica's challenge for `mutation` was answered right.
    fn confirmed(&self, mutation: &Mutation, answers: &[Answer], client: u64, request: u64) -> bool {
        let (Some(challenger), Some(_)) = (&self.challenger, self.voter()) else { return false };
        let Some(answer) = answers.iter().find(|answer| answer.replica == challenger.index()) else { return false };
        let digest = mutation.digest(&self.config.cluster, client, request);
        challenger.check(mutation.key(), &digest, &answer.bytes)
    }

    pub(crate) fn decide(&self, tables: &mut dyn Tables, decision: &Decision) -> Result<Vec<Outcome>, StoreError> {
        let instance = decision.instance;
        let Some(mut row) = get_row::<RequestRow>(tables, Table::Requests, &instance.0)? else {
            return Ok(Vec::new());
        };
        if row.state != RequestState::Running {
            return Ok(Vec::new());
        }
        let (mutation, _) = stored_mutation(&row)?;
        let mut outcomes = if decision.value {
            match policy::check(&self.config, tables, &mutation, decision.time_ms) {
                Ok(()) => self.effect(tables, &mutation, &instance, &row, decision)?,
                Err(Failure::Refused(refusal)) => vec![Outcome::Refuse(refusal)],
                Err(Failure::Store(error)) => return Err(error),
            }
        } else {
            let refusal = row.refusal.clone().unwrap_or_else(|| {
                Refusal::new(Code::PermissionDenied, "the replicas did not confirm that the requester holds the key")
            });
            vec![Outcome::Refuse(refusal)]
        };
        let refused = outcomes.iter().any(|outcome| matches!(outcome, Outcome::Refuse(_)));
        row.state = if refused { RequestState::Refused } else { RequestState::Done };
        row.payload = None;
        put(tables, Table::Requests, &instance.0, &row.to_bytes())?;
        delete(tables, Table::Transit, &transit_key(&row.subject, row.place))?;
        if let Some(next) = self.start_next(tables, &row.subject, decision.time_ms)? {
            outcomes.push(next);
        }
        Ok(outcomes)
    }

    /// Start the head of `subject`'s queue, if any.
    fn start_next(
        &self,
        tables: &mut dyn Tables,
        subject: &[u8; 32],
        time_ms: u64,
    ) -> Result<Option<Outcome>, StoreError> {
        let Some((_, value)) = scan(tables, Table::Transit, subject, 1)?.into_iter().next() else { return Ok(None) };
        let instance = InstanceId(value.try_into().map_err(|_| corrupt(Table::Transit, "instance"))?);
        let mut row: RequestRow =
            get_row(tables, Table::Requests, &instance.0)?.ok_or_else(|| corrupt(Table::Requests, "queued request"))?;
        let (mutation, answers) = stored_mutation(&row)?;
        let outcome = self.start(tables, instance, &mut row, &mutation, &answers, time_ms)?;
        put(tables, Table::Requests, &instance.0, &row.to_bytes())?;
        Ok(Some(outcome))
    }

    /// Apply a mutation decided 1 whose policy still holds: its outcomes, or a refusal.
    fn effect(
        &self,
        tables: &mut dyn Tables,
        mutation: &Mutation,
        instance: &InstanceId,
        row: &RequestRow,
        decision: &Decision,
    ) -> Result<Vec<Outcome>, StoreError> {
        let removed = match policy::removed_certs(&self.config, tables, mutation) {
            Ok(removed) => removed,
            Err(Failure::Refused(refusal)) => return Ok(vec![Outcome::Refuse(refusal)]),
            Err(Failure::Store(error)) => return Err(error),
        };
        let revoked = counter(tables, REVOKED_COUNT)?;
        if revoked.saturating_add(removed.len() as u64) > REVOKED_MAX as u64 {
            return Ok(refuse(Code::ResourceExhausted, format!("the CRL holds {REVOKED_MAX} serials already")));
        }
        let mut outcomes = Vec::new();
        match mutation {
            Mutation::Issue { binding, .. } | Mutation::Update { binding, .. } => {
                let Some(serial) = serial_of(&self.config.cluster, instance) else {
                    return Ok(refuse(Code::Aborted, "the request's serial is zero; send it again with another id"));
                };
                if get(tables, Table::Certs, serial.as_be_bytes())?.is_some()
                    || get(tables, Table::Revoked, serial.as_be_bytes())?.is_some()
                {
                    return Ok(refuse(Code::Aborted, "the request's serial is taken; send it again with another id"));
                }
                let not_before = UnixTime::from_millis(decision.time_ms);
                let params = CertificateParams {
                    serial: serial.clone(),
                    not_before,
                    not_after: UnixTime(not_before.0.saturating_add(self.config.validity_secs)),
                    subject: binding.name().clone(),
                    key: binding.key().clone(),
                    alt_names: binding.alt_names().clone(),
                };
                let tbs = match certificate_tbs(&self.config.root, &params) {
                    Ok(unsigned) => unsigned.tbs_der().to_vec(),
                    Err(error) => return Ok(refuse(Code::InvalidArgument, format!("the certificate: {error}"))),
                };
                let name = match encoded_name(binding.name()) {
                    Ok(name) => name,
                    Err(refusal) => return Ok(vec![Outcome::Refuse(refusal)]),
                };
                let mut revocations = Vec::with_capacity(removed.len());
                for cert in &removed {
                    revocations.push(revoke(tables, cert, decision, RevocationReason::Superseded)?);
                }
                let cert = CertRow {
                    serial: serial.clone(),
                    tbs: tbs.clone(),
                    key: binding.key().clone(),
                    name,
                    place: row.place,
                    signed_epoch: decision.epoch,
                };
                let record = Record::Issued(IssuedRecord { serial, tbs: tbs.clone() }).to_bytes();
                store_cert(tables, &cert)?;
                append_log(tables, decision.epoch, &record)?;
                outcomes.push(Outcome::Sign(record));
                outcomes.push(Outcome::ThresholdSign { scheme: SchemeId::ThresholdRsa, message: tbs });
                outcomes.extend(revocations.into_iter().map(Outcome::Sign));
            }
            Mutation::Revoke { reason, .. } => {
                for cert in &removed {
                    outcomes.push(Outcome::Sign(revoke(tables, cert, decision, *reason)?));
                }
            }
        }
        Ok(outcomes)
    }
}

/// The mutation a request row holds (until it is decided).
fn stored_mutation(row: &RequestRow) -> Result<(Mutation, Vec<Answer>), StoreError> {
    let payload = row.payload.as_ref().ok_or_else(|| corrupt(Table::Requests, "a pending request without payload"))?;
    match Request::from_payload(payload) {
        Ok(Request::Mutation { mutation, answers }) => Ok((mutation, answers)),
        _ => Err(corrupt(Table::Requests, "stored request")),
    }
}

fn store_cert(tables: &mut dyn Tables, cert: &CertRow) -> Result<(), StoreError> {
    let serial = cert.serial.as_be_bytes();
    put(tables, Table::Certs, serial, &cert.to_bytes())?;
    put(tables, Table::ByKey, &[&key_hash(&cert.key)[..], serial].concat(), &[])?;
    put(tables, Table::ByName, &[&fides_crypto::sha256(&cert.name)[..], serial].concat(), &[])
}

/// Take `cert` out of the store onto the revoked list; the CRL is due. Returns the revoked
/// record.
fn revoke(
    tables: &mut dyn Tables,
    cert: &CertRow,
    decision: &Decision,
    reason: RevocationReason,
) -> Result<Vec<u8>, StoreError> {
    let serial = cert.serial.as_be_bytes();
    delete(tables, Table::Certs, serial)?;
    delete(tables, Table::ByKey, &[&key_hash(&cert.key)[..], serial].concat())?;
    delete(tables, Table::ByName, &[&fides_crypto::sha256(&cert.name)[..], serial].concat())?;
    let mut entry = decision.time_ms.to_le_bytes().to_vec();
    entry.push(reason.code());
    put(tables, Table::Revoked, serial, &entry)?;
    let count = counter(tables, REVOKED_COUNT)?;
    set_counter(tables, REVOKED_COUNT, count + 1)?;
    let mut crl: CrlMeta = get_row(tables, Table::Crl, CRL_META)?.unwrap_or_default();
    crl.due = true;
    put(tables, Table::Crl, CRL_META, &crl.to_bytes())?;
    let record =
        Record::Revoked(RevokedRecord { serial: cert.serial.clone(), revoked_at_ms: decision.time_ms, reason })
            .to_bytes();
    append_log(tables, decision.epoch, &record)?;
    Ok(record)
}

fn append_log(tables: &mut dyn Tables, epoch: u64, record: &[u8]) -> Result<(), StoreError> {
    let sequence = counter(tables, LOG_NEXT)?;
    put(tables, Table::Log, &sequence.to_be_bytes(), &[&epoch.to_le_bytes()[..], record].concat())?;
    set_counter(tables, LOG_NEXT, sequence + 1)
}

/// A [`Table::Revoked`] value: the revocation time and the reason.
pub(crate) fn revoked_entry(bytes: &[u8]) -> Result<(u64, RevocationReason), StoreError> {
    let bad = || corrupt(Table::Revoked, "revoked entry");
    let (time, reason) = bytes.split_first_chunk::<8>().ok_or_else(bad)?;
    let [reason] = reason else { return Err(bad()) };
    Ok((u64::from_le_bytes(*time), RevocationReason::from_code(*reason).ok_or_else(bad)?))
}
