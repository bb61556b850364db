//! Whole replicas under the simulator: atomic broadcast, the service host and a real service (the
//! bistro) over an in-memory store, with the epoch signer certifying every epoch — the pieces a
//! replica process runs, composed as one sans-IO protocol so that services meet the Byzantine
//! actors and schedulers, not only process tests.
//!
//! An honest [`WholeReplica`] does what the replica's services' worker does with each delivered
//! batch: the registry applies it to the services' tables in order, the epoch's leaves are made
//! with [`fides_service::certificate::epoch_leaves`] (the function the worker uses) followed by the
//! state leaf, and the root goes to the [`EpochSigner`]; the ordering service's checkpoint digest is its log digest, as in
//! the replica's core. It reports each applied epoch (its state digest, root, and every answer
//! with its inclusion path) and each certificate.
//!
//! Clients: owners create events; once an honest replica applied an event's creation, tickets for
//! it are submitted to that replica; some requests are refused (a bad owner signature, an unknown
//! event), some are for no service. The Byzantine replicas run the generic behaviours (silent,
//! equivocating, garbage, replaying) against the whole protocol.
//!
//! A run is checked for: faults only against Byzantine replicas; liveness after the network heals;
//! every request given to an honest replica ordered; honest replicas that applied an epoch hold
//! the same service state and root after it; every epoch with leaves certified at every honest
//! replica, and every answer (ordering leaf and signed record) verifying alone against its
//! certificate under the cluster key; tickets actually issued.
//!
//! Not (yet) here: a replica that falls behind a checkpoint has no service state to go on from
//! (service snapshots are not in this harness), so no case makes a replica lag; agreement
//! instances and threshold RSA signing are not composed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use fides_atomic_broadcast::checkpoint::{log_genesis, log_next, Digest};
use fides_atomic_broadcast::epoch::{
    AtomicBroadcast, Batch, Config, Error as AbcError, Input, Keys, Message as AbcMessage, Output as AbcOutput, Request,
};
use fides_bistro::records::{domain, ed_sign, EventId, EventTerms, Request as BistroRequest, Signed, TicketRequest};
use fides_bistro::service::{Service as Bistro, ServiceConfig};
use fides_bistro::stream::{Aead, HashAlg};
use fides_service::certificate::{self, epoch_leaves, Certificate, EpochSigner, Inclusion, Leaf, SignerConfig, Tree};
use fides_service::{MemoryTables, Ordered, Outcome, Registry};
use fides_types::codec::{DecodeError, Reader, Wire};
use fides_types::{NodeIndex, Outgoing, Protocol, Quorum, Step};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::abc::ClusterKeys;
use crate::{check, Behaviour, Byzantine, Micros, Network, Produced, RandomScheduler, RunConfig, Scenario};

/// The cluster id the replicas sign under.
pub const CLUSTER: [u8; 32] = *b"simnet/whole-replica/cluster/id!";
/// Epochs between checkpoints.
const CHECKPOINT_INTERVAL: u64 = 4;
/// The liveness phase starts at a time drawn below this (virtual µs).
const HEAL_AT_MAX: Micros = 6_000_000;
/// How long after the network healed the honest replicas have (virtual µs).
const LIVENESS_BOUND: Micros = 5_000_000;

/// What whole replicas send each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Atomic broadcast's.
    Abc(AbcMessage),
    /// The epoch signer's.
    Signer(certificate::Message),
}

impl Wire for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Abc(message) => {
                out.push(0);
                message.encode(out);
            }
            Message::Signer(message) => {
                out.push(1);
                message.encode(out);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match reader.u8()? {
            0 => Ok(Message::Abc(AbcMessage::decode(reader)?)),
            1 => Ok(Message::Signer(certificate::Message::decode(reader)?)),
            other => Err(DecodeError::Invalid { what: "whole-replica message tag", value: u64::from(other) }),
        }
    }
}

/// One answer as a client gets it: the leaf it checks and its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The leaf's bytes ([`Leaf::to_bytes`]).
    pub leaf: Vec<u8>,
    /// Its path in the epoch's tree.
    pub inclusion: Inclusion,
}

