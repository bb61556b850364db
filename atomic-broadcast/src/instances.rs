//! Agreement instances for the services: many validated binary agreements, each named by an
//! [`InstanceId`], started by the local service and run with every replica's messages.
//!
//! # Rules
//!
//! - The local service starts instance `X` with its vote (0, or 1 with a justification) once:
//!   [`Instances::start`]. Every replica's service starts the same instances, since it does so
//!   applying the same ordered requests, but not at the same moment.
//! - Instance `X` is a validated binary agreement (see `fides_agreement`) named
//!   `session || "/instance/" || service || key`: its coin is its own, and no ACS agreement of the
//!   same session (`session || "/epoch/" || …`) has that name. A vote for 1 is valid when the
//!   host's [`InstanceValidator`] accepts `(X, justification)`.
//! - A message for an instance that runs here goes to it. A message for an instance not started
//!   here is kept, up to `waiting_per_sender_max` per sender (an honest replica may be ahead: its
//!   service applied the request first); beyond that the sender's oldest kept message is dropped
//!   and a `WrongInstance` fault recorded. Starting `X` hands it the messages kept for it.
//! - At most `running_max` instances run at once; starts beyond that wait in order and run as
//!   running ones terminate. (A start is never refused for room: every replica must run every
//!   instance its service starts, or their services would part ways.)
//! - An instance that terminated is dropped, and `(X, decision)` is kept in a record of the last
//!   `decided_kept_max` instances decided. A message for a recorded instance never starts it
//!   again: it is answered with `TERM(decision)` (the first message of each sender, and every
//!   `RESEND`), which is all a replica that is behind (or restarted and lost its messages) needs to
//!   decide and terminate too.
//! - [`Instances::recover`], after a restart, sends again what each running instance sent in its
//!   current round and asks the others for theirs.
//!
//! The whole state is data ([`InstancesState`], with a canonical wire encoding), so that it can be
//! part of a snapshot; `docs/agreement.md` ("Agreement instances") explains the bounds and what a
//! service must do with a decision.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use fides_agreement::{self as agreement, BinaryAgreement, Decision, Validator, Vote};
use fides_crypto::ThresholdKeys;
use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};
use fides_types::{FaultKind, NodeIndex, Outgoing, Quorum, Step, Target};

/// Longest encoded state of one running agreement in a snapshot (a few rounds of votes from `n`
/// replicas and at most a few cached justifications of at most 16 KiB each: far below this).
const AGREEMENT_STATE_LEN_MAX: usize = 64 << 20;

/// Names an agreement instance: the service that asked for it and a key of that service's
/// choosing (typically a hash of what is being decided: a transaction id, a request digest).
/// The service id lets the host hand the decision back to the service that asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId {
    /// The service that asked: its id, the first four bytes of its payloads (e.g. `BST1`).
    pub service: [u8; 4],
    /// The service's name for the instance.
    pub key: [u8; 32],
}

impl Wire for InstanceId {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.service);
        out.extend_from_slice(&self.key);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(InstanceId { service: reader.array()?, key: reader.array()? })
    }
}

/// The validity predicate of the instances, supplied by the host: whether `justification` makes
/// a vote for 1 in `instance` acceptable. It must be a pure function of its arguments (e.g. a
/// signature check): every honest replica must judge a justification alike, and a replica
/// replaying its log or restored from a snapshot must judge it as it did the first time.
pub trait InstanceValidator: Send + Sync {
    /// Whether `justification` justifies a vote for 1 in `instance`.
    fn is_valid(&self, instance: &InstanceId, justification: &[u8]) -> bool;
}

/// A predicate that accepts no justification: every instance decides 0. For a host that runs no
/// service asking for agreements.
#[derive(Clone, Copy, Debug, Default)]
pub struct RefuseAll;

impl InstanceValidator for RefuseAll {
    fn is_valid(&self, _instance: &InstanceId, _justification: &[u8]) -> bool {
        false
    }
}

/// The validator of one instance: the host's predicate with the instance's id bound.
struct Check {
    instance: InstanceId,
    validator: Arc<dyn InstanceValidator>,
}

impl Validator for Check {
    fn requires_justification(&self) -> bool {
        true
    }

    fn is_valid(&self, justification: &[u8]) -> bool {
        self.validator.is_valid(&self.instance, justification)
    }
}

/// A message of one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The instance.
    pub instance: InstanceId,
    /// Its agreement's message.
    pub message: agreement::Message,
}

impl Wire for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        self.instance.encode(out);
        self.message.encode(out);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Message { instance: InstanceId::decode(reader)?, message: agreement::Message::decode(reader)? })
    }
}

