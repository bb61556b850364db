//! The epoch signer under the simulator: the scenario, its Byzantine signers, its schedulers, and
//! one call that runs and checks a case.
//!
//! Each honest replica is given the root of epochs `0..epochs` one after another at times of its
//! own (as it would apply them), and must end with a certificate for every one of them that
//! verifies a client's answer alone. The `t` Byzantine replicas all run one [`SignerAttack`]:
//!
//! - `Silent`: sends nothing;
//! - `WrongShare`: for every epoch, a share made with its own key on another root, sent under
//!   the right root (a valid point of G2 that does not combine);
//! - `EquivocatingRoot`: for every epoch, a valid share on the right root and one on another
//!   root, to every replica, in an order that differs from one replica to the next;
//! - `Garbage`: random bytes, truncated messages, shares that are no point, shares for epochs far
//!   ahead, certificates with a wrong signature (the generic garbage actor, fed by this scenario);
//! - `Replayer`: signs honestly, and sends again what it received (other replicas' shares, now
//!   under its own name) and its own old shares, for epochs certified long ago.
//!
//! Schedulers: random delays with partitions that heal; one where the Byzantine replicas' messages
//! arrive first (so every honest replica meets their shares in its first combination, and must
//! name them); one where an honest replica lags far behind the others. A case may also take an
//! honest replica down until all others are done with most epochs (its messages lost): it must
//! finish from the certificates its peers answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use fides_crypto::ThresholdKeys;
use fides_service::certificate::{
    verify, Certificate, EpochRoot, EpochSigner, Input, Leaf, Message, Output, SignerConfig, Tree,
};
use fides_service::ServiceId;
use fides_types::codec::Wire;
use fides_types::{FaultKind, NodeIndex, Quorum, Target};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{check, Behaviour, Byzantine, ByzantineSend, Micros, Network, RandomScheduler, RunConfig, Scenario};

/// What the Byzantine signers do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignerAttack {
    /// Send nothing.
    Silent,
    /// Shares that do not verify, under the right root.
    WrongShare,
    /// Two roots per epoch.
    EquivocatingRoot,
    /// Bytes that are no message, or nonsense in well-formed ones.
    Garbage,
    /// Old messages, theirs and other replicas'.
    Replayer,
}

impl SignerAttack {
    /// Every attack.
    pub const ALL: [SignerAttack; 5] = [
        SignerAttack::Silent,
        SignerAttack::WrongShare,
        SignerAttack::EquivocatingRoot,
        SignerAttack::Garbage,
        SignerAttack::Replayer,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            SignerAttack::Silent => "silent",
            SignerAttack::WrongShare => "wrong-share",
            SignerAttack::EquivocatingRoot => "equivocating-root",
            SignerAttack::Garbage => "garbage",
            SignerAttack::Replayer => "replayer",
        }
    }
}

/// How messages are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignerSchedule {
    /// Random delays of 0.1–50 ms and partitions that heal.
    Random,
    /// The Byzantine replicas' messages take 0.1 ms, the honest ones' 5–50 ms.
    ByzantineFirst,
    /// Messages to and from one honest replica take 100–400 ms, others 0.1–10 ms.
    Lagging,
}

/// One run of the signer.
#[derive(Clone, Debug)]
pub struct SignerCase {
    /// Replicas.
    pub n: u32,
    /// What the `t` Byzantine replicas do.
    pub attack: SignerAttack,
    /// How messages are timed.
    pub schedule: SignerSchedule,
    /// Epochs to certify.
    pub epochs: u64,
    /// Whether an honest replica is down (its messages lost) until the others signed every epoch.
    pub down: bool,
    /// The seed.
    pub seed: u64,
}

/// What a run showed.
#[derive(Clone, Debug)]
pub struct SignerSummary {
    /// Faults honest replicas recorded, by kind.
    pub faults: BTreeMap<FaultKind, usize>,
    /// The run's trace hash.
    pub trace_hex: String,
    /// Messages delivered.
    pub deliveries: u64,
}

const CLUSTER: [u8; 32] = *b"simnet epoch signer cluster id..";
/// Time between two epochs' roots at one replica, at most (virtual µs).
const EPOCH_GAP_MAX: Micros = 30_000;
/// Until when a replica is down in cases with `down` (virtual µs).
const DOWN_UNTIL: Micros = 1_500_000;
/// How long after the network healed the honest replicas have (virtual µs).
pub const LIVENESS_BOUND: Micros = 1_000_000;

