//! The driver: one loop around the deterministic [`Core`].
//!
//! Each turn takes what arrived (frames from peers, client commands, the timer), turns it into
//! events, **writes the events to the log and fsyncs**, hands them to the core, and only then
//! sends what the core asked to send and answers clients (STYLE.md 2: persist before send).
//! Several arrivals share one fsync (group commit).
//!
//! A restart decodes the last snapshot of the core's whole state into a fresh core, replays the
//! events logged after it (same seed, same sequence numbers, same state), sends again the
//! messages of the epochs still running, and asks the peers for what it missed
//! ([`Event::Recover`]).
//!
//! A replica whose data is lost (a new, empty store) cannot know what it voted before. It asks for
//! catch-up and stays silent in the common subsets of early epochs: it greets its peers, learns
//! how far they have come from `n - t - 1` of them, and votes only from the epoch
//! `highest they report + epochs_in_flight + 1` on (from epoch 0 when none of them has delivered
//! anything: a new cluster). `docs/replica.md` discusses what this does and does not guarantee.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fides_atomic_broadcast::checkpoint::Checkpoint;
use fides_atomic_broadcast::epoch::{Admission, Batch, Error as AbcError, Message, Request, RequestKey};
use fides_atomic_broadcast::instances::{self, Decided};
use fides_types::codec::Wire;
use fides_types::{NodeIndex, Outgoing, Quorum, Target};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};

use crate::admission::{Ledger, Verdict};
use crate::backfill::{fit_page, Backfill, Page, PageRequest, PAGE_BATCHES_MAX};
use crate::core::{is_vote, message_epoch, Core, Effects, Recent};
use crate::metrics::Metrics;
use crate::store::{Base, Derived, Event, Snapshot, Store, StoreError, StoredBatch};
use crate::transport::{Transport, TransportEvent};

/// Frame tags: what the driver puts in front of each frame.
const FRAME_MESSAGE: u8 = 0;
const FRAME_HELLO: u8 = 1;
const FRAME_PAGE_REQUEST: u8 = 2;
const FRAME_PAGE: u8 = 3;
/// Frames of the services above ordering (e.g. the bistro's signature shares): passed on.
pub const FRAME_SERVICE: u8 = 4;
/// Frames of the agreement instances the services ask for (see `fides_atomic_broadcast::instances`).
pub const FRAME_INSTANCE: u8 = 5;

/// Where the driver hands the decisions of agreement instances (it must not block). Decisions
/// of the replay come too: the host orders a notice for each, and a notice sent again is the same
/// request, or ignored when ordered again (`docs/agreement.md`, "The host's side").
pub type DecidedSink = Box<dyn Fn(Decided) + Send>;

/// What the driver tells the services above it.
#[derive(Debug)]
pub enum ServiceEvent {
    /// A peer's service frame (the tag stripped).
    Frame {
        /// The peer.
        from: NodeIndex,
        /// The frame's body.
        bytes: Vec<u8>,
    },
    /// A delivered batch, durable in the store (sent after the commit that wrote it). The sink
    /// may drop it when the service side lags: the store has it.
    Batch(Arc<fides_atomic_broadcast::epoch::Batch>),
}

/// Where the driver sends [`ServiceEvent`]s (it must not block).
pub type ServiceSink = Box<dyn Fn(ServiceEvent) + Send>;

/// Where a request was ordered (the answer to a client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ordered {
    /// The client.
    pub client: u64,
    /// The request id.
    pub id: u64,
    /// The epoch.
    pub epoch: u64,
    /// Position in the batch.
    pub index: u32,
    /// Agreed time of the epoch, ms since the Unix epoch.
    pub time_ms: u64,
    /// Log digest after the epoch.
    pub log_digest: [u8; 32],
    /// SHA-256 of the payload ordered: `(client, id)` is not authenticated, so a place is told
    /// only for the request with this payload (see `docs/atomic-broadcast.md`).
    pub payload_digest: [u8; 32],
}

/// Why a submission got no `Ordered` answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The request can never be ordered as it is.
    #[error("{0}")]
    Invalid(String),
    /// The replica is overloaded; try later or elsewhere.
    #[error("{0}")]
    Overloaded(String),
    /// Not ordered within the wait bound (it stays queued).
    #[error("not ordered within {0:?}; the request stays queued here")]
    TimedOut(Duration),
    /// The request was ordered, longer ago than this replica keeps answers (or in epochs it
    /// skipped by installing a checkpoint): it will not be ordered again.
    #[error("already ordered, in an epoch whose answers this replica no longer keeps")]
    AlreadyOrdered,
    /// The replica is shutting down.
    #[error("the replica is shutting down")]
    ShuttingDown,
}

/// Where a request stands here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not known here.
    Unknown,
    /// Logged, not ordered yet.
    Pending,
    /// Ordered.
    Ordered(Ordered),
}

/// A peer's line in the status.
#[derive(Clone, Debug, Default)]
pub struct PeerStatus {
    /// Transport counters.
    pub counters: crate::transport::PeerCounters,
    /// Faults recorded.
    pub faults: u64,
    /// Of which equivocations.
    pub equivocations: u64,
}

/// The replica's state, for `fides status` and monitors.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Our index.
    pub index: u32,
    /// n.
    pub n: u32,
    /// t.
    pub t: u32,
    /// Next epoch to deliver.
    pub next_epoch: u64,
    /// Last agreed time.
    pub agreed_time_ms: u64,
    /// Queue length.
    pub queue_len: u64,
    /// Requests delivered (since this replica's log began).
    pub delivered_requests: u64,
    /// Log digest.
    pub log_digest: [u8; 32],
    /// Stable checkpoint epoch.
    pub checkpoint_epoch: Option<u64>,
    /// Peers.
    pub peers: Vec<PeerStatus>,
    /// Events in the log since the last snapshot (what a restart would replay).
    pub wal_events: u64,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Still finding out from which epoch it may vote.
    pub joining: bool,
    /// First epoch held.
    pub log_first_epoch: u64,
}