/// An instance decided here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// The instance.
    pub instance: InstanceId,
    /// The value decided.
    pub value: bool,
    /// For 1: a justification the predicate accepted (the proof a service may show).
    pub justification: Option<Vec<u8>>,
}

/// The step type of the instances.
pub type InstancesStep = Step<Message, Decided>;

/// Bounds and names of the instances.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster's session: instance `X`'s coin is named `session || "/instance/" || X`.
    pub session: Vec<u8>,
    /// Instances running at once; later starts wait for room, in order.
    pub running_max: usize,
    /// Messages kept per sender for instances not started here.
    pub waiting_per_sender_max: usize,
    /// Decided instances remembered (to answer late messages and refuse a second start).
    pub decided_kept_max: usize,
    /// Each agreement's `rounds_future_max`.
    pub rounds_future_max: u32,
    /// Longest justification accepted (a longer one is a `TooLong` fault, and is not kept).
    pub justification_len_max: usize,
}

impl Config {
    /// Defaults for session `session`.
    pub fn new(session: impl Into<Vec<u8>>) -> Self {
        Config {
            session: session.into(),
            running_max: 256,
            waiting_per_sender_max: 1024,
            decided_kept_max: 4096,
            rounds_future_max: 16,
            justification_len_max: 16 * 1024,
        }
    }

    /// The name of instance `instance`'s agreement (what its coin signs).
    pub fn agreement_name(&self, instance: &InstanceId) -> Vec<u8> {
        let mut name = self.session.clone();
        name.extend_from_slice(b"/instance/");
        instance.encode(&mut name);
        name
    }
}

/// Local errors: a misuse by the service, never something a peer did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The instance was started here before (it runs, waits, or was decided).
    #[error("instance {0:?} was already started here")]
    AlreadyStarted(InstanceId),
    /// A vote for 1 whose justification the predicate refuses.
    #[error("the justification of our own vote for 1 does not pass the predicate")]
    InvalidOwnJustification,
    /// The host runs no agreement instances.
    #[error("this replica hosts no agreement instances")]
    NotHosted,
}

/// Where an instance stands here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not started here (or decided so long ago that it is forgotten).
    Unknown,
    /// Started, waiting for room to run.
    Waiting,
    /// Running (it may have decided already, and not terminated yet).
    Running,
    /// Decided and terminated.
    Decided(bool),
}

/// What is remembered of a decided instance.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    value: bool,
    justification: Option<Vec<u8>>,
    /// Replicas already answered with our TERM.
    answered: BTreeSet<NodeIndex>,
}

/// The agreement instances at one replica.
pub struct Instances {
    quorum: Quorum,
    our_index: NodeIndex,
    coin_keys: Arc<ThresholdKeys>,
    config: Config,
    validator: Arc<dyn InstanceValidator>,
    running: BTreeMap<InstanceId, BinaryAgreement<Check>>,
    /// Started beyond `running_max`, in the order started.
    waiting: VecDeque<(InstanceId, Vote)>,
    /// Per sender, its messages for instances not started here, oldest first.
    early: BTreeMap<NodeIndex, VecDeque<Message>>,
    decided: BTreeMap<InstanceId, Record>,
    /// The decided instances, oldest first (the first forgotten).
    decided_order: VecDeque<InstanceId>,
}

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instances")
            .field("our_index", &self.our_index)
            .field("running", &self.running.len())
            .field("waiting", &self.waiting.len())
            .field("decided", &self.decided.len())
            .finish_non_exhaustive()
    }
}

impl Instances {
    /// No instances yet, at replica `our_index`.
    pub fn new(
        quorum: Quorum,
        our_index: NodeIndex,
        coin_keys: Arc<ThresholdKeys>,
        config: Config,
        validator: Arc<dyn InstanceValidator>,
    ) -> Self {
        Instances {
            quorum,
            our_index,
            coin_keys,
            config,
            validator,
            running: BTreeMap::new(),
            waiting: VecDeque::new(),
            early: BTreeMap::new(),
            decided: BTreeMap::new(),
            decided_order: VecDeque::new(),
        }
    }

    /// Where `instance` stands here.
    pub fn status(&self, instance: &InstanceId) -> Status {
        if let Some(record) = self.decided.get(instance) {
            Status::Decided(record.value)
        } else if self.running.contains_key(instance) {
            Status::Running
        } else if self.waiting.iter().any(|(id, _)| id == instance) {
            Status::Waiting
        } else {
            Status::Unknown
        }
    }

