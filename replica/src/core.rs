//! The replica's deterministic core: atomic broadcast, the RNG it draws from, and the bookkeeping
//! of what was delivered. Given the same keys, seed and events it does the same thing, which is
//! what makes replaying the write-ahead log a faithful restart (see `store.rs`).

use std::collections::{BTreeMap, VecDeque};

use fides_atomic_broadcast::checkpoint::{log_genesis, log_next, CatchUp, Checkpoint, Digest};
use fides_atomic_broadcast::epoch::{AtomicBroadcast, Batch, Error as AbcError, Input, Message, Output, RequestKey};
use fides_types::{Fault, FaultKind, NodeIndex, Outgoing, Target};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest as _, Sha256};

use crate::store::Event;

/// What handling events produced.
#[derive(Debug, Default)]
pub struct Effects {
    /// Messages for the other replicas (our own copies were already handled).
    pub outgoing: Vec<Outgoing<Message>>,
    /// Delivered batches, each with the log digest after it.
    pub batches: Vec<(Batch, Digest)>,
    /// Checkpoints that became stable.
    pub checkpoints: Vec<Checkpoint>,
    /// Checkpoints we jumped to (batches before them were skipped here).
    pub installs: Vec<Checkpoint>,
    /// Requests the core refused, with the reason.
    pub refused: Vec<(RequestKey, AbcError)>,
    /// Misbehaviour seen.
    pub faults: Vec<Fault>,
}

/// Atomic broadcast plus what the driver needs to replay it exactly.
///
/// Randomness is drawn per event: the RNG for the event logged at sequence number `k` is
/// ChaCha20 seeded with `SHA-256(seed || k)`. So an event draws the same randomness whether the
/// core handles it live, in a replay of the whole log, or in a replay from a compacted base —
/// events the base makes unnecessary draw nothing from the others' streams.
pub struct Core {
    abc: AtomicBroadcast,
    seed: [u8; 32],
    rng: ChaCha20Rng,
    our_index: NodeIndex,
    checkpoint_interval: u64,
    /// The log digest after the last delivered batch.
    log: Digest,
    loopback: VecDeque<Message>,
}

impl Core {
    /// A core in its initial state.
    pub fn new(abc: AtomicBroadcast, seed: [u8; 32], our_index: NodeIndex, session: &[u8], interval: u64) -> Core {
        Core {
            abc,
            seed,
            rng: ChaCha20Rng::from_seed(seed),
            our_index,
            checkpoint_interval: interval.max(1),
            log: log_genesis(session),
            loopback: VecDeque::new(),
        }
    }

    /// Atomic broadcast, to read.
    pub fn abc(&self) -> &AtomicBroadcast {
        &self.abc
    }

    /// The whole state between two events, for a snapshot: atomic broadcast's
    /// (`AtomicBroadcast::encode_state`) and the log digest. The RNG is not in it (it is seeded
    /// afresh for each event), nor are the keys and configuration.
    pub fn encode_state(&self) -> Vec<u8> {
        let mut out = self.abc.encode_state_to_vec();
        out.extend_from_slice(&self.log);
        out
    }

    /// Take the state `encode_state` wrote; `self` must be a fresh core of the same
    /// configuration. A corrupt state is an error.
    pub fn decode_state(&mut self, bytes: &[u8]) -> Result<(), fides_types::codec::DecodeError> {
        let mut reader = fides_types::codec::Reader::new(bytes);
        self.abc.decode_state(&mut reader)?;
        self.log = reader.array()?;
        reader.finish()
    }

    /// Bring a new core to a log base written by an older version (its delivered state only).
    pub fn restore(&mut self, snapshot: CatchUp, clock: u64, effects: &mut Effects) {
        let step = self.abc.restore(snapshot, clock);
        self.absorb(step, effects);
    }

