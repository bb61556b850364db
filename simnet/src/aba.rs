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

use crate::actors::{AgreementKey, AgreementView};
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
    /// Byzantine replicas that follow a script instead of the adaptive attack: what each sends
    /// at the start (and nothing else, ever).
    scripts: BTreeMap<NodeIndex, Vec<(Target, Message)>>,
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
        AbaScenario { quorum, keys, adversary, proposals, validator, conf_phase, instance, scripts: BTreeMap::new() }
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

    fn agreements(&self) -> Option<AgreementView<Message>> {
        fn open(message: &Message) -> Option<(AgreementKey, &Message)> {
            Some(((0, 0), message))
        }
        fn wrap(_key: AgreementKey, message: Message) -> Message {
            message
        }
        Some(AgreementView { open, wrap })
    }

    fn adaptive(&self, index: NodeIndex) -> Box<dyn Byzantine<Aba>> {
        if let Some(script) = self.scripts.get(&index) {
            let sends = script.iter().map(|(target, message)| ByzantineSend::new(*target, message.to_bytes()));
            return Box::new(Script { sends: sends.collect() });
        }
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

/// A Byzantine replica that sends a fixed list of messages at the start and nothing else.
struct Script {
    sends: Vec<ByzantineSend>,
}

impl Byzantine<Aba> for Script {
    fn start(&mut self, _rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        std::mem::take(&mut self.sends)
    }

    fn receive(&mut self, _from: NodeIndex, _bytes: &[u8], _rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        Vec::new()
    }
}

/// The schedule in which a replica decides through `t + 1` TERM before it proposed (n = 7,
/// t = 2): honest A, C, U1–U3 (replicas 0–4), Byzantine Z1, Z2 (5, 6), round 0 with its fixed
/// coin 1. C never proposes — in the common subset its `RBC_j` is held, and once the agreement
/// decided the vote changes nothing. A and U1–U3 propose 1; with Z1's and Z2's BVAL(1) the four
/// send AUX(1); Z1 sends AUX(1) to A only, so A has `n - t` AUX, decides 1 and sends TERM; Z1 and
/// Z2 send TERM(1) to C only, so C has `t + 1` TERM and decides. U1–U3 then hold 4 AUX (they need
/// 5) and 2 TERM (they need 3): unless C takes part in the rounds with its decided value, they
/// wait forever, whatever the order of delivery.
pub fn run_decided_before_proposing(validated: bool, seed: u64) -> Result<AbaSummary, String> {
    const A: NodeIndex = NodeIndex(0);
    const C: NodeIndex = NodeIndex(1);
    const Z1: NodeIndex = NodeIndex(5);
    const Z2: NodeIndex = NodeIndex(6);
    let quorum = Quorum::with_max_faults(7).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let keys = crate::threshold_keys(quorum, &mut rng);
    let validator = if validated { AbaValidator::Predicate } else { AbaValidator::Plain };
    let mut scenario = AbaScenario::build(quorum, keys, vec![true; 7], validator, true);
    let proof = |z: NodeIndex| if validated { format!("proof:{}", z.0).into_bytes() } else { Vec::new() };
    for z in [Z1, Z2] {
        let mut script = vec![
            (Target::All, Message::BVal { round: Round(0), value: true, justification: proof(z) }),
            (Target::Node(C), Message::Term { value: true, justification: proof(z) }),
        ];
        if z == Z1 {
            script.push((Target::Node(A), Message::Aux { round: Round(0), value: true }));
        }
        scenario.scripts.insert(z, script);
    }
    let byzantine = vec![Z1, Z2];
    scenario.adversary.borrow_mut().byzantine = byzantine.clone();
    let behaviours: Vec<Behaviour> =
        quorum.nodes().map(|i| if byzantine.contains(&i) { Behaviour::Adaptive } else { Behaviour::Honest }).collect();
    let scheduler = RandomScheduler { delay_min: 100, delay_max: 2_000, partitions: Vec::new() };
    let config = RunConfig { seed, deliveries_max: 100_000, cpu: None };
    let report = Network::new(quorum, &scenario, &behaviours, scheduler, config).run(|i| {
        if i == C {
            None
        } else {
            scenario.input(i)
        }
    });
    let case = AbaCase { validated, ..AbaCase::new(7, Behaviour::Adaptive, seed) };
    check::faults_only_against(&report, &byzantine)?;
    let mut summary = check_report(&case, &scenario, &report, 0)?;
    summary.byzantine = byzantine;
    Ok(summary)
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
    let crate::Placement { byzantine, honest, behaviours } = crate::place(quorum, &case.byzantine, rng);
    let config = RunConfig { seed: case.seed, deliveries_max: 2_000_000, cpu };
    scenario.adversary.borrow_mut().byzantine = byzantine.clone();
    // Against the rusher, 1 to max(1, t - 1) honest replicas propose late (as in the common
    // subset, where a replica proposes when a broadcast reaches it): the rusher's TERMs can make
    // them decide first.
    let late: Vec<(NodeIndex, Micros)> = match case.byzantine {
        Behaviour::Rusher => {
            let count = rng.gen_range(1..=quorum.t().saturating_sub(1).max(1)) as usize;
            honest.iter().take(count).map(|i| (*i, rng.gen_range(LATE_PROPOSAL_MIN..LATE_PROPOSAL_MAX))).collect()
        }
        _ => Vec::new(),
    };
    let report = match case.scheduler {
        SchedulerKind::Random => {
            let scheduler = RandomScheduler::new(quorum, rng);
            let liveness = cpu.is_none().then(|| (rng.gen_range(0..HEAL_AT_MAX_RANDOM), LIVENESS_BOUND));
            run_network(Network::new(quorum, scenario, &behaviours, scheduler, config), scenario, &late, liveness)
        }
        SchedulerKind::ContentAware => {
            let scheduler = SplitScheduler::new(Rc::clone(&scenario.adversary), quorum.n());
            let liveness = cpu.is_none().then(|| (rng.gen_range(0..HEAL_AT_MAX_CONTENT_AWARE), LIVENESS_BOUND));
            run_network(Network::new(quorum, scenario, &behaviours, scheduler, config), scenario, &late, liveness)
        }
    };
    let coins_learned = scenario.adversary.borrow().coins_learned;
    let context =
        |e: String| format!("{e} (n={}, byzantine={}, scheduler={:?})", case.n, case.byzantine.name(), case.scheduler);
    check::faults_only_against(&report, &byzantine).map_err(context)?;
    check::liveness(&report).map_err(context)?;
    let mut summary = check_report(case, scenario, &report, coins_learned)?;
    summary.byzantine = byzantine;
    Ok(summary)
}

/// Earliest and latest time of a late proposal (virtual µs).
const LATE_PROPOSAL_MIN: Micros = 5_000;
const LATE_PROPOSAL_MAX: Micros = 300_000;
/// The liveness phase starts at a time drawn below these (virtual µs): a few times as long as a
/// run usually takes under each scheduler, so that most runs meet the whole adversarial phase and
/// the others are cut off at any point of it.
const HEAL_AT_MAX_RANDOM: Micros = 3_000_000;
const HEAL_AT_MAX_CONTENT_AWARE: Micros = 20_000_000;
/// How long after the network healed every honest replica must have terminated (virtual µs):
/// with messages taking at most 2 ms, that is hundreds of rounds.
pub const LIVENESS_BOUND: Micros = 2_000_000;

/// Give the late replicas their proposals at their times, add the liveness phase, and run.
fn run_network<S: Scheduler<Message>>(
    mut network: Network<Aba, S>,
    scenario: &AbaScenario,
    late: &[(NodeIndex, Micros)],
    liveness: Option<(Micros, Micros)>,
) -> Report<Decision> {
    for (index, at) in late {
        if let Some(input) = scenario.input(*index) {
            network = network.with_input_at(*at, *index, input);
        }
    }
    if let Some((heal_at, bound)) = liveness {
        network = network.with_liveness(heal_at, bound);
    }
    let is_late = |i: NodeIndex| late.iter().any(|(l, _)| *l == i);
    network.run(|i| if is_late(i) { None } else { scenario.input(i) })
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
