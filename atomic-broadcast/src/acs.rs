//! Asynchronous common subset (HoneyBadgerBFT): n reliable broadcasts and n binary agreements
//! agree on a set of at least `n - t` proposals.
//!
//! # Rules
//!
//! - Every replica proposes through its own reliable broadcast `RBC_i`.
//! - Upon delivery of `RBC_j`: propose 1 in `ABA_j`, if nothing was proposed there yet.
//! - Upon `n - t` agreements decided 1: propose 0 in every `ABA_j` not yet proposed in.
//! - Once every `ABA_j` decided: the subset is `{ j | ABA_j = 1 }`; output it with each `RBC_j`'s
//!   delivery, waiting for the broadcasts not yet delivered (an `ABA_j` decided 1 means some honest
//!   replica delivered `RBC_j`, so every honest one will).
//!
//! The instance terminates once it has output and every agreement terminated. Broadcasts whose
//! agreement decided 0 are then dropped: nobody needs them.
//!
//! `ABA_j` is an instance named `session || "/aba/" || j`, so coins of different sessions and
//! proposers never coincide.

use std::collections::BTreeMap;
use std::sync::Arc;

use fides_agreement::{self as agreement, BinaryAgreement, Unvalidated, Vote};
use fides_crypto::ThresholdKeys;
use fides_types::codec::{DecodeError, Reader, Wire};
use fides_types::{FaultKind, NodeIndex, Protocol, Quorum, Step};

use crate::rbc::{self, Delivery, ReliableBroadcast};

mod state;

/// A message of the common subset: a message of the broadcast or agreement of one proposer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// For `RBC_proposer`.
    Broadcast {
        /// Whose broadcast.
        proposer: NodeIndex,
        /// The message.
        message: rbc::Message,
    },
    /// For `ABA_proposer`.
    Agreement {
        /// Whose agreement.
        proposer: NodeIndex,
        /// The message.
        message: agreement::Message,
    },
}

const TAG_BROADCAST: u8 = 0;
const TAG_AGREEMENT: u8 = 1;

impl Wire for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Broadcast { proposer, message } => {
                out.push(TAG_BROADCAST);
                out.extend_from_slice(&proposer.0.to_le_bytes());
                message.encode(out);
            }
            Message::Agreement { proposer, message } => {
                out.push(TAG_AGREEMENT);
                out.extend_from_slice(&proposer.0.to_le_bytes());
                message.encode(out);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Message::decode_bounded(reader, rbc::SHARD_WIRE_MAX)
    }
}

impl Message {
    /// Decode a message whose broadcast shard is at most `shard_len_max` bytes (refused before
    /// it is copied).
    pub fn decode_bounded(reader: &mut Reader<'_>, shard_len_max: usize) -> Result<Self, DecodeError> {
        let tag = reader.u8()?;
        let proposer = NodeIndex(reader.u32()?);
        match tag {
            TAG_BROADCAST => {
                Ok(Message::Broadcast { proposer, message: rbc::Message::decode_bounded(reader, shard_len_max)? })
            }
            TAG_AGREEMENT => Ok(Message::Agreement { proposer, message: agreement::Message::decode(reader)? }),
            other => Err(DecodeError::Invalid { what: "message tag", value: u64::from(other) }),
        }
    }
}

/// The agreed subset: for each proposer in it, what its broadcast delivered.
pub type Subset = BTreeMap<NodeIndex, Delivery>;

/// The step type of the common subset.
pub type AcsStep = Step<Message, Subset>;

/// Local errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The proposal was refused by our broadcast.
    #[error("proposal refused: {0}")]
    Broadcast(#[from] rbc::Error),
}

/// One common-subset instance at one replica.
pub struct CommonSubset {
    quorum: Quorum,
    our_index: NodeIndex,
    broadcasts: Vec<ReliableBroadcast>,
    agreements: Vec<BinaryAgreement<Unvalidated>>,
    delivered: BTreeMap<NodeIndex, Delivery>,
    voted: Vec<bool>,
    decided: BTreeMap<NodeIndex, bool>,
    output_done: bool,
}

impl std::fmt::Debug for CommonSubset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommonSubset")
            .field("our_index", &self.our_index)
            .field("delivered", &self.delivered.len())
            .field("decided", &self.decided)
            .field("output_done", &self.output_done)
            .finish_non_exhaustive()
    }
}

impl CommonSubset {
    /// An instance of session `session` at `our_index`, with the cluster's coin keys.
    pub fn new(
        quorum: Quorum,
        our_index: NodeIndex,
        session: &[u8],
        coin_keys: Arc<ThresholdKeys>,
        broadcast: rbc::Config,
    ) -> Self {
        let broadcasts = quorum.nodes().map(|j| ReliableBroadcast::new(quorum, our_index, j, broadcast)).collect();
        let agreements = quorum
            .nodes()
            .map(|j| {
                let mut instance = session.to_vec();
                instance.extend_from_slice(b"/aba/");
                instance.extend_from_slice(&j.0.to_le_bytes());
                let config = agreement::Config::new(instance);
                BinaryAgreement::new(quorum, our_index, Arc::clone(&coin_keys), config, Unvalidated)
            })
            .collect();
        CommonSubset {
            quorum,
            our_index,
            broadcasts,
            agreements,
            delivered: BTreeMap::new(),
            voted: vec![false; quorum.n() as usize],
            decided: BTreeMap::new(),
            output_done: false,
        }
    }

