//! `RsaSigner`: the replicas threshold-sign messages services ask for with Shoup's threshold RSA
//! (`fides-threshold-rsa`: PKCS#1 v1.5 over SHA-256), as a sans-IO protocol.
//!
//! A service asks with [`crate::Outcome::ThresholdSign`]; every replica applies the same request,
//! so every replica's host gives the same message to its signer. The combined signature is an
//! ordinary RSA signature: it verifies alone against the public key `(N, e)`.
//!
//! # The protocol, as rules
//!
//! 1. Upon `Sign(message)` (the host applied the request that asked for it, and the epoch is
//!    durable): the message's id is `H(tagged(RSA_MESSAGE, [message]))` ([`MessageId::of`]). Make
//!    our share with its proof (deterministic: the same bytes after a restart), broadcast
//!    `SHARE(id, share)`, and take in the shares kept for `id` (rule 4).
//! 2. Upon `SHARE(id, s)` from `p` for an id we are signing: only the first share of each peer
//!    counts; a second, different one is `Equivocation`, the same one again a resend. Bytes that
//!    are no share of this key are `Undecodable`; a share under another index than its sender's is
//!    `InvalidProof`. A counted share arrived after ours went out, so `p` may not have ours: we
//!    send ours to `p` as `SHARE-REPLY` (again on a resend: `p` may have restarted). A
//!    `SHARE-REPLY` counts like a `SHARE` but is never answered (rules 2, 4 and 5), or two
//!    replicas would bounce shares until both had signed.
//! 3. As soon as `t + 1` shares are in (ours first, then the peers' in order of arrival), combine
//!    them and check the **combined** signature only (`y^e = EMSA(M) mod N`, cheap with
//!    `e = 65537`). If it fails, check each share's proof (and from then on each new share's on
//!    arrival), name each bad one (`InvalidProof`), and combine `t + 1` good ones. Nothing
//!    unchecked is output.
//! 4. Upon `SHARE` for an id we were not asked to sign (an honest peer may be ahead of us): keep
//!    it, at most `early_per_peer_max` per peer (the first per peer and id); beyond that, drop it
//!    as `RoundTooFar`. If it is a `SHARE`, the host is also asked (`SignatureAsked`) whether it
//!    signed that id long ago ([`Input::Answer`] then sends the signature and drops what was kept).
//! 5. Upon `SHARE` for an id signed here and still remembered (the `done_kept` most recent):
//!    answer `p` with `SIGNATURE(id, signature)`, so a replica that was down finishes with one
//!    message; a `SHARE-REPLY` there is ignored (late).
//! 6. Upon `SIGNATURE(id, y)` for an id we are signing: check `y` against the public key (once
//!    per peer and id) and take it as ours; a bad one is `InvalidProof`. For any other id it is
//!    ignored.
//!
//! # Bounds against a Byzantine signer
//!
//! - Shares kept before we sign: at most `early_per_peer_max × (n − 1)`.
//! - Per id being signed: one entry per peer; at most `n` proof checks, `n` signature checks of
//!   `SIGNATURE`s, and `2 + n` combinations.
//! - Signatures remembered: `done_kept`; older ones come from the host's store.
//! - Ids being signed: the host's pace (one per `Sign` not yet signed), never a peer's.
//! - Replies (our share, a signature, a question to the host) are one per message received.
//!
//! # Deviations
//!
//! - Fault kinds: the existing ones (`InvalidProof` for a share whose proof fails or a bad
//!   signature, `RoundTooFar` for a share beyond the early bound), so the replica's fault metrics
//!   need no new labels.
//! - Shares carry their proofs (three exponentiations each, about 17 ms for RSA-2048). Proofs on
//!   demand (docs/threshold-rsa.md) would save two thirds, at the price of a second round trip
//!   whenever a share is bad; what is signed here is rare (certificates, revocation lists), so the
//!   simpler protocol wins until measurements say otherwise.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use fides_threshold_rsa::{
    combine, combine_values, sign_share, verify_share, verify_signature, PublicKey, SecretShare, SignatureShare,
};
use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};
use fides_types::{FaultKind, NodeIndex, Outgoing, Protocol, Quorum, Step, Target};

/// Names a message to sign: `SHA-256(tagged(RSA_MESSAGE, [message]))`. What shares, signatures
/// and the host's table of signatures are keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub [u8; 32]);