    /// Handle the event logged at sequence number `seq` (and every message to ourselves it
    /// causes).
    pub fn apply(&mut self, seq: u64, event: &Event, effects: &mut Effects) {
        let mut hasher = Sha256::new();
        hasher.update(self.seed);
        hasher.update(seq.to_le_bytes());
        self.rng = ChaCha20Rng::from_seed(hasher.finalize().into());
        match event {
            Event::Submit(request) => {
                let key = request.key();
                match self.abc.handle_input(Input::Submit(request.clone()), &mut self.rng) {
                    Ok(step) => self.absorb(step, effects),
                    Err(error) => effects.refused.push((key, error)),
                }
            }
            Event::Clock(now) => self.input(Input::Clock(*now), effects),
            Event::Recover => self.input(Input::Recover, effects),
            Event::Heard { from, epoch } => {
                let step = self.abc.heard(*from, *epoch);
                self.absorb(step, effects);
            }
            // Decoded with the epochs' shard bound, as when it was admitted to the log.
            Event::Frame { from, bytes } => match self.abc.decode_message(bytes) {
                Ok(message) => {
                    let step = self.abc.handle(*from, message, &mut self.rng);
                    self.absorb(step, effects);
                }
                Err(_) => effects.faults.push(Fault { node: *from, kind: FaultKind::Undecodable }),
            },
        }
        while let Some(message) = self.loopback.pop_front() {
            let step = self.abc.handle(self.our_index, message, &mut self.rng);
            self.absorb(step, effects);
        }
    }

    fn input(&mut self, input: Input, effects: &mut Effects) {
        match self.abc.handle_input(input, &mut self.rng) {
            Ok(step) => self.absorb(step, effects),
            // Clock, Recover and ApplicationDigest never fail; a failure would be a bug in the core.
            Err(error) => tracing::error!(%error, "atomic broadcast refused an internal input"),
        }
    }

    fn absorb(&mut self, step: fides_atomic_broadcast::epoch::AbcStep, effects: &mut Effects) {
        effects.faults.extend(step.faults);
        for outgoing in step.messages {
            match outgoing.target {
                Target::All => {
                    self.loopback.push_back(outgoing.message.clone());
                    effects.outgoing.push(outgoing);
                }
                Target::Node(to) if to == self.our_index => self.loopback.push_back(outgoing.message),
                Target::Node(_) => effects.outgoing.push(outgoing),
            }
        }
        for output in step.outputs {
            match output {
                Output::Batch(batch) => {
                    self.log = log_next(&self.log, &batch);
                    let epoch = batch.epoch;
                    effects.batches.push((batch, self.log));
                    if (epoch + 1).is_multiple_of(self.checkpoint_interval) {
                        // The ordering service's state is its log: the log digest is its digest.
                        let digest = self.log;
                        self.input(Input::ApplicationDigest { epoch, digest }, effects);
                    }
                }
                Output::Checkpoint(checkpoint) => effects.checkpoints.push(checkpoint),
                Output::Install(checkpoint) => {
                    self.log = checkpoint.log;
                    effects.installs.push(checkpoint);
                }
            }
        }
    }
}

/// Messages of the last epochs, kept while replaying so that they can be sent again after a
/// restart (a crash may have come between logging an event and sending what it caused).
#[derive(Default)]
pub struct Recent {
    by_epoch: BTreeMap<u64, Vec<Outgoing<Message>>>,
}

impl Recent {
    /// Keep the epoch messages of `outgoing`, forgetting epochs before `keep_from`.
    pub fn keep(&mut self, outgoing: Vec<Outgoing<Message>>, keep_from: u64) {
        for message in outgoing {
            if let Some(epoch) = message_epoch(&message.message) {
                if epoch >= keep_from {
                    self.by_epoch.entry(epoch).or_default().push(message);
                }
            }
        }
        self.by_epoch = self.by_epoch.split_off(&keep_from);
    }

    /// A copy of the messages kept, in order (for a snapshot).
    pub fn messages(&self) -> Vec<Outgoing<Message>> {
        self.by_epoch.values().flatten().cloned().collect()
    }

    /// The messages kept, in order.
    pub fn into_messages(self) -> Vec<Outgoing<Message>> {
        self.by_epoch.into_values().flatten().collect()
    }
}

/// The epoch a message belongs to, if it belongs to one.
pub fn message_epoch(message: &Message) -> Option<u64> {
    match message {
        Message::Subset { epoch, .. } | Message::Decryption { epoch, .. } | Message::CheckpointShare { epoch, .. } => {
            Some(*epoch)
        }
        Message::CatchUpRequest { .. } | Message::CatchUp(_) => None,
    }
}

/// Whether a message is a vote or a proposal, which a replica that lost its memory must not send
/// again in an epoch it may have voted in. Decryption and checkpoint shares are deterministic
/// (the same share every time), so sending them again contradicts nothing.
pub fn is_vote(message: &Message) -> bool {
    matches!(message, Message::Subset { .. })
}
