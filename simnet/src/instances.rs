//! Agreement instances under the simulator: many validated binary agreements at once, each honest
//! replica starting some of them late (its service applied the request later), with the
//! Byzantine actors and a liveness phase.

use std::sync::Arc;

use fides_agreement::{Message as AbaMessage, Vote};
use fides_atomic_broadcast::instances::{
    Config, Decided, Error, InstanceId, InstanceValidator, Instances, InstancesStep, Message, Status,
};
use fides_crypto::ThresholdKeys;
use fides_types::codec::Wire;
use fides_types::{NodeIndex, Protocol, Quorum, Round, Target};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::actors::{AgreementKey, AgreementView};
use crate::check::{self, BinaryOutcome};
use crate::{Behaviour, Byzantine, ByzantineSend, Micros, Network, RandomScheduler, RunConfig, Scenario};

/// The liveness phase starts at a time drawn below this (virtual µs).
const HEAL_AT_MAX: Micros = 2_000_000;
/// How long after the network healed the honest replicas have (virtual µs).
pub const LIVENESS_BOUND: Micros = 3_000_000;
/// The service id of the simulated instances.
const SERVICE: [u8; 4] = *b"TST9";

/// Instance `k` of a run: its key is `k` then zeros.
pub fn instance_id(k: u64) -> InstanceId {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&k.to_le_bytes());
    InstanceId { service: SERVICE, key }
}

/// The justification of a vote for 1 in `instance`: `proof:` and the instance's key.
pub fn proof(instance: &InstanceId) -> Vec<u8> {
    let mut proof = b"proof:".to_vec();
    proof.extend_from_slice(&instance.key);
    proof
}

/// The predicate the replicas are given: [`proof`] of the very instance.
struct ProofOfInstance;

impl InstanceValidator for ProofOfInstance {
    fn is_valid(&self, instance: &InstanceId, justification: &[u8]) -> bool {
        justification == proof(instance)
    }
}

/// One replica's instances, as a protocol for the simulator: an input starts a list of
/// instances, and the replica is done once every instance of the run terminated here.
#[derive(Debug)]
pub struct InstancesNode {
    inner: Instances,
    index: NodeIndex,
    instances: u64,
}

impl Protocol for InstancesNode {
    type Input = Vec<(InstanceId, Vote)>;
    type Message = Message;
    type Output = Decided;
    type Error = Error;

    fn our_index(&self) -> NodeIndex {
        self.index
    }

    fn handle_input(&mut self, input: Self::Input, _rng: &mut dyn RngCore) -> Result<InstancesStep, Error> {
        let mut step = InstancesStep::default();
        for (instance, vote) in input {
            let inner = self.inner.start(instance, vote)?;
            step.messages.extend(inner.messages);
            step.outputs.extend(inner.outputs);
            step.faults.extend(inner.faults);
        }
        Ok(step)
    }

    fn handle_message(&mut self, from: NodeIndex, message: Message, _rng: &mut dyn RngCore) -> InstancesStep {
        self.inner.handle(from, message)
    }

    fn terminated(&self) -> bool {
        (0..self.instances).all(|k| matches!(self.inner.status(&instance_id(k)), Status::Decided(_)))
    }
}

/// One run to simulate.
#[derive(Clone, Debug)]
pub struct InstancesCase {
    /// Replicas.
    pub n: u32,
    /// Instances started by every honest replica.
    pub instances: u64,
    /// What the `t` Byzantine replicas do.
    pub byzantine: Behaviour,
    /// The seed.
    pub seed: u64,
}

/// The scenario: keys, each replica's votes, and which instances it starts late.
pub struct InstancesScenario {
    quorum: Quorum,
    keys: Vec<Arc<ThresholdKeys>>,
    instances: u64,
    /// Per replica and instance: the vote for 1 (else 0).
    votes_one: Vec<Vec<bool>>,
    /// Per replica, how many instances it starts at the beginning; it starts the others later,
    /// in the same order (every service starts instances in the order of the requests it
    /// applies, only not at the same moment).
    early: Vec<u64>,
    config: Config,
}

impl InstancesScenario {
    fn node(&self, index: NodeIndex, session: &str) -> InstancesNode {
        let config = Config { session: session.as_bytes().to_vec(), ..self.config.clone() };
        let keys = Arc::clone(&self.keys[index.as_usize()]);
        InstancesNode {
            inner: Instances::new(self.quorum, index, keys, config, Arc::new(ProofOfInstance)),
            index,
            instances: self.instances,
        }
    }

    fn vote(&self, index: NodeIndex, k: u64, flip: bool) -> Vote {
        let one = self.votes_one[index.as_usize()][k as usize] != flip;
        if one {
            Vote::One(proof(&instance_id(k)))
        } else {
            Vote::Zero
        }
    }

    fn starts(&self, index: NodeIndex, early: bool, flip: bool) -> Vec<(InstanceId, Vote)> {
        (0..self.instances)
            .filter(|k| (*k < self.early[index.as_usize()]) == early)
            .map(|k| (instance_id(k), self.vote(index, k, flip)))
            .collect()
    }
}

impl Scenario for InstancesScenario {
    type P = InstancesNode;

    fn honest(&self, index: NodeIndex) -> InstancesNode {
        self.node(index, "simnet/instances")
    }

    fn input(&self, index: NodeIndex) -> Option<Vec<(InstanceId, Vote)>> {
        Some(self.starts(index, true, false))
    }

    fn input_other(&self, index: NodeIndex) -> Option<Vec<(InstanceId, Vote)>> {
        // The second face starts everything at once, with the other votes.
        Some((0..self.instances).map(|k| (instance_id(k), self.vote(index, k, true))).collect())
    }

    fn other_instance(&self, index: NodeIndex) -> InstancesNode {
        self.node(index, "simnet/instances/other")
    }

