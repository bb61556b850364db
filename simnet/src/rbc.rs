//! Reliable broadcast under the simulator: the scenario and one call that runs and checks a case.

use fides_atomic_broadcast::rbc::{Config, Delivery, Message, Proof, ReliableBroadcast};
use fides_types::codec::Wire;
use fides_types::{NodeIndex, Quorum};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::check;
use crate::{Behaviour, Byzantine, ByzantineSend, Micros, Network, RandomScheduler, RunConfig, Scenario};

/// The liveness phase starts at a time drawn below this (virtual µs, a few times a usual run).
/// It applies to runs with an honest proposer: every honest replica must then deliver within
/// [`LIVENESS_BOUND`]. (A Byzantine proposer may leave everyone without a delivery.)
const HEAL_AT_MAX: Micros = 2_000_000;
/// How long after the network healed the honest replicas have (virtual µs).
pub const LIVENESS_BOUND: Micros = 1_000_000;

/// One broadcast to simulate.
#[derive(Clone, Debug)]
pub struct RbcCase {
    /// Replicas.
    pub n: u32,
    /// What the `t` Byzantine replicas do.
    pub byzantine: Behaviour,
    /// Whether the proposer is one of them.
    pub proposer_byzantine: bool,
    /// Length of the proposed value.
    pub value_len: usize,
    /// The seed.
    pub seed: u64,
}

/// The scenario of one broadcast.
pub struct RbcScenario {
    quorum: Quorum,
    proposer: NodeIndex,
    value: Vec<u8>,
    value_other: Vec<u8>,
    config: Config,
}

impl Scenario for RbcScenario {
    type P = ReliableBroadcast;

    fn honest(&self, index: NodeIndex) -> ReliableBroadcast {
        ReliableBroadcast::new(self.quorum, index, self.proposer, self.config)
    }

    fn input(&self, index: NodeIndex) -> Option<Vec<u8>> {
        (index == self.proposer).then(|| self.value.clone())
    }

    fn input_other(&self, index: NodeIndex) -> Option<Vec<u8>> {
        (index == self.proposer).then(|| self.value_other.clone())
    }

    fn other_instance(&self, index: NodeIndex) -> ReliableBroadcast {
        // The broadcast of the next replica: its messages belong to another instance.
        let other = NodeIndex((self.proposer.0 + 1) % self.quorum.n());
        ReliableBroadcast::new(self.quorum, index, other, self.config)
    }

    fn garbage(&self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let mut root = [0u8; 32];
        rng.fill_bytes(&mut root);
        let depth = rng.gen_range(0..12);
        let proof = Proof {
            root,
            index: rng.gen_range(0..self.quorum.n() + 2),
            shard: vec![rng.gen(); rng.gen_range(0..64)],
            path: (0..depth.min(10)).map(|_| root).collect(),
        };
        match rng.gen_range(0..5) {
            0 => Message::Value(proof).to_bytes(),
            1 => Message::Echo(proof).to_bytes(),
            2 => Message::Ready(root).to_bytes(),
            3 => {
                // A shard that claims nearly 4 GiB.
                let mut bytes = vec![1u8];
                bytes.extend_from_slice(&root);
                bytes.extend_from_slice(&0u32.to_le_bytes());
                bytes.extend_from_slice(&(u32::MAX - 3).to_le_bytes());
                bytes
            }
            _ => {
                let bytes = Message::Echo(proof).to_bytes();
                bytes[..rng.gen_range(0..bytes.len())].to_vec()
            }
        }
    }

    fn adaptive(&self, _index: NodeIndex) -> Box<dyn Byzantine<ReliableBroadcast>> {
        Box::new(ReadyForger { quorum: self.quorum, forged: 0 })
    }
}

/// The adaptive attacker of reliable broadcast: for every root it hears of it sends READY for a
/// root next to it, and echoes a shard of its own under the real root, hoping to make honest
/// replicas deliver different things or decode garbage.
struct ReadyForger {
    quorum: Quorum,
    forged: u32,
}

impl Byzantine<ReliableBroadcast> for ReadyForger {
    fn start(&mut self, _rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        Vec::new()
    }

    fn receive(&mut self, _from: NodeIndex, bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let root = match Message::from_bytes(bytes) {
            Ok(Message::Value(proof) | Message::Echo(proof)) => proof.root,
            Ok(Message::Ready(root)) => root,
            Err(_) => return Vec::new(),
        };
        if self.forged >= 8 {
            return Vec::new();
        }
        self.forged += 1;
        let mut other = root;
        other[0] ^= 1;
        let half = self.quorum.n() / 2;
        let mut sends = Vec::new();
        for to in self.quorum.nodes() {
            let target = fides_types::Target::Node(to);
            let ready = if to.0 < half { root } else { other };
            sends.push(ByzantineSend::new(target, Message::Ready(ready).to_bytes()));
            let shard = vec![rng.gen(); 8];
            let echo = Proof { root, index: rng.gen_range(0..self.quorum.n()), shard, path: Vec::new() };
            sends.push(ByzantineSend::new(target, Message::Echo(echo).to_bytes()));
        }
        sends
    }
}

/// Run one case and check it with the independent checkers; the number of honest replicas that
/// delivered.
pub fn run_case(case: &RbcCase) -> Result<usize, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let crate::Placement { byzantine, honest, behaviours } = crate::place(quorum, &case.byzantine, &mut rng);
    let proposer = match byzantine.first() {
        Some(first) if case.proposer_byzantine => *first,
        _ => honest[0],
    };
    let mut value = vec![0u8; case.value_len];
    rng.fill_bytes(&mut value);
    let mut value_other = value.clone();
    value_other.push(1);
    let scenario = RbcScenario { quorum, proposer, value: value.clone(), value_other, config: Config::default() };
    let scheduler = RandomScheduler::new(quorum, &mut rng);
    let heal_at = rng.gen_range(0..HEAL_AT_MAX);
    let config = RunConfig { seed: case.seed, deliveries_max: 1_000_000, cpu: None };
    let mut network = Network::new(quorum, &scenario, &behaviours, scheduler, config);
    if !byzantine.contains(&proposer) {
        network = network.with_liveness(heal_at, LIVENESS_BOUND);
    }
    let report = network.run(|i| scenario.input(i));
    let context = |e: String| {
        format!(
            "{e} (n={}, byzantine={}, proposer byzantine: {})",
            case.n,
            case.byzantine.name(),
            byzantine.contains(&proposer)
        )
    };
    check::faults_only_against(&report, &byzantine).map_err(context)?;
    check::liveness(&report).map_err(context)?;
    let deliveries: Vec<Option<Vec<Option<Vec<u8>>>>> = report
        .outputs
        .iter()
        .map(|o| {
            o.as_ref().map(|list| {
                list.iter()
                    .map(|p| match &p.output {
                        Delivery::Value(v) => Some(v.clone()),
                        Delivery::Invalid => None,
                    })
                    .collect()
            })
        })
        .collect();
    let proposed = (!byzantine.contains(&proposer)).then_some(value.as_slice());
    check::reliable_broadcast(&deliveries, proposed).map_err(context)
}
