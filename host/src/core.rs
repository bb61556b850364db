//! The replica's deterministic core: atomic broadcast, the RNG it draws from, and the bookkeeping
//! of what was delivered. Given the same keys, seed and events it does the same thing, which is
//! what makes replaying the write-ahead log a faithful restart (docs/replica.md).

use std::collections::{BTreeMap, VecDeque};

use fides_atomic_broadcast::checkpoint::{log_genesis, log_next, CatchUp, Checkpoint, Digest};
use fides_atomic_broadcast::epoch::{AtomicBroadcast, Batch, Error as AbcError, Input, Message, Output, RequestKey};
use fides_atomic_broadcast::instances::{self, Decided, InstanceId, Instances, InstancesState, InstancesStep};
use fides_types::codec::{get_option, put_option, Reader, Wire};
use fides_types::{Fault, FaultKind, NodeIndex, Outgoing, Target};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest as _, Sha256};

use crate::event::Event;

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
    /// Messages of the agreement instances for the other replicas.
    pub instance_outgoing: Vec<Outgoing<instances::Message>>,
    /// Agreement instances decided here (for the host to hand to the service that asked; a
    /// replay of the log decides them again, alike).
    pub decided: Vec<Decided>,
    /// Agreement instances the local service asked for and the core refused, with the reason.
    pub instance_refused: Vec<(InstanceId, instances::Error)>,
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
    /// The agreement instances the services ask for; `None` for a host without such services
    /// (an instance asked for is then refused, and instance messages are ignored).
    instances: Option<Instances>,
    instance_loopback: VecDeque<instances::Message>,
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
            instances: None,
            instance_loopback: VecDeque::new(),
        }
    }

    /// Host agreement instances (before the log is replayed, so that the replay runs them).
    pub fn with_instances(mut self, instances: Instances) -> Core {
        self.instances = Some(instances);
        self
    }

    /// The agreement instances, to read.
    pub fn instances(&self) -> Option<&Instances> {
        self.instances.as_ref()
    }

    /// Atomic broadcast, to read.
    pub fn abc(&self) -> &AtomicBroadcast {
        &self.abc
    }

    /// The whole state between two events, for a snapshot: atomic broadcast's
    /// (`AtomicBroadcast::encode_state`), the log digest and the agreement instances' state (if
    /// it hosts them). The RNG is not in it (it is seeded afresh for each event), nor are the
    /// keys and configuration.
    pub fn encode_state(&self) -> Vec<u8> {
        let mut out = self.abc.encode_state_to_vec();
        out.extend_from_slice(&self.log);
        put_option(&mut out, self.instances.as_ref(), |out, instances| instances.state().encode(out));
        out
    }

    /// Take the state `encode_state` wrote; `self` must be a fresh core of the same
    /// configuration. A corrupt state is an error.
    pub fn decode_state(&mut self, bytes: &[u8]) -> Result<(), fides_types::codec::DecodeError> {
        let mut reader = Reader::new(bytes);
        self.abc.decode_state(&mut reader)?;
        self.log = reader.array()?;
        let state = get_option(&mut reader, InstancesState::decode)?;
        match (&mut self.instances, state) {
            (Some(instances), Some(state)) => instances.restore(state)?,
            // A snapshot of a version that hosted no instances: none was started, so a fresh
            // set is that state.
            (Some(_), None) | (None, None) => {}
            // A snapshot of a core that hosted instances, read by one that does not: its instances
            // would be lost.
            (None, Some(_)) => {
                return Err(fides_types::codec::DecodeError::Invalid {
                    what: "agreement instances in the snapshot",
                    value: 1,
                })
            }
        }
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
            Event::Recover => {
                self.input(Input::Recover, effects);
                if let Some(step) = self.instances.as_mut().map(Instances::recover) {
                    self.absorb_instances(step, effects);
                }
            }
            Event::Agree { instance, vote } => match self.instances.as_mut() {
                Some(instances) => match instances.start(*instance, vote.clone()) {
                    Ok(step) => self.absorb_instances(step, effects),
                    Err(error) => effects.instance_refused.push((*instance, error)),
                },
                None => effects.instance_refused.push((*instance, instances::Error::NotHosted)),
            },
            Event::InstanceFrame { from, bytes } => match instances::Message::from_bytes(bytes) {
                Ok(message) => {
                    if let Some(step) = self.instances.as_mut().map(|i| i.handle(*from, message)) {
                        self.absorb_instances(step, effects);
                    }
                }
                Err(_) => effects.faults.push(Fault { node: *from, kind: FaultKind::Undecodable }),
            },
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
        while let Some(message) = self.instance_loopback.pop_front() {
            if let Some(step) = self.instances.as_mut().map(|i| i.handle(self.our_index, message)) {
                self.absorb_instances(step, effects);
            }
        }
    }

    fn absorb_instances(&mut self, step: InstancesStep, effects: &mut Effects) {
        effects.faults.extend(step.faults);
        effects.decided.extend(step.outputs);
        for outgoing in step.messages {
            match outgoing.target {
                Target::All => {
                    self.instance_loopback.push_back(outgoing.message.clone());
                    effects.instance_outgoing.push(outgoing);
                }
                Target::Node(to) if to == self.our_index => self.instance_loopback.push_back(outgoing.message),
                Target::Node(_) => effects.instance_outgoing.push(outgoing),
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fides_agreement::Vote;
    use fides_atomic_broadcast::epoch::{self, Keys};
    use fides_atomic_broadcast::instances::{Config, InstanceValidator, Status};
    use fides_crypto::ThresholdKeys;
    use fides_types::Quorum;

    use super::*;

    struct Prefix;

    impl InstanceValidator for Prefix {
        fn is_valid(&self, _instance: &InstanceId, justification: &[u8]) -> bool {
            justification.starts_with(b"ok")
        }
    }

    const SESSION: &[u8] = b"core-test";

    fn core(quorum: Quorum, index: NodeIndex, keys: &Arc<ThresholdKeys>) -> Core {
        let abc_keys = Keys { coin: Arc::clone(keys), encryption: Arc::clone(keys), signing: Arc::clone(keys) };
        let abc = AtomicBroadcast::new(quorum, index, epoch::Config::new(SESSION), abc_keys);
        let instances = Instances::new(quorum, index, Arc::clone(keys), Config::new(SESSION), Arc::new(Prefix));
        Core::new(abc, [index.0 as u8; 32], index, SESSION, 10).with_instances(instances)
    }

    /// Four cores, each with its in-memory log: every event is logged before it is applied, and
    /// instance messages travel as logged `InstanceFrame` events.
    struct Cluster {
        quorum: Quorum,
        keys: Vec<Arc<ThresholdKeys>>,
        cores: Vec<Core>,
        logs: Vec<Vec<Event>>,
        flight: VecDeque<(NodeIndex, NodeIndex, Vec<u8>)>,
        decided: Vec<Vec<Decided>>,
    }

    impl Cluster {
        fn new() -> Cluster {
            let quorum = Quorum::new(4, 1).expect("4 replicas tolerate 1");
            let mut rng = <rand_chacha::ChaCha8Rng as SeedableRng>::seed_from_u64(3);
            let set = blsttc::SecretKeySet::random(1, &mut rng);
            let keys: Vec<_> = quorum
                .nodes()
                .map(|i| Arc::new(ThresholdKeys::new(i, 4, set.public_keys(), set.secret_key_share(i.as_usize()))))
                .collect();
            let cores = quorum.nodes().map(|i| core(quorum, i, &keys[i.as_usize()])).collect();
            Cluster {
                quorum,
                keys,
                cores,
                logs: vec![Vec::new(); 4],
                flight: VecDeque::new(),
                decided: vec![Vec::new(); 4],
            }
        }

        fn log_and_apply(&mut self, at: usize, event: Event) {
            let seq = self.logs[at].len() as u64;
            self.logs[at].push(event.clone());
            let mut effects = Effects::default();
            self.cores[at].apply(seq, &event, &mut effects);
            self.take(at, effects);
        }

        fn take(&mut self, at: usize, effects: Effects) {
            assert!(effects.faults.is_empty(), "no faults among honest replicas: {:?}", effects.faults);
            let from = NodeIndex(at as u32);
            for outgoing in effects.instance_outgoing {
                let bytes = outgoing.message.to_bytes();
                match outgoing.target {
                    Target::All => {
                        for to in self.quorum.nodes().filter(|to| *to != from) {
                            self.flight.push_back((from, to, bytes.clone()));
                        }
                    }
                    Target::Node(to) => self.flight.push_back((from, to, bytes)),
                }
            }
            self.decided[at].extend(effects.decided);
        }

        /// Deliver up to `max` messages in order; those to `down` are lost.
        fn deliver(&mut self, max: usize, down: Option<usize>) {
            for _ in 0..max {
                let Some((from, to, bytes)) = self.flight.pop_front() else { return };
                if Some(to.as_usize()) != down {
                    self.log_and_apply(to.as_usize(), Event::InstanceFrame { from, bytes });
                }
            }
        }

        /// Replica `at` restarts: a fresh core replays its log (what it sends while replaying is
        /// not sent again), then handles `Recover` as the driver's start does.
        fn restart(&mut self, at: usize) {
            let index = NodeIndex(at as u32);
            let mut fresh = core(self.quorum, index, &self.keys[at]);
            let mut replayed = Vec::new();
            for (seq, event) in self.logs[at].iter().enumerate() {
                let mut effects = Effects::default();
                fresh.apply(seq as u64, event, &mut effects);
                replayed.extend(effects.decided);
            }
            assert_eq!(replayed, self.decided[at], "the replay decides what the live core decided");
            self.cores[at] = fresh;
            self.log_and_apply(at, Event::Recover);
        }
    }

    fn id(k: u8) -> InstanceId {
        InstanceId { service: *b"TST4", key: [k; 32] }
    }

    fn decided_alike(cluster: &Cluster, instances: u8, replicas: usize) {
        for k in 0..instances {
            let values: Vec<bool> = cluster.decided[..replicas]
                .iter()
                .flat_map(|d| d.iter().filter(|x| x.instance == id(k)).map(|x| x.value))
                .collect();
            assert_eq!(values.len(), replicas, "every replica decides instance {k} once: {values:?}");
            assert!(values.iter().all(|v| *v == values[0]), "agreement on instance {k}");
        }
    }

    /// Replica 3 never takes part, so the other three need each other to the end: replica 0,
    /// restarted after losing what was sent to it while down, must ask for it again.
    #[test]
    fn a_core_restarted_from_its_log_resumes_its_instances_and_they_decide() {
        let mut cluster = Cluster::new();
        for at in 0..3 {
            for k in 0..3u8 {
                let vote = if (at + k as usize).is_multiple_of(2) { Vote::One(b"ok".to_vec()) } else { Vote::Zero };
                cluster.log_and_apply(at, Event::Agree { instance: id(k), vote });
            }
        }
        cluster.flight.retain(|(_, to, _)| to.0 != 3);
        cluster.deliver(20, None);
        cluster.deliver(20, Some(0));
        assert_eq!(cluster.cores[0].instances().map(|i| i.status(&id(0))), Some(Status::Running));
        cluster.restart(0);
        loop {
            cluster.flight.retain(|(_, to, _)| to.0 != 3);
            if cluster.flight.is_empty() {
                break;
            }
            cluster.deliver(1, None);
        }
        decided_alike(&cluster, 3, 3);
    }

    /// Replica 0 is down while the three others decide and terminate without it: what it then
    /// sends is answered with their decisions.
    #[test]
    fn a_core_restarted_after_the_others_terminated_decides_from_their_answers() {
        let mut cluster = Cluster::new();
        for at in 0..4 {
            for k in 0..3u8 {
                let vote = if (at + k as usize).is_multiple_of(2) { Vote::One(b"ok".to_vec()) } else { Vote::Zero };
                cluster.log_and_apply(at, Event::Agree { instance: id(k), vote });
            }
        }
        cluster.deliver(30, None);
        while !cluster.flight.is_empty() {
            cluster.deliver(1, Some(0));
        }
        assert_eq!(cluster.cores[1].instances().map(|i| i.running_len()), Some(0), "the others terminated");
        cluster.restart(0);
        cluster.deliver(usize::MAX, None);
        decided_alike(&cluster, 3, 4);
        // Asking again for a decided instance is refused, and recorded as such.
        let mut effects = Effects::default();
        cluster.cores[1].apply(99, &Event::Agree { instance: id(0), vote: Vote::Zero }, &mut effects);
        assert_eq!(effects.instance_refused.len(), 1);
    }

    /// A data directory of a version whose core hosted no instances opens under one that does.
    #[test]
    fn a_snapshot_without_instances_restores_into_a_core_that_hosts_them() {
        let cluster = Cluster::new();
        let index = NodeIndex(1);
        let keys = &cluster.keys[1];
        let abc_keys = Keys { coin: Arc::clone(keys), encryption: Arc::clone(keys), signing: Arc::clone(keys) };
        let abc = AtomicBroadcast::new(cluster.quorum, index, epoch::Config::new(SESSION), abc_keys);
        let bare = Core::new(abc, [1; 32], index, SESSION, 10);
        let mut hosting = core(cluster.quorum, index, keys);
        hosting.decode_state(&bare.encode_state()).expect("a snapshot of a core without instances");
        assert_eq!(hosting.instances().map(Instances::running_len), Some(0));
        // The reverse would lose instances: refused.
        let abc_keys = Keys { coin: Arc::clone(keys), encryption: Arc::clone(keys), signing: Arc::clone(keys) };
        let abc = AtomicBroadcast::new(cluster.quorum, index, epoch::Config::new(SESSION), abc_keys);
        let mut bare = Core::new(abc, [1; 32], index, SESSION, 10);
        assert!(bare.decode_state(&hosting.encode_state()).is_err());
    }

    #[test]
    fn the_instances_state_is_in_the_snapshot_and_a_core_restored_from_it_finishes_them() {
        let mut cluster = Cluster::new();
        for at in 0..4 {
            cluster.log_and_apply(at, Event::Agree { instance: id(7), vote: Vote::One(b"ok".to_vec()) });
        }
        cluster.deliver(25, None);
        // Compaction: replica 2's log is replaced by a snapshot of its whole state; it restarts
        // from the snapshot alone.
        let snapshot = cluster.cores[2].encode_state();
        cluster.logs[2].clear();
        cluster.decided[2].clear();
        let mut fresh = core(cluster.quorum, NodeIndex(2), &cluster.keys[2]);
        fresh.decode_state(&snapshot).expect("its own snapshot decodes");
        cluster.cores[2] = fresh;
        cluster.log_and_apply(2, Event::Recover);
        cluster.deliver(usize::MAX, None);
        let statuses: Vec<_> = cluster.cores.iter().map(|c| c.instances().map(|i| i.status(&id(7)))).collect();
        assert!(statuses.iter().all(|s| *s == Some(Status::Decided(true))), "{statuses:?}");
    }
}
