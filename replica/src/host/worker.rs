//! The services' worker: a thread that applies delivered batches to the services (the bistro,
//! for now), certifies each epoch with the other replicas, and answers what the gRPC layer asks.
//!
//! Order of things for an epoch (STYLE.md: persist before send):
//! 1. the batch is durable in the replica's log store (the driver wrote it), and the driver hands
//!    it to the worker in memory (the worker reads the store back only to catch up: after a
//!    restart, or when its queue was full and the driver dropped a batch);
//! 2. the worker applies it to the services and writes the new state, the outcomes and the
//!    epoch's leaves — one ordering leaf per request, then every record the services sign
//!    (docs/certificate.md) — in one redb transaction (several epochs may share one);
//! 3. only then it gives the epoch's root to its [`EpochSigner`], which sends our signature share
//!    to the peers;
//! 4. once the signer certifies the epoch (`t + 1` shares combined and verified), the signature
//!    is stored and the clients waiting are answered: each answer carries its leaf's inclusion
//!    path and the epoch's certificate, so that it verifies alone.
//!
//! Signature shares are deterministic (BLS), so sending one again after a restart contradicts
//! nothing. A share for an epoch certified here is answered with the certificate, which lets a
//! replica that was down finish quickly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blsttc::SIG_SIZE;
use fides_bistro::proof::EpochProof;
use fides_bistro::records::{domain, EventId};
use fides_bistro::service::{view, Code, Outcome, Service};
use fides_crypto::ThresholdKeys;
use fides_service::certificate::{self, Certificate, EpochSigner, SignerConfig, Tree};
use fides_service::{Registry, StoreError, Tables};
use fides_types::codec::Wire;
use fides_types::{NodeIndex, Protocol, Quorum, Step, Target};
use redb::{Database, ReadableDatabase, ReadableTable, TableHandle};
use tokio::sync::oneshot;

mod agreements;

use crate::bistro::kv;
use crate::host::decisions::{self, Agreements};
pub use crate::host::epochs::EpochRow;

mod snapshots;
use crate::host::epochs::{outcome_key, StoredAnswer};
use crate::host::tables::{self, ReadTables, WriteTables};
use crate::host::threshold::{self, RsaKeys, ThresholdSigning};
use crate::host::{Intake, Lag};
use crate::node::{Command, NodeHandle, ServiceEvent, FRAME_SERVICE};
use crate::store::BatchReader;
use fides_agreement::Vote;
use fides_atomic_broadcast::epoch::Batch;
use fides_atomic_broadcast::instances::{Decided, InstanceId as CoreInstance};
use fides_host::apply::apply_epoch;

/// The kind of a service frame that carries an [`EpochSigner`] message. (Kinds 1 and 2 were the
/// bistro's own share exchange before the epoch certificate; they are ignored.)
const SIGNER: u8 = 3;
/// Epochs applied per transaction at most.
const EPOCHS_PER_TXN: usize = 64;
/// An epoch whose certificate is not in after this long: give its root to the signer again, which
/// sends our share again (a frame may have been dropped on a full queue, or a peer restarted).
const RESEND_AFTER: Duration = Duration::from_secs(2);
/// The store's format: 2 since the epoch certificate (leaves of every epoch are ordering and
/// service leaves), 3 since the state digest (kept in the meta table; every epoch's last leaf is
/// the state leaf). A store of format 1 (the bistro's own tree) is set aside and rebuilt from the
/// log; one of format 2 gets its digest computed once (see [`ensure_digest`]).
const STORE_FORMAT: u32 = 3;
/// The format before the state digest.
const STORE_FORMAT_NO_DIGEST: u32 = 2;
/// Trees kept in memory for answering paths.
const TREES_MAX: usize = 64;
/// The worker's queue (frames, batches, waiters, queries).
const QUEUE_MAX: usize = 65_536;

pub use crate::host::epochs::{Certified, HostAnswer};

/// The bistro's answer for an ordered request.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The outcome.
    pub outcome: Outcome,
    /// The proof, for a signed record.
    pub proof: Option<EpochProof>,
}

impl Answer {
    /// The bistro's answer in a host's answer (its first outcome: the bistro makes one per
    /// request); `None` if the request went to another service.
    pub fn of(host: &HostAnswer) -> Result<Answer, String> {
        if host.service != <Service as fides_service::Service>::ID {
            return Err(format!("the request ordered there is for service {}, not the bistro", host.service));
        }
        let Some((outcome, certified)) = host.outcomes.first() else {
            return Err("the bistro made nothing of the request ordered there".into());
        };
        let leaf = certified.as_ref().map_or(0, |(inclusion, _)| inclusion.index);
        let outcome = fides_bistro::service::answer(outcome, leaf).map_err(|e| e.to_string())?;
        let proof =
            certified.as_ref().map(|(inclusion, certificate)| EpochProof::certified(inclusion.clone(), certificate));
        Ok(Answer { outcome, proof })
    }
}

/// An upload this replica has yet to fetch.
#[derive(Clone, Debug)]
pub struct PendingUpload {
    /// The event.
    pub event: EventId,
    /// The ticket.
    pub ticket: u64,
    /// The upload's hash.
    pub hash: [u8; 32],
    /// Its size.
    pub size: u64,
    /// Its capsule.
    pub capsule: Vec<u8>,
    /// Intermediaries holding it: their keys and, for relays, their addresses.
    pub intermediaries: Vec<([u8; 32], Option<String>)>,
    /// Replicas that stored it.
    pub stored_by: Vec<u32>,
}

