//! Signatures under other schemes than the epoch certificate's: the host's half of
//! [`fides_service::Outcome::ThresholdSign`] (threshold RSA, with [`RsaSigner`]).
//!
//! Once an epoch is applied and durable, each `ThresholdSign` outcome it made — of a request, or
//! of a service's epoch start — is given to the signer, which exchanges shares with the other
//! replicas (service frames of kind [`FRAME_KIND`]). Each combined signature is stored in the
//! host's table [`RSA_SIGNATURES`] by its [`MessageId`], and the request that asked is answered
//! once every signature it asked for is in ([`HostAnswer::signatures`]).
//!
//! The signatures are not service state: they verify by themselves against the cluster's RSA
//! public key, and they arrive at different moments at different replicas (so they cannot be
//! part of what checkpoints sign). They live in the host's tables, next to the services' own.
//!
//! Our shares (the exponentiations with our secret share: 5 ms for RSA-2048, three times that
//! with a proof) are made on a thread of their own, not on the services' worker thread, so that
//! epochs keep being applied meanwhile: the signer asks ([`Output::Compute`]), the thread makes
//! the share, and [`ThresholdSigning::poll`] (which the worker calls every [`MADE_POLL`] while a
//! share is being made) gives it back to the signer.
//!
//! Only the message's `t + 1` designated replicas sign at once; a message whose signature is not
//! in after [`RETRY_AFTER`] is given to the signer again as a retry (then every
//! [`RESEND_AFTER`]), and the others sign too.
//!
//! Durability, as for the epoch certificate: the messages still to sign are written in the
//! epoch's transaction ([`RSA_PENDING`], keyed by the request that asked), and a restart gives
//! them to the signer again, at once as retries (shares are deterministic, so sending one again
//! contradicts nothing). A cluster without an RSA key (files dealt before the dealer dealt one)
//! refuses them: the request gets `FAILED_PRECONDITION`, not a hang.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use fides_service::rsa_signer::{
    self, Compute, Computed, Input, Message, MessageId, Output, RsaSigner, RsaSignerConfig,
};
use fides_service::{Code, Outcome, SchemeId};
use fides_threshold_rsa::{PublicKey, SecretShare};
use fides_types::codec::Wire;
use fides_types::{NodeIndex, Protocol, Quorum, Step, Target};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::epochs::HostAnswer;
use super::tables::BytesTable;
use crate::node::{Command, FRAME_SERVICE};

/// The kind of a service frame that carries an [`RsaSigner`] message (the epoch signer's is 3).
pub const FRAME_KIND: u8 = 4;
/// message id → the combined RSA signature (`k` bytes).
pub const RSA_SIGNATURES: BytesTable<'static> = TableDefinition::new("replica_rsa_signatures");
/// epoch ‖ index (both big-endian) ‖ message id → the message, for each `ThresholdSign` outcome
/// not signed yet. The index of an epoch start's outcome is [`EPOCH_START`].
pub const RSA_PENDING: BytesTable<'static> = TableDefinition::new("replica_rsa_pending");
/// The index under which an epoch start's outcomes are kept (no request has it: a batch holds
/// far fewer requests), and the `ThresholdSign` messages of an applied batch (made with the rest of
/// the epoch by `fides_host::apply`).
pub use fides_host::apply::{asks, EPOCH_START};
/// A message whose signature is not in after this long is given to the signer as a retry: it
/// asks the peers, and signs even if it is not one of the message's designated signers (one of
/// them may be down). Long next to a signature's usual time (tens of milliseconds), so that a
/// loaded cluster does not make shares it does not need.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);
/// After the first retry, a message is retried this often (a frame may have been dropped, or a
/// peer restarted).
pub const RESEND_AFTER: Duration = Duration::from_secs(2);
/// Messages given again per turn at most.
const RESEND_MAX: usize = 64;

/// Where the host's commands to the driver go (frames to peers, faults): the driver's handle in
/// the replica, a queue in tests. Never blocks (a full queue drops the command: the message is
/// retried after [`RETRY_AFTER`], which sends our share again and asks the peers).
pub type Outbox = Box<dyn Fn(Command) + Send>;
/// How often the worker polls while a share is being made (a share takes about 5 ms for
/// RSA-2048). The share thread does not wake the worker: holding a sender of the worker's own
/// queue would keep the worker from seeing its queue closed.
pub const MADE_POLL: Duration = Duration::from_millis(2);