/// What clients (through the gRPC layer) ask the driver.
#[derive(Debug)]
pub enum Command {
    /// Order a request; the answer comes once it is delivered.
    Submit {
        /// The request.
        request: Request,
        /// Where the answer goes: a handler waiting for where it was ordered (a
        /// `oneshot::Sender`), or one the host answers after it applied the request.
        reply: Box<dyn Then>,
    },
    /// Where a request stands.
    Lookup {
        /// (client, id, SHA-256 of the payload).
        key: RequestKey,
        /// Where the answer goes.
        reply: oneshot::Sender<Lookup>,
    },
    /// The status.
    Status {
        /// Where the answer goes.
        reply: oneshot::Sender<Status>,
    },
    /// Send a service frame (its tag included) to one peer or, with `None`, to all.
    Send {
        /// The peer.
        to: Option<NodeIndex>,
        /// The frame.
        frame: Vec<u8>,
    },
    /// A peer's fault that a service-side protocol found (e.g. a bad epoch signature share):
    /// counted with the driver's own, in `Status` and the metrics.
    Fault {
        /// The peer.
        peer: NodeIndex,
        /// What it did.
        kind: fides_types::FaultKind,
    },
    /// Ask for agreement instance `instance` with our `vote` (the decision comes to the
    /// [`DecidedSink`]).
    Agree {
        /// The instance.
        instance: instances::InstanceId,
        /// Our vote.
        vote: fides_agreement::Vote,
    },
    /// The services need no batch before `epoch` (they installed a snapshot of the state after
    /// `epoch - 1`, or gave up on one and replay from `epoch`): fetch no skipped batch below it.
    BackfillFloor {
        /// The first epoch the services need.
        epoch: u64,
    },
    /// Delivered batches from an epoch on.
    Log {
        /// First epoch.
        from: u64,
        /// At most this many.
        max: usize,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<LogPage, String>>,
    },
}

/// A page of the delivered log.
#[derive(Clone, Debug)]
pub struct LogPage {
    /// The batches.
    pub batches: Vec<StoredBatch>,
    /// The next epoch to deliver (the log's end).
    pub next_epoch: u64,
    /// The first epoch held.
    pub first_epoch: u64,
}

/// Bounds of the driver.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Submissions waiting for their answer, over all clients.
    pub waiting_max: usize,
    /// How long a submission waits for its answer.
    pub submit_wait: Duration,
    /// Epochs for which answers are remembered (for resent requests and `Lookup`).
    pub ordered_epochs_max: u64,
    /// Arrivals handled per turn (and per fsync).
    pub turn_events_max: usize,
    /// Timer period (clock readings, expiry of waits, metrics).
    pub tick: Duration,
    /// Longest payload a client may send.
    pub payload_len_max: usize,
    /// Events logged since the last snapshot before the replica compacts its log (whatever is
    /// under way: a snapshot holds the whole state).
    pub compact_events: u64,
    /// Bytes of peer frames taken in one turn (at least one frame is).
    pub turn_bytes_max: usize,
    /// Fault injection for tests: flood the peers for this long after the start (see
    /// [`crate::flood`]), with this many bytes per peer and tick.
    pub fault_flood: Option<(Duration, usize)>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            waiting_max: 100_000,
            submit_wait: Duration::from_secs(30),
            ordered_epochs_max: 4096,
            turn_events_max: 4096,
            tick: Duration::from_millis(50),
            payload_len_max: 64 * 1024,
            compact_events: 2_000,
            turn_bytes_max: 64 * 1024 * 1024,
            fault_flood: None,
        }
    }
}

/// A local failure that stops the replica.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Storage failed: the replica cannot promise durability, so it stops.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

/// A handle to send commands to a running node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
}

impl NodeHandle {
    /// Send a command; `false` if the node is gone or its command queue is full.
    pub fn try_send(&self, command: Command) -> Result<(), Command> {
        self.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
        })
    }

    /// Send a command, waiting for room.
    pub async fn send(&self, command: Command) -> bool {
        self.commands.send(command).await.is_ok()
    }
    /// A handle with no node behind it, and the receiving end of its commands: tests of the
    /// service side play the driver.
    #[cfg(test)]
    pub(crate) fn detached(capacity: usize) -> (NodeHandle, mpsc::Receiver<Command>) {
        let (commands, rx) = mpsc::channel(capacity);
        (NodeHandle { commands }, rx)
    }
}

struct Waiter {
    reply: Box<dyn Then>,
    since: Instant,
}

/// Where the driver's answer to a submission goes: once the request is ordered (or refused, or
/// the wait is over) the driver hands it over, without blocking. A handler that wants only where
/// its request was ordered gives a `oneshot::Sender`; the services' handlers give one that passes
/// their reply on to the host, so that each waits once, for the host's answer.
pub trait Then: Send {
    /// The handler gave up waiting.
    fn is_closed(&self) -> bool;
    /// The driver's answer (called once; it must not block).
    fn ordered(self: Box<Self>, answer: Result<Ordered, SubmitError>);
}

impl std::fmt::Debug for dyn Then {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Then").field("closed", &self.is_closed()).finish()
    }
}

impl Then for oneshot::Sender<Result<Ordered, SubmitError>> {
    fn is_closed(&self) -> bool {
        oneshot::Sender::is_closed(self)
    }

    fn ordered(self: Box<Self>, answer: Result<Ordered, SubmitError>) {
        let _ = self.send(answer);
    }
}

/// What a peer told us in its greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hello {
    next_epoch: u64,
    voted_max: Option<u64>,
    /// The sender is joining and asks for our greeting.
    answer_me: bool,
}

impl Hello {
    const LEN: usize = 18;

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![FRAME_HELLO];
        out.extend_from_slice(&self.next_epoch.to_le_bytes());
        out.push(u8::from(self.voted_max.is_some()));
        out.extend_from_slice(&self.voted_max.unwrap_or(0).to_le_bytes());
        out.push(u8::from(self.answer_me));
        out
    }

    fn decode(bytes: &[u8]) -> Option<Hello> {
        if bytes.len() != Hello::LEN {
            return None;
        }
        let next_epoch = u64::from_le_bytes(bytes[0..8].try_into().ok()?);
        let voted = u64::from_le_bytes(bytes[9..17].try_into().ok()?);
        let voted_max = match bytes[8] {
            0 => None,
            1 => Some(voted),
            _ => return None,
        };
        let answer_me = match bytes[17] {
            0 => false,
            1 => true,
            _ => return None,
        };
        Some(Hello { next_epoch, voted_max, answer_me })
    }
}

/// How long the backfill waits after a checkpoint jump for the services' side to say from where
/// it needs the skipped batches (it fetches a snapshot of the services' state first).
const BACKFILL_HOLD: Duration = Duration::from_secs(20);
/// Epochs behind the next one for which the ledger remembers checkpoint shares.
const LEDGER_CHECKPOINT_EPOCHS: u64 = 1024;

/// Votes a joining replica holds until it knows from which epoch it may vote.
const HELD_MAX: usize = 100_000;