/// An answer with where its request was ordered: (answer, epoch, index).
pub type Located = (Answer, u64, u32);

/// A relay's key and state.
pub type Relay = ([u8; 32], fides_bistro::service::RelayState);

/// Read-only questions.
pub enum Query {
    /// An event's signed record.
    Event {
        /// The event.
        event: EventId,
        /// The answer.
        reply: oneshot::Sender<Result<Option<Located>, String>>,
    },
    /// Events after one, at most `max`.
    Events {
        /// Start after.
        after: Option<EventId>,
        /// At most.
        max: usize,
        /// The answer.
        reply: oneshot::Sender<Result<Vec<view_types::EventSummary>, String>>,
    },
    /// Registered relays.
    Relays {
        /// The answer.
        reply: oneshot::Sender<Result<Vec<Relay>, String>>,
    },
    /// This replica's shares of a collection.
    CollectShares {
        /// The event.
        event: EventId,
        /// The collection.
        number: u64,
        /// The answer.
        reply: oneshot::Sender<Result<crate::bistro::CollectShares, (Code, String)>>,
    },
    /// Uploads still to fetch here whose event's deadline passed.
    Pending {
        /// At most.
        max: usize,
        /// The answer.
        reply: oneshot::Sender<Result<Vec<PendingUpload>, String>>,
    },
    /// A threshold RSA signature a service asked for (`Outcome::ThresholdSign`), by the id of its
    /// message: `None` if this replica has not combined it (yet).
    ThresholdSignature {
        /// The message's id (`fides_service::rsa_signer::MessageId::of(message)`).
        id: fides_service::rsa_signer::MessageId,
        /// The answer.
        reply: oneshot::Sender<Result<Option<Vec<u8>>, String>>,
    },
    /// An upload is stored here now.
    Fetched {
        /// Its key.
        event: EventId,
        /// Ticket.
        ticket: u64,
        /// Hash.
        hash: [u8; 32],
        /// Done.
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Small types of answers.
pub mod view_types {
    /// An event in a listing.
    #[derive(Clone, Debug)]
    pub struct EventSummary {
        /// Id.
        pub event: [u8; 16],
        /// Description.
        pub description: String,
        /// Deadline.
        pub deadline_ms: u64,
        /// Created.
        pub created_ms: u64,
        /// Tickets issued.
        pub tickets: u64,
        /// Collections.
        pub collections: u64,
    }
}

/// What the worker takes.
pub enum Input {
    /// From the driver.
    Service(ServiceEvent),
    /// The outcome of the request ordered at (epoch, index), once applied (and signed).
    Outcome {
        /// Epoch.
        epoch: u64,
        /// Index in the batch.
        index: u32,
        /// The answer.
        reply: oneshot::Sender<Result<HostAnswer, String>>,
    },
    /// The certificate of the request ordered at (epoch, index), once its epoch is certified.
    Certified {
        /// Epoch.
        epoch: u64,
        /// Index in the batch (and leaf index).
        index: u32,
        /// The answer.
        reply: oneshot::Sender<Result<Certified, String>>,
    },
    /// A question.
    Query(Query),
    /// The core decided an agreement instance: order our decision notice.
    Decided(Decided),
}

/// A handle to the worker.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: SyncSender<Input>,
    /// Set when the driver dropped a batch (the queue was full): the worker reads the store.
    lag: Lag,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle").finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// Send without blocking; false if the worker is gone or its queue is full.
    pub fn try_send(&self, input: Input) -> bool {
        self.tx.try_send(input).is_ok()
    }

    /// The driver's sink for decisions of agreement instances. A decision dropped on a full
    /// queue costs only our notice: the other honest replicas' suffice.
    pub fn decided_sink(&self) -> crate::node::DecidedSink {
        let tx = self.tx.clone();
        Box::new(move |decided| {
            if tx.try_send(Input::Decided(decided)).is_err() {
                tracing::warn!("the services' worker queue is full: a decision notice is not sent");
            }
        })
    }

    /// The driver's sink for service events.
    pub fn service_sink(&self) -> crate::node::ServiceSink {
        let tx = self.tx.clone();
        let lag = self.lag.clone();
        Box::new(move |event| {
            // Never block the driver. A full queue drops a frame (the sender sends its share
            // again) or a batch (the worker then reads it back from the store).
            let is_batch = matches!(event, ServiceEvent::Batch(_));
            if tx.try_send(Input::Service(event)).is_err() && is_batch {
                lag.mark();
            }
        })
    }
}

/// What the worker needs.
pub struct WorkerSetup {
    /// The services, in the order they were registered (the bistro among them); shared with the
    /// core's agreement instances, which ask them whether a vote is valid.
    pub services: Arc<Registry>,
    /// The cluster id (what epoch certificates sign).
    pub cluster: [u8; 32],
    /// The cluster's signing keys (our share).
    pub signing: Arc<ThresholdKeys>,
    /// `n` and `t`.
    pub quorum: Quorum,
    /// The cluster's encryption keys (our share).
    pub encryption: Arc<ThresholdKeys>,
    /// Our index.
    pub our_index: NodeIndex,
    /// The driver's stored batches.
    pub batches: BatchReader,
    /// The driver, for sending frames.
    pub node: NodeHandle,
    /// Fault injection for tests: send wrong signature shares of epoch roots (valid points that
    /// do not combine) and answer collections with wrong decryption shares.
    pub wrong_shares: bool,
    /// Our threshold RSA key, if the cluster has one (`Outcome::ThresholdSign` is refused without).
    pub rsa: Option<RsaKeys>,
    /// What signs and checks decision notices.
    pub notices: NoticeKeys,
}

/// Our identity, which signs our decision notices, and every replica's, which check theirs.
pub struct NoticeKeys {
    /// Our Ed25519 identity (the replica file's).
    pub identity: ed25519_dalek::SigningKey,
    /// Each replica's identity by index (the cluster file's).
    pub identities: Vec<[u8; 32]>,
}

/// Where the answer of an ordered request goes.
type AnswerSender = oneshot::Sender<Result<HostAnswer, String>>;

enum Waiter {
    Outcome { index: u32, reply: oneshot::Sender<Result<HostAnswer, String>> },
    Certified { index: u32, reply: oneshot::Sender<Result<Certified, String>> },
}

impl Waiter {
    fn is_closed(&self) -> bool {
        match self {
            Waiter::Outcome { reply, .. } => reply.is_closed(),
            Waiter::Certified { reply, .. } => reply.is_closed(),
        }
    }
}

#[derive(Clone)]
struct Cached {
    tree: Arc<Tree>,
    time_ms: u64,
    signature: Option<[u8; SIG_SIZE]>,
}

impl Cached {
    fn certificate(&self, epoch: u64) -> Option<Certificate> {
        Some(Certificate { root: self.tree.epoch_root(epoch, self.time_ms), signature: self.signature? })
    }
}

struct Worker {
    setup: WorkerSetup,
    /// The services' tables' names in the store (the services are `agreements.registry`).
    store_tables: Vec<String>,
    db: Database,
    next_epoch: u64,
    /// Batches the driver handed over, and its store to catch up from.
    intake: Intake,
    /// Applied epochs with leaves whose certificate is not in yet: their root, and when we last
    /// gave it to the signer.
    unsigned: BTreeMap<u64, (certificate::EpochRoot, Instant)>,
    /// Certifies each epoch with the other replicas.
    signer: EpochSigner,
    /// Signs what services ask with `Outcome::ThresholdSign`.
    threshold: ThresholdSigning,
    waiters: BTreeMap<u64, Vec<Waiter>>,
    /// Recent epochs' trees, agreed times and signatures, for answering paths.
    trees: HashMap<u64, Cached>,
    tree_order: std::collections::VecDeque<u64>,
    /// Snapshots of the services' state served and fetched.
    snapshots: snapshots::Snapshots,
    /// The agreement instances the services asked for, and the decision notices.
    agreements: Agreements,
    /// Votes durable in our store and not yet handed to the core (its queue was full).
    votes_unsent: VecDeque<(CoreInstance, Vote)>,
    /// Waiters whose request's answer awaits an instance's decision (or its certificate).
    deciding: Vec<(u64, u32, AnswerSender)>,
}

/// Open the bistro store in `dir` and start the worker on its own thread.
pub fn start(dir: &Path, mut setup: WorkerSetup) -> anyhow::Result<(WorkerHandle, std::thread::JoinHandle<()>)> {
    let db = open_store(dir)?;
    let registry = std::mem::take(&mut setup.services);
    if registry.get::<Service>().is_none() {
        // Its queries (events, relays, collections, uploads to fetch) are answered here.
        anyhow::bail!("the services' worker answers the bistro's queries: register the bistro");
    }
    let store_tables = covered_tables(&registry);
    {
        let txn = db.begin_write()?;
        for name in &store_tables {
            txn.open_table(tables::table(name))?;
        }
        for t in [tables::OUTCOMES, tables::EPOCHS, kv::RECORD_AT, kv::PENDING, tables::META] {
            txn.open_table(t)?;
        }
        ThresholdSigning::open_tables(&txn)?;
        for name in decisions::TABLES {
            txn.open_table(tables::table(name))?;
        }
        txn.commit()?;
    }
    ensure_digest(&db, &store_tables)?;
    let next_epoch = {
        let read = db.begin_read()?;
        let meta = read.open_table(tables::META)?;
        let value = meta.get(&b"next_epoch"[..])?.map(|v| v.value().to_vec());
        match value {
            Some(bytes) => u64::from_le_bytes(
                bytes.as_slice().try_into().map_err(|_| anyhow::anyhow!("bistro store: next_epoch is not 8 bytes"))?,
            ),
            None => 0,
        }
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_MAX);
    let intake = Intake::new(setup.batches.clone());
    let lag = intake.lag();
    let signer = EpochSigner::new(
        Arc::clone(&setup.signing),
        setup.cluster,
        setup.quorum,
        setup.our_index,
        SignerConfig::default(),
        next_epoch,
    );
    let node = setup.node.clone();
    let outbox = Box::new(move |command| drop(node.try_send(command)));
    let threshold = ThresholdSigning::new(setup.rsa.take(), setup.quorum, setup.our_index, outbox);
    let agreements = Agreements {
        registry: Arc::clone(&registry),
        cluster: setup.cluster,
        quorum: setup.quorum,
        identities: setup.notices.identities.clone(),
    };
    let mut worker = Worker {
        threshold,
        setup,
        store_tables,
        db,
        next_epoch,
        intake,
        unsigned: BTreeMap::new(),
        signer,
        waiters: BTreeMap::new(),
        trees: HashMap::new(),
        tree_order: Default::default(),
        snapshots: Default::default(),
        agreements,
        votes_unsent: VecDeque::new(),
        deciding: Vec::new(),
    };
    worker.load_unsigned()?;
    worker.threshold.load(&worker.db)?;
    worker.load_pending_votes()?;
    let thread = std::thread::Builder::new().name("bistro".into()).spawn(move || worker.run(rx))?;
    Ok((WorkerHandle { tx, lag }, thread))
}

/// Open the services' store in `dir`. A store of an older format is moved aside (its state is
/// rebuilt from the log, which holds every batch) rather than read under the wrong rules.
fn open_store(dir: &Path) -> anyhow::Result<Database> {
    let path = dir.join("bistro.redb");
    let db = Database::builder().set_cache_size(64 * 1024 * 1024).create(&path)?;
    let format = {
        let txn = db.begin_write()?;
        let format = {
            let mut meta = txn.open_table(tables::META)?;
            let format = meta.get(&b"format"[..])?.map(|v| v.value().to_vec());
            let started = meta.get(&b"next_epoch"[..])?.is_some();
            match format {
                Some(bytes) => Some(u32::from_le_bytes(
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| anyhow::anyhow!("services store: format is not 4 bytes"))?,
                )),
                None if started => Some(1),
                None => {
                    meta.insert(&b"format"[..], &STORE_FORMAT.to_le_bytes()[..])?;
                    None
                }
            }
        };
        txn.commit()?;
        format
    };
    match format {
        None | Some(STORE_FORMAT) | Some(STORE_FORMAT_NO_DIGEST) => Ok(db),
        Some(1) => {
            drop(db);
            let aside = dir.join("bistro.format1.redb");
            std::fs::rename(&path, &aside)?;
            tracing::warn!(
                old = %aside.display(),
                "the services' store is of format 1 (before the epoch certificate): it is set aside and \
                 the services' state is rebuilt from the log; tickets issued before keep verifying"
            );
            open_store(dir)
        }
        Some(other) => anyhow::bail!(
            "the services' store {} is of format {other}, which this version does not know (it reads {STORE_FORMAT})",
            path.display()
        ),
    }
}

