//! `RsaSigner`: the replicas threshold-sign messages services ask for with Shoup's threshold RSA
//! (`fides-threshold-rsa`: PKCS#1 v1.5 over SHA-256), as a sans-IO protocol.
//!
//! A service asks with [`crate::Outcome::ThresholdSign`]; every replica applies the same request,
//! so every replica's host gives the same message to its signer. The combined signature is an
//! ordinary RSA signature: it verifies alone against the public key `(N, e)`.
//!
//! Only `t + 1` shares are needed, so only `t + 1` replicas sign at once (the message's
//! *designated* signers, [`designated`]), and they send their share's value without its proof
//! (one exponentiation instead of three). The others sign when the signature is late (the host's
//! [`Input::Retry`]) or when asked; proofs are made only when a combination of values fails. The
//! signer computes no exponentiation itself: it asks the host ([`Output::Compute`]), which makes
//! our share off its worker thread ([`Compute::run`]) and gives it back ([`Input::Computed`]).
//!
//! # The protocol, as rules
//!
//! 1. Upon `Sign(message)` (the host applied the request that asked for it, and the epoch is
//!    durable): the message's id is `H(tagged(RSA_MESSAGE, [message]))` ([`MessageId::of`]). Take
//!    in what peers sent for `id` before (rule 6). If we are one of `id`'s `t + 1` designated
//!    signers (`t + 1` consecutive indices from `id`'s first four bytes, little-endian, mod `n`)
//!    and no signature came of what was kept, make our share's value and broadcast
//!    `VALUE(id, x_i)`. Giving `Sign` again sends our share again.
//! 2. Upon `Retry(message)` (the signature is not in after the host's timeout, or the host
//!    restarted and lost what peers sent): broadcast `ASK(id)` and make our share's value,
//!    designated or not (with its proof once proofs are needed: rule 4), and broadcast it.
//! 3. Upon `VALUE(id, v)` or `SHARE(id, s)` (a share with its proof) from `p` for an id we are
//!    signing: only the first of each kind from each peer counts; a second, different one is
//!    `Equivocation`. Bytes that are no share of this key are `Undecodable`; a share under another
//!    index than its sender's is `InvalidProof`. A peer named for an id is not used for it again.
//! 4. As soon as `t + 1` values are in (ours first, then the peers' in order of arrival, a
//!    `SHARE` counting as its value), combine them and check the **combined** signature only
//!    (`y^e = EMSA(M) mod N`). If it fails, proofs are needed: broadcast `ASK-PROOF(id)`, make our
//!    share with its proof and broadcast it as `SHARE`; from then on combine only our value and
//!    peers' shares whose proofs hold (checked in order of arrival, as needed), naming each bad
//!    one `InvalidProof`. Once signed, each peer value that was in the failed combination is
//!    judged by combining it with `t` trusted ones, and named `InvalidProof` if that fails.
//!    Nothing unchecked is output.
//! 5. Upon `ASK(id)` from `p` while signing: send `p` our share (its value, or the share with its
//!    proof for `ASK-PROOF`), making it first if needed (it is then broadcast).
//! 6. Upon `VALUE`, `SHARE` or `ASK` for an id we were not asked to sign (an honest peer may be
//!    ahead of us): keep it, at most `early_per_peer_max` per peer (the first of each kind per
//!    peer and id); beyond that, drop it as `RoundTooFar`. For an `ASK` the host is also asked
//!    (`SignatureAsked`) whether it signed that id long ago ([`Input::Answer`] then sends the
//!    signature and drops what was kept).
//! 7. Upon `VALUE`, `SHARE` or `ASK` for an id signed here and still remembered (the `done_kept`
//!    most recent): answer `p` with `SIGNATURE(id, signature)`, so a replica that was down
//!    finishes with one message.
//! 8. Upon `SIGNATURE(id, y)` for an id we are signing: check `y` against the public key (once
//!    per peer and id) and take it as ours; a bad one is `InvalidProof`. For any other id it is
//!    ignored.
//!
//! # Bounds against a Byzantine signer
//!
//! - Messages kept before we sign: at most `early_per_peer_max × (n − 1)`.
//! - Per id being signed: one value and one share per peer; at most `n` proof checks, `n`
//!   signature checks of `SIGNATURE`s, and `2 + 2n` combinations (one of values, one per arrival
//!   once proofs are needed, one per judged value).
//! - Our own share: at most one value and one share with its proof made per id.
//! - Signatures remembered: `done_kept`; older ones come from the host's store.
//! - Ids being signed: the host's pace (one per `Sign` not yet signed), never a peer's.
//! - Replies (our share, a signature, a question to the host) are one per message received.
//!
//! # Deviations
//!
//! - Fault kinds: the existing ones (`InvalidProof` for a share whose proof fails, a value that
//!   does not combine, or a bad signature; `RoundTooFar` for a message beyond the early bound), so
//!   the replica's fault metrics need no new labels.
//! - A Byzantine replica can make every id take the proof path (a bad value sent early); it is
//!   named each time, and the signature still combines from the honest replicas' proven shares.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use fides_threshold_rsa::{
    combine_values, sign_share, sign_share_value, verify_share, verify_signature, PublicKey, SecretShare, ShareValue,
    SignatureShare,
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

