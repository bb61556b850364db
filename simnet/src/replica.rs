//! Whole replicas under the simulator: the replica's own deterministic core and service host —
//! the pieces of `fides-host` that the replica process runs — with real services (the bistro, and
//! a small service that asks for agreement) over an in-memory store, and the epoch signer
//! certifying every epoch, composed as one sans-IO protocol so that services meet the Byzantine
//! actors and schedulers, not only process tests.
//!
//! An honest [`WholeReplica`] is the replica process without its IO:
//! - the driver's part: what it would log goes to the replica's [`Core`] as the same [`Event`]s,
//!   numbered as in its write-ahead log (`Submit`, `Clock`, and each peer's frame as its bytes:
//!   decoded with the epochs' bounds, passed through the core's cheap checks — `Frame` or
//!   `Heard` — and decoded again by the core, so that a Byzantine replica's bytes meet the real
//!   decoders); agreement instance messages go to the core as `InstanceFrame`s;
//! - the worker's part: each delivered batch goes through [`apply_epoch`] — the function the
//!   replica's worker calls — over tables in memory: the registry applies it, the agreement
//!   instances take their asks and the ordered decision notices, the answers are written and the
//!   epoch's leaves made, the state leaf last; the root goes to the [`EpochSigner`]; the votes of
//!   the instances asked for go to the core (`Agree`) and our notice of each instance the core
//!   decides is ordered as a request, as the worker does once the epoch is durable;
//! - the backfill's part: a replica whose core jumped to a checkpoint over batches its services
//!   have not applied asks its peers for them (`BatchesAsk`, again with each delivery until they
//!   come), takes an answer only if it follows what it applied and chains to the checkpoint's
//!   signed log digest (one that does not is a fault of its sender), applies them, then the
//!   batches delivered after the checkpoint. (The replica's backfill fetches the skipped batches
//!   the same way when its services need them; a replica whose services lost their state takes
//!   a snapshot instead, which is not here.)
//!
//! It reports each applied epoch (its state digest, root, every answer with its inclusion path,
//! and the decisions applied) and each certificate.
//!
//! The certification authority is there too, each replica's with its own identity (its own
//! challenges and votes); a Byzantine replica's votes yes on everything. Threshold RSA is not
//! simulated: the CA's `ThresholdSign` asks are ignored, as all are here (the `ca` submodule).
//!
//! Clients: owners create events; once an honest replica applied an event's creation, tickets for
//! it are submitted to that replica; some requests are refused (a bad owner signature, an unknown
//! event), some are for no service; some ask the test service ([`Asker`]) for an agreement
//! instance; the CA's clients issue with their keys, name keys they do not hold, and update one
//! key twice at once. The Byzantine replicas run the generic behaviours (silent, equivocating, garbage,
//! replaying) against the whole protocol; an equivocating one also proposes decision notices of
//! the value not asked for, in its own name and forged in an honest replica's.
//!
//! A run is checked for: faults only against Byzantine replicas; liveness after the network heals;
//! every request given to an honest replica ordered; honest replicas that applied an epoch hold
//! the same service state, root and decisions after it; every instance decided once at every
//! honest replica, on the value asked for; every epoch with leaves certified at every honest
//! replica, and every answer (ordering leaf and signed record) verifying alone against its
//! certificate under the cluster key; tickets actually issued; each CA instance decided once, no
//! certificate for a key its requester does not hold, one for every holder, and the two updates
//! of one key run one after the other.
//!
//! Not (yet) here: service snapshots (`host/snapshot.rs` in the replica: a replica here never
//! loses its services' state, and every peer keeps every batch, so the backfill always finds
//! them), and restarts from the log (no replica restarts; the core's replay is tested in
//! `fides-host` and the replica's driver tests); the bistro's replica-side indexes (where each
//! event's record was signed, uploads to fetch) and threshold RSA signing are the worker's alone;
//! the driver's admission ledger (one message of each kind per peer) is not applied.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use fides_atomic_broadcast::checkpoint::{log_genesis, log_next, Digest};
use fides_atomic_broadcast::epoch::{
    Admission, AtomicBroadcast, Batch, Config, Error as AbcError, Input, Keys, Output as AbcOutput, Request,
};
use fides_atomic_broadcast::instances::{Config as InstancesConfig, Decided, InstanceId, Instances};
use fides_bistro::records::{domain, ed_sign, EventId, EventTerms, Request as BistroRequest, Signed, TicketRequest};
use fides_bistro::service::{Service as Bistro, ServiceConfig};
use fides_bistro::stream::{Aead, HashAlg};
use fides_host::apply::apply_epoch;
pub use fides_host::asker::Asker;
use fides_host::core::{Core, Effects};
use fides_host::decisions::{Agreements, Notice, RegistryValidator};
use fides_host::epochs::StoredAnswer;
use fides_host::event::Event;
use fides_service::certificate::{self, Certificate, EpochSigner, Inclusion, Leaf, SignerConfig, Tree};
use fides_service::{MemoryTables, Outcome, Registry, Service as _, ServiceId, StoreError, Tables};
use fides_types::codec::{get_seq, put_seq, DecodeError, Reader, Wire};
use fides_types::{FaultKind, NodeIndex, Outgoing, Protocol, Quorum, Step, Target};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::abc::ClusterKeys;

mod ca;
use crate::{check, Behaviour, Byzantine, Micros, Network, Produced, RandomScheduler, RunConfig, Scenario};

/// The cluster id the replicas sign under.
pub const CLUSTER: [u8; 32] = *b"simnet/whole-replica/cluster/id!";
/// Epochs between checkpoints.
const CHECKPOINT_INTERVAL: u64 = 4;
/// The liveness phase starts at a time drawn below this (virtual µs).
const HEAL_AT_MAX: Micros = 6_000_000;
/// How long after the network healed the honest replicas have (virtual µs).
const LIVENESS_BOUND: Micros = 5_000_000;

/// What whole replicas send each other: a replica's frames, as its transport carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// An atomic broadcast message, encoded: decoded by the core (with the epochs' bounds), as
    /// the driver hands it a peer's frame, so that a Byzantine replica's bytes meet the real
    /// decoder.
    Abc(Vec<u8>),
    /// The epoch signer's.
    Signer(certificate::Message),
    /// An agreement instance's message, encoded: decoded by the core.
    Instance(Vec<u8>),
    /// The batches of epochs `from..=to`, asked by a replica that jumped to the checkpoint of
    /// epoch `to` and whose services need them (the replica's backfill).
    BatchesAsk {
        /// The first epoch.
        from: u64,
        /// The last: a checkpoint's.
        to: u64,
    },
    /// Delivered batches of consecutive epochs, answering a [`Message::BatchesAsk`].
    Batches(Vec<Batch>),
}

/// Most batches a [`Message::Batches`] holds (a longer gap is not filled here).
const BATCHES_ANSWER_MAX: usize = 256;