    /// Propose `value`.
    pub fn propose(&mut self, value: &[u8]) -> Result<AcsStep, Error> {
        let index = self.our_index;
        let inner = self.broadcasts[index.as_usize()].propose(value)?;
        let mut step = AcsStep::default();
        self.absorb_broadcast(index, inner, &mut step);
        self.progress(&mut step);
        Ok(step)
    }

    /// Handle a message from `from`.
    pub fn handle(&mut self, from: NodeIndex, message: Message) -> AcsStep {
        let mut step = AcsStep::default();
        if self.terminated() {
            return step;
        }
        let proposer = match &message {
            Message::Broadcast { proposer, .. } | Message::Agreement { proposer, .. } => *proposer,
        };
        if !self.quorum.contains(proposer) {
            step.fault(from, FaultKind::WrongInstance);
            return step;
        }
        match message {
            Message::Broadcast { message, .. } => {
                let inner = self.broadcasts[proposer.as_usize()].handle(from, message);
                self.absorb_broadcast(proposer, inner, &mut step);
            }
            Message::Agreement { message, .. } => {
                let inner = self.agreements[proposer.as_usize()].handle(from, message);
                self.absorb_agreement(proposer, inner, &mut step);
            }
        }
        self.progress(&mut step);
        step
    }

    fn absorb_broadcast(&mut self, proposer: NodeIndex, inner: rbc::RbcStep, step: &mut AcsStep) {
        for delivery in inner.lift_into(step, |message| Message::Broadcast { proposer, message }) {
            self.delivered.insert(proposer, delivery);
        }
    }

    fn absorb_agreement(&mut self, proposer: NodeIndex, inner: agreement::AbaStep, step: &mut AcsStep) {
        for decision in inner.lift_into(step, |message| Message::Agreement { proposer, message }) {
            self.decided.insert(proposer, decision.value);
        }
    }

    fn vote(&mut self, proposer: NodeIndex, value: bool, step: &mut AcsStep) {
        let i = proposer.as_usize();
        if self.voted[i] {
            return;
        }
        self.voted[i] = true;
        // An agreement that decided through t + 1 TERM before this vote already runs its rounds
        // with the decided value (others may need its votes to finish): the vote changes nothing
        // there, and the agreement says so by an empty step.
        let vote = if value { Vote::One(Vec::new()) } else { Vote::Zero };
        // Invariant: each agreement gets one proposal (guarded by `voted`), and an empty
        // justification is what plain agreement expects.
        let inner = self.agreements[i].propose(vote).expect("one proposal per agreement");
        self.absorb_agreement(proposer, inner, step);
    }

    /// Apply the rules until nothing changes.
    fn progress(&mut self, step: &mut AcsStep) {
        loop {
            let before = (self.delivered.len(), self.decided.len(), self.voted.iter().filter(|v| **v).count());
            let delivered: Vec<NodeIndex> = self.delivered.keys().copied().collect();
            for proposer in delivered {
                self.vote(proposer, true, step);
            }
            let ones = self.decided.values().filter(|v| **v).count();
            if ones >= self.quorum.available() as usize {
                for proposer in self.quorum.nodes() {
                    self.vote(proposer, false, step);
                }
            }
            let after = (self.delivered.len(), self.decided.len(), self.voted.iter().filter(|v| **v).count());
            if after == before {
                break;
            }
        }
        self.try_output(step);
    }

    fn try_output(&mut self, step: &mut AcsStep) {
        if self.output_done || self.decided.len() < self.quorum.n() as usize {
            return;
        }
        let chosen: Vec<NodeIndex> = self.decided.iter().filter(|(_, one)| **one).map(|(j, _)| *j).collect();
        if chosen.iter().any(|j| !self.delivered.contains_key(j)) {
            return;
        }
        let subset: Subset =
            chosen.into_iter().filter_map(|j| self.delivered.get(&j).map(|d| (j, d.clone()))).collect();
        self.output_done = true;
        step.outputs.push(subset);
    }

    /// Whether it output and every agreement terminated.
    pub fn terminated(&self) -> bool {
        self.output_done && self.agreements.iter().all(|a| a.terminated())
    }
}

impl Protocol for CommonSubset {
    type Input = Vec<u8>;
    type Message = Message;
    type Output = Subset;
    type Error = Error;

    fn our_index(&self) -> NodeIndex {
        self.our_index
    }

    fn handle_input(&mut self, input: Vec<u8>, _rng: &mut dyn rand::RngCore) -> Result<AcsStep, Error> {
        self.propose(&input)
    }

    fn handle_message(&mut self, from: NodeIndex, message: Message, _rng: &mut dyn rand::RngCore) -> AcsStep {
        self.handle(from, message)
    }

    fn terminated(&self) -> bool {
        CommonSubset::terminated(self)
    }
}