/// A store of format 2 (before the state digest) gets its digest computed once from its covered
/// tables, and is marked format 3. Its epochs applied before keep their trees without a state leaf.
fn ensure_digest(db: &Database, covered: &[String]) -> anyhow::Result<()> {
    let format = {
        let read = db.begin_read()?;
        let meta = read.open_table(tables::META)?;
        let value = meta.get(&b"format"[..])?.map(|v| v.value().to_vec());
        value.and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok()).map(u32::from_le_bytes)
    };
    if format != Some(STORE_FORMAT_NO_DIGEST) {
        return Ok(());
    }
    let digest = tables::recompute_digest(db, covered)?;
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(tables::META)?;
        meta.insert(tables::META_STATE_DIGEST, digest.to_bytes().as_slice())?;
        meta.insert(&b"format"[..], &STORE_FORMAT.to_le_bytes()[..])?;
    }
    txn.commit()?;
    tracing::info!("the services' store is of format 2: its state digest was computed, it is of format 3 now");
    Ok(())
}

/// The tables the state digest covers, by their names in the store: every service's, the
/// answers of the routed requests, the bistro's record index and the agreement instances asked for
/// and decided (docs/service.md).
fn covered_tables(registry: &Registry) -> Vec<String> {
    let mut names = registry.store_tables();
    names.extend([tables::OUTCOMES.name().to_owned(), kv::RECORD_AT.name().to_owned()]);
    names.extend(decisions::TABLES.iter().map(|t| t.to_string()));
    names.sort();
    names
}