impl MessageId {
    /// The id of `message`.
    pub fn of(message: &[u8]) -> MessageId {
        MessageId(fides_crypto::sha256(&fides_crypto::tagged(fides_crypto::domain::RSA_MESSAGE, &[message])))
    }
}

/// Longest share or signature a message decodes: a share of the largest modulus (8192 bits,
/// `k` = 1024) is `8 + 2k + 49` bytes.
pub const SHARE_BYTES_MAX: usize = 4096;

/// Bounds of an [`RsaSigner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RsaSignerConfig {
    /// Shares kept per peer for ids we were not asked to sign yet.
    pub early_per_peer_max: usize,
    /// How many of the most recent signatures are kept in memory, to answer late peers.
    pub done_kept: usize,
}

impl Default for RsaSignerConfig {
    fn default() -> Self {
        RsaSignerConfig { early_per_peer_max: 256, done_kept: 1024 }
    }
}

/// What the host gives the signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Sign `message`, once the request that asked is applied and durable. Giving it again (after
    /// a restart, or when its signature is slow to come) sends our share again.
    Sign(Vec<u8>),
    /// The signature of `id` from the host's store, for a peer that asked
    /// ([`Output::SignatureAsked`]): it is sent to that peer.
    Answer {
        /// The peer that asked.
        peer: NodeIndex,
        /// The id.
        id: MessageId,
        /// The signature, as stored.
        signature: Vec<u8>,
    },
}

/// What replicas send each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Our signature share of `id`'s message, with its proof (`fides_threshold_rsa` encoding).
    Share {
        /// The message's id.
        id: MessageId,
        /// The share's bytes.
        share: Vec<u8>,
    },
    /// Our share, in answer to a peer's [`Message::Share`]; counted like a share, never answered.
    ShareReply {
        /// The message's id.
        id: MessageId,
        /// The share's bytes.
        share: Vec<u8>,
    },
    /// The combined signature, in answer to a share for an id signed here already.
    Signature {
        /// The message's id.
        id: MessageId,
        /// The RSA signature, `k` bytes.
        signature: Vec<u8>,
    },
}

const TAG_SHARE: u8 = 1;
const TAG_SHARE_REPLY: u8 = 2;
const TAG_SIGNATURE: u8 = 3;

impl Wire for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        let (tag, id, bytes) = match self {
            Message::Share { id, share } => (TAG_SHARE, id, share),
            Message::ShareReply { id, share } => (TAG_SHARE_REPLY, id, share),
            Message::Signature { id, signature } => (TAG_SIGNATURE, id, signature),
        };
        out.push(tag);
        out.extend_from_slice(&id.0);
        put_bytes(out, bytes);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let tag = reader.u8()?;
        let id = MessageId(reader.array()?);
        let bytes = reader.bytes(SHARE_BYTES_MAX)?.to_vec();
        match tag {
            TAG_SHARE => Ok(Message::Share { id, share: bytes }),
            TAG_SHARE_REPLY => Ok(Message::ShareReply { id, share: bytes }),
            TAG_SIGNATURE => Ok(Message::Signature { id, signature: bytes }),
            other => Err(DecodeError::Invalid { what: "rsa signer message tag", value: u64::from(other) }),
        }
    }
}

/// What the signer gives the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// `id`'s message is signed: store the signature, answer the request that asked.
    Signed {
        /// The message's id.
        id: MessageId,
        /// The RSA signature, `k` bytes; it verifies against the public key.
        signature: Vec<u8>,
    },
    /// A peer sent a share for `id`, which this signer is not signing and does not remember: if
    /// the host's store holds its signature, it gives it back as [`Input::Answer`].
    SignatureAsked {
        /// The peer.
        peer: NodeIndex,
        /// The id.
        id: MessageId,
    },
}

/// A local misuse of the signer (never something a peer did).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Our secret share cannot sign under the public key: the key files do not fit.
    #[error("our threshold RSA share cannot sign: {0}")]
    Share(#[from] fides_threshold_rsa::SignError),
}

type SignerStep = Step<Message, Output>;

/// Where a share of an id being signed stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Not checked alone (it may have been in a combination that verified).
    Unverified,
    /// Its proof holds.
    Valid,
    /// Refused: undecodable, under another index, or its proof fails.
    Refused,
}

