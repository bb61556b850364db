//! What a peer may still have written to the log: the driver's cheap bounds, checked after
//! `AtomicBroadcast::admissible` and before a frame is logged.
//!
//! The protocol counts one of each kind of message per sender and instance — one `VALUE` (from
//! the proposer), one `ECHO` and one `READY` per broadcast, one decryption share per ciphertext,
//! one checkpoint share per checkpoint epoch — and ignores the same one again or records a
//! different one as equivocation. So the first of each is logged and the others are not: the
//! same one again is dropped (it would change nothing), a different one is recorded as an
//! equivocation here instead of in the core. Agreement messages (small, a few per round) are
//! counted per sender and epoch, up to [`AGREEMENT_PER_PEER_EPOCH`] times `n`. A catch-up answer
//! is logged at most once per [`CATCH_UP_INTERVAL`] per sender.
//!
//! Nothing here needs to survive a restart: the replay does not ask it (what was logged is
//! handled again), and after a restart a peer's first message of each kind is logged once more,
//! which the core ignores if it had it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use fides_atomic_broadcast::acs;
use fides_atomic_broadcast::epoch::Message;
use fides_atomic_broadcast::rbc;
use fides_types::NodeIndex;
use sha2::{Digest as _, Sha256};

/// Agreement messages logged per peer and epoch, per replica of the cluster: a binary agreement
/// sends about six per round, so this is some 20 rounds in every agreement of the epoch — the
/// expected number is below 3.
pub const AGREEMENT_PER_PEER_EPOCH: u32 = 128;

/// How often a peer's catch-up answer is logged while we catch up.
pub const CATCH_UP_INTERVAL: Duration = Duration::from_secs(1);

/// What a peer's message counts as: one of a kind per instance, or one of many.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Slot {
    Value(u32),
    Echo(u32),
    Ready(u32),
    Decryption(u32),
    Checkpoint,
}

#[derive(Default)]
struct PeerEpoch {
    /// The digest of the message logged in each slot.
    slots: HashMap<Slot, [u8; 32]>,
    agreement: u32,
}

/// Whether to log a message the core would handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it.
    Log,
    /// The same message was logged already: drop it (not a fault).
    Duplicate,
    /// A different message of the same kind was logged already: an equivocation, dropped.
    Equivocation,
    /// The peer used up its allowance of this kind for the epoch: a fault, dropped.
    OverBudget,
}

/// The driver's record of what each peer had logged, for the epochs still running or kept.
pub struct Ledger {
    n: u32,
    epochs: BTreeMap<(u64, NodeIndex), PeerEpoch>,
    catch_up_logged: BTreeMap<NodeIndex, Instant>,
}

impl Ledger {
    /// An empty ledger for a cluster of `n`.
    pub fn new(n: u32) -> Ledger {
        Ledger { n, epochs: BTreeMap::new(), catch_up_logged: BTreeMap::new() }
    }

