//! Agreement instances under the log, for the services: who asked for which instance, the
//! decision notices the replicas order, and the ordered point where a decision is applied.
//!
//! Rules (`docs/agreement.md`, "Decisions applied at an ordered point"):
//! - A service's `Outcome::Agree { instance, vote, justification }`, made while the host applies
//!   request `r`, is recorded in the host's table of pending instances (with `r`) in the epoch's
//!   transaction. The vote is **not** in that table: the vote is this replica's own (a service may
//!   vote on what this replica alone checked, as the certification authority votes on its own
//!   key-confirmation challenge), while the table is covered by the state digest, equal at every
//!   replica. The caller keeps the votes ([`EpochAgreements::votes`]) in a table of its own, and
//!   once the epoch is durable hands them to the core (`Command::Agree`), which logs each before
//!   any message carries it; a restart hands the core the votes of every pending instance again,
//!   and the core refuses a second start of one instance harmlessly. A second `Agree` for an
//!   instance started before (pending or decided) is ignored: a service asks for an instance once.
//! - A service's `Outcome::Await { instance }` reserves the instance for request `r` without
//!   starting it (`r` awaits it); a later `Agree` for it (from any callback of the service)
//!   starts it, and its decision answers `r`. A notice for an instance not started is ignored.
//! - When the core decides an instance, the replica orders a **decision notice**: the payload
//!   `HDC1 ‖ replica u32 ‖ service [4] ‖ key [32] ‖ value u8 ‖ len u32 ‖ justification ‖
//!   signature [64]`, the signature its Ed25519 identity's over
//!   `tagged("fides/v1/decision-notice", [cluster id, replica u32, service, key, value,
//!   justification])`.
//! - The host applies an epoch's notices in log order, after recording the epoch's asks. A notice that does not decode, names no replica of
//!   the cluster, does not verify under that replica's identity, names an instance that is not
//!   pending (never asked for, or decided already), comes from a replica whose notice for the
//!   instance was taken already, or says 1 with a justification the service's `validate`
//!   refuses, is ignored: it changes nothing. So each pending instance holds at most `n` notices.
//! - Once `t + 1` notices of distinct replicas with the same value are taken, that value is the
//!   instance's decision: at least one of them is honest, an honest replica sends the value its
//!   core decided, and all cores decide alike. The decision (for 1 with the justification of the
//!   first notice for 1 taken) is handed to the service's `decided` then and there, in the
//!   epoch's transaction, after the epoch's requests. Every honest replica sends a notice, and
//!   `n - t ≥ t + 1`, so the `t + 1` always come.

use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use fides_agreement::Vote;
use fides_atomic_broadcast::instances::{Decided, InstanceId as CoreInstance, InstanceValidator};
use fides_crypto::{domain, tagged};
use fides_service::{
    BatchOutcomes, Decision, InstanceId, Outcome, Registry, ServiceId, StoreError, Tables, HOST_DECISION_NOTICE,
};
use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};
use fides_types::Quorum;

/// The host's table of instances asked for and not decided yet: instance (service ‖ key) →
/// [`Pending`].
pub const PENDING: &str = "replica_instances";
/// The host's table of instances decided: instance → value u8 ‖ epoch u64 (where the decision was
/// applied). Kept so that a late notice or a second ask finds the instance decided.
pub const DECIDED: &str = "replica_decided";
/// The host's tables, by their names in the store.
pub const TABLES: [&str; 2] = [PENDING, DECIDED];
/// Longest justification a notice carries: the agreement instances' own bound
/// (`instances::Config::justification_len_max`), so a decided 1's justification always fits.
pub const JUSTIFICATION_MAX: usize = 16 * 1024;

/// The services' validity predicates, for the core's agreement instances: a vote for 1 in an
/// instance of service `S` is valid when `S::validate` accepts its justification.
pub struct RegistryValidator(pub Arc<Registry>);

impl InstanceValidator for RegistryValidator {
    fn is_valid(&self, instance: &CoreInstance, justification: &[u8]) -> bool {
        self.0.validate(ServiceId(instance.service), InstanceId(instance.key), justification)
    }
}

