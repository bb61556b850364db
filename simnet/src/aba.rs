//! Binary agreement under the simulator: the scenario, the content-aware scheduler of the known
//! attack on threshold-coin ABA, and one call that runs and checks an instance.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use fides_agreement::{BinaryAgreement, BoolSet, Config, Decision, Message, Validator, Vote};
use fides_crypto::blsttc::{SignatureShare, SIG_SIZE};
use fides_crypto::{domain, hash_to_g2, sha256, ThresholdKeys};
use fides_types::codec::Wire;
use fides_types::{NodeIndex, Quorum, Round};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::check::{self, BinaryOutcome};
use crate::{
    Behaviour, Byzantine, ByzantineSend, Micros, Network, RandomScheduler, Report, RunConfig, Scenario, Scheduler,
};
use fides_types::Target;

/// The predicate of validated runs: a justification is `proof:` and at most 64 bytes.
pub fn predicate(justification: &[u8]) -> bool {
    justification.starts_with(b"proof:") && justification.len() <= 64
}

/// Plain or validated, as one type so that one scenario runs both.
#[derive(Clone, Copy, Debug)]
pub enum AbaValidator {
    /// Plain agreement.
    Plain,
    /// Validated agreement with [`predicate`].
    Predicate,
}

impl Validator for AbaValidator {
    fn requires_justification(&self) -> bool {
        matches!(self, AbaValidator::Predicate)
    }

    fn is_valid(&self, justification: &[u8]) -> bool {
        match self {
            AbaValidator::Plain => justification.is_empty(),
            AbaValidator::Predicate => predicate(justification),
        }
    }
}

/// The protocol run by the simulator.
pub type Aba = BinaryAgreement<AbaValidator>;

/// Which scheduler orders the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    /// Random delays and partitions that heal.
    Random,
    /// Reads messages, learns coins as early as it can, and delays what helps the honest most.
    ContentAware,
}

/// One agreement run to simulate.
#[derive(Clone, Debug)]
pub struct AbaCase {
    /// Replicas.
    pub n: u32,
    /// What the `t` Byzantine replicas do.
    pub byzantine: Behaviour,
    /// The scheduler.
    pub scheduler: SchedulerKind,
    /// Validated agreement with [`predicate`].
    pub validated: bool,
    /// Whether threshold-coin rounds have the CONF phase.
    pub conf_phase: bool,
    /// The seed.
    pub seed: u64,
}

impl AbaCase {
    /// A plain run with the random scheduler.
    pub fn new(n: u32, byzantine: Behaviour, seed: u64) -> Self {
        AbaCase { n, byzantine, scheduler: SchedulerKind::Random, validated: false, conf_phase: true, seed }
    }
}

/// The scenario: keys, proposals and the garbage of one run.
pub struct AbaScenario {
    quorum: Quorum,
    keys: Vec<Arc<ThresholdKeys>>,
    adversary: SharedAdversary,
    proposals: Vec<bool>,
    validator: AbaValidator,
    conf_phase: bool,
    instance: Vec<u8>,
}

impl AbaScenario {
    /// Keys and proposals drawn from `rng`. Proposals: all true, all false, or mixed, by seed.
    pub fn new(quorum: Quorum, validated: bool, conf_phase: bool, seed: u64, rng: &mut ChaCha8Rng) -> Self {
        let keys = crate::threshold_keys(quorum, rng);
        let proposals = quorum
            .nodes()
            .map(|_| match seed % 4 {
                0 => true,
                1 => false,
                _ => rng.gen_bool(0.5),
            })
            .collect();
        let validator = if validated { AbaValidator::Predicate } else { AbaValidator::Plain };
        Self::build(quorum, keys, proposals, validator, conf_phase)
    }

    /// A scenario with given coin keys (the dealer's) and proposals.
    pub fn with_keys(quorum: Quorum, keys: Vec<Arc<ThresholdKeys>>, proposals: Vec<bool>, validated: bool) -> Self {
        let validator = if validated { AbaValidator::Predicate } else { AbaValidator::Plain };
        Self::build(quorum, keys, proposals, validator, true)
    }

    fn build(
        quorum: Quorum,
        keys: Vec<Arc<ThresholdKeys>>,
        proposals: Vec<bool>,
        validator: AbaValidator,
        conf_phase: bool,
    ) -> Self {
        let instance = b"simnet/aba/0".to_vec();
        let adversary = Rc::new(RefCell::new(Adversary {
            byzantine: Vec::new(),
            keys: keys.clone(),
            instance: instance.clone(),
            coins: BTreeMap::new(),
            coins_fresh: Vec::new(),
            coins_learned: 0,
        }));
        AbaScenario { quorum, keys, adversary, proposals, validator, conf_phase, instance }
    }

