//! The threshold RSA signer under the simulator: the scenario, its Byzantine signers, its
//! schedulers, and one call that runs and checks a case.
//!
//! Each honest replica is given the messages to sign one after another at times of its own (as
//! its host would, applying the requests that asked), then a `Retry` of each every
//! [`RETRY_EVERY`] from [`RETRY_FIRST`] on (the host's timeout, given whether or not the message
//! is signed by then), and must end with the signature of every one, the same bytes at every
//! replica, that verifies against the public key. The first message always has a Byzantine
//! replica among its designated signers. The `t` Byzantine replicas all run one [`RsaAttack`]:
//!
//! - `Silent`: sends nothing (a silent designated signer: the others sign after the retry);
//! - `WrongShare`: for every message, its own share of another message, under the right id, as a
//!   value and as a share with its proof (a bad share from a designated signer: the values do not
//!   combine, proofs are asked for, and it must be named);
//! - `OtherMessages`: shares for messages nobody asked for, far more than the early bound, and for
//!   each real message two different shares (an equivocation);
//! - `Garbage`: random bytes, truncations, shares that do not decode, bad signatures (the generic
//!   garbage actor, fed by this scenario);
//! - `Replayer`: signs honestly (its value and its share), and sends again what it received
//!   (other replicas' messages, now under its own name) and its own shares, after the messages
//!   were signed.
//!
//! Schedulers: random delays with partitions that heal; one where the Byzantine replicas' messages
//! arrive first (the first honest replica to sign meets their shares in its first combination;
//! each Byzantine signer must be named by an honest one). A case may take an honest replica down
//! until the others signed (its messages lost): it must finish from the signatures its peers
//! answer, some from their host's store. The hosts make the shares their signers ask for at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use fides_service::rsa_signer::{designated, Input, Message, MessageId, Output, RsaSigner, RsaSignerConfig};
use fides_threshold_rsa::{deal, sign_share, sign_share_value, verify_signature, Dealt};
use fides_types::codec::Wire;
use fides_types::{FaultKind, NodeIndex, Quorum, Target};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{check, Behaviour, Byzantine, ByzantineSend, Micros, Network, RandomScheduler, RunConfig, Scenario};

/// What the Byzantine signers do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaAttack {
    /// Send nothing.
    Silent,
    /// Values and shares of another message, under the right id.
    WrongShare,
    /// Shares for messages nobody asked for, and two shares per real message.
    OtherMessages,
    /// Bytes that are no message, or nonsense in well-formed ones.
    Garbage,
    /// Old messages, theirs and other replicas'.
    Replayer,
}

impl RsaAttack {
    /// Every attack.
    pub const ALL: [RsaAttack; 5] =
        [RsaAttack::Silent, RsaAttack::WrongShare, RsaAttack::OtherMessages, RsaAttack::Garbage, RsaAttack::Replayer];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            RsaAttack::Silent => "silent",
            RsaAttack::WrongShare => "wrong-share",
            RsaAttack::OtherMessages => "other-messages",
            RsaAttack::Garbage => "garbage",
            RsaAttack::Replayer => "replayer",
        }
    }
}

/// How messages are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaSchedule {
    /// Random delays and partitions that heal.
    Random,
    /// The Byzantine replicas' messages take 0.1 ms, the honest ones' 5–50 ms.
    ByzantineFirst,
}

/// One run of the signer.
#[derive(Clone, Debug)]
pub struct RsaCase {
    /// Replicas.
    pub n: u32,
    /// What the `t` Byzantine replicas do.
    pub attack: RsaAttack,
    /// How messages are timed.
    pub schedule: RsaSchedule,
    /// Messages to sign.
    pub messages: usize,
    /// Whether an honest replica is down (its messages lost) until the others signed.
    pub down: bool,
    /// The seed.
    pub seed: u64,
}