impl Wire for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Abc(bytes) => {
                out.push(0);
                out.extend_from_slice(bytes);
            }
            Message::Signer(message) => {
                out.push(1);
                message.encode(out);
            }
            Message::Instance(bytes) => {
                out.push(2);
                out.extend_from_slice(bytes);
            }
            Message::BatchesAsk { from, to } => {
                out.push(3);
                out.extend_from_slice(&from.to_le_bytes());
                out.extend_from_slice(&to.to_le_bytes());
            }
            Message::Batches(batches) => {
                out.push(4);
                put_seq(out, batches.iter(), |out, batch| batch.encode(out));
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        // A frame's body is the rest of the frame.
        match reader.u8()? {
            0 => Ok(Message::Abc(reader.take(reader.remaining())?.to_vec())),
            1 => Ok(Message::Signer(certificate::Message::decode(reader)?)),
            2 => Ok(Message::Instance(reader.take(reader.remaining())?.to_vec())),
            3 => Ok(Message::BatchesAsk { from: reader.u64()?, to: reader.u64()? }),
            4 => Ok(Message::Batches(get_seq(reader, BATCHES_ANSWER_MAX, Batch::decode)?)),
            other => Err(DecodeError::Invalid { what: "whole-replica message tag", value: u64::from(other) }),
        }
    }
}

/// One answer as a client gets it: the leaf it checks and its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The leaf's bytes ([`Leaf::to_bytes`]).
    pub leaf: Vec<u8>,
    /// Its path in the epoch's tree.
    pub inclusion: Inclusion,
}

/// An epoch the host applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The epoch.
    pub epoch: u64,
    /// The state digest of the services' tables after it (committed in the state leaf).
    pub state: Digest,
    /// The root of its tree (every epoch has one: the state leaf is always there).
    pub root: Option<Digest>,
    /// Every answer: each request's ordering leaf, then each signed record (the services', then
    /// the decisions').
    pub answers: Vec<Answer>,
    /// Events whose creation it signed.
    pub events: Vec<EventId>,
    /// Tickets it signed.
    pub tickets: usize,
    /// The agreement instances decided in this epoch (by the notices it ordered), with their
    /// value, in the order they were applied.
    pub decided: Vec<(InstanceId, bool)>,
    /// The certification authority's instances decided in this epoch, in the order they were
    /// applied: each instance's key and what the CA made of its decision.
    pub ca: Vec<([u8; 32], Vec<Outcome>)>,
    /// The certification authority's instances started by this epoch's requests themselves
    /// (not by a decision: after the epoch's requests).
    pub ca_started: Vec<[u8; 32]>,
}

/// What a whole replica reports.
#[derive(Clone, Debug)]
pub enum Output {
    /// Atomic broadcast's outputs.
    Abc(AbcOutput),
    /// The host applied an epoch.
    Applied(Box<Applied>),
    /// The host's store failed (never with the in-memory store): a check failure.
    HostError(String),
    /// An epoch is certified.
    Certified(Certificate),
    /// The core decided an agreement instance (the replica then orders its notice).
    Decided(Decided),
    /// Batches a checkpoint jumped over came from a peer, chained to the checkpoint's log digest,
    /// and are applied: epochs `from..=to`.
    Backfilled {
        /// The first epoch.
        from: u64,
        /// The last.
        to: u64,
    },
}

/// A replica: the replica's core (atomic broadcast and agreement instances, fed the events its
/// driver would log), the host's per-epoch application over tables in memory, and the epoch
/// signer.
pub struct WholeReplica {
    core: Core,
    /// The sequence number of the next event (its place in the write-ahead log a replica keeps;
    /// the core draws each event's randomness from it).
    seq: u64,
    signer: EpochSigner,
    /// The services (in its registry) and the agreement instances' bookkeeping.
    agreements: Agreements,
    tables: MemoryTables,
    /// Our Ed25519 identity, which signs our decision notices.
    identity: SigningKey,
    /// Certificates made here (the host's store, answering peers that ask for old epochs).
    certificates: BTreeMap<u64, Certificate>,
    /// The log digest before the first epoch.
    genesis: Digest,
    /// Every batch delivered here, with the log digest after it (the driver's store of batches,
    /// which serves peers whose services need them).
    delivered: BTreeMap<u64, (Batch, Digest)>,
    /// The first epoch the services have not applied.
    next_apply: u64,
    /// Batches delivered or fetched and not applied yet (after a gap a checkpoint jumped over).
    waiting: BTreeMap<u64, Batch>,
    /// The log digest of each checkpoint jumped to, by its epoch: what fetched batches must chain
    /// to.
    jumps: BTreeMap<u64, Digest>,
}

impl std::fmt::Debug for WholeReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WholeReplica")
            .field("our_index", &self.core.abc().our_index())
            .field("certified", &self.certificates.len())
            .field("next_apply", &self.next_apply)
            .finish_non_exhaustive()
    }
}

impl WholeReplica {
    /// Log and handle `event`, and everything it leads to: the votes of the instances the
    /// services asked for and our notices of the core's decisions go in as the next events, as
    /// the replica's worker hands them to its driver.
    fn handle_event(&mut self, event: Event, out: &mut Step<Message, Output>, rng: &mut dyn RngCore) -> Effects {
        self.handle_event_then(event, VecDeque::new(), out, rng)
    }

    /// [`Self::handle_event`], with `then` queued after `event`.
    fn handle_event_then(
        &mut self,
        event: Event,
        then: VecDeque<Event>,
        out: &mut Step<Message, Output>,
        rng: &mut dyn RngCore,
    ) -> Effects {
        let mut first = None;
        let mut queue = VecDeque::from([event]);
        queue.extend(then);
        while let Some(event) = queue.pop_front() {
            let mut effects = Effects::default();
            self.core.apply(self.seq, &event, &mut effects);
            self.seq += 1;
            self.absorb(&mut effects, out, &mut queue, rng);
            if first.is_none() {
                first = Some(effects);
            }
        }
        first.unwrap_or_default()
    }

    /// What the driver and the worker do with the core's effects (`refused` is left in them).
    fn absorb(
        &mut self,
        effects: &mut Effects,
        out: &mut Step<Message, Output>,
        next: &mut VecDeque<Event>,
        rng: &mut dyn RngCore,
    ) {
        out.faults.append(&mut effects.faults);
        for m in effects.outgoing.drain(..) {
            out.messages.push(Outgoing { target: m.target, message: Message::Abc(m.message.to_bytes()) });
        }
        for m in effects.instance_outgoing.drain(..) {
            out.messages.push(Outgoing { target: m.target, message: Message::Instance(m.message.to_bytes()) });
        }
        // Batches are applied in epoch order; those a checkpoint jumped over are fetched.
        let fresh = !effects.batches.is_empty() || !effects.installs.is_empty();
        for (batch, log) in effects.batches.drain(..) {
            self.delivered.insert(batch.epoch, (batch.clone(), log));
            self.waiting.insert(batch.epoch, batch.clone());
            out.outputs.push(Output::Abc(AbcOutput::Batch(batch)));
        }
        for checkpoint in effects.checkpoints.drain(..) {
            out.outputs.push(Output::Abc(AbcOutput::Checkpoint(checkpoint)));
        }
        for checkpoint in effects.installs.drain(..) {
            self.jumps.insert(checkpoint.epoch, checkpoint.log);
            out.outputs.push(Output::Abc(AbcOutput::Install(checkpoint)));
        }
        for decided in effects.decided.drain(..) {
            // Our notice is a request like any other (the worker submits it to the driver).
            let our_index = self.core.abc().our_index().0;
            let notice = Notice::sign(&self.identity, &CLUSTER, our_index, &decided);
            let (client, id) = notice.request_key();
            next.push_back(Event::Submit(Request { client, id, payload: notice.to_payload() }));
            out.outputs.push(Output::Decided(decided));
        }
        self.apply_waiting(fresh, out, next, rng);
    }