    /// The adversary of this run: which replicas it controls, what it learned.
    pub fn adversary(&self) -> &SharedAdversary {
        &self.adversary
    }

    /// The proposal of each replica.
    pub fn proposals(&self) -> &[bool] {
        &self.proposals
    }

    fn instance_at(&self, index: NodeIndex, instance: &[u8]) -> Aba {
        let mut config = Config::new(instance.to_vec());
        config.conf_phase = self.conf_phase;
        BinaryAgreement::new(self.quorum, index, Arc::clone(&self.keys[index.as_usize()]), config, self.validator)
    }

    fn vote(&self, value: bool, index: NodeIndex) -> Vote {
        match (value, self.validator) {
            (false, _) => Vote::Zero,
            (true, AbaValidator::Plain) => Vote::One(Vec::new()),
            (true, AbaValidator::Predicate) => Vote::One(format!("proof:{}", index.0).into_bytes()),
        }
    }
}

impl Scenario for AbaScenario {
    type P = Aba;

    fn adaptive(&self, index: NodeIndex) -> Box<dyn Byzantine<Aba>> {
        Box::new(Splitter {
            index,
            quorum: self.quorum,
            adversary: Rc::clone(&self.adversary),
            rounds_voted: BTreeSet::new(),
            rounds_split: BTreeSet::new(),
        })
    }

    fn honest(&self, index: NodeIndex) -> Aba {
        self.instance_at(index, &self.instance)
    }

    fn input(&self, index: NodeIndex) -> Option<Vote> {
        Some(self.vote(self.proposals[index.as_usize()], index))
    }

    fn input_other(&self, index: NodeIndex) -> Option<Vote> {
        Some(self.vote(!self.proposals[index.as_usize()], index))
    }

    fn other_instance(&self, index: NodeIndex) -> Aba {
        self.instance_at(index, b"simnet/aba/other")
    }

    fn garbage(&self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let round = Round(match rng.gen_range(0..3) {
            0 => rng.gen_range(0..6),
            1 => rng.gen_range(6..1000),
            _ => rng.gen(),
        });
        let value = rng.gen();
        let junk = |rng: &mut ChaCha8Rng, max: usize| {
            let mut bytes = vec![0u8; rng.gen_range(0..max)];
            rng.fill_bytes(&mut bytes);
            bytes
        };
        match rng.gen_range(0..8) {
            0 => Message::BVal { round, value, justification: junk(rng, 100) }.to_bytes(),
            1 => Message::BVal {
                round,
                value: true,
                justification:
                    b"proof:but far too long to pass the predicate of the simulated validated runs, honestly".to_vec(),
            }
            .to_bytes(),
            2 => Message::Aux { round, value }.to_bytes(),
            3 => {
                // A set of values with an invalid bit pattern.
                let mut bytes = Message::Aux { round, value }.to_bytes();
                bytes[0] = 2;
                *bytes.last_mut().expect("an AUX encoding is not empty") = rng.gen_range(0..=255);
                bytes
            }
            4 => {
                let mut share = rng.gen::<SignatureShare>().to_bytes();
                if rng.gen_bool(0.3) {
                    // Not a point of the curve at all.
                    rng.fill_bytes(&mut share);
                }
                Message::Coin { round, share }.to_bytes()
            }
            5 => match rng.gen_bool(0.5) {
                true => Message::Term { value, justification: junk(rng, 40) }.to_bytes(),
                false => Message::Resend { round }.to_bytes(),
            },
            6 => {
                // A BVAL whose justification claims a length of nearly 4 GiB.
                let mut bytes = vec![0u8];
                bytes.extend_from_slice(&round.0.to_le_bytes());
                bytes.push(1);
                bytes.extend_from_slice(&(u32::MAX - 7).to_le_bytes());
                bytes.extend_from_slice(&junk(rng, 16));
                bytes
            }
            _ => {
                let bytes = Message::BVal { round, value, justification: Vec::new() }.to_bytes();
                bytes[..rng.gen_range(0..bytes.len())].to_vec()
            }
        }
    }
}