/// An epoch the host applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The epoch.
    pub epoch: u64,
    /// The state digest of the services' tables after it (committed in the state leaf).
    pub state: Digest,
    /// The root of its tree (every epoch has one: the state leaf is always there).
    pub root: Option<Digest>,
    /// Every answer: each request's ordering leaf, then each signed record.
    pub answers: Vec<Answer>,
    /// Events whose creation it signed.
    pub events: Vec<EventId>,
    /// Tickets it signed.
    pub tickets: usize,
}

/// What a whole replica reports.
#[derive(Clone, Debug)]
pub enum Output {
    /// Atomic broadcast's outputs.
    Abc(AbcOutput),
    /// The host applied an epoch.
    Applied(Box<Applied>),
    /// The host's store failed (never with the in-memory store): a check failure.
    HostError(String),
    /// An epoch is certified.
    Certified(Certificate),
}

/// A replica: atomic broadcast, the services and the epoch signer.
pub struct WholeReplica {
    abc: AtomicBroadcast,
    signer: EpochSigner,
    registry: Arc<Registry>,
    tables: MemoryTables,
    /// The log digest after the last delivered batch (the checkpoint's application digest).
    log: Digest,
    /// Certificates made here (the host's store, answering peers that ask for old epochs).
    certificates: BTreeMap<u64, Certificate>,
    /// Whether it jumped to a checkpoint (its services then have no state to go on from).
    installed: bool,
}

impl std::fmt::Debug for WholeReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WholeReplica")
            .field("our_index", &self.abc.our_index())
            .field("certified", &self.certificates.len())
            .field("installed", &self.installed)
            .finish_non_exhaustive()
    }
}

impl WholeReplica {
    fn absorb_abc(
        &mut self,
        step: Step<AbcMessage, AbcOutput>,
        out: &mut Step<Message, Output>,
        rng: &mut dyn RngCore,
    ) {
        let mut pending = vec![step];
        while let Some(step) = pending.pop() {
            out.faults.extend(step.faults);
            out.messages.extend(
                step.messages.into_iter().map(|m| Outgoing { target: m.target, message: Message::Abc(m.message) }),
            );
            for output in step.outputs {
                if let AbcOutput::Batch(batch) = &output {
                    self.log = log_next(&self.log, batch);
                    if !self.installed {
                        self.apply(batch, out, rng);
                    }
                    if (batch.epoch + 1).is_multiple_of(CHECKPOINT_INTERVAL) {
                        let input = Input::ApplicationDigest { epoch: batch.epoch, digest: self.log };
                        // ApplicationDigest never fails.
                        if let Ok(step) = self.abc.handle_input(input, rng) {
                            pending.push(step);
                        }
                    }
                }
                if let AbcOutput::Install(checkpoint) = &output {
                    self.log = checkpoint.log;
                    self.installed = true;
                }
                out.outputs.push(Output::Abc(output));
            }
        }
    }

    fn absorb_signer(
        &mut self,
        step: Step<certificate::Message, certificate::Output>,
        out: &mut Step<Message, Output>,
        rng: &mut dyn RngCore,
    ) {
        let mut pending = vec![step];
        while let Some(step) = pending.pop() {
            out.faults.extend(step.faults);
            out.messages.extend(
                step.messages.into_iter().map(|m| Outgoing { target: m.target, message: Message::Signer(m.message) }),
            );
            for output in step.outputs {
                match output {
                    certificate::Output::Certified(certificate) => {
                        self.certificates.insert(certificate.root.epoch, certificate);
                        out.outputs.push(Output::Certified(certificate));
                    }
                    certificate::Output::CertificateAsked { peer, epoch } => {
                        if let Some(certificate) = self.certificates.get(&epoch).copied() {
                            let input = certificate::Input::Answer { peer, certificate };
                            if let Ok(step) = self.signer.handle_input(input, rng) {
                                pending.push(step);
                            }
                        }
                    }
                }
            }
        }
    }