/// What a run showed.
#[derive(Clone, Debug)]
pub struct RsaSummary {
    /// Faults honest replicas recorded, by kind.
    pub faults: BTreeMap<FaultKind, usize>,
    /// The run's trace hash.
    pub trace_hex: String,
    /// Messages delivered.
    pub deliveries: u64,
}

/// Time between two messages given to one replica, at most (virtual µs).
const SIGN_GAP_MAX: Micros = 30_000;
/// Until when a replica is down in cases with `down` (virtual µs).
const DOWN_UNTIL: Micros = 1_500_000;
/// How long after the network healed the honest replicas have (virtual µs).
pub const LIVENESS_BOUND: Micros = 1_000_000;
/// Shares the `OtherMessages` attacker sends for messages nobody asked for.
const OTHER_MESSAGES: u32 = 40;
/// When an honest replica first retries a message, after it was given it (virtual µs).
pub const RETRY_FIRST: Micros = 300_000;
/// How often it retries after that (virtual µs).
pub const RETRY_EVERY: Micros = 500_000;

/// A 512-bit key (a test-only size) for `n` replicas with `t = ⌊(n − 1)/3⌋`, dealt once per `n`
/// from a fixed seed: dealing is the slow part, and the key is not what the seeds vary.
pub fn dealt(n: u32) -> Result<Arc<Dealt>, String> {
    static DEALT: OnceLock<Mutex<BTreeMap<u32, Arc<Dealt>>>> = OnceLock::new();
    let cache = DEALT.get_or_init(|| Mutex::new(BTreeMap::new()));
    let mut cache = cache.lock().map_err(|_| "the key cache is poisoned")?;
    if let Some(dealt) = cache.get(&n) {
        return Ok(Arc::clone(dealt));
    }
    let quorum = Quorum::with_max_faults(n).map_err(|e| e.to_string())?;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(n));
    let dealt = Arc::new(deal(512, n, quorum.t(), &mut rng, &mut |_| {}).map_err(|e| e.to_string())?);
    cache.insert(n, Arc::clone(&dealt));
    Ok(dealt)
}

/// The scenario of one run.
pub struct RsaScenario {
    quorum: Quorum,
    dealt: Arc<Dealt>,
    messages: Vec<Vec<u8>>,
    attack: RsaAttack,
    config: RsaSignerConfig,
}

impl RsaScenario {
    fn share(&self, index: NodeIndex, message: &[u8]) -> Vec<u8> {
        let dealt = &self.dealt;
        sign_share(&dealt.public, &dealt.shares[index.as_usize()], message)
            .map(|share| share.to_bytes(&dealt.public))
            .unwrap_or_default()
    }

    fn value(&self, index: NodeIndex, message: &[u8]) -> Vec<u8> {
        let dealt = &self.dealt;
        sign_share_value(&dealt.public, &dealt.shares[index.as_usize()], message)
            .map(|value| value.to_bytes(&dealt.public))
            .unwrap_or_default()
    }

    fn signer(&self, index: NodeIndex) -> RsaSigner {
        RsaSigner::new(Arc::new(self.dealt.public.clone()), self.quorum, index, self.config)
    }
}

impl Scenario for RsaScenario {
    type P = RsaSigner;

    fn honest(&self, index: NodeIndex) -> RsaSigner {
        self.signer(index)
    }

    fn input(&self, _index: NodeIndex) -> Option<Input> {
        self.messages.first().map(|m| Input::Sign(m.clone()))
    }

    fn input_other(&self, _index: NodeIndex) -> Option<Input> {
        Some(Input::Sign(b"another message".to_vec()))
    }

    fn other_instance(&self, index: NodeIndex) -> RsaSigner {
        self.signer(index)
    }