    /// Apply the batches waiting, in order, up to the first one missing; if a checkpoint jumped
    /// over it and `ask`, ask the peers for the batches up to that checkpoint (asked again with
    /// each delivery while they have not come: a peer may have jumped too).
    fn apply_waiting(
        &mut self,
        ask: bool,
        out: &mut Step<Message, Output>,
        next: &mut VecDeque<Event>,
        rng: &mut dyn RngCore,
    ) {
        while let Some(batch) = self.waiting.remove(&self.next_apply) {
            self.apply(&batch, out, next, rng);
            self.next_apply += 1;
        }
        if !ask {
            return;
        }
        if let Some((&to, _)) = self.jumps.range(self.next_apply..).next() {
            let from = self.next_apply;
            out.messages.push(Outgoing { target: Target::All, message: Message::BatchesAsk { from, to } });
        }
    }

    /// A peer's batches for a gap: taken if they follow what we applied and chain to the log
    /// digest of a checkpoint we jumped to (which the cluster signed); batches that do not chain
    /// are a fault of the sender. An answer to an earlier ask, or for no gap, is ignored.
    fn take_batches(
        &mut self,
        from: NodeIndex,
        batches: Vec<Batch>,
        out: &mut Step<Message, Output>,
        next: &mut VecDeque<Event>,
        rng: &mut dyn RngCore,
    ) {
        let (Some(first), Some(last)) = (batches.first(), batches.last()) else { return };
        let Some(&checkpoint_log) = self.jumps.get(&last.epoch) else { return };
        if first.epoch != self.next_apply {
            return;
        }
        let before = match self.next_apply.checked_sub(1) {
            None => self.genesis,
            Some(epoch) => match self.delivered.get(&epoch) {
                Some((_, log)) => *log,
                // Applied here from an earlier fetch: its chain was checked then.
                None => return,
            },
        };
        let consecutive = batches.iter().zip(first.epoch..).all(|(batch, epoch)| batch.epoch == epoch);
        let log = batches.iter().fold(before, |log, batch| log_next(&log, batch));
        if !consecutive || log != checkpoint_log {
            out.fault(from, FaultKind::InvalidCheckpoint);
            return;
        }
        out.outputs.push(Output::Backfilled { from: first.epoch, to: last.epoch });
        let mut log = before;
        for batch in batches {
            log = log_next(&log, &batch);
            self.delivered.insert(batch.epoch, (batch.clone(), log));
            self.waiting.insert(batch.epoch, batch);
        }
        self.apply_waiting(true, out, next, rng);
    }

    /// Answer a peer's ask for batches if every one of them was delivered here.
    fn answer_batches(&self, to: NodeIndex, first: u64, last: u64, out: &mut Step<Message, Output>) {
        let count = last.saturating_sub(first).saturating_add(1);
        if first > last || count > BATCHES_ANSWER_MAX as u64 {
            return;
        }
        let batches: Vec<Batch> = self.delivered.range(first..=last).map(|(_, (batch, _))| batch.clone()).collect();
        if batches.len() as u64 == count {
            out.messages.push(Outgoing { target: Target::Node(to), message: Message::Batches(batches) });
        }
    }

    fn absorb_signer(
        &mut self,
        step: Step<certificate::Message, certificate::Output>,
        out: &mut Step<Message, Output>,
        rng: &mut dyn RngCore,
    ) {
        let mut pending = vec![step];
        while let Some(step) = pending.pop() {
            out.faults.extend(step.faults);
            out.messages.extend(
                step.messages.into_iter().map(|m| Outgoing { target: m.target, message: Message::Signer(m.message) }),
            );
            for output in step.outputs {
                match output {
                    certificate::Output::Certified(certificate) => {
                        self.certificates.insert(certificate.root.epoch, certificate);
                        out.outputs.push(Output::Certified(certificate));
                    }
                    certificate::Output::CertificateAsked { peer, epoch } => {
                        if let Some(certificate) = self.certificates.get(&epoch).copied() {
                            let input = certificate::Input::Answer { peer, certificate };
                            if let Ok(step) = self.signer.handle_input(input, rng) {
                                pending.push(step);
                            }
                        }
                    }
                }
            }
        }
    }