    /// Instances running.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Messages kept for instances not started here, over all senders.
    pub fn early_len(&self) -> usize {
        self.early.values().map(VecDeque::len).sum()
    }

    /// Start `instance` with our `vote` (the local service asks; once per instance).
    pub fn start(&mut self, instance: InstanceId, vote: Vote) -> Result<InstancesStep, Error> {
        if self.status(&instance) != Status::Unknown {
            return Err(Error::AlreadyStarted(instance));
        }
        if let Vote::One(justification) = &vote {
            if justification.len() > self.config.justification_len_max
                || !self.validator.is_valid(&instance, justification)
            {
                return Err(Error::InvalidOwnJustification);
            }
        }
        let mut step = InstancesStep::default();
        if self.running.len() >= self.config.running_max {
            self.waiting.push_back((instance, vote));
        } else {
            self.run(instance, vote, &mut step);
        }
        Ok(step)
    }

    /// Handle `message` from `from`.
    pub fn handle(&mut self, from: NodeIndex, message: Message) -> InstancesStep {
        let mut step = InstancesStep::default();
        if !self.quorum.contains(from) {
            step.fault(from, FaultKind::UnknownSender);
            return step;
        }
        let instance = message.instance;
        if self.running.contains_key(&instance) {
            self.deliver(from, message, &mut step);
        } else if let Some(record) = self.decided.get_mut(&instance) {
            answer_decided(instance, record, from, self.our_index, &message.message, &mut step);
        } else {
            self.keep_early(from, message, &mut step);
        }
        step
    }

    /// After a restart: every running instance sends again what it sent in its current round and
    /// asks the others for theirs (see `BinaryAgreement::recover`).
    pub fn recover(&mut self) -> InstancesStep {
        let mut step = InstancesStep::default();
        for (instance, agreement) in &mut self.running {
            let instance = *instance;
            let outputs = agreement.recover().lift_into(&mut step, |message| Message { instance, message });
            debug_assert!(outputs.is_empty(), "recovering decides nothing");
        }
        step
    }

    fn run(&mut self, instance: InstanceId, vote: Vote, step: &mut InstancesStep) {
        let config = agreement::Config {
            rounds_future_max: self.config.rounds_future_max,
            justification_len_max: self.config.justification_len_max,
            ..agreement::Config::new(self.config.agreement_name(&instance))
        };
        let check = Check { instance, validator: Arc::clone(&self.validator) };
        let mut agreement =
            BinaryAgreement::new(self.quorum, self.our_index, Arc::clone(&self.coin_keys), config, check);
        match agreement.propose(vote) {
            Ok(inner) => self.lift(instance, inner, step),
            // Checked in `start` (and a waiting vote was checked before it waited).
            Err(error) => unreachable!("a vote checked at start was refused: {error}"),
        }
        self.running.insert(instance, agreement);
        // The messages that came before the start, in the order they came.
        let mut early = Vec::new();
        for (sender, kept) in &mut self.early {
            let (for_this, others): (VecDeque<Message>, VecDeque<Message>) =
                kept.drain(..).partition(|m| m.instance == instance);
            *kept = others;
            early.extend(for_this.into_iter().map(|m| (*sender, m)));
        }
        self.early.retain(|_, kept| !kept.is_empty());
        for (sender, message) in early {
            if !self.running.contains_key(&instance) {
                break; // Terminated on the messages before.
            }
            self.deliver(sender, message, step);
        }
        self.retire_if_terminated(instance, step);
    }

    fn deliver(&mut self, from: NodeIndex, message: Message, step: &mut InstancesStep) {
        let instance = message.instance;
        let Some(agreement) = self.running.get_mut(&instance) else { return };
        let inner = agreement.handle(from, message.message);
        self.lift(instance, inner, step);
        self.retire_if_terminated(instance, step);
    }

    fn lift(&mut self, instance: InstanceId, inner: agreement::AbaStep, step: &mut InstancesStep) {
        for decision in inner.lift_into(step, |message| Message { instance, message }) {
            let Decision { value, justification, .. } = decision;
            step.outputs.push(Decided { instance, value, justification });
        }
    }

    /// Drop a terminated instance, record its decision, and run the next waiting instances.
    fn retire_if_terminated(&mut self, instance: InstanceId, step: &mut InstancesStep) {
        let terminated = self.running.get(&instance).is_some_and(fides_types::Protocol::terminated);
        if !terminated {
            return;
        }
        let Some(agreement) = self.running.remove(&instance) else { return };
        // Invariant of the agreement: it terminates only after deciding.
        let decision = agreement.decision().cloned().expect("a terminated agreement has decided");
        self.remember(
            instance,
            Record { value: decision.value, justification: decision.justification, answered: BTreeSet::new() },
        );
        while self.running.len() < self.config.running_max {
            let Some((next, vote)) = self.waiting.pop_front() else { break };
            self.run(next, vote, step);
        }
    }

