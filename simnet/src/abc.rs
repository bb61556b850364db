//! Atomic broadcast under the simulator: requests given to one or to 2t + 1 replicas, clocks
//! that differ, an application that reports its state's digest at checkpoints, optionally a
//! replica cut off for a while that must catch up from a checkpoint; checks of total order,
//! validity, at-most-once, checkpoints and agreed time.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use fides_atomic_broadcast::checkpoint::{CatchUp, Checkpoint};
use fides_atomic_broadcast::epoch::{AtomicBroadcast, Batch, Config, Input, Keys, Message, Output, Request};
use fides_crypto::ThresholdKeys;
use fides_types::codec::Wire;
use fides_types::{FaultKind, NodeIndex, Quorum};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use crate::abc_actors::{AbcAttack, AttackLog};
use crate::actors::{AgreementKey, AgreementView};
use crate::check;
use crate::{Behaviour, Byzantine, Micros, Network, Produced, RandomScheduler, Reaction, RunConfig, Scenario};

/// Epochs between checkpoints in the simulated runs.
pub const CHECKPOINT_INTERVAL: u64 = 2;
/// How long (virtual µs) a lagging replica is down.
pub const LAG_UNTIL: u64 = 4_000_000;
/// The liveness phase starts at a time drawn below this (virtual µs, a few times a usual run),
/// after [`LAG_UNTIL`] in runs with a lagging replica; every request must then be delivered
/// within [`LIVENESS_BOUND`].
const HEAL_AT_MAX: Micros = 8_000_000;
/// How long after the network healed the honest replicas have (virtual µs).
pub const LIVENESS_BOUND: Micros = 5_000_000;

/// One run of atomic broadcast.
#[derive(Clone, Debug)]
pub struct AbcCase {
    /// Replicas.
    pub n: u32,
    /// What the `t` Byzantine replicas do.
    pub byzantine: Behaviour,
    /// Requests in all.
    pub requests: usize,
    /// Whether one honest replica is down until [`LAG_UNTIL`] — every message to or from it
    /// before then is lost — and then recovers (it takes the place of one Byzantine replica, so
    /// `t - 1` are Byzantine); it must catch up from a checkpoint.
    pub lagging: bool,
    /// Whether the network is scheduled by [`CensorScheduler`] instead of at random; every request
    /// then goes to 2t + 1 replicas (censorship resilience: it must be delivered whatever the
    /// scheduler and the Byzantine replicas do).
    pub content_aware: bool,
    /// The seed.
    pub seed: u64,
}

/// A content-aware scheduler that tries to censor one honest replica, the *victim*: it reads
/// every message, holds back the victim's reliable broadcasts and every vote for 1 in the
/// victim's agreements (votes for 0 go fast), so that each epoch's subset leaves the victim's
/// contribution out whenever the others can complete without it. Everything else arrives within
/// 0.1–2 ms. A held message arrives within [`CENSOR_HOLD`]: the network stays asynchronous, not
/// lossy.
pub struct CensorScheduler {
    /// The replica censored.
    pub victim: NodeIndex,
}

/// The longest a [`CensorScheduler`] holds a message.
pub const CENSOR_HOLD: u64 = 300_000;

impl crate::Scheduler<Message> for CensorScheduler {
    fn delay(
        &mut self,
        _now: u64,
        _from: NodeIndex,
        _to: NodeIndex,
        message: Option<&Message>,
        rng: &mut ChaCha8Rng,
    ) -> u64 {
        use fides_agreement::Message as Vote;
        use fides_atomic_broadcast::acs::Message as Subset;
        let fast = rng.gen_range(100..2_000);
        let held = CENSOR_HOLD / 2 + rng.gen_range(0..CENSOR_HOLD / 2);
        let Some(Message::Subset { message, .. }) = message else { return fast };
        match message {
            Subset::Broadcast { proposer, .. } if *proposer == self.victim => held,
            Subset::Agreement { proposer, message } if *proposer == self.victim => match message {
                Vote::BVal { value: true, .. } | Vote::Aux { value: true, .. } => held,
                Vote::Conf { values, .. } if values.contains(true) => held,
                _ => fast,
            },
            _ => fast,
        }
    }
}

