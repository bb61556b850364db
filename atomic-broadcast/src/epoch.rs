//! Atomic broadcast in epochs (HoneyBadgerBFT with agreed time): one total order of client
//! requests that t Byzantine replicas can neither fork, stall nor censor by content.
//!
//! # Rules
//!
//! - A replica keeps a bounded queue of requests, each identified by `(client, id)`.
//! - **Epoch e** is a common subset of session `session || e`. A replica starts it when it has
//!   requests not yet proposed and `e` is within `epochs_in_flight` of the next epoch to deliver,
//!   or joins it (and every epoch before it) on the first message of `e`. Starting means proposing: a random
//!   `⌈batch_size / n⌉` of the first `batch_size` queued requests not proposed in an epoch still
//!   in flight, with the replica's clock, as `SHA-256(contribution) || contribution`, encrypted
//!   under the cluster's threshold encryption key — nobody can censor by content.
//! - Once the subset of epoch e is agreed, each valid ciphertext in it gets our decryption share.
//!   `t + 1` shares are combined optimistically; the digest inside tells a correct decryption, and
//!   only when it fails is each share verified (the bad ones are faults; their senders' later
//!   shares are verified first). A ciphertext that does not verify, or whose correct decryption
//!   is no contribution, is skipped.
//! - Epochs are delivered in order. The **agreed time** of an epoch is the lower median of the
//!   clocks of its contributions (at least `n - t`, so at most `t` are Byzantine and the median
//!   lies within the honest clocks), and never less than the previous epoch's.
//! - A request is executed at most once: an id already executed within the last
//!   `dedup_window_epochs` epochs is dropped from a batch. An id older than the window is
//!   forgotten and would be executed again; clients must not reuse ids (see
//!   `docs/atomic-broadcast.md`).
//!
//! Several epochs run at once; each epoch's common subset is kept until it terminated (others
//! may still need our messages), then dropped. Messages of epochs up to `epochs_in_flight` ahead
//! are handled at once, those up to `epochs_future_max` ahead are kept until we run their epoch,
//! later ones are dropped; a replica that finds itself behind asks for a catch-up (see
//! [`crate::checkpoint`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use fides_crypto::blsttc::{DecryptionShare, SignatureShare, PK_SIZE, SIG_SIZE};
use fides_crypto::envelope::{verify_capsules, Envelope, CAPSULE_LEN, TAG_LEN};
use fides_crypto::{domain, tagged, ThresholdKeys};
use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};
use fides_types::{FaultKind, NodeIndex, Protocol, Quorum, Step};
use rand::seq::SliceRandom;

use crate::acs::{self, CommonSubset, Subset};
use crate::checkpoint::{
    agreed_batches, log_genesis, log_next, vouch, window_digest, CatchUp, Checkpoint, Digest, Statement, Vouched,
    WindowEntry, CATCH_UP_BATCHES_MAX,
};
use crate::rbc::{self, Delivery};

mod state;

/// A client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client.
    pub client: u64,
    /// The client's id for it; `(client, id)` names the request.
    pub id: u64,
    /// What the client asks.
    pub payload: Vec<u8>,
}

/// What names a request for at-most-once: the client, its id and the SHA-256 digest of its
/// payload. `(client, id)` is not authenticated, so it cannot name a request alone: a Byzantine
/// replica could order the victim's next ids with payloads of its own first and make the real
/// requests duplicates. With the digest in the key, its copies are other requests (ordered, and
/// judged by the service, which checks the authority of whoever signs a payload), and the real
/// ones are still ordered and answered. Resending the same request never orders it twice.
pub type RequestKey = (u64, u64, Digest);

impl Request {
    /// The request's key: `(client, id, SHA-256(payload))`.
    pub fn key(&self) -> RequestKey {
        (self.client, self.id, payload_digest(&self.payload))
    }
}

/// `SHA-256(payload)`, the digest in a [`RequestKey`] (plain, so that a client computes it with
/// no knowledge of Fides's domain tags).
pub fn payload_digest(payload: &[u8]) -> Digest {
    fides_crypto::sha256(payload)
}

/// A queued request with its key (computed once: the key hashes the payload).
#[derive(Clone, Debug)]
struct Queued {
    key: RequestKey,
    request: Request,
}

impl Queued {
    fn key(&self) -> RequestKey {
        self.key
    }
}

/// Checkpoint epochs we delivered whose checkpoint is not stable yet that we keep.
const PENDING_DELIVERED_MAX: usize = 4;

/// The largest payload the decoder accepts.
pub const PAYLOAD_WIRE_MAX: usize = 1024 * 1024;
/// The most requests one contribution may hold.
pub const CONTRIBUTION_REQUESTS_MAX: u32 = 1 << 20;

impl Wire for Request {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.client.to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        put_bytes(out, &self.payload);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Request { client: reader.u64()?, id: reader.u64()?, payload: reader.bytes(PAYLOAD_WIRE_MAX)?.to_vec() })
    }
}

/// What one replica contributes to an epoch (inside the ciphertext).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Contribution {
    clock: u64,
    requests: Vec<Request>,
}

impl Wire for Contribution {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.clock.to_le_bytes());
        put_requests(out, &self.requests);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Contribution { clock: reader.u64()?, requests: get_requests(reader)? })
    }
}

impl Contribution {
    /// Decode a contribution within the bounds that make it valid, the same at every replica (they
    /// come from the cluster's shared configuration): at most `requests_max` requests, each
    /// payload at most `payload_len_max` bytes. A count or a length beyond them is `TooLong`
    /// before anything is allocated for it. The envelope's size bound alone would let one
    /// Byzantine replica put some 800,000 empty requests in each epoch (16 MB at the defaults) into
    /// every replica's at-most-once window and answers.
    fn decode_bounded(bytes: &[u8], requests_max: usize, payload_len_max: usize) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let clock = reader.u64()?;
        let count = reader.u32()?;
        if count as usize > requests_max {
            return Err(DecodeError::TooLong { len: u64::from(count), max: requests_max as u64 });
        }
        let mut requests = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let (client, id) = (reader.u64()?, reader.u64()?);
            let payload = reader.bytes(payload_len_max)?.to_vec();
            requests.push(Request { client, id, payload });
        }
        reader.finish()?;
        Ok(Contribution { clock, requests })
    }
}

/// A list of requests: count (u32 LE), then each.
pub(crate) fn put_requests(out: &mut Vec<u8>, requests: &[Request]) {
    out.extend_from_slice(&(requests.len() as u32).to_le_bytes());
    for request in requests {
        request.encode(out);
    }
}

/// A list of requests, at most [`CONTRIBUTION_REQUESTS_MAX`].
pub(crate) fn get_requests(reader: &mut Reader<'_>) -> Result<Vec<Request>, DecodeError> {
    let count = reader.u32()?;
    if count > CONTRIBUTION_REQUESTS_MAX {
        return Err(DecodeError::TooLong { len: u64::from(count), max: u64::from(CONTRIBUTION_REQUESTS_MAX) });
    }
    (0..count).map(|_| Request::decode(reader)).collect()
}

/// An ordered batch: what an epoch delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The epoch.
    pub epoch: u64,
    /// The agreed time (the unit is the caller's clock's).
    pub time: u64,
    /// The requests, each executed here for the first time.
    pub requests: Vec<Request>,
}

/// What the caller gives a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A request to order.
    Submit(Request),
    /// The local clock's reading.
    Clock(u64),
    /// Both at once: the clock, then requests (for starting a replica).
    Start {
        /// The clock.
        clock: u64,
        /// Requests.
        requests: Vec<Request>,
    },
    /// We were down or cut off (e.g. the process restarted with its state): ask the others for
    /// what we missed.
    Recover,
    /// The application's digest of its state after it applied the batch of `epoch`, a checkpoint
    /// epoch (`(epoch + 1) % checkpoint_interval == 0`); the replicas threshold-sign it.
    ApplicationDigest {
        /// The epoch.
        epoch: u64,
        /// The digest.
        digest: Digest,
    },
}

/// What atomic broadcast tells the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// The next batch, to apply in order.
    Batch(Batch),
    /// A checkpoint became stable: signed by the cluster.
    Checkpoint(Checkpoint),
    /// We were behind and jumped to this checkpoint: install the application state whose digest
    /// it names (from any peer: the digest is signed), then apply the batches that follow.
    Install(Checkpoint),
}