    fn remember(&mut self, instance: InstanceId, record: Record) {
        self.decided.insert(instance, record);
        self.decided_order.push_back(instance);
        while self.decided_order.len() > self.config.decided_kept_max {
            if let Some(oldest) = self.decided_order.pop_front() {
                self.decided.remove(&oldest);
            }
        }
    }

    /// Keep a message for an instance not started here, within the sender's bound.
    fn keep_early(&mut self, from: NodeIndex, message: Message, step: &mut InstancesStep) {
        if justification_len(&message.message) > self.config.justification_len_max {
            step.fault(from, FaultKind::TooLong);
            return;
        }
        if from == self.our_index {
            return; // Our own messages reach us only for instances we run.
        }
        let kept = self.early.entry(from).or_default();
        kept.push_back(message);
        if kept.len() > self.config.waiting_per_sender_max {
            kept.pop_front();
            step.fault(from, FaultKind::WrongInstance);
        }
    }

    /// The state, to be restored with [`Instances::from_state`].
    pub fn state(&self) -> InstancesState {
        InstancesState {
            running: self
                .running
                .iter()
                .map(|(id, a)| {
                    let mut bytes = Vec::new();
                    a.encode_state(&mut bytes);
                    (*id, bytes)
                })
                .collect(),
            waiting: self.waiting.iter().cloned().collect(),
            early: self.early.iter().map(|(from, kept)| (*from, kept.iter().cloned().collect())).collect(),
            decided: self
                .decided_order
                .iter()
                .filter_map(|id| self.decided.get(id).map(|record| (*id, record.clone())))
                .collect(),
        }
    }

    /// Replace the whole state by `state` (a snapshot's), keeping the configuration and predicate.
    pub fn restore(&mut self, state: InstancesState) -> Result<(), DecodeError> {
        let restored = Instances::from_state(
            self.quorum,
            self.our_index,
            Arc::clone(&self.coin_keys),
            self.config.clone(),
            Arc::clone(&self.validator),
            state,
        )?;
        *self = restored;
        Ok(())
    }

    /// Instances in the state `state`, with the configuration and predicate of the ones it was
    /// taken from.
    pub fn from_state(
        quorum: Quorum,
        our_index: NodeIndex,
        coin_keys: Arc<ThresholdKeys>,
        config: Config,
        validator: Arc<dyn InstanceValidator>,
        state: InstancesState,
    ) -> Result<Self, DecodeError> {
        let mut instances = Instances::new(quorum, our_index, coin_keys, config, validator);
        for (instance, agreement_state) in state.running {
            let config = agreement::Config {
                rounds_future_max: instances.config.rounds_future_max,
                justification_len_max: instances.config.justification_len_max,
                ..agreement::Config::new(instances.config.agreement_name(&instance))
            };
            let check = Check { instance, validator: Arc::clone(&instances.validator) };
            let keys = Arc::clone(&instances.coin_keys);
            let mut agreement = BinaryAgreement::new(quorum, our_index, keys, config, check);
            let mut reader = Reader::new(&agreement_state);
            agreement.decode_state(&mut reader)?;
            reader.finish()?;
            instances.running.insert(instance, agreement);
        }
        instances.waiting = state.waiting.into();
        for (from, kept) in state.early {
            if !quorum.contains(from) {
                return Err(DecodeError::Invalid { what: "replica index", value: u64::from(from.0) });
            }
            instances.early.insert(from, kept.into());
        }
        for (instance, record) in state.decided {
            if let Some(node) = record.answered.iter().find(|node| !quorum.contains(**node)) {
                return Err(DecodeError::Invalid { what: "replica index", value: u64::from(node.0) });
            }
            instances.decided.insert(instance, record);
            instances.decided_order.push_back(instance);
        }
        Ok(instances)
    }
}