/// The leaves of each epoch, drawn from the seed: ordering answers and service records.
fn epoch_leaves(rng: &mut ChaCha8Rng, epochs: u64) -> Vec<Vec<Leaf>> {
    (0..epochs)
        .map(|_| {
            (0..rng.gen_range(1..40u32))
                .map(|index| {
                    if rng.gen_bool(0.6) {
                        Leaf::Ordering { client: rng.gen(), id: rng.gen(), digest: rng.gen(), index }
                    } else {
                        let mut record = vec![0u8; rng.gen_range(0..200)];
                        rng.fill_bytes(&mut record);
                        Leaf::Service { service: ServiceId(rng.gen()), record }
                    }
                })
                .collect()
        })
        .collect()
}

/// The scenario of one run.
pub struct SignerScenario {
    quorum: Quorum,
    keys: Vec<Arc<ThresholdKeys>>,
    roots: Vec<EpochRoot>,
    attack: SignerAttack,
    config: SignerConfig,
}

impl SignerScenario {
    /// Another root of `epoch`: what a Byzantine replica signs instead.
    fn wrong_root(&self, epoch: u64) -> EpochRoot {
        let mut root = self.roots[epoch as usize];
        root.time_ms ^= 1;
        root
    }

    fn share(&self, index: NodeIndex, root: &EpochRoot) -> [u8; 96] {
        self.keys[index.as_usize()].sign_share(root.point(&CLUSTER)).to_bytes()
    }
}

impl Scenario for SignerScenario {
    type P = EpochSigner;

    fn honest(&self, index: NodeIndex) -> EpochSigner {
        EpochSigner::new(Arc::clone(&self.keys[index.as_usize()]), CLUSTER, self.quorum, index, self.config, 0)
    }

    fn input(&self, _index: NodeIndex) -> Option<Input> {
        self.roots.first().map(|root| Input::Sign(*root))
    }

    fn input_other(&self, index: NodeIndex) -> Option<Input> {
        let _ = index;
        Some(Input::Sign(self.wrong_root(0)))
    }

    fn other_instance(&self, index: NodeIndex) -> EpochSigner {
        EpochSigner::new(Arc::clone(&self.keys[index.as_usize()]), [0; 32], self.quorum, index, self.config, 0)
    }

    fn garbage(&self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let epoch = rng.gen_range(0..self.roots.len() as u64);
        let root = self.roots[epoch as usize];
        let mut noise = [0u8; 96];
        rng.fill_bytes(&mut noise);
        match rng.gen_range(0..7) {
            // A share that is no point of G2.
            0 => Message::Share { root, share: noise }.to_bytes(),
            // A valid point that is no share of this root.
            1 => Message::Share { root, share: self.share(NodeIndex(0), &self.wrong_root(epoch)) }.to_bytes(),
            // A share for an epoch far ahead.
            2 => Message::Share { root: EpochRoot { epoch: rng.gen(), ..root }, share: noise }.to_bytes(),
            // A certificate whose signature is a share, not the cluster's signature.
            3 => Message::Certificate(Certificate { root, signature: self.share(NodeIndex(0), &root) }).to_bytes(),
            // A leaf count above the bound.
            4 => Message::Share { root: EpochRoot { count: u64::MAX, ..root }, share: noise }.to_bytes(),
            // An unknown tag.
            5 => {
                let mut bytes = Message::Share { root, share: noise }.to_bytes();
                bytes[0] = rng.gen_range(3..=255);
                bytes
            }
            _ => {
                let bytes = Message::Certificate(Certificate { root, signature: noise }).to_bytes();
                bytes[..rng.gen_range(0..bytes.len())].to_vec()
            }
        }
    }

    fn adaptive(&self, index: NodeIndex) -> Box<dyn Byzantine<EpochSigner>> {
        Box::new(Attacker {
            index,
            quorum: self.quorum,
            attack: self.attack,
            shares: (0..self.roots.len() as u64)
                .map(|e| {
                    let root = self.roots[e as usize];
                    let wrong = self.wrong_root(e);
                    (root, wrong, self.share(index, &root), self.share(index, &wrong))
                })
                .collect(),
            seen: Vec::new(),
            sent: 0,
        })
    }
}

/// The protocol-specific Byzantine signer of [`SignerAttack`]s other than silence and garbage.
struct Attacker {
    index: NodeIndex,
    quorum: Quorum,
    attack: SignerAttack,
    /// Per epoch: (right root, wrong root, our share of each).
    shares: Vec<(EpochRoot, EpochRoot, [u8; 96], [u8; 96])>,
    /// Messages received, for replaying.
    seen: Vec<Vec<u8>>,
    sent: u32,
}

const ATTACKER_SENDS_MAX: u32 = 500;
const ATTACKER_MEMORY_MAX: usize = 512;

