//! Reliable broadcast with erasure coding and Merkle proofs (Bracha's echo/ready with AVID
//! dispersal, as in HoneyBadgerBFT).
//!
//! # Rules
//!
//! `k = n - 2t` data shards, `2t` parity shards (Reed–Solomon over GF(2^16)), one per replica.
//!
//! - The proposer encodes `len || value`, builds the Merkle tree over the `n` shards and sends
//!   replica `i` `VALUE(root, shard_i, path_i)`.
//! - Upon the first `VALUE` from the proposer with a valid proof of *our* shard: broadcast
//!   `ECHO(root, shard_i, path_i)`.
//! - Upon `ECHO` from `j` with a valid proof of shard `j`: keep it (first per sender).
//! - Upon `n - t` `ECHO` for `root`, or `t + 1` `READY(root)`: broadcast `READY(root)` (once).
//! - Upon `2t + 1` `READY(root)` and `k` `ECHO` shards for `root`: decode, re-encode, and rebuild
//!   the tree. Same root: deliver the value. Another root: the proposer dispersed something that
//!   is no codeword; deliver [`Delivery::Invalid`] — every honest replica does the same, since no
//!   `k` shards of such a tree re-encode to it. Then terminate.
//!
//! Each replica sends `O(|m| / k + n log n)` bytes per broadcast besides the proposer's `O(|m|)`.
//! Totality: a delivery needs `2t + 1` READY, so `t + 1` honest replicas sent READY and every
//! honest one will; the first honest READY followed `n - t` ECHO, so at least `k` honest
//! replicas echoed and every honest replica gets `k` shards.
//!
//! # Bounds and faults
//!
//! One `VALUE` (from the proposer only), one `ECHO` and one `READY` count per sender; a different
//! second one is `Equivocation`, the same one again is ignored. Shards longer than the value bound
//! allows are `TooLong`; a proof that fails or names another index is `InvalidProof`.

use std::collections::{BTreeMap, BTreeSet};

use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};
use fides_types::{FaultKind, NodeIndex, Outgoing, Protocol, Quorum, Step, Target};

use crate::merkle::{self, Digest, Tree, DEPTH_MAX};

mod state;

/// The largest shard the decoder accepts (the instance's own bound is usually lower).
pub const SHARD_WIRE_MAX: usize = 64 * 1024 * 1024;

/// A shard with its Merkle proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The root of the tree over all shards.
    pub root: Digest,
    /// Which shard.
    pub index: u32,
    /// The shard.
    pub shard: Vec<u8>,
    /// Sibling hashes from the leaf up.
    pub path: Vec<Digest>,
}

impl Proof {
    fn verifies(&self) -> bool {
        merkle::verify(&self.root, self.index, &self.shard, &self.path)
    }
}

/// A message of reliable broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The proposer's shard for the recipient.
    Value(Proof),
    /// The sender's own shard, to everyone.
    Echo(Proof),
    /// The sender will deliver what has this root.
    Ready(Digest),
}

const TAG_VALUE: u8 = 0;
const TAG_ECHO: u8 = 1;
const TAG_READY: u8 = 2;

fn encode_proof(proof: &Proof, out: &mut Vec<u8>) {
    out.extend_from_slice(&proof.root);
    out.extend_from_slice(&proof.index.to_le_bytes());
    put_bytes(out, &proof.shard);
    out.push(u8::try_from(proof.path.len()).expect("paths are at most DEPTH_MAX long"));
    for digest in &proof.path {
        out.extend_from_slice(digest);
    }
}

fn decode_proof(reader: &mut Reader<'_>, shard_len_max: usize) -> Result<Proof, DecodeError> {
    let root = reader.array()?;
    let index = reader.u32()?;
    // The length is checked before the shard is copied: a peer cannot make us allocate more.
    let shard = reader.bytes(shard_len_max.min(SHARD_WIRE_MAX))?.to_vec();
    let depth = reader.u8()?;
    if usize::from(depth) > DEPTH_MAX {
        return Err(DecodeError::TooLong { len: u64::from(depth), max: DEPTH_MAX as u64 });
    }
    let path = (0..depth).map(|_| reader.array()).collect::<Result<_, _>>()?;
    Ok(Proof { root, index, shard, path })
}

impl Wire for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Value(proof) => {
                out.push(TAG_VALUE);
                encode_proof(proof, out);
            }
            Message::Echo(proof) => {
                out.push(TAG_ECHO);
                encode_proof(proof, out);
            }
            Message::Ready(root) => {
                out.push(TAG_READY);
                out.extend_from_slice(root);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Message::decode_bounded(reader, SHARD_WIRE_MAX)
    }
}