/// The running replica.
pub struct Node<T: Transport> {
    core: Core,
    store: Store,
    transport: T,
    quorum: Quorum,
    our_index: NodeIndex,
    epochs_in_flight: u64,
    limits: Limits,
    metrics: Arc<Metrics>,
    commands: mpsc::Receiver<Command>,
    /// Waiters by request key: a waiter is answered only by the request with its own payload.
    waiters: HashMap<RequestKey, Vec<Waiter>>,
    waiting: usize,
    /// Requests logged and not yet delivered or refused.
    pending: std::collections::HashSet<RequestKey>,
    ordered: HashMap<RequestKey, Ordered>,
    ordered_by_epoch: VecDeque<(u64, Vec<RequestKey>)>,
    derived: Derived,
    /// The epoch from which we vote; `None` while joining.
    join_epoch: Option<u64>,
    hellos: BTreeMap<NodeIndex, Hello>,
    /// The join epoch decided, to take effect once it is durable.
    join_decided: Option<u64>,
    /// Votes computed while joining, sent (if at or after the join epoch) once it is decided.
    held: VecDeque<Outgoing<Message>>,
    ticks: u64,
    /// The highest epoch we voted in (sent a common-subset message of).
    voted_max: Option<u64>,
    last_clock: u64,
    events_since_base: u64,
    /// The last epoch delivered or installed.
    last_delivered: Option<u64>,
    /// The log digest before epoch 0.
    genesis: [u8; 32],
    backfill: Option<Backfill>,
    /// The backfill page asked for, from whom, when.
    backfill_asked: Option<(NodeIndex, Instant)>,
    backfill_turn: u32,
    /// No backfill page is asked for before this: the services' side may first fetch a snapshot
    /// and say from where it needs batches ([`Command::BackfillFloor`]).
    backfill_hold: Option<Instant>,
    /// When each peer's page request was last answered (answers are rate-limited).
    pages_answered: BTreeMap<NodeIndex, Instant>,
    delivered_requests: u64,
    first_epoch: Option<u64>,
    agreed_time: u64,
    faults: Vec<u64>,
    equivocations: Vec<u64>,
    started: Instant,
    service: Option<ServiceSink>,
    /// Where decisions of agreement instances go, and those decided before it was set.
    decided: (Option<DecidedSink>, Vec<Decided>),
    /// What each peer had logged in the epochs still running (see [`crate::admission`]).
    ledger: Ledger,
    /// Peers that showed themselves at far epochs in this turn, with the highest.
    heard: BTreeMap<NodeIndex, u64>,
    flood: Option<crate::flood::Flood>,
    /// The messages the core sent in the epochs still running (a snapshot holds them: see
    /// `compact_if_due`).
    recent: Recent,
}