/// What the adversary knows, shared by its Byzantine replicas and its scheduler: every Byzantine
/// replica's coin key share, so that one honest share tells it a round's coin.
pub struct Adversary {
    byzantine: Vec<NodeIndex>,
    keys: Vec<Arc<ThresholdKeys>>,
    instance: Vec<u8>,
    coins: BTreeMap<Round, bool>,
    /// Rounds whose coin was learned since the scheduler last re-timed messages.
    coins_fresh: Vec<Round>,
    /// Threshold-coin rounds whose coin it learned from an honest share.
    pub coins_learned: u32,
}

impl Adversary {
    /// The coin of `round`, if the adversary knows it.
    pub fn coin(&self, round: Round) -> Option<bool> {
        match round.0 % 3 {
            0 => Some(true),
            1 => Some(false),
            _ => self.coins.get(&round).copied(),
        }
    }

    fn point(&self, round: Round) -> fides_crypto::blsttc::G2Affine {
        hash_to_g2(domain::COIN, &[&self.instance, &round.0.to_le_bytes()])
    }

    /// With one honest share and the Byzantine replicas' own, combine the coin.
    fn learn(&mut self, round: Round, from: NodeIndex, share: &[u8; SIG_SIZE]) {
        if self.coin(round).is_some() || self.byzantine.contains(&from) || self.byzantine.is_empty() {
            return;
        }
        let Ok(share) = SignatureShare::from_bytes(*share) else { return };
        let point = self.point(round);
        let mut shares = BTreeMap::new();
        shares.insert(from, share);
        for b in &self.byzantine {
            shares.insert(*b, self.keys[b.as_usize()].sign_share(point));
        }
        if let Ok(signature) = self.keys[from.as_usize()].combine(&shares, point) {
            self.coins.insert(round, sha256(&signature.to_bytes())[0] & 1 == 1);
            self.coins_fresh.push(round);
            self.coins_learned += 1;
        }
    }

    /// The honest replicas the adversary pushes towards the coin's opposite in `round` (`t + 1`
    /// of them, in rotation: with the `t` attackers' votes they make the `n - t` AUX for the
    /// opposite value that a victim needs); the others it lets see both values.
    fn is_victim(&self, to: NodeIndex, round: Round) -> bool {
        let honest: Vec<NodeIndex> = self.honest().collect();
        let Some(position) = honest.iter().position(|i| *i == to) else { return false };
        let victims = self.byzantine.len() + 1;
        (position + honest.len() - round.0 as usize % honest.len()) % honest.len() < victims
    }

    fn honest(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        (0..self.keys.len() as u32).map(NodeIndex).filter(|i| !self.byzantine.contains(i))
    }

    /// In a threshold-coin round, the honest replica the adversary lets finish first (seeing both
    /// values, so that it cannot decide), to get the first honest coin share out of it.
    fn leader(&self, round: Round) -> Option<NodeIndex> {
        let honest: Vec<NodeIndex> = self.honest().collect();
        honest.get(round.0 as usize % honest.len().max(1)).copied()
    }
}

/// The adversary shared by a run's attackers and scheduler.
pub type SharedAdversary = Rc<RefCell<Adversary>>;

/// The content-aware scheduler of the known attack on threshold-coin agreement (HoneyBadgerBFT
/// issue 59). It reads every message. While a round's coin is unknown it lets one honest
/// *leader* finish the round seeing both values and parks the other replicas' AUX and CONF; from
/// the leader's coin share (with the Byzantine ones) it learns the coin, and it re-times what is
/// in flight: towards the *victims* (half of the honest replicas) votes for the coin's value are
/// parked so they end the round with the opposite value, the others see both and take the coin,
/// and the honest estimates stay split. In fixed-coin rounds it knows the coin from the start.
/// Coin shares and TERMs are parked. A parked message arrives at its deadline (`HOLD`) at the
/// latest: the network stays asynchronous, not lossy.
///
/// With the [`Behaviour::Adaptive`] attackers it keeps fixed-coin rounds from deciding; in
/// threshold-coin rounds the CONF phase makes the first honest share come out only after `n - t`
/// replicas fixed their candidate sets, so the re-timing comes too late to matter.
pub struct SplitScheduler {
    adversary: SharedAdversary,
    n: u32,
    retiming: Vec<Round>,
    /// Votes for the coin's value let through to each victim per round: `t + 1` of them, so that
    /// it relays the value (the others need those relays to see it) but never counts `2t + 1`.
    let_through: BTreeMap<(Round, NodeIndex), u32>,
}