/// A message of atomic broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// For the common subset of an epoch.
    Subset {
        /// The epoch.
        epoch: u64,
        /// The message.
        message: acs::Message,
    },
    /// The sender's decryption share of `proposer`'s ciphertext in `epoch`.
    Decryption {
        /// The epoch.
        epoch: u64,
        /// Whose ciphertext.
        proposer: NodeIndex,
        /// The share, compressed.
        share: [u8; PK_SIZE],
    },
    /// The sender's signature share on its checkpoint statement after `epoch`.
    CheckpointShare {
        /// The checkpoint epoch.
        epoch: u64,
        /// The share, compressed.
        share: [u8; SIG_SIZE],
    },
    /// The sender is behind: its next epoch to deliver is `next`.
    CatchUpRequest {
        /// Its next epoch.
        next: u64,
    },
    /// An answer to a catch-up request.
    CatchUp(CatchUp),
}

impl Wire for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Subset { epoch, message } => {
                out.push(0);
                out.extend_from_slice(&epoch.to_le_bytes());
                message.encode(out);
            }
            Message::Decryption { epoch, proposer, share } => {
                out.push(1);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&proposer.0.to_le_bytes());
                out.extend_from_slice(share);
            }
            Message::CheckpointShare { epoch, share } => {
                out.push(2);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(share);
            }
            Message::CatchUpRequest { next } => {
                out.push(3);
                out.extend_from_slice(&next.to_le_bytes());
            }
            Message::CatchUp(answer) => {
                out.push(4);
                answer.encode(out);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Message::decode_bounded(reader, rbc::SHARD_WIRE_MAX)
    }
}

impl Message {
    /// Decode a message whose broadcast shard is at most `shard_len_max` bytes: a longer one is
    /// refused before it is copied (see [`AtomicBroadcast::decode_message`]).
    pub fn decode_bounded(reader: &mut Reader<'_>, shard_len_max: usize) -> Result<Self, DecodeError> {
        match reader.u8()? {
            0 => Ok(Message::Subset {
                epoch: reader.u64()?,
                message: acs::Message::decode_bounded(reader, shard_len_max)?,
            }),
            1 => Ok(Message::Decryption {
                epoch: reader.u64()?,
                proposer: NodeIndex(reader.u32()?),
                share: reader.array()?,
            }),
            2 => Ok(Message::CheckpointShare { epoch: reader.u64()?, share: reader.array()? }),
            3 => Ok(Message::CatchUpRequest { next: reader.u64()? }),
            4 => Ok(Message::CatchUp(CatchUp::decode(reader)?)),
            other => Err(DecodeError::Invalid { what: "message tag", value: u64::from(other) }),
        }
    }
}

/// Configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Names this broadcast; epochs are sessions `session || epoch`.
    pub session: Vec<u8>,
    /// Requests considered per proposal (each replica proposes `⌈batch_size / n⌉` of them).
    pub batch_size: usize,
    /// Epochs started ahead of the next one to deliver.
    pub epochs_in_flight: u64,
    /// Epochs ahead whose messages are kept.
    pub epochs_future_max: u64,
    /// Bound of the request queue.
    pub queue_max: usize,
    /// Longest request payload.
    pub payload_len_max: usize,
    /// Epochs for which executed ids are remembered.
    pub dedup_window_epochs: u64,
    /// Epochs between checkpoints: one after every epoch `e` with `(e + 1) % interval == 0`.
    pub checkpoint_interval: u64,
}

impl Config {
    /// Defaults for session `session`.
    pub fn new(session: impl Into<Vec<u8>>) -> Self {
        Config {
            session: session.into(),
            batch_size: 1_000,
            epochs_in_flight: 3,
            epochs_future_max: 16,
            queue_max: 100_000,
            payload_len_max: 64 * 1024,
            dedup_window_epochs: 10_000,
            checkpoint_interval: 64,
        }
    }
}

/// Local errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The queue is full: try later or another replica.
    #[error("the request queue is full ({0} requests)")]
    QueueFull(usize),
    /// The payload is above the bound.
    #[error("payload of {len} bytes is above the bound of {max}")]
    PayloadTooLong {
        /// Length.
        len: usize,
        /// Bound.
        max: usize,
    },
    /// Our proposal was refused by the common subset.
    #[error(transparent)]
    Subset(#[from] acs::Error),
}

/// The step type of atomic broadcast.
pub type AbcStep = Step<Message, Output>;

/// A checkpoint epoch we delivered, or heard shares for.
#[derive(Default)]
struct Pending {
    /// Time, log and window after the epoch, once we delivered it; with the window itself.
    delivered: Option<(u64, Digest, Digest, Arc<Vec<WindowEntry>>)>,
    /// The statement, once the application gave its digest.
    statement: Option<Statement>,
    shares: BTreeMap<NodeIndex, [u8; SIG_SIZE]>,
}

/// A checkpoint with the at-most-once window it covers.
type CheckpointWithWindow = (Checkpoint, Vec<WindowEntry>);

/// A catch-up we asked for.
struct CatchingUp {
    /// The (t + 1)-th highest epoch heard of when we asked.
    heard: u64,
    /// Verified answers: the checkpoint (with its window) if any, and what they vouch for.
    answers: BTreeMap<NodeIndex, (Option<CheckpointWithWindow>, Vouched)>,
}

#[derive(Default)]
struct Decryption {
    ciphertext: Option<Envelope>,
    shares: BTreeMap<NodeIndex, [u8; PK_SIZE]>,
    /// `None` until decided; `Some(None)` when the proposer's ciphertext holds no contribution.
    contribution: Option<Option<Contribution>>,
}

struct EpochState {
    subset: CommonSubset,
    proposed: bool,
    agreed: Option<BTreeMap<NodeIndex, Decryption>>,
    /// Shares that came before the subset was known: (proposer, sender) → share.
    early: BTreeMap<(NodeIndex, NodeIndex), [u8; PK_SIZE]>,
    delivered: bool,
}

/// The threshold key sets a replica needs.
#[derive(Clone, Debug)]
pub struct Keys {
    /// For the coins of binary agreement.
    pub coin: Arc<ThresholdKeys>,
    /// For the contributions.
    pub encryption: Arc<ThresholdKeys>,
    /// For checkpoints.
    pub signing: Arc<ThresholdKeys>,
}

/// Atomic broadcast at one replica.
pub struct AtomicBroadcast {
    quorum: Quorum,
    our_index: NodeIndex,
    config: Config,
    coin_keys: Arc<ThresholdKeys>,
    encryption_keys: Arc<ThresholdKeys>,
    clock: u64,
    queue: VecDeque<Queued>,
    queued: HashSet<RequestKey>,
    /// Requests proposed in an epoch not yet delivered, with that epoch.
    in_flight: HashMap<RequestKey, u64>,
    /// Requests of other buckets among the first `batch_size` of the queue, with the epoch we
    /// first saw them there.
    waiting: HashMap<RequestKey, u64>,
    epochs: BTreeMap<u64, EpochState>,
    next_epoch: u64,
    time: u64,
    executed: HashSet<RequestKey>,
    /// The ids executed in each epoch still in the at-most-once window.
    window: VecDeque<WindowEntry>,
    share_suspects: BTreeSet<NodeIndex>,
    signing_keys: Arc<ThresholdKeys>,
    /// The log digest after the last delivered epoch.
    log: Digest,
    /// Batches delivered after the latest stable checkpoint (to answer catch-ups).
    retained: VecDeque<Batch>,
    /// The latest stable checkpoint, with its window.
    stable: Option<(Checkpoint, Arc<Vec<WindowEntry>>)>,
    pending: BTreeMap<u64, Pending>,
    /// The highest epoch each replica's messages showed it at.
    heard: BTreeMap<NodeIndex, u64>,
    catching_up: Option<CatchingUp>,
    /// The last catch-up request answered, per replica.
    answered: BTreeMap<NodeIndex, u64>,
    /// Messages of epochs beyond the ones we run, kept until we run them (bounded per sender,
    /// in bytes: see [`AtomicBroadcast::buffered_bytes_max`]).
    buffered: BTreeMap<u64, Vec<(NodeIndex, Message)>>,
    /// Bytes each sender has in `buffered`.
    buffered_bytes: BTreeMap<NodeIndex, usize>,
}