impl Byzantine<EpochSigner> for Attacker {
    fn start(&mut self, _rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let mut sends = Vec::new();
        let all = |message: Message| ByzantineSend::new(Target::All, message.to_bytes());
        for (root, wrong, right_share, wrong_share) in &self.shares {
            match self.attack {
                SignerAttack::WrongShare => sends.push(all(Message::Share { root: *root, share: *wrong_share })),
                SignerAttack::EquivocatingRoot => {
                    let right = Message::Share { root: *root, share: *right_share }.to_bytes();
                    let other = Message::Share { root: *wrong, share: *wrong_share }.to_bytes();
                    for to in self.quorum.nodes().filter(|to| *to != self.index) {
                        let (first, second) = if (u64::from(to.0) + root.epoch).is_multiple_of(2) {
                            (&right, &other)
                        } else {
                            (&other, &right)
                        };
                        sends.push(ByzantineSend::new(Target::Node(to), first.clone()));
                        sends.push(ByzantineSend::new(Target::Node(to), second.clone()));
                    }
                }
                SignerAttack::Replayer => sends.push(all(Message::Share { root: *root, share: *right_share })),
                SignerAttack::Silent | SignerAttack::Garbage => {}
            }
        }
        sends
    }

    fn receive(&mut self, _from: NodeIndex, bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        if self.attack != SignerAttack::Replayer {
            return Vec::new();
        }
        if self.seen.len() < ATTACKER_MEMORY_MAX {
            self.seen.push(bytes.to_vec());
        }
        let mut sends = Vec::new();
        for _ in 0..2 {
            if self.sent >= ATTACKER_SENDS_MAX {
                break;
            }
            self.sent += 1;
            let to = Target::Node(NodeIndex(rng.gen_range(0..self.quorum.n())));
            let bytes = if rng.gen_bool(0.5) {
                // Someone's message, now under our name.
                self.seen[rng.gen_range(0..self.seen.len())].clone()
            } else {
                // Our own share of an earlier epoch.
                let (root, _, share, _) = self.shares[rng.gen_range(0..self.shares.len())];
                Message::Share { root, share }.to_bytes()
            };
            sends.push(ByzantineSend::new(to, bytes));
        }
        sends
    }
}

/// Delays of [`SignerSchedule::ByzantineFirst`] and [`SignerSchedule::Lagging`].
struct Timing {
    schedule: SignerSchedule,
    /// The Byzantine replicas (first) or the lagging one.
    marked: Vec<NodeIndex>,
}

impl crate::Scheduler<Message> for Timing {
    fn delay(
        &mut self,
        _now: Micros,
        from: NodeIndex,
        to: NodeIndex,
        _message: Option<&Message>,
        rng: &mut ChaCha8Rng,
    ) -> Micros {
        match self.schedule {
            SignerSchedule::ByzantineFirst if self.marked.contains(&from) => 100,
            SignerSchedule::ByzantineFirst => rng.gen_range(5_000..=50_000),
            _ if self.marked.contains(&from) || self.marked.contains(&to) => rng.gen_range(100_000..=400_000),
            _ => rng.gen_range(100..=10_000),
        }
    }
}