/// Answer a message for a decided instance with our TERM: it is all a replica that is behind
/// needs (`t + 1` of them decide, `2t + 1` terminate). The first message of each sender is
/// answered, and every `RESEND`: that is what a replica sends after a restart, and the answer to
/// its earlier messages may have been lost in the crash (one answer per message asked: no more
/// than a running agreement gives).
fn answer_decided(
    instance: InstanceId,
    record: &mut Record,
    from: NodeIndex,
    us: NodeIndex,
    message: &agreement::Message,
    step: &mut InstancesStep,
) {
    let first = record.answered.insert(from);
    if from == us || !(first || matches!(message, agreement::Message::Resend { .. })) {
        return;
    }
    let justification = if record.value { record.justification.clone().unwrap_or_default() } else { Vec::new() };
    let message = agreement::Message::Term { value: record.value, justification };
    step.messages.push(Outgoing { target: Target::Node(from), message: Message { instance, message } });
}

fn justification_len(message: &agreement::Message) -> usize {
    match message {
        agreement::Message::BVal { justification, .. } | agreement::Message::Term { justification, .. } => {
            justification.len()
        }
        _ => 0,
    }
}

/// The instances' state as data, for snapshots (see [`Instances::state`]).
#[derive(Clone, Debug)]
pub struct InstancesState {
    /// Each running agreement's state ([`BinaryAgreement::encode_state`]).
    running: Vec<(InstanceId, Vec<u8>)>,
    waiting: Vec<(InstanceId, Vote)>,
    early: Vec<(NodeIndex, Vec<Message>)>,
    /// Oldest first.
    decided: Vec<(InstanceId, Record)>,
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).expect("instance collections are bounded far below 2^32");
    out.extend_from_slice(&len.to_le_bytes());
}

fn put_vote(out: &mut Vec<u8>, vote: &Vote) {
    match vote {
        Vote::Zero => out.push(0),
        Vote::One(justification) => {
            out.push(1);
            put_bytes(out, justification);
        }
    }
}

fn vote(reader: &mut Reader<'_>) -> Result<Vote, DecodeError> {
    match reader.u8()? {
        0 => Ok(Vote::Zero),
        1 => Ok(Vote::One(reader.bytes(agreement::JUSTIFICATION_WIRE_MAX)?.to_vec())),
        other => Err(DecodeError::Invalid { what: "vote", value: u64::from(other) }),
    }
}

/// Wire encoding of a vote, for the log event that starts an instance.
pub fn encode_vote(vote: &Vote, out: &mut Vec<u8>) {
    put_vote(out, vote);
}

/// Decode a vote encoded by [`encode_vote`] (bounded by the agreement's justification bound).
pub fn decode_vote(reader: &mut Reader<'_>) -> Result<Vote, DecodeError> {
    vote(reader)
}

impl Wire for InstancesState {
    fn encode(&self, out: &mut Vec<u8>) {
        put_len(out, self.running.len());
        for (instance, state) in &self.running {
            instance.encode(out);
            put_bytes(out, state);
        }
        put_len(out, self.waiting.len());
        for (instance, vote) in &self.waiting {
            instance.encode(out);
            put_vote(out, vote);
        }
        put_len(out, self.early.len());
        for (from, kept) in &self.early {
            out.extend_from_slice(&from.0.to_le_bytes());
            put_len(out, kept.len());
            for message in kept {
                message.encode(out);
            }
        }
        put_len(out, self.decided.len());
        for (instance, record) in &self.decided {
            instance.encode(out);
            out.push(u8::from(record.value));
            out.push(u8::from(record.justification.is_some()));
            if let Some(justification) = &record.justification {
                put_bytes(out, justification);
            }
            put_len(out, record.answered.len());
            for node in &record.answered {
                out.extend_from_slice(&node.0.to_le_bytes());
            }
        }
    }