/// What to do with a peer's message before it is logged and handled (see
/// [`AtomicBroadcast::admissible`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Log it and handle it.
    Handle,
    /// It can change nothing here (an epoch delivered and dropped, a catch-up answer nobody
    /// asked for, …): drop it. Not a fault: honest replicas send such messages when they are
    /// ahead of or behind us.
    Ignore,
    /// It only shows that its sender reached `epoch` (too far ahead to keep): pass on just that,
    /// with [`AtomicBroadcast::heard`].
    Heard(u64),
    /// A fault of its sender: drop it and record the fault.
    Fault(FaultKind),
}

/// Bytes a kept message counts for besides its encoding (its place in the buffer).
const BUFFERED_OVERHEAD: usize = 64;

impl std::fmt::Debug for AtomicBroadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicBroadcast")
            .field("our_index", &self.our_index)
            .field("next_epoch", &self.next_epoch)
            .field("queue", &self.queue.len())
            .field("in_flight", &self.in_flight.values().collect::<BTreeSet<_>>())
            .field(
                "epochs",
                &self
                    .epochs
                    .iter()
                    .map(|(e, s)| {
                        let agreed = s.agreed.as_ref().map(|a| {
                            a.iter().map(|(p, d)| (p.0, d.contribution.is_some(), d.shares.len())).collect::<Vec<_>>()
                        });
                        (*e, s.proposed, agreed, s.delivered, s.subset.terminated())
                    })
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl AtomicBroadcast {
    /// A replica with the cluster's coin, encryption and (checkpoint) signing keys.
    pub fn new(quorum: Quorum, our_index: NodeIndex, config: Config, keys: Keys) -> Self {
        let Keys { coin: coin_keys, encryption: encryption_keys, signing: signing_keys } = keys;
        let log = log_genesis(&config.session);
        AtomicBroadcast {
            quorum,
            our_index,
            config,
            coin_keys,
            encryption_keys,
            clock: 0,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            in_flight: HashMap::new(),
            waiting: HashMap::new(),
            epochs: BTreeMap::new(),
            next_epoch: 0,
            time: 0,
            executed: HashSet::new(),
            window: VecDeque::new(),
            share_suspects: BTreeSet::new(),
            signing_keys,
            log,
            retained: VecDeque::new(),
            stable: None,
            pending: BTreeMap::new(),
            heard: BTreeMap::new(),
            catching_up: None,
            answered: BTreeMap::new(),
            buffered: BTreeMap::new(),
            buffered_bytes: BTreeMap::new(),
        }
    }

    /// The latest stable checkpoint.
    pub fn stable_checkpoint(&self) -> Option<&Checkpoint> {
        self.stable.as_ref().map(|(c, _)| c)
    }

    /// The log digest after the last delivered epoch.
    pub fn log_digest(&self) -> Digest {
        self.log
    }

    /// The next epoch to deliver.
    pub fn next_epoch(&self) -> u64 {
        self.next_epoch
    }

    /// Whether `epoch` runs here (started and not yet dropped).
    pub fn runs_epoch(&self, epoch: u64) -> bool {
        self.epochs.contains_key(&epoch)
    }

    /// Requests waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing of ours is under way: no request queued, every epoch started delivered
    /// with its agreements terminated (messages kept for later epochs and a catch-up under way do
    /// not count). Snapshots no longer need it (they hold the whole state: see
    /// [`AtomicBroadcast::encode_state`]); tests use it to tell a snapshot taken mid-epoch.
    pub fn is_quiescent(&self) -> bool {
        self.queue.is_empty()
            && self
                .epochs
                .iter()
                .all(|(epoch, state)| *epoch < self.next_epoch && state.delivered && state.subset.terminated())
    }

    /// The delivered state as a catch-up answer: the latest stable checkpoint with its window, and
    /// every batch delivered after it (`None` if some of them are no longer kept, or if the
    /// replica is not quiescent). Messages kept for later epochs are not in it.
    pub fn snapshot(&self) -> Option<CatchUp> {
        if !self.is_quiescent() {
            return None;
        }
        let checkpoint = self.stable.as_ref().map(|(c, window)| (c.clone(), window.as_ref().clone()));
        let first = checkpoint.as_ref().map_or(0, |(c, _)| c.epoch + 1);
        let batches: Vec<Batch> = self.retained.iter().filter(|b| b.epoch >= first).cloned().collect();
        let contiguous = batches.iter().enumerate().all(|(i, b)| b.epoch == first + i as u64);
        let complete = first + batches.len() as u64 == self.next_epoch;
        (contiguous && complete).then_some(CatchUp { checkpoint, batches })
    }

    /// Bring a new replica to the state a [`AtomicBroadcast::snapshot`] describes, trusting it (it
    /// is this replica's own, from its own storage): install the checkpoint, apply the batches,
    /// read the clock. Outputs `Install` and the batches, as a catch-up would.
    pub fn restore(&mut self, snapshot: CatchUp, clock: u64) -> AbcStep {
        let mut step = AbcStep::default();
        let CatchUp { checkpoint, batches } = snapshot;
        if let Some((checkpoint, window)) = checkpoint {
            self.install(checkpoint, window, &mut step);
        }
        for batch in batches {
            if batch.epoch == self.next_epoch {
                self.commit(batch, &mut step);
            }
        }
        self.clock = self.clock.max(clock);
        step
    }

    /// Whether the request named `key` was executed within the at-most-once window.
    pub fn is_executed(&self, key: &RequestKey) -> bool {
        self.executed.contains(key)
    }

    /// The clock's last reading.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    fn submit(&mut self, request: Request) -> Result<(), Error> {
        if request.payload.len() > self.config.payload_len_max {
            return Err(Error::PayloadTooLong { len: request.payload.len(), max: self.config.payload_len_max });
        }
        let key = request.key();
        if self.executed.contains(&key) || self.queued.contains(&key) {
            return Ok(());
        }
        if self.queue.len() >= self.config.queue_max {
            return Err(Error::QueueFull(self.queue.len()));
        }
        self.queued.insert(key);
        self.queue.push_back(Queued { key, request });
        Ok(())
    }

    /// Handle an input.
    pub fn handle_input(&mut self, input: Input, rng: &mut dyn rand::RngCore) -> Result<AbcStep, Error> {
        match input {
            Input::Submit(request) => self.submit(request)?,
            Input::Clock(now) => self.clock = self.clock.max(now),
            Input::Start { clock, requests } => {
                self.clock = self.clock.max(clock);
                for request in requests {
                    self.submit(request)?;
                }
            }
            Input::ApplicationDigest { epoch, digest } => {
                let mut step = AbcStep::default();
                self.application_digest(epoch, digest, &mut step);
                return Ok(step);
            }
            Input::Recover => {
                let mut step = AbcStep::default();
                let heard = self.heard_from_one_honest();
                match &mut self.catching_up {
                    Some(catching_up) => catching_up.heard = heard,
                    None => self.catching_up = Some(CatchingUp { heard, answers: BTreeMap::new() }),
                }
                step.broadcast(Message::CatchUpRequest { next: self.next_epoch });
                return Ok(step);
            }
        }
        let mut step = AbcStep::default();
        self.start_epochs(rng, &mut step)?;
        Ok(step)
    }

    /// Handle a message from `from`.
    pub fn handle(&mut self, from: NodeIndex, message: Message, rng: &mut dyn rand::RngCore) -> AbcStep {
        let mut step = AbcStep::default();
        if !self.quorum.contains(from) {
            step.fault(from, FaultKind::UnknownSender);
            return step;
        }
        match message {
            Message::CheckpointShare { epoch, share } => self.handle_checkpoint_share(from, epoch, share, &mut step),
            Message::CatchUpRequest { next } => self.answer_catch_up(from, next, &mut step),
            Message::CatchUp(answer) => self.handle_catch_up(from, answer, &mut step),
            message => self.handle_epoch_message(from, message, rng, &mut step),
        }
        // A catch-up may have moved us forward: deliver what became deliverable, start what we
        // have requests for.
        self.deliver(&mut step);
        self.replay_buffered(rng, &mut step);
        if let Err(error) = self.start_epochs(rng, &mut step) {
            // Our own proposal is bounded to fit: failing is a local bug, never a peer's doing.
            panic!("proposing failed: {error}");
        }
        self.request_catch_up(&mut step);
        step
    }

    fn handle_epoch_message(
        &mut self,
        from: NodeIndex,
        message: Message,
        rng: &mut dyn rand::RngCore,
        step: &mut AbcStep,
    ) {
        let epoch = match &message {
            Message::Subset { epoch, .. } | Message::Decryption { epoch, .. } => *epoch,
            _ => return,
        };
        self.hear(from, epoch);
        if epoch >= self.next_epoch.saturating_add(self.config.epochs_future_max) {
            // Too far ahead to buffer. Not a fault: honest replicas get there while we are behind,
            // and catching up (see `request_catch_up`) is the remedy.
            return;
        }
        if epoch < self.next_epoch && !self.epochs.contains_key(&epoch) {
            return; // Delivered and dropped: nothing needed from it any more.
        }
        if epoch >= self.next_epoch + self.config.epochs_in_flight && !self.epochs.contains_key(&epoch) {
            // Beyond the epochs we run: keep it for when we get there. Joining at once would let
            // one replica pull us ahead of the others, whose copies of our messages they would
            // then have to drop.
            let size = buffered_len(&message) + BUFFERED_OVERHEAD;
            let held = self.buffered_bytes.get(&from).copied().unwrap_or(0);
            if held + size > self.buffered_bytes_max() {
                // Each sender has its own budget: one over it loses its own messages, never
                // another's.
                step.fault(from, FaultKind::TooLong);
                return;
            }
            self.buffered_bytes.insert(from, held + size);
            self.buffered.entry(epoch).or_default().push((from, message));
            return;
        }
        self.route(from, epoch, message, rng, step);
    }

    /// Bytes of messages kept for later epochs, per sender: everything one replica sends us in
    /// four epochs of the largest proposals — its proposal's shard and its echo of every
    /// broadcast, with room for some 20 rounds of every agreement and the decryption shares —
    /// counting [`BUFFERED_OVERHEAD`] per message besides its encoding. An honest replica sends
    /// more than that only when it is that far ahead of us, and then we catch up instead.
    pub fn buffered_bytes_max(&self) -> usize {
        let n = self.quorum.n() as usize;
        let shard = rbc::shard_len_bound(self.quorum, self.ciphertext_len_max()) + 512;
        4 * ((n + 1) * shard + 128 * n * (SIG_SIZE + 64 + BUFFERED_OVERHEAD))
    }

    /// The longest broadcast shard of an epoch: longer ones are refused by
    /// [`AtomicBroadcast::decode_message`].
    pub fn shard_len_max(&self) -> usize {
        rbc::shard_len_bound(self.quorum, self.ciphertext_len_max())
    }

    /// Decode a peer's message, refusing a broadcast shard longer than any epoch accepts before
    /// anything is allocated for it.
    pub fn decode_message(&self, bytes: &[u8]) -> Result<Message, DecodeError> {
        let mut reader = Reader::new(bytes);
        let message = Message::decode_bounded(&mut reader, self.shard_len_max())?;
        reader.finish()?;
        Ok(message)
    }

    /// The cheap checks of a peer's message, to make before it is logged: its sender, its epoch
    /// against the ones we run or keep messages for, the lengths and indices any instance would
    /// check first. A message that is not [`Admission::Handle`]d needs no log entry: handling it
    /// would change nothing but the epochs heard of ([`Admission::Heard`]) and the faults.
    pub fn admissible(&self, from: NodeIndex, message: &Message) -> Admission {
        if !self.quorum.contains(from) || from == self.our_index {
            return Admission::Fault(FaultKind::UnknownSender);
        }
        let next = self.next_epoch;
        let too_far = |epoch: u64| epoch >= next.saturating_add(self.config.epochs_future_max);
        // Noted in steps of `epochs_in_flight`, the step in which catching up looks at it.
        let heard = |epoch: u64| {
            if self.heard.get(&from).is_some_and(|h| h.saturating_add(self.config.epochs_in_flight) > epoch) {
                Admission::Ignore
            } else {
                Admission::Heard(epoch)
            }
        };
        match message {
            Message::Subset { epoch, message } => {
                if too_far(*epoch) {
                    return heard(*epoch);
                }
                if *epoch < next && !self.epochs.contains_key(epoch) {
                    return Admission::Ignore;
                }
                self.admissible_subset(from, message)
            }
            Message::Decryption { epoch, proposer, .. } => {
                if !self.quorum.contains(*proposer) {
                    return Admission::Fault(FaultKind::WrongInstance);
                }
                if too_far(*epoch) {
                    return heard(*epoch);
                }
                if *epoch < next && !self.epochs.contains_key(epoch) {
                    return Admission::Ignore;
                }
                Admission::Handle
            }
            Message::CheckpointShare { epoch, .. } => {
                if !self.is_checkpoint_epoch(*epoch) {
                    return Admission::Fault(FaultKind::WrongInstance);
                }
                if too_far(*epoch) {
                    return heard(epoch.saturating_add(1));
                }
                let stable = self.stable.as_ref().map(|(c, _)| c.epoch);
                if stable.is_some_and(|s| *epoch <= s) {
                    return Admission::Ignore;
                }
                Admission::Handle
            }
            Message::CatchUpRequest { next: theirs } => {
                let quiet = self.answered.get(&from).is_some_and(|ours| next < ours + self.config.epochs_in_flight);
                if *theirs >= next || quiet {
                    return Admission::Ignore;
                }
                Admission::Handle
            }
            Message::CatchUp(_) if self.catching_up.is_none() => Admission::Ignore,
            Message::CatchUp(_) => Admission::Handle,
        }
    }

    fn admissible_subset(&self, from: NodeIndex, message: &acs::Message) -> Admission {
        let proposer = match message {
            acs::Message::Broadcast { proposer, .. } | acs::Message::Agreement { proposer, .. } => *proposer,
        };
        if !self.quorum.contains(proposer) {
            return Admission::Fault(FaultKind::WrongInstance);
        }
        match message {
            acs::Message::Broadcast { message: rbc::Message::Value(proof), .. } => {
                if from != proposer {
                    return Admission::Fault(FaultKind::NotProposer);
                }
                if proof.index != self.our_index.0 {
                    return Admission::Fault(FaultKind::InvalidProof);
                }
            }
            acs::Message::Broadcast { message: rbc::Message::Echo(proof), .. } => {
                if proof.index != from.0 {
                    return Admission::Fault(FaultKind::InvalidProof);
                }
            }
            acs::Message::Broadcast { message: rbc::Message::Ready(_), .. } => {}
            acs::Message::Agreement { message, .. } => {
                // The agreements of a common subset are plain: a vote carries no justification.
                if let fides_agreement::Message::BVal { justification, .. } = message {
                    if !justification.is_empty() {
                        return Admission::Fault(FaultKind::UnexpectedJustification);
                    }
                }
            }
        }
        if message_shard_len(message) > self.shard_len_max() {
            return Admission::Fault(FaultKind::TooLong);
        }
        Admission::Handle
    }

    /// `from` showed itself at `epoch` by a message too far ahead to keep (see
    /// [`Admission::Heard`]): we may have to catch up.
    pub fn heard(&mut self, from: NodeIndex, epoch: u64) -> AbcStep {
        let mut step = AbcStep::default();
        if !self.quorum.contains(from) {
            step.fault(from, FaultKind::UnknownSender);
            return step;
        }
        self.hear(from, epoch);
        self.request_catch_up(&mut step);
        step
    }

    /// Handle the messages kept for epochs that we now run.
    fn replay_buffered(&mut self, rng: &mut dyn rand::RngCore, step: &mut AbcStep) {
        while let Some((&epoch, _)) = self.buffered.first_key_value() {
            if epoch >= self.next_epoch + self.config.epochs_in_flight {
                break;
            }
            let messages = self.buffered.remove(&epoch).unwrap_or_default();
            for (from, message) in &messages {
                let size = buffered_len(message) + BUFFERED_OVERHEAD;
                if let Some(held) = self.buffered_bytes.get_mut(from) {
                    *held = held.saturating_sub(size);
                }
            }
            self.buffered_bytes.retain(|_, held| *held > 0);
            if epoch < self.next_epoch {
                continue;
            }
            for (from, message) in messages {
                self.route(from, epoch, message, rng, step);
            }
            self.deliver(step);
        }
    }

    /// Handle a message of `epoch`, which we take part in from now on.
    fn route(
        &mut self,
        from: NodeIndex,
        epoch: u64,
        message: Message,
        rng: &mut dyn rand::RngCore,
        step: &mut AbcStep,
    ) {
        if epoch < self.next_epoch && !self.epochs.contains_key(&epoch) {
            return;
        }
        // Take part in this epoch and every one before it: epochs are delivered in order, so a
        // later one is of no use unless the earlier ones run too.
        for earlier in self.next_epoch..=epoch {
            if let Err(error) = self.join(earlier, rng, step) {
                // Our own proposal is bounded to fit: failing is a local bug, never a peer's doing.
                panic!("proposing in epoch {earlier} failed: {error}");
            }
        }
        match message {
            Message::Subset { message, .. } => {
                let Some(state) = self.epochs.get_mut(&epoch) else { return };
                let inner = state.subset.handle(from, message);
                self.absorb(epoch, inner, rng, step);
            }
            Message::Decryption { proposer, share, .. } => self.handle_share(epoch, proposer, from, share, step),
            _ => {}
        }
    }

    /// Start epochs while we have requests not in flight and room in the window.
    fn start_epochs(&mut self, rng: &mut dyn rand::RngCore, step: &mut AbcStep) -> Result<(), Error> {
        for epoch in self.next_epoch..self.next_epoch + self.config.epochs_in_flight {
            // Every request in flight is queued (see `deliver`), so this says whether any is not.
            if self.queue.len() <= self.in_flight.len() {
                break;
            }
            if self.epochs.get(&epoch).is_some_and(|s| s.proposed) {
                continue;
            }
            self.join(epoch, rng, step)?;
        }
        Ok(())
    }

    /// Make sure we take part in `epoch`: create it and propose our contribution.
    fn join(&mut self, epoch: u64, rng: &mut dyn rand::RngCore, step: &mut AbcStep) -> Result<(), Error> {
        if epoch < self.next_epoch {
            return Ok(());
        }
        if !self.epochs.contains_key(&epoch) {
            let state = self.new_epoch(epoch);
            self.epochs.insert(epoch, state);
        }
        if self.epochs.get(&epoch).is_some_and(|s| s.proposed) {
            return Ok(());
        }
        let contribution = Contribution { clock: self.clock, requests: self.choose(epoch, rng) };
        let associated = self.associated(epoch, self.our_index);
        let public = self.encryption_keys.public().public_key();
        let envelope = Envelope::seal(&public, &associated, &contribution.to_bytes(), rng);
        let Some(state) = self.epochs.get_mut(&epoch) else { return Ok(()) };
        state.proposed = true;
        let inner = state.subset.propose(&envelope.to_bytes())?;
        self.absorb(epoch, inner, rng, step);
        Ok(())
    }

    /// A fresh state for `epoch`: its common subset, nothing proposed.
    fn new_epoch(&self, epoch: u64) -> EpochState {
        let mut session = self.config.session.clone();
        session.extend_from_slice(b"/epoch/");
        session.extend_from_slice(&epoch.to_le_bytes());
        let subset = CommonSubset::new(
            self.quorum,
            self.our_index,
            &session,
            Arc::clone(&self.coin_keys),
            rbc::Config { value_len_max: self.ciphertext_len_max() },
        );
        EpochState { subset, proposed: false, agreed: None, early: BTreeMap::new(), delivered: false }
    }

    /// The most requests one contribution may hold: a replica's share of the batch,
    /// `⌈batch_size / n⌉` (what [`AtomicBroadcast::choose`] proposes at most).
    fn contribution_requests_max(&self) -> usize {
        self.config.batch_size.div_ceil(self.quorum.n() as usize).max(1)
    }

    /// The longest envelope an honest replica makes: the most requests it proposes at the
    /// longest payload, with their framing, the capsule and the tag.
    fn ciphertext_len_max(&self) -> usize {
        let requests = self.contribution_requests_max();
        let request = 8 + 8 + 4 + self.config.payload_len_max;
        CAPSULE_LEN + TAG_LEN + 8 + 4 + requests * request
    }

    /// What `proposer`'s envelope in `epoch` is bound to, its label: its capsule verifies (so
    /// honest replicas release decryption shares of it) and its payload opens nowhere else.
    fn associated(&self, epoch: u64, proposer: NodeIndex) -> Vec<u8> {
        tagged(domain::ABC_CONTRIBUTION, &[&self.config.session, &epoch.to_le_bytes(), &proposer.0.to_le_bytes()])
    }

    /// `⌈batch_size / n⌉` requests not in flight, from the oldest `batch_size · n` of the queue
    /// (see [`bucket`] for why in this order):
    ///
    /// 1. requests of other buckets that have stood among the first `batch_size` of our queue for
    ///    `epochs_in_flight + 2` epochs if we are their helper, twice that otherwise — their
    ///    bucket's replica is slow, faulty or never got them;
    /// 2. requests of our own bucket, oldest first;
    /// 3. requests of other buckets that their replica is not likely to have in flight (beyond the
    ///    first `epochs_in_flight` proposals' worth of that bucket) and whose helper bucket is
    ///    ours, oldest first — replicas done with their own bucket help with the others' without
    ///    proposing the same ones;
    /// 4. a random choice among the other requests of the first `batch_size`.
    fn choose(&mut self, epoch: u64, rng: &mut dyn rand::RngCore) -> Vec<Request> {
        let n = self.quorum.n();
        let me = self.our_index.0;
        let amount = self.contribution_requests_max();
        let now = self.next_epoch;
        let patience = self.config.epochs_in_flight + 2;
        let in_flight_there = self.config.epochs_in_flight as usize * amount;
        let scan: Vec<&Queued> = self
            .queue
            .iter()
            .filter(|r| !self.in_flight.contains_key(&r.key()))
            .take(self.config.batch_size.saturating_mul(n as usize))
            .collect();
        // Each candidate of another bucket, with whether its replica likely has it in flight.
        let mut seen = vec![0usize; n as usize];
        let mut others: Vec<(usize, bool, &Queued)> = Vec::new();
        for (position, request) in scan.iter().enumerate() {
            let owner = bucket(request.key(), n) as usize;
            if owner != me as usize {
                seen[owner] += 1;
                others.push((position, seen[owner] <= in_flight_there, request));
            }
        }
        let window = self.config.batch_size;
        for (_, _, request) in others.iter().take_while(|(p, _, _)| *p < window) {
            self.waiting.entry(request.key()).or_insert(now);
        }
        // Late for its helper after `patience` epochs, for everyone after twice that (the helper
        // may be faulty too): honest replicas do not all propose the same late requests.
        let is_late = |r: &Queued| {
            self.waiting.get(&r.key()).is_some_and(|since| {
                let waited = now.saturating_sub(*since);
                waited >= 2 * patience || (waited >= patience && helper(r.key(), n) == me)
            })
        };
        let mut chosen: Vec<&Queued> = others
            .iter()
            .take_while(|(p, _, _)| *p < window)
            .map(|(_, _, r)| *r)
            .filter(|r| is_late(r))
            .take(amount)
            .collect();
        let own = scan.iter().copied().filter(|r| bucket(r.key(), n) == me);
        chosen.extend(own.take(amount - chosen.len()));
        let mut taken: BTreeSet<RequestKey> = chosen.iter().map(|r| r.key()).collect();
        let helped = others
            .iter()
            .filter(|(_, front, r)| !front && helper(r.key(), n) == me && !taken.contains(&r.key()))
            .map(|(_, _, r)| *r);
        chosen.extend(helped.take(amount - chosen.len()));
        if chosen.len() < amount {
            taken.extend(chosen.iter().map(|r| r.key()));
            let mut rest: Vec<&Queued> = others
                .iter()
                .take_while(|(p, _, _)| *p < window)
                .map(|(_, _, r)| *r)
                .filter(|r| !taken.contains(&r.key()))
                .collect();
            let mut rng = rng;
            rest.shuffle(&mut rng);
            chosen.extend(rest.into_iter().take(amount - chosen.len()));
        }
        for queued in &chosen {
            self.in_flight.insert(queued.key(), epoch);
        }
        chosen.into_iter().map(|q| q.request.clone()).collect()
    }

    fn absorb(&mut self, epoch: u64, inner: acs::AcsStep, rng: &mut dyn rand::RngCore, step: &mut AbcStep) {
        for subset in inner.lift_into(step, |message| Message::Subset { epoch, message }) {
            self.on_subset(epoch, subset, rng, step);
        }
    }

    /// The subset of `epoch` is agreed: check the capsules (all at once) and send our decryption
    /// shares of the valid ones.
    fn on_subset(&mut self, epoch: u64, subset: Subset, rng: &mut dyn rand::RngCore, step: &mut AbcStep) {
        let parsed: Vec<(NodeIndex, Option<Envelope>)> = subset
            .into_iter()
            .map(|(proposer, delivery)| match delivery {
                Delivery::Value(bytes) => (proposer, Envelope::from_bytes(&bytes).ok()),
                Delivery::Invalid => (proposer, None),
            })
            .collect();
        let labels: Vec<Vec<u8>> = parsed.iter().map(|(proposer, _)| self.associated(epoch, *proposer)).collect();
        let envelopes: Vec<(&Envelope, &[u8])> = parsed
            .iter()
            .zip(&labels)
            .filter_map(|((_, e), label)| e.as_ref().map(|e| (e, label.as_slice())))
            .collect();
        // A capsule copied from another proposer's or another epoch's envelope does not verify
        // under this one's label: no share of it is released.
        let mut verdicts = verify_capsules(&envelopes, rng).into_iter();
        let mut agreed = BTreeMap::new();
        for (proposer, envelope) in parsed {
            let ciphertext = envelope.filter(|_| verdicts.next().unwrap_or(false));
            let mut decryption = Decryption { ciphertext, ..Decryption::default() };
            match &decryption.ciphertext {
                Some(envelope) => {
                    let share = self.encryption_keys.labeled_share(envelope.capsule()).to_bytes();
                    step.broadcast(Message::Decryption { epoch, proposer, share });
                }
                None => {
                    step.fault(proposer, FaultKind::InvalidCiphertext);
                    decryption.contribution = Some(None);
                }
            }
            agreed.insert(proposer, decryption);
        }
        let Some(state) = self.epochs.get_mut(&epoch) else { return };
        for ((proposer, sender), share) in std::mem::take(&mut state.early) {
            if let Some(decryption) = agreed.get_mut(&proposer) {
                decryption.shares.entry(sender).or_insert(share);
            }
        }
        let proposers: Vec<NodeIndex> = agreed.keys().copied().collect();
        state.agreed = Some(agreed);
        for proposer in proposers {
            self.try_decrypt(epoch, proposer, step);
        }
    }

    fn handle_share(
        &mut self,
        epoch: u64,
        proposer: NodeIndex,
        from: NodeIndex,
        share: [u8; PK_SIZE],
        step: &mut AbcStep,
    ) {
        if !self.quorum.contains(proposer) {
            step.fault(from, FaultKind::WrongInstance);
            return;
        }
        let Some(state) = self.epochs.get_mut(&epoch) else { return };
        match &mut state.agreed {
            None => {
                if state.early.len() < (self.quorum.n() as usize).pow(2) {
                    state.early.entry((proposer, from)).or_insert(share);
                }
                return;
            }
            Some(agreed) => {
                let Some(decryption) = agreed.get_mut(&proposer) else {
                    step.fault(from, FaultKind::WrongInstance);
                    return;
                };
                if let Some(earlier) = decryption.shares.get(&from) {
                    if *earlier != share {
                        step.fault(from, FaultKind::Equivocation);
                    }
                    return;
                }
                decryption.shares.insert(from, share);
            }
        }
        self.try_decrypt(epoch, proposer, step);
    }

    /// Decrypt `proposer`'s ciphertext of `epoch` once `t + 1` shares are in.
    fn try_decrypt(&mut self, epoch: u64, proposer: NodeIndex, step: &mut AbcStep) {
        let needed = self.encryption_keys.shares_needed();
        let keys = Arc::clone(&self.encryption_keys);
        let associated = self.associated(epoch, proposer);
        let (requests_max, payload_len_max) = (self.contribution_requests_max(), self.config.payload_len_max);
        let Some(decryption) =
            self.epochs.get_mut(&epoch).and_then(|s| s.agreed.as_mut()).and_then(|a| a.get_mut(&proposer))
        else {
            return;
        };
        if decryption.contribution.is_some() {
            return;
        }
        if decryption.shares.len() < needed {
            return;
        }
        let Some(envelope) = decryption.ciphertext.clone() else { return };
        let ciphertext = envelope.capsule();
        let verifies = |sender: NodeIndex, share: &DecryptionShare| {
            ciphertext.verify_share(&associated, &keys.public().public_key_share(sender.as_usize()), share)
        };
        loop {
            let mut usable: BTreeMap<NodeIndex, DecryptionShare> = BTreeMap::new();
            let mut bad = Vec::new();
            // Shares of replicas that never sent a bad one first; a suspect's share is used only
            // when needed, and verified then.
            let suspect = |sender: &NodeIndex| self.share_suspects.contains(sender);
            let trusted = decryption.shares.iter().filter(|(s, _)| !suspect(s));
            for (sender, bytes) in trusted.chain(decryption.shares.iter().filter(|(s, _)| suspect(s))) {
                if usable.len() == needed {
                    break;
                }
                match DecryptionShare::from_bytes(*bytes) {
                    Ok(share) if !suspect(sender) || verifies(*sender, &share) => {
                        usable.insert(*sender, share);
                    }
                    _ => bad.push(*sender),
                }
            }
            if bad.is_empty() && usable.len() < needed {
                return;
            }
            if bad.is_empty() {
                let opened =
                    ciphertext.combine(keys.public(), &usable).ok().and_then(|k| envelope.open(&k, &associated));
                if let Some(plaintext) = opened {
                    // The tag verified, so the key is right: what the plaintext holds is the
                    // proposer's doing, and every honest replica finds the same.
                    let decoded = Contribution::decode_bounded(&plaintext, requests_max, payload_len_max);
                    match decoded {
                        Ok(contribution) => decryption.contribution = Some(Some(contribution)),
                        Err(error) => {
                            decryption.contribution = Some(None);
                            let kind = match error {
                                DecodeError::TooLong { .. } => FaultKind::TooLong,
                                _ => FaultKind::InvalidCiphertext,
                            };
                            step.fault(proposer, kind);
                        }
                    }
                    return;
                }
                // Either a bad share spoiled it or the proposer encrypted no contribution.
                bad = usable.iter().filter(|(s, share)| !verifies(**s, share)).map(|(s, _)| *s).collect();
                if bad.is_empty() {
                    decryption.contribution = Some(None);
                    step.fault(proposer, FaultKind::InvalidCiphertext);
                    return;
                }
            }
            for sender in bad {
                decryption.shares.remove(&sender);
                self.share_suspects.insert(sender);
                step.fault(sender, FaultKind::InvalidDecryptionShare);
            }
        }
    }

    /// Deliver every epoch, in order, whose contributions are all decided.
    fn deliver(&mut self, step: &mut AbcStep) {
        loop {
            let epoch = self.next_epoch;
            let Some(state) = self.epochs.get_mut(&epoch) else { break };
            let Some(agreed) = &state.agreed else { break };
            if agreed.values().any(|d| d.contribution.is_none()) {
                break;
            }
            let contributions: Vec<Contribution> =
                agreed.values().filter_map(|d| d.contribution.clone().flatten()).collect();
            state.delivered = true;
            let mut clocks: Vec<u64> = contributions.iter().map(|c| c.clock).collect();
            clocks.sort_unstable();
            let mut time = self.time;
            if let Some(median) = clocks.get(clocks.len().saturating_sub(1) / 2) {
                time = time.max(*median);
            }
            let mut requests = Vec::new();
            let mut seen = HashSet::new();
            for request in contributions.into_iter().flat_map(|c| c.requests) {
                let key = request.key();
                if !self.executed.contains(&key) && seen.insert(key) {
                    requests.push(request);
                }
            }
            self.commit(Batch { epoch, time, requests }, step);
        }
        self.epochs.retain(|_, s| !(s.delivered && s.subset.terminated()));
    }

    /// Apply a delivered batch (ours, or one a catch-up vouched for) and output it.
    fn commit(&mut self, batch: Batch, step: &mut AbcStep) {
        let epoch = batch.epoch;
        self.time = batch.time;
        let keys: Vec<RequestKey> = batch.requests.iter().map(Request::key).collect();
        for key in &keys {
            self.executed.insert(*key);
            self.queued.remove(key);
            self.waiting.remove(key);
            self.in_flight.remove(key);
        }
        if !keys.is_empty() {
            self.queue.retain(|q| self.queued.contains(&q.key));
        }
        // Requests proposed in this epoch that it did not deliver can be proposed again.
        self.in_flight.retain(|_, e| *e > epoch);
        self.window.push_back((epoch, keys));
        while self.window.front().is_some_and(|(e, _)| e + self.config.dedup_window_epochs <= epoch) {
            if let Some((_, expired)) = self.window.pop_front() {
                for key in expired {
                    self.executed.remove(&key);
                }
            }
        }
        self.log = log_next(&self.log, &batch);
        self.retained.push_back(batch.clone());
        let retained_max = (4 * self.config.checkpoint_interval + self.config.epochs_future_max) as usize;
        while self.retained.len() > retained_max.min(CATCH_UP_BATCHES_MAX as usize) {
            self.retained.pop_front();
        }
        self.next_epoch = epoch + 1;
        if self.is_checkpoint_epoch(epoch) {
            let window: Arc<Vec<WindowEntry>> = Arc::new(self.window.iter().cloned().collect());
            let digest = window_digest(window.iter());
            self.pending.entry(epoch).or_default().delivered = Some((self.time, self.log, digest, window));
            // If the application never answers, checkpoints never stabilise: keep the newest few.
            while self.pending.values().filter(|p| p.delivered.is_some()).count() > PENDING_DELIVERED_MAX {
                self.pending.pop_first();
            }
        }
        step.outputs.push(Output::Batch(batch));
    }

    fn is_checkpoint_epoch(&self, epoch: u64) -> bool {
        self.config.checkpoint_interval > 0 && (epoch + 1).is_multiple_of(self.config.checkpoint_interval)
    }

    /// The application's digest after a checkpoint epoch: sign the statement and share it.
    fn application_digest(&mut self, epoch: u64, digest: Digest, step: &mut AbcStep) {
        let Some(pending) = self.pending.get_mut(&epoch) else { return };
        let Some((time, log, window, _)) = &pending.delivered else { return };
        if pending.statement.is_some() {
            return;
        }
        let statement = Statement { epoch, time: *time, application: digest, log: *log, window: *window };
        let share = self.signing_keys.sign_share(statement.point(&self.config.session)).to_bytes();
        pending.statement = Some(statement);
        pending.shares.insert(self.our_index, share);
        step.broadcast(Message::CheckpointShare { epoch, share });
        self.try_stabilise(epoch, step);
    }

    fn handle_checkpoint_share(&mut self, from: NodeIndex, epoch: u64, share: [u8; SIG_SIZE], step: &mut AbcStep) {
        if !self.is_checkpoint_epoch(epoch) {
            step.fault(from, FaultKind::WrongInstance);
            return;
        }
        // A share for `epoch` means its sender delivered it.
        self.hear(from, epoch.saturating_add(1));
        let stable = self.stable.as_ref().map(|(c, _)| c.epoch);
        if stable.is_some_and(|s| epoch <= s)
            || epoch >= self.next_epoch.saturating_add(self.config.epochs_future_max)
            || from == self.our_index
        {
            return;
        }
        let pending = self.pending.entry(epoch).or_default();
        match pending.shares.get(&from) {
            Some(earlier) if *earlier != share => step.fault(from, FaultKind::Equivocation),
            Some(_) => {}
            None => {
                pending.shares.insert(from, share);
                self.try_stabilise(epoch, step);
            }
        }
    }

    /// Combine `t + 1` shares on our statement of `epoch` into a stable checkpoint.
    fn try_stabilise(&mut self, epoch: u64, step: &mut AbcStep) {
        let needed = self.signing_keys.shares_needed();
        let Some(pending) = self.pending.get_mut(&epoch) else { return };
        let Some(statement) = pending.statement.clone() else { return };
        let point = statement.point(&self.config.session);
        let signature = loop {
            if pending.shares.len() < needed {
                return;
            }
            let mut shares = BTreeMap::new();
            for (sender, bytes) in &pending.shares {
                match SignatureShare::from_bytes(*bytes) {
                    Ok(share) => {
                        shares.insert(*sender, share);
                    }
                    Err(_) => step.fault(*sender, FaultKind::InvalidCheckpoint),
                }
            }
            pending.shares.retain(|sender, _| shares.contains_key(sender));
            match self.signing_keys.combine(&shares, point) {
                Ok(signature) => break signature,
                Err(fides_crypto::CombineError::InvalidShares(bad)) if !bad.is_empty() => {
                    for sender in bad {
                        pending.shares.remove(&sender);
                        step.fault(sender, FaultKind::InvalidCheckpoint);
                    }
                }
                Err(_) => return,
            }
        };
        let window = pending.delivered.as_ref().map(|(_, _, _, w)| Arc::clone(w)).unwrap_or_default();
        let checkpoint = Checkpoint {
            epoch,
            time: statement.time,
            application: statement.application,
            log: statement.log,
            window: statement.window,
            signature: signature.to_bytes(),
        };
        self.make_stable(checkpoint.clone(), window);
        step.outputs.push(Output::Checkpoint(checkpoint));
    }

    fn make_stable(&mut self, checkpoint: Checkpoint, window: Arc<Vec<WindowEntry>>) {
        let epoch = checkpoint.epoch;
        self.retained.retain(|b| b.epoch > epoch);
        self.pending.retain(|e, _| *e > epoch);
        self.stable = Some((checkpoint, window));
    }

    /// Note that `from` showed itself at `epoch`.
    fn hear(&mut self, from: NodeIndex, epoch: u64) {
        if from != self.our_index {
            let heard = self.heard.entry(from).or_default();
            *heard = (*heard).max(epoch);
        }
    }

    /// The highest epoch that `t + 1` replicas other than us showed themselves at.
    fn heard_from_one_honest(&self) -> u64 {
        let mut heard: Vec<u64> = self.heard.values().copied().collect();
        heard.sort_unstable_by(|a, b| b.cmp(a));
        heard.get(self.quorum.t() as usize).copied().unwrap_or(0)
    }

    /// Ask everyone for a catch-up when `t + 1` replicas (so at least one honest one) are
    /// `epochs_in_flight` or more epochs ahead of us: we may have dropped messages they sent (too
    /// far ahead), or they may have dropped the epochs we still run. Asked again only once they
    /// have gone another `epochs_in_flight` further.
    fn request_catch_up(&mut self, step: &mut AbcStep) {
        let heard = self.heard_from_one_honest();
        if heard < self.next_epoch.saturating_add(self.config.epochs_in_flight) {
            return;
        }
        if self.catching_up.as_ref().is_some_and(|c| heard < c.heard.saturating_add(self.config.epochs_in_flight)) {
            return;
        }
        // Answers already in stay useful: the log digests they vouch for do not change.
        match &mut self.catching_up {
            Some(catching_up) => catching_up.heard = heard,
            None => self.catching_up = Some(CatchingUp { heard, answers: BTreeMap::new() }),
        }
        step.broadcast(Message::CatchUpRequest { next: self.next_epoch });
    }

    /// Answer `from`, whose next epoch is `next`: our latest stable checkpoint if it is behind
    /// it, and the batches we keep after it (or after `next`). A replica is answered once per
    /// `epochs_in_flight` epochs of our own progress, so requests cannot make us send much more
    /// than the log grows.
    fn answer_catch_up(&mut self, from: NodeIndex, next: u64, step: &mut AbcStep) {
        let quiet = self.answered.get(&from).is_some_and(|ours| self.next_epoch < ours + self.config.epochs_in_flight);
        if from == self.our_index || next >= self.next_epoch || quiet {
            return;
        }
        self.answered.insert(from, self.next_epoch);
        let checkpoint = self
            .stable
            .as_ref()
            .filter(|(c, _)| next <= c.epoch)
            .map(|(c, window)| (c.clone(), window.as_ref().clone()));
        let from_epoch = checkpoint.as_ref().map_or(next, |(c, _)| c.epoch + 1);
        let batches: Vec<Batch> = self.retained.iter().filter(|b| b.epoch >= from_epoch).cloned().collect();
        if batches.first().is_some_and(|b| b.epoch != from_epoch) || (checkpoint.is_none() && batches.is_empty()) {
            return; // We no longer keep what it needs; others will answer.
        }
        step.messages.push(fides_types::Outgoing {
            target: fides_types::Target::Node(from),
            message: Message::CatchUp(CatchUp { checkpoint, batches }),
        });
    }

    /// An answer to our catch-up request: verify its checkpoint, chain its batches from a base we
    /// trust, and apply what `t + 1` answers agree on.
    fn handle_catch_up(&mut self, from: NodeIndex, answer: CatchUp, step: &mut AbcStep) {
        if from == self.our_index || self.catching_up.is_none() {
            return;
        }
        let CatchUp { checkpoint, mut batches } = answer;
        let base = match &checkpoint {
            Some((c, window)) => {
                let public = self.signing_keys.public().public_key();
                if !c.verifies(&self.config.session, &public) || window_digest(window.iter()) != c.window {
                    step.fault(from, FaultKind::InvalidCheckpoint);
                    return;
                }
                (Some(c.epoch), c.log)
            }
            None => {
                batches.retain(|b| b.epoch >= self.next_epoch);
                (self.next_epoch.checked_sub(1), self.log)
            }
        };
        let Some(vouched) = vouch(base, &batches) else {
            step.fault(from, FaultKind::InvalidCheckpoint);
            return;
        };
        if let Some(catching_up) = &mut self.catching_up {
            catching_up.answers.insert(from, (checkpoint, vouched));
        }
        self.try_catch_up(step);
    }

    fn try_catch_up(&mut self, step: &mut AbcStep) {
        let Some(catching_up) = &self.catching_up else { return };
        let one_honest = self.quorum.one_honest() as usize;
        let vouched: BTreeMap<NodeIndex, Vouched> =
            catching_up.answers.iter().map(|(i, (_, v))| (*i, v.clone())).collect();
        let own = agreed_batches((self.next_epoch.checked_sub(1), self.log), &vouched, one_honest);
        let own_end = own.last().map_or(self.next_epoch, |(b, _)| b.epoch + 1);
        let jump = catching_up
            .answers
            .values()
            .filter_map(|(c, _)| c.as_ref())
            .filter(|(c, _)| c.epoch >= own_end)
            .max_by_key(|(c, _)| c.epoch)
            .cloned();
        let batches = match jump {
            Some((checkpoint, window)) => {
                let accepted = agreed_batches((Some(checkpoint.epoch), checkpoint.log), &vouched, one_honest);
                self.install(checkpoint, window, step);
                // Later answers may vouch for the batches after the checkpoint: keep listening.
                if accepted.is_empty() {
                    return;
                }
                accepted
            }
            None if own.is_empty() => return,
            None => own,
        };
        let progressed = !batches.is_empty();
        for (batch, digest) in batches {
            self.commit(batch, step);
            debug_assert_eq!(self.log, digest);
        }
        if progressed {
            self.catching_up = None;
        }
        let next = self.next_epoch;
        self.epochs.retain(|e, _| *e >= next);
        self.in_flight.retain(|_, e| *e >= next);
    }

    /// Jump to a verified checkpoint: its time, log, window and the application state it names.
    fn install(&mut self, checkpoint: Checkpoint, window: Vec<WindowEntry>, step: &mut AbcStep) {
        self.next_epoch = checkpoint.epoch + 1;
        self.time = checkpoint.time;
        self.log = checkpoint.log;
        self.executed = window.iter().flat_map(|(_, keys)| keys.iter().copied()).collect();
        self.window = window.iter().cloned().collect();
        for key in &self.executed {
            self.queued.remove(key);
            self.waiting.remove(key);
        }
        self.queue.retain(|q| self.queued.contains(&q.key));
        self.in_flight.retain(|key, e| *e > checkpoint.epoch && self.queued.contains(key));
        self.retained.clear();
        step.outputs.push(Output::Install(checkpoint.clone()));
        self.make_stable(checkpoint, Arc::new(window));
        let next = self.next_epoch;
        self.epochs.retain(|e, _| *e >= next);
    }
}