    /// What the services' worker does with a delivered batch: the host's per-epoch application
    /// ([`apply_epoch`], the worker's) over the tables in memory, then the root to the signer
    /// and the votes to the core. The replica's own indexes of the bistro's answers are not
    /// kept here (nothing reads them).
    fn apply(
        &mut self,
        batch: &Batch,
        out: &mut Step<Message, Output>,
        next: &mut VecDeque<Event>,
        rng: &mut dyn RngCore,
    ) {
        let mut no_index =
            |_: &mut dyn Tables, _: &Batch, _: &[(u32, StoredAnswer)]| -> Result<(), StoreError> { Ok(()) };
        let epoch = match apply_epoch(&self.agreements, &mut self.tables, batch, &mut no_index) {
            Ok(epoch) => epoch,
            Err(error) => {
                out.outputs.push(Output::HostError(format!("epoch {}: {error}", batch.epoch)));
                return;
            }
        };
        let mut applied = Applied {
            epoch: batch.epoch,
            state: epoch.state,
            root: None,
            answers: Vec::new(),
            events: Vec::new(),
            tickets: 0,
            decided: Vec::new(),
            ca: Vec::new(),
            ca_started: Vec::new(),
        };
        let tree = Tree::new(epoch.leaves);
        let root = tree.epoch_root(batch.epoch, batch.time);
        applied.root = Some(root.root);
        let mut answer = |leaf: Leaf, index: u64| {
            if let Some(inclusion) = tree.inclusion(index) {
                applied.answers.push(Answer { leaf: leaf.to_bytes(), inclusion });
            }
        };
        for (index, r) in batch.requests.iter().enumerate() {
            let digest = fides_crypto::sha256(&r.payload);
            answer(Leaf::Ordering { client: r.client, id: r.id, digest, index: index as u32 }, index as u64);
        }
        let services = epoch.answers.iter().map(|(_, stored)| (stored.service, &stored.outcomes));
        let decisions = epoch.agreed.decided.iter().map(|a| a.service).zip(&epoch.decided);
        for (service, outcomes) in services.chain(decisions) {
            for (outcome, leaf) in outcomes {
                let Outcome::Sign(record) = outcome else { continue };
                answer(Leaf::Service { service, record: record.clone() }, *leaf);
                match fides_bistro::service::answer(outcome, *leaf) {
                    Ok(fides_bistro::service::Outcome::Signed { record: Signed::Event(event), .. })
                        if service == BISTRO =>
                    {
                        applied.events.push(event.event)
                    }
                    Ok(fides_bistro::service::Outcome::Signed { record: Signed::Ticket(_), .. })
                        if service == BISTRO =>
                    {
                        applied.tickets += 1
                    }
                    _ => {}
                }
            }
        }
        applied.decided = epoch.agreed.decided.iter().filter_map(decision_of).collect();
        applied.ca = epoch
            .agreed
            .decided
            .iter()
            .filter(|a| a.service == ca::CA)
            .map(|a| (a.instance.key, a.outcomes.clone()))
            .collect();
        applied.ca_started = epoch
            .outcomes
            .requests
            .iter()
            .filter(|(_, service, _)| *service == Some(ca::CA))
            .flat_map(|(_, _, outcomes)| outcomes)
            .filter_map(|outcome| match outcome {
                Outcome::Agree { instance, .. } => Some(instance.0),
                _ => None,
            })
            .collect();
        // Durable (in memory): the votes go to the core, the root to the signer.
        next.extend(epoch.agreed.votes.into_iter().map(|(instance, vote)| Event::Agree { instance, vote }));
        match self.signer.handle_input(certificate::Input::Sign(root), rng) {
            Ok(step) => self.absorb_signer(step, out, rng),
            Err(error) => out.outputs.push(Output::HostError(format!("epoch {}: {error}", batch.epoch))),
        }
        out.outputs.push(Output::Applied(Box::new(applied)));
    }
}

/// The bistro's service id.
const BISTRO: ServiceId = <Bistro as fides_service::Service>::ID;

/// The instance and value of a decision applied, from what the service made of it: the test
/// service records it as a signed `instance key ‖ value` (see [`Asker`]).
fn decision_of(applied: &fides_host::decisions::Applied) -> Option<(InstanceId, bool)> {
    applied.outcomes.iter().find_map(|outcome| match outcome {
        Outcome::Sign(record) if applied.service == Asker::ID && record.len() == 33 => {
            let key: [u8; 32] = record[..32].try_into().ok()?;
            Some((InstanceId { service: applied.service.0, key }, record[32] == 1))
        }
        _ => None,
    })
}

impl Protocol for WholeReplica {
    type Input = Input;
    type Message = Message;
    type Output = Output;
    type Error = AbcError;

    fn our_index(&self) -> NodeIndex {
        self.core.abc().our_index()
    }

    /// The inputs become the events the driver logs: a start is the clock, then each request.
    fn handle_input(&mut self, input: Input, rng: &mut dyn RngCore) -> Result<Step<Message, Output>, AbcError> {
        let mut out = Step::default();
        let events = match input {
            Input::Submit(request) => vec![Event::Submit(request)],
            Input::Clock(now) => vec![Event::Clock(now)],
            Input::Start { clock, requests } => {
                std::iter::once(Event::Clock(clock)).chain(requests.into_iter().map(Event::Submit)).collect()
            }
            Input::Recover => vec![Event::Recover],
            // The core gives atomic broadcast the application digest itself.
            Input::ApplicationDigest { .. } => Vec::new(),
        };
        let single = events.len() == 1;
        for event in events {
            let mut effects = self.handle_event(event, &mut out, rng);
            if single {
                if let Some((_, error)) = effects.refused.pop() {
                    return Err(error);
                }
            }
        }
        Ok(out)
    }

    /// A frame as the driver takes it: an atomic broadcast message is decoded with the epochs'
    /// bounds and passed through the core's cheap checks before it is logged and handled. Our
    /// own copies of what we sent to all were handled when we sent them (the driver drops frames
    /// from itself).
    fn handle_message(&mut self, from: NodeIndex, message: Message, rng: &mut dyn RngCore) -> Step<Message, Output> {
        let mut out = Step::default();
        if from == self.our_index() {
            return out;
        }
        match message {
            Message::Abc(bytes) => {
                let event = match self.core.abc().decode_message(&bytes) {
                    Err(_) => {
                        out.fault(from, FaultKind::Undecodable);
                        return out;
                    }
                    Ok(message) => match self.core.abc().admissible(from, &message) {
                        Admission::Handle => Event::Frame { from, bytes },
                        Admission::Heard(epoch) => Event::Heard { from, epoch },
                        Admission::Ignore => return out,
                        Admission::Fault(kind) => {
                            out.fault(from, kind);
                            return out;
                        }
                    },
                };
                self.handle_event(event, &mut out, rng);
            }
            Message::Instance(bytes) => {
                self.handle_event(Event::InstanceFrame { from, bytes }, &mut out, rng);
            }
            Message::BatchesAsk { from: first, to: last } => self.answer_batches(from, first, last, &mut out),
            Message::Batches(batches) => {
                let mut next = VecDeque::new();
                self.take_batches(from, batches, &mut out, &mut next, rng);
                if let Some(event) = next.pop_front() {
                    self.handle_event_then(event, next, &mut out, rng);
                }
            }
            Message::Signer(message) => {
                let step = self.signer.handle_message(from, message, rng);
                self.absorb_signer(step, &mut out, rng);
            }
        }
        out
    }

    fn terminated(&self) -> bool {
        false
    }
}

/// The scenario: keys, services, clocks and requests.
pub struct ReplicaScenario {
    quorum: Quorum,
    keys: ClusterKeys,
    /// Each replica's Ed25519 identity (signs its decision notices).
    identities: Vec<SigningKey>,
    /// Each replica's RNG seed (a replica draws it once, when its store is created).
    seeds: Vec<[u8; 32]>,
    /// Each replica's services (the certification authority's vote is its own).
    registries: Vec<Arc<Registry>>,
    config: Config,
    clocks: Vec<u64>,
    requests: Vec<Vec<Request>>,
    /// What an equivocating replica's second face proposes.
    byzantine_requests: Vec<Vec<Request>>,
}

