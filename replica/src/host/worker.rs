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
use fides_bistro::service::Service;
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
/// the state leaf), 4 since the state's size is in the digest and the state leaf. A store of
/// format 1 (the bistro's own tree) is set aside and rebuilt from the log; one of format 2 or 3
/// gets its digest computed once (see [`ensure_digest`]).
const STORE_FORMAT: u32 = 4;
/// The format before the state digest.
const STORE_FORMAT_NO_DIGEST: u32 = 2;
/// The format whose stored digest has no size.
const STORE_FORMAT_NO_SIZE: u32 = 3;
/// Trees kept in memory for answering paths.
const TREES_MAX: usize = 64;
/// The worker's queue (frames, batches, waiters, queries).
const QUEUE_MAX: usize = 65_536;

pub use crate::host::epochs::{Certified, HostAnswer};
use crate::host::orderer::{Reply, Waiting};

/// What the services' adapters ask the worker, answered on its thread against the store.
pub enum Query {
    /// A threshold RSA signature a service asked for (`Outcome::ThresholdSign`), by the id of its
    /// message: `None` if this replica has not combined it (yet).
    ThresholdSignature {
        /// The message's id (`fides_service::rsa_signer::MessageId::of(message)`).
        id: fides_service::rsa_signer::MessageId,
        /// The answer.
        reply: oneshot::Sender<Result<Option<Vec<u8>>, String>>,
    },
    /// A service adapter's question (or a write of the replica's own, uncovered tables), run on
    /// the worker's thread with a [`View`] of the store and the answers.
    Run(Box<dyn FnOnce(&mut View<'_>) + Send>),
}

/// What a service's adapter sees of the worker, on its thread: the store (the services' tables
/// and the replica's own), the answers of ordered requests, the agreed time, the setup (keys).
pub struct View<'w> {
    worker: &'w mut Worker,
}

impl View<'_> {
    /// The services' store.
    pub fn db(&self) -> &Database {
        &self.worker.db
    }

    /// The worker's setup (the cluster id, our index and key shares).
    pub fn setup(&self) -> &WorkerSetup {
        &self.worker.setup
    }

    /// Service `S`'s tables, read-only.
    pub fn read_tables<S: fides_service::Service>(&self) -> Result<ReadTables, StoreError> {
        self.worker.db.begin_read().map(ReadTables::of::<S>).map_err(|e| StoreError::Store(e.to_string()))
    }

    /// The host's answer for the request ordered at (epoch, index), as a waiting handler gets it.
    pub fn answer_at(&mut self, epoch: u64, index: u32) -> Result<HostAnswer, String> {
        let read = self.worker.db.begin_read().map_err(|e| e.to_string())?;
        let outcomes = read.open_table(tables::OUTCOMES).map_err(|e| e.to_string())?;
        let stored = Worker::stored(&outcomes, epoch, index)?;
        self.worker.answer(&read, epoch, index, stored)
    }

    /// The agreed time of the last applied epoch.
    pub fn last_time(&self) -> anyhow::Result<u64> {
        self.worker.last_time()
    }

    /// A signed record, found by its leaf hash in epoch `epoch`: its inclusion path and the
    /// epoch's certificate (an error if the epoch is not here or not certified yet).
    pub fn certified_leaf(&mut self, epoch: u64, leaf: &[u8; 32]) -> Result<Certified, String> {
        self.worker.certified_leaf(epoch, leaf)
    }
}

/// What the worker takes.
pub enum Input {
    /// From the driver.
    Service(ServiceEvent),
    /// A handler waiting for what its ordered request gets: answered once the request is
    /// applied (and its records and ordering leaf certified).
    Wait(Waiting),
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
        self.offer(input).is_ok()
    }

    /// A handle with no worker behind it, and the receiving end of its queue: tests of the
    /// handlers play the worker.
    #[cfg(test)]
    pub(crate) fn detached(capacity: usize) -> (WorkerHandle, Receiver<Input>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        (WorkerHandle { tx, lag: Lag::default() }, rx)
    }

    /// Send without blocking; on a full queue (or a stopped worker) the input comes back.
    pub fn offer(&self, input: Input) -> Result<(), Input> {
        self.tx.try_send(input).map_err(|error| match error {
            std::sync::mpsc::TrySendError::Full(input) | std::sync::mpsc::TrySendError::Disconnected(input) => input,
        })
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
    waiters: BTreeMap<u64, Vec<Waiting>>,
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
    deciding: Vec<Reply<HostAnswer>>,
}