impl Worker {
    /// Epochs applied before a restart whose certificate was not in: sign them again.
    fn load_unsigned(&mut self) -> anyhow::Result<()> {
        let read = self.db.begin_read()?;
        let epochs = read.open_table(tables::EPOCHS)?;
        let from = self.next_epoch.saturating_sub(SignerConfig::default().epochs_ahead_max);
        let mut roots = Vec::new();
        for entry in epochs.range(&from.to_be_bytes()[..]..)? {
            let (key, value) = entry?;
            let epoch = u64::from_be_bytes(key.value().try_into().unwrap_or([0; 8]));
            let row = EpochRow::from_bytes(value.value())?;
            if row.signature.is_none() && !row.leaves.is_empty() {
                let tree = Arc::new(Tree::new(row.leaves));
                roots.push(tree.epoch_root(epoch, row.time_ms));
                self.remember_tree(epoch, Cached { tree, time_ms: row.time_ms, signature: None });
            }
        }
        drop(read);
        for root in roots {
            self.sign(root);
        }
        Ok(())
    }

    /// Give an epoch's root to the signer (again, after [`RESEND_AFTER`]: it then sends our share
    /// again).
    fn sign(&mut self, root: certificate::EpochRoot) {
        self.unsigned.insert(root.epoch, (root, Instant::now()));
        match self.signer.handle_input(certificate::Input::Sign(root), &mut rand::thread_rng()) {
            Ok(step) => self.on_signer_step(step),
            Err(error) => tracing::error!(%error, "the epoch signer refused a root"),
        }
    }