const HOLD: Micros = 400_000;

impl SplitScheduler {
    /// The scheduler of `adversary` in a cluster of `n`.
    pub fn new(adversary: SharedAdversary, n: u32) -> Self {
        SplitScheduler { adversary, n, retiming: Vec::new(), let_through: BTreeMap::new() }
    }

    /// When `message` from `from` should reach `to`, as an absolute time.
    fn arrival(
        &mut self,
        now: Micros,
        from: NodeIndex,
        to: NodeIndex,
        message: &Message,
        rng: &mut ChaCha8Rng,
    ) -> Micros {
        let fast = now + rng.gen_range(100..2_000);
        let medium = now + rng.gen_range(3_000..6_000);
        let late = now + rng.gen_range(8_000..12_000);
        let later = now + rng.gen_range(25_000..35_000);
        let parked = now + HOLD + rng.gen_range(0..HOLD / 4);
        let mut adversary = self.adversary.borrow_mut();
        let (round, kind) = match message {
            Message::Resend { .. } => return fast,
            Message::Term { .. } => return parked,
            Message::Coin { round, share } => {
                adversary.learn(*round, from, share);
                return parked;
            }
            Message::BVal { round, value, .. } => (*round, VoteKind::BVal(*value)),
            Message::Aux { round, value } => (*round, VoteKind::Aux(*value)),
            Message::Conf { round, values } => (*round, VoteKind::Conf(*values)),
        };
        let Some(coin) = adversary.coin(round) else {
            // Coin unknown: split the first values between replicas, let the leader finish.
            return match kind {
                VoteKind::BVal(value) if (to.0 + u32::from(value)).is_multiple_of(2) => fast,
                VoteKind::BVal(_) => medium,
                _ if Some(to) == adversary.leader(round) => late,
                _ => parked,
            };
        };
        let victim = adversary.is_victim(to, round);
        match (kind, victim) {
            // Victims: the opposite value first and alone; t + 1 votes for the coin's value so
            // that they relay it (the others need those relays), never 2t + 1.
            (VoteKind::BVal(value), true) if value != coin => fast,
            (VoteKind::BVal(_), true) => {
                let through = self.let_through.entry((round, to)).or_insert(0);
                if *through <= (self.n - 1) / 3 {
                    *through += 1;
                    medium
                } else {
                    parked
                }
            }
            (VoteKind::Aux(value), true) if value != coin => medium,
            (VoteKind::Conf(values), true) if !values.contains(coin) => medium,
            (VoteKind::Aux(_) | VoteKind::Conf(_), true) => parked,
            // The others: the coin's value first (so their AUX carries it), then the opposite;
            // then the attackers' AUX for the opposite value, then AUX for the coin's value,
            // then the rest, so that they count both values.
            (VoteKind::BVal(value), false) if value == coin => fast,
            (VoteKind::BVal(_), false) => medium,
            (VoteKind::Aux(_) | VoteKind::Conf(_), false) if adversary.byzantine.contains(&from) => medium,
            (VoteKind::Aux(value), false) if value == coin => late,
            (VoteKind::Conf(values), false) if values == BoolSet::BOTH => late,
            (VoteKind::Aux(_) | VoteKind::Conf(_), false) => later,
        }
    }
}

/// The kind of a vote, for the scheduler's table.
#[derive(Clone, Copy)]
enum VoteKind {
    BVal(bool),
    Aux(bool),
    Conf(BoolSet),
}

impl Scheduler<Message> for SplitScheduler {
    fn delay(
        &mut self,
        now: Micros,
        from: NodeIndex,
        to: NodeIndex,
        message: Option<&Message>,
        rng: &mut ChaCha8Rng,
    ) -> Micros {
        match message {
            Some(message) => self.arrival(now, from, to, message, rng) - now,
            None => rng.gen_range(100..2_000),
        }
    }

    fn wants_retime(&mut self) -> bool {
        self.retiming = std::mem::take(&mut self.adversary.borrow_mut().coins_fresh);
        for round in &self.retiming {
            self.let_through.retain(|(r, _), _| r != round);
        }
        !self.retiming.is_empty()
    }

    fn retime(
        &mut self,
        now: Micros,
        _arrival: Micros,
        from: NodeIndex,
        to: NodeIndex,
        message: Option<&Message>,
        rng: &mut ChaCha8Rng,
    ) -> Option<Micros> {
        let message = message?;
        let round = match message {
            Message::BVal { round, .. } | Message::Aux { round, .. } | Message::Conf { round, .. } => *round,
            _ => return None,
        };
        self.retiming.contains(&round).then(|| self.arrival(now, from, to, message, rng))
    }
}

