//! `EpochSigner`: the replicas threshold-sign each epoch's root once, as a sans-IO protocol.
//!
//! # The protocol, as rules
//!
//! 1. Upon `Sign(root)` for epoch `e` (the host applied `e` and its leaves are durable): compute
//!    our share on `root` (deterministic: BLS), broadcast `SHARE(root, share)`, and take in the
//!    shares kept for `e` before (rule 4).
//! 2. Upon `SHARE(root', s)` from `p` for an epoch `e` we are signing: the first message of each
//!    peer per epoch counts; a second, different one is an equivocation, the same one again is a
//!    resend. A share on another root than ours is `InvalidCheckpoint` (it does not verify on
//!    ours), bytes that are no point `Undecodable`. A counted share arrived after we
//!    broadcast ours, so `p` may have been down when ours went out: we send ours to `p` as a
//!    `SHARE-REPLY` (the same for a resend: `p` may have restarted). A `SHARE-REPLY` counts like a
//!    `SHARE` but is never answered (rules 2, 4 and 5): answering replies would bounce shares
//!    between two replicas until both certified.
//! 3. As soon as `t + 1` shares on our root are in (ours first, then the peers' in order of
//!    arrival), combine them and verify the **combined** signature only (one pairing check). If it
//!    fails, verify every share one by one — from then on each new share on arrival — name each
//!    bad one as an `InvalidCheckpoint` fault, and combine from `t + 1` good ones.
//! 4. Upon `SHARE` for an epoch we have no root for yet, at most `epochs_ahead_max` past the
//!    highest epoch we signed: keep the first one per peer until rule 1. Further ahead: drop it
//!    (not a fault: an honest peer may be ahead of us; it answers our own share later).
//! 5. Upon `SHARE(root, s)` for an epoch already certified here: answer `p` with the
//!    `CERTIFICATE` (a replica that was down finishes with one message). For a certified epoch
//!    this signer no longer keeps, the host is asked (`Output::CertificateAsked`) to answer from
//!    its store (`Input::Answer`).
//! 6. Upon `CERTIFICATE(root, signature)` for an epoch we are signing, with our root: verify it
//!    (once per peer and epoch) and take it as ours; a bad one, or one on another root, is `InvalidCheckpoint`.
//!
//! # Bounds against a Byzantine signer
//!
//! - Shares kept before we sign: at most `epochs_ahead_max × (n − 1)` (one per peer and epoch);
//!   shares for epochs further ahead, or that equivocate, are not kept.
//! - Per epoch being signed: one entry per peer (the first message), one certificate check per
//!   peer; so at most `1 + n + 1` pairing checks for shares and `n` for certificates.
//! - Certificates kept: the `certificates_kept` most recent; older ones come from the host's store.
//! - Epochs being signed: the host's own pace (one per `Sign` not yet certified), never a peer's.
//! - Replies (our share, a certificate, a request to the host) are one per message received, so
//!   replays cost the replayer as much as us and grow no state.
//!
//! # Deviations
//!
//! - Fault kinds: shares and certificates that do not verify on the epoch's root are
//!   `InvalidCheckpoint`, the kind of the other threshold-signed statement; kinds of their own
//!   would need a label in the replica's fault metrics, which the host's wiring can add.
//! - hbbft's `ThresholdSign` verifies every share on arrival; we verify only the combined
//!   signature while no share has been bad (one pairing check per epoch instead of `t + 1`).
//! - Retransmission is the transport's; the only loss it cannot repair is at a restart, which is
//!   why rule 2 answers shares that come after ours and rule 5 answers with the certificate.

use std::collections::BTreeMap;
use std::sync::Arc;

use blsttc::{G2Affine, Signature, SignatureShare, SIG_SIZE};
use fides_crypto::ThresholdKeys;
use fides_types::codec::{DecodeError, Reader, Wire};
use fides_types::{FaultKind, NodeIndex, Outgoing, Protocol, Quorum, Step, Target};

use super::{Certificate, Digest, EpochRoot};

/// Bounds of an [`EpochSigner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignerConfig {
    /// How many epochs past the highest one we signed a peer's share is kept for, until we sign
    /// that epoch ourselves.
    pub epochs_ahead_max: u64,
    /// How many of the most recent certificates are kept in memory, to answer late peers.
    pub certificates_kept: usize,
}

impl Default for SignerConfig {
    fn default() -> Self {
        SignerConfig { epochs_ahead_max: 256, certificates_kept: 1024 }
    }
}