/// Each replica's view of the cluster's three threshold key sets.
#[derive(Clone)]
pub struct ClusterKeys {
    /// Coin keys.
    pub coin: Vec<Arc<ThresholdKeys>>,
    /// Encryption keys.
    pub encryption: Vec<Arc<ThresholdKeys>>,
    /// Signing keys (checkpoints).
    pub signing: Vec<Arc<ThresholdKeys>>,
}

impl ClusterKeys {
    /// Fresh key sets drawn from `rng`.
    pub fn random(quorum: Quorum, rng: &mut ChaCha8Rng) -> Self {
        let coin = crate::threshold_keys(quorum, rng);
        let encryption = crate::threshold_keys(quorum, rng);
        let signing = crate::threshold_keys(quorum, rng);
        ClusterKeys { coin, encryption, signing }
    }

    fn of(&self, index: NodeIndex) -> Keys {
        let i = index.as_usize();
        Keys {
            coin: Arc::clone(&self.coin[i]),
            encryption: Arc::clone(&self.encryption[i]),
            signing: Arc::clone(&self.signing[i]),
        }
    }
}

/// The scenario: keys, each replica's clock and requests.
pub struct AbcScenario {
    pub(crate) quorum: Quorum,
    keys: ClusterKeys,
    pub(crate) clocks: Vec<u64>,
    pub(crate) requests: Vec<Vec<Request>>,
    pub(crate) config: Config,
    /// What [`Behaviour::Adaptive`] does: an attack on atomic broadcast, or (`None`) equivocate.
    attack: Option<AbcAttack>,
    /// What the attackers report.
    pub(crate) attack_log: Arc<Mutex<AttackLog>>,
}

impl AbcScenario {
    fn instance(&self, index: NodeIndex, session: &[u8]) -> AtomicBroadcast {
        let mut config = self.config.clone();
        config.session = session.to_vec();
        self.instance_with(index, config)
    }

    /// A replica at `index` with the cluster's keys and `config`.
    pub(crate) fn instance_with(&self, index: NodeIndex, config: Config) -> AtomicBroadcast {
        AtomicBroadcast::new(self.quorum, index, config, self.keys.of(index))
    }
}

impl Scenario for AbcScenario {
    type P = AtomicBroadcast;

    fn honest(&self, index: NodeIndex) -> AtomicBroadcast {
        self.instance(index, &self.config.session)
    }

    fn input(&self, index: NodeIndex) -> Option<Input> {
        let i = index.as_usize();
        Some(Input::Start { clock: self.clocks[i], requests: self.requests[i].clone() })
    }

    fn input_other(&self, index: NodeIndex) -> Option<Input> {
        // A Byzantine face: a clock far off, and requests of its own.
        let request = Request { client: 1_000 + u64::from(index.0), id: 0, payload: b"byzantine".to_vec() };
        Some(Input::Start { clock: u64::MAX / 2, requests: vec![request] })
    }

    fn other_instance(&self, index: NodeIndex) -> AtomicBroadcast {
        self.instance(index, b"simnet/abc/other")
    }