impl Message {
    /// Decode a message whose shard is at most `shard_len_max` bytes (an instance's
    /// [`shard_len_bound`]): a longer one is refused before anything is allocated for it.
    pub fn decode_bounded(reader: &mut Reader<'_>, shard_len_max: usize) -> Result<Self, DecodeError> {
        match reader.u8()? {
            TAG_VALUE => Ok(Message::Value(decode_proof(reader, shard_len_max)?)),
            TAG_ECHO => Ok(Message::Echo(decode_proof(reader, shard_len_max)?)),
            TAG_READY => Ok(Message::Ready(reader.array()?)),
            other => Err(DecodeError::Invalid { what: "message tag", value: u64::from(other) }),
        }
    }

    /// The shard this message carries, if any.
    pub fn shard(&self) -> Option<&Proof> {
        match self {
            Message::Value(proof) | Message::Echo(proof) => Some(proof),
            Message::Ready(_) => None,
        }
    }
}

/// The longest shard of a broadcast among `quorum` whose values are at most `value_len_max`
/// bytes: what [`ReliableBroadcast`] accepts, and what [`Message::decode_bounded`] should be given.
pub fn shard_len_bound(quorum: Quorum, value_len_max: usize) -> usize {
    shard_len(value_len_max + 4, (quorum.n() - 2 * quorum.t()) as usize)
}

/// What a broadcast delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The proposer's value.
    Value(Vec<u8>),
    /// The proposer dispersed shards that are no codeword of any value.
    Invalid,
}

/// Configuration of one broadcast.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The longest value accepted.
    pub value_len_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { value_len_max: 8 * 1024 * 1024 }
    }
}

/// Local errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Only the proposer proposes.
    #[error("only the proposer of this broadcast proposes")]
    NotProposer,
    /// Proposed twice.
    #[error("already proposed")]
    AlreadyProposed,
    /// The value is above the bound.
    #[error("value of {len} bytes is above the bound of {max}")]
    TooLong {
        /// Length given.
        len: usize,
        /// Bound.
        max: usize,
    },
}

/// The step type of reliable broadcast.
pub type RbcStep = Step<Message, Delivery>;

/// One reliable broadcast instance at one replica.
#[derive(Debug)]
pub struct ReliableBroadcast {
    quorum: Quorum,
    our_index: NodeIndex,
    proposer: NodeIndex,
    config: Config,
    proposed: bool,
    value_root: Option<Digest>,
    echo_sent: bool,
    ready_sent: bool,
    /// Each sender's echo, and whether its proof has been checked (proofs are checked only when
    /// a decoding with them fails: see `try_deliver`).
    echos: BTreeMap<NodeIndex, (Proof, bool)>,
    /// Senders whose echo had an invalid proof: their echoes are ignored.
    bad_echoes: BTreeSet<NodeIndex>,
    readys: BTreeMap<NodeIndex, Digest>,
    delivered: bool,
}

impl ReliableBroadcast {
    /// The broadcast of `proposer`, at replica `our_index`.
    pub fn new(quorum: Quorum, our_index: NodeIndex, proposer: NodeIndex, config: Config) -> Self {
        ReliableBroadcast {
            quorum,
            our_index,
            proposer,
            config,
            proposed: false,
            value_root: None,
            echo_sent: false,
            ready_sent: false,
            echos: BTreeMap::new(),
            bad_echoes: BTreeSet::new(),
            readys: BTreeMap::new(),
            delivered: false,
        }
    }

    fn data_shards(&self) -> usize {
        (self.quorum.n() - 2 * self.quorum.t()) as usize
    }

    fn shard_len_max(&self) -> usize {
        shard_len_bound(self.quorum, self.config.value_len_max)
    }

    /// Propose `value` (the proposer only, once).
    pub fn propose(&mut self, value: &[u8]) -> Result<RbcStep, Error> {
        if self.our_index != self.proposer {
            return Err(Error::NotProposer);
        }
        if self.proposed {
            return Err(Error::AlreadyProposed);
        }
        if value.len() > self.config.value_len_max {
            return Err(Error::TooLong { len: value.len(), max: self.config.value_len_max });
        }
        self.proposed = true;
        let shards = encode(value, self.data_shards(), self.quorum.n() as usize);
        let tree = Tree::new(&shards);
        let root = tree.root();
        let mut step = RbcStep::default();
        for (i, shard) in shards.into_iter().enumerate() {
            let proof = Proof { root, index: i as u32, shard, path: tree.path(i) };
            step.messages.push(Outgoing { target: Target::Node(NodeIndex(i as u32)), message: Message::Value(proof) });
        }
        Ok(step)
    }