/// The attacker of [`Behaviour::Adaptive`]: it votes for both values in every round so that both
/// stay alive, and once it knows a round's coin it sends everyone `AUX` for the opposite value,
/// the victims `CONF` for the opposite value and the others `CONF` for both, so that the honest
/// estimates stay split. It
/// sends valid coin shares (withholding them would only slow itself down: honest ones suffice).
struct Splitter {
    index: NodeIndex,
    quorum: Quorum,
    adversary: SharedAdversary,
    rounds_voted: BTreeSet<Round>,
    rounds_split: BTreeSet<Round>,
}

/// Rounds the splitter takes part in; beyond, it falls silent (runs stay finite).
const SPLITTER_ROUNDS_MAX: u32 = 200;

impl Splitter {
    fn act(&mut self, round: Round) -> Vec<ByzantineSend> {
        let mut sends = Vec::new();
        if round.0 > SPLITTER_ROUNDS_MAX {
            return sends;
        }
        for r in (0..=round.0).map(Round) {
            if self.rounds_voted.insert(r) {
                for value in [false, true] {
                    let message = Message::BVal { round: r, value, justification: Vec::new() };
                    sends.push(ByzantineSend::new(Target::All, message.to_bytes()));
                }
            }
            if self.rounds_split.contains(&r) {
                continue;
            }
            let adversary = self.adversary.borrow();
            let Some(coin) = adversary.coin(r) else { continue };
            self.rounds_split.insert(r);
            for to in self.quorum.nodes() {
                let (aux, conf) = if adversary.is_victim(to, r) {
                    (!coin, BoolSet::single_of(!coin))
                } else {
                    (!coin, BoolSet::BOTH)
                };
                let target = Target::Node(to);
                sends.push(ByzantineSend::new(target, Message::Aux { round: r, value: aux }.to_bytes()));
                sends.push(ByzantineSend::new(target, Message::Conf { round: r, values: conf }.to_bytes()));
            }
            if coin_is_threshold(r) {
                let share = adversary.keys[self.index.as_usize()].sign_share(adversary.point(r)).to_bytes();
                sends.push(ByzantineSend::new(Target::All, Message::Coin { round: r, share }.to_bytes()));
            }
        }
        sends
    }
}

fn coin_is_threshold(round: Round) -> bool {
    round.0 % 3 == 2
}

impl Byzantine<Aba> for Splitter {
    fn start(&mut self, _rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        self.act(Round(0))
    }

    fn receive(&mut self, from: NodeIndex, bytes: &[u8], _rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let round = match Message::from_bytes(bytes) {
            Ok(Message::BVal { round, .. } | Message::Aux { round, .. } | Message::Conf { round, .. }) => round,
            Ok(Message::Coin { round, share }) => {
                self.adversary.borrow_mut().learn(round, from, &share);
                round
            }
            _ => return Vec::new(),
        };
        let latest = self.rounds_voted.last().copied().unwrap_or_default().max(round);
        self.act(latest)
    }
}

/// What one checked run gives.
#[derive(Clone, Debug)]
pub struct AbaSummary {
    /// The value decided.
    pub value: bool,
    /// The latest round in which an honest replica decided (rounds count from 0).
    pub rounds_worst: u32,
    /// Mean over honest replicas of the round they decided in (rounds count from 0).
    pub rounds_mean: f64,
    /// Faults recorded by honest replicas.
    pub faults: usize,
    /// The trace hash.
    pub trace: String,
    /// Messages sent per honest replica (one per recipient, itself included).
    pub messages_per_node: f64,
    /// Bytes sent per honest replica.
    pub bytes_per_node: f64,
    /// Handler CPU per honest replica, in microseconds.
    pub cpu_micros_per_node: f64,
    /// Threshold-coin rounds whose coin the content-aware adversary learned early.
    pub coins_learned: u32,
    /// Virtual time at which the last honest replica decided, in microseconds.
    pub decided_at_worst: Micros,
    /// The Byzantine replicas.
    pub byzantine: Vec<NodeIndex>,
    /// Messages delivered.
    pub deliveries: u64,
    /// Messages a Byzantine actor tried to send under another replica's name.
    pub impersonations_refused: u64,
}

