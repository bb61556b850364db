//! Protocol quantities, quorum arithmetic, the sans-IO step type, faults and the wire codec.
//!
//! Every protocol crate of Fides speaks in these terms:
//! - a protocol instance is a [`Protocol`]: it takes an input or a message from a peer (and an RNG
//!   passed in) and returns a [`Step`] — messages to send, outputs, faults. No I/O happens inside.
//! - peer misbehaviour is a [`Fault`] in the step, never an `Err` and never a panic.
//! - quorum sizes come from [`Quorum`] only.
//! - messages cross the wire through [`codec`], whose decoder bounds every length it reads.

#![forbid(unsafe_code)]

pub mod codec;

use std::fmt;

/// Index of a replica in the cluster, `0..n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIndex(pub u32);

impl NodeIndex {
    /// The index as a `usize`, for indexing local vectors.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NodeIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A round of binary agreement (not an epoch of atomic broadcast).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Round(pub u32);

impl Round {
    /// The round after this one, or `None` at `u32::MAX`.
    pub fn next(self) -> Option<Round> {
        self.0.checked_add(1).map(Round)
    }
}

impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// The size of the cluster and the number of Byzantine replicas it tolerates: `n >= 3t + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quorum {
    n: u32,
    t: u32,
}

/// Why a pair `(n, t)` is not a valid cluster size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// `n = 0`.
    #[error("a cluster needs at least one replica (n = 0)")]
    Empty,
    /// `n < 3t + 1`.
    #[error("n = {n} replicas cannot tolerate t = {t} Byzantine ones: n must be at least 3t + 1 = {needed}")]
    TooFew {
        /// Replicas asked for.
        n: u32,
        /// Faults asked for.
        t: u32,
        /// `3t + 1`.
        needed: u64,
    },
    /// More replicas than Fides supports.
    #[error("n = {n} is more than the {max} replicas Fides supports")]
    TooMany {
        /// Replicas asked for.
        n: u32,
        /// [`Quorum::NODES_MAX`].
        max: u32,
    },
}

impl Quorum {
    /// The most replicas a cluster may have.
    pub const NODES_MAX: u32 = 1024;

    /// A cluster of `n` replicas tolerating `t` Byzantine ones.
    pub fn new(n: u32, t: u32) -> Result<Quorum, QuorumError> {
        if n == 0 {
            return Err(QuorumError::Empty);
        }
        if n > Self::NODES_MAX {
            return Err(QuorumError::TooMany { n, max: Self::NODES_MAX });
        }
        let needed = 3 * u64::from(t) + 1;
        if u64::from(n) < needed {
            return Err(QuorumError::TooFew { n, t, needed });
        }
        Ok(Quorum { n, t })
    }

    /// The largest `t` that `n` replicas tolerate.
    pub fn with_max_faults(n: u32) -> Result<Quorum, QuorumError> {
        Quorum::new(n, n.saturating_sub(1) / 3)
    }

    /// Number of replicas.
    pub fn n(self) -> u32 {
        self.n
    }

    /// Number of Byzantine replicas tolerated.
    pub fn t(self) -> u32 {
        self.t
    }

    /// `t + 1`: some honest replica is among this many.
    pub fn one_honest(self) -> u32 {
        self.t + 1
    }

    /// `2t + 1`: a majority of these are honest.
    pub fn honest_majority(self) -> u32 {
        2 * self.t + 1
    }

    /// `n - t`: as many as can be waited for.
    pub fn available(self) -> u32 {
        self.n - self.t
    }

    /// Whether `index` names a replica of this cluster.
    pub fn contains(self, index: NodeIndex) -> bool {
        index.0 < self.n
    }

    /// All replica indices in order.
    pub fn nodes(self) -> impl Iterator<Item = NodeIndex> {
        (0..self.n).map(NodeIndex)
    }
}

/// Who a message goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every replica, the sender included (it receives its own message like any other).
    All,
    /// One replica.
    Node(NodeIndex),
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing<M> {
    /// Recipients.
    pub target: Target,
    /// The message.
    pub message: M,
}

/// What a peer did wrong, recorded as data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The peer at fault, as the transport authenticated it.
    pub node: NodeIndex,
    /// What it did.
    pub kind: FaultKind,
}