    /// Handle a message from `from`.
    pub fn handle(&mut self, from: NodeIndex, message: Message) -> RbcStep {
        let mut step = RbcStep::default();
        if self.delivered {
            return step;
        }
        if !self.quorum.contains(from) {
            step.fault(from, FaultKind::UnknownSender);
            return step;
        }
        match message {
            Message::Value(proof) => self.handle_value(from, proof, &mut step),
            Message::Echo(proof) => self.handle_echo(from, proof, &mut step),
            Message::Ready(root) => self.handle_ready(from, root, &mut step),
        }
        self.try_ready(&mut step);
        self.try_deliver(&mut step);
        step
    }

    /// Whether `proof` is a valid proof of shard `index` in a tree of `n` leaves, within the
    /// length bound. The depth is checked as every replica checks an echo's: a proposer could
    /// otherwise build a deeper tree whose proofs verify, get our ECHO of one, and have the others
    /// refuse it and record us as faulty.
    fn check_proof(&self, from: NodeIndex, proof: &Proof, index: NodeIndex, step: &mut RbcStep) -> bool {
        if proof.shard.len() > self.shard_len_max() {
            step.fault(from, FaultKind::TooLong);
            return false;
        }
        if proof.index != index.0 || proof.path.len() != merkle::depth(self.quorum.n() as usize) || !proof.verifies() {
            step.fault(from, FaultKind::InvalidProof);
            return false;
        }
        true
    }

    fn handle_value(&mut self, from: NodeIndex, proof: Proof, step: &mut RbcStep) {
        if from != self.proposer {
            step.fault(from, FaultKind::NotProposer);
            return;
        }
        if let Some(root) = self.value_root {
            if root != proof.root {
                step.fault(from, FaultKind::Equivocation);
            }
            return;
        }
        if !self.check_proof(from, &proof, self.our_index, step) {
            return;
        }
        self.value_root = Some(proof.root);
        if !self.echo_sent {
            self.echo_sent = true;
            step.broadcast(Message::Echo(proof));
        }
    }

    /// An echo counts at once; its proof is checked only if decoding with its shard fails. Counting
    /// an echo with a bad shard is safe: of `n - t` echoes for a root at least `n - 2t = k` are
    /// honest, and honest echoes carry shards whose proofs their senders checked.
    fn handle_echo(&mut self, from: NodeIndex, proof: Proof, step: &mut RbcStep) {
        if self.bad_echoes.contains(&from) {
            return;
        }
        if let Some((earlier, _)) = self.echos.get(&from) {
            if *earlier != proof {
                step.fault(from, FaultKind::Equivocation);
            }
            return;
        }
        if proof.shard.len() > self.shard_len_max() {
            step.fault(from, FaultKind::TooLong);
            return;
        }
        if proof.index != from.0 || proof.path.len() != merkle::depth(self.quorum.n() as usize) {
            step.fault(from, FaultKind::InvalidProof);
            return;
        }
        self.echos.insert(from, (proof, false));
    }

    fn handle_ready(&mut self, from: NodeIndex, root: Digest, step: &mut RbcStep) {
        match self.readys.get(&from) {
            Some(earlier) if *earlier != root => step.fault(from, FaultKind::Equivocation),
            Some(_) => {}
            None => {
                self.readys.insert(from, root);
            }
        }
    }

    fn echos_for(&self, root: &Digest) -> usize {
        self.echos.values().filter(|(p, _)| p.root == *root).count()
    }

    fn readys_for(&self, root: &Digest) -> usize {
        self.readys.values().filter(|r| *r == root).count()
    }

    /// The roots that have support, most supported first (deterministic).
    fn candidate_roots(&self) -> Vec<Digest> {
        let mut roots: Vec<Digest> =
            self.echos.values().map(|(p, _)| p.root).chain(self.readys.values().copied()).collect();
        roots.sort_unstable();
        roots.dedup();
        roots
    }

    fn try_ready(&mut self, step: &mut RbcStep) {
        if self.ready_sent {
            return;
        }
        let available = self.quorum.available() as usize;
        let one_honest = self.quorum.one_honest() as usize;
        let ready = self
            .candidate_roots()
            .into_iter()
            .find(|root| self.echos_for(root) >= available || self.readys_for(root) >= one_honest);
        if let Some(root) = ready {
            self.ready_sent = true;
            step.broadcast(Message::Ready(root));
        }
    }