    fn garbage(&self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let message = &self.messages[rng.gen_range(0..self.messages.len())];
        let id = MessageId::of(message);
        let mut noise = vec![0u8; rng.gen_range(0..200)];
        rng.fill_bytes(&mut noise);
        match rng.gen_range(0..6) {
            // Bytes that are no share.
            0 => Message::Share { id, share: noise }.to_bytes(),
            // A share of replica 0, whatever the sender.
            1 => Message::Share { id, share: self.share(NodeIndex(0), message) }.to_bytes(),
            // A signature that is not one.
            2 => Message::Signature { id, signature: noise }.to_bytes(),
            // A value for an id nobody asked for.
            3 => Message::Value { id: MessageId(rng.gen()), value: noise }.to_bytes(),
            // An unknown tag.
            4 => {
                let mut bytes = Message::Share { id, share: noise }.to_bytes();
                bytes[0] = rng.gen_range(4..=255);
                bytes
            }
            _ => {
                let bytes = Message::Share { id, share: self.share(NodeIndex(0), message) }.to_bytes();
                bytes[..rng.gen_range(0..bytes.len())].to_vec()
            }
        }
    }

    fn adaptive(&self, index: NodeIndex) -> Box<dyn Byzantine<RsaSigner>> {
        Box::new(Attacker {
            index,
            quorum: self.quorum,
            attack: self.attack,
            shares: self
                .messages
                .iter()
                .map(|m| {
                    let other = [m.as_slice(), b"!"].concat();
                    Shares {
                        id: MessageId::of(m),
                        right: self.share(index, m),
                        wrong: self.share(index, &other),
                        right_value: self.value(index, m),
                        wrong_value: self.value(index, &other),
                    }
                })
                .collect(),
            seen: Vec::new(),
            sent: 0,
        })
    }
}

/// The protocol-specific Byzantine signer of [`RsaAttack`]s other than silence and garbage.
struct Attacker {
    index: NodeIndex,
    quorum: Quorum,
    attack: RsaAttack,
    /// Per message: our shares of it and of another message.
    shares: Vec<Shares>,
    /// Messages received, for replaying.
    seen: Vec<Vec<u8>>,
    sent: u32,
}

/// A Byzantine signer's shares of one message, and of another message under its id.
struct Shares {
    id: MessageId,
    right: Vec<u8>,
    wrong: Vec<u8>,
    right_value: Vec<u8>,
    wrong_value: Vec<u8>,
}

const ATTACKER_SENDS_MAX: u32 = 300;
const ATTACKER_MEMORY_MAX: usize = 256;

impl Byzantine<RsaSigner> for Attacker {
    fn start(&mut self, rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let mut sends = Vec::new();
        let all = |message: Message| ByzantineSend::new(Target::All, message.to_bytes());
        match self.attack {
            RsaAttack::WrongShare => {
                for shares in &self.shares {
                    sends.push(all(Message::Value { id: shares.id, value: shares.wrong_value.clone() }));
                    sends.push(all(Message::Share { id: shares.id, share: shares.wrong.clone() }));
                }
            }
            RsaAttack::OtherMessages => {
                for shares in &self.shares {
                    for to in self.quorum.nodes().filter(|to| *to != self.index) {
                        let pairs = [
                            (
                                Message::Value { id: shares.id, value: shares.right_value.clone() },
                                Message::Value { id: shares.id, value: shares.wrong_value.clone() },
                            ),
                            (
                                Message::Share { id: shares.id, share: shares.right.clone() },
                                Message::Share { id: shares.id, share: shares.wrong.clone() },
                            ),
                        ];
                        for (right, wrong) in pairs {
                            let (first, second) = if rng.gen_bool(0.5) { (right, wrong) } else { (wrong, right) };
                            for message in [first, second] {
                                sends.push(ByzantineSend::new(Target::Node(to), message.to_bytes()));
                            }
                        }
                    }
                }
                // Then more shares for messages nobody asked for than the early bound keeps.
                for _ in 0..OTHER_MESSAGES {
                    let mut share = vec![0u8; 64];
                    rng.fill_bytes(&mut share);
                    sends.push(all(Message::Share { id: MessageId(rng.gen()), share }));
                }
            }
            RsaAttack::Replayer => {
                for shares in &self.shares {
                    sends.push(all(Message::Value { id: shares.id, value: shares.right_value.clone() }));
                    sends.push(all(Message::Share { id: shares.id, share: shares.right.clone() }));
                }
            }
            RsaAttack::Silent | RsaAttack::Garbage => {}
        }
        sends
    }