/// This replica's threshold RSA key: the cluster's public key and our secret share.
#[derive(Clone, Debug)]
pub struct RsaKeys {
    /// The public key (`keys.rsa` of the cluster file).
    pub public: Arc<PublicKey>,
    /// Our share (`secrets.rsa_share` of the replica file).
    pub secret: Arc<SecretShare>,
}

/// A message being signed.
struct Pending {
    message: Vec<u8>,
    /// The requests (epoch, index) that asked for it.
    askers: BTreeSet<(u64, u32)>,
    /// When it was last given to the signer.
    given: Instant,
    /// Whether it was given as a retry already.
    retried: bool,
}

/// The thread that makes our shares: jobs in, shares out.
struct ShareMaker {
    jobs: mpsc::Sender<Compute>,
    made: mpsc::Receiver<Result<Computed, rsa_signer::Error>>,
    /// Jobs sent and not taken back yet.
    outstanding: usize,
}

impl ShareMaker {
    fn start(keys: &RsaKeys) -> anyhow::Result<ShareMaker> {
        let (jobs, jobs_rx) = mpsc::channel::<Compute>();
        let (made_tx, made) = mpsc::channel();
        let (public, secret) = (Arc::clone(&keys.public), Arc::clone(&keys.secret));
        // Ends when the jobs' sender is dropped (with the worker).
        std::thread::Builder::new().name("rsa-shares".into()).spawn(move || {
            while let Ok(job) = jobs_rx.recv() {
                if made_tx.send(job.run(&public, &secret)).is_err() {
                    return;
                }
            }
        })?;
        Ok(ShareMaker { jobs, made, outstanding: 0 })
    }
}

/// The host's threshold signing: the signer, what it signs, and who waits.
pub struct ThresholdSigning {
    /// `None`: the cluster has no RSA key.
    signer: Option<RsaSigner>,
    /// Makes our shares (present with the signer).
    maker: Option<ShareMaker>,
    outbox: Outbox,
    pending: BTreeMap<MessageId, Pending>,
    /// Requests that wait for signatures: (epoch, index) → the ids not signed yet.
    waiting: BTreeMap<(u64, u32), BTreeSet<MessageId>>,
}

fn pending_key(epoch: u64, index: u32, id: &MessageId) -> Vec<u8> {
    [&epoch.to_be_bytes()[..], &index.to_be_bytes(), &id.0].concat()
}

/// The signature of `id`, if this replica stored one.
pub fn lookup(read: &ReadTransaction, id: &MessageId) -> anyhow::Result<Option<Vec<u8>>> {
    let table = match read.open_table(RSA_SIGNATURES) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    Ok(table.get(&id.0[..])?.map(|v| v.value().to_vec()))
}

impl ThresholdSigning {
    /// The host's signing for replica `our_index`; `keys` is `None` if the cluster has no RSA key.
    /// With a key, starts the thread that makes our shares.
    pub fn new(keys: Option<RsaKeys>, quorum: Quorum, our_index: NodeIndex, outbox: Outbox) -> anyhow::Result<Self> {
        let maker = keys.as_ref().map(ShareMaker::start).transpose()?;
        let signer = keys.map(|keys| RsaSigner::new(keys.public, quorum, our_index, RsaSignerConfig::default()));
        Ok(ThresholdSigning { signer, maker, outbox, pending: BTreeMap::new(), waiting: BTreeMap::new() })
    }

    /// Create the tables.
    pub fn open_tables(txn: &WriteTransaction) -> anyhow::Result<()> {
        txn.open_table(RSA_SIGNATURES)?;
        txn.open_table(RSA_PENDING)?;
        Ok(())
    }

    /// In the transaction that applies `epoch`: keep the messages to sign until they are signed.
    pub fn write_pending(&self, txn: &WriteTransaction, epoch: u64, asks: &[(u32, Vec<u8>)]) -> anyhow::Result<()> {
        if asks.is_empty() {
            return Ok(());
        }
        if self.signer.is_none() {
            tracing::warn!(epoch, "a service asked for a threshold RSA signature, but this cluster has no RSA key");
            return Ok(());
        }
        let mut table = txn.open_table(RSA_PENDING)?;
        for (index, message) in asks {
            table.insert(pending_key(epoch, *index, &MessageId::of(message)).as_slice(), message.as_slice())?;
        }
        Ok(())
    }