/// Kinds of misbehaviour a protocol can detect.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// The bytes did not decode as a message.
    Undecodable,
    /// The message names another protocol instance.
    WrongInstance,
    /// The sender is not a replica of the cluster.
    UnknownSender,
    /// A round beyond the buffering bound.
    RoundTooFar,
    /// Two different messages where one was allowed.
    Equivocation,
    /// A coin share that does not verify.
    InvalidCoinShare,
    /// A vote for 1 without a justification that passes the predicate.
    InvalidJustification,
    /// A justification where none may be.
    UnexpectedJustification,
    /// A value set that is empty where it may not be.
    EmptySet,
    /// A message only one replica may send, from another one.
    NotProposer,
    /// A shard whose Merkle proof does not verify, or that is not the sender's.
    InvalidProof,
    /// A length above the configured bound.
    TooLong,
    /// A threshold ciphertext that does not verify.
    InvalidCiphertext,
    /// A decryption share that does not verify.
    InvalidDecryptionShare,
    /// A checkpoint or epoch certificate, a signature share of either, or a catch-up answer that
    /// does not verify (a share on another root than the epoch's does not verify on it).
    InvalidCheckpoint,
}

/// The result of handling one input or message.
#[must_use = "a step holds messages to send and outputs to act on"]
#[derive(Debug, PartialEq, Eq)]
pub struct Step<M, O> {
    /// Messages to send.
    pub messages: Vec<Outgoing<M>>,
    /// Outputs for the caller.
    pub outputs: Vec<O>,
    /// Misbehaviour detected while handling.
    pub faults: Vec<Fault>,
}

impl<M, O> Default for Step<M, O> {
    fn default() -> Self {
        Step { messages: Vec::new(), outputs: Vec::new(), faults: Vec::new() }
    }
}

impl<M, O> Step<M, O> {
    /// Queue `message` to every replica.
    pub fn broadcast(&mut self, message: M) {
        self.messages.push(Outgoing { target: Target::All, message });
    }

    /// Record a fault.
    pub fn fault(&mut self, node: NodeIndex, kind: FaultKind) {
        self.faults.push(Fault { node, kind });
    }

    /// Move this step's messages (each wrapped by `wrap`) and faults into `outer`, the step of an
    /// enclosing protocol, and hand back the outputs for the caller to act on.
    pub fn lift_into<M2, O2>(self, outer: &mut Step<M2, O2>, wrap: impl Fn(M) -> M2) -> Vec<O> {
        outer.faults.extend(self.faults);
        outer
            .messages
            .extend(self.messages.into_iter().map(|m| Outgoing { target: m.target, message: wrap(m.message) }));
        self.outputs
    }
}

/// A sans-IO protocol instance, driven by inputs and peer messages.
pub trait Protocol {
    /// What the caller gives it.
    type Input;
    /// What peers send each other.
    type Message: codec::Wire + Clone + fmt::Debug;
    /// What it gives the caller.
    type Output: Clone + fmt::Debug;
    /// A local misuse of the instance (never something a peer did).
    type Error: std::error::Error;

    /// This replica's index.
    fn our_index(&self) -> NodeIndex;

    /// Handle an input from the caller.
    fn handle_input(
        &mut self,
        input: Self::Input,
        rng: &mut dyn rand::RngCore,
    ) -> Result<Step<Self::Message, Self::Output>, Self::Error>;

    /// Handle a message from `from`, as authenticated by the transport.
    fn handle_message(
        &mut self,
        from: NodeIndex,
        message: Self::Message,
        rng: &mut dyn rand::RngCore,
    ) -> Step<Self::Message, Self::Output>;

    /// Whether the instance is done: it sends nothing more and may be dropped.
    fn terminated(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_refuses_too_few_replicas() {
        assert_eq!(Quorum::new(3, 1), Err(QuorumError::TooFew { n: 3, t: 1, needed: 4 }));
        assert_eq!(Quorum::new(0, 0), Err(QuorumError::Empty));
        assert!(matches!(Quorum::new(1025, 1), Err(QuorumError::TooMany { .. })));
        let q = Quorum::new(4, 1).expect("4 replicas tolerate 1 fault");
        assert_eq!((q.one_honest(), q.honest_majority(), q.available()), (2, 3, 3));
    }

    #[test]
    fn max_faults_is_the_largest_tolerated() {
        for n in 1..=40 {
            let q = Quorum::with_max_faults(n).expect("valid n");
            assert!(3 * q.t() < n && 3 * (q.t() + 1) >= n, "n={n} t={}", q.t());
        }
    }
}
