//! Atomic broadcast's whole state as bytes (`AtomicBroadcast::encode_state`), which a replica's
//! snapshots hold so that they need no quiescence:
//!
//! - a replica replaced, after any message it handled, by a fresh instance decoded from its
//!   state goes on exactly as the original: fed the same following messages with the same
//!   randomness, it produces the same steps (a cluster of honest replicas, seeded schedules);
//! - encode → decode → encode gives the same bytes at every point tried;
//! - honest replicas replaced that way at random moments (mid-epoch, mid-agreement) under the
//!   Byzantine actors, and with one replica catching up, still meet every property of the
//!   atomic-broadcast runs;
//! - a corrupt state (truncated, bytes changed) is an error, never a panic.
//!
//! A few seeds by default (a few seconds); more with `SIMNET_SEEDS`, or in the `slow_` test.

use std::collections::VecDeque;

use fides_atomic_broadcast::epoch::{AtomicBroadcast, Config, Input, Keys, Message, Output, Request};
use fides_types::codec::Reader;
use fides_types::{NodeIndex, Quorum, Step, Target};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use simnet::abc::{application, run_case_with_rebuilds, AbcCase, ClusterKeys, CHECKPOINT_INTERVAL};
use simnet::seeds::run_seeds;
use simnet::Behaviour;

type AbcStep = Step<Message, Output>;

/// A cluster of `n` honest replicas delivering messages in a seeded random order.
struct Cluster {
    quorum: Quorum,
    keys: ClusterKeys,
    config: Config,
    nodes: Vec<AtomicBroadcast>,
    rngs: Vec<ChaCha8Rng>,
    in_flight: Vec<(NodeIndex, NodeIndex, Message)>,
    /// Inputs each replica's application gives back (digests at checkpoint epochs).
    inputs: Vec<VecDeque<Input>>,
    application: simnet::Reaction<AtomicBroadcast>,
    delivered: u64,
}

impl Cluster {
    fn new(n: u32, requests: u64, rng: &mut ChaCha8Rng) -> Cluster {
        let quorum = Quorum::with_max_faults(n).expect("n is at least 1");
        let keys = ClusterKeys::random(quorum, rng);
        let mut config = Config::new(b"simnet/snapshot".to_vec());
        config.batch_size = 2 * n as usize;
        config.checkpoint_interval = CHECKPOINT_INTERVAL;
        config.epochs_future_max = 8;
        let mut cluster = Cluster {
            quorum,
            nodes: quorum.nodes().map(|i| Self::fresh(quorum, &keys, &config, i)).collect(),
            rngs: quorum.nodes().map(|i| ChaCha8Rng::seed_from_u64(rng.gen::<u64>() ^ u64::from(i.0))).collect(),
            keys,
            config,
            in_flight: Vec::new(),
            inputs: vec![VecDeque::new(); n as usize],
            application: application(n, CHECKPOINT_INTERVAL),
            delivered: 0,
        };
        for index in quorum.nodes() {
            let mine: Vec<Request> = (0..requests)
                .filter(|id| rng.gen_bool(0.6) || id % u64::from(n) == u64::from(index.0))
                .map(|id| Request { client: id % 3, id, payload: vec![id as u8; 1 + (id % 17) as usize] })
                .collect();
            let input = Input::Start { clock: 1_000 + u64::from(index.0), requests: mine };
            let i = index.as_usize();
            let step = cluster.nodes[i].handle_input(input, &mut cluster.rngs[i]).expect("honest start");
            cluster.route(index, step);
        }
        cluster
    }

    fn fresh(quorum: Quorum, keys: &ClusterKeys, config: &Config, index: NodeIndex) -> AtomicBroadcast {
        let i = index.as_usize();
        let keys = Keys {
            coin: keys.coin[i].clone(),
            encryption: keys.encryption[i].clone(),
            signing: keys.signing[i].clone(),
        };
        AtomicBroadcast::new(quorum, index, config.clone(), keys)
    }