/// What the host gives the signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Our root of an epoch, once the epoch's leaves are durable. Giving it again (after a
    /// restart, say) sends our share again; shares are deterministic, so that contradicts nothing.
    Sign(EpochRoot),
    /// The certificate the host's store holds for an epoch a peer asked about
    /// ([`Output::CertificateAsked`]): it is sent to that peer.
    Answer {
        /// The peer that asked.
        peer: NodeIndex,
        /// The certificate, as this replica stored it.
        certificate: Certificate,
    },
}

/// What replicas send each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A signature share on a root.
    Share {
        /// The root signed.
        root: EpochRoot,
        /// The share, compressed G2.
        share: [u8; SIG_SIZE],
    },
    /// An epoch's certificate, in answer to a share for an epoch certified already.
    Certificate(Certificate),
    /// Our share, in answer to a peer's [`Message::Share`] (it may not have ours). Counted like a
    /// share, but never answered: answering answers would bounce shares between two replicas
    /// until both certified.
    ShareReply {
        /// The root signed.
        root: EpochRoot,
        /// The share, compressed G2.
        share: [u8; SIG_SIZE],
    },
}

const TAG_SHARE: u8 = 1;
const TAG_CERTIFICATE: u8 = 2;
const TAG_SHARE_REPLY: u8 = 3;

impl Wire for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Share { root, share } => {
                out.push(TAG_SHARE);
                root.encode(out);
                out.extend_from_slice(share);
            }
            Message::Certificate(certificate) => {
                out.push(TAG_CERTIFICATE);
                certificate.encode(out);
            }
            Message::ShareReply { root, share } => {
                out.push(TAG_SHARE_REPLY);
                root.encode(out);
                out.extend_from_slice(share);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match reader.u8()? {
            TAG_SHARE => Ok(Message::Share { root: EpochRoot::decode(reader)?, share: reader.array()? }),
            TAG_CERTIFICATE => Ok(Message::Certificate(Certificate::decode(reader)?)),
            TAG_SHARE_REPLY => Ok(Message::ShareReply { root: EpochRoot::decode(reader)?, share: reader.array()? }),
            other => Err(DecodeError::Invalid { what: "epoch signer message tag", value: u64::from(other) }),
        }
    }
}

/// What the signer gives the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// An epoch is certified: store the certificate, answer the clients waiting on the epoch.
    Certified(Certificate),
    /// A peer sent a share for `epoch`, which this signer no longer remembers (certified long
    /// ago, or never signed here): if the host's store holds its certificate, it gives it back
    /// as [`Input::Answer`].
    CertificateAsked {
        /// The peer.
        peer: NodeIndex,
        /// The epoch.
        epoch: u64,
    },
}

/// A local misuse of the signer (never something a peer did).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Two different roots were given for one epoch: the host's state changed under it.
    #[error("epoch {epoch}: asked to sign {given:?} after {ours:?}")]
    RootChanged {
        /// The epoch.
        epoch: u64,
        /// The root signed first.
        ours: EpochRoot,
        /// The root given now.
        given: EpochRoot,
    },
    /// Our root differs from the one the cluster certified: this replica's state diverged.
    #[error("epoch {epoch}: our root {given:?} is not the certified {certified:?}")]
    Diverged {
        /// The epoch.
        epoch: u64,
        /// The root certified by `t + 1` replicas.
        certified: EpochRoot,
        /// Ours.
        given: EpochRoot,
    },
}

type SignerStep = Step<Message, Output>;

/// Where a peer's share of an epoch being signed stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// On our root, not verified alone (it may have been in a combination that verified).
    Unverified,
    /// Verified alone.
    Valid,
    /// Refused: not a point, not on our root, or it failed verification.
    Refused,
}

/// The first message of one replica for an epoch.
#[derive(Clone, Debug)]
struct Heard {
    root: EpochRoot,
    bytes: [u8; SIG_SIZE],
    share: Option<SignatureShare>,
    standing: Standing,
}

/// An epoch we have our root for and no certificate yet.
#[derive(Clone, Debug)]
struct Signing {
    root: EpochRoot,
    point: G2Affine,
    /// Each replica's first share, ours included; at most `n` entries.
    heard: BTreeMap<NodeIndex, Heard>,
    /// Replicas in the order their shares arrived, ours first; at most `n`.
    arrival: Vec<NodeIndex>,
    /// Whether a combination of unverified shares failed: from then on shares are verified alone.
    optimistic_failed: bool,
    /// Peers whose certificate for this epoch was checked; at most `n`.
    certificates_checked: Vec<NodeIndex>,
}