    fn garbage(&self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let instance = instance_id(rng.gen_range(0..self.instances + 2));
        let round = Round(rng.gen_range(0..4));
        let message = match rng.gen_range(0..5) {
            0 => AbaMessage::Aux { round, value: rng.gen() },
            1 => AbaMessage::Term { value: true, justification: b"proof:forged".to_vec() },
            2 => AbaMessage::BVal { round, value: true, justification: proof(&instance_id(u64::MAX)) },
            3 => AbaMessage::Coin { round: Round(2), share: [rng.gen(); 96] },
            _ => {
                let mut bytes = vec![0u8; rng.gen_range(0..80)];
                rng.fill_bytes(&mut bytes);
                return bytes;
            }
        };
        Message { instance, message }.to_bytes()
    }

    fn adaptive(&self, _index: NodeIndex) -> Box<dyn Byzantine<InstancesNode>> {
        Box::new(Flooder { next: 1 << 32, sent: 0 })
    }

    fn agreements(&self) -> Option<AgreementView<Message>> {
        fn open(message: &Message) -> Option<(AgreementKey, &AbaMessage)> {
            let mut k = [0u8; 8];
            k.copy_from_slice(&message.instance.key[..8]);
            Some(((u64::from_le_bytes(k), 0), &message.message))
        }
        fn wrap((k, _): AgreementKey, message: AbaMessage) -> Message {
            Message { instance: instance_id(k), message }
        }
        Some(AgreementView { open, wrap })
    }
}

/// The adaptive attacker of the instances: on every message it receives it sends every replica
/// a vote in an instance nobody will ever start, trying to crowd out the honest replicas'
/// messages kept for instances not started yet.
struct Flooder {
    next: u64,
    sent: u32,
}

impl Byzantine<InstancesNode> for Flooder {
    fn start(&mut self, _rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        Vec::new()
    }

    fn receive(&mut self, _from: NodeIndex, _bytes: &[u8], _rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        if self.sent >= 5_000 {
            return Vec::new();
        }
        self.sent += 1;
        self.next += 1;
        let message =
            Message { instance: instance_id(self.next), message: AbaMessage::Aux { round: Round(0), value: true } };
        vec![ByzantineSend::new(Target::All, message.to_bytes())]
    }
}

/// Run one case and check, for every instance, agreement, validity (a decided 1 carries the
/// proof of that very instance; all honest proposing one value decide it) and termination.
/// Returns how many instances decided 1.
pub fn run_case(case: &InstancesCase) -> Result<u64, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let keys = crate::threshold_keys(quorum, &mut rng);
    let count = case.instances as usize;
    // Per instance a bias, so that some instances see all honest replicas agree and others split.
    let bias: Vec<f64> = (0..count).map(|_| [0.0, 1.0, 0.5][rng.gen_range(0..3)]).collect();
    let votes_one = quorum.nodes().map(|_| bias.iter().map(|p| rng.gen_bool(*p)).collect()).collect();
    let early = quorum.nodes().map(|_| rng.gen_range(0..=case.instances)).collect();
    let mut config = Config::new("simnet/instances");
    // Fewer than the instances: some starts wait for room.
    config.running_max = (count / 2).max(1);
    let scenario = InstancesScenario { quorum, keys, instances: case.instances, votes_one, early, config };
    let crate::Placement { byzantine, behaviours, .. } = crate::place(quorum, &case.byzantine, &mut rng);
    let scheduler = RandomScheduler::new(quorum, &mut rng);
    let heal_at = rng.gen_range(0..HEAL_AT_MAX);
    let run = RunConfig { seed: case.seed, deliveries_max: 3_000_000, cpu: None };
    let mut network =
        Network::new(quorum, &scenario, &behaviours, scheduler, run).with_liveness(heal_at, LIVENESS_BOUND);
    for index in quorum.nodes().filter(|i| !byzantine.contains(i)) {
        let late = scenario.starts(index, false, false);
        if !late.is_empty() {
            network = network.with_input_at(rng.gen_range(0..HEAL_AT_MAX), index, late);
        }
    }
    let report = network.run(|i| scenario.input(i));
    let context = |e: String| format!("{e} (n={}, byzantine={})", case.n, case.byzantine.name());
    check::faults_only_against(&report, &byzantine).map_err(context)?;
    check::liveness(&report).map_err(context)?;
    let mut ones = 0;
    for k in 0..case.instances {
        let instance = instance_id(k);
        let outcome = BinaryOutcome {
            outputs: report
                .outputs
                .iter()
                .map(|o| {
                    o.as_ref().map(|list| {
                        list.iter()
                            .filter(|p| p.output.instance == instance)
                            .map(|p| (p.output.value, p.output.justification.clone()))
                            .collect()
                    })
                })
                .collect(),
            terminated: report.terminated.clone(),
            stalled: report.stalled,
        };
        let proposals: Vec<Option<bool>> = quorum
            .nodes()
            .map(|i| (!byzantine.contains(&i)).then(|| scenario.votes_one[i.as_usize()][k as usize]))
            .collect();
        let context = |e: String| context(format!("instance {k}: {e}"));
        let value = check::binary_agreement(&outcome, &proposals, Some(check::proof_predicate)).map_err(context)?;
        // The predicate restated: the proof must be of this very instance, not of another.
        let foreign = outcome.outputs.iter().flatten().flatten().find(|(value, justification)| {
            *value
                && justification.as_deref().and_then(|j| j.strip_prefix(b"proof:".as_slice()))
                    != Some(&instance.key[..])
        });
        if foreign.is_some() {
            return Err(context("external validity: a 1 decided with the proof of another instance".into()));
        }
        ones += u64::from(value);
    }
    Ok(ones)
}