/// The `threshold + 1` replicas that sign `id`'s message at once: consecutive indices (mod
/// `parties`) from `id`'s first four bytes read little-endian, mod `parties`. Rotating with the
/// id spreads the work evenly over the replicas.
pub fn designated(id: &MessageId, parties: u32, threshold: u32) -> impl Iterator<Item = NodeIndex> {
    let parties = parties.max(1);
    let first = u32::from_le_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]) % parties;
    (0..(threshold + 1).min(parties)).map(move |k| NodeIndex((first + k) % parties))
}

/// Longest share or signature a message decodes: a share of the largest modulus (8192 bits,
/// `k` = 1024) is `8 + 2k + 49` bytes.
pub const SHARE_BYTES_MAX: usize = 4096;

/// Bounds of an [`RsaSigner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RsaSignerConfig {
    /// Messages kept per peer for ids we were not asked to sign yet.
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
    /// Sign `message`, once the request that asked is applied and durable: only a designated
    /// signer makes its share now. Giving it again sends our share again.
    Sign(Vec<u8>),
    /// The signature of `message` is not in after the host's timeout, or the host restarted (what
    /// peers sent meanwhile is lost): ask the peers, and make our share even if not designated.
    /// For an id not being signed it is also a `Sign`.
    Retry(Vec<u8>),
    /// Our share, made by the host as [`Output::Compute`] asked.
    Computed(Computed),
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

/// What the signer asks the host to compute: our share of `message` (the exponentiations with
/// our secret share, the slow part, which the host runs off its worker thread).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compute {
    /// The message's id.
    pub id: MessageId,
    /// The message.
    pub message: Vec<u8>,
    /// With its proof (three exponentiations) or the value alone (one).
    pub proof: bool,
}

impl Compute {
    /// Make the share (constant time in the secret), to give back as [`Input::Computed`].
    pub fn run(&self, public: &PublicKey, secret: &SecretShare) -> Result<Computed, Error> {
        let share = if self.proof {
            Own::Proven(sign_share(public, secret, &self.message)?)
        } else {
            Own::Value(sign_share_value(public, secret, &self.message)?)
        };
        Ok(Computed { id: self.id, share })
    }
}

/// Our share of a message, made by the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Computed {
    /// The message's id.
    pub id: MessageId,
    /// The share.
    pub share: Own,
}

/// Our share: its value alone, or with its proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Own {
    /// `x_i` alone.
    Value(ShareValue),
    /// `x_i` and its proof.
    Proven(SignatureShare),
}

/// What replicas send each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A signature share of `id`'s message with its proof (`fides_threshold_rsa` encoding).
    Share {
        /// The message's id.
        id: MessageId,
        /// The share's bytes.
        share: Vec<u8>,
    },
    /// The combined signature, in answer to a message for an id signed here already.
    Signature {
        /// The message's id.
        id: MessageId,
        /// The RSA signature, `k` bytes.
        signature: Vec<u8>,
    },
    /// A share's value without its proof (`fides_threshold_rsa` encoding).
    Value {
        /// The message's id.
        id: MessageId,
        /// The value's bytes.
        value: Vec<u8>,
    },
    /// "I have no signature of `id`": send the signature, or your share (with its proof if
    /// `proofs`).
    Ask {
        /// The message's id.
        id: MessageId,
        /// Whether the share's proof is needed (a combination of values failed).
        proofs: bool,
    },
}