/// About how many bytes `message` holds (its encoding's length, for the messages kept for later
/// epochs; a flat 64 for the others, which are never kept).
fn buffered_len(message: &Message) -> usize {
    match message {
        Message::Subset { message, .. } => match message {
            acs::Message::Broadcast { message, .. } => {
                message.shard().map_or(32, |proof| proof.shard.len() + 32 * (proof.path.len() + 1) + 9) + 13
            }
            acs::Message::Agreement { message, .. } => {
                let justification = match message {
                    fides_agreement::Message::BVal { justification, .. } => justification.len(),
                    _ => 0,
                };
                justification + SIG_SIZE + 24
            }
        },
        Message::Decryption { .. } => PK_SIZE + 13,
        _ => 64,
    }
}

/// The length of the shard an epoch's message carries (0 if none).
fn message_shard_len(message: &acs::Message) -> usize {
    match message {
        acs::Message::Broadcast { message, .. } => message.shard().map_or(0, |proof| proof.shard.len()),
        acs::Message::Agreement { .. } => 0,
    }
}

/// The replica that proposes request `key` first: a fixed mix of the id, so that replicas given
/// the same requests (a client sending to 2t + 1 of them, or a burst) rarely propose the same one.
/// Every replica still proposes requests of other buckets when its own run out, and the oldest
/// requests of its queue are the only candidates, so a request whose bucket is a Byzantine replica
/// reaches the front of the honest queues and is proposed all the same.
fn bucket(key: RequestKey, n: u32) -> u32 {
    mix(key, 0, n)
}