    /// Whether to log `message` from `from` (`bytes`, its encoding), which the core would handle;
    /// a message to log is counted.
    pub fn admit(&mut self, from: NodeIndex, message: &Message, bytes: &[u8], now: Instant) -> Verdict {
        let (epoch, slot) = match message {
            Message::Subset { epoch, message } => match message {
                acs::Message::Broadcast { proposer, message } => {
                    let slot = match message {
                        rbc::Message::Value(_) => Slot::Value(proposer.0),
                        rbc::Message::Echo(_) => Slot::Echo(proposer.0),
                        rbc::Message::Ready(_) => Slot::Ready(proposer.0),
                    };
                    (*epoch, Some(slot))
                }
                acs::Message::Agreement { .. } => (*epoch, None),
            },
            Message::Decryption { epoch, proposer, .. } => (*epoch, Some(Slot::Decryption(proposer.0))),
            Message::CheckpointShare { epoch, .. } => (*epoch, Some(Slot::Checkpoint)),
            Message::CatchUpRequest { .. } => return Verdict::Log,
            Message::CatchUp(_) => {
                if self.catch_up_logged.get(&from).is_some_and(|at| now.duration_since(*at) < CATCH_UP_INTERVAL) {
                    return Verdict::OverBudget;
                }
                self.catch_up_logged.insert(from, now);
                return Verdict::Log;
            }
        };
        let entry = self.epochs.entry((epoch, from)).or_default();
        match slot {
            Some(slot) => {
                let digest: [u8; 32] = Sha256::digest(bytes).into();
                match entry.slots.get(&slot) {
                    Some(earlier) if *earlier == digest => Verdict::Duplicate,
                    Some(_) => Verdict::Equivocation,
                    None => {
                        entry.slots.insert(slot, digest);
                        Verdict::Log
                    }
                }
            }
            None => {
                if entry.agreement >= AGREEMENT_PER_PEER_EPOCH * self.n {
                    return Verdict::OverBudget;
                }
                entry.agreement += 1;
                Verdict::Log
            }
        }
    }

    /// Forget the epochs for which `keep` says no (delivered and no longer run).
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.epochs.retain(|(epoch, _), _| keep(*epoch));
    }

    /// Entries held (for tests and bounds).
    pub fn len(&self) -> usize {
        self.epochs.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.epochs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fides_atomic_broadcast::rbc::Proof;
    use fides_types::codec::Wire;

    fn echo(epoch: u64, proposer: u32, root: u8) -> Message {
        let proof = Proof { root: [root; 32], index: 1, shard: vec![7; 10], path: vec![[0; 32]; 2] };
        Message::Subset {
            epoch,
            message: acs::Message::Broadcast { proposer: NodeIndex(proposer), message: rbc::Message::Echo(proof) },
        }
    }

    #[test]
    fn one_echo_per_peer_and_broadcast_is_logged_and_a_different_one_is_an_equivocation() {
        let mut ledger = Ledger::new(4);
        let now = Instant::now();
        let from = NodeIndex(1);
        let first = echo(3, 0, 1);
        assert_eq!(ledger.admit(from, &first, &first.to_bytes(), now), Verdict::Log);
        assert_eq!(ledger.admit(from, &first, &first.to_bytes(), now), Verdict::Duplicate);
        let other = echo(3, 0, 2);
        assert_eq!(ledger.admit(from, &other, &other.to_bytes(), now), Verdict::Equivocation);
        let next_broadcast = echo(3, 2, 2);
        assert_eq!(ledger.admit(from, &next_broadcast, &next_broadcast.to_bytes(), now), Verdict::Log);
        assert_eq!(ledger.admit(NodeIndex(2), &other, &other.to_bytes(), now), Verdict::Log, "another peer's own slot");
        ledger.retain(|epoch| epoch > 3);
        assert!(ledger.is_empty());
        assert_eq!(ledger.admit(from, &other, &other.to_bytes(), now), Verdict::Log);
    }

    #[test]
    fn agreement_messages_are_counted_per_peer_and_epoch() {
        let mut ledger = Ledger::new(4);
        let now = Instant::now();
        let aux = Message::Subset {
            epoch: 0,
            message: acs::Message::Agreement {
                proposer: NodeIndex(0),
                message: fides_agreement::Message::Aux { round: fides_types::Round(0), value: true },
            },
        };
        let bytes = aux.to_bytes();
        for _ in 0..AGREEMENT_PER_PEER_EPOCH * 4 {
            assert_eq!(ledger.admit(NodeIndex(1), &aux, &bytes, now), Verdict::Log);
        }
        assert_eq!(ledger.admit(NodeIndex(1), &aux, &bytes, now), Verdict::OverBudget);
        assert_eq!(ledger.admit(NodeIndex(2), &aux, &bytes, now), Verdict::Log, "each peer has its own count");
    }
}