const TAG_SHARE: u8 = 1;
// Tag 2 was a reply carrying a share; it is not used any more.
const TAG_SIGNATURE: u8 = 3;
const TAG_VALUE: u8 = 4;
const TAG_ASK: u8 = 5;
const TAG_ASK_PROOF: u8 = 6;

impl Message {
    /// The id the message is about.
    pub fn id(&self) -> MessageId {
        match self {
            Message::Share { id, .. }
            | Message::Signature { id, .. }
            | Message::Value { id, .. }
            | Message::Ask { id, .. } => *id,
        }
    }
}

impl Wire for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        let (tag, id, bytes): (u8, &MessageId, &[u8]) = match self {
            Message::Share { id, share } => (TAG_SHARE, id, share),
            Message::Signature { id, signature } => (TAG_SIGNATURE, id, signature),
            Message::Value { id, value } => (TAG_VALUE, id, value),
            Message::Ask { id, proofs: false } => (TAG_ASK, id, &[]),
            Message::Ask { id, proofs: true } => (TAG_ASK_PROOF, id, &[]),
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
            TAG_SIGNATURE => Ok(Message::Signature { id, signature: bytes }),
            TAG_VALUE => Ok(Message::Value { id, value: bytes }),
            TAG_ASK | TAG_ASK_PROOF if bytes.is_empty() => Ok(Message::Ask { id, proofs: tag == TAG_ASK_PROOF }),
            TAG_ASK | TAG_ASK_PROOF => {
                Err(DecodeError::Invalid { what: "rsa signer ask length", value: bytes.len() as u64 })
            }
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
    /// A peer asked for `id`, which this signer is not signing and does not remember: if the
    /// host's store holds its signature, it gives it back as [`Input::Answer`].
    SignatureAsked {
        /// The peer.
        peer: NodeIndex,
        /// The id.
        id: MessageId,
    },
    /// Make our share ([`Compute::run`]) and give it back as [`Input::Computed`].
    Compute(Compute),
}

/// A local misuse of the signer (never something a peer did).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Our secret share cannot sign under the public key: the key files do not fit.
    #[error("our threshold RSA share cannot sign: {0}")]
    Share(#[from] fides_threshold_rsa::SignError),
}

type SignerStep = Step<Message, Output>;

/// Where a peer's share with its proof stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Not checked alone (its value may have been in a combination that verified).
    Unverified,
    /// Its proof holds.
    Valid,
}

/// What one peer sent for an id.
#[derive(Clone, Debug, Default)]
struct Peer {
    /// The first `VALUE` and `SHARE` bytes, to tell a resend from an equivocation.
    value_bytes: Option<Vec<u8>>,
    share_bytes: Option<Vec<u8>>,
    /// Its value, from the first of its `VALUE` or `SHARE` that decoded.
    value: Option<ShareValue>,
    /// Its share with its proof.
    share: Option<(SignatureShare, Standing)>,
    /// Named for this id: not used again.
    refused: bool,
}

/// An id we were asked to sign and have no signature of yet.
#[derive(Clone, Debug)]
struct Signing {
    message: Vec<u8>,
    /// Our value, and our share with its proof, once made.
    own_value: Option<ShareValue>,
    own_share: Option<SignatureShare>,
    /// Whether the host was asked to make our value, our proven share.
    value_asked: bool,
    share_asked: bool,
    /// What each peer sent; at most `n − 1` entries.
    peers: BTreeMap<NodeIndex, Peer>,
    /// Peers whose value is in, in order of arrival; at most `n − 1`.
    arrival: Vec<NodeIndex>,
    /// Whether a combination of values failed: from then on proofs are needed.
    proofs: bool,
    /// Peers whose values were in the failed combination, judged once signed.
    suspects: Vec<NodeIndex>,
    /// Peers whose `SIGNATURE` for this id was checked; at most `n`.
    signatures_checked: Vec<NodeIndex>,
}