impl ReplicaScenario {
    fn instance(&self, index: NodeIndex, session: &[u8], cluster: Digest) -> WholeReplica {
        let mut config = self.config.clone();
        config.session = session.to_vec();
        let i = index.as_usize();
        let keys = Keys {
            coin: Arc::clone(&self.keys.coin[i]),
            encryption: Arc::clone(&self.keys.encryption[i]),
            signing: Arc::clone(&self.keys.signing[i]),
        };
        let abc = AtomicBroadcast::new(self.quorum, index, config, keys);
        // As the replica's: named under the cluster id, coins from the coin keys, the services'
        // validity predicates.
        let registry = &self.registries[i];
        let validator = Arc::new(RegistryValidator(Arc::clone(registry)));
        let instances = Instances::new(
            self.quorum,
            index,
            Arc::clone(&self.keys.coin[i]),
            InstancesConfig::new(cluster.to_vec()),
            validator,
        );
        let core = Core::new(abc, self.seeds[i], index, session, CHECKPOINT_INTERVAL).with_instances(instances);
        WholeReplica {
            core,
            seq: 0,
            signer: EpochSigner::new(
                Arc::clone(&self.keys.signing[i]),
                cluster,
                self.quorum,
                index,
                SignerConfig::default(),
                0,
            ),
            agreements: Agreements {
                registry: Arc::clone(registry),
                cluster: CLUSTER,
                quorum: self.quorum,
                identities: self.identities.iter().map(|k| k.verifying_key().to_bytes()).collect(),
            },
            tables: MemoryTables::default(),
            identity: self.identities[i].clone(),
            certificates: BTreeMap::new(),
            genesis: log_genesis(session),
            delivered: BTreeMap::new(),
            next_apply: 0,
            waiting: BTreeMap::new(),
            jumps: BTreeMap::new(),
        }
    }
}

impl Scenario for ReplicaScenario {
    type P = WholeReplica;

    fn honest(&self, index: NodeIndex) -> WholeReplica {
        self.instance(index, &self.config.session, CLUSTER)
    }

    fn input(&self, index: NodeIndex) -> Option<Input> {
        let i = index.as_usize();
        Some(Input::Start { clock: self.clocks[i], requests: self.requests[i].clone() })
    }

    fn input_other(&self, index: NodeIndex) -> Option<Input> {
        let request = Request { client: 1_000 + u64::from(index.0), id: 0, payload: b"BST1 byzantine".to_vec() };
        let mut requests = vec![request];
        requests.extend(self.byzantine_requests[index.as_usize()].iter().cloned());
        Some(Input::Start { clock: u64::MAX / 2, requests })
    }

    fn other_instance(&self, index: NodeIndex) -> WholeReplica {
        self.instance(index, b"simnet/whole-replica/other", [0; 32])
    }

    fn garbage(&self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let mut noise = [0u8; 96];
        rng.fill_bytes(&mut noise);
        let root = certificate::EpochRoot {
            epoch: rng.gen_range(0..12),
            time_ms: rng.gen(),
            count: rng.gen_range(1..9),
            root: [7; 32],
        };
        match rng.gen_range(0..8) {
            0 => Message::Signer(certificate::Message::Share { root, share: noise }).to_bytes(),
            1 => {
                let share = self.keys.signing[0].sign_share(root.point(&CLUSTER)).to_bytes();
                Message::Signer(certificate::Message::Share { root, share }).to_bytes()
            }
            2 => Message::Signer(certificate::Message::Certificate(Certificate { root, signature: noise })).to_bytes(),
            3 => {
                let mut bytes = vec![0u8; rng.gen_range(0..120)];
                rng.fill_bytes(&mut bytes);
                bytes.insert(0, 0);
                bytes
            }
            4 => {
                let mut bytes = vec![0u8; rng.gen_range(0..120)];
                rng.fill_bytes(&mut bytes);
                Message::Instance(bytes).to_bytes()
            }
            5 => Message::BatchesAsk { from: rng.gen_range(0..12), to: rng.gen() }.to_bytes(),
            6 => {
                let epoch = rng.gen_range(0..12);
                let request = Request { client: 9, id: rng.gen(), payload: b"BST1 forged".to_vec() };
                Message::Batches(vec![Batch { epoch, time: rng.gen(), requests: vec![request] }]).to_bytes()
            }
            _ => {
                let mut bytes = vec![0u8; rng.gen_range(0..120)];
                rng.fill_bytes(&mut bytes);
                bytes
            }
        }
    }

    /// Here the adaptive attacker is a replica that follows the protocol, but whose
    /// certification authority votes yes on everything (as every Byzantine replica's does; see
    /// [`run_case`]): the sharpest test of key confirmation, since its votes are all there is.
    fn adaptive(&self, index: NodeIndex) -> Box<dyn Byzantine<WholeReplica>> {
        crate::actors::make(&Behaviour::Crash { after: u32::MAX }, index, self, self.quorum)
    }
}

/// One run of whole replicas.
#[derive(Clone, Debug)]
pub struct ReplicaCase {
    /// Replicas.
    pub n: u32,
    /// What the `t` Byzantine replicas do.
    pub byzantine: Behaviour,
    /// Events created (each gets tickets once created).
    pub events: usize,
    /// Tickets asked per event.
    pub tickets: usize,
    /// Agreement instances the test service ([`Asker`]) is asked for, one request each.
    pub instances: usize,
    /// Clients of the certification authority of each kind: this many issue with keys they hold
    /// and as many name keys they do not hold; if not 0, one more holder then updates its key
    /// twice, the two updates sent together.
    pub ca: usize,
    /// The seed.
    pub seed: u64,
}

/// What a checked run did.
#[derive(Clone, Debug)]
pub struct ReplicaSummary {
    /// Epochs certified (at the honest replica with the most).
    pub certified: usize,
    /// Answers verified against their certificates, over all honest replicas.
    pub answers_verified: usize,
    /// Tickets issued (at the honest replica with the most).
    pub tickets: usize,
    /// Agreement instances decided (at the honest replica with the most).
    pub decided: usize,
    /// Byzantine decision notices (of the value not asked for, or forged) ordered (at the honest
    /// replica with the most): each was taken and counted for nothing, or ignored.
    pub byzantine_notices: usize,
    /// Batches that honest replicas which jumped to a checkpoint fetched from peers and applied.
    pub backfilled: usize,
    /// Certificates the certification authority issued (at the honest replica with the most).
    pub certificates: usize,
    /// The run's trace hash: the same seed gives the same one.
    pub trace: String,
}

/// Replica `index`'s services: the bistro, the test service that asks for agreement, and the
/// certification authority with the replica's own identity (so its own challenges and votes),
/// which votes yes on everything if `lies`.
fn registry(
    quorum: Quorum,
    keys: &ClusterKeys,
    replicas: &[SigningKey],
    index: NodeIndex,
    lies: bool,
) -> Result<Registry, String> {
    let service = Bistro::new(ServiceConfig {
        cluster: CLUSTER,
        t: quorum.t(),
        replicas: replicas.iter().map(|k| k.verifying_key().to_bytes()).collect(),
        encryption: keys.encryption[0].public().clone(),
    });
    let mut registry = Registry::new();
    registry.register(service).map_err(|e| e.to_string())?;
    registry.register(Asker).map_err(|e| e.to_string())?;
    let config = ca::config(replicas, CHECKPOINT_INTERVAL)?;
    let identity = &replicas[index.as_usize()];
    let registered = if lies {
        registry.register(ca::YesCa::new(config, index.0, identity))
    } else {
        registry.register(ca::honest(config, index.0, identity))
    };
    registered.map_err(|e| e.to_string())?;
    Ok(registry)
}