    /// After a restart: give the signer every message that was not signed.
    pub fn load(&mut self, db: &Database) -> anyhow::Result<()> {
        let mut asks: BTreeMap<u64, Vec<(u32, Vec<u8>)>> = BTreeMap::new();
        {
            let read = db.begin_read()?;
            let table = read.open_table(RSA_PENDING)?;
            for entry in table.iter()? {
                let (key, value) = entry?;
                let key = key.value();
                let (Some(epoch), Some(index)) = (
                    key.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                    key.get(8..12).and_then(|b| <[u8; 4]>::try_from(b).ok()),
                ) else {
                    continue;
                };
                asks.entry(u64::from_be_bytes(epoch))
                    .or_default()
                    .push((u32::from_be_bytes(index), value.value().to_vec()));
            }
        }
        for (epoch, asks) in asks {
            self.sign(db, epoch, asks);
        }
        // What peers sent while we were down is lost: ask them at once.
        let ids: Vec<MessageId> = self.pending.keys().copied().collect();
        for id in ids {
            self.give(db, id, true);
        }
        Ok(())
    }

    /// Once `epoch` is durable: sign what it asked for.
    pub fn sign(&mut self, db: &Database, epoch: u64, asks: Vec<(u32, Vec<u8>)>) {
        if self.signer.is_none() {
            return;
        }
        for (index, message) in asks {
            let id = MessageId::of(&message);
            if index != EPOCH_START {
                self.waiting.entry((epoch, index)).or_default().insert(id);
            }
            let new = !self.pending.contains_key(&id);
            let pending = self.pending.entry(id).or_insert_with(|| Pending {
                message,
                askers: BTreeSet::new(),
                given: Instant::now(),
                retried: false,
            });
            pending.askers.insert((epoch, index));
            let stored = db.begin_read().map_err(anyhow::Error::from).and_then(|read| lookup(&read, &id));
            if let Ok(Some(signature)) = stored {
                // Signed already (the same message asked for before): nothing to exchange.
                self.store(db, id, signature);
            } else if new {
                self.give(db, id, false);
            }
        }
    }

    /// Give `id`'s message to the signer, or a retry of it.
    fn give(&mut self, db: &Database, id: MessageId, retry: bool) {
        let (Some(signer), Some(pending)) = (self.signer.as_mut(), self.pending.get_mut(&id)) else { return };
        pending.given = Instant::now();
        pending.retried |= retry;
        let message = pending.message.clone();
        let input = if retry { Input::Retry(message) } else { Input::Sign(message) };
        match signer.handle_input(input, &mut rand::thread_rng()) {
            Ok(step) => self.on_step(db, step),
            Err(error) => tracing::error!(%error, "the threshold RSA signer cannot sign"),
        }
    }

    /// Whether a share is being made (the worker then polls every [`MADE_POLL`]).
    pub fn making(&self) -> bool {
        self.maker.as_ref().is_some_and(|m| m.outstanding > 0)
    }

    /// Once per turn of the worker: give the signer the shares the thread made, and retry the
    /// messages whose signature is late ([`RETRY_AFTER`], then [`RESEND_AFTER`]).
    pub fn poll(&mut self, db: &Database) {
        self.poll_at(db, Instant::now());
    }