/// The instance's key in the host's tables.
fn instance_key(instance: &CoreInstance) -> Vec<u8> {
    instance.to_bytes()
}

/// A replica's signed statement that its core decided an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The replica.
    pub replica: u32,
    /// The instance.
    pub instance: CoreInstance,
    /// The value its core decided.
    pub value: bool,
    /// For 1, the justification that came with the decision (empty for 0).
    pub justification: Vec<u8>,
    /// The replica's Ed25519 signature (see the module's rules).
    pub signature: [u8; 64],
}

impl Notice {
    /// What `replica` signs for its core's decision `decided`.
    fn message(
        cluster: &[u8; 32],
        replica: u32,
        instance: &CoreInstance,
        value: bool,
        justification: &[u8],
    ) -> Vec<u8> {
        tagged(
            domain::DECISION_NOTICE,
            &[cluster, &replica.to_le_bytes(), &instance.service, &instance.key, &[u8::from(value)], justification],
        )
    }

    /// Replica `replica`'s notice of its core's decision, signed with its identity.
    pub fn sign(identity: &SigningKey, cluster: &[u8; 32], replica: u32, decided: &Decided) -> Notice {
        let justification = decided.justification.clone().unwrap_or_default();
        let message = Notice::message(cluster, replica, &decided.instance, decided.value, &justification);
        Notice {
            replica,
            instance: decided.instance,
            value: decided.value,
            justification,
            signature: identity.sign(&message).to_bytes(),
        }
    }

    /// Whether the signature is `identity`'s.
    pub fn verifies(&self, cluster: &[u8; 32], identity: &[u8; 32]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(identity) else { return false };
        let message = Notice::message(cluster, self.replica, &self.instance, self.value, &self.justification);
        key.verify_strict(&message, &Signature::from_bytes(&self.signature)).is_ok()
    }

    /// The payload that orders it.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 4 + 36 + 1 + 4 + self.justification.len() + 64);
        out.extend_from_slice(&HOST_DECISION_NOTICE.0);
        out.extend_from_slice(&self.replica.to_le_bytes());
        self.instance.encode(&mut out);
        out.push(u8::from(self.value));
        put_bytes(&mut out, &self.justification);
        out.extend_from_slice(&self.signature);
        out
    }

    /// A notice from an ordered payload (which starts with [`HOST_DECISION_NOTICE`]); a notice
    /// for 0 carries no justification.
    pub fn from_payload(payload: &[u8]) -> Result<Notice, DecodeError> {
        let mut reader = Reader::new(payload);
        let magic: [u8; 4] = reader.array()?;
        if magic != HOST_DECISION_NOTICE.0 {
            return Err(DecodeError::Invalid {
                what: "decision notice id",
                value: u64::from(u32::from_le_bytes(magic)),
            });
        }
        let replica = reader.u32()?;
        let instance = CoreInstance::decode(&mut reader)?;
        let value = reader.bool()?;
        let justification = reader.bytes(JUSTIFICATION_MAX)?.to_vec();
        if !value && !justification.is_empty() {
            return Err(DecodeError::Invalid {
                what: "justification of a notice for 0",
                value: justification.len() as u64,
            });
        }
        let signature = reader.array()?;
        reader.finish()?;
        Ok(Notice { replica, instance, value, justification, signature })
    }

    /// The `(client, id)` the replica orders its notice under: the same for the same notice, so
    /// that sending it again after a restart is the same request (ordered at most once).
    pub fn request_key(&self) -> (u64, u64) {
        // "HDC1" in the high half, the replica in the low one.
        let client = (u64::from(u32::from_be_bytes(HOST_DECISION_NOTICE.0)) << 32) | u64::from(self.replica);
        let digest = fides_crypto::sha256(&self.instance.to_bytes());
        let id = u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest has 8 bytes to spare"));
        (client, id)
    }
}

/// An instance asked for and not decided yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The request that asked: (epoch, index); `None` when a service's epoch start asked.
    pub asker: Option<(u64, u32)>,
    /// Whether the instance is started: false while it is only reserved by an
    /// [`Outcome::Await`], until the service asks for it.
    pub started: bool,
    /// The notices taken, in log order: (replica, value, justification). At most one per replica.
    pub notices: Vec<(u32, bool, Vec<u8>)>,
}