fn create_event(owner: &SigningKey, nonce: u64, deadline_ms: u64) -> BistroRequest {
    let terms = EventTerms {
        deadline_ms,
        description: format!("event {nonce}"),
        owner: owner.verifying_key().to_bytes(),
        hash: HashAlg::Sha256,
        aead: Aead::XChaCha20Poly1305,
        transfer_window_ms: 60_000,
        nonce,
    };
    let signature = ed_sign(owner, domain::CREATE, &CLUSTER, &terms.to_bytes());
    BistroRequest::CreateEvent { terms, signature }
}

fn ticket(event: EventId, k: u64) -> BistroRequest {
    BistroRequest::Ticket(TicketRequest {
        event,
        digest: fides_crypto::sha256(&k.to_le_bytes()).to_vec(),
        size: 100 + k,
        contact: format!("client {k}"),
        file_name: format!("file-{k}"),
    })
}

/// Run one case and check it.
pub fn run_case(case: &ReplicaCase) -> Result<ReplicaSummary, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let keys = ClusterKeys::random(quorum, &mut rng);
    let replica_keys: Vec<SigningKey> = quorum.nodes().map(|_| SigningKey::generate(&mut rng)).collect();
    let seeds: Vec<[u8; 32]> = quorum.nodes().map(|_| rng.gen()).collect();
    let owner = SigningKey::generate(&mut rng);
    let crate::Placement { byzantine, honest, behaviours } = crate::place(quorum, &case.byzantine, &mut rng);
    // Every Byzantine replica's certification authority votes yes on everything.
    let registries = quorum
        .nodes()
        .map(|i| registry(quorum, &keys, &replica_keys, i, byzantine.contains(&i)).map(Arc::new))
        .collect::<Result<Vec<_>, String>>()?;
    // The CA's clients draw their keys from a generator of their own, so that the other draws
    // stay as they were.
    let ca_clients = ca::clients(case.ca, &replica_keys, &mut ChaCha8Rng::seed_from_u64(case.seed ^ 0xca))?;
    let indices: Vec<NodeIndex> = quorum.nodes().collect();
    // Agreed time is in ms here (the bistro's unit); the deadlines are far ahead.
    let clocks: Vec<u64> = quorum.nodes().map(|_| 1_000_000 + rng.gen_range(0..5_000)).collect();
    let mut requests: Vec<Vec<Request>> = vec![Vec::new(); quorum.n() as usize];
    let mut give = |request: Request, rng: &mut ChaCha8Rng| {
        let targets: Vec<NodeIndex> = if rng.gen_bool(0.5) {
            vec![*honest.choose(rng).expect("there are honest replicas")]
        } else {
            indices.choose_multiple(rng, quorum.honest_majority() as usize).copied().collect()
        };
        for target in targets {
            requests[target.as_usize()].push(request.clone());
        }
    };
    for k in 0..case.events as u64 {
        let payload = create_event(&owner, k, 1_000_000_000).to_payload();
        give(Request { client: 1, id: k, payload }, &mut rng);
    }
    // Refused: a forged owner signature, a ticket for an event that does not exist; and a
    // payload for no service.
    let mut forged = create_event(&owner, 999, 1_000_000_000);
    if let BistroRequest::CreateEvent { signature, .. } = &mut forged {
        signature[0] ^= 1;
    }
    give(Request { client: 2, id: 0, payload: forged.to_payload() }, &mut rng);
    give(Request { client: 2, id: 1, payload: ticket(EventId([9; 16]), 0).to_payload() }, &mut rng);
    give(Request { client: 3, id: 0, payload: b"for no service".to_vec() }, &mut rng);
    // Agreement instances, each asked for by one request with a vote drawn here; the Byzantine
    // replicas' notices of the other value, and notices forged in the honest replicas' names, go
    // into what an equivocating replica proposes.
    let mut asked: BTreeMap<InstanceId, bool> = BTreeMap::new();
    for k in 0..case.instances as u64 {
        let key = fides_crypto::sha256(&[&b"simnet/whole-replica/instance"[..], &k.to_le_bytes()].concat());
        let vote = rng.gen_bool(0.5);
        asked.insert(InstanceId { service: Asker::ID.0, key }, vote);
        give(Request { client: 5, id: k, payload: Asker::payload(key, vote) }, &mut rng);
    }
    for r in ca_clients.initial() {
        give(Request { client: r.client, id: r.id, payload: r.payload.clone() }, &mut rng);
    }
    let mut byzantine_requests: Vec<Vec<Request>> = vec![Vec::new(); quorum.n() as usize];
    for b in &byzantine {
        for (instance, vote) in &asked {
            let lie = !*vote;
            let justification = lie.then(|| Asker::justification(&instance.key));
            let decided = Decided { instance: *instance, value: lie, justification };
            let mut notices = vec![Notice::sign(&replica_keys[b.as_usize()], &CLUSTER, b.0, &decided)];
            let victim = honest[0].0;
            notices.push(Notice::sign(&replica_keys[b.as_usize()], &CLUSTER, victim, &decided));
            for notice in notices {
                let (client, id) = notice.request_key();
                byzantine_requests[b.as_usize()].push(Request { client, id, payload: notice.to_payload() });
            }
        }
    }

    let mut config = Config::new(b"simnet/whole-replica".to_vec());
    config.batch_size = 4 * quorum.n() as usize;
    config.checkpoint_interval = CHECKPOINT_INTERVAL;
    config.epochs_future_max = 8;
    let scenario = ReplicaScenario {
        quorum,
        keys: keys.clone(),
        identities: replica_keys,
        seeds,
        registries,
        config,
        clocks,
        requests,
        byzantine_requests,
    };
    let given: BTreeSet<(u64, u64, Vec<u8>)> = honest
        .iter()
        .flat_map(|i| scenario.requests[i.as_usize()].iter().map(|r| (r.client, r.id, r.payload.clone())))
        .collect();
    // Tickets are asked of the first honest replica that applied an event's creation, once; so
    // are the two updates of the CA's updated key, once its issue is applied, one right after
    // the other (the first first).
    let ticketed: Arc<Mutex<BTreeSet<EventId>>> = Arc::default();
    let tickets_given: Arc<Mutex<Vec<Request>>> = Arc::default();
    let per_event = case.tickets as u64;
    let updates: Option<([u8; 32], Vec<Request>)> = ca_clients.updated.as_ref().map(|(issue, updates)| {
        let requests = updates.iter().rev().map(|r| Request { client: r.client, id: r.id, payload: r.payload.clone() });
        (issue.instance, requests.collect())
    });
    let reaction = {
        let (ticketed, tickets_given) = (Arc::clone(&ticketed), Arc::clone(&tickets_given));
        let pending: Arc<Mutex<BTreeMap<NodeIndex, Vec<Request>>>> = Arc::default();
        let mut updates = updates.clone();
        Box::new(move |index: NodeIndex, output: &Output| -> Option<Input> {
            let mut pending = pending.lock().ok()?;
            if let Output::Applied(applied) = output {
                let mut ticketed = ticketed.lock().ok()?;
                for event in &applied.events {
                    if ticketed.insert(*event) {
                        let queue = pending.entry(index).or_default();
                        for k in 0..per_event {
                            let id = u64::from_le_bytes(event.0[..8].try_into().ok()?) ^ k;
                            queue.push(Request { client: 4, id, payload: ticket(*event, k).to_payload() });
                        }
                    }
                }
                let issued = |issue: &[u8; 32]| {
                    applied.ca.iter().any(|(instance, outcomes)| instance == issue && ca::issued(outcomes).is_some())
                };
                if updates.as_ref().is_some_and(|(issue, _)| issued(issue)) {
                    let (_, requests) = updates.take()?;
                    pending.entry(index).or_default().extend(requests);
                }
            }
            // One request per output: the reaction gives one input at a time.
            let request = pending.get_mut(&index)?.pop()?;
            tickets_given.lock().ok()?.push(request.clone());
            Some(Input::Submit(request))
        })
    };
    let done = {
        let tickets_given = Arc::clone(&tickets_given);
        let wanted = case.events * case.tickets + updates.as_ref().map_or(0, |(_, requests)| requests.len());
        let instances = asked.len();
        let ca_instances: BTreeSet<[u8; 32]> = ca_clients.all().map(|r| r.instance).collect();
        move |outputs: &[Option<Vec<Produced<Output>>>]| {
            let Ok(tickets) = tickets_given.lock() else { return false };
            if tickets.len() < wanted {
                return false;
            }
            let mut all = given.clone();
            all.extend(tickets.iter().map(|r| (r.client, r.id, r.payload.clone())));
            everything_ordered_and_certified(outputs, &all)
                && every_instance_decided(outputs, instances)
                && every_ca_instance_decided(outputs, &ca_instances)
        }
    };
    let heal_at = rng.gen_range(0..HEAL_AT_MAX);
    let run = RunConfig { seed: case.seed, deliveries_max: 5_000_000, cpu: None };
    let scheduler: Box<dyn crate::Scheduler<Message>> = Box::new(RandomScheduler::new(quorum, &mut rng));
    let network = Network::new(quorum, &scenario, &behaviours, scheduler, run)
        .with_reaction(reaction)
        .with_liveness(heal_at, LIVENESS_BOUND);
    let (report, _) = network.run_until(|i| scenario.input(i), done);
    let context = |e: String| format!("{e} (n={}, byzantine={}, seed={})", case.n, case.byzantine.name(), case.seed);
    check::faults_only_against(&report, &byzantine).map_err(context)?;
    check::liveness(&report).map_err(context)?;
    if !report.done_early {
        // The certification authority's checks say why, if it is theirs (a holder without its
        // certificate is why the updates were never sent).
        let ca = check_ca(&report, &ca_clients).err().map(|e| format!("; {e}")).unwrap_or_default();
        return Err(context(format!(
            "validity: run ended ({} deliveries) before every request was ordered, every epoch certified and \
             every instance decided; {}{ca}",
            report.deliveries,
            progress(&report)
        )));
    }
    let lies: BTreeSet<Vec<u8>> = scenario.byzantine_requests.iter().flatten().map(|r| r.payload.clone()).collect();
    let mut summary = check_replicas(&report, &keys, case.events * case.tickets, &asked).map_err(context)?;
    summary.byzantine_notices = byzantine_notices_ordered(&report, &lies);
    summary.certificates = check_ca(&report, &ca_clients).map_err(context)?;
    Ok(summary)
}