    /// Upon `2t + 1` READY and `k` echoes for a root: decode from `k` shards (checked ones first),
    /// re-encode and compare roots. A match delivers the value (bad shards could not have given
    /// it). A mismatch checks the proofs of the shards used: bad ones are dropped as faults and we
    /// wait for more; if all were good, the proposer dispersed no codeword and `Invalid` is
    /// delivered — as at every honest replica, since no `k` good leaves of such a tree decode to
    /// a value with its root.
    fn try_deliver(&mut self, step: &mut RbcStep) {
        let majority = self.quorum.honest_majority() as usize;
        let k = self.data_shards();
        let n = self.quorum.n() as usize;
        loop {
            let Some(root) = self
                .candidate_roots()
                .into_iter()
                .find(|root| self.readys_for(root) >= majority && self.echos_for(root) >= k)
            else {
                return;
            };
            let mut chosen: Vec<NodeIndex> =
                self.echos.iter().filter(|(_, (p, _))| p.root == root).map(|(i, _)| *i).collect();
            chosen.sort_by_key(|i| (!self.echos[i].1, *i));
            chosen.truncate(k);
            let shards: BTreeMap<usize, &[u8]> =
                chosen.iter().map(|i| (i.as_usize(), self.echos[i].0.shard.as_slice())).collect();
            let value = decode(&shards, k, n, self.config.value_len_max);
            if let Some(value) = value.filter(|v| Tree::new(&encode(v, k, n)).root() == root) {
                self.delivered = true;
                step.outputs.push(Delivery::Value(value));
                return;
            }
            let mut all_good = true;
            for sender in chosen {
                let Some((proof, checked)) = self.echos.get_mut(&sender) else { continue };
                if *checked {
                    continue;
                }
                if proof.verifies() {
                    *checked = true;
                } else {
                    all_good = false;
                    self.echos.remove(&sender);
                    self.bad_echoes.insert(sender);
                    step.fault(sender, FaultKind::InvalidProof);
                }
            }
            if all_good {
                self.delivered = true;
                step.outputs.push(Delivery::Invalid);
                return;
            }
        }
    }
}

/// Bytes per shard for `payload` bytes over `k` data shards: even and at least 2, as the
/// Reed–Solomon code needs.
fn shard_len(payload: usize, k: usize) -> usize {
    let len = payload.div_ceil(k.max(1)).max(2);
    len + len % 2
}

/// `len || value`, zero-padded, cut into `k` data shards, plus `n - k` parity shards.
fn encode(value: &[u8], k: usize, n: usize) -> Vec<Vec<u8>> {
    let payload_len = value.len() + 4;
    let len = shard_len(payload_len, k);
    let mut payload = Vec::with_capacity(len * k);
    payload.extend_from_slice(&u32::try_from(value.len()).expect("values are bounded below 4 GiB").to_le_bytes());
    payload.extend_from_slice(value);
    payload.resize(len * k, 0);
    let mut shards: Vec<Vec<u8>> = payload.chunks(len).map(<[u8]>::to_vec).collect();
    if n > k {
        let parity =
            reed_solomon_simd::encode(k, n - k, &shards).expect("shard counts and sizes are valid by construction");
        shards.extend(parity);
    }
    shards
}

/// The value from at least `k` shards (index → shard) of a codeword, or `None` if they are not
/// consistent with any value within `value_len_max`.
fn decode(shards: &BTreeMap<usize, &[u8]>, k: usize, n: usize, value_len_max: usize) -> Option<Vec<u8>> {
    let len = shards.values().next()?.len();
    if shards.values().any(|s| s.len() != len) {
        return None;
    }
    let originals: BTreeMap<usize, &[u8]> = shards.iter().filter(|(i, _)| **i < k).map(|(i, s)| (*i, *s)).collect();
    let mut data: BTreeMap<usize, Vec<u8>> = originals.iter().map(|(i, s)| (*i, s.to_vec())).collect();
    if originals.len() < k {
        let recovery = shards.iter().filter(|(i, _)| **i >= k).map(|(i, s)| (*i - k, *s));
        let restored = reed_solomon_simd::decode(k, n - k, originals.iter().map(|(i, s)| (*i, *s)), recovery).ok()?;
        data.extend(restored);
    }
    let payload: Vec<u8> = (0..k).map(|i| data.get(&i).map(Vec::as_slice)).collect::<Option<Vec<&[u8]>>>()?.concat();
    let value_len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    if value_len > value_len_max {
        return None;
    }
    payload.get(4..4 + value_len).map(<[u8]>::to_vec)
}