/// Most notices a pending row decodes (a cluster has fewer replicas than this).
const NOTICES_MAX: u32 = 1024;

impl Wire for Pending {
    fn encode(&self, out: &mut Vec<u8>) {
        match self.asker {
            Some((epoch, index)) => {
                out.push(1);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&index.to_le_bytes());
            }
            None => out.push(0),
        }
        out.push(u8::from(self.started));
        out.extend_from_slice(&(self.notices.len() as u32).to_le_bytes());
        for (replica, value, justification) in &self.notices {
            out.extend_from_slice(&replica.to_le_bytes());
            out.push(u8::from(*value));
            put_bytes(out, justification);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let asker = if reader.bool()? { Some((reader.u64()?, reader.u32()?)) } else { None };
        let started = reader.bool()?;
        let count = reader.u32()?;
        if count > NOTICES_MAX {
            return Err(DecodeError::TooLong { len: u64::from(count), max: u64::from(NOTICES_MAX) });
        }
        let notices = (0..count)
            .map(|_| Ok((reader.u32()?, reader.bool()?, reader.bytes(JUSTIFICATION_MAX)?.to_vec())))
            .collect::<Result<_, DecodeError>>()?;
        Ok(Pending { asker, started, notices })
    }
}

/// A vote as the caller keeps it (in a table of its own, not covered): `0`, or `1 ‖ justification`.
pub fn vote_to_bytes(vote: &Vote) -> Vec<u8> {
    match vote {
        Vote::Zero => vec![0],
        Vote::One(justification) => [&[1u8][..], justification].concat(),
    }
}

/// The vote [`vote_to_bytes`] encoded.
pub fn vote_from_bytes(bytes: &[u8]) -> Result<Vote, DecodeError> {
    match bytes.split_first() {
        Some((0, [])) => Ok(Vote::Zero),
        Some((1, justification)) if justification.len() <= JUSTIFICATION_MAX => Ok(Vote::One(justification.to_vec())),
        Some((tag, _)) => Err(DecodeError::Invalid { what: "vote", value: (*tag).into() }),
        None => Err(DecodeError::Invalid { what: "vote", value: 0 }),
    }
}

/// Why a notice changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Its bytes are not a notice.
    Undecodable,
    /// It names no replica of the cluster.
    UnknownReplica,
    /// Its signature is not the replica's.
    BadSignature,
    /// Its instance is not pending here: never asked for, or decided already.
    NotPending,
    /// Its instance is reserved for a request but not started yet (no honest core can have
    /// decided it).
    NotStarted,
    /// The replica's notice for this instance was taken already.
    Again,
    /// It says 1 with a justification the service refuses.
    Unjustified,
}

/// What an ordered notice did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Nothing.
    Ignored(Ignored),
    /// Counted; no value has `t + 1` notices yet.
    Counted,
    /// Its value reached `t + 1` notices: the instance is decided here, now.
    Decided {
        /// The service that asked.
        service: ServiceId,
        /// The request that asked, if a request did.
        asker: Option<(u64, u32)>,
        /// The decision.
        decision: Decision,
    },
}

/// What asking for an instance did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    /// A new instance, asked for by the asker given.
    New,
    /// An instance an [`Outcome::Await`] reserved, started now (for the request that reserved it).
    Reserved,
    /// Started or decided before: nothing changed.
    Again,
}

/// A decision applied in an epoch: what the service made of it, for the request that asked.
#[derive(Debug)]
pub struct Applied {
    /// The service.
    pub service: ServiceId,
    /// The request that asked, if a request did.
    pub asker: Option<(u64, u32)>,
    /// The instance decided.
    pub instance: CoreInstance,
    /// What [`fides_service::Service::decided`] made (its `Agree`s are recorded already).
    pub outcomes: Vec<Outcome>,
}