    /// Send what the signer sends, store what it certifies, answer what peers ask.
    fn on_signer_step(&mut self, step: Step<certificate::Message, certificate::Output>) {
        for fault in step.faults {
            let (peer, kind) = (fault.node.0, fault.kind);
            tracing::warn!("replica {peer} sent a bad epoch signature share or certificate ({kind:?})");
            let _ = self.setup.node.try_send(Command::Fault { peer: fault.node, kind });
        }
        for outgoing in step.messages {
            let to = match outgoing.target {
                Target::All => None,
                Target::Node(peer) => Some(peer),
            };
            let message = match outgoing.message {
                certificate::Message::Share { root, .. } | certificate::Message::ShareReply { root, .. }
                    if self.setup.wrong_shares =>
                {
                    // Fault injection: a valid point that is not our share of this root.
                    let wrong = fides_crypto::hash_to_g2(b"fides/v1/fault", &[b"wrong root"]);
                    certificate::Message::Share { root, share: self.setup.signing.sign_share(wrong).to_bytes() }
                }
                message => message,
            };
            self.send_frame(to, &message.to_bytes());
        }
        for output in step.outputs {
            match output {
                certificate::Output::Certified(certificate) => {
                    self.store_signature(certificate.root.epoch, certificate.signature)
                }
                certificate::Output::CertificateAsked { peer, epoch } => {
                    let Ok(Some(certificate)) = self.certificate_of(epoch) else { continue };
                    let answer = certificate::Input::Answer { peer, certificate };
                    if let Ok(step) = self.signer.handle_input(answer, &mut rand::thread_rng()) {
                        for outgoing in step.messages {
                            if let Target::Node(peer) = outgoing.target {
                                self.send_frame(Some(peer), &outgoing.message.to_bytes());
                            }
                        }
                    }
                }
            }
        }
    }

    /// The certificate of an epoch, from the store.
    fn certificate_of(&mut self, epoch: u64) -> anyhow::Result<Option<Certificate>> {
        let read = self.db.begin_read()?;
        Ok(self.cached(&read, epoch)?.and_then(|cached| cached.certificate(epoch)))
    }

    fn run(mut self, rx: Receiver<Input>) {
        loop {
            let input = match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut inputs: Vec<Input> = input.into_iter().collect();
            while inputs.len() < 4096 {
                match rx.try_recv() {
                    Ok(input) => inputs.push(input),
                    Err(_) => break,
                }
            }
            let mut queries = Vec::new();
            for input in inputs {
                match input {
                    Input::Service(ServiceEvent::Batch(batch)) => self.on_batch(batch),
                    Input::Service(ServiceEvent::Frame { from, bytes }) => self.on_frame(from, &bytes),
                    Input::Outcome { epoch, index, reply } => {
                        self.waiters.entry(epoch).or_default().push(Waiter::Outcome { index, reply })
                    }
                    Input::Certified { epoch, index, reply } => {
                        self.waiters.entry(epoch).or_default().push(Waiter::Certified { index, reply })
                    }
                    Input::Query(query) => queries.push(query),
                    Input::Decided(decided) => self.send_notice(&decided),
                }
            }
            if let Err(error) = self.advance() {
                tracing::error!(%error, "the bistro service cannot go on: its store failed");
                return;
            }
            self.poll_snapshots();
            self.resend_shares();
            self.threshold.resend(&self.db);
            self.send_votes();
            self.answer_waiters();
            self.answer_deciding();
            for query in queries {
                self.on_query(query);
            }
        }
    }

    fn on_batch(&mut self, batch: Arc<Batch>) {
        self.intake.on_batch(self.next_epoch, batch);
    }

    /// Apply every delivered batch from `next_epoch` on: each epoch with
    /// [`fides_host::apply::apply_epoch`] over the covered tables of one transaction, then its row
    /// and the threshold signatures it asked for; once durable, the votes go to the core and the
    /// roots to the signer.
    fn advance(&mut self) -> Result<(), anyhow::Error> {
        if self.snapshots.fetching() {
            return Ok(()); // The state comes whole from a peer.
        }
        loop {
            let batches = self.intake.next_batches(self.next_epoch, EPOCHS_PER_TXN)?;
            if batches.is_empty() {
                return Ok(());
            }
            let txn = self.db.begin_write()?;
            let mut applied: Vec<(u64, u64, Vec<[u8; 32]>)> = Vec::new();
            let mut asked = Vec::new();
            let mut votes = Vec::new();
            {
                let mut kv = WriteTables::new(&txn, &self.store_tables)?;
                // The bistro's replica-side indexes of the answers (covered: before the state leaf).
                let mut index = |covered: &mut dyn Tables, batch: &Batch, answers: &[(u32, StoredAnswer)]| {
                    kv::index(covered, &txn, batch, answers).map_err(|e| StoreError::Store(e.to_string()))
                };
                for batch in &batches {
                    let epoch = apply_epoch(&self.agreements, &mut kv, batch, &mut index)?;
                    Self::write_epoch(&txn, batch, &epoch.leaves)?;
                    self.threshold.write_pending(&txn, batch.epoch, &epoch.asks)?;
                    asked.push((batch.epoch, epoch.asks));
                    votes.extend(epoch.agreed.votes);
                    applied.push((batch.epoch, batch.time, epoch.leaves));
                }
                kv.store_digest(&txn)?;
                let next = batches.last().map_or(self.next_epoch, |b| b.epoch + 1);
                let mut meta = txn.open_table(tables::META)?;
                meta.insert(&b"next_epoch"[..], &next.to_le_bytes()[..])?;
                self.next_epoch = next;
            }
            txn.commit()?;
            self.intake.applied(self.next_epoch);
            // Durable: now the votes may go to the core.
            self.votes_unsent.extend(votes);
            self.send_votes();
            // Durable: now sign.
            for (epoch, asks) in asked {
                self.threshold.sign(&self.db, epoch, asks);
            }
            for (epoch, time_ms, leaves) in applied {
                if leaves.is_empty() {
                    continue;
                }
                let tree = Arc::new(Tree::new(leaves));
                let root = tree.epoch_root(epoch, time_ms);
                self.remember_tree(epoch, Cached { tree, time_ms, signature: None });
                self.sign(root);
            }
        }
    }