impl Protocol for ReliableBroadcast {
    type Input = Vec<u8>;
    type Message = Message;
    type Output = Delivery;
    type Error = Error;

    fn our_index(&self) -> NodeIndex {
        self.our_index
    }

    fn handle_input(&mut self, input: Vec<u8>, _rng: &mut dyn rand::RngCore) -> Result<RbcStep, Error> {
        self.propose(&input)
    }

    fn handle_message(&mut self, from: NodeIndex, message: Message, _rng: &mut dyn rand::RngCore) -> RbcStep {
        self.handle(from, message)
    }

    fn terminated(&self) -> bool {
        self.delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_above_the_bound_is_refused_by_the_decoder() {
        let proof = Proof { root: [1; 32], index: 0, shard: vec![5; 101], path: vec![[2; 32]; 2] };
        let bytes = Message::Echo(proof.clone()).to_bytes();
        let decode = |max| Message::decode_bounded(&mut Reader::new(&bytes), max);
        assert_eq!(decode(101), Ok(Message::Echo(proof)));
        assert!(matches!(decode(100), Err(DecodeError::TooLong { len: 101, max: 100 })));
    }

    #[test]
    fn values_survive_losing_any_2t_shards() {
        for (n, t) in [(1u32, 0u32), (3, 0), (4, 1), (7, 2), (10, 3), (31, 10)] {
            let k = (n - 2 * t) as usize;
            for value in [Vec::new(), b"x".to_vec(), (0..1000u32).map(|i| i as u8).collect()] {
                let shards = encode(&value, k, n as usize);
                // Keep the last k shards: as many parity shards as possible.
                let kept: BTreeMap<usize, &[u8]> =
                    shards.iter().enumerate().skip(n as usize - k).map(|(i, s)| (i, s.as_slice())).collect();
                assert_eq!(decode(&kept, k, n as usize, 1 << 20), Some(value.clone()), "n={n} t={t}");
            }
        }
    }

    /// A Byzantine proposer builds its tree over twice as many leaves: the proof of our shard
    /// verifies against that root but is one level too deep. Echoing it would have every other
    /// replica refuse our ECHO and record us as faulty.
    #[test]
    fn a_value_with_a_proof_of_the_wrong_depth_is_refused_and_not_echoed() {
        let quorum = Quorum::with_max_faults(4).expect("n = 4");
        let (proposer, us) = (NodeIndex(0), NodeIndex(1));
        let mut shards = encode(b"value", 2, 4);
        shards.extend(encode(b"other", 2, 4));
        let tree = Tree::new(&shards);
        let proof = Proof { root: tree.root(), index: us.0, shard: shards[1].clone(), path: tree.path(1) };
        assert!(proof.verifies(), "the deeper proof verifies against its root");
        assert_eq!(proof.path.len(), merkle::depth(4) + 1);
        let mut ours = ReliableBroadcast::new(quorum, us, proposer, Config::default());
        let step = ours.handle(proposer, Message::Value(proof.clone()));
        assert!(step.messages.is_empty(), "an ECHO of a proof the others refuse was sent: {:?}", step.messages);
        assert_eq!(
            step.faults.iter().map(|f| (f.node, f.kind.clone())).collect::<Vec<_>>(),
            vec![(proposer, FaultKind::InvalidProof)]
        );
        // What another replica does with such an ECHO: refuse it, blaming the sender.
        let mut other = ReliableBroadcast::new(quorum, NodeIndex(2), proposer, Config::default());
        let step = other.handle(us, Message::Echo(proof));
        assert_eq!(
            step.faults.iter().map(|f| (f.node, f.kind.clone())).collect::<Vec<_>>(),
            vec![(us, FaultKind::InvalidProof)]
        );
    }

    #[test]
    fn messages_round_trip() {
        let proof = Proof { root: [3; 32], index: 2, shard: vec![1, 2], path: vec![[4; 32], [5; 32]] };
        for message in [Message::Value(proof.clone()), Message::Echo(proof), Message::Ready([9; 32])] {
            assert_eq!(Message::from_bytes(&message.to_bytes()), Ok(message));
        }
        assert!(Message::from_bytes(&[TAG_READY, 1, 2]).is_err());
    }
}