/// What an epoch did to the agreement instances.
#[derive(Debug, Default)]
pub struct EpochAgreements {
    /// Votes for instances started in this epoch, for the core once the epoch is durable. Not in
    /// the covered tables: a replica's vote may differ from the others' (a service votes on what
    /// this replica alone checked), so the caller keeps them where it keeps what is its own.
    pub votes: Vec<(CoreInstance, Vote)>,
    /// Requests that asked for an instance in this epoch (once per instance), in order.
    pub asked: Vec<(u64, u32)>,
    /// Decisions applied in this epoch, in the order of the notices that completed them.
    pub decided: Vec<Applied>,
}

/// The host's bookkeeping of agreement instances: sans-IO, over the host's tables
/// ([`TABLES`]) and the services' (for `decided`).
pub struct Agreements {
    /// The services.
    pub registry: Arc<Registry>,
    /// The cluster id (what notices sign).
    pub cluster: [u8; 32],
    /// `n` and `t`.
    pub quorum: Quorum,
    /// Each replica's Ed25519 identity, by index.
    pub identities: Vec<[u8; 32]>,
}

impl Agreements {
    /// Record that `asker` asked for `instance`: [`Asked::New`], or [`Asked::Reserved`] when an
    /// [`Outcome::Await`] reserved it (its asker is the reserving request's, not `asker`), or
    /// [`Asked::Again`] (nothing written) if it was started or decided before.
    pub fn ask(
        &self,
        host: &mut dyn Tables,
        instance: CoreInstance,
        asker: Option<(u64, u32)>,
    ) -> Result<Asked, StoreError> {
        let key = instance_key(&instance);
        if host.get(DECIDED, &key)?.is_some() {
            return Ok(Asked::Again);
        }
        if let Some(bytes) = host.get(PENDING, &key)? {
            let mut pending = Pending::from_bytes(&bytes)
                .map_err(|e| StoreError::Store(format!("a pending agreement instance does not decode: {e}")))?;
            if pending.started {
                return Ok(Asked::Again);
            }
            pending.started = true;
            host.put(PENDING, &key, &pending.to_bytes())?;
            return Ok(Asked::Reserved);
        }
        host.put(PENDING, &key, &Pending { asker, started: true, notices: Vec::new() }.to_bytes())?;
        Ok(Asked::New)
    }

    /// Reserve `instance` for `asker` without starting it ([`Outcome::Await`]). False (and
    /// nothing written) if it was reserved, started or decided before.
    pub fn reserve(
        &self,
        host: &mut dyn Tables,
        instance: CoreInstance,
        asker: Option<(u64, u32)>,
    ) -> Result<bool, StoreError> {
        let key = instance_key(&instance);
        if host.get(PENDING, &key)?.is_some() || host.get(DECIDED, &key)?.is_some() {
            return Ok(false);
        }
        host.put(PENDING, &key, &Pending { asker, started: false, notices: Vec::new() }.to_bytes())?;
        Ok(true)
    }

    /// Take one ordered notice's payload, applied in epoch `epoch`.
    pub fn take_notice(
        &self,
        host: &mut dyn Tables,
        epoch: u64,
        time_ms: u64,
        payload: &[u8],
    ) -> Result<Taken, StoreError> {
        let Ok(notice) = Notice::from_payload(payload) else { return Ok(Taken::Ignored(Ignored::Undecodable)) };
        let Some(identity) = self.identities.get(notice.replica as usize) else {
            return Ok(Taken::Ignored(Ignored::UnknownReplica));
        };
        if !notice.verifies(&self.cluster, identity) {
            return Ok(Taken::Ignored(Ignored::BadSignature));
        }
        let key = instance_key(&notice.instance);
        let Some(bytes) = host.get(PENDING, &key)? else { return Ok(Taken::Ignored(Ignored::NotPending)) };
        let mut pending = Pending::from_bytes(&bytes)
            .map_err(|e| StoreError::Store(format!("a pending agreement instance does not decode: {e}")))?;
        if !pending.started {
            return Ok(Taken::Ignored(Ignored::NotStarted));
        }
        if pending.notices.iter().any(|(replica, _, _)| *replica == notice.replica) {
            return Ok(Taken::Ignored(Ignored::Again));
        }
        let service = ServiceId(notice.instance.service);
        if notice.value && !self.registry.validate(service, InstanceId(notice.instance.key), &notice.justification) {
            return Ok(Taken::Ignored(Ignored::Unjustified));
        }
        pending.notices.push((notice.replica, notice.value, notice.justification));
        let same = pending.notices.iter().filter(|(_, value, _)| *value == notice.value).count();
        if (same as u64) < u64::from(self.quorum.one_honest()) {
            host.put(PENDING, &key, &pending.to_bytes())?;
            return Ok(Taken::Counted);
        }
        // The first justification for 1 taken (every one taken passed `validate`).
        let justification = match notice.value {
            true => pending.notices.iter().find(|(_, value, _)| *value).map(|(_, _, j)| j.clone()).unwrap_or_default(),
            false => Vec::new(),
        };
        host.delete(PENDING, &key)?;
        let decided = [&[u8::from(notice.value)][..], &epoch.to_le_bytes()].concat();
        host.put(DECIDED, &key, &decided)?;
        let decision =
            Decision { instance: InstanceId(notice.instance.key), value: notice.value, justification, epoch, time_ms };
        Ok(Taken::Decided { service, asker: pending.asker, decision })
    }