/// The first share of one replica for an id.
#[derive(Clone, Debug)]
struct Heard {
    bytes: Vec<u8>,
    share: Option<SignatureShare>,
    standing: Standing,
}

/// An id we were asked to sign and have no signature of yet.
#[derive(Clone, Debug)]
struct Signing {
    message: Vec<u8>,
    /// Each replica's first share, ours included; at most `n` entries.
    heard: BTreeMap<NodeIndex, Heard>,
    /// Replicas whose share was usable, in order of arrival, ours first; at most `n`.
    arrival: Vec<NodeIndex>,
    /// Whether a combination of unchecked shares failed: from then on proofs are checked.
    optimistic_failed: bool,
    /// Peers whose `SIGNATURE` for this id was checked; at most `n`.
    signatures_checked: Vec<NodeIndex>,
}

/// One replica's threshold RSA signer (see the module doc for the rules).
pub struct RsaSigner {
    public: Arc<PublicKey>,
    secret: Arc<SecretShare>,
    quorum: Quorum,
    our_index: NodeIndex,
    config: RsaSignerConfig,
    signing: BTreeMap<MessageId, Signing>,
    /// Per peer, shares for ids not being signed here, in order of arrival.
    early: BTreeMap<NodeIndex, VecDeque<(MessageId, Vec<u8>)>>,
    /// The most recent signatures, and their order.
    done: BTreeMap<MessageId, Vec<u8>>,
    done_order: VecDeque<MessageId>,
}

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaSigner")
            .field("our_index", &self.our_index)
            .field("signing", &self.signing.len())
            .field("early", &self.early_shares())
            .field("done", &self.done.len())
            .finish_non_exhaustive()
    }
}

impl RsaSigner {
    /// The signer of replica `our_index`, with its secret share of `public`'s key.
    pub fn new(
        public: Arc<PublicKey>,
        secret: Arc<SecretShare>,
        quorum: Quorum,
        our_index: NodeIndex,
        config: RsaSignerConfig,
    ) -> Self {
        RsaSigner {
            public,
            secret,
            quorum,
            our_index,
            config,
            signing: BTreeMap::new(),
            early: BTreeMap::new(),
            done: BTreeMap::new(),
            done_order: VecDeque::new(),
        }
    }

    /// The public key signatures verify against.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Ids given to sign and not signed yet.
    pub fn signing(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.signing.keys().copied()
    }

    /// The signature of `id`, if signed here and still remembered.
    pub fn signature(&self, id: &MessageId) -> Option<&[u8]> {
        self.done.get(id).map(Vec::as_slice)
    }

    /// Shares kept for ids not being signed here (at most `early_per_peer_max × (n − 1)`).
    pub fn early_shares(&self) -> usize {
        self.early.values().map(VecDeque::len).sum()
    }

    fn sign(&mut self, message: Vec<u8>) -> Result<SignerStep, Error> {
        let id = MessageId::of(&message);
        let mut step = SignerStep::default();
        if let Some(signature) = self.done.get(&id) {
            step.outputs.push(Output::Signed { id, signature: signature.clone() });
            return Ok(step);
        }
        if let Some(signing) = self.signing.get(&id) {
            let ours = signing.heard[&self.our_index].bytes.clone();
            step.broadcast(Message::Share { id, share: ours });
            return Ok(step);
        }
        let share = sign_share(&self.public, &self.secret, &message)?;
        let bytes = share.to_bytes(&self.public);
        step.broadcast(Message::Share { id, share: bytes.clone() });
        let ours = Heard { bytes, share: Some(share), standing: Standing::Unverified };
        let signing = Signing {
            message,
            heard: BTreeMap::from([(self.our_index, ours)]),
            arrival: vec![self.our_index],
            optimistic_failed: false,
            signatures_checked: Vec::new(),
        };
        self.signing.insert(id, signing);
        for (from, kept) in self.take_early(&id) {
            self.handle_signing_share(from, id, kept, true, &mut step);
        }
        self.try_combine(id, &mut step);
        Ok(step)
    }