/// The certification authority's checks at every honest replica ([`ca::check`]); the updates'
/// order is their order in the log. The certificates issued, at the replica with the most.
fn check_ca(report: &crate::Report<Output>, clients: &ca::CaClients) -> Result<usize, String> {
    let mut ordered: Vec<[u8; 32]> = Vec::new();
    if let Some((_, updates)) = &clients.updated {
        let log = report.honest().filter_map(|i| report.outputs[i.as_usize()].as_ref()).next();
        let requests = log.into_iter().flatten().flat_map(|p| match &p.output {
            Output::Abc(AbcOutput::Batch(batch)) => batch.requests.as_slice(),
            _ => &[],
        });
        for r in requests {
            let update = updates.iter().find(|u| (u.client, u.id) == (r.client, r.id));
            if let Some(update) = update.filter(|u| !ordered.contains(&u.instance)) {
                ordered.push(update.instance);
            }
        }
    }
    let mut issued = 0;
    for index in report.honest() {
        let Some(log) = report.outputs[index.as_usize()].as_ref() else { continue };
        let started: Vec<(u64, [u8; 32])> = log
            .iter()
            .filter_map(|p| match &p.output {
                Output::Applied(a) => Some(a.ca_started.iter().map(|instance| (a.epoch, *instance))),
                _ => None,
            })
            .flatten()
            .collect();
        let decided: Vec<(u64, [u8; 32], &[Outcome])> = log
            .iter()
            .filter_map(|p| match &p.output {
                Output::Applied(a) => {
                    Some(a.ca.iter().map(|(instance, outcomes)| (a.epoch, *instance, outcomes.as_slice())))
                }
                _ => None,
            })
            .flatten()
            .collect();
        issued = issued.max(ca::check(index, &decided, &started, clients, &ordered)?);
    }
    Ok(issued)
}

/// Whether every honest replica applied the decisions of the CA's `instances`.
fn every_ca_instance_decided(outputs: &[Option<Vec<Produced<Output>>>], instances: &BTreeSet<[u8; 32]>) -> bool {
    outputs.iter().flatten().all(|log| {
        let decided: BTreeSet<&[u8; 32]> = log
            .iter()
            .flat_map(|p| match &p.output {
                Output::Applied(a) => a.ca.as_slice(),
                _ => &[],
            })
            .map(|(instance, _)| instance)
            .collect();
        instances.iter().all(|instance| decided.contains(instance))
    })
}

/// Where each honest replica got to: epochs delivered and applied, certificates, decisions.
fn progress(report: &crate::Report<Output>) -> String {
    let of = |index: NodeIndex| {
        let log = report.outputs[index.as_usize()].as_deref().unwrap_or_default();
        let (mut delivered, mut applied, mut certified, mut decided, mut installed) = (None, None, 0, 0, false);
        for produced in log {
            match &produced.output {
                Output::Abc(AbcOutput::Batch(batch)) => delivered = Some(batch.epoch),
                Output::Abc(AbcOutput::Install(_)) => installed = true,
                Output::Applied(a) => {
                    applied = Some(a.epoch);
                    decided += a.decided.len();
                }
                Output::Certified(_) => certified += 1,
                _ => {}
            }
        }
        format!(
            "replica {index}: delivered to {delivered:?}, applied to {applied:?}{}, {certified} certified, {decided} decided",
            if installed { " (installed a checkpoint)" } else { "" }
        )
    };
    report.honest().map(of).collect::<Vec<_>>().join("; ")
}