/// Open the bistro store in `dir` and start the worker on its own thread.
pub fn start(dir: &Path, mut setup: WorkerSetup) -> anyhow::Result<(WorkerHandle, std::thread::JoinHandle<()>)> {
    let db = open_store(dir)?;
    let registry = std::mem::take(&mut setup.services);
    if registry.get::<Service>().is_none() {
        // The worker writes the bistro's replica-side indexes (`bistro::kv`) with every epoch.
        anyhow::bail!("the services' worker keeps the bistro's indexes: register the bistro");
    }
    let store_tables = covered_tables(&registry);
    {
        let txn = db.begin_write()?;
        for name in &store_tables {
            txn.open_table(tables::table(name))?;
        }
        for t in [tables::OUTCOMES, tables::EPOCHS, kv::RECORD_AT, kv::PENDING, tables::META, tables::VOTES] {
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
    let threshold = ThresholdSigning::new(setup.rsa.take(), setup.quorum, setup.our_index, outbox)?;
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
        None | Some(STORE_FORMAT) | Some(STORE_FORMAT_NO_DIGEST) | Some(STORE_FORMAT_NO_SIZE) => Ok(db),
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

/// A store of format 2 (before the state digest) or 3 (a digest without the state's size) gets its
/// digest computed once from its covered tables, and is marked format 4. Its epochs applied before
/// keep their trees (without a state leaf, or with one without the size: a snapshot is served
/// only of an epoch whose last leaf is the state leaf of this format).
fn ensure_digest(db: &Database, covered: &[String]) -> anyhow::Result<()> {
    let format = {
        let read = db.begin_read()?;
        let meta = read.open_table(tables::META)?;
        let value = meta.get(&b"format"[..])?.map(|v| v.value().to_vec());
        value.and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok()).map(u32::from_le_bytes)
    };
    if format != Some(STORE_FORMAT_NO_DIGEST) && format != Some(STORE_FORMAT_NO_SIZE) {
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
    tracing::info!(?format, "the services' store's state digest was computed (with its size): it is of format 4 now");
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
            // While a threshold RSA share is being made off this thread, look for it soon.
            let wait = if self.threshold.making() { threshold::MADE_POLL } else { Duration::from_millis(50) };
            let input = match rx.recv_timeout(wait) {
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
                    Input::Wait(waiting) => self.waiters.entry(waiting.epoch()).or_default().push(waiting),
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
            self.threshold.poll(&self.db);
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
                    Self::write_votes(&txn, &epoch.agreed)?;
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

    /// Keep an epoch's signature in its row. The commit is not made durable on its own (no
    /// fsync): the signature verifies by itself, so the waiters may have it at once, and the next
    /// epoch's transaction (durable) makes it durable too. A signature lost in a crash before that
    /// is combined again after the restart, as for any epoch without one.
    fn store_signature(&mut self, epoch: u64, signature: [u8; SIG_SIZE]) {
        let result = (|| -> anyhow::Result<()> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(redb::Durability::None)?;
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
                    Waiting::Outcome(reply) if self.threshold.waits(epoch, reply.index()) => {
                        self.waiters.entry(epoch).or_default().push(Waiting::Outcome(reply));
                    }
                    Waiting::Outcome(reply) => match Self::stored(&outcomes, epoch, reply.index()) {
                        Ok(Some(stored)) if !self.settled(&stored) => self.deciding.push(reply),
                        Ok(stored) => {
                            let index = reply.index();
                            reply.send(self.answer(&read, epoch, index, stored));
                        }
                        Err(error) => reply.send(Err(error)),
                    },
                    Waiting::Certified(reply) => {
                        let index = reply.index();
                        reply.send(self.certified(&read, epoch, u64::from(index)));
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
                fides_service::Outcome::Agree { .. } | fides_service::Outcome::Await { .. } => continue,
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

    /// The leaf with hash `leaf` in epoch `epoch`, certified: its path and the epoch's
    /// certificate (for a record the service signed, found by its leaf hash: a transparency log's
    /// entry).
    fn certified_leaf(&mut self, epoch: u64, leaf: &[u8; 32]) -> Result<Certified, String> {
        let read = self.db.begin_read().map_err(|e| e.to_string())?;
        let cached = self.cached(&read, epoch).map_err(|e| e.to_string())?;
        let Some(cached) = cached else { return Err(format!("epoch {epoch} has no leaves here")) };
        let index = cached.tree.position(leaf).ok_or_else(|| format!("epoch {epoch} has no such leaf"))?;
        self.certified(&read, epoch, index)
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
    fn on_query(&mut self, query: Query) {
        match query {
            Query::ThresholdSignature { id, reply } => {
                let result = self.db.begin_read().map_err(anyhow::Error::from).and_then(|r| threshold::lookup(&r, &id));
                let _ = reply.send(result.map_err(|e| e.to_string()));
            }
            Query::Run(run) => run(&mut View { worker: self }),
        }
    }

    /// The agreed time of the last applied epoch.
    fn last_time(&self) -> anyhow::Result<u64> {
        if self.next_epoch == 0 {
            return Ok(0);
        }
        Ok(self.intake.time_of(self.next_epoch - 1)?.unwrap_or(0))
    }
}

#[cfg(test)]
mod store_tests {
    use fides_service::StateDigest;

    use super::*;

    fn format(db: &Database) -> Option<u32> {
        let read = db.begin_read().expect("read");
        let meta = read.open_table(tables::META).expect("meta");
        let value = meta.get(&b"format"[..]).expect("get").map(|v| v.value().to_vec());
        value.and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok()).map(u32::from_le_bytes)
    }

    /// A store of format 2 (no digest) or 3 (a digest of lanes only) gets the digest of its
    /// covered tables, with their size, computed once and is marked format 4; one of format 4 is
    /// left alone.
    #[test]
    fn an_older_store_gets_its_digest_with_the_size_computed_once() {
        let covered = vec!["bistro_events".to_owned()];
        for old in [STORE_FORMAT_NO_DIGEST, STORE_FORMAT_NO_SIZE] {
            let dir = tempfile::tempdir().expect("temporary directory");
            let db = Database::create(dir.path().join("s.redb")).expect("a store");
            let txn = db.begin_write().expect("write");
            {
                let mut events = txn.open_table(tables::table("bistro_events")).expect("table");
                for k in 0..10u8 {
                    events.insert(&[k][..], &vec![k; usize::from(k)][..]).expect("insert");
                }
                let mut meta = txn.open_table(tables::META).expect("meta");
                meta.insert(&b"format"[..], &old.to_le_bytes()[..]).expect("format");
                if old == STORE_FORMAT_NO_SIZE {
                    // What format 3 kept: the lanes alone.
                    meta.insert(tables::META_STATE_DIGEST, &[7u8; fides_service::state::LANES_BYTES][..])
                        .expect("lanes");
                }
            }
            txn.commit().expect("commit");
            ensure_digest(&db, &covered).expect("upgraded");
            assert_eq!(format(&db), Some(STORE_FORMAT), "from format {old}");
            let read = db.begin_read().expect("read");
            let meta = read.open_table(tables::META).expect("meta");
            let stored = meta.get(tables::META_STATE_DIGEST).expect("get").map(|v| v.value().to_vec());
            let stored = StateDigest::from_bytes(&stored.expect("a digest")).expect("of this format");
            let mut expected = StateDigest::new();
            for k in 0..10u8 {
                expected.add("bistro_events", &[k], &vec![k; usize::from(k)]);
            }
            assert_eq!(stored, expected, "from format {old}");
            assert_eq!(stored.size().entries, 10);
            assert_eq!(stored.size().bytes, 10 + 45);
            drop(read);
            // Format 4 now: a second start leaves it be.
            ensure_digest(&db, &covered).expect("nothing to do");
            assert_eq!(format(&db), Some(STORE_FORMAT));
        }
    }
}