    /// The shares kept for `id`, removed from the early ones, in order of the peers.
    fn take_early(&mut self, id: &MessageId) -> Vec<(NodeIndex, Vec<u8>)> {
        let mut taken = Vec::new();
        for (from, kept) in &mut self.early {
            if let Some(at) = kept.iter().position(|(kept_id, _)| kept_id == id) {
                if let Some((_, bytes)) = kept.remove(at) {
                    taken.push((*from, bytes));
                }
            }
        }
        self.early.retain(|_, kept| !kept.is_empty());
        taken
    }

    /// A share (`reply`: a [`Message::ShareReply`], which gets no answer).
    fn handle_share(&mut self, from: NodeIndex, id: MessageId, bytes: Vec<u8>, reply: bool, step: &mut SignerStep) {
        if let Some(signature) = self.done.get(&id) {
            if !reply {
                let message = Message::Signature { id, signature: signature.clone() };
                step.messages.push(Outgoing { target: Target::Node(from), message });
            }
            return;
        }
        if self.signing.contains_key(&id) {
            self.handle_signing_share(from, id, bytes, reply, step);
            self.try_combine(id, step);
            return;
        }
        let kept = self.early.entry(from).or_default();
        if let Some((_, earlier)) = kept.iter().find(|(kept_id, _)| *kept_id == id) {
            if *earlier != bytes {
                step.fault(from, FaultKind::Equivocation);
            }
            return;
        }
        if kept.len() >= self.config.early_per_peer_max {
            step.fault(from, FaultKind::RoundTooFar);
            return;
        }
        kept.push_back((id, bytes));
        if !reply {
            step.outputs.push(Output::SignatureAsked { peer: from, id });
        }
    }

    /// Rule 2 for an id being signed; `quiet` for shares taken from the early ones (they came
    /// before ours went out, so our broadcast answers them).
    fn handle_signing_share(
        &mut self,
        from: NodeIndex,
        id: MessageId,
        bytes: Vec<u8>,
        quiet: bool,
        step: &mut SignerStep,
    ) {
        let Some(signing) = self.signing.get_mut(&id) else { return };
        let ours = signing.heard[&self.our_index].bytes.clone();
        let answer = Outgoing { target: Target::Node(from), message: Message::ShareReply { id, share: ours } };
        if let Some(earlier) = signing.heard.get(&from) {
            if earlier.bytes != bytes {
                step.fault(from, FaultKind::Equivocation);
            } else if !quiet {
                // A resend: the peer may have restarted and lost ours.
                step.messages.push(answer);
            }
            return;
        }
        let share = match SignatureShare::from_bytes(&self.public, &bytes) {
            Ok(share) if share.index() == from.0 => Some(share),
            Ok(_) => {
                step.fault(from, FaultKind::InvalidProof);
                None
            }
            Err(_) => {
                step.fault(from, FaultKind::Undecodable);
                None
            }
        };
        let Some(share) = share else {
            signing.heard.insert(from, Heard { bytes, share: None, standing: Standing::Refused });
            return;
        };
        let standing = if signing.optimistic_failed {
            // Once a combination failed, each new share is checked on arrival.
            if verify_share(&self.public, &signing.message, &share) {
                Standing::Valid
            } else {
                step.fault(from, FaultKind::InvalidProof);
                Standing::Refused
            }
        } else {
            Standing::Unverified
        };
        if standing != Standing::Refused {
            signing.arrival.push(from);
        }
        signing.heard.insert(from, Heard { bytes, share: Some(share), standing });
        if !quiet {
            // It came after ours went out: it may not have ours.
            step.messages.push(answer);
        }
    }

    fn handle_signature(&mut self, from: NodeIndex, id: MessageId, signature: Vec<u8>, step: &mut SignerStep) {
        let Some(signing) = self.signing.get_mut(&id) else { return };
        if signing.signatures_checked.contains(&from) {
            return;
        }
        signing.signatures_checked.push(from);
        if verify_signature(&self.public, &signing.message, &signature) {
            self.finish(id, signature, step);
        } else {
            step.fault(from, FaultKind::InvalidProof);
        }
    }

    /// Rule 3: combine optimistically, and once that failed, from shares whose proofs hold.
    fn try_combine(&mut self, id: MessageId, step: &mut SignerStep) {
        let need = self.public.threshold() as usize + 1;
        let Some(signing) = self.signing.get_mut(&id) else { return };
        if let Some(signature) = combine_signing(&self.public, self.our_index, need, signing, step) {
            self.finish(id, signature, step);
        }
    }