    fn garbage(&self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let epoch = rng.gen_range(0..20);
        match rng.gen_range(0..7) {
            0 => {
                let mut share = [0u8; 48];
                rng.fill_bytes(&mut share);
                Message::Decryption { epoch, proposer: NodeIndex(rng.gen_range(0..self.quorum.n() + 1)), share }
                    .to_bytes()
            }
            1 => {
                let share = fides_crypto::blsttc::DecryptionShare::from_bytes([0u8; 48])
                    .map(|s| s.to_bytes())
                    .unwrap_or([0; 48]);
                Message::Decryption { epoch, proposer: NodeIndex(0), share }.to_bytes()
            }
            2 => {
                // A share on a statement nobody signs (or bytes that are no share at all).
                let share = if rng.gen_bool(0.5) {
                    self.keys.signing[0].sign_share(fides_crypto::hash_to_g2(b"garbage", &[b"statement"])).to_bytes()
                } else {
                    let mut bytes = [0u8; 96];
                    rng.fill_bytes(&mut bytes);
                    bytes
                };
                let epoch = rng.gen_range(0..5) * CHECKPOINT_INTERVAL + CHECKPOINT_INTERVAL - 1;
                Message::CheckpointShare { epoch, share }.to_bytes()
            }
            3 => Message::CatchUpRequest { next: rng.gen_range(0..30) }.to_bytes(),
            4 => {
                // A forged checkpoint and made-up batches after it.
                let mut signature = [0u8; 96];
                rng.fill_bytes(&mut signature);
                let checkpoint = Checkpoint {
                    epoch: rng.gen_range(0..40),
                    time: rng.gen(),
                    application: [1; 32],
                    log: [2; 32],
                    window: fides_atomic_broadcast::checkpoint::window_digest(&[]),
                    signature,
                };
                let batch = Batch { epoch: checkpoint.epoch + 1, time: 0, requests: Vec::new() };
                Message::CatchUp(CatchUp { checkpoint: Some((checkpoint, Vec::new())), batches: vec![batch] })
                    .to_bytes()
            }
            5 => {
                // Made-up batches from epoch 0, no checkpoint.
                let requests = vec![Request { client: 7, id: rng.gen(), payload: b"forged".to_vec() }];
                let batches =
                    (0..rng.gen_range(1..20)).map(|e| Batch { epoch: e, time: 1, requests: requests.clone() });
                Message::CatchUp(CatchUp { checkpoint: None, batches: batches.collect() }).to_bytes()
            }
            _ => {
                let mut bytes = vec![0u8; rng.gen_range(0..100)];
                rng.fill_bytes(&mut bytes);
                bytes
            }
        }
    }

    fn agreements(&self) -> Option<AgreementView<Message>> {
        use fides_agreement::Message as AbaMessage;
        use fides_atomic_broadcast::acs::Message as Subset;
        fn open(message: &Message) -> Option<(AgreementKey, &AbaMessage)> {
            match message {
                Message::Subset { epoch, message: Subset::Agreement { proposer, message } } => {
                    Some(((*epoch, proposer.0), message))
                }
                _ => None,
            }
        }
        fn wrap((epoch, proposer): AgreementKey, message: AbaMessage) -> Message {
            Message::Subset { epoch, message: Subset::Agreement { proposer: NodeIndex(proposer), message } }
        }
        Some(AgreementView { open, wrap })
    }

    fn adaptive(&self, index: NodeIndex) -> Box<dyn Byzantine<AtomicBroadcast>> {
        match self.attack {
            Some(attack) => crate::abc_actors::make(attack, index, self),
            // The equivocator is the sharpest generic attacker here: two faces, two clocks.
            None => crate::actors::make(&Behaviour::Equivocator, index, self, self.quorum),
        }
    }
}

/// The simulated application at every honest replica: a digest chained over the ids it executed,
/// reported at each checkpoint epoch; a replica that installs a checkpoint takes its digest (the
/// state transfer a real service would make).
pub fn application(n: u32, interval: u64) -> Reaction<AtomicBroadcast> {
    let mut state = vec![[0u8; 32]; n as usize];
    Box::new(move |index, output| {
        let digest = state.get_mut(index.as_usize())?;
        match output {
            Output::Batch(batch) => {
                let mut bytes = digest.to_vec();
                for request in &batch.requests {
                    bytes.extend_from_slice(&request.client.to_le_bytes());
                    bytes.extend_from_slice(&request.id.to_le_bytes());
                }
                *digest = fides_crypto::sha256(&bytes);
                ((batch.epoch + 1) % interval == 0)
                    .then_some(Input::ApplicationDigest { epoch: batch.epoch, digest: *digest })
            }
            Output::Install(checkpoint) => {
                *digest = checkpoint.application;
                None
            }
            Output::Checkpoint(_) => None,
        }
    })
}