/// Run one case and check it; what the run showed.
pub fn run_case(case: &SignerCase) -> Result<SignerSummary, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let kind = if case.attack == SignerAttack::Silent {
        Behaviour::Silent
    } else if case.attack == SignerAttack::Garbage {
        Behaviour::Garbage
    } else {
        Behaviour::Adaptive
    };
    let crate::Placement { byzantine, honest, behaviours } = crate::place(quorum, &kind, &mut rng);
    let keys = crate::threshold_keys(quorum, &mut rng);
    let leaves = epoch_leaves(&mut rng, case.epochs);
    let trees: Vec<Tree> = leaves.iter().map(|l| Tree::new(l.iter().map(Leaf::hash).collect())).collect();
    let roots: Vec<EpochRoot> = trees
        .iter()
        .enumerate()
        .map(|(e, tree)| tree.epoch_root(e as u64, 1_700_000_000_000 + 100 * e as u64))
        .collect();
    let config = SignerConfig { epochs_ahead_max: 4, certificates_kept: 3 };
    let scenario = SignerScenario { quorum, keys: keys.clone(), roots: roots.clone(), attack: case.attack, config };
    let down = case.down.then(|| honest[0]);
    let scheduler: Box<dyn crate::Scheduler<Message>> = match case.schedule {
        SignerSchedule::Random => Box::new(RandomScheduler::new(quorum, &mut rng)),
        SignerSchedule::ByzantineFirst => Box::new(Timing { schedule: case.schedule, marked: byzantine.clone() }),
        SignerSchedule::Lagging => Box::new(Timing { schedule: case.schedule, marked: vec![honest[honest.len() - 1]] }),
    };
    let run = RunConfig { seed: case.seed, deliveries_max: 2_000_000, cpu: None };
    let mut network = Network::new(quorum, &scenario, &behaviours, scheduler, run);
    // Each honest replica applies the epochs in order, at times of its own; the one down does
    // so once it is back.
    let mut inputs_end = 0;
    for &node in &honest {
        let mut at = if Some(node) == down { DOWN_UNTIL } else { rng.gen_range(1_000..EPOCH_GAP_MAX) };
        for root in &roots {
            network = network.with_input_at(at, node, Input::Sign(*root));
            inputs_end = inputs_end.max(at);
            at += rng.gen_range(0..EPOCH_GAP_MAX);
        }
    }
    if let Some(node) = down {
        network = network.with_outage(node, DOWN_UNTIL);
    }
    let heal_at = rng.gen_range(inputs_end..inputs_end + 2_000_000);
    network = network.with_liveness(heal_at, LIVENESS_BOUND);
    // The host's part: it stores each certificate and answers a peer's question from the store.
    let mut stores: BTreeMap<(NodeIndex, u64), Certificate> = BTreeMap::new();
    network = network.with_reaction(Box::new(move |node, output| match output {
        Output::Certified(certificate) => {
            stores.insert((node, certificate.root.epoch), *certificate);
            None
        }
        Output::CertificateAsked { peer, epoch } => {
            stores.get(&(node, *epoch)).map(|certificate| Input::Answer { peer: *peer, certificate: *certificate })
        }
    }));
    let epochs = case.epochs as usize;
    let (report, _) = network.run_until(
        |_| None,
        |outputs| {
            outputs
                .iter()
                .flatten()
                .all(|o| o.iter().filter(|p| matches!(p.output, Output::Certified(_))).count() >= epochs)
        },
    );
    let context = |e: String| {
        format!(
            "{e} (n={}, attack={}, schedule={:?}, down={:?}, byzantine={byzantine:?})",
            case.n,
            case.attack.name(),
            case.schedule,
            down
        )
    };
    check::faults_only_against(&report, &byzantine).map_err(context)?;
    check::liveness(&report).map_err(context)?;
    let public = keys[0].public().public_key();
    // Per epoch, the certificate checked as a client checks it (BLS signatures are unique: every
    // other honest replica must hold the very same bytes).
    let mut checked: BTreeMap<u64, Certificate> = BTreeMap::new();
    for node in report.honest() {
        let outputs = report.outputs[node.as_usize()].as_ref().ok_or("an honest replica has outputs")?;
        let mut certified: BTreeMap<u64, Certificate> = BTreeMap::new();
        for produced in outputs {
            if let Output::Certified(certificate) = produced.output {
                if certified.insert(certificate.root.epoch, certificate).is_some() {
                    return Err(context(format!("replica {node} certified epoch {} twice", certificate.root.epoch)));
                }
            }
        }
        for (e, root) in roots.iter().enumerate() {
            let Some(certificate) = certified.get(&(e as u64)) else {
                return Err(context(format!(
                    "termination: replica {node} has no certificate of epoch {e} (stalled: {})",
                    report.stalled
                )));
            };
            if certificate.root != *root {
                return Err(context(format!("replica {node} certified another root of epoch {e}")));
            }
            if let Some(first) = checked.get(&(e as u64)) {
                if first != certificate {
                    return Err(context(format!("replicas hold two certificates of epoch {e}")));
                }
                continue;
            }
            // A client's check: one answer of the epoch, its path, the certificate.
            let index = (node.0 as u64 + e as u64) % root.count;
            let inclusion = trees[e].inclusion(index).ok_or("the leaf is in the tree")?;
            verify(&CLUSTER, &public, &leaves[e][index as usize].to_bytes(), &inclusion, certificate)
                .map_err(|error| context(format!("replica {node}'s certificate of epoch {e}: {error}")))?;
            checked.insert(e as u64, *certificate);
        }
    }
    let mut faults: BTreeMap<FaultKind, usize> = BTreeMap::new();
    for (_, fault) in &report.faults {
        *faults.entry(fault.kind.clone()).or_default() += 1;
    }
    // Under the Byzantine-first schedule every honest replica that was up meets the bad shares in
    // its first combination: each must name each Byzantine signer.
    if case.schedule == SignerSchedule::ByzantineFirst {
        let named: &[FaultKind] = match case.attack {
            SignerAttack::WrongShare => &[FaultKind::InvalidCheckpoint],
            SignerAttack::EquivocatingRoot => &[FaultKind::InvalidCheckpoint, FaultKind::Equivocation],
            _ => &[],
        };
        for reporter in honest.iter().filter(|h| Some(**h) != down && !named.is_empty()) {
            for bad in &byzantine {
                let found =
                    report.faults.iter().any(|(r, f)| r == reporter && f.node == *bad && named.contains(&f.kind));
                if !found {
                    return Err(context(format!("replica {reporter} did not name Byzantine signer {bad}")));
                }
            }
        }
    }
    Ok(SignerSummary { faults, trace_hex: report.trace_hex(), deliveries: report.deliveries })
}