    fn finish(&mut self, id: MessageId, signature: Vec<u8>, step: &mut SignerStep) {
        self.signing.remove(&id);
        if self.done.insert(id, signature.clone()).is_none() {
            self.done_order.push_back(id);
        }
        while self.done_order.len() > self.config.done_kept {
            if let Some(old) = self.done_order.pop_front() {
                self.done.remove(&old);
            }
        }
        step.outputs.push(Output::Signed { id, signature });
    }

    fn answer(&mut self, peer: NodeIndex, id: MessageId, signature: Vec<u8>) -> SignerStep {
        let mut step = SignerStep::default();
        // Signed long ago: what that peer sent is of no use here any more.
        if let Some(kept) = self.early.get_mut(&peer) {
            kept.retain(|(kept_id, _)| *kept_id != id);
        }
        step.messages.push(Outgoing { target: Target::Node(peer), message: Message::Signature { id, signature } });
        step
    }
}

/// Rule 3 on one id: the signature, if `need` shares make one that verifies.
fn combine_signing(
    public: &PublicKey,
    our_index: NodeIndex,
    need: usize,
    signing: &mut Signing,
    step: &mut SignerStep,
) -> Option<Vec<u8>> {
    let usable = |heard: &Heard, valid_only: bool| match heard.standing {
        Standing::Valid => heard.share.clone(),
        Standing::Unverified if !valid_only => heard.share.clone(),
        _ => None,
    };
    let chosen = |signing: &Signing, valid_only: bool| -> Vec<SignatureShare> {
        signing.arrival.iter().filter_map(|i| usable(&signing.heard[i], valid_only)).take(need).collect()
    };
    if !signing.optimistic_failed {
        let shares = chosen(signing, false);
        if shares.len() < need {
            return None;
        }
        // The values alone: on failure `combine_values` checks no proof (the loop below checks
        // each share's once, and names the bad ones).
        let values: Vec<_> = shares.iter().map(SignatureShare::share_value).collect();
        if let Ok(combined) = combine_values(public, &signing.message, &values) {
            return Some(combined.signature);
        }
        signing.optimistic_failed = true;
    }
    for index in signing.arrival.clone() {
        let Some(heard) = signing.heard.get_mut(&index) else { continue };
        if heard.standing != Standing::Unverified {
            continue;
        }
        if heard.share.as_ref().is_some_and(|s| verify_share(public, &signing.message, s)) {
            heard.standing = Standing::Valid;
        } else {
            heard.standing = Standing::Refused;
            // Our own share failing means our key share is not the dealer's (a local fault, not
            // a peer's); the peers' good shares still make the signature.
            if index != our_index {
                step.fault(index, FaultKind::InvalidProof);
            }
        }
    }
    let shares = chosen(signing, true);
    if shares.len() < need {
        return None;
    }
    // Shares whose proofs hold combine to the signature; `combine` checks it all the same.
    combine(public, &signing.message, &shares).ok().map(|combined| combined.signature)
}

impl Protocol for RsaSigner {
    type Input = Input;
    type Message = Message;
    type Output = Output;
    type Error = Error;

    fn our_index(&self) -> NodeIndex {
        self.our_index
    }

    fn handle_input(&mut self, input: Input, _rng: &mut dyn rand::RngCore) -> Result<SignerStep, Error> {
        match input {
            Input::Sign(message) => self.sign(message),
            Input::Answer { peer, id, signature } => Ok(self.answer(peer, id, signature)),
        }
    }

    fn handle_message(&mut self, from: NodeIndex, message: Message, _rng: &mut dyn rand::RngCore) -> SignerStep {
        let mut step = SignerStep::default();
        if from == self.our_index || !self.quorum.contains(from) {
            // Our own broadcast coming back, or no replica at all (the transport refuses those).
            return step;
        }
        match message {
            Message::Share { id, share } => self.handle_share(from, id, share, false, &mut step),
            Message::ShareReply { id, share } => self.handle_share(from, id, share, true, &mut step),
            Message::Signature { id, signature } => self.handle_signature(from, id, signature, &mut step),
        }
        step
    }

    /// Never: the signer lives as long as the replica.
    fn terminated(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests;