    /// Bounded by the input: no collection is allocated from a count ahead of its elements.
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut running: Vec<(InstanceId, Vec<u8>)> = Vec::new();
        for _ in 0..reader.u32()? {
            let instance = InstanceId::decode(reader)?;
            if running.last().is_some_and(|(last, _)| *last >= instance) {
                return Err(DecodeError::Invalid { what: "instance order", value: 0 });
            }
            running.push((instance, reader.bytes(AGREEMENT_STATE_LEN_MAX)?.to_vec()));
        }
        let mut waiting = Vec::new();
        for _ in 0..reader.u32()? {
            waiting.push((InstanceId::decode(reader)?, vote(reader)?));
        }
        let mut early: Vec<(NodeIndex, Vec<Message>)> = Vec::new();
        for _ in 0..reader.u32()? {
            let from = NodeIndex(reader.u32()?);
            if early.last().is_some_and(|(last, _)| *last >= from) {
                return Err(DecodeError::Invalid { what: "sender order", value: u64::from(from.0) });
            }
            let mut kept = Vec::new();
            for _ in 0..reader.u32()? {
                kept.push(Message::decode(reader)?);
            }
            early.push((from, kept));
        }
        let mut decided = Vec::new();
        let mut seen = BTreeSet::new();
        for _ in 0..reader.u32()? {
            let instance = InstanceId::decode(reader)?;
            if !seen.insert(instance) {
                return Err(DecodeError::Invalid { what: "repeated decided instance", value: 0 });
            }
            let value = reader.bool()?;
            let justification =
                if reader.bool()? { Some(reader.bytes(agreement::JUSTIFICATION_WIRE_MAX)?.to_vec()) } else { None };
            let mut answered = BTreeSet::new();
            let mut previous: Option<NodeIndex> = None;
            for _ in 0..reader.u32()? {
                let node = NodeIndex(reader.u32()?);
                if previous.is_some_and(|p| p >= node) {
                    return Err(DecodeError::Invalid { what: "node order", value: u64::from(node.0) });
                }
                previous = Some(node);
                answered.insert(node);
            }
            decided.push((instance, Record { value, justification, answered }));
        }
        Ok(InstancesState { running, waiting, early, decided })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fides_crypto::blsttc::SecretKeySet;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Accepts `ok:` followed by the instance's service id.
    struct Prefix;

    impl InstanceValidator for Prefix {
        fn is_valid(&self, instance: &InstanceId, justification: &[u8]) -> bool {
            justification.strip_prefix(b"ok:") == Some(&instance.service[..])
        }
    }

    fn id(k: u8) -> InstanceId {
        InstanceId { service: *b"TST7", key: [k; 32] }
    }

    fn yes() -> Vote {
        Vote::One(b"ok:TST7".to_vec())
    }

    /// n replicas of `Instances` and the messages between them, delivered in a seeded random order.
    struct Net {
        nodes: Vec<Instances>,
        keys: Vec<Arc<ThresholdKeys>>,
        config: Config,
        quorum: Quorum,
        flight: Vec<(NodeIndex, NodeIndex, Message)>,
        decided: Vec<Vec<Decided>>,
        faults: Vec<fides_types::Fault>,
        rng: ChaCha8Rng,
    }

    impl Net {
        fn new(n: u32, config: Config, seed: u64) -> Net {
            let quorum = Quorum::with_max_faults(n).expect("valid n");
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let set = SecretKeySet::random(quorum.t() as usize, &mut rng);
            let keys: Vec<_> = quorum
                .nodes()
                .map(|i| Arc::new(ThresholdKeys::new(i, n, set.public_keys(), set.secret_key_share(i.as_usize()))))
                .collect();
            let nodes = quorum
                .nodes()
                .map(|i| Instances::new(quorum, i, Arc::clone(&keys[i.as_usize()]), config.clone(), Arc::new(Prefix)))
                .collect();
            Net {
                nodes,
                keys,
                config,
                quorum,
                flight: Vec::new(),
                decided: vec![Vec::new(); n as usize],
                faults: Vec::new(),
                rng,
            }
        }

        fn absorb(&mut self, at: NodeIndex, step: InstancesStep) {
            for out in step.messages {
                match out.target {
                    Target::All => {
                        for to in self.quorum.nodes() {
                            self.flight.push((at, to, out.message.clone()));
                        }
                    }
                    Target::Node(to) => self.flight.push((at, to, out.message)),
                }
            }
            self.decided[at.as_usize()].extend(step.outputs);
            self.faults.extend(step.faults);
        }

        fn start(&mut self, at: u32, instance: InstanceId, vote: Vote) {
            let step = self.nodes[at as usize].start(instance, vote).expect("a valid start");
            self.absorb(NodeIndex(at), step);
        }

        /// Deliver messages in random order until none is left (or only those to `held`).
        fn settle(&mut self, held: Option<u32>) {
            loop {
                let deliverable: Vec<usize> =
                    (0..self.flight.len()).filter(|k| held.is_none_or(|h| self.flight[*k].1 != NodeIndex(h))).collect();
                if deliverable.is_empty() {
                    return;
                }
                let (from, to, message) =
                    self.flight.swap_remove(deliverable[self.rng.gen_range(0..deliverable.len())]);
                let step = self.nodes[to.as_usize()].handle(from, message);
                self.absorb(to, step);
            }
        }

        fn restore(&mut self, at: u32) {
            let node = &self.nodes[at as usize];
            let bytes = node.state().to_bytes();
            let state = InstancesState::from_bytes(&bytes).expect("the state decodes");
            assert_eq!(state.to_bytes(), bytes, "one state, one encoding");
            let index = NodeIndex(at);
            let keys = Arc::clone(&self.keys[at as usize]);
            self.nodes[at as usize] =
                Instances::from_state(self.quorum, index, keys, self.config.clone(), Arc::new(Prefix), state)
                    .expect("the state fits");
        }
    }