/// A share kept for an epoch we have not signed yet.
#[derive(Clone, Debug)]
struct Early {
    from: NodeIndex,
    root: EpochRoot,
    bytes: [u8; SIG_SIZE],
    share: SignatureShare,
}

/// One replica's signer of epoch certificates (see the module doc for the rules).
pub struct EpochSigner {
    keys: Arc<ThresholdKeys>,
    cluster: Digest,
    quorum: Quorum,
    our_index: NodeIndex,
    config: SignerConfig,
    /// Epochs being signed.
    signing: BTreeMap<u64, Signing>,
    /// Shares for epochs not signed here yet, in order of arrival.
    early: BTreeMap<u64, Vec<Early>>,
    /// The most recent certificates.
    certified: BTreeMap<u64, Certificate>,
    /// One past the highest epoch given to sign (the first epoch shares are kept early for).
    next: u64,
}

impl std::fmt::Debug for EpochSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochSigner")
            .field("our_index", &self.our_index)
            .field("next", &self.next)
            .field("signing", &self.signing.keys().collect::<Vec<_>>())
            .field("early", &self.early.iter().map(|(e, v)| (e, v.len())).collect::<Vec<_>>())
            .field("certified", &self.certified.len())
            .finish_non_exhaustive()
    }
}

impl EpochSigner {
    /// The signer of replica `our_index` for cluster `cluster`, resuming at epoch `next` (the
    /// first epoch the host has not applied; 0 for a new replica). Shares for epochs from `next`
    /// on are kept until we sign them.
    pub fn new(
        keys: Arc<ThresholdKeys>,
        cluster: Digest,
        quorum: Quorum,
        our_index: NodeIndex,
        config: SignerConfig,
        next: u64,
    ) -> Self {
        EpochSigner {
            keys,
            cluster,
            quorum,
            our_index,
            config,
            signing: BTreeMap::new(),
            early: BTreeMap::new(),
            certified: BTreeMap::new(),
            next,
        }
    }

    /// The certificate of `epoch`, if certified here and still kept.
    pub fn certificate(&self, epoch: u64) -> Option<&Certificate> {
        self.certified.get(&epoch)
    }