    /// What the services' worker does with a delivered batch.
    fn apply(&mut self, batch: &Batch, out: &mut Step<Message, Output>, rng: &mut dyn RngCore) {
        let ordered =
            || batch.requests.iter().map(|r| Ordered { client: r.client, request: r.id, payload: &r.payload });
        let outcomes = match self.registry.apply_batch(&mut self.tables, batch.epoch, batch.time, ordered()) {
            Ok(outcomes) => outcomes,
            Err(error) => {
                out.outputs.push(Output::HostError(format!("epoch {}: {error}", batch.epoch)));
                return;
            }
        };
        let mut made = epoch_leaves(ordered(), &outcomes);
        let digest = state_digest(&self.tables);
        let state = digest.commitment();
        // The state leaf is the last, as the worker makes it: every epoch has a tree.
        made.leaves.push(Leaf::state(batch.epoch, &digest).hash());
        let mut applied =
            Applied { epoch: batch.epoch, state, root: None, answers: Vec::new(), events: Vec::new(), tickets: 0 };
        {
            let tree = Tree::new(made.leaves);
            let root = tree.epoch_root(batch.epoch, batch.time);
            applied.root = Some(root.root);
            let mut answer = |leaf: Leaf, index: u64| {
                if let Some(inclusion) = tree.inclusion(index) {
                    applied.answers.push(Answer { leaf: leaf.to_bytes(), inclusion });
                }
            };
            for (index, r) in batch.requests.iter().enumerate() {
                let digest = fides_crypto::sha256(&r.payload);
                answer(Leaf::Ordering { client: r.client, id: r.id, digest, index: index as u32 }, index as u64);
            }
            for (_, service, outcomes) in &made.answers {
                for (outcome, leaf) in outcomes {
                    if let Outcome::Sign(record) = outcome {
                        answer(Leaf::Service { service: *service, record: record.clone() }, *leaf);
                        match fides_bistro::service::answer(outcome, *leaf) {
                            Ok(fides_bistro::service::Outcome::Signed { record: Signed::Event(event), .. }) => {
                                applied.events.push(event.event)
                            }
                            Ok(fides_bistro::service::Outcome::Signed { record: Signed::Ticket(_), .. }) => {
                                applied.tickets += 1
                            }
                            _ => {}
                        }
                    }
                }
            }
            match self.signer.handle_input(certificate::Input::Sign(root), rng) {
                Ok(step) => self.absorb_signer(step, out, rng),
                Err(error) => out.outputs.push(Output::HostError(format!("epoch {}: {error}", batch.epoch))),
            }
        }
        out.outputs.push(Output::Applied(Box::new(applied)));
    }
}

/// The state digest of every table (`fides_service::state`, as the replica's host keeps it, here
/// recomputed from the in-memory tables).
fn state_digest(tables: &MemoryTables) -> fides_service::StateDigest {
    let mut digest = fides_service::state::StateDigest::new();
    for (name, table) in tables.tables() {
        for (key, value) in table {
            digest.add(name, key, value);
        }
    }
    digest
}

impl Protocol for WholeReplica {
    type Input = Input;
    type Message = Message;
    type Output = Output;
    type Error = AbcError;

    fn our_index(&self) -> NodeIndex {
        self.abc.our_index()
    }

    fn handle_input(&mut self, input: Input, rng: &mut dyn RngCore) -> Result<Step<Message, Output>, AbcError> {
        let step = self.abc.handle_input(input, rng)?;
        let mut out = Step::default();
        self.absorb_abc(step, &mut out, rng);
        Ok(out)
    }

    fn handle_message(&mut self, from: NodeIndex, message: Message, rng: &mut dyn RngCore) -> Step<Message, Output> {
        let mut out = Step::default();
        match message {
            Message::Abc(message) => {
                let step = self.abc.handle_message(from, message, rng);
                self.absorb_abc(step, &mut out, rng);
            }
            Message::Signer(message) => {
                let step = self.signer.handle_message(from, message, rng);
                self.absorb_signer(step, &mut out, rng);
            }
        }
        out
    }