    #[test]
    fn many_instances_decide_alike_and_a_decided_one_carries_its_proof() {
        for seed in 0..3 {
            let mut net = Net::new(4, Config::new("test"), seed);
            for k in 0..6u8 {
                for i in 0..4 {
                    let vote = if (k + i as u8).is_multiple_of(3) { Vote::Zero } else { yes() };
                    net.start(i, id(k), vote);
                }
            }
            net.settle(None);
            assert!(net.faults.is_empty(), "no faults among honest replicas: {:?}", net.faults);
            for k in 0..6u8 {
                let values: Vec<&Decided> =
                    net.decided.iter().flat_map(|d| d.iter().filter(|x| x.instance == id(k))).collect();
                assert_eq!(values.len(), 4, "every replica decides instance {k} once");
                assert!(values.iter().all(|d| d.value == values[0].value), "agreement on {k}");
                for d in values {
                    assert_eq!(d.justification.is_some(), d.value, "a 1 and only a 1 has a proof");
                    if let Some(j) = &d.justification {
                        assert!(Prefix.is_valid(&id(k), j));
                    }
                }
            }
            assert!(net.nodes.iter().all(|n| n.running_len() == 0 && n.early_len() == 0));
        }
    }

    #[test]
    fn a_replica_that_starts_late_uses_the_messages_kept_for_it() {
        let mut net = Net::new(4, Config::new("test"), 5);
        for i in 0..3 {
            net.start(i, id(1), yes());
        }
        // Replica 3 has not started: what reaches it is kept (the others decide without it).
        net.settle(None);
        assert!(net.nodes[3].early_len() > 0);
        assert_eq!(net.nodes[3].status(&id(1)), Status::Unknown);
        net.start(3, id(1), Vote::Zero);
        net.settle(None);
        for i in 0..4 {
            assert_eq!(net.nodes[i].status(&id(1)), Status::Decided(true), "replica {i}");
        }
        assert_eq!(net.nodes[3].early_len(), 0);
    }

    #[test]
    fn a_late_message_for_a_decided_instance_is_answered_and_does_not_restart_it() {
        let mut net = Net::new(4, Config::new("test"), 6);
        for i in 0..3 {
            net.start(i, id(2), Vote::Zero);
        }
        // Replica 3 hears nothing and says nothing: the three others decide and terminate alone.
        net.settle(Some(3));
        net.flight.clear();
        assert_eq!(net.nodes[0].status(&id(2)), Status::Decided(false));
        let late =
            Message { instance: id(2), message: agreement::Message::Aux { round: fides_types::Round(0), value: true } };
        let step = net.nodes[0].handle(NodeIndex(3), late.clone());
        assert_eq!(step.messages.len(), 1, "answered with our TERM");
        assert!(matches!(step.messages[0].message.message, agreement::Message::Term { value: false, .. }));
        assert!(net.nodes[0].handle(NodeIndex(3), late).messages.is_empty(), "once per sender");
        let resend = Message { instance: id(2), message: agreement::Message::Resend { round: fides_types::Round(0) } };
        assert_eq!(net.nodes[0].handle(NodeIndex(3), resend).messages.len(), 1, "and every RESEND");
        assert_eq!(net.nodes[0].running_len(), 0);
        assert_eq!(net.nodes[0].start(id(2), Vote::Zero).err(), Some(Error::AlreadyStarted(id(2))));
        // Replica 3 starts at last: the others' answers are all it needs to decide and terminate.
        net.start(3, id(2), yes());
        net.settle(None);
        assert_eq!(net.nodes[3].status(&id(2)), Status::Decided(false));
    }

    #[test]
    fn messages_for_unknown_instances_are_kept_within_the_senders_bound() {
        let mut config = Config::new("test");
        config.waiting_per_sender_max = 8;
        let mut net = Net::new(4, config, 7);
        let mut faults = 0;
        for k in 0..20u8 {
            let message = Message {
                instance: id(k),
                message: agreement::Message::Aux { round: fides_types::Round(0), value: true },
            };
            let step = net.nodes[0].handle(NodeIndex(3), message);
            faults +=
                step.faults.iter().filter(|f| f.kind == FaultKind::WrongInstance && f.node == NodeIndex(3)).count();
        }
        assert_eq!(net.nodes[0].early_len(), 8);
        assert_eq!(faults, 12);
        let long = Message {
            instance: id(99),
            message: agreement::Message::Term { value: true, justification: vec![0; 16 * 1024 + 1] },
        };
        let step = net.nodes[0].handle(NodeIndex(2), long);
        assert_eq!(step.faults.len(), 1);
        assert_eq!(net.nodes[0].early_len(), 8, "an over-long justification is not kept");
        let step = net.nodes[0].handle(
            NodeIndex(9),
            Message { instance: id(1), message: agreement::Message::Resend { round: fides_types::Round(0) } },
        );
        assert_eq!(step.faults[0].kind, FaultKind::UnknownSender);
    }

