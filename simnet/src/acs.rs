//! The common subset under the simulator: the scenario and one call that runs and checks a case.

use std::sync::Arc;

use fides_agreement::Message as AbaMessage;
use fides_atomic_broadcast::acs::{CommonSubset, Message, Subset};
use fides_atomic_broadcast::rbc::{self, Delivery};
use fides_crypto::ThresholdKeys;
use fides_types::codec::Wire;
use fides_types::{NodeIndex, Protocol, Quorum, Round};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::actors::{AgreementKey, AgreementView};
use crate::check;
use crate::{Behaviour, Byzantine, ByzantineSend, Micros, Network, RandomScheduler, RunConfig, Scenario};

/// The liveness phase starts at a time drawn below this (virtual µs, a few times a usual run);
/// every honest replica must then have output and terminated within [`LIVENESS_BOUND`].
const HEAL_AT_MAX: Micros = 3_000_000;
/// How long after the network healed the honest replicas have (virtual µs).
pub const LIVENESS_BOUND: Micros = 3_000_000;

/// One common subset to simulate.
#[derive(Clone, Debug)]
pub struct AcsCase {
    /// Replicas.
    pub n: u32,
    /// What the `t` Byzantine replicas do.
    pub byzantine: Behaviour,
    /// The seed.
    pub seed: u64,
}

/// The scenario: coin keys and every replica's proposal.
pub struct AcsScenario {
    quorum: Quorum,
    keys: Vec<Arc<ThresholdKeys>>,
    proposals: Vec<Vec<u8>>,
}

impl AcsScenario {
    fn instance(&self, index: NodeIndex, session: &[u8]) -> CommonSubset {
        let keys = Arc::clone(&self.keys[index.as_usize()]);
        CommonSubset::new(self.quorum, index, session, keys, rbc::Config::default())
    }
}

impl Scenario for AcsScenario {
    type P = CommonSubset;

    fn honest(&self, index: NodeIndex) -> CommonSubset {
        self.instance(index, b"simnet/acs/0")
    }

    fn input(&self, index: NodeIndex) -> Option<Vec<u8>> {
        Some(self.proposals[index.as_usize()].clone())
    }

    fn input_other(&self, index: NodeIndex) -> Option<Vec<u8>> {
        let mut other = self.proposals[index.as_usize()].clone();
        other.push(0xff);
        Some(other)
    }

    fn other_instance(&self, index: NodeIndex) -> CommonSubset {
        self.instance(index, b"simnet/acs/other")
    }

    fn garbage(&self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let proposer = NodeIndex(rng.gen_range(0..self.quorum.n() + 2));
        let round = Round(rng.gen_range(0..4));
        let message = match rng.gen_range(0..4) {
            0 => Message::Agreement { proposer, message: AbaMessage::Aux { round, value: rng.gen() } },
            1 => {
                Message::Agreement { proposer, message: AbaMessage::Term { value: rng.gen(), justification: vec![1] } }
            }
            2 => {
                let mut root = [0u8; 32];
                rng.fill_bytes(&mut root);
                Message::Broadcast { proposer, message: rbc::Message::Ready(root) }
            }
            _ => {
                let mut bytes = vec![0u8; rng.gen_range(0..80)];
                rng.fill_bytes(&mut bytes);
                return bytes;
            }
        };
        message.to_bytes()
    }

    fn agreements(&self) -> Option<AgreementView<Message>> {
        fn open(message: &Message) -> Option<(AgreementKey, &AbaMessage)> {
            match message {
                Message::Agreement { proposer, message } => Some(((0, proposer.0), message)),
                Message::Broadcast { .. } => None,
            }
        }
        fn wrap((_, proposer): AgreementKey, message: AbaMessage) -> Message {
            Message::Agreement { proposer: NodeIndex(proposer), message }
        }
        Some(AgreementView { open, wrap })
    }

    fn adaptive(&self, index: NodeIndex) -> Box<dyn Byzantine<CommonSubset>> {
        Box::new(Censor { inner: self.honest(index) })
    }
}

/// The adaptive attacker of the common subset: it takes part honestly except that it never
/// supports anyone's proposal — it proposes nothing and drops every vote for 1 it would send,
/// trying to keep honest proposals out of the subset.
struct Censor {
    inner: CommonSubset,
}

impl Censor {
    fn filter(step: fides_types::Step<Message, Subset>) -> Vec<ByzantineSend> {
        step.messages
            .into_iter()
            .filter(|m| {
                !matches!(
                    &m.message,
                    Message::Agreement {
                        message: AbaMessage::BVal { value: true, .. } | AbaMessage::Aux { value: true, .. },
                        ..
                    }
                )
            })
            .map(|m| ByzantineSend::new(m.target, m.message.to_bytes()))
            .collect()
    }
}

impl Byzantine<CommonSubset> for Censor {
    fn start(&mut self, _rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        Vec::new()
    }

    fn receive(&mut self, from: NodeIndex, bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        match Message::from_bytes(bytes) {
            Ok(message) => Self::filter(self.inner.handle_message(from, message, rng)),
            Err(_) => Vec::new(),
        }
    }
}

/// Run one case and check it; the size of the agreed subset.
pub fn run_case(case: &AcsCase) -> Result<usize, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let keys = crate::threshold_keys(quorum, &mut rng);
    let proposals = quorum
        .nodes()
        .map(|_| {
            let mut value = vec![0u8; rng.gen_range(0..300)];
            rng.fill_bytes(&mut value);
            value
        })
        .collect();
    let scenario = AcsScenario { quorum, keys, proposals };
    let crate::Placement { byzantine, behaviours, .. } = crate::place(quorum, &case.byzantine, &mut rng);
    let scheduler = RandomScheduler::new(quorum, &mut rng);
    let heal_at = rng.gen_range(0..HEAL_AT_MAX);
    let config = RunConfig { seed: case.seed, deliveries_max: 3_000_000, cpu: None };
    let report = Network::new(quorum, &scenario, &behaviours, scheduler, config)
        .with_liveness(heal_at, LIVENESS_BOUND)
        .run(|i| scenario.input(i));
    let context = |e: String| format!("{e} (n={}, byzantine={})", case.n, case.byzantine.name());
    check::faults_only_against(&report, &byzantine).map_err(context)?;
    check::liveness(&report).map_err(context)?;
    let outputs: Vec<Option<Vec<check::SubsetView>>> = report
        .outputs
        .iter()
        .map(|o| {
            o.as_ref().map(|list| {
                list.iter()
                    .map(|p| {
                        p.output
                            .iter()
                            .map(|(j, d)| {
                                let value = match d {
                                    Delivery::Value(v) => Some(v.clone()),
                                    Delivery::Invalid => None,
                                };
                                (j.0, value)
                            })
                            .collect()
                    })
                    .collect()
            })
        })
        .collect();
    let honest_proposals: Vec<Option<Vec<u8>>> =
        quorum.nodes().map(|i| (!byzantine.contains(&i)).then(|| scenario.proposals[i.as_usize()].clone())).collect();
    check::common_subset(&outputs, &report.terminated, &honest_proposals, quorum.n(), quorum.t()).map_err(context)
}