    fn terminated(&self) -> bool {
        false
    }
}

/// The scenario: keys, services, clocks and requests.
pub struct ReplicaScenario {
    quorum: Quorum,
    keys: ClusterKeys,
    registry: Arc<Registry>,
    config: Config,
    clocks: Vec<u64>,
    requests: Vec<Vec<Request>>,
}

impl ReplicaScenario {
    fn instance(&self, index: NodeIndex, session: &[u8], cluster: Digest) -> WholeReplica {
        let mut config = self.config.clone();
        config.session = session.to_vec();
        let i = index.as_usize();
        let keys = Keys {
            coin: Arc::clone(&self.keys.coin[i]),
            encryption: Arc::clone(&self.keys.encryption[i]),
            signing: Arc::clone(&self.keys.signing[i]),
        };
        WholeReplica {
            abc: AtomicBroadcast::new(self.quorum, index, config, keys),
            signer: EpochSigner::new(
                Arc::clone(&self.keys.signing[i]),
                cluster,
                self.quorum,
                index,
                SignerConfig::default(),
                0,
            ),
            registry: Arc::clone(&self.registry),
            tables: MemoryTables::default(),
            log: log_genesis(session),
            certificates: BTreeMap::new(),
            installed: false,
        }
    }
}

impl Scenario for ReplicaScenario {
    type P = WholeReplica;

    fn honest(&self, index: NodeIndex) -> WholeReplica {
        self.instance(index, &self.config.session, CLUSTER)
    }

    fn input(&self, index: NodeIndex) -> Option<Input> {
        let i = index.as_usize();
        Some(Input::Start { clock: self.clocks[i], requests: self.requests[i].clone() })
    }

    fn input_other(&self, index: NodeIndex) -> Option<Input> {
        let request = Request { client: 1_000 + u64::from(index.0), id: 0, payload: b"BST1 byzantine".to_vec() };
        Some(Input::Start { clock: u64::MAX / 2, requests: vec![request] })
    }

    fn other_instance(&self, index: NodeIndex) -> WholeReplica {
        self.instance(index, b"simnet/whole-replica/other", [0; 32])
    }

    fn garbage(&self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let mut noise = [0u8; 96];
        rng.fill_bytes(&mut noise);
        let root = certificate::EpochRoot {
            epoch: rng.gen_range(0..12),
            time_ms: rng.gen(),
            count: rng.gen_range(1..9),
            root: [7; 32],
        };
        match rng.gen_range(0..5) {
            0 => Message::Signer(certificate::Message::Share { root, share: noise }).to_bytes(),
            1 => {
                let share = self.keys.signing[0].sign_share(root.point(&CLUSTER)).to_bytes();
                Message::Signer(certificate::Message::Share { root, share }).to_bytes()
            }
            2 => Message::Signer(certificate::Message::Certificate(Certificate { root, signature: noise })).to_bytes(),
            3 => {
                let mut bytes = vec![0u8; rng.gen_range(0..120)];
                rng.fill_bytes(&mut bytes);
                bytes.insert(0, 0);
                bytes
            }
            _ => {
                let mut bytes = vec![0u8; rng.gen_range(0..120)];
                rng.fill_bytes(&mut bytes);
                bytes
            }
        }
    }

    fn adaptive(&self, index: NodeIndex) -> Box<dyn Byzantine<WholeReplica>> {
        crate::actors::make(&Behaviour::Equivocator, index, self, self.quorum)
    }
}

/// One run of whole replicas.
#[derive(Clone, Debug)]
pub struct ReplicaCase {
    /// Replicas.
    pub n: u32,
    /// What the `t` Byzantine replicas do.
    pub byzantine: Behaviour,
    /// Events created (each gets tickets once created).
    pub events: usize,
    /// Tickets asked per event.
    pub tickets: usize,
    /// The seed.
    pub seed: u64,
}