    /// The epoch's row: its agreed time and leaves (never empty: the state leaf is the last).
    fn write_epoch(txn: &redb::WriteTransaction, batch: &Batch, leaves: &[[u8; 32]]) -> Result<(), anyhow::Error> {
        let row = EpochRow { time_ms: batch.time, leaves: leaves.to_vec(), signature: None };
        let mut epochs = txn.open_table(tables::EPOCHS)?;
        epochs.insert(&batch.epoch.to_be_bytes()[..], row.to_bytes().as_slice())?;
        Ok(())
    }

    fn remember_tree(&mut self, epoch: u64, cached: Cached) {
        if self.trees.insert(epoch, cached).is_none() {
            self.tree_order.push_back(epoch);
        }
        while self.tree_order.len() > TREES_MAX {
            if let Some(old) = self.tree_order.pop_front() {
                self.trees.remove(&old);
            }
        }
    }

    fn send_frame(&self, to: Option<NodeIndex>, body: &[u8]) {
        let mut frame = Vec::with_capacity(2 + body.len());
        frame.push(FRAME_SERVICE);
        frame.push(SIGNER);
        frame.extend_from_slice(body);
        let _ = self.setup.node.try_send(Command::Send { to, frame });
    }

    fn on_frame(&mut self, from: NodeIndex, bytes: &[u8]) {
        match bytes.split_first() {
            Some((&threshold::FRAME_KIND, body)) => return self.threshold.on_frame(&self.db, from, body),
            Some((&snapshots::SNAPSHOT_ASK, body)) => return self.on_snapshot_ask(from, body),
            Some((&snapshots::SNAPSHOT_PAGE, body)) => return self.on_snapshot_page(from, body),
            _ => {}
        }
        let (Some(&SIGNER), Some(body)) = (bytes.first(), bytes.get(1..)) else { return };
        match certificate::Message::from_bytes(body) {
            Ok(message) => {
                let step = self.signer.handle_message(from, message, &mut rand::thread_rng());
                self.on_signer_step(step);
            }
            Err(error) => tracing::warn!(peer = from.0, %error, "an epoch signer message does not decode"),
        }
    }