    /// An epoch's agreements, after the registry applied its batch (`outcomes`): every `Agree` of
    /// the epoch starts and requests is recorded (in order), then every notice of the batch is
    /// taken in order, and each decision reached is handed to its service's `decided` (whose own
    /// `Agree`s are recorded for the same request). `tables` holds the host's tables ([`TABLES`])
    /// and the services': one store, so that one digest covers both.
    pub fn apply_epoch<'p>(
        &self,
        tables: &mut dyn Tables,
        (epoch, time_ms): (u64, u64),
        payloads: impl IntoIterator<Item = &'p [u8]>,
        outcomes: &BatchOutcomes,
    ) -> Result<EpochAgreements, StoreError> {
        let mut out = EpochAgreements::default();
        for (service, made) in &outcomes.epoch {
            self.ask_all(tables, *service, None, made, &mut out)?;
        }
        for (index, service, made) in &outcomes.requests {
            if let Some(service) = service {
                self.ask_all(tables, *service, Some((epoch, *index)), made, &mut out)?;
            }
        }
        for payload in payloads {
            if !payload.starts_with(&HOST_DECISION_NOTICE.0) {
                continue;
            }
            match self.take_notice(tables, epoch, time_ms, payload)? {
                Taken::Decided { service, asker, decision } => {
                    let instance = CoreInstance { service: service.0, key: decision.instance.0 };
                    let made = self.registry.decided(tables, service, &decision)?.unwrap_or_default();
                    self.ask_all(tables, service, asker, &made, &mut out)?;
                    let outcomes = made.into_iter().filter(|o| !matches!(o, Outcome::Agree { .. })).collect();
                    out.decided.push(Applied { service, asker, instance, outcomes });
                }
                Taken::Counted => {}
                Taken::Ignored(why) => tracing::debug!(epoch, ?why, "a decision notice was ignored"),
            }
        }
        Ok(out)
    }

    fn ask_all(
        &self,
        host: &mut dyn Tables,
        service: ServiceId,
        asker: Option<(u64, u32)>,
        made: &[Outcome],
        out: &mut EpochAgreements,
    ) -> Result<(), StoreError> {
        for outcome in made {
            match outcome {
                Outcome::Agree { instance, vote, justification } => {
                    let instance = CoreInstance { service: service.0, key: instance.0 };
                    let vote = if *vote { Vote::One(justification.clone()) } else { Vote::Zero };
                    match self.ask(host, instance, asker)? {
                        Asked::New => {
                            out.votes.push((instance, vote));
                            out.asked.extend(asker);
                        }
                        // Its request was counted as awaiting when it reserved the instance.
                        Asked::Reserved => out.votes.push((instance, vote)),
                        Asked::Again => {
                            tracing::warn!(?instance, "a service asked again for an agreement instance; ignored")
                        }
                    }
                }
                Outcome::Await { instance } => {
                    let instance = CoreInstance { service: service.0, key: instance.0 };
                    if self.reserve(host, instance, asker)? {
                        out.asked.extend(asker);
                    } else {
                        tracing::warn!(?instance, "a service reserved an agreement instance asked for before; ignored");
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