    /// Epochs given to sign and not certified yet.
    pub fn signing(&self) -> impl Iterator<Item = u64> + '_ {
        self.signing.keys().copied()
    }

    /// Shares kept for epochs not signed here yet (bounded by `epochs_ahead_max × (n − 1)`).
    pub fn early_shares(&self) -> usize {
        self.early.values().map(Vec::len).sum()
    }

    fn sign(&mut self, root: EpochRoot) -> Result<SignerStep, Error> {
        let epoch = root.epoch;
        let mut step = SignerStep::default();
        if let Some(certificate) = self.certified.get(&epoch) {
            if certificate.root != root {
                return Err(Error::Diverged { epoch, certified: certificate.root, given: root });
            }
            step.outputs.push(Output::Certified(*certificate));
            return Ok(step);
        }
        if let Some(signing) = self.signing.get(&epoch) {
            if signing.root != root {
                return Err(Error::RootChanged { epoch, ours: signing.root, given: root });
            }
            let ours = &signing.heard[&self.our_index];
            step.broadcast(Message::Share { root, share: ours.bytes });
            return Ok(step);
        }
        let point = root.point(&self.cluster);
        let share = self.keys.sign_share(point);
        let bytes = share.to_bytes();
        step.broadcast(Message::Share { root, share: bytes });
        let ours = Heard { root, bytes, share: Some(share), standing: Standing::Unverified };
        let mut signing = Signing {
            root,
            point,
            heard: BTreeMap::from([(self.our_index, ours)]),
            arrival: vec![self.our_index],
            optimistic_failed: false,
            certificates_checked: Vec::new(),
        };
        for early in self.early.remove(&epoch).unwrap_or_default() {
            let standing = if early.root == root {
                signing.arrival.push(early.from);
                Standing::Unverified
            } else {
                step.fault(early.from, FaultKind::InvalidCheckpoint);
                Standing::Refused
            };
            let heard = Heard { root: early.root, bytes: early.bytes, share: Some(early.share), standing };
            signing.heard.insert(early.from, heard);
        }
        self.signing.insert(epoch, signing);
        self.next = self.next.max(epoch.saturating_add(1));
        // Shares of epochs passed over (nothing to sign here) are of no use any more.
        let next = self.next;
        self.early.retain(|e, _| *e >= next);
        self.try_combine(epoch, &mut step);
        Ok(step)
    }

    /// A share (`reply`: a [`Message::ShareReply`], which gets no answer).
    fn handle_share(
        &mut self,
        from: NodeIndex,
        root: EpochRoot,
        bytes: [u8; SIG_SIZE],
        reply: bool,
        step: &mut SignerStep,
    ) {
        let epoch = root.epoch;
        if let Some(certificate) = self.certified.get(&epoch) {
            if certificate.root != root {
                step.fault(from, FaultKind::InvalidCheckpoint);
            } else if !reply {
                // A reply answered ours: nothing to tell its sender.
                step.messages
                    .push(Outgoing { target: Target::Node(from), message: Message::Certificate(*certificate) });
            }
            return;
        }
        if self.signing.contains_key(&epoch) {
            self.handle_signing_share(from, root, bytes, reply, step);
            return;
        }
        if epoch < self.next {
            if !reply {
                step.outputs.push(Output::CertificateAsked { peer: from, epoch });
            }
            return;
        }
        if epoch >= self.next.saturating_add(self.config.epochs_ahead_max) {
            return;
        }
        let kept = self.early.entry(epoch).or_default();
        if let Some(earlier) = kept.iter().find(|e| e.from == from) {
            if earlier.root != root || earlier.bytes != bytes {
                step.fault(from, FaultKind::Equivocation);
            }
            return;
        }
        match SignatureShare::from_bytes(bytes) {
            Ok(share) => kept.push(Early { from, root, bytes, share }),
            Err(_) => step.fault(from, FaultKind::Undecodable),
        }
    }

    fn handle_signing_share(
        &mut self,
        from: NodeIndex,
        root: EpochRoot,
        bytes: [u8; SIG_SIZE],
        reply: bool,
        step: &mut SignerStep,
    ) {
        let epoch = root.epoch;
        let Some(signing) = self.signing.get_mut(&epoch) else { return };
        let ours = signing.heard[&self.our_index].bytes;
        let answer =
            Outgoing { target: Target::Node(from), message: Message::ShareReply { root: signing.root, share: ours } };
        if let Some(earlier) = signing.heard.get(&from) {
            if earlier.root != root || earlier.bytes != bytes {
                step.fault(from, FaultKind::Equivocation);
            } else if earlier.root == signing.root && !reply {
                // A resend: the peer may have restarted and lost ours.
                step.messages.push(answer);
            }
            return;
        }
        if root != signing.root {
            step.fault(from, FaultKind::InvalidCheckpoint);
            signing.heard.insert(from, Heard { root, bytes, share: None, standing: Standing::Refused });
            return;
        }
        let Ok(share) = SignatureShare::from_bytes(bytes) else {
            step.fault(from, FaultKind::Undecodable);
            signing.heard.insert(from, Heard { root, bytes, share: None, standing: Standing::Refused });
            return;
        };
        signing.heard.insert(from, Heard { root, bytes, share: Some(share), standing: Standing::Unverified });
        signing.arrival.push(from);
        if !reply {
            // It came after ours went out: it may not have ours.
            step.messages.push(answer);
        }
        self.try_combine(epoch, step);
    }

    fn handle_certificate(&mut self, from: NodeIndex, certificate: Certificate, step: &mut SignerStep) {
        let epoch = certificate.root.epoch;
        let Some(signing) = self.signing.get_mut(&epoch) else { return };
        if signing.certificates_checked.contains(&from) {
            return;
        }
        signing.certificates_checked.push(from);
        if certificate.root != signing.root {
            step.fault(from, FaultKind::InvalidCheckpoint);
            return;
        }
        let public = self.keys.public().public_key();
        let valid = Signature::from_bytes(certificate.signature).is_ok_and(|s| public.verify_g2(&s, signing.point));
        if valid {
            self.certify(certificate, step);
        } else {
            step.fault(from, FaultKind::InvalidCheckpoint);
        }
    }

    /// Rule 3: combine optimistically, and once that failed, from shares verified alone.
    fn try_combine(&mut self, epoch: u64, step: &mut SignerStep) {
        let need = self.quorum.one_honest() as usize;
        let Some(signing) = self.signing.get_mut(&epoch) else { return };
        if let Some(certificate) = combine(&self.keys, self.our_index, need, signing, step) {
            self.certify(certificate, step);
        }
    }

    fn certify(&mut self, certificate: Certificate, step: &mut SignerStep) {
        let epoch = certificate.root.epoch;
        self.signing.remove(&epoch);
        self.certified.insert(epoch, certificate);
        while self.certified.len() > self.config.certificates_kept {
            self.certified.pop_first();
        }
        step.outputs.push(Output::Certified(certificate));
    }
}