/// How many of the Byzantine notices `lies` an honest replica ordered (the most at one).
fn byzantine_notices_ordered(report: &crate::Report<Output>, lies: &BTreeSet<Vec<u8>>) -> usize {
    let ordered = |log: &Vec<Produced<Output>>| {
        log.iter()
            .filter_map(|p| match &p.output {
                Output::Abc(AbcOutput::Batch(batch)) => Some(batch),
                _ => None,
            })
            .flat_map(|batch| batch.requests.iter().filter(|r| lies.contains(&r.payload)))
            .count()
    };
    report.honest().filter_map(|i| report.outputs[i.as_usize()].as_ref()).map(ordered).max().unwrap_or(0)
}

/// Whether some honest replica ordered every request of `all`, and every honest replica
/// certified every epoch with leaves it applied up to there.
fn everything_ordered_and_certified(
    outputs: &[Option<Vec<Produced<Output>>>],
    all: &BTreeSet<(u64, u64, Vec<u8>)>,
) -> bool {
    let mut by = None;
    for log in outputs.iter().flatten() {
        let mut missing = all.clone();
        for produced in log {
            if let Output::Abc(AbcOutput::Batch(batch)) = &produced.output {
                for r in &batch.requests {
                    missing.remove(&(r.client, r.id, r.payload.clone()));
                }
                if missing.is_empty() {
                    by = Some(batch.epoch);
                    break;
                }
            }
        }
        if by.is_some() {
            break;
        }
    }
    let Some(by) = by else { return false };
    outputs.iter().flatten().all(|log| {
        let signed: BTreeSet<u64> = log
            .iter()
            .filter_map(|p| match &p.output {
                Output::Applied(a) if a.root.is_some() && a.epoch <= by => Some(a.epoch),
                _ => None,
            })
            .collect();
        let applied_to = log
            .iter()
            .filter_map(|p| match &p.output {
                Output::Applied(a) => Some(a.epoch),
                _ => None,
            })
            .max();
        let certified: BTreeSet<u64> = log
            .iter()
            .filter_map(|p| match &p.output {
                Output::Certified(c) => Some(c.root.epoch),
                _ => None,
            })
            .collect();
        applied_to.is_some_and(|e| e >= by) && signed.is_subset(&certified)
    })
}

/// Whether every honest replica applied the decisions of `instances` agreement instances.
fn every_instance_decided(outputs: &[Option<Vec<Produced<Output>>>], instances: usize) -> bool {
    outputs.iter().flatten().all(|log| {
        let decided: usize = log
            .iter()
            .map(|p| match &p.output {
                Output::Applied(a) => a.decided.len(),
                _ => 0,
            })
            .sum();
        decided >= instances
    })
}

/// The checks on what the honest replicas applied and certified.
fn check_replicas(
    report: &crate::Report<Output>,
    keys: &ClusterKeys,
    tickets_wanted: usize,
    asked: &BTreeMap<InstanceId, bool>,
) -> Result<ReplicaSummary, String> {
    let public = keys.signing[0].public().public_key();
    // Epoch → (state, root, decisions) as the first honest replica applied it, to compare the
    // others'.
    type Seen<'a> = (NodeIndex, Digest, Option<Digest>, &'a [(InstanceId, bool)]);
    let mut agreed: BTreeMap<u64, Seen<'_>> = BTreeMap::new();
    let mut summary = ReplicaSummary {
        certified: 0,
        answers_verified: 0,
        tickets: 0,
        decided: 0,
        byzantine_notices: 0,
        backfilled: 0,
        certificates: 0,
        trace: report.trace_hex(),
    };
    for index in report.honest() {
        let Some(log) = report.outputs[index.as_usize()].as_ref() else { continue };
        let certificates: BTreeMap<u64, Certificate> = log
            .iter()
            .filter_map(|p| match &p.output {
                Output::Certified(c) => Some((c.root.epoch, *c)),
                _ => None,
            })
            .collect();
        let mut tickets = 0;
        let mut decided = BTreeMap::new();
        for produced in log {
            match &produced.output {
                Output::HostError(error) => return Err(format!("replica {index}: the host failed: {error}")),
                Output::Applied(applied) => {
                    tickets += applied.tickets;
                    for (instance, value) in &applied.decided {
                        // Validity: every honest replica votes as the request asked (the service
                        // is deterministic), so that is the decision, whatever the Byzantine
                        // notices say.
                        if asked.get(instance) != Some(value) || decided.insert(*instance, *value).is_some() {
                            return Err(format!(
                                "replica {index}: instance {:02x?}… decided {value} in epoch {} (asked: {:?})",
                                &instance.key[..4],
                                applied.epoch,
                                asked.get(instance)
                            ));
                        }
                    }
                    match agreed.get(&applied.epoch) {
                        None => {
                            agreed.insert(
                                applied.epoch,
                                (index, applied.state, applied.root, applied.decided.as_slice()),
                            );
                        }
                        Some((first, state, root, decisions)) => {
                            if (state, root) != (&applied.state, &applied.root) {
                                return Err(format!(
                                    "replicas {first} and {index} hold different service states or roots after epoch {}",
                                    applied.epoch
                                ));
                            }
                            if *decisions != applied.decided.as_slice() {
                                return Err(format!(
                                    "replicas {first} and {index} applied different decisions in epoch {}",
                                    applied.epoch
                                ));
                            }
                        }
                    }
                    let Some(root) = applied.root else { continue };
                    // Epochs past the end of the run may not be certified yet; the done
                    // condition saw every one up to the last request certified.
                    let Some(certificate) = certificates.get(&applied.epoch) else { continue };
                    if certificate.root.root != root {
                        return Err(format!("replica {index}: epoch {} certified on another root", applied.epoch));
                    }
                    for answer in &applied.answers {
                        certificate::verify(&CLUSTER, &public, &answer.leaf, &answer.inclusion, certificate).map_err(
                            |e| {
                                format!(
                                    "replica {index}: an answer of epoch {} does not verify alone: {e}",
                                    applied.epoch
                                )
                            },
                        )?;
                        summary.answers_verified += 1;
                    }
                }
                Output::Certified(certificate) => {
                    if !certificate.verifies(&CLUSTER, &public) {
                        return Err(format!(
                            "replica {index}: the certificate of epoch {} does not verify",
                            certificate.root.epoch
                        ));
                    }
                }
                Output::Abc(_) | Output::Decided(_) => {}
                Output::Backfilled { from, to } => summary.backfilled += (to - from + 1) as usize,
            }
        }
        summary.certified = summary.certified.max(certificates.len());
        summary.tickets = summary.tickets.max(tickets);
        summary.decided = summary.decided.max(decided.len());
    }
    if summary.tickets < tickets_wanted {
        return Err(format!("only {} of {tickets_wanted} tickets were issued", summary.tickets));
    }
    Ok(summary)
}