    fn receive(&mut self, _from: NodeIndex, bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        if self.attack != RsaAttack::Replayer {
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
                // Our own share again.
                let shares = &self.shares[rng.gen_range(0..self.shares.len())];
                Message::Share { id: shares.id, share: shares.right.clone() }.to_bytes()
            };
            sends.push(ByzantineSend::new(to, bytes));
        }
        sends
    }
}

/// Delays of [`RsaSchedule::ByzantineFirst`].
struct ByzantineFirst {
    byzantine: Vec<NodeIndex>,
}

impl crate::Scheduler<Message> for ByzantineFirst {
    fn delay(
        &mut self,
        _now: Micros,
        from: NodeIndex,
        _to: NodeIndex,
        _message: Option<&Message>,
        rng: &mut ChaCha8Rng,
    ) -> Micros {
        if self.byzantine.contains(&from) {
            100
        } else {
            rng.gen_range(5_000..=50_000)
        }
    }
}

/// Run one case and check it; what the run showed.
pub fn run_case(case: &RsaCase) -> Result<RsaSummary, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let dealt = dealt(case.n)?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let kind = match case.attack {
        RsaAttack::Silent => Behaviour::Silent,
        RsaAttack::Garbage => Behaviour::Garbage,
        _ => Behaviour::Adaptive,
    };
    let crate::Placement { byzantine, honest, behaviours } = crate::place(quorum, &kind, &mut rng);
    let t = quorum.t();
    let messages: Vec<Vec<u8>> = (0..case.messages)
        .map(|i| loop {
            let mut message = vec![0u8; rng.gen_range(1..300)];
            rng.fill_bytes(&mut message);
            // The first message has a Byzantine designated signer.
            let id = MessageId::of(&message);
            if i > 0 || designated(&id, quorum.n(), t).any(|d| byzantine.contains(&d)) {
                break message;
            }
        })
        .collect();
    // Small bounds, so that the runs reach them: two signatures remembered (older ones come from
    // the host's store), 16 early shares per peer (the attackers send more).
    let config = RsaSignerConfig { early_per_peer_max: 16, done_kept: 2 };
    let scenario =
        RsaScenario { quorum, dealt: Arc::clone(&dealt), messages: messages.clone(), attack: case.attack, config };
    let down = case.down.then(|| honest[0]);
    let scheduler: Box<dyn crate::Scheduler<Message>> = match case.schedule {
        RsaSchedule::Random => Box::new(RandomScheduler::new(quorum, &mut rng)),
        RsaSchedule::ByzantineFirst => Box::new(ByzantineFirst { byzantine: byzantine.clone() }),
    };
    let run = RunConfig { seed: case.seed, deliveries_max: 1_000_000, cpu: None };
    let mut network = Network::new(quorum, &scenario, &behaviours, scheduler, run);
    let mut inputs_end = 0;
    let mut given = Vec::new();
    for &node in &honest {
        let mut at = if Some(node) == down { DOWN_UNTIL } else { rng.gen_range(1_000..SIGN_GAP_MAX) };
        for message in &messages {
            network = network.with_input_at(at, node, Input::Sign(message.clone()));
            given.push((at, node, message.clone()));
            inputs_end = inputs_end.max(at);
            at += rng.gen_range(0..SIGN_GAP_MAX);
        }
    }
    if let Some(node) = down {
        network = network.with_outage(node, DOWN_UNTIL);
    }
    let heal_at = rng.gen_range(inputs_end..inputs_end + 2_000_000);
    network = network.with_liveness(heal_at, LIVENESS_BOUND);
    // The host's timeout: retries until the end of the liveness phase.
    for (at, node, message) in given {
        let mut retry_at = at + RETRY_FIRST;
        while retry_at <= heal_at + LIVENESS_BOUND {
            network = network.with_input_at(retry_at, node, Input::Retry(message.clone()));
            retry_at += RETRY_EVERY;
        }
    }
    // The host's part: it makes our shares, stores each signature and answers a peer's question
    // from the store.
    let mut stores: BTreeMap<(NodeIndex, MessageId), Vec<u8>> = BTreeMap::new();
    let keys = Arc::clone(&dealt);
    network = network.with_reaction(Box::new(move |node, output| match output {
        Output::Compute(compute) => {
            let computed = compute.run(&keys.public, &keys.shares[node.as_usize()]).ok()?;
            Some(Input::Computed(computed))
        }
        Output::Signed { id, signature } => {
            stores.insert((node, *id), signature.clone());
            None
        }
        Output::SignatureAsked { peer, id } => stores.get(&(node, *id)).map(|signature| Input::Answer {
            peer: *peer,
            id: *id,
            signature: signature.clone(),
        }),
    }));
    let count = messages.len();
    let (report, _) = network.run_until(
        |_| None,
        |outputs| {
            outputs.iter().flatten().all(|o| {
                let signed: std::collections::BTreeSet<MessageId> = o
                    .iter()
                    .filter_map(|p| match &p.output {
                        Output::Signed { id, .. } => Some(*id),
                        _ => None,
                    })
                    .collect();
                signed.len() >= count
            })
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
    let mut checked: BTreeMap<MessageId, Vec<u8>> = BTreeMap::new();
    for node in report.honest() {
        let outputs = report.outputs[node.as_usize()].as_ref().ok_or("an honest replica has outputs")?;
        let mut signed: BTreeMap<MessageId, Vec<u8>> = BTreeMap::new();
        for produced in outputs {
            // A retry after the signature gives it again (the host stores it again): the same bytes.
            if let Output::Signed { id, signature } = &produced.output {
                if signed.insert(*id, signature.clone()).is_some_and(|earlier| earlier != *signature) {
                    return Err(context(format!("replica {node} signed {id:?} twice, differently")));
                }
            }
        }
        for message in &messages {
            let id = MessageId::of(message);
            let Some(signature) = signed.get(&id) else {
                return Err(context(format!("termination: replica {node} has no signature of {id:?}")));
            };
            if !verify_signature(&dealt.public, message, signature) {
                return Err(context(format!("replica {node}'s signature of {id:?} does not verify")));
            }
            // PKCS#1 v1.5 signatures are unique: every honest replica holds the same bytes.
            if checked.entry(id).or_insert_with(|| signature.clone()) != signature {
                return Err(context(format!("replicas hold two signatures of {id:?}")));
            }
        }
    }
    let mut faults: BTreeMap<FaultKind, usize> = BTreeMap::new();
    for (_, fault) in &report.faults {
        *faults.entry(fault.kind.clone()).or_default() += 1;
    }
    // Under the Byzantine-first schedule the first honest replica to sign meets the bad shares in
    // its first combination: each Byzantine signer must be named by an honest replica. (Replicas
    // that take the signature from a peer check no share.)
    if case.schedule == RsaSchedule::ByzantineFirst {
        let named: &[FaultKind] = match case.attack {
            RsaAttack::WrongShare => &[FaultKind::InvalidProof],
            RsaAttack::OtherMessages => &[FaultKind::InvalidProof, FaultKind::Equivocation],
            _ => &[],
        };
        for bad in byzantine.iter().filter(|_| !named.is_empty()) {
            let found =
                report.faults.iter().any(|(r, f)| honest.contains(r) && f.node == *bad && named.contains(&f.kind));
            if !found {
                return Err(context(format!("no honest replica named Byzantine signer {bad}")));
            }
        }
    }
    Ok(RsaSummary { faults, trace_hex: report.trace_hex(), deliveries: report.deliveries })
}