/// Run one case and check it; the number of epochs delivered.
pub fn run_case(case: &AbcCase) -> Result<u64, String> {
    run_case_summary(case).map(|summary| summary.epochs)
}

/// Run one case and check it; what it delivered.
pub fn run_case_summary(case: &AbcCase) -> Result<AbcSummary, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let keys = ClusterKeys::random(quorum, &mut rng);
    run_with_keys(case, keys, &mut rng)
}

/// What a checked run delivered, as every honest replica agrees.
#[derive(Clone, Debug)]
pub struct AbcSummary {
    /// Epochs delivered (by the replica furthest ahead).
    pub epochs: u64,
    /// Requests delivered.
    pub requests: usize,
    /// The agreed time of each epoch.
    pub times: Vec<u64>,
    /// Stable checkpoints (epochs).
    pub checkpoints: Vec<u64>,
    /// The Byzantine replicas.
    pub byzantine: Vec<NodeIndex>,
    /// The lagging replica and the checkpoint epoch it installed.
    pub installed: Option<(NodeIndex, u64)>,
    /// The run's trace hash, in hex: the same seed gives the same one.
    pub trace: String,
    /// The batches of the longest honest log that starts at epoch 0.
    pub batches: Vec<Batch>,
    /// The faults honest replicas recorded against Byzantine ones.
    pub byzantine_faults: Vec<FaultKind>,
    /// What the attackers of [`run_attack`] report.
    pub attack: AttackLog,
}

/// Where each honest log stands: the next epoch it will deliver.
fn reached(log: &[Produced<Output>]) -> u64 {
    log.iter()
        .filter_map(|p| match &p.output {
            Output::Batch(b) => Some(b.epoch + 1),
            Output::Install(c) => Some(c.epoch + 1),
            Output::Checkpoint(_) => None,
        })
        .max()
        .unwrap_or(0)
}

/// Run one case whose `t` Byzantine replicas make `attack` (`case.byzantine` is not used), and
/// check it as any case; the summary tells what the attackers achieved.
pub fn run_attack(case: &AbcCase, attack: AbcAttack) -> Result<AbcSummary, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let keys = ClusterKeys::random(quorum, &mut rng);
    let case = AbcCase { byzantine: Behaviour::Adaptive, ..case.clone() };
    run_checked(&case, keys, &mut rng, Some(attack), None, None)
}

/// Run one case with given keys (e.g. the dealer's) and check it.
pub fn run_with_keys(case: &AbcCase, keys: ClusterKeys, rng: &mut ChaCha8Rng) -> Result<AbcSummary, String> {
    run_checked(case, keys, rng, None, None, None)
}

/// The first retransmission timeout of lossy links: the replica transport's.
pub const LOSSY_RETRANSMIT_TIMEOUT: u64 = 200_000;

/// Run one case over links that lose each transmission with probability `loss` and resend it after
/// a retransmission timeout ([`crate::lossy::Lossy`]), and check it.
pub fn run_case_over_lossy_links(case: &AbcCase, loss: f64) -> Result<AbcSummary, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let keys = ClusterKeys::random(quorum, &mut rng);
    run_checked(case, keys, &mut rng, None, Some(loss), None)
}

/// What [`run_case_with_rebuilds`] did to the honest replicas.
#[derive(Clone, Debug, Default)]
pub struct Rebuilds {
    /// Replicas replaced by a copy decoded from their encoded state.
    pub count: u64,
    /// Of those, how many were in the middle of an epoch (one started and not delivered).
    pub mid_epoch: u64,
    /// The first state whose encoding did not survive a round trip.
    pub error: Option<String>,
}