/// What a checked run did.
#[derive(Clone, Debug)]
pub struct ReplicaSummary {
    /// Epochs certified (at the honest replica with the most).
    pub certified: usize,
    /// Answers verified against their certificates, over all honest replicas.
    pub answers_verified: usize,
    /// Tickets issued (at the honest replica with the most).
    pub tickets: usize,
    /// The run's trace hash: the same seed gives the same one.
    pub trace: String,
}

fn bistro_registry(quorum: Quorum, keys: &ClusterKeys, replicas: &[SigningKey]) -> Result<Registry, String> {
    let service = Bistro::new(ServiceConfig {
        cluster: CLUSTER,
        t: quorum.t(),
        replicas: replicas.iter().map(|k| k.verifying_key().to_bytes()).collect(),
        encryption: keys.encryption[0].public().clone(),
    });
    let mut registry = Registry::new();
    registry.register(service).map_err(|e| e.to_string())?;
    Ok(registry)
}

fn create_event(owner: &SigningKey, nonce: u64, deadline_ms: u64) -> BistroRequest {
    let terms = EventTerms {
        deadline_ms,
        description: format!("event {nonce}"),
        owner: owner.verifying_key().to_bytes(),
        hash: HashAlg::Sha256,
        aead: Aead::XChaCha20Poly1305,
        transfer_window_ms: 60_000,
        nonce,
    };
    let signature = ed_sign(owner, domain::CREATE, &CLUSTER, &terms.to_bytes());
    BistroRequest::CreateEvent { terms, signature }
}

fn ticket(event: EventId, k: u64) -> BistroRequest {
    BistroRequest::Ticket(TicketRequest {
        event,
        digest: fides_crypto::sha256(&k.to_le_bytes()).to_vec(),
        size: 100 + k,
        contact: format!("client {k}"),
        file_name: format!("file-{k}"),
    })
}