/// Run one case and check it with the independent checkers.
pub fn run_case(case: &AbaCase) -> Result<AbaSummary, String> {
    run_case_with(case, None)
}

/// Run one case, optionally in CPU-accounting mode.
pub fn run_case_with(case: &AbaCase, cpu: Option<crate::CpuModel>) -> Result<AbaSummary, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let scenario = AbaScenario::new(quorum, case.validated, case.conf_phase, case.seed, &mut rng);
    run_scenario(case, &scenario, cpu, &mut rng)
}

/// Run one case on a given scenario (keys and proposals), drawing the Byzantine replicas and the
/// schedule from `rng`, and check it.
pub fn run_scenario(
    case: &AbaCase,
    scenario: &AbaScenario,
    cpu: Option<crate::CpuModel>,
    rng: &mut ChaCha8Rng,
) -> Result<AbaSummary, String> {
    let quorum = scenario.quorum;
    let crate::Placement { byzantine, behaviours, .. } = crate::place(quorum, &case.byzantine, rng);
    let config = RunConfig { seed: case.seed, deliveries_max: 2_000_000, cpu };
    let input = |i: NodeIndex| scenario.input(i);
    scenario.adversary.borrow_mut().byzantine = byzantine.clone();
    let report = match case.scheduler {
        SchedulerKind::Random => {
            let scheduler = RandomScheduler::new(quorum, rng);
            Network::new(quorum, scenario, &behaviours, scheduler, config).run(input)
        }
        SchedulerKind::ContentAware => {
            let scheduler = SplitScheduler::new(Rc::clone(&scenario.adversary), quorum.n());
            Network::new(quorum, scenario, &behaviours, scheduler, config).run(input)
        }
    };
    let coins_learned = scenario.adversary.borrow().coins_learned;
    check::faults_only_against(&report, &byzantine).map_err(|e| {
        format!("{e} (n={}, byzantine={}, scheduler={:?})", case.n, case.byzantine.name(), case.scheduler)
    })?;
    let mut summary = check_report(case, scenario, &report, coins_learned)?;
    summary.byzantine = byzantine;
    Ok(summary)
}

fn check_report(
    case: &AbaCase,
    scenario: &AbaScenario,
    report: &Report<Decision>,
    coins_learned: u32,
) -> Result<AbaSummary, String> {
    let proposals: Vec<Option<bool>> = report
        .outputs
        .iter()
        .zip(scenario.proposals())
        .map(|(outputs, proposal)| outputs.as_ref().map(|_| *proposal))
        .collect();
    let outcome = BinaryOutcome::from_report(report, |d: &Decision| (d.value, d.justification.clone()));
    let checker_predicate: Option<fn(&[u8]) -> bool> =
        case.validated.then_some(check::proof_predicate as fn(&[u8]) -> bool);
    let value = check::binary_agreement(&outcome, &proposals, checker_predicate).map_err(|e| {
        format!(
            "{e} (n={}, byzantine={}, scheduler={:?}, validated={})",
            case.n,
            case.byzantine.name(),
            case.scheduler,
            case.validated
        )
    })?;
    let rounds: Vec<u32> =
        report.outputs.iter().flatten().filter_map(|outputs| outputs.first()).map(|p| p.output.round.0).collect();
    let honest = rounds.len().max(1) as f64;
    let honest_stats: Vec<&crate::NodeStats> =
        report.stats.iter().zip(&report.outputs).filter(|(_, o)| o.is_some()).map(|(s, _)| s).collect();
    let honest_sum = |f: fn(&crate::NodeStats) -> u64| honest_stats.iter().map(|s| f(s)).sum::<u64>() as f64;
    Ok(AbaSummary {
        value,
        rounds_worst: rounds.iter().copied().max().unwrap_or(0),
        rounds_mean: rounds.iter().map(|r| f64::from(*r)).sum::<f64>() / honest,
        faults: report.faults.len(),
        trace: report.trace_hex(),
        messages_per_node: honest_sum(|s| s.messages_sent) / honest,
        bytes_per_node: honest_sum(|s| s.bytes_sent) / honest,
        cpu_micros_per_node: honest_sum(|s| s.cpu_nanos) / 1_000.0 / honest,
        coins_learned,
        decided_at_worst: report.outputs.iter().flatten().filter_map(|o| o.first()).map(|p| p.at).max().unwrap_or(0),
        byzantine: Vec::new(),
        deliveries: report.deliveries,
        impersonations_refused: report.impersonations_refused,
    })
}