/// One replica's threshold RSA signer (see the module doc for the rules).
pub struct RsaSigner {
    public: Arc<PublicKey>,
    quorum: Quorum,
    our_index: NodeIndex,
    config: RsaSignerConfig,
    signing: BTreeMap<MessageId, Signing>,
    /// Per peer, messages for ids not being signed here, in order of arrival.
    early: BTreeMap<NodeIndex, VecDeque<Message>>,
    /// The most recent signatures, and their order.
    done: BTreeMap<MessageId, Vec<u8>>,
    done_order: VecDeque<MessageId>,
}

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaSigner")
            .field("our_index", &self.our_index)
            .field("signing", &self.signing.len())
            .field("early", &self.early_messages())
            .field("done", &self.done.len())
            .finish_non_exhaustive()
    }
}

/// Whether two messages are of the same kind (an early peer keeps one of each kind per id).
fn same_kind(a: &Message, b: &Message) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

impl RsaSigner {
    /// The signer of replica `our_index` under `public`'s key. The secret share stays with the
    /// host, which makes our shares when asked ([`Output::Compute`]).
    pub fn new(public: Arc<PublicKey>, quorum: Quorum, our_index: NodeIndex, config: RsaSignerConfig) -> Self {
        RsaSigner {
            public,
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

    /// Messages kept for ids not being signed here (at most `early_per_peer_max × (n − 1)`).
    pub fn early_messages(&self) -> usize {
        self.early.values().map(VecDeque::len).sum()
    }

    /// Whether we are one of `id`'s designated signers.
    pub fn is_designated(&self, id: &MessageId) -> bool {
        designated(id, self.public.parties(), self.public.threshold()).any(|i| i == self.our_index)
    }

    fn need(&self) -> usize {
        self.public.threshold() as usize + 1
    }

    fn sign(&mut self, message: Vec<u8>, step: &mut SignerStep) {
        let id = MessageId::of(&message);
        if let Some(signature) = self.done.get(&id) {
            step.outputs.push(Output::Signed { id, signature: signature.clone() });
            return;
        }
        if let Some(signing) = self.signing.get(&id) {
            // Given again: send our share again.
            if let Some(ours) = own_message(&self.public, id, signing) {
                step.broadcast(ours);
            }
            return;
        }
        let signing = Signing {
            message,
            own_value: None,
            own_share: None,
            value_asked: false,
            share_asked: false,
            peers: BTreeMap::new(),
            arrival: Vec::new(),
            proofs: false,
            suspects: Vec::new(),
            signatures_checked: Vec::new(),
        };
        self.signing.insert(id, signing);
        for (from, kept) in self.take_early(&id) {
            self.handle_signing(from, kept, step);
        }
        self.try_combine(id, step);
        if self.is_designated(&id) {
            self.want_share(id, false, step);
        }
    }

    fn retry(&mut self, message: Vec<u8>, step: &mut SignerStep) {
        let id = MessageId::of(&message);
        if !self.signing.contains_key(&id) {
            self.sign(message, step);
        }
        let Some(signing) = self.signing.get(&id) else { return };
        let proofs = signing.proofs;
        step.broadcast(Message::Ask { id, proofs });
        if let Some(ours) = own_message(&self.public, id, signing) {
            step.broadcast(ours);
        }
        self.want_share(id, proofs, step);
    }

    /// Make sure our share (with its proof if `proof`) is made or asked for; it is broadcast
    /// once made.
    fn want_share(&mut self, id: MessageId, proof: bool, step: &mut SignerStep) {
        let Some(signing) = self.signing.get_mut(&id) else { return };
        let (made, asked) = if proof {
            (signing.own_share.is_some(), signing.share_asked)
        } else {
            (signing.own_value.is_some(), signing.value_asked || signing.share_asked)
        };
        if made || asked {
            return;
        }
        if proof {
            signing.share_asked = true;
        } else {
            signing.value_asked = true;
        }
        step.outputs.push(Output::Compute(Compute { id, message: signing.message.clone(), proof }));
    }

    fn computed(&mut self, computed: Computed, step: &mut SignerStep) {
        let id = computed.id;
        let Some(signing) = self.signing.get_mut(&id) else { return };
        match computed.share {
            Own::Value(value) => {
                step.broadcast(Message::Value { id, value: value.to_bytes(&self.public) });
                signing.own_value.get_or_insert(value);
            }
            Own::Proven(share) => {
                step.broadcast(Message::Share { id, share: share.to_bytes(&self.public) });
                signing.own_value.get_or_insert_with(|| share.share_value());
                signing.own_share = Some(share);
            }
        }
        self.try_combine(id, step);
    }

    /// The messages kept for `id`, removed from the early ones, in order of the peers.
    fn take_early(&mut self, id: &MessageId) -> Vec<(NodeIndex, Message)> {
        let mut taken = Vec::new();
        for (from, kept) in &mut self.early {
            kept.retain(|message| {
                if message.id() == *id {
                    taken.push((*from, message.clone()));
                    false
                } else {
                    true
                }
            });
        }
        self.early.retain(|_, kept| !kept.is_empty());
        taken
    }

    /// A message for an id not being signed here (rules 6 and 7).
    fn handle_other(&mut self, from: NodeIndex, message: Message, step: &mut SignerStep) {
        let id = message.id();
        if let Some(signature) = self.done.get(&id) {
            let reply = Message::Signature { id, signature: signature.clone() };
            step.messages.push(Outgoing { target: Target::Node(from), message: reply });
            return;
        }
        let kept = self.early.entry(from).or_default();
        if let Some(earlier) = kept.iter_mut().find(|m| m.id() == id && same_kind(m, &message)) {
            match (&mut *earlier, &message) {
                // A second ask: it may now want proofs.
                (Message::Ask { proofs, .. }, Message::Ask { proofs: now, .. }) => *proofs |= *now,
                (earlier, message) if earlier != message => step.fault(from, FaultKind::Equivocation),
                _ => {}
            }
            return;
        }
        if kept.len() >= self.config.early_per_peer_max {
            step.fault(from, FaultKind::RoundTooFar);
            return;
        }
        let ask = matches!(message, Message::Ask { .. });
        kept.push_back(message);
        if ask {
            step.outputs.push(Output::SignatureAsked { peer: from, id });
        }
    }

    /// Rules 3 and 5 for an id being signed.
    fn handle_signing(&mut self, from: NodeIndex, message: Message, step: &mut SignerStep) {
        let id = message.id();
        match message {
            Message::Value { value, .. } => self.handle_value(from, id, value, step),
            Message::Share { share, .. } => self.handle_share(from, id, share, step),
            Message::Ask { proofs, .. } => self.handle_ask(from, id, proofs, step),
            Message::Signature { signature, .. } => self.handle_signature(from, id, signature, step),
        }
    }

    fn handle_value(&mut self, from: NodeIndex, id: MessageId, bytes: Vec<u8>, step: &mut SignerStep) {
        let Some(signing) = self.signing.get_mut(&id) else { return };
        let peer = signing.peers.entry(from).or_default();
        if let Some(earlier) = &peer.value_bytes {
            if *earlier != bytes {
                step.fault(from, FaultKind::Equivocation);
                peer.refused = true;
            }
            return;
        }
        let value = match ShareValue::from_bytes(&self.public, &bytes) {
            Ok(value) if value.index() == from.0 => Some(value),
            Ok(_) => refuse(peer, from, FaultKind::InvalidProof, step),
            Err(_) => refuse(peer, from, FaultKind::Undecodable, step),
        };
        peer.value_bytes = Some(bytes);
        if let (Some(value), false) = (value, peer.refused) {
            if peer.value.is_none() {
                peer.value = Some(value);
                signing.arrival.push(from);
            }
        }
    }

    fn handle_share(&mut self, from: NodeIndex, id: MessageId, bytes: Vec<u8>, step: &mut SignerStep) {
        let Some(signing) = self.signing.get_mut(&id) else { return };
        let peer = signing.peers.entry(from).or_default();
        if let Some(earlier) = &peer.share_bytes {
            if *earlier != bytes {
                step.fault(from, FaultKind::Equivocation);
                peer.refused = true;
            }
            return;
        }
        let share = match SignatureShare::from_bytes(&self.public, &bytes) {
            Ok(share) if share.index() == from.0 => Some(share),
            Ok(_) => refuse(peer, from, FaultKind::InvalidProof, step),
            Err(_) => refuse(peer, from, FaultKind::Undecodable, step),
        };
        peer.share_bytes = Some(bytes);
        let (Some(share), false) = (share, peer.refused) else { return };
        if peer.value.is_none() {
            peer.value = Some(share.share_value());
            signing.arrival.push(from);
        }
        peer.share = Some((share, Standing::Unverified));
    }

    fn handle_ask(&mut self, from: NodeIndex, id: MessageId, proofs: bool, step: &mut SignerStep) {
        let Some(signing) = self.signing.get(&id) else { return };
        let ours = match (&signing.own_share, &signing.own_value) {
            (Some(share), _) => Some(Message::Share { id, share: share.to_bytes(&self.public) }),
            (None, Some(value)) if !proofs => Some(Message::Value { id, value: value.to_bytes(&self.public) }),
            _ => None,
        };
        match ours {
            Some(message) => step.messages.push(Outgoing { target: Target::Node(from), message }),
            // Made, then broadcast (rule 5).
            None => self.want_share(id, proofs, step),
        }
    }

    fn handle_signature(&mut self, from: NodeIndex, id: MessageId, signature: Vec<u8>, step: &mut SignerStep) {
        let Some(signing) = self.signing.get_mut(&id) else { return };
        if signing.signatures_checked.contains(&from) {
            return;
        }
        signing.signatures_checked.push(from);
        if verify_signature(&self.public, &signing.message, &signature) {
            judge(&self.public, self.public.threshold() as usize + 1, signing, step);
            self.finish(id, signature, step);
        } else {
            step.fault(from, FaultKind::InvalidProof);
        }
    }

    /// Rule 4: combine values optimistically; once that failed, from trusted values only.
    fn try_combine(&mut self, id: MessageId, step: &mut SignerStep) {
        let need = self.need();
        let Some(signing) = self.signing.get_mut(&id) else { return };
        match combine_signing(&self.public, need, signing, step) {
            Combination::Signed(signature) => self.finish(id, signature, step),
            Combination::ProofsNeeded => {
                step.broadcast(Message::Ask { id, proofs: true });
                if let Some(share) = &signing.own_share {
                    step.broadcast(Message::Share { id, share: share.to_bytes(&self.public) });
                }
                self.want_share(id, true, step);
            }
            Combination::Wait => {}
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
            kept.retain(|message| message.id() != id);
        }
        step.messages.push(Outgoing { target: Target::Node(peer), message: Message::Signature { id, signature } });
        step
    }
}

/// Name `peer` for this id: the fault, and it is not used again. Returns nothing to use.
fn refuse<T>(peer: &mut Peer, from: NodeIndex, kind: FaultKind, step: &mut SignerStep) -> Option<T> {
    if !peer.refused {
        step.fault(from, kind);
        peer.refused = true;
    }
    None
}

/// Our best share of `id` as a message: with its proof if made, else the value, if made.
fn own_message(public: &PublicKey, id: MessageId, signing: &Signing) -> Option<Message> {
    match (&signing.own_share, &signing.own_value) {
        (Some(share), _) => Some(Message::Share { id, share: share.to_bytes(public) }),
        (None, Some(value)) => Some(Message::Value { id, value: value.to_bytes(public) }),
        (None, None) => None,
    }
}

/// What one combination attempt gave.
enum Combination {
    Signed(Vec<u8>),
    /// The values did not combine (just now): proofs are needed.
    ProofsNeeded,
    /// Not enough shares yet.
    Wait,
}

/// Rule 4 on one id.
fn combine_signing(public: &PublicKey, need: usize, signing: &mut Signing, step: &mut SignerStep) -> Combination {
    if !signing.proofs {
        let peers: Vec<(NodeIndex, ShareValue)> = signing
            .arrival
            .iter()
            .filter_map(|i| signing.peers.get(i).filter(|p| !p.refused).and_then(|p| p.value.clone()).map(|v| (*i, v)))
            .take(need - usize::from(signing.own_value.is_some()))
            .collect();
        let values: Vec<ShareValue> =
            signing.own_value.iter().cloned().chain(peers.iter().map(|(_, v)| v.clone())).collect();
        if values.len() < need {
            return Combination::Wait;
        }
        if let Ok(combined) = combine_values(public, &signing.message, &values) {
            return Combination::Signed(combined.signature);
        }
        signing.proofs = true;
        signing.suspects = peers.into_iter().map(|(i, _)| i).collect();
        return combine_trusted(public, need, signing, step).map_or(Combination::ProofsNeeded, Combination::Signed);
    }
    combine_trusted(public, need, signing, step).map_or(Combination::Wait, Combination::Signed)
}

/// Once proofs are needed: combine our value and peers' shares whose proofs hold (checked in
/// order of arrival, as needed); then judge the suspects.
fn combine_trusted(public: &PublicKey, need: usize, signing: &mut Signing, step: &mut SignerStep) -> Option<Vec<u8>> {
    let trusted = trusted_values(public, need, signing, None, step);
    if trusted.len() < need {
        return None;
    }
    let signature = match combine_values(public, &signing.message, &trusted) {
        Ok(combined) => combined.signature,
        // Our own value failing means our key share is not the dealer's (a local fault, not a
        // peer's): the peers' proven shares still make the signature.
        Err(_) if signing.own_value.is_some() => {
            signing.own_value = None;
            let trusted = trusted_values(public, need, signing, None, step);
            if trusted.len() < need {
                return None;
            }
            combine_values(public, &signing.message, &trusted).ok()?.signature
        }
        Err(_) => return None,
    };
    judge(public, need, signing, step);
    Some(signature)
}

/// Once signed: name each peer whose value was in the failed combination and does not combine
/// with `t` trusted values.
fn judge(public: &PublicKey, need: usize, signing: &mut Signing, step: &mut SignerStep) {
    for suspect in std::mem::take(&mut signing.suspects) {
        let Some(value) = signing.peers.get(&suspect).filter(|p| !p.refused).and_then(|p| p.value.clone()) else {
            continue;
        };
        let mut others = trusted_values(public, need - 1, signing, Some(suspect), step);
        if others.len() + 1 < need {
            continue;
        }
        others.push(value);
        if combine_values(public, &signing.message, &others).is_err() {
            if let Some(peer) = signing.peers.get_mut(&suspect) {
                refuse::<()>(peer, suspect, FaultKind::InvalidProof, step);
            }
        }
    }
}

/// Up to `count` values known good: ours first, then peers' (not `except`) whose proofs hold,
/// checking proofs in order of arrival until there are enough.
fn trusted_values(
    public: &PublicKey,
    count: usize,
    signing: &mut Signing,
    except: Option<NodeIndex>,
    step: &mut SignerStep,
) -> Vec<ShareValue> {
    let mut trusted: Vec<ShareValue> = signing.own_value.iter().take(count).cloned().collect();
    for index in signing.arrival.clone() {
        if trusted.len() >= count {
            break;
        }
        if Some(index) == except {
            continue;
        }
        let Some(peer) = signing.peers.get_mut(&index).filter(|p| !p.refused) else { continue };
        let Some((share, standing)) = &peer.share else { continue };
        if *standing == Standing::Unverified && !verify_share(public, &signing.message, share) {
            refuse::<()>(peer, index, FaultKind::InvalidProof, step);
            continue;
        }
        trusted.push(share.share_value());
        if let Some((_, standing)) = &mut peer.share {
            *standing = Standing::Valid;
        }
    }
    trusted
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
        let mut step = SignerStep::default();
        match input {
            Input::Sign(message) => self.sign(message, &mut step),
            Input::Retry(message) => self.retry(message, &mut step),
            Input::Computed(computed) => self.computed(computed, &mut step),
            Input::Answer { peer, id, signature } => return Ok(self.answer(peer, id, signature)),
        }
        Ok(step)
    }

    fn handle_message(&mut self, from: NodeIndex, message: Message, _rng: &mut dyn rand::RngCore) -> SignerStep {
        let mut step = SignerStep::default();
        if from == self.our_index || !self.quorum.contains(from) {
            // Our own broadcast coming back, or no replica at all (the transport refuses those).
            return step;
        }
        let id = message.id();
        if self.signing.contains_key(&id) {
            self.handle_signing(from, message, &mut step);
            self.try_combine(id, &mut step);
        } else if !matches!(message, Message::Signature { .. }) {
            self.handle_other(from, message, &mut step);
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