/// What the caller sets up a node with.
pub struct NodeSetup {
    /// Cluster size.
    pub quorum: Quorum,
    /// Our index.
    pub our_index: NodeIndex,
    /// Atomic broadcast, freshly made.
    pub abc: fides_atomic_broadcast::epoch::AtomicBroadcast,
    /// Its session.
    pub session: Vec<u8>,
    /// Its checkpoint interval.
    pub checkpoint_interval: u64,
    /// Its epochs in flight.
    pub epochs_in_flight: u64,
    /// The driver's bounds.
    pub limits: Limits,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl<T: Transport> Node<T> {
    /// Open the store, replay the log, and return the node and a handle to it.
    pub fn start(
        setup: NodeSetup,
        store_dir: &std::path::Path,
        transport: T,
        metrics: Arc<Metrics>,
    ) -> Result<(Node<T>, NodeHandle), NodeError> {
        Self::start_hosting(setup, None, store_dir, transport, metrics)
    }

    /// [`Node::start`], with the core hosting `instances` (the services' agreement instances):
    /// given before the log is replayed, so that the replay runs them as the first run did.
    pub fn start_hosting(
        setup: NodeSetup,
        instances: Option<instances::Instances>,
        store_dir: &std::path::Path,
        transport: T,
        metrics: Arc<Metrics>,
    ) -> Result<(Node<T>, NodeHandle), NodeError> {
        let (store, opened) = Store::open(store_dir, rand::random())?;
        let mut core = Core::new(setup.abc, opened.seed, setup.our_index, &setup.session, setup.checkpoint_interval);
        if let Some(instances) = instances {
            core = core.with_instances(instances);
        }
        let (commands_tx, commands) = mpsc::channel(setup.limits.waiting_max.clamp(1024, 65_536));
        let n = setup.quorum.n() as usize;
        let flood = setup.limits.fault_flood.map(|(duration, bytes)| crate::flood::Flood::new(duration, bytes));
        let mut node = Node {
            core,
            store,
            transport,
            quorum: setup.quorum,
            our_index: setup.our_index,
            epochs_in_flight: setup.epochs_in_flight,
            limits: setup.limits,
            metrics,
            commands,
            waiters: HashMap::new(),
            waiting: 0,
            pending: Default::default(),
            ordered: HashMap::new(),
            ordered_by_epoch: VecDeque::new(),
            derived: Derived::default(),
            join_epoch: opened.join_epoch,
            hellos: BTreeMap::new(),
            join_decided: None,
            held: VecDeque::new(),
            ticks: 0,
            voted_max: None,
            last_clock: 0,
            events_since_base: 0,
            last_delivered: None,
            genesis: fides_atomic_broadcast::checkpoint::log_genesis(&setup.session),
            backfill: None,
            backfill_asked: None,
            backfill_turn: 0,
            backfill_hold: None,
            pages_answered: BTreeMap::new(),
            delivered_requests: 0,
            first_epoch: None,
            agreed_time: 0,
            faults: vec![0; n],
            equivocations: vec![0; n],
            started: Instant::now(),
            service: None,
            decided: (None, Vec::new()),
            ledger: Ledger::new(setup.quorum.n()),
            heard: BTreeMap::new(),
            flood,
            recent: Recent::default(),
        };
        let resend = node.replay(opened.base, opened.snapshot)?;
        // A backfill left unfinished goes on. One the replay's installs ask for again is done if
        // its newest batch is held (a crash may also have come before it was written down).
        let replayed = node.backfill.take();
        node.backfill = match (opened.backfill, replayed) {
            (Some(stored), _) => Some(stored),
            (None, Some(replayed)) if node.store.batch(replayed.high)?.is_none() => Some(replayed),
            _ => None,
        };
        // The log served starts at the last installed checkpoint, or at the first batch held.
        node.first_epoch = match opened.first_epoch {
            Some(first) => Some(first),
            None => node.store.first_batch_epoch()?,
        };
        if let Some(backfill) = &node.backfill {
            node.first_epoch = Some(node.first_epoch.unwrap_or(0).max(backfill.high + 1));
        }
        tracing::info!(
            index = node.our_index.0,
            replayed = node.events_since_base,
            next_epoch = node.core.abc().next_epoch(),
            fresh = opened.fresh,
            join_epoch = ?node.join_epoch,
            "replayed the log"
        );
        // Send again what the epochs still running asked for: the crash may have come before.
        node.send_all(resend);
        // Ask the peers for what we missed (also for a new replica: it may be a wiped one).
        node.turn_with(vec![Event::Recover])?;
        Ok((node, NodeHandle { commands: commands_tx }))
    }

    /// Pass service frames and news of written batches to `sink`.
    pub fn set_service(&mut self, sink: ServiceSink) {
        self.service = Some(sink);
        if self.backfill.is_some() {
            self.hold_backfill();
        }
    }

    /// Wait at most [`BACKFILL_HOLD`] for the services' side to say from where it needs the
    /// skipped batches (after a snapshot, not from the first missing one).
    fn hold_backfill(&mut self) {
        if self.service.is_some() {
            self.backfill_hold = Some(Instant::now() + BACKFILL_HOLD);
        }
    }

    /// The services need no batch before `floor`: the backfill stops there.
    fn on_backfill_floor(&mut self, floor: u64) {
        self.backfill_hold = None;
        let Some(backfill) = &mut self.backfill else { return };
        if floor <= backfill.low {
            return;
        }
        if floor <= backfill.high {
            backfill.low = floor;
            self.derived.backfill = Some(Some(backfill.clone()));
            tracing::info!(floor, "the services need no batch before the floor: the backfill stops there");
            return;
        }
        let after = backfill.high + 1;
        self.backfill = None;
        self.backfill_asked = None;
        self.derived.backfill = Some(None);
        let first = self.log_start(after);
        self.first_epoch = Some(first);
        self.derived.first_epoch = Some(first);
        tracing::info!(floor, from_epoch = first, "the services need none of the skipped batches: no backfill");
    }

    /// Where the log served starts once every batch from `low` on is held: at the first batch
    /// held, unless one just before `low` is missing (a floor left a hole), then at `low`.
    fn log_start(&self, low: u64) -> u64 {
        let first = self.store.first_batch_epoch().ok().flatten().map_or(low, |f| f.min(low));
        if first < low && !matches!(self.store.batch(low - 1), Ok(Some(_))) {
            low
        } else {
            first
        }
    }

    /// Hand decisions of agreement instances to `sink` (those decided so far, the replay's
    /// included, at once).
    pub fn set_decided(&mut self, sink: DecidedSink) {
        for decided in self.decided.1.drain(..) {
            sink(decided);
        }
        self.decided.0 = Some(sink);
    }

    /// Hand batches that are durable now to the services, in memory.
    fn hand_batches(&self, batches: Vec<StoredBatch>) {
        if let Some(service) = &self.service {
            for stored in batches {
                service(ServiceEvent::Batch(Arc::new(stored.batch)));
            }
        }
    }

    /// A reader of the stored batches, for the services (to catch up after a restart or a lag).
    pub fn batch_reader(&self) -> crate::store::BatchReader {
        self.store.reader()
    }

    fn replay(&mut self, base: Option<Base>, snapshot: Option<Snapshot>) -> Result<Vec<Outgoing<Message>>, NodeError> {
        if let Some(snapshot) = snapshot {
            self.restore_snapshot(snapshot)?;
        } else if let Some(base) = base {
            // A log compacted by an older version: its base is the delivered state only.
            self.last_clock = base.clock;
            let mut effects = Effects::default();
            self.core.restore(base.snapshot, base.clock, &mut effects);
            effects.outgoing.clear();
            self.absorb(effects, true);
        }
        let mut recent = std::mem::take(&mut self.recent);
        let mut next = 0;
        self.events_since_base = 0;
        loop {
            let chunk = self.store.events_from(next, 4096)?;
            let Some(&(last, _)) = chunk.last() else { break };
            next = last + 1;
            self.events_since_base += chunk.len() as u64;
            self.replay_chunk(chunk, &mut recent);
        }
        self.recent = recent;
        Ok(self.recent.messages())
    }

    /// Take the core's state and the driver's bookkeeping from a snapshot. What the driver derives
    /// from delivered batches (the answers of the last epochs) is read back from the stored
    /// batches, which a compaction writes first.
    fn restore_snapshot(&mut self, snapshot: Snapshot) -> Result<(), NodeError> {
        self.core
            .decode_state(&snapshot.core)
            .map_err(|e| StoreError::Corrupt(format!("the snapshot's core state: {e}")))?;
        self.last_clock = snapshot.clock;
        self.voted_max = snapshot.voted_max;
        self.delivered_requests = snapshot.delivered_requests;
        let abc = self.core.abc();
        let next = abc.next_epoch();
        self.last_delivered = next.checked_sub(1);
        self.agreed_time = abc.agreed_time();
        self.pending = abc.queued_keys().collect();
        let mut from = next.saturating_sub(self.limits.ordered_epochs_max);
        while from < next {
            let page = self.store.batches(from, 512)?;
            let Some(last) = page.last().map(|b| b.batch.epoch) else { break };
            for stored in page.into_iter().take_while(|b| b.batch.epoch < next) {
                self.remember_ordered(&stored.batch, stored.log);
            }
            from = last + 1;
        }
        self.recent.keep(snapshot.recent, next.saturating_sub(1));
        Ok(())
    }

    fn replay_chunk(&mut self, chunk: Vec<(u64, Event)>, recent: &mut Recent) {
        for (seq, event) in chunk {
            if let Event::Clock(now) = event {
                self.last_clock = now;
            }
            if let Event::Submit(request) = &event {
                self.pending.insert(request.key());
            }
            let mut effects = Effects::default();
            self.core.apply(seq, &event, &mut effects);
            let outgoing = std::mem::take(&mut effects.outgoing);
            self.note_votes(&outgoing);
            self.absorb(effects, true);
            recent.keep(outgoing, self.core.abc().next_epoch().saturating_sub(1));
        }
    }

    /// Run until `shutdown` turns true or the transport closes.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), NodeError> {
        let mut tick = tokio::time::interval(self.limits.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut arrivals = Vec::new();
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                event = self.transport.next_event() => match event {
                    Some(event) => arrivals.push(Arrival::Transport(event)),
                    None => break,
                },
                command = self.commands.recv() => match command {
                    Some(command) => arrivals.push(Arrival::Command(command)),
                    None => break,
                },
                _ = tick.tick() => arrivals.push(Arrival::Tick),
            }
            // Bounded in count and in bytes: a turn's frames are all in memory at once.
            let mut bytes = 0usize;
            while arrivals.len() < self.limits.turn_events_max && bytes < self.limits.turn_bytes_max {
                if let Some(Some(event)) = self.transport.next_event().now_or_never() {
                    if let TransportEvent::Frame { bytes: frame, .. } = &event {
                        bytes += frame.len();
                    }
                    arrivals.push(Arrival::Transport(event));
                } else if let Ok(command) = self.commands.try_recv() {
                    arrivals.push(Arrival::Command(command));
                } else {
                    break;
                }
            }
            self.turn(arrivals)?;
            if *shutdown.borrow() {
                break;
            }
        }
        // Write what is derived but not yet written (as part of a snapshot if nothing is under
        // way, so the next start is quick), and tell waiting clients.
        self.compact_if_due(true)?;
        let derived = std::mem::take(&mut self.derived);
        self.store.commit(&[], &derived)?;
        for (_, waiters) in self.waiters.drain() {
            for waiter in waiters {
                waiter.reply.ordered(Err(SubmitError::ShuttingDown));
            }
        }
        tracing::info!(index = self.our_index.0, "stopped");
        Ok(())
    }

    fn turn(&mut self, arrivals: Vec<Arrival>) -> Result<(), NodeError> {
        let mut events = Vec::new();
        let now = now_ms();
        let mut tick = false;
        for arrival in arrivals {
            match arrival {
                Arrival::Transport(event) => self.on_transport(event, &mut events),
                Arrival::Command(command) => self.on_command(command, &mut events),
                Arrival::Tick => tick = true,
            }
        }
        // A peer seen at far epochs is logged once per turn, at the highest.
        for (from, epoch) in std::mem::take(&mut self.heard) {
            events.push(Event::Heard { from, epoch });
        }
        // The clock is an input like any other: it is logged, so a replay sees the same readings.
        // Read it whenever something else is logged (proposals carry it) and on the timer.
        if now > self.last_clock && (!events.is_empty() || (tick && self.core.abc().queue_len() > 0)) {
            self.last_clock = now;
            events.insert(0, Event::Clock(now));
        }
        if tick {
            self.ticks += 1;
            self.send_flood();
            let abc = self.core.abc();
            let next = abc.next_epoch();
            // Epochs still run, and checkpoint epochs whose shares may still come (not too old).
            let stable = abc.stable_checkpoint().map(|c| c.epoch);
            self.ledger.retain(|epoch| {
                epoch >= next
                    || abc.runs_epoch(epoch)
                    || (stable.is_none_or(|s| epoch > s) && epoch + LEDGER_CHECKPOINT_EPOCHS >= next)
            });
            self.expire_waiters();
            self.update_metrics();
            self.ask_page();
            if self.join_epoch.is_none() && self.ticks.is_multiple_of(10) {
                for peer in self.quorum.nodes().filter(|p| *p != self.our_index) {
                    self.greet(peer);
                }
            }
        }
        self.turn_with(events)
    }

    fn turn_with(&mut self, events: Vec<Event>) -> Result<(), NodeError> {
        let derived = std::mem::take(&mut self.derived);
        let mut first_seq = 0;
        if !events.is_empty() || !derived.is_empty() {
            let started = Instant::now();
            first_seq = self.store.commit(&events, &derived)?;
            self.metrics.observe_commit(started.elapsed(), events.len());
            self.hand_batches(derived.batches);
        }
        self.take_join();
        let mut outgoing = Vec::new();
        let mut instance_outgoing = Vec::new();
        for (k, event) in events.iter().enumerate() {
            let mut effects = Effects::default();
            self.core.apply(first_seq + k as u64, event, &mut effects);
            outgoing.append(&mut effects.outgoing);
            instance_outgoing.append(&mut effects.instance_outgoing);
            self.absorb(effects, false);
        }
        self.events_since_base += events.len() as u64;
        self.recent.keep(outgoing.clone(), self.core.abc().next_epoch().saturating_sub(1));
        self.send_all(outgoing);
        self.send_instances(instance_outgoing);
        self.compact_if_due(false)?;
        Ok(())
    }

    /// Replace the log by a snapshot of the whole state once the log has grown past the limit (or,
    /// with `now`, whenever it holds anything): restarts then replay only what follows. Nothing
    /// needs to be quiescent: the snapshot holds the core's whole state, every vote sent and
    /// counted included, and the messages of the epochs still running (sent again after a
    /// restart, as a replay would). Not while joining: the votes held back until the join epoch
    /// is durable are outside the core.
    fn compact_if_due(&mut self, now: bool) -> Result<(), NodeError> {
        if self.events_since_base == 0 || (!now && self.events_since_base < self.limits.compact_events) {
            return Ok(());
        }
        if self.join_epoch.is_none() || self.join_decided.is_some() {
            return Ok(());
        }
        let started = Instant::now();
        let snapshot = Snapshot {
            seq: 0,
            clock: self.last_clock,
            voted_max: self.voted_max,
            delivered_requests: self.delivered_requests,
            core: self.core.encode_state(),
            recent: self.recent.messages(),
        };
        let derived = std::mem::take(&mut self.derived);
        self.store.compact(snapshot, &derived)?;
        self.hand_batches(derived.batches);
        tracing::debug!(events = self.events_since_base, took = ?started.elapsed(), "compacted the log");
        self.events_since_base = 0;
        Ok(())
    }

    fn on_transport(&mut self, event: TransportEvent, events: &mut Vec<Event>) {
        match event {
            TransportEvent::Frame { from, bytes } => {
                if !self.quorum.contains(from) || from == self.our_index {
                    return;
                }
                match bytes.split_first() {
                    Some((&FRAME_MESSAGE, body)) => self.on_message(from, body, events),
                    Some((&FRAME_HELLO, body)) => match Hello::decode(body) {
                        Some(hello) => self.on_hello(from, hello),
                        None => self.fault(from, "undecodable"),
                    },
                    Some((&FRAME_PAGE_REQUEST, body)) => match PageRequest::from_bytes(body) {
                        Ok(request) => self.answer_page(from, request),
                        Err(_) => self.fault(from, "undecodable"),
                    },
                    Some((&FRAME_PAGE, body)) => match Page::from_bytes(body) {
                        Ok(page) => self.on_page(from, page),
                        Err(_) => self.fault(from, "undecodable"),
                    },
                    Some((&FRAME_INSTANCE, body)) => match instances::Message::from_bytes(body) {
                        Ok(_) => events.push(Event::InstanceFrame { from, bytes: body.to_vec() }),
                        Err(_) => self.fault(from, "undecodable"),
                    },
                    Some((&FRAME_SERVICE, body)) => {
                        if let Some(service) = &self.service {
                            service(ServiceEvent::Frame { from, bytes: body.to_vec() });
                        }
                    }
                    _ => self.fault(from, "undecodable"),
                }
            }
            TransportEvent::Connected(peer) => {
                self.greet(peer);
                self.metrics.set_connected(peer, true);
            }
            TransportEvent::Disconnected(peer) => self.metrics.set_connected(peer, false),
            TransportEvent::Flooding { peer, dropped } => {
                tracing::warn!(peer = peer.0, dropped, "peer sends faster than its allowance");
                self.fault(peer, "flooding");
            }
        }
    }

    /// A peer's protocol message: logged only if it decodes within the epochs' bounds, passes the
    /// core's cheap checks, and is the first of its kind from this peer (see [`crate::admission`]).
    /// What is not logged could have changed nothing but the faults, which are recorded here.
    fn on_message(&mut self, from: NodeIndex, body: &[u8], events: &mut Vec<Event>) {
        let Ok(message) = self.core.abc().decode_message(body) else {
            self.fault(from, "undecodable");
            return;
        };
        match self.core.abc().admissible(from, &message) {
            Admission::Handle => match self.ledger.admit(from, &message, body, Instant::now()) {
                Verdict::Log => events.push(Event::Frame { from, bytes: body.to_vec() }),
                Verdict::Duplicate => {}
                Verdict::Equivocation => {
                    if let Some(count) = self.equivocations.get_mut(from.0 as usize) {
                        *count += 1;
                    }
                    self.fault(from, "equivocation");
                }
                Verdict::OverBudget => self.fault(from, "over_budget"),
            },
            Admission::Ignore => {}
            Admission::Heard(epoch) => {
                let heard = self.heard.entry(from).or_insert(epoch);
                *heard = (*heard).max(epoch);
            }
            Admission::Fault(kind) => self.fault(from, fault_name(&kind)),
        }
    }

    /// Fault injection: this tick's share of the flood, if one runs.
    fn send_flood(&mut self) {
        let Some(flood) = &mut self.flood else { return };
        if !flood.is_active(Instant::now()) {
            tracing::info!(index = self.our_index.0, "the flood is over");
            self.flood = None;
            return;
        }
        for (peer, frame) in flood.frames(self.core.abc(), self.quorum, self.our_index, FRAME_MESSAGE) {
            self.transport.send(peer, frame);
        }
    }

    /// Ask a peer (in turn) for the next page of the backfill, again after 2 s without an answer.
    fn ask_page(&mut self) {
        if self.backfill_hold.is_some_and(|until| Instant::now() < until) {
            return;
        }
        let Some(backfill) = &self.backfill else { return };
        if self.backfill_asked.is_some_and(|(_, at)| at.elapsed() < Duration::from_secs(2)) {
            return;
        }
        let peers: Vec<NodeIndex> = self.quorum.nodes().filter(|p| *p != self.our_index).collect();
        let Some(&peer) = peers.get(self.backfill_turn as usize % peers.len().max(1)) else { return };
        self.backfill_turn = self.backfill_turn.wrapping_add(1);
        let mut frame = vec![FRAME_PAGE_REQUEST];
        backfill.next_request().encode(&mut frame);
        self.transport.send(peer, frame.into());
        self.backfill_asked = Some((peer, Instant::now()));
    }

    /// Answer a page request from what we hold (at most one answer per peer per 100 ms).
    fn answer_page(&mut self, from: NodeIndex, request: PageRequest) {
        if request.from > request.to || request.to - request.from >= PAGE_BATCHES_MAX {
            self.fault(from, "too_long");
            return;
        }
        if self.pages_answered.get(&from).is_some_and(|at| at.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.pages_answered.insert(from, Instant::now());
        let count = (request.to - request.from + 1) as usize;
        let Ok(batches) = self.store.batches(request.from, count) else { return };
        if batches.len() != count || batches.last().map(|b| b.batch.epoch) != Some(request.to) {
            return; // We do not hold all of it; another peer will answer.
        }
        let before = if request.from == 0 {
            self.genesis
        } else {
            match self.store.batch(request.from - 1) {
                Ok(Some(previous)) => previous.log,
                _ => return,
            }
        };
        let page = fit_page(before, batches);
        let mut frame = vec![FRAME_PAGE];
        page.encode(&mut frame);
        self.transport.send(from, frame.into());
    }

    fn on_page(&mut self, from: NodeIndex, page: Page) {
        let Some(backfill) = &mut self.backfill else { return };
        if page.batches.last().map(|b| b.batch.epoch) != Some(backfill.high) {
            return; // An answer to an earlier request.
        }
        match backfill.accept(&page, &self.genesis) {
            Ok((batches, done)) => {
                let fetched = batches.len();
                self.derived.batches.extend(batches);
                self.backfill_asked = None;
                if done {
                    let low = backfill.low;
                    self.backfill = None;
                    self.derived.backfill = Some(None);
                    let first = self.log_start(low);
                    self.first_epoch = Some(first);
                    self.derived.first_epoch = Some(first);
                    tracing::info!(index = self.our_index.0, from_epoch = first, "the log is complete again");
                } else {
                    self.derived.backfill = Some(Some(backfill.clone()));
                    tracing::debug!(peer = from.0, fetched, "backfilled a page");
                }
                // Ask for the next page at once.
                self.ask_page();
            }
            Err(reason) => {
                tracing::warn!(peer = from.0, reason, "a backfill page does not verify");
                self.fault(from, "invalid_page");
            }
        }
    }

    fn greet(&self, peer: NodeIndex) {
        self.transport.send(peer, self.hello().encode().into());
    }

    fn on_hello(&mut self, from: NodeIndex, hello: Hello) {
        if hello.answer_me {
            let answer = Hello { answer_me: false, ..self.hello() };
            self.transport.send(from, answer.encode().into());
        }
        self.hellos.insert(from, hello);
        if self.join_epoch.is_some() || self.join_decided.is_some() {
            return;
        }
        let needed = (self.quorum.n() - self.quorum.t()).saturating_sub(1) as usize;
        if self.hellos.len() < needed {
            return;
        }
        let join = if self.hellos.values().all(|h| h.next_epoch == 0) {
            0
        } else {
            let highest = self.hellos.values().map(|h| h.voted_max.unwrap_or(0).max(h.next_epoch)).max().unwrap_or(0);
            highest + self.epochs_in_flight + 1
        };
        tracing::info!(index = self.our_index.0, join_epoch = join, "joining: votes from this epoch on");
        self.join_decided = Some(join);
        self.derived.join_epoch = Some(join);
    }

    fn hello(&self) -> Hello {
        Hello {
            next_epoch: self.core.abc().next_epoch(),
            voted_max: self.voted_max,
            answer_me: self.join_epoch.is_none(),
        }
    }

    /// The join epoch is durable now: take it, and send the held votes it allows.
    fn take_join(&mut self) {
        let Some(join) = self.join_decided.take() else { return };
        self.join_epoch = Some(join);
        let held: Vec<_> = self.held.drain(..).collect();
        let allowed: Vec<_> =
            held.into_iter().filter(|m| message_epoch(&m.message).is_some_and(|e| e >= join)).collect();
        tracing::info!(index = self.our_index.0, join_epoch = join, released = allowed.len(), "joined");
        self.send_all(allowed);
    }

    fn on_command(&mut self, command: Command, events: &mut Vec<Event>) {
        match command {
            Command::Submit { request, reply } => {
                if request.payload.len() > self.limits.payload_len_max {
                    reply.ordered(Err(SubmitError::Invalid(format!(
                        "payload of {} bytes is above the bound of {}",
                        request.payload.len(),
                        self.limits.payload_len_max
                    ))));
                    return;
                }
                let key = request.key();
                if let Some(ordered) = self.ordered.get(&key) {
                    reply.ordered(Ok(ordered.clone()));
                    return;
                }
                if self.core.abc().is_executed(&key) {
                    reply.ordered(Err(SubmitError::AlreadyOrdered));
                    return;
                }
                if self.waiting >= self.limits.waiting_max {
                    reply.ordered(Err(SubmitError::Overloaded(format!(
                        "{} submissions are waiting at this replica",
                        self.waiting
                    ))));
                    return;
                }
                self.waiting += 1;
                self.waiters.entry(key).or_default().push(Waiter { reply, since: Instant::now() });
                if self.pending.insert(key) {
                    events.push(Event::Submit(request));
                }
            }
            Command::Lookup { key, reply } => {
                let answer = match self.ordered.get(&key) {
                    Some(ordered) => Lookup::Ordered(ordered.clone()),
                    None if self.pending.contains(&key) => Lookup::Pending,
                    None => Lookup::Unknown,
                };
                let _ = reply.send(answer);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Send { to, frame } => {
                let frame: Arc<[u8]> = frame.into();
                match to {
                    Some(peer) if peer != self.our_index => self.transport.send(peer, frame),
                    Some(_) => {}
                    None => {
                        for peer in self.quorum.nodes().filter(|p| *p != self.our_index) {
                            self.transport.send(peer, Arc::clone(&frame));
                        }
                    }
                }
            }
            Command::Agree { instance, vote } => events.push(Event::Agree { instance, vote }),
            Command::Fault { peer, kind } => {
                if kind == fides_types::FaultKind::Equivocation {
                    if let Some(count) = self.equivocations.get_mut(peer.0 as usize) {
                        *count += 1;
                    }
                }
                self.fault(peer, fault_name(&kind));
            }
            Command::BackfillFloor { epoch } => self.on_backfill_floor(epoch),
            Command::Log { from, max, reply } => {
                let first = self.first_epoch.unwrap_or(0);
                // At most 512 batches and about 3 MiB (gRPC clients refuse messages over 4 MiB by
                // default); always at least one batch, so that paging makes progress.
                let answer = self
                    .store
                    .batches(from.max(first), max.min(512))
                    .map(|batches| {
                        let mut bytes = 0usize;
                        let batches = batches
                            .into_iter()
                            .enumerate()
                            .take_while(|(k, b)| {
                                bytes += b.batch.requests.iter().map(|r| r.payload.len() + 32).sum::<usize>() + 64;
                                *k == 0 || bytes <= 3 * 1024 * 1024
                            })
                            .map(|(_, b)| b)
                            .collect();
                        LogPage { batches, next_epoch: self.core.abc().next_epoch(), first_epoch: first }
                    })
                    .map_err(|e| e.to_string());
                let _ = reply.send(answer);
            }
        }
    }

    /// Send the agreement instances' messages (instance messages sent before a crash are not
    /// kept: a restart's `Recover` makes each running instance send its round again).
    fn send_instances(&mut self, outgoing: Vec<Outgoing<instances::Message>>) {
        for message in outgoing {
            let mut frame = vec![FRAME_INSTANCE];
            message.message.encode(&mut frame);
            let frame: Arc<[u8]> = frame.into();
            match message.target {
                Target::All => {
                    for peer in self.quorum.nodes().filter(|p| *p != self.our_index) {
                        self.transport.send(peer, Arc::clone(&frame));
                    }
                }
                Target::Node(peer) => self.transport.send(peer, frame),
            }
        }
    }

    fn absorb(&mut self, effects: Effects, replaying: bool) {
        for decided in effects.decided {
            match &self.decided.0 {
                Some(sink) => sink(decided),
                None => self.decided.1.push(decided),
            }
        }
        for (instance, error) in effects.instance_refused {
            match error {
                // The host asks again after a restart for the votes it may not have handed over.
                instances::Error::AlreadyStarted(_) => tracing::debug!(?instance, "an agreement instance runs already"),
                error => tracing::warn!(?instance, %error, "an agreement instance was refused"),
            }
        }
        for fault in &effects.faults {
            if fault.kind == fides_types::FaultKind::Equivocation {
                if let Some(count) = self.equivocations.get_mut(fault.node.0 as usize) {
                    *count += 1;
                }
            }
            self.fault(fault.node, fault_name(&fault.kind));
        }
        for checkpoint in effects.installs {
            self.on_install(&checkpoint, replaying);
        }
        for (batch, log) in effects.batches {
            self.on_batch(batch, log, replaying);
        }
        if let Some(checkpoint) = effects.checkpoints.into_iter().last() {
            if !replaying {
                tracing::info!(epoch = checkpoint.epoch, "checkpoint stable");
            }
            self.derived.checkpoint = Some(checkpoint);
        }
        for (key, error) in effects.refused {
            self.pending.remove(&key);
            let error = match error {
                AbcError::QueueFull(_) => SubmitError::Overloaded(error.to_string()),
                _ => SubmitError::Invalid(error.to_string()),
            };
            self.answer(key, Err(error));
        }
    }

    fn on_install(&mut self, checkpoint: &Checkpoint, replaying: bool) {
        if !replaying {
            tracing::info!(epoch = checkpoint.epoch, "caught up: installed a checkpoint");
        }
        self.agreed_time = checkpoint.time;
        // Batches up to the checkpoint were skipped here (some, at least): the log this replica
        // serves starts after it.
        self.first_epoch = Some(checkpoint.epoch + 1);
        if !replaying {
            self.derived.first_epoch = Some(checkpoint.epoch + 1);
        }
        // The batches up to the checkpoint that we never delivered: fetch them, verified.
        let missing_from = self.last_delivered.map_or(0, |e| e + 1);
        if missing_from <= checkpoint.epoch {
            let low = self.backfill.as_ref().map_or(missing_from, |b| b.low.min(missing_from));
            let backfill = Backfill { low, high: checkpoint.epoch, trusted: checkpoint.log };
            if !replaying {
                self.derived.backfill = Some(Some(backfill.clone()));
            }
            self.backfill = Some(backfill);
            self.backfill_asked = None;
            self.hold_backfill();
        }
        self.last_delivered = Some(self.last_delivered.map_or(checkpoint.epoch, |e| e.max(checkpoint.epoch)));
        self.derived.checkpoint = Some(checkpoint.clone());
    }

    fn on_batch(&mut self, batch: Batch, log: [u8; 32], replaying: bool) {
        let epoch = batch.epoch;
        self.last_delivered = Some(epoch);
        self.agreed_time = batch.time;
        self.delivered_requests += batch.requests.len() as u64;
        if self.first_epoch.is_none() {
            self.first_epoch = Some(epoch);
        }
        for (key, ordered) in self.remember_ordered(&batch, log) {
            self.pending.remove(&key);
            self.answer(key, Ok(ordered));
        }
        if !replaying {
            self.metrics.on_batch(&batch);
        }
        // A replay rewrites only what a crash may have kept from being written.
        let written = replaying && self.store.batch(epoch).ok().flatten().is_some_and(|stored| stored.log == log);
        if !written {
            self.derived.batches.push(StoredBatch { batch, log });
        }
    }

    /// Keep the answers of `batch`'s requests (for the last `ordered_epochs_max` epochs), and
    /// return them.
    fn remember_ordered(&mut self, batch: &Batch, log: [u8; 32]) -> Vec<(RequestKey, Ordered)> {
        let epoch = batch.epoch;
        let mut answers = Vec::with_capacity(batch.requests.len());
        for (index, request) in batch.requests.iter().enumerate() {
            let key = request.key();
            let ordered = Ordered {
                client: request.client,
                id: request.id,
                epoch,
                index: index as u32,
                time_ms: batch.time,
                log_digest: log,
                payload_digest: key.2,
            };
            self.ordered.insert(key, ordered.clone());
            answers.push((key, ordered));
        }
        self.ordered_by_epoch.push_back((epoch, answers.iter().map(|(key, _)| *key).collect()));
        while self.ordered_by_epoch.front().is_some_and(|(e, _)| e + self.limits.ordered_epochs_max <= epoch) {
            if let Some((_, keys)) = self.ordered_by_epoch.pop_front() {
                for key in keys {
                    self.ordered.remove(&key);
                }
            }
        }
        answers
    }

    fn answer(&mut self, key: RequestKey, answer: Result<Ordered, SubmitError>) {
        if let Some(waiters) = self.waiters.remove(&key) {
            self.waiting = self.waiting.saturating_sub(waiters.len());
            for waiter in waiters {
                self.metrics.observe_submit(waiter.since.elapsed());
                waiter.reply.ordered(answer.clone());
            }
        }
    }

    fn expire_waiters(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        self.waiters.retain(|_, waiters| {
            let mut kept = Vec::with_capacity(waiters.len());
            for waiter in waiters.drain(..) {
                if waiter.since + self.limits.submit_wait > now && !waiter.reply.is_closed() {
                    kept.push(waiter);
                } else {
                    expired.push(waiter);
                }
            }
            *waiters = kept;
            !waiters.is_empty()
        });
        self.waiting = self.waiting.saturating_sub(expired.len());
        for waiter in expired {
            waiter.reply.ordered(Err(SubmitError::TimedOut(self.limits.submit_wait)));
        }
    }

    fn note_votes(&mut self, outgoing: &[Outgoing<Message>]) {
        for message in outgoing {
            if is_vote(&message.message) {
                if let Some(epoch) = message_epoch(&message.message) {
                    self.voted_max = Some(self.voted_max.map_or(epoch, |v| v.max(epoch)));
                }
            }
        }
    }

    /// Whether we may send `message` (a replica that lost its data stays silent in the common
    /// subsets of epochs it may have voted in).
    fn may_send(&self, message: &Message) -> bool {
        if !is_vote(message) {
            return true;
        }
        match (self.join_epoch, message_epoch(message)) {
            (Some(join), Some(epoch)) => epoch >= join,
            (None, _) => false,
            (Some(_), None) => true,
        }
    }

    fn send_all(&mut self, outgoing: Vec<Outgoing<Message>>) {
        for message in outgoing {
            if is_vote(&message.message) && self.join_epoch.is_none() {
                if self.held.len() >= HELD_MAX {
                    self.held.pop_front();
                }
                self.held.push_back(message);
                continue;
            }
            if !self.may_send(&message.message) {
                continue;
            }
            if is_vote(&message.message) {
                if let Some(epoch) = message_epoch(&message.message) {
                    self.voted_max = Some(self.voted_max.map_or(epoch, |v| v.max(epoch)));
                }
            }
            let mut frame = Vec::with_capacity(64);
            frame.push(FRAME_MESSAGE);
            message.message.encode(&mut frame);
            let frame: Arc<[u8]> = frame.into();
            match message.target {
                Target::All => {
                    for peer in self.quorum.nodes().filter(|p| *p != self.our_index) {
                        self.transport.send(peer, Arc::clone(&frame));
                    }
                }
                Target::Node(peer) => self.transport.send(peer, frame),
            }
        }
    }

    fn fault(&mut self, peer: NodeIndex, kind: &'static str) {
        if let Some(count) = self.faults.get_mut(peer.0 as usize) {
            *count += 1;
        }
        self.metrics.on_fault(peer, kind);
    }

    fn status(&self) -> Status {
        let counters = self.transport.counters();
        let abc = self.core.abc();
        Status {
            index: self.our_index.0,
            n: self.quorum.n(),
            t: self.quorum.t(),
            next_epoch: abc.next_epoch(),
            agreed_time_ms: self.agreed_time,
            queue_len: abc.queue_len() as u64,
            delivered_requests: self.delivered_requests,
            log_digest: abc.log_digest(),
            checkpoint_epoch: abc.stable_checkpoint().map(|c| c.epoch),
            peers: self
                .quorum
                .nodes()
                .map(|p| PeerStatus {
                    counters: counters.get(p.0 as usize).cloned().unwrap_or_default(),
                    faults: self.faults.get(p.0 as usize).copied().unwrap_or(0),
                    equivocations: self.equivocations.get(p.0 as usize).copied().unwrap_or(0),
                })
                .collect(),
            wal_events: self.events_since_base,
            uptime_s: self.started.elapsed().as_secs(),
            joining: self.join_epoch.is_none(),
            log_first_epoch: self.first_epoch.unwrap_or(0),
        }
    }

    fn update_metrics(&self) {
        let abc = self.core.abc();
        self.metrics.set_state(abc.next_epoch(), abc.queue_len() as u64, self.waiting as u64, self.events_since_base);
        self.metrics.set_peers(&self.transport.counters());
    }
}

enum Arrival {
    Transport(TransportEvent),
    Command(Command),
    Tick,
}

fn fault_name(kind: &fides_types::FaultKind) -> &'static str {
    use fides_types::FaultKind::*;
    match kind {
        Undecodable => "undecodable",
        WrongInstance => "wrong_instance",
        UnknownSender => "unknown_sender",
        RoundTooFar => "round_too_far",
        Equivocation => "equivocation",
        InvalidCoinShare => "invalid_coin_share",
        InvalidJustification => "invalid_justification",
        UnexpectedJustification => "unexpected_justification",
        EmptySet => "empty_set",
        NotProposer => "not_proposer",
        InvalidProof => "invalid_proof",
        TooLong => "too_long",
        InvalidCiphertext => "invalid_ciphertext",
        InvalidDecryptionShare => "invalid_decryption_share",
        InvalidCheckpoint => "invalid_checkpoint",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_and_refuses_bad_bytes() {
        for hello in [
            Hello { next_epoch: 5, voted_max: Some(7), answer_me: true },
            Hello { next_epoch: 0, voted_max: None, answer_me: false },
        ] {
            let bytes = hello.encode();
            assert_eq!(Hello::decode(&bytes[1..]), Some(hello));
            assert!(Hello::decode(&bytes[1..bytes.len() - 1]).is_none());
        }
        let good = Hello { next_epoch: 1, voted_max: None, answer_me: false }.encode();
        for position in [9, 18] {
            let mut bad = good.clone();
            bad[position] = 2;
            assert!(Hello::decode(&bad[1..]).is_none(), "flag byte {position} of 2 refused");
        }
    }
}