/// Run one case and check it.
pub fn run_case(case: &ReplicaCase) -> Result<ReplicaSummary, String> {
    let quorum = Quorum::with_max_faults(case.n).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let keys = ClusterKeys::random(quorum, &mut rng);
    let replica_keys: Vec<SigningKey> = quorum.nodes().map(|_| SigningKey::generate(&mut rng)).collect();
    let owner = SigningKey::generate(&mut rng);
    let registry = Arc::new(bistro_registry(quorum, &keys, &replica_keys)?);
    let crate::Placement { byzantine, honest, behaviours } = crate::place(quorum, &case.byzantine, &mut rng);
    let indices: Vec<NodeIndex> = quorum.nodes().collect();
    // Agreed time is in ms here (the bistro's unit); the deadlines are far ahead.
    let clocks: Vec<u64> = quorum.nodes().map(|_| 1_000_000 + rng.gen_range(0..5_000)).collect();
    let mut requests: Vec<Vec<Request>> = vec![Vec::new(); quorum.n() as usize];
    let mut give = |request: Request, rng: &mut ChaCha8Rng| {
        let targets: Vec<NodeIndex> = if rng.gen_bool(0.5) {
            vec![*honest.choose(rng).expect("there are honest replicas")]
        } else {
            indices.choose_multiple(rng, quorum.honest_majority() as usize).copied().collect()
        };
        for target in targets {
            requests[target.as_usize()].push(request.clone());
        }
    };
    for k in 0..case.events as u64 {
        let payload = create_event(&owner, k, 1_000_000_000).to_payload();
        give(Request { client: 1, id: k, payload }, &mut rng);
    }
    // Refused: a forged owner signature, a ticket for an event that does not exist; and a
    // payload for no service.
    let mut forged = create_event(&owner, 999, 1_000_000_000);
    if let BistroRequest::CreateEvent { signature, .. } = &mut forged {
        signature[0] ^= 1;
    }
    give(Request { client: 2, id: 0, payload: forged.to_payload() }, &mut rng);
    give(Request { client: 2, id: 1, payload: ticket(EventId([9; 16]), 0).to_payload() }, &mut rng);
    give(Request { client: 3, id: 0, payload: b"for no service".to_vec() }, &mut rng);

    let mut config = Config::new(b"simnet/whole-replica".to_vec());
    config.batch_size = 4 * quorum.n() as usize;
    config.checkpoint_interval = CHECKPOINT_INTERVAL;
    config.epochs_future_max = 8;
    let scenario = ReplicaScenario { quorum, keys: keys.clone(), registry, config, clocks, requests };
    let given: BTreeSet<(u64, u64, Vec<u8>)> = honest
        .iter()
        .flat_map(|i| scenario.requests[i.as_usize()].iter().map(|r| (r.client, r.id, r.payload.clone())))
        .collect();
    // Tickets are asked of the first honest replica that applied an event's creation, once.
    let ticketed: Arc<Mutex<BTreeSet<EventId>>> = Arc::default();
    let tickets_given: Arc<Mutex<Vec<Request>>> = Arc::default();
    let per_event = case.tickets as u64;
    let reaction = {
        let (ticketed, tickets_given) = (Arc::clone(&ticketed), Arc::clone(&tickets_given));
        let pending: Arc<Mutex<BTreeMap<NodeIndex, Vec<Request>>>> = Arc::default();
        Box::new(move |index: NodeIndex, output: &Output| -> Option<Input> {
            let mut pending = pending.lock().ok()?;
            if let Output::Applied(applied) = output {
                let mut ticketed = ticketed.lock().ok()?;
                for event in &applied.events {
                    if ticketed.insert(*event) {
                        let queue = pending.entry(index).or_default();
                        for k in 0..per_event {
                            let id = u64::from_le_bytes(event.0[..8].try_into().ok()?) ^ k;
                            queue.push(Request { client: 4, id, payload: ticket(*event, k).to_payload() });
                        }
                    }
                }
            }
            // One request per output: the reaction gives one input at a time.
            let request = pending.get_mut(&index)?.pop()?;
            tickets_given.lock().ok()?.push(request.clone());
            Some(Input::Submit(request))
        })
    };
    let done = {
        let tickets_given = Arc::clone(&tickets_given);
        let wanted = case.events * case.tickets;
        move |outputs: &[Option<Vec<Produced<Output>>>]| {
            let Ok(tickets) = tickets_given.lock() else { return false };
            if tickets.len() < wanted {
                return false;
            }
            let mut all = given.clone();
            all.extend(tickets.iter().map(|r| (r.client, r.id, r.payload.clone())));
            everything_ordered_and_certified(outputs, &all)
        }
    };
    let heal_at = rng.gen_range(0..HEAL_AT_MAX);
    let run = RunConfig { seed: case.seed, deliveries_max: 5_000_000, cpu: None };
    let scheduler: Box<dyn crate::Scheduler<Message>> = Box::new(RandomScheduler::new(quorum, &mut rng));
    let network = Network::new(quorum, &scenario, &behaviours, scheduler, run)
        .with_reaction(reaction)
        .with_liveness(heal_at, LIVENESS_BOUND);
    let (report, _) = network.run_until(|i| scenario.input(i), done);
    let context = |e: String| format!("{e} (n={}, byzantine={}, seed={})", case.n, case.byzantine.name(), case.seed);
    check::faults_only_against(&report, &byzantine).map_err(context)?;
    check::liveness(&report).map_err(context)?;
    if !report.done_early {
        return Err(context(format!(
            "validity: run ended ({} deliveries) before every request was ordered and every epoch certified",
            report.deliveries
        )));
    }
    let summary = check_replicas(&report, &keys, case.events * case.tickets).map_err(context)?;
    Ok(summary)
}