/// Run one case in which, after each message it handles, an honest replica is replaced with
/// probability `per_message` by a fresh instance given its encoded state (as a replica restarted
/// from a snapshot taken at that moment), and check it as any case. The encoding of the copy
/// must equal the original's.
pub fn run_case_with_rebuilds(case: &AbcCase, per_message: f64) -> Result<(AbcSummary, Rebuilds), String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let keys = ClusterKeys::random(quorum, &mut rng);
    let rebuilds = Arc::new(Mutex::new(Rebuilds::default()));
    let summary = run_checked(case, keys, &mut rng, None, None, Some((per_message, Arc::clone(&rebuilds))))?;
    let rebuilds = rebuilds.lock().map(|r| r.clone()).unwrap_or_default();
    match &rebuilds.error {
        Some(error) => Err(format!("state round trip: {error}")),
        None => Ok((summary, rebuilds)),
    }
}

/// The [`crate::Rebuild`] hook of [`run_case_with_rebuilds`].
fn rebuilder(
    scenario: &AbcScenario,
    seed: u64,
    per_message: f64,
    log: Arc<Mutex<Rebuilds>>,
) -> crate::Rebuild<AtomicBroadcast> {
    let (quorum, keys, config) = (scenario.quorum, scenario.keys.clone(), scenario.config.clone());
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_5AA9_u64);
    Box::new(move |index, live: &AtomicBroadcast| {
        if !rng.gen_bool(per_message) {
            return None;
        }
        let bytes = live.encode_state_to_vec();
        let mut copy = AtomicBroadcast::new(quorum, index, config.clone(), keys.of(index));
        let mut reader = fides_types::codec::Reader::new(&bytes);
        let decoded = copy.decode_state(&mut reader).and_then(|()| reader.finish());
        let mut log = log.lock().ok()?;
        match decoded {
            Err(error) => {
                log.error.get_or_insert(format!("replica {index} could not decode its state: {error}"));
                None
            }
            Ok(()) if copy.encode_state_to_vec() != bytes => {
                log.error.get_or_insert(format!("replica {index}: decoding and encoding again changed the state"));
                None
            }
            Ok(()) => {
                log.count += 1;
                if !live.is_quiescent() {
                    log.mid_epoch += 1;
                }
                Some(copy)
            }
        }
    })
}