    #[test]
    fn starts_beyond_the_running_bound_wait_and_run_in_order() {
        let mut config = Config::new("test");
        config.running_max = 2;
        let mut net = Net::new(4, config, 8);
        for k in 0..5u8 {
            for i in 0..4 {
                net.start(i, id(k), yes());
            }
        }
        assert_eq!(net.nodes[0].running_len(), 2);
        assert_eq!(net.nodes[0].status(&id(4)), Status::Waiting);
        net.settle(None);
        for k in 0..5u8 {
            assert!(net.nodes.iter().all(|n| n.status(&id(k)) == Status::Decided(true)), "instance {k}");
        }
        assert!(net.faults.is_empty(), "{:?}", net.faults);
    }

    #[test]
    fn an_own_vote_the_predicate_refuses_is_a_local_error() {
        let mut net = Net::new(4, Config::new("test"), 9);
        let refused = net.nodes[0].start(id(3), Vote::One(b"nope".to_vec()));
        assert_eq!(refused.err(), Some(Error::InvalidOwnJustification));
        assert_eq!(net.nodes[0].status(&id(3)), Status::Unknown);
    }

    /// A replica restored from its state in the middle of a run goes on as if nothing happened:
    /// every replica still decides, alike.
    #[test]
    fn instances_restored_from_their_state_mid_run_go_on() {
        for seed in 0..3 {
            let mut net = Net::new(4, Config::new("test"), 100 + seed);
            for k in 0..4u8 {
                for i in 0..3 {
                    net.start(i, id(k), if k % 2 == 0 { yes() } else { Vote::Zero });
                }
            }
            // Half the traffic, then every replica is restored from its encoded state.
            for _ in 0..net.flight.len() / 2 {
                let pick = net.rng.gen_range(0..net.flight.len());
                let (from, to, message) = net.flight.swap_remove(pick);
                let step = net.nodes[to.as_usize()].handle(from, message);
                net.absorb(to, step);
            }
            for i in 0..4 {
                net.restore(i);
            }
            for k in 0..4u8 {
                net.start(3, id(k), Vote::Zero);
            }
            net.settle(None);
            for k in 0..4u8 {
                let values: Vec<bool> = net
                    .decided
                    .iter()
                    .flat_map(|d| d.iter().filter(|x| x.instance == id(k)).map(|x| x.value))
                    .collect();
                assert_eq!(values.len(), 4, "seed {seed}: every replica decides instance {k} once");
                assert!(values.iter().all(|v| *v == values[0]), "seed {seed}: agreement on {k}");
            }
        }
    }

    #[test]
    fn a_state_decoder_refuses_every_truncation_and_never_panics() {
        let mut net = Net::new(4, Config::new("test"), 11);
        for i in 0..4 {
            net.start(i, id(1), yes());
        }
        for _ in 0..10 {
            let (from, to, message) = net.flight.swap_remove(0);
            let step = net.nodes[to.as_usize()].handle(from, message);
            net.absorb(to, step);
        }
        let bytes = net.nodes[0].state().to_bytes();
        for len in 0..bytes.len() {
            assert!(InstancesState::from_bytes(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        for _ in 0..2000 {
            let mut mutated = bytes.clone();
            let at = rng.gen_range(0..mutated.len());
            mutated[at] ^= 1 << rng.gen_range(0..8);
            if let Ok(state) = InstancesState::from_bytes(&mutated) {
                let _ = Instances::from_state(
                    net.quorum,
                    NodeIndex(0),
                    Arc::clone(&net.keys[0]),
                    net.config.clone(),
                    Arc::new(Prefix),
                    state,
                );
            }
        }
    }

    #[test]
    fn instance_coins_are_named_apart_from_the_common_subsets() {
        let config = Config::new("session");
        let name = config.agreement_name(&id(1));
        assert!(name.starts_with(b"session/instance/"));
        assert_ne!(config.agreement_name(&id(1)), config.agreement_name(&id(2)));
    }
}