/// Whether some honest replica ordered every request of `all`, and every honest replica
/// certified every epoch with leaves it applied up to there.
fn everything_ordered_and_certified(
    outputs: &[Option<Vec<Produced<Output>>>],
    all: &BTreeSet<(u64, u64, Vec<u8>)>,
) -> bool {
    let mut by = None;
    for log in outputs.iter().flatten() {
        let mut missing = all.clone();
        for produced in log {
            if let Output::Abc(AbcOutput::Batch(batch)) = &produced.output {
                for r in &batch.requests {
                    missing.remove(&(r.client, r.id, r.payload.clone()));
                }
                if missing.is_empty() {
                    by = Some(batch.epoch);
                    break;
                }
            }
        }
        if by.is_some() {
            break;
        }
    }
    let Some(by) = by else { return false };
    outputs.iter().flatten().all(|log| {
        let signed: BTreeSet<u64> = log
            .iter()
            .filter_map(|p| match &p.output {
                Output::Applied(a) if a.root.is_some() && a.epoch <= by => Some(a.epoch),
                _ => None,
            })
            .collect();
        let applied_to = log
            .iter()
            .filter_map(|p| match &p.output {
                Output::Applied(a) => Some(a.epoch),
                _ => None,
            })
            .max();
        let certified: BTreeSet<u64> = log
            .iter()
            .filter_map(|p| match &p.output {
                Output::Certified(c) => Some(c.root.epoch),
                _ => None,
            })
            .collect();
        applied_to.is_some_and(|e| e >= by) && signed.is_subset(&certified)
    })
}

/// The checks on what the honest replicas applied and certified.
fn check_replicas(
    report: &crate::Report<Output>,
    keys: &ClusterKeys,
    tickets_wanted: usize,
) -> Result<ReplicaSummary, String> {
    let public = keys.signing[0].public().public_key();
    // Epoch → (state, root) as the first honest replica applied it, to compare the others'.
    let mut agreed: BTreeMap<u64, (NodeIndex, Digest, Option<Digest>)> = BTreeMap::new();
    let mut summary = ReplicaSummary { certified: 0, answers_verified: 0, tickets: 0, trace: report.trace_hex() };
    for index in report.honest() {
        let Some(log) = report.outputs[index.as_usize()].as_ref() else { continue };
        let certificates: BTreeMap<u64, Certificate> = log
            .iter()
            .filter_map(|p| match &p.output {
                Output::Certified(c) => Some((c.root.epoch, *c)),
                _ => None,
            })
            .collect();
        let mut tickets = 0;
        for produced in log {
            match &produced.output {
                Output::HostError(error) => return Err(format!("replica {index}: the host failed: {error}")),
                Output::Applied(applied) => {
                    tickets += applied.tickets;
                    match agreed.get(&applied.epoch) {
                        None => {
                            agreed.insert(applied.epoch, (index, applied.state, applied.root));
                        }
                        Some((first, state, root)) => {
                            if (state, root) != (&applied.state, &applied.root) {
                                return Err(format!(
                                    "replicas {first} and {index} hold different service states or roots after epoch {}",
                                    applied.epoch
                                ));
                            }
                        }
                    }
                    let Some(root) = applied.root else { continue };
                    // Epochs past the end of the run may not be certified yet; the done
                    // condition saw every one up to the last request certified.
                    let Some(certificate) = certificates.get(&applied.epoch) else { continue };
                    if certificate.root.root != root {
                        return Err(format!("replica {index}: epoch {} certified on another root", applied.epoch));
                    }
                    for answer in &applied.answers {
                        certificate::verify(&CLUSTER, &public, &answer.leaf, &answer.inclusion, certificate).map_err(
                            |e| {
                                format!(
                                    "replica {index}: an answer of epoch {} does not verify alone: {e}",
                                    applied.epoch
                                )
                            },
                        )?;
                        summary.answers_verified += 1;
                    }
                }
                Output::Certified(certificate) => {
                    if !certificate.verifies(&CLUSTER, &public) {
                        return Err(format!(
                            "replica {index}: the certificate of epoch {} does not verify",
                            certificate.root.epoch
                        ));
                    }
                }
                Output::Abc(_) => {}
            }
        }
        summary.certified = summary.certified.max(certificates.len());
        summary.tickets = summary.tickets.max(tickets);
    }
    if summary.tickets < tickets_wanted {
        return Err(format!("only {} of {tickets_wanted} tickets were issued", summary.tickets));
    }
    Ok(summary)
}