    fn store_signature(&mut self, epoch: u64, signature: [u8; SIG_SIZE]) {
        let result = (|| -> anyhow::Result<()> {
            let txn = self.db.begin_write()?;
            {
                let mut epochs = txn.open_table(tables::EPOCHS)?;
                let row = epochs.get(&epoch.to_be_bytes()[..])?.map(|v| EpochRow::from_bytes(v.value()));
                if let Some(Ok(mut row)) = row {
                    row.signature = Some(signature);
                    epochs.insert(&epoch.to_be_bytes()[..], row.to_bytes().as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.unsigned.remove(&epoch);
                if let Some(cached) = self.trees.get_mut(&epoch) {
                    cached.signature = Some(signature);
                }
            }
            Err(error) => tracing::error!(%error, epoch, "cannot store an epoch's signature"),
        }
    }

    /// Give the signer again the roots of epochs whose certificate is not in after
    /// [`RESEND_AFTER`] (it sends our share again).
    fn resend_shares(&mut self) {
        let now = Instant::now();
        let due: Vec<certificate::EpochRoot> = self
            .unsigned
            .values()
            .filter(|(_, given)| now.duration_since(*given) > RESEND_AFTER)
            .map(|(root, _)| *root)
            .take(256)
            .collect();
        for root in due {
            self.sign(root);
        }
    }

    fn answer_waiters(&mut self) {
        // Epochs applied here whose signature is not pending (a signed record waits for it).
        let ready: Vec<u64> =
            self.waiters.range(..self.next_epoch).map(|(e, _)| *e).filter(|e| !self.unsigned.contains_key(e)).collect();
        if ready.is_empty() {
            return;
        }
        let read = match self.db.begin_read() {
            Ok(read) => read,
            Err(error) => {
                tracing::error!(%error, "cannot read the bistro store");
                return;
            }
        };
        let outcomes = match read.open_table(tables::OUTCOMES) {
            Ok(table) => table,
            Err(error) => {
                tracing::error!(%error, "cannot read the bistro store");
                return;
            }
        };
        for epoch in ready {
            for waiter in self.waiters.remove(&epoch).unwrap_or_default() {
                if waiter.is_closed() {
                    continue;
                }
                match waiter {
                    Waiter::Outcome { index, reply } if self.threshold.waits(epoch, index) => {
                        self.waiters.entry(epoch).or_default().push(Waiter::Outcome { index, reply });
                    }
                    Waiter::Outcome { index, reply } => match Self::stored(&outcomes, epoch, index) {
                        Ok(Some(stored)) if !self.settled(&stored) => self.deciding.push((epoch, index, reply)),
                        Ok(stored) => {
                            let _ = reply.send(self.answer(&read, epoch, index, stored));
                        }
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    },
                    Waiter::Certified { index, reply } => {
                        let _ = reply.send(self.certified(&read, epoch, u64::from(index)));
                    }
                }
            }
        }
    }

    /// The answer for the request at (epoch, index), applied (and, for signed records,
    /// certified) already.
    /// The stored answer of the request at (epoch, index), read and decoded once (`None`: the
    /// request was for no service).
    fn stored(
        outcomes: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
        epoch: u64,
        index: u32,
    ) -> Result<Option<StoredAnswer>, String> {
        let stored = outcomes.get(outcome_key(epoch, index).as_slice()).map_err(|e| e.to_string())?;
        let Some(bytes) = stored.map(|v| v.value().to_vec()) else { return Ok(None) };
        StoredAnswer::from_bytes(&bytes).map(Some).map_err(|e| format!("a stored answer does not decode: {e}"))
    }

    /// The answer of the request at (epoch, index) from its stored answer.
    fn answer(
        &mut self,
        read: &redb::ReadTransaction,
        epoch: u64,
        index: u32,
        stored: Option<StoredAnswer>,
    ) -> Result<HostAnswer, String> {
        let Some(stored) = stored else {
            return Err(format!("the request ordered at epoch {epoch}, index {index} is for no service here"));
        };
        let mut outcomes = Vec::with_capacity(stored.outcomes.len() + stored.decided.len());
        let applied = stored.outcomes.into_iter().map(|(outcome, leaf)| (outcome, epoch, leaf));
        for (outcome, at, leaf) in applied.chain(stored.decided) {
            let certified = match outcome {
                fides_service::Outcome::Sign(_) => self.certified(read, at, leaf).map(Some)?,
                // The host's work, not an answer.
                fides_service::Outcome::Agree { .. } => continue,
                _ => None,
            };
            outcomes.push((outcome, certified));
        }
        let mut answer = HostAnswer { service: stored.service, outcomes, signatures: Vec::new() };
        self.threshold.complete(read, &mut answer)?;
        Ok(answer)
    }

    /// The tree, agreed time and (once certified) signature of an epoch with leaves.
    fn cached(&mut self, read: &redb::ReadTransaction, epoch: u64) -> anyhow::Result<Option<Cached>> {
        if let Some(cached) = self.trees.get(&epoch) {
            if cached.signature.is_some() || self.unsigned.contains_key(&epoch) {
                return Ok(Some(cached.clone()));
            }
        }
        let epochs = read.open_table(tables::EPOCHS)?;
        let value = epochs.get(&epoch.to_be_bytes()[..])?.map(|v| v.value().to_vec());
        let Some(row) = value.map(|v| EpochRow::from_bytes(&v)).transpose()? else { return Ok(None) };
        let cached = Cached { tree: Arc::new(Tree::new(row.leaves)), time_ms: row.time_ms, signature: row.signature };
        self.remember_tree(epoch, cached.clone());
        Ok(Some(cached))
    }

    /// Leaf `leaf` of epoch `epoch`, certified: its path and the epoch's certificate. (Leaf `i`
    /// of an epoch is the ordering leaf of its request `i`.)
    fn certified(&mut self, read: &redb::ReadTransaction, epoch: u64, leaf: u64) -> Result<Certified, String> {
        let cached = self.cached(read, epoch).map_err(|e| e.to_string())?;
        let Some(cached) = cached else { return Err(format!("epoch {epoch} has no leaves here")) };
        let certificate = cached.certificate(epoch).ok_or_else(|| format!("epoch {epoch} is not certified yet"))?;
        let inclusion = cached.tree.inclusion(leaf).ok_or_else(|| format!("epoch {epoch} has no leaf {leaf}"))?;
        Ok((inclusion, certificate))
    }

    /// The bistro's tables, read-only.
    fn read_kv(&self) -> Result<ReadTables, StoreError> {
        self.db.begin_read().map(ReadTables::of::<Service>).map_err(|e| StoreError::Store(e.to_string()))
    }

    fn on_query(&mut self, query: Query) {
        match query {
            Query::Event { event, reply } => {
                let result = (|| -> anyhow::Result<Option<Located>> {
                    let read = self.db.begin_read()?;
                    let table = read.open_table(kv::RECORD_AT)?;
                    let at = table.get(&event.0[..])?.map(|v| v.value().to_vec());
                    let Some(at) = at else { return Ok(None) };
                    let epoch = u64::from_be_bytes(at.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
                    let index = u32::from_be_bytes(at.get(8..12).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
                    let outcomes = read.open_table(tables::OUTCOMES)?;
                    let stored = Self::stored(&outcomes, epoch, index).map_err(anyhow::Error::msg)?;
                    let answer = self.answer(&read, epoch, index, stored).map_err(anyhow::Error::msg)?;
                    Ok(Some((Answer::of(&answer).map_err(anyhow::Error::msg)?, epoch, index)))
                })();
                let _ = reply.send(result.map_err(|e| e.to_string()));
            }
            Query::Events { after, max, reply } => {
                let result = self.read_kv().and_then(|kv| view::events(&kv, after.as_ref(), max)).map(|events| {
                    events
                        .into_iter()
                        .map(|e| view_types::EventSummary {
                            event: e.record.event.0,
                            description: e.record.terms.description.clone(),
                            deadline_ms: e.record.terms.deadline_ms,
                            created_ms: e.record.created_ms,
                            tickets: e.tickets,
                            collections: e.collections,
                        })
                        .collect()
                });
                let _ = reply.send(result.map_err(|e| e.to_string()));
            }
            Query::Relays { reply } => {
                let result = self.read_kv().and_then(|kv| view::relays(&kv));
                let _ = reply.send(result.map_err(|e| e.to_string()));
            }
            Query::CollectShares { event, number, reply } => {
                let _ = reply.send(self.collect_shares(event, number));
            }
            Query::Pending { max, reply } => {
                let _ = reply.send(self.pending(max).map_err(|e| e.to_string()));
            }
            Query::ThresholdSignature { id, reply } => {
                let result = self.db.begin_read().map_err(anyhow::Error::from).and_then(|r| threshold::lookup(&r, &id));
                let _ = reply.send(result.map_err(|e| e.to_string()));
            }
            Query::Fetched { event, ticket, hash, reply } => {
                let result = (|| -> anyhow::Result<()> {
                    let txn = self.db.begin_write()?;
                    {
                        let mut pending = txn.open_table(kv::PENDING)?;
                        let key = [&event.0[..], &ticket.to_be_bytes(), &hash].concat();
                        pending.remove(key.as_slice())?;
                    }
                    txn.commit()?;
                    Ok(())
                })();
                let _ = reply.send(result.map_err(|e| e.to_string()));
            }
        }
    }

    fn collect_shares(&self, event: EventId, number: u64) -> Result<crate::bistro::CollectShares, (Code, String)> {
        let internal = |e: StoreError| (Code::FailedPrecondition, format!("store: {e}"));
        let kv = self.read_kv().map_err(internal)?;
        let Some(collection) = view::collection(&kv, &event, number).map_err(internal)? else {
            return Err((
                Code::NotFound,
                format!("no collection {number} of event {event} here (yet): it may not be applied here"),
            ));
        };
        let cluster = self.setup.cluster;
        let mut uploads = Vec::with_capacity(collection.uploads.len());
        let mut shares = Vec::with_capacity(collection.uploads.len() * 48);
        for (ticket, hash) in &collection.uploads {
            let Some(upload) = view::upload(&kv, &event, *ticket, hash).map_err(internal)? else { continue };
            let record = view::ticket(&kv, &event, *ticket).map_err(internal)?;
            let capsule = fides_crypto::labeled::LabeledCapsule::from_bytes(&upload.capsule)
                .map_err(|e| (Code::FailedPrecondition, format!("a recorded capsule does not parse: {e}")))?;
            let share = if self.setup.wrong_shares {
                // Fault injection: a valid point that is not our share of this capsule.
                let other = fides_crypto::labeled::LabeledCapsule::encrypt(
                    &self.setup.encryption.public().public_key(),
                    b"wrong",
                    &[0; 40],
                    &mut rand::thread_rng(),
                )
                .map_err(|e| (Code::FailedPrecondition, e.to_string()))?;
                self.setup.encryption.labeled_share(&other).to_bytes()
            } else {
                self.setup.encryption.labeled_share(&capsule).to_bytes()
            };
            shares.extend_from_slice(&share);
            uploads.push(crate::bistro::UploadInfo {
                ticket: *ticket,
                hash: *hash,
                size: upload.size,
                capsule: upload.capsule.clone(),
                stored_by: upload.stored_by.clone(),
                ticket_record: record.map(|t| t.to_bytes()).unwrap_or_default(),
            });
        }
        let replica = self.setup.our_index.0;
        let associated = fides_crypto::tagged(
            domain::SHARES_AD,
            &[&cluster, &event.0, &number.to_le_bytes(), &replica.to_le_bytes()],
        );
        let sealed = fides_crypto::sealed::seal_to(&collection.recipient, &associated, &shares, &mut rand::rngs::OsRng)
            .map_err(|e| (Code::InvalidArgument, format!("cannot seal to the recipient key: {e}")))?;
        Ok(crate::bistro::CollectShares { replica, uploads, sealed })
    }

    fn pending(&self, max: usize) -> anyhow::Result<Vec<PendingUpload>> {
        let kv = self.read_kv()?;
        let read = self.db.begin_read()?;
        let table = read.open_table(kv::PENDING)?;
        let mut out = Vec::new();
        let mut deadlines: HashMap<EventId, u64> = HashMap::new();
        let now = self.last_time()?;
        for entry in table.iter()? {
            if out.len() >= max {
                break;
            }
            let (key, _) = entry?;
            let key = key.value();
            let (Some(event), Some(ticket), Some(hash)) = (
                key.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()),
                key.get(16..24).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                key.get(24..56).and_then(|b| <[u8; 32]>::try_from(b).ok()),
            ) else {
                continue;
            };
            let event = EventId(event);
            let ticket = u64::from_be_bytes(ticket);
            let deadline = match deadlines.get(&event) {
                Some(d) => *d,
                None => {
                    let d = view::event(&kv, &event)?.map_or(u64::MAX, |e| e.record.terms.deadline_ms);
                    deadlines.insert(event, d);
                    d
                }
            };
            if now <= deadline {
                continue;
            }
            let Some(upload) = view::upload(&kv, &event, ticket, &hash)? else { continue };
            let mut intermediaries = Vec::new();
            for (key, _) in &upload.intermediaries {
                let address = view::relay(&kv, key)?.map(|r| r.address);
                intermediaries.push((*key, address));
            }
            out.push(PendingUpload {
                event,
                ticket,
                hash,
                size: upload.size,
                capsule: upload.capsule,
                intermediaries,
                stored_by: upload.stored_by,
            });
        }
        Ok(out)
    }

    /// The agreed time of the last applied epoch.
    fn last_time(&self) -> anyhow::Result<u64> {
        if self.next_epoch == 0 {
            return Ok(0);
        }
        Ok(self.intake.time_of(self.next_epoch - 1)?.unwrap_or(0))
    }
}