    /// [`ThresholdSigning::poll`] as if it were `now`.
    fn poll_at(&mut self, db: &Database, now: Instant) {
        self.take_made(db, false);
        let due: Vec<MessageId> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                now.saturating_duration_since(p.given) > if p.retried { RESEND_AFTER } else { RETRY_AFTER }
            })
            .map(|(id, _)| *id)
            .take(RESEND_MAX)
            .collect();
        for id in due {
            self.give(db, id, true);
        }
    }

    /// Give the signer the shares made; `wait`: until every share asked for is made.
    fn take_made(&mut self, db: &Database, wait: bool) {
        loop {
            let Some(maker) = self.maker.as_mut().filter(|m| m.outstanding > 0) else { return };
            let made = if wait {
                maker.made.recv().map_err(|_| mpsc::TryRecvError::Disconnected)
            } else {
                maker.made.try_recv()
            };
            let computed = match made {
                Ok(computed) => computed,
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    tracing::error!("the thread that makes threshold RSA shares stopped");
                    maker.outstanding = 0;
                    return;
                }
            };
            maker.outstanding -= 1;
            let step = match computed {
                Ok(computed) => {
                    self.signer.as_mut().map(|s| s.handle_input(Input::Computed(computed), &mut rand::thread_rng()))
                }
                Err(error) => Some(Err(error)),
            };
            match step {
                Some(Ok(step)) => self.on_step(db, step),
                Some(Err(error)) => tracing::error!(%error, "the threshold RSA signer cannot sign"),
                None => {}
            }
        }
    }

    /// A service frame of kind [`FRAME_KIND`] (its body).
    pub fn on_frame(&mut self, db: &Database, from: NodeIndex, body: &[u8]) {
        let Some(signer) = self.signer.as_mut() else { return };
        match rsa_signer::Message::from_bytes(body) {
            Ok(message) => {
                let step = signer.handle_message(from, message, &mut rand::thread_rng());
                self.on_step(db, step);
            }
            Err(error) => {
                tracing::warn!(peer = from.0, %error, "a threshold RSA signer message does not decode");
                (self.outbox)(Command::Fault { peer: from, kind: fides_types::FaultKind::Undecodable });
            }
        }
    }

    /// Send what the signer sends, store what it signs, answer what peers ask.
    fn on_step(&mut self, db: &Database, step: Step<Message, Output>) {
        for fault in step.faults {
            let (peer, kind) = (fault.node.0, fault.kind);
            tracing::warn!("replica {peer} sent a bad threshold RSA share or signature ({kind:?})");
            (self.outbox)(Command::Fault { peer: fault.node, kind });
        }
        for outgoing in step.messages {
            self.send(outgoing.target, &outgoing.message);
        }
        for output in step.outputs {
            match output {
                Output::Signed { id, signature } => self.store(db, id, signature),
                Output::Compute(compute) => {
                    let Some(maker) = self.maker.as_mut() else { continue };
                    if maker.jobs.send(compute).is_ok() {
                        maker.outstanding += 1;
                    } else {
                        tracing::error!("the thread that makes threshold RSA shares stopped");
                    }
                }
                Output::SignatureAsked { peer, id } => {
                    let stored = db.begin_read().map_err(anyhow::Error::from).and_then(|read| lookup(&read, &id));
                    let (Ok(Some(signature)), Some(signer)) = (stored, self.signer.as_mut()) else { continue };
                    if let Ok(step) =
                        signer.handle_input(Input::Answer { peer, id, signature }, &mut rand::thread_rng())
                    {
                        for outgoing in step.messages {
                            self.send(outgoing.target, &outgoing.message);
                        }
                    }
                }
            }
        }
    }

    fn send(&self, target: Target, message: &Message) {
        let to = match target {
            Target::All => None,
            Target::Node(peer) => Some(peer),
        };
        let body = message.to_bytes();
        let mut frame = Vec::with_capacity(2 + body.len());
        frame.push(FRAME_SERVICE);
        frame.push(FRAME_KIND);
        frame.extend_from_slice(&body);
        (self.outbox)(Command::Send { to, frame });
    }

    /// Store `id`'s signature (durably, before anyone is answered) and release who waited.
    fn store(&mut self, db: &Database, id: MessageId, signature: Vec<u8>) {
        let askers = self.pending.get(&id).map(|p| p.askers.clone()).unwrap_or_default();
        let result = (|| -> anyhow::Result<()> {
            let txn = db.begin_write()?;
            {
                let mut signatures = txn.open_table(RSA_SIGNATURES)?;
                signatures.insert(&id.0[..], signature.as_slice())?;
                let mut pending = txn.open_table(RSA_PENDING)?;
                for (epoch, index) in &askers {
                    pending.remove(pending_key(*epoch, *index, &id).as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        if let Err(error) = result {
            // Kept pending: given again after RESEND_AFTER, it is signed (or answered) again.
            tracing::error!(%error, "cannot store a threshold RSA signature");
            return;
        }
        self.pending.remove(&id);
        for asker in askers {
            if let Some(ids) = self.waiting.get_mut(&asker) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.waiting.remove(&asker);
                }
            }
        }
    }

    /// Whether the request at (epoch, index) waits for a signature.
    pub fn waits(&self, epoch: u64, index: u32) -> bool {
        self.waiting.contains_key(&(epoch, index))
    }

    /// Fill in the signatures of `answer`'s `ThresholdSign` outcomes; without an RSA key, the
    /// answer is a refusal.
    pub fn complete(&self, read: &ReadTransaction, answer: &mut HostAnswer) -> Result<(), String> {
        for (at, (outcome, _)) in answer.outcomes.iter().enumerate() {
            let Outcome::ThresholdSign { scheme: SchemeId::ThresholdRsa, message } = outcome else { continue };
            if self.signer.is_none() {
                let refusal = Outcome::refuse(
                    Code::FailedPrecondition,
                    "the service asked for a threshold RSA signature, but this cluster has no RSA key (its files \
                     were dealt before the dealer dealt one)",
                );
                answer.outcomes = vec![(refusal, None)];
                answer.signatures.clear();
                return Ok(());
            }
            let signature = lookup(read, &MessageId::of(message)).map_err(|e| e.to_string())?;
            if let Some(signature) = signature {
                answer.signatures.push((at, signature));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex, OnceLock};

    use fides_service::{BatchOutcomes, ServiceId};
    use fides_threshold_rsa::{deal, verify_signature, Dealt};
    use rand::SeedableRng;

    use super::*;

    /// A 512-bit key for n = 4, t = 1 (a test-only size), dealt once.
    pub(crate) fn dealt() -> &'static Dealt {
        static DEALT: OnceLock<Dealt> = OnceLock::new();
        DEALT.get_or_init(|| {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(14);
            deal(512, 4, 1, &mut rng, &mut |_| {}).expect("512 bits, n = 4, t = 1 is a valid key")
        })
    }

    pub(crate) fn keys(index: usize) -> RsaKeys {
        let dealt = dealt();
        RsaKeys { public: Arc::new(dealt.public.clone()), secret: Arc::new(dealt.shares[index].clone()) }
    }

    /// One replica's host half: its store, its signing, what it sent.
    struct Host {
        db: Database,
        signing: ThresholdSigning,
        sent: Arc<Mutex<Vec<Command>>>,
        index: NodeIndex,
        keys: Option<RsaKeys>,
    }

    impl Host {
        fn new(dir: &tempfile::TempDir, index: u32, keys: Option<RsaKeys>) -> Host {
            let db = Database::create(dir.path().join(format!("host-{index}.redb"))).expect("a store");
            let txn = db.begin_write().expect("a transaction");
            ThresholdSigning::open_tables(&txn).expect("the tables");
            txn.commit().expect("commits");
            let (signing, sent) = Host::signing(index, keys.clone());
            Host { db, signing, sent, index: NodeIndex(index), keys }
        }

        fn signing(index: u32, keys: Option<RsaKeys>) -> (ThresholdSigning, Arc<Mutex<Vec<Command>>>) {
            let sent = Arc::new(Mutex::new(Vec::new()));
            let outbox = Arc::clone(&sent);
            let quorum = Quorum::new(4, 1).expect("n = 4, t = 1");
            let signing = ThresholdSigning::new(
                keys,
                quorum,
                NodeIndex(index),
                Box::new(move |command| outbox.lock().expect("not poisoned").push(command)),
            )
            .expect("the share thread starts");
            (signing, sent)
        }

        /// A restart: the store stays, memory is lost.
        fn restart(&mut self) {
            let (signing, sent) = Host::signing(self.index.0, self.keys.clone());
            (self.signing, self.sent) = (signing, sent);
            self.signing.load(&self.db).expect("loads");
        }

        /// Apply an epoch that asks for `asks`: durable first, then signed.
        fn apply(&mut self, epoch: u64, asks: &[(u32, Vec<u8>)]) {
            let txn = self.db.begin_write().expect("a transaction");
            self.signing.write_pending(&txn, epoch, asks).expect("writes");
            txn.commit().expect("commits");
            self.signing.sign(&self.db, epoch, asks.to_vec());
        }

        fn answer(&self, outcomes: Vec<Outcome>) -> HostAnswer {
            let mut answer = HostAnswer {
                service: ServiceId(*b"TEST"),
                outcomes: outcomes.into_iter().map(|o| (o, None)).collect(),
                signatures: Vec::new(),
            };
            let read = self.db.begin_read().expect("a read");
            self.signing.complete(&read, &mut answer).expect("completes");
            answer
        }
    }

    /// Deliver the frames the hosts send until none is left and no share is being made; a host
    /// that is down loses what is sent to it and what it sends. The faults reported.
    fn route(hosts: &mut [Host], down: &[u32]) -> Vec<(NodeIndex, fides_types::FaultKind)> {
        let mut faults = Vec::new();
        for _ in 0..100 {
            for host in hosts.iter_mut() {
                host.signing.take_made(&host.db, true);
            }
            let mut frames = Vec::new();
            for host in hosts.iter() {
                for command in std::mem::take(&mut *host.sent.lock().expect("not poisoned")) {
                    match command {
                        Command::Fault { peer, kind } => faults.push((peer, kind)),
                        Command::Send { to, frame } if !down.contains(&host.index.0) => {
                            frames.push((host.index, to, frame))
                        }
                        _ => {}
                    }
                }
            }
            if frames.is_empty() {
                return faults;
            }
            for (from, to, frame) in frames {
                assert_eq!(frame[..2], [FRAME_SERVICE, FRAME_KIND], "a service frame of the RSA signer's kind");
                for host in hosts.iter_mut() {
                    let addressed = to.map_or(host.index != from, |to| to == host.index);
                    if addressed && !down.contains(&host.index.0) {
                        host.signing.on_frame(&host.db, from, &frame[2..]);
                    }
                }
            }
        }
        panic!("the hosts keep sending frames");
    }

    fn signature_of(host: &Host, message: &[u8]) -> Option<Vec<u8>> {
        lookup(&host.db.begin_read().expect("a read"), &MessageId::of(message)).expect("reads")
    }

    #[test]
    fn the_outcomes_of_a_batch_that_ask_for_signatures_are_found() {
        let ask = |message: &[u8]| Outcome::ThresholdSign { scheme: SchemeId::ThresholdRsa, message: message.to_vec() };
        let outcomes = BatchOutcomes {
            epoch: vec![(ServiceId(*b"TEST"), vec![ask(b"crl")])],
            requests: vec![
                (0, Some(ServiceId(*b"TEST")), vec![Outcome::Reply(vec![1])]),
                (2, Some(ServiceId(*b"TEST")), vec![Outcome::Sign(vec![2]), ask(b"tbs")]),
            ],
        };
        assert_eq!(asks(&outcomes), vec![(EPOCH_START, b"crl".to_vec()), (2, b"tbs".to_vec())]);
    }

    #[test]
    fn a_request_is_answered_with_the_signature_once_t_plus_one_hosts_signed() {
        let dir = tempfile::tempdir().expect("a directory");
        let mut hosts: Vec<Host> = (0..4).map(|i| Host::new(&dir, i, Some(keys(i as usize)))).collect();
        let (tbs, crl) = (b"tbs bytes".to_vec(), b"a revocation list".to_vec());
        for host in &mut hosts {
            host.apply(7, &[(EPOCH_START, crl.clone()), (3, tbs.clone())]);
            assert!(host.signing.waits(7, 3), "the request waits for its signature");
            assert!(!host.signing.waits(7, EPOCH_START));
        }
        // Replica 3 is down: the others still sign (after a retry if it was a designated signer),
        // and it restarts with what it had to sign.
        let faults = route(&mut hosts, &[3]);
        assert!(faults.is_empty(), "{faults:?}");
        let later = Instant::now() + RETRY_AFTER * 2;
        for host in &mut hosts[..3] {
            host.signing.poll_at(&host.db, later);
        }
        let faults = route(&mut hosts, &[3]);
        assert!(faults.is_empty(), "{faults:?}");
        let dealt = dealt();
        for host in &hosts[..3] {
            assert!(!host.signing.waits(7, 3));
            for message in [&tbs, &crl] {
                let signature = signature_of(host, message).expect("stored");
                assert!(verify_signature(&dealt.public, message, &signature));
            }
            let answer = host.answer(vec![
                Outcome::Reply(vec![1]),
                Outcome::ThresholdSign { scheme: SchemeId::ThresholdRsa, message: tbs.clone() },
            ]);
            assert_eq!(answer.signature(1), signature_of(host, &tbs).as_deref());
            assert_eq!(answer.signatures.len(), 1);
        }
        assert!(hosts[3].signing.waits(7, 3));
        assert_eq!(signature_of(&hosts[3], &tbs), None);
        hosts[3].restart();
        assert!(hosts[3].signing.waits(7, 3), "a restart signs again what was pending");
        let faults = route(&mut hosts, &[]);
        assert!(faults.is_empty(), "{faults:?}");
        assert!(!hosts[3].signing.waits(7, 3));
        assert_eq!(signature_of(&hosts[3], &tbs), signature_of(&hosts[0], &tbs));
        // Nothing is pending any more: a second restart has nothing to sign.
        hosts[3].restart();
        assert!(!hosts[3].signing.waits(7, 3));
        assert!(hosts[3].sent.lock().expect("not poisoned").is_empty());
        // The same message asked for again is answered from the table, with no exchange.
        hosts[0].apply(9, &[(0, tbs.clone())]);
        assert!(!hosts[0].signing.waits(9, 0));
        assert!(hosts[0].sent.lock().expect("not poisoned").is_empty());
    }

    #[test]
    fn shares_are_made_off_the_callers_thread_by_the_designated_hosts_only() {
        let dir = tempfile::tempdir().expect("a directory");
        let mut hosts: Vec<Host> = (0..4).map(|i| Host::new(&dir, i, Some(keys(i as usize)))).collect();
        let message = b"tbs bytes".to_vec();
        let chosen: Vec<u32> = rsa_signer::designated(&MessageId::of(&message), 4, 1).map(|i| i.0).collect();
        for host in &mut hosts {
            host.apply(2, &[(0, message.clone())]);
            // Applying returns before the share is made: nothing is sent yet, a share is asked.
            assert!(host.sent.lock().expect("not poisoned").is_empty(), "no share made on the caller's thread");
            assert_eq!(host.signing.making(), chosen.contains(&host.index.0), "host {}", host.index.0);
        }
        let faults = route(&mut hosts, &[]);
        assert!(faults.is_empty(), "{faults:?}");
        for host in &hosts {
            assert!(!host.signing.waits(2, 0));
            assert!(verify_signature(&dealt().public, &message, &signature_of(host, &message).expect("stored")));
        }
    }

    #[test]
    fn a_bad_share_is_counted_as_the_peers_fault() {
        let dir = tempfile::tempdir().expect("a directory");
        let mut hosts: Vec<Host> = (0..4).map(|i| Host::new(&dir, i, Some(keys(i as usize)))).collect();
        let message = b"tbs bytes".to_vec();
        hosts[0].apply(1, &[(0, message.clone())]);
        let bad = Message::Share { id: MessageId::of(&message), share: vec![7; 40] }.to_bytes();
        let host = &mut hosts[0];
        host.signing.on_frame(&host.db, NodeIndex(2), &bad);
        host.signing.on_frame(&host.db, NodeIndex(2), &[9, 9]);
        let faults: Vec<_> = std::mem::take(&mut *hosts[0].sent.lock().expect("not poisoned"))
            .into_iter()
            .filter_map(|c| match c {
                Command::Fault { peer, kind } => Some((peer, kind)),
                _ => None,
            })
            .collect();
        use fides_types::FaultKind::Undecodable;
        assert_eq!(faults, vec![(NodeIndex(2), Undecodable), (NodeIndex(2), Undecodable)]);
    }

    #[test]
    fn without_an_rsa_key_the_request_is_refused_not_left_waiting() {
        let dir = tempfile::tempdir().expect("a directory");
        let mut host = Host::new(&dir, 0, None);
        let message = b"tbs bytes".to_vec();
        host.apply(1, &[(0, message.clone())]);
        assert!(!host.signing.waits(1, 0));
        let answer = host.answer(vec![Outcome::ThresholdSign { scheme: SchemeId::ThresholdRsa, message }]);
        match &answer.outcomes[..] {
            [(Outcome::Refuse(refusal), None)] => assert_eq!(refusal.code, Code::FailedPrecondition),
            other => panic!("not a refusal: {other:?}"),
        }
        let read = host.db.begin_read().expect("a read");
        let pending = read.open_table(RSA_PENDING).expect("the table");
        assert!(pending.iter().expect("a scan").next().is_none(), "nothing pending without a key");
    }
}