/// Rule 3 on one epoch: the certificate, if `need` shares make one.
fn combine(
    keys: &ThresholdKeys,
    our_index: NodeIndex,
    need: usize,
    signing: &mut Signing,
    step: &mut SignerStep,
) -> Option<Certificate> {
    let public = keys.public();
    let certificate = |signature: Signature| Certificate { root: signing.root, signature: signature.to_bytes() };
    let usable = |heard: &Heard, valid_only: bool| match heard.standing {
        Standing::Valid => heard.share.clone(),
        Standing::Unverified if !valid_only => heard.share.clone(),
        _ => None,
    };
    if !signing.optimistic_failed {
        let chosen: Vec<(usize, SignatureShare)> = signing
            .arrival
            .iter()
            .filter_map(|i| usable(&signing.heard[i], false).map(|s| (i.as_usize(), s)))
            .take(need)
            .collect();
        if chosen.len() < need {
            return None;
        }
        let combined = public.combine_signatures(chosen.iter().map(|(i, s)| (*i, s)));
        if let Some(signature) = combined.ok().filter(|s| public.public_key().verify_g2(s, signing.point)) {
            return Some(certificate(signature));
        }
        signing.optimistic_failed = true;
    }
    for index in &signing.arrival {
        let Some(heard) = signing.heard.get_mut(index) else { continue };
        if heard.standing != Standing::Unverified {
            continue;
        }
        if heard.share.as_ref().is_some_and(|s| keys.verify_share(*index, s, signing.point)) {
            heard.standing = Standing::Valid;
        } else {
            heard.standing = Standing::Refused;
            // Our own share failing means our key share is not the dealer's (a local fault, not
            // a peer's); the peers' good shares still make the certificate.
            if *index != our_index {
                step.fault(*index, FaultKind::InvalidCheckpoint);
            }
        }
    }
    let good: Vec<(usize, SignatureShare)> = signing
        .arrival
        .iter()
        .filter_map(|i| usable(&signing.heard[i], true).map(|s| (i.as_usize(), s)))
        .take(need)
        .collect();
    if good.len() < need {
        return None;
    }
    // Shares that verify alone interpolate to the signature; it is checked all the same, so that
    // nothing unverified is ever output.
    let combined = public.combine_signatures(good.iter().map(|(i, s)| (*i, s)));
    combined.ok().filter(|s| public.public_key().verify_g2(s, signing.point)).map(certificate)
}

impl Protocol for EpochSigner {
    type Input = Input;
    type Message = Message;
    type Output = Output;
    type Error = Error;

    fn our_index(&self) -> NodeIndex {
        self.our_index
    }

    fn handle_input(&mut self, input: Input, _rng: &mut dyn rand::RngCore) -> Result<SignerStep, Error> {
        match input {
            Input::Sign(root) => self.sign(root),
            Input::Answer { peer, certificate } => {
                let mut step = SignerStep::default();
                step.messages.push(Outgoing { target: Target::Node(peer), message: Message::Certificate(certificate) });
                Ok(step)
            }
        }
    }

    fn handle_message(&mut self, from: NodeIndex, message: Message, _rng: &mut dyn rand::RngCore) -> SignerStep {
        let mut step = SignerStep::default();
        if from == self.our_index || !self.quorum.contains(from) {
            // Our own broadcast coming back, or no replica at all (the transport refuses those).
            return step;
        }
        match message {
            Message::Share { root, share } => self.handle_share(from, root, share, false, &mut step),
            Message::ShareReply { root, share } => self.handle_share(from, root, share, true, &mut step),
            Message::Certificate(certificate) => self.handle_certificate(from, certificate, &mut step),
        }
        step
    }

    /// Never: the signer lives as long as the replica.
    fn terminated(&self) -> bool {
        false
    }
}