    /// A copy of replica `index` decoded from its state; the state must survive the round trip.
    fn copy(&self, index: NodeIndex) -> Result<AtomicBroadcast, String> {
        let bytes = self.nodes[index.as_usize()].encode_state_to_vec();
        let mut copy = Self::fresh(self.quorum, &self.keys, &self.config, index);
        let mut reader = Reader::new(&bytes);
        copy.decode_state(&mut reader).and_then(|()| reader.finish()).map_err(|e| format!("decode: {e}"))?;
        if copy.encode_state_to_vec() != bytes {
            return Err(format!("replica {index}: encode → decode → encode changed the bytes"));
        }
        Ok(copy)
    }

    fn route(&mut self, from: NodeIndex, step: AbcStep) {
        for outgoing in step.messages {
            match outgoing.target {
                Target::All => {
                    for to in self.quorum.nodes() {
                        self.in_flight.push((from, to, outgoing.message.clone()));
                    }
                }
                Target::Node(to) => self.in_flight.push((from, to, outgoing.message)),
            }
        }
        for output in &step.outputs {
            if let Some(input) = (self.application)(from, output) {
                self.inputs[from.as_usize()].push_back(input);
            }
        }
    }

    /// Take the next event at random: a message in flight, or an input an application gave back.
    fn next(&mut self, rng: &mut ChaCha8Rng) -> Option<(NodeIndex, Event)> {
        let waiting: Vec<usize> = (0..self.nodes.len()).filter(|i| !self.inputs[*i].is_empty()).collect();
        if !waiting.is_empty() && (self.in_flight.is_empty() || rng.gen_bool(0.2)) {
            let i = waiting[rng.gen_range(0..waiting.len())];
            let input = self.inputs[i].pop_front()?;
            return Some((NodeIndex(i as u32), Event::Input(input)));
        }
        if self.in_flight.is_empty() {
            return None;
        }
        let k = rng.gen_range(0..self.in_flight.len());
        let (from, to, message) = self.in_flight.swap_remove(k);
        Some((to, Event::Message(from, Box::new(message))))
    }
}

enum Event {
    Input(Input),
    Message(NodeIndex, Box<Message>),
}

fn handle(node: &mut AtomicBroadcast, event: Event, rng: &mut ChaCha8Rng) -> AbcStep {
    match event {
        Event::Input(input) => node.handle_input(input, rng).expect("applications' inputs are accepted"),
        Event::Message(from, message) => node.handle(from, *message, rng),
    }
}

/// Run a cluster; now and then a replica gets a twin decoded from its state, and both handle its
/// next events with the same randomness: every step must be the same. The twin then takes the
/// original's place. Returns the number of twins compared.
fn twins_behave_alike(seed: u64) -> Result<u64, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = if seed.is_multiple_of(2) { 4 } else { 7 };
    let mut cluster = Cluster::new(n, 24, &mut rng);
    // (replica, its twin, the twin's RNG, events still to compare)
    let mut twin: Option<(NodeIndex, AtomicBroadcast, ChaCha8Rng, u32)> = None;
    let mut twins = 0;
    let mut mid_epoch = 0;
    while let Some((to, event)) = cluster.next(&mut rng) {
        cluster.delivered += 1;
        if cluster.delivered > 200_000 {
            return Err("the run did not end".into());
        }
        let i = to.as_usize();
        let step = match &mut twin {
            Some((index, copy, copy_rng, left)) if *index == to => {
                let event_copy = match &event {
                    Event::Input(input) => Event::Input(input.clone()),
                    Event::Message(from, message) => Event::Message(*from, message.clone()),
                };
                let step = handle(&mut cluster.nodes[i], event, &mut cluster.rngs[i]);
                let step_copy = handle(copy, event_copy, copy_rng);
                if step != step_copy {
                    return Err(format!(
                        "replica {to}: the decoded copy's step differs from the original's\n original: {step:?}\n copy: {step_copy:?}"
                    ));
                }
                *left -= 1;
                step
            }
            _ => handle(&mut cluster.nodes[i], event, &mut cluster.rngs[i]),
        };
        cluster.route(to, step);
        if let Some((index, copy, copy_rng, 0)) = twin.take() {
            // The twin replaces the original: the run goes on with it.
            cluster.nodes[index.as_usize()] = copy;
            cluster.rngs[index.as_usize()] = copy_rng;
        }
        if twin.is_none() && rng.gen_bool(0.02) {
            let index = NodeIndex(rng.gen_range(0..n));
            let copy = cluster.copy(index)?;
            if !cluster.nodes[index.as_usize()].is_quiescent() {
                mid_epoch += 1;
            }
            twin = Some((index, copy, cluster.rngs[index.as_usize()].clone(), rng.gen_range(1..200)));
            twins += 1;
        }
    }
    let delivered: Vec<u64> = cluster.nodes.iter().map(AtomicBroadcast::next_epoch).collect();
    if delivered.contains(&0) {
        return Err(format!("some replica delivered nothing: {delivered:?}"));
    }
    if twins > 0 && mid_epoch == 0 {
        return Err("no twin was made mid-epoch".into());
    }
    Ok(twins)
}