/// The replica that helps with request `key` when its bucket's replica is busy: another fixed mix.
fn helper(key: RequestKey, n: u32) -> u32 {
    mix(key, 1, n)
}

fn mix((client, id, _): RequestKey, salt: u64, n: u32) -> u32 {
    let mut x = client.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ id ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x % u64::from(n.max(1))) as u32
}

impl Protocol for AtomicBroadcast {
    type Input = Input;
    type Message = Message;
    type Output = Output;
    type Error = Error;

    fn our_index(&self) -> NodeIndex {
        self.our_index
    }

    fn handle_input(&mut self, input: Input, rng: &mut dyn rand::RngCore) -> Result<AbcStep, Error> {
        AtomicBroadcast::handle_input(self, input, rng)
    }

    fn handle_message(&mut self, from: NodeIndex, message: Message, rng: &mut dyn rand::RngCore) -> AbcStep {
        self.handle(from, message, rng)
    }

    /// Never: a replica may be asked to join a new epoch at any time.
    fn terminated(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn sample(rng: &mut impl Rng) -> Message {
        let epoch = rng.gen_range(0..5);
        let batch = Batch {
            epoch,
            time: rng.gen(),
            requests: vec![Request { client: rng.gen(), id: rng.gen(), payload: vec![3; rng.gen_range(0..5)] }],
        };
        match rng.gen_range(0..5) {
            0 => Message::Subset {
                epoch,
                message: acs::Message::Broadcast {
                    proposer: NodeIndex(rng.gen_range(0..4)),
                    message: rbc::Message::Ready([rng.gen(); 32]),
                },
            },
            1 => Message::Decryption { epoch, proposer: NodeIndex(rng.gen_range(0..4)), share: [rng.gen(); PK_SIZE] },
            2 => Message::CheckpointShare { epoch, share: [rng.gen(); SIG_SIZE] },
            3 => Message::CatchUpRequest { next: epoch },
            _ => Message::CatchUp(CatchUp { checkpoint: None, batches: vec![batch] }),
        }
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..50_000 {
            let mut bytes = vec![0u8; rng.gen_range(0..64)];
            rng.fill(&mut bytes[..]);
            if let Some(first) = bytes.first_mut() {
                *first %= 6;
            }
            let _ = Message::from_bytes(&bytes);
        }
    }

    /// Any bytes that decode re-encode to themselves: one message, one encoding.
    #[test]
    fn mutated_encodings_decode_to_the_same_bytes_or_not_at_all() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let mut decoded = 0;
        for _ in 0..20_000 {
            let mut bytes = sample(&mut rng).to_bytes();
            match rng.gen_range(0..3) {
                0 => {
                    let at = rng.gen_range(0..bytes.len());
                    bytes[at] ^= 1 << rng.gen_range(0..8);
                }
                1 => bytes.truncate(rng.gen_range(0..bytes.len())),
                _ => bytes.push(rng.gen()),
            }
            if let Ok(again) = Message::from_bytes(&bytes) {
                decoded += 1;
                assert_eq!(again.to_bytes(), bytes, "{again:?} has two encodings");
            }
        }
        assert!(decoded > 1_000, "the mutations should often stay valid: {decoded}");
    }
}