fn run_checked(
    case: &AbcCase,
    keys: ClusterKeys,
    rng: &mut ChaCha8Rng,
    attack: Option<AbcAttack>,
    loss: Option<f64>,
    rebuilds: Option<(f64, Arc<Mutex<Rebuilds>>)>,
) -> Result<AbcSummary, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let crate::Placement { mut byzantine, mut honest, mut behaviours } = crate::place(quorum, &case.byzantine, rng);
    let lagging = case.lagging.then(|| match byzantine.pop() {
        Some(index) => {
            behaviours[index.as_usize()] = Behaviour::Honest;
            honest.push(index);
            index
        }
        None => honest[0],
    });
    let indices: Vec<NodeIndex> = quorum.nodes().collect();
    let victim = honest.iter().copied().find(|i| Some(*i) != lagging).expect("there are honest replicas");
    let clocks: Vec<u64> = quorum.nodes().map(|_| 1_000_000 + rng.gen_range(0..5_000)).collect();
    // Each request goes to one honest replica, or to 2t + 1 replicas chosen at random (which may
    // include Byzantine ones).
    let mut requests: Vec<Vec<Request>> = vec![Vec::new(); quorum.n() as usize];
    for id in 0..case.requests as u64 {
        let request = Request { client: id % 3, id, payload: vec![id as u8; rng.gen_range(1..40)] };
        let targets: Vec<NodeIndex> = if rng.gen_bool(0.5) && !case.content_aware {
            vec![*honest.choose(rng).expect("there are honest replicas")]
        } else {
            indices.choose_multiple(rng, quorum.honest_majority() as usize).copied().collect()
        };
        for target in targets {
            requests[target.as_usize()].push(request.clone());
        }
    }
    let mut config = Config::new(b"simnet/abc".to_vec());
    // Four requests per replica per epoch: a few epochs per run.
    config.batch_size = 4 * quorum.n() as usize;
    config.checkpoint_interval = CHECKPOINT_INTERVAL;
    config.epochs_future_max = 8;
    let session = config.session.clone();
    let attack_log = Arc::new(Mutex::new(AttackLog::default()));
    let scenario = AbcScenario {
        quorum,
        keys,
        clocks: clocks.clone(),
        requests,
        config,
        attack,
        attack_log: Arc::clone(&attack_log),
    };
    let scheduler: Box<dyn crate::Scheduler<Message>> = if case.content_aware {
        Box::new(CensorScheduler { victim })
    } else {
        Box::new(RandomScheduler::new(quorum, rng))
    };
    let scheduler = match loss {
        Some(loss) => Box::new(crate::lossy::Lossy::new(scheduler, loss, LOSSY_RETRANSMIT_TIMEOUT)),
        None => scheduler,
    };
    let run = RunConfig { seed: case.seed, deliveries_max: 5_000_000, cpu: None };
    let given: BTreeSet<(u64, u64, Vec<u8>)> = honest
        .iter()
        .flat_map(|i| scenario.requests[i.as_usize()].iter().map(|r| (r.client, r.id, r.payload.clone())))
        .collect();
    // Atomic broadcast never terminates (a Byzantine replica can keep starting epochs): the run
    // stops once every honest replica reached the epoch by which some honest replica delivered
    // every request given to an honest one.
    let everything_delivered = |outputs: &[Option<Vec<Produced<Output>>>]| {
        let mut all_by = None;
        for log in outputs.iter().flatten() {
            let mut missing = given.clone();
            for produced in log {
                if let Output::Batch(batch) = &produced.output {
                    for request in &batch.requests {
                        missing.remove(&(request.client, request.id, request.payload.clone()));
                    }
                    if missing.is_empty() {
                        all_by = Some(batch.epoch + 1);
                        break;
                    }
                }
            }
            if all_by.is_some() {
                break;
            }
        }
        all_by.is_some_and(|by| outputs.iter().flatten().all(|log| reached(log) >= by))
    };
    let heal_at = rng.gen_range(0..HEAL_AT_MAX) + if lagging.is_some() { LAG_UNTIL } else { 0 };
    let mut network = Network::new(quorum, &scenario, &behaviours, scheduler, run)
        .with_reaction(application(quorum.n(), CHECKPOINT_INTERVAL))
        .with_liveness(heal_at, LIVENESS_BOUND);
    if let Some(index) = lagging {
        network = network.with_outage(index, LAG_UNTIL).with_input_at(LAG_UNTIL, index, Input::Recover);
    }
    if let Some((per_message, log)) = rebuilds {
        network = network.with_rebuild(rebuilder(&scenario, case.seed, per_message, log));
    }
    let (report, _) = network.run_until(|i| scenario.input(i), everything_delivered);
    let context = |e: String| {
        format!(
            "{e} (n={}, byzantine={}, lagging={lagging:?}, censored={:?})",
            case.n,
            case.byzantine.name(),
            case.content_aware.then_some(victim)
        )
    };
    check::faults_only_against(&report, &byzantine).map_err(context)?;
    check::liveness(&report).map_err(context)?;
    if !report.done_early {
        return Err(context(format!(
            "validity: run ended ({} deliveries) before every request was delivered",
            report.deliveries
        )));
    }
    let logs: Vec<Option<Vec<Output>>> =
        report.outputs.iter().map(|o| o.as_ref().map(|list| list.iter().map(|p| p.output.clone()).collect())).collect();
    let honest_clocks: Vec<u64> = honest.iter().map(|i| clocks[i.as_usize()]).collect();
    let epochs = check::atomic_broadcast(&session, &logs, &given, &honest_clocks).map_err(context)?;
    let installed = lagging.and_then(|index| {
        logs[index.as_usize()].as_ref()?.iter().find_map(|o| match o {
            Output::Install(c) => Some((index, c.epoch)),
            _ => None,
        })
    });
    if let Some(index) = lagging {
        if installed.is_none() {
            return Err(context(format!("catch-up: the lagging replica {index} installed no checkpoint")));
        }
    }
    let longest: Vec<Batch> = logs
        .iter()
        .flatten()
        .map(|log| {
            log.iter()
                .filter_map(|o| match o {
                    Output::Batch(b) => Some(b.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .filter(|batches| batches.first().is_some_and(|b| b.epoch == 0))
        .max_by_key(Vec::len)
        .unwrap_or_default();
    let checkpoints: BTreeSet<u64> = logs
        .iter()
        .flatten()
        .flatten()
        .filter_map(|o| match o {
            Output::Checkpoint(c) => Some(c.epoch),
            _ => None,
        })
        .collect();
    let byzantine_faults =
        report.faults.iter().filter(|(_, f)| byzantine.contains(&f.node)).map(|(_, f)| f.kind.clone()).collect();
    let attack = attack_log.lock().map(|log| log.clone()).unwrap_or_default();
    Ok(AbcSummary {
        epochs,
        requests: longest.iter().map(|b| b.requests.len()).sum(),
        times: longest.iter().map(|b| b.time).collect(),
        checkpoints: checkpoints.into_iter().collect(),
        byzantine,
        installed,
        trace: report.trace_hex(),
        batches: longest,
        byzantine_faults,
        attack,
    })
}

/// One throughput run: every replica is given all transactions (as in hbbft's
/// `examples/simulation`), the run lasts until every honest replica delivered all of them.
#[derive(Clone, Debug)]
pub struct AbcBenchCase {
    /// Replicas.
    pub n: u32,
    /// What the `t` Byzantine replicas do ([`Behaviour::Honest`] for none).
    pub byzantine: Behaviour,
    /// Transactions in all.
    pub txs: usize,
    /// Requests considered per proposal (each replica proposes `⌈batch / n⌉`).
    pub batch: usize,
    /// Payload bytes per transaction.
    pub tx_size: usize,
    /// Network timing.
    pub cpu: crate::CpuModel,
    /// The seed.
    pub seed: u64,
}

/// What a throughput run measured (virtual time is in microseconds).
#[derive(Clone, Debug)]
pub struct AbcBenchSummary {
    /// Epochs until every honest replica delivered everything.
    pub epochs: u64,
    /// Distinct requests delivered (each at most once, so all the transactions).
    pub requests: usize,
    /// Virtual time at which the last honest replica delivered the last transaction.
    pub all_delivered_at: u64,
    /// Virtual time of the first non-empty batch at the first honest replica to deliver one.
    pub first_commit_at: u64,
    /// Messages sent per honest replica.
    pub messages_per_node: f64,
    /// Bytes sent per honest replica.
    pub bytes_per_node: f64,
    /// Handler CPU per honest replica, in microseconds.
    pub cpu_micros_per_node: f64,
}

/// Run one throughput case and check total order, at-most-once and that everything was delivered.
pub fn bench_case(case: &AbcBenchCase) -> Result<AbcBenchSummary, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let keys = ClusterKeys::random(quorum, &mut rng);
    let crate::Placement { byzantine, behaviours, .. } = crate::place(quorum, &case.byzantine, &mut rng);
    let transactions: Vec<Request> = (0..case.txs as u64)
        .map(|id| {
            let mut payload = vec![0u8; case.tx_size];
            rng.fill_bytes(&mut payload);
            Request { client: id % 64, id, payload }
        })
        .collect();
    let clock = 1_000_000;
    let mut config = Config::new(b"simnet/abc-bench".to_vec());
    config.batch_size = case.batch.max(1);
    config.queue_max = case.txs.max(1);
    config.payload_len_max = case.tx_size;
    let session = config.session.clone();
    let interval = config.checkpoint_interval;
    let scenario = AbcScenario {
        quorum,
        keys,
        clocks: vec![clock; quorum.n() as usize],
        requests: vec![transactions; quorum.n() as usize],
        config,
        attack: None,
        attack_log: Arc::default(),
    };
    let scheduler = RandomScheduler::new(quorum, &mut rng);
    let run = RunConfig { seed: case.seed, deliveries_max: u64::MAX, cpu: Some(case.cpu) };
    // Counted incrementally: each honest log's delivered requests so far (at most once each, so
    // reaching `txs` means all of them).
    let mut counted: Vec<(usize, usize)> = vec![(0, 0); quorum.n() as usize];
    let txs = case.txs;
    let everything_delivered = |outputs: &[Option<Vec<Produced<Output>>>]| {
        let mut all = true;
        for (log, (seen, count)) in outputs.iter().zip(counted.iter_mut()) {
            let Some(log) = log else { continue };
            *count += log[*seen..]
                .iter()
                .map(|p| match &p.output {
                    Output::Batch(b) => b.requests.len(),
                    _ => 0,
                })
                .sum::<usize>();
            *seen = log.len();
            all &= *count >= txs;
        }
        all
    };
    let network =
        Network::new(quorum, &scenario, &behaviours, scheduler, run).with_reaction(application(quorum.n(), interval));
    let (report, _) = network.run_until(|i| scenario.input(i), everything_delivered);
    let context = |e: String| format!("{e} (n={}, byzantine={})", case.n, case.byzantine.name());
    check::faults_only_against(&report, &byzantine).map_err(context)?;
    if !report.done_early {
        return Err(context("the run ended before every transaction was delivered".to_string()));
    }
    let logs: Vec<Option<Vec<Output>>> =
        report.outputs.iter().map(|o| o.as_ref().map(|list| list.iter().map(|p| p.output.clone()).collect())).collect();
    let given: BTreeSet<(u64, u64, Vec<u8>)> =
        scenario.requests[0].iter().map(|r| (r.client, r.id, r.payload.clone())).collect();
    let epochs = check::atomic_broadcast(&session, &logs, &given, &[clock]).map_err(context)?;
    let requests = logs
        .iter()
        .flatten()
        .map(|log| {
            log.iter()
                .map(|o| match o {
                    Output::Batch(b) => b.requests.len(),
                    _ => 0,
                })
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    let honest: Vec<NodeIndex> = report.honest().collect();
    let produced = || report.outputs.iter().flatten();
    let all_delivered_at = produced().filter_map(|log| log.last().map(|p| p.at)).max().unwrap_or(0);
    let first_commit_at = produced()
        .filter_map(|log| {
            log.iter().find(|p| matches!(&p.output, Output::Batch(b) if !b.requests.is_empty())).map(|p| p.at)
        })
        .min()
        .unwrap_or(0);
    let per_node = |f: &dyn Fn(&crate::NodeStats) -> u64| {
        honest.iter().map(|i| f(&report.stats[i.as_usize()]) as f64).sum::<f64>() / honest.len().max(1) as f64
    };
    Ok(AbcBenchSummary {
        epochs,
        requests,
        all_delivered_at,
        first_commit_at,
        messages_per_node: per_node(&|s| s.messages_sent),
        bytes_per_node: per_node(&|s| s.bytes_sent),
        cpu_micros_per_node: per_node(&|s| s.cpu_nanos) / 1_000.0,
    })
}