#[test]
fn a_replica_decoded_from_its_state_takes_the_same_steps_as_the_original() {
    let twins = run_seeds(env!("CARGO_CRATE_NAME"), 4, twins_behave_alike);
    println!("twins compared: {twins:?}");
    assert!(twins.iter().sum::<u64>() > 0, "no twin was made");
}

fn rebuilt_suite(seeds: u64, kinds: &[Behaviour], lagging: bool) {
    for kind in kinds {
        let counts = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
            let case = AbcCase { n: 4, byzantine: kind.clone(), requests: 30, lagging, content_aware: false, seed };
            let (summary, rebuilds) = run_case_with_rebuilds(&case, 0.01)?;
            if rebuilds.mid_epoch == 0 {
                return Err(format!("no replica was rebuilt mid-epoch ({} rebuilt)", rebuilds.count));
            }
            Ok((summary.epochs, rebuilds.count, rebuilds.mid_epoch))
        });
        println!("byzantine={:<12} lagging={lagging}: (epochs, rebuilt, mid-epoch) {counts:?}", kind.name());
    }
}

#[test]
fn replicas_rebuilt_from_their_state_at_random_moments_keep_every_property() {
    rebuilt_suite(2, &[Behaviour::Equivocator, Behaviour::Garbage, Behaviour::Silent], false);
    rebuilt_suite(2, &[Behaviour::Replayer], true);
}

#[test]
#[ignore = "slow: many seeds"]
fn slow_replicas_rebuilt_from_their_state_at_random_moments_keep_every_property() {
    let kinds = [
        Behaviour::Equivocator,
        Behaviour::Garbage,
        Behaviour::Silent,
        Behaviour::Replayer,
        Behaviour::Impersonator,
        Behaviour::Adaptive,
    ];
    rebuilt_suite(20, &kinds, false);
    rebuilt_suite(20, &kinds, true);
}

#[test]
fn a_corrupt_state_is_an_error_not_a_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut cluster = Cluster::new(4, 16, &mut rng);
    let mut states = Vec::new();
    while let Some((to, event)) = cluster.next(&mut rng) {
        let i = to.as_usize();
        let step = handle(&mut cluster.nodes[i], event, &mut cluster.rngs[i]);
        cluster.route(to, step);
        if rng.gen_bool(0.01) && states.len() < 8 {
            states.push((to, cluster.nodes[i].encode_state_to_vec()));
        }
    }
    assert!(!states.is_empty());
    let mut errors = 0;
    for (index, bytes) in &states {
        let mut tries: Vec<Vec<u8>> = Vec::new();
        for _ in 0..40 {
            tries.push(bytes[..rng.gen_range(0..bytes.len())].to_vec());
            let mut changed = bytes.clone();
            for _ in 0..rng.gen_range(1..4) {
                let k = rng.gen_range(0..changed.len());
                changed[k] = rng.gen();
            }
            tries.push(changed);
        }
        for attempt in tries {
            let mut copy = Cluster::fresh(cluster.quorum, &cluster.keys, &cluster.config, *index);
            let mut reader = Reader::new(&attempt);
            if copy.decode_state(&mut reader).and_then(|()| reader.finish()).is_err() {
                errors += 1;
            }
        }
    }
    assert!(errors > 0, "no corrupt state was refused");
}
