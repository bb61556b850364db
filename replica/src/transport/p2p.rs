//! Frames between replicas over libp2p: TCP, Noise, yamux, one stream protocol of our own, and a
//! reliable link on top (sequence numbers, acknowledgements, retransmission).
//!
//! Every replica's libp2p identity is its dealt Ed25519 key, so the Noise handshake authenticates
//! the peer and its `PeerId` tells which replica it is. Connections from any other key are denied
//! as soon as the handshake names them.
//!
//! Per peer:
//! - an outbound task owns the peer's outbox: every frame queued for the peer gets the next
//!   sequence number and stays there until the peer acknowledges it (or the outbox's bounds push it
//!   out). The task dials the peer (backing off between attempts), opens one long-lived stream of
//!   [`PROTOCOL`], waits for the peer's one-byte [`STREAM_READY`], sends our incarnation (a random
//!   number drawn when the transport starts) and reads the peer's first acknowledgement; then it
//!   writes frames from the first one the peer has not acknowledged, each as its sequence number,
//!   the first sequence number still in the outbox and its length (`u64`, `u64`, `u32`, little
//!   endian) and the bytes. When the stream breaks it opens another, forever, and resends from the
//!   first unacknowledged frame;
//! - every stream the peer opens to us is read by a reader task, which first answers
//!   [`STREAM_READY`], reads the incarnation (a new one means the peer restarted: expect anything
//!   from it afresh), then hands up each frame whose sequence number is the next one expected,
//!   drops duplicates, drops frames after a gap (the sender resends), and writes the next sequence
//!   number it expects back on the same stream as a cumulative acknowledgement. It bounds frame
//!   lengths and rate-limits the peer with a token bucket.
//!
//! The sender goes back to the first unacknowledged frame when an acknowledgement reports a gap
//! (once per gap), or when no acknowledgement came for a retransmission timeout
//! (doubling while none comes). Over TCP a stream loses nothing while it lives, so in production
//! frames are resent only after a stream breaks; the in-stream recovery serves the fault switch
//! [`TransportConfig::fault_drop_frames_percent`], which loses frames below this layer.
//!
//! What a peer can do to us through the link is bounded: an acknowledgement of frames we never
//! wrote counts only up to what we wrote (and only loses that peer its own frames), a frame far
//! ahead of the expected one is dropped as after a gap, a new incarnation only resets what we
//! expect from that peer; the per-peer state is a few numbers whatever it sends.
//!
//! Both sides open their own outbound stream to each other: no tie-breaking between dialers, and a
//! direction never waits on the other one. The swarm itself runs in a task of its own; dropping the
//! [`P2pTransport`] stops every task.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fides_types::NodeIndex;
use futures::io::BufWriter;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::allow_block_list::{self, AllowedPeers};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::identity::{ed25519, Keypair, PublicKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, ListenError, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol, Swarm, SwarmBuilder};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::{PeerCounters, Transport, TransportConfig, TransportEvent};

/// The stream protocol that carries frames.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/fides/frames/2");

/// The byte a reader writes when it takes a stream. A stream can be negotiated and still be
/// dropped before any reader has it (when streams arrive faster than they are taken); frames
/// written into it would be lost, so the opener writes none until it has read this.
pub const STREAM_READY: u8 = 1;

/// Events waiting for the driver; past this, readers wait (backpressure onto their streams).
const EVENTS_CAPACITY: usize = 4096;

/// Connections between replicas are meant to stay up; the streams on them keep them busy anyway.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// How long one dial or one stream negotiation may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Flooding is reported at most this often per peer, so the report cannot flood the driver.
const FLOODING_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Connections still in their handshake; bounds what unauthenticated strangers can tie up.
const PENDING_INCOMING_MAX: u32 = 64;

/// Small frames are gathered into writes of up to this size; larger ones bypass the buffer.
const WRITE_BUFFER_LEN: usize = 64 * 1024;

/// Memory reserved for a frame before its bytes arrive: a length prefix alone must not make us
/// allocate the maximum.
const READ_RESERVE_MAX: usize = 1024 * 1024;

/// The shortest redial delay, so a zero in the configuration cannot make a task spin.
const REDIAL_DELAY_FLOOR: Duration = Duration::from_millis(1);

/// The first retransmission timeout: written frames unacknowledged this long are written again.
const RETRANSMIT_TIMEOUT_MIN: Duration = Duration::from_millis(200);

/// The longest retransmission timeout; it doubles up to this while no acknowledgement comes, so a
/// slow link carrying a large frame is not flooded with copies of it.
const RETRANSMIT_TIMEOUT_MAX: Duration = Duration::from_secs(10);

/// A frame's header on the wire: sequence number, first sequence number held, length.
const FRAME_HEADER_LEN: usize = 8 + 8 + 4;

/// One replica of the cluster, as the transport needs to know it.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Its index; the list passed to [`P2pTransport::start`] is in index order.
    pub index: NodeIndex,
    /// Its Ed25519 public key: the identity its connections must authenticate as.
    pub identity: [u8; 32],
    /// Where it listens: `HOST:PORT`, with an IPv4 address, a bracketed IPv6 address or a DNS name.
    pub address: String,
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// Our index is not among the peers.
    #[error("our index {our_index} is not among the {n} peers")]
    OurIndex {
        /// Our index.
        our_index: NodeIndex,
        /// How many peers were given.
        n: usize,
    },
    /// The peers are not listed in index order.
    #[error("the peer at position {position} has index {index}; peers must be listed in index order")]
    PeerOrder {
        /// Its position in the list.
        position: usize,
        /// The index it claims.
        index: NodeIndex,
    },
    /// A peer's identity is not an Ed25519 public key.
    #[error("peer {index}: the identity is not an Ed25519 public key: {reason}")]
    Identity {
        /// The peer.
        index: NodeIndex,
        /// What is wrong with it.
        reason: String,
    },
    /// Two peers share an identity, so their connections could not be told apart.
    #[error("peers {first} and {second} have the same identity")]
    DuplicateIdentity {
        /// The first of them.
        first: NodeIndex,
        /// The second.
        second: NodeIndex,
    },
    /// Our secret key is not a valid Ed25519 secret.
    #[error("our secret key is not an Ed25519 secret: {0}")]
    Secret(String),
    /// Our secret key does not belong to the identity listed for us.
    #[error("our secret key does not match the identity of peer {0}")]
    IdentityMismatch(NodeIndex),
    /// A peer's address is not `HOST:PORT`.
    #[error("peer {index}: the address {address:?} is not HOST:PORT")]
    Address {
        /// The peer.
        index: NodeIndex,
        /// The address given.
        address: String,
    },
    /// libp2p could not set up the transport stack.
    #[error("setting up libp2p: {0}")]
    Setup(String),
    /// We could not listen on the given address.
    #[error("listening on {address}: {reason}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why not.
        reason: String,
    },
}

/// The replicas of a cluster joined by libp2p: implements [`Transport`].
///
/// Dropping it stops the swarm and every task it started.
pub struct P2pTransport {
    our_index: NodeIndex,
    local_peer_id: PeerId,
    shared: Arc<Shared>,
    events: mpsc::Receiver<TransportEvent>,
    // Never sent on: dropping it closes the channel, which every task watches to stop.
    _shutdown: watch::Sender<()>,
}

impl P2pTransport {
    /// Listen on `listen` and start reaching every other replica of `peers` (all `n` replicas,
    /// ourselves included, in index order), authenticating as `identity_secret` (an Ed25519
    /// secret seed, whose public key must be the identity listed for `our_index`).
    ///
    /// Must be called within a tokio runtime: the tasks run on it. Fails on an inconsistent peer
    /// list or if `listen` cannot be bound; peers being unreachable is not an error.
    pub async fn start(
        our_index: NodeIndex,
        identity_secret: [u8; 32],
        peers: Vec<PeerInfo>,
        listen: SocketAddr,
        config: TransportConfig,
    ) -> Result<P2pTransport, P2pError> {
        let n = peers.len();
        if our_index.as_usize() >= n {
            return Err(P2pError::OurIndex { our_index, n });
        }
        let mut peer_ids = Vec::with_capacity(n);
        let mut addresses = Vec::with_capacity(n);
        let mut index_of = HashMap::with_capacity(n);
        for (position, peer) in peers.iter().enumerate() {
            if peer.index.as_usize() != position {
                return Err(P2pError::PeerOrder { position, index: peer.index });
            }
            let peer_id =
                peer_id_of(&peer.identity).map_err(|reason| P2pError::Identity { index: peer.index, reason })?;
            if let Some(first) = index_of.insert(peer_id, peer.index) {
                return Err(P2pError::DuplicateIdentity { first, second: peer.index });
            }
            peer_ids.push(peer_id);
            // Our own address is not dialled (we listen on `listen`), so it need not parse.
            let address = if peer.index == our_index {
                None
            } else {
                let parsed = parse_address(&peer.address)
                    .ok_or_else(|| P2pError::Address { index: peer.index, address: peer.address.clone() })?;
                Some(parsed)
            };
            addresses.push(address);
        }

        // The keypair constructor wipes the bytes it is given; give it a copy.
        let mut seed = identity_secret;
        let keypair = Keypair::ed25519_from_bytes(&mut seed).map_err(|e| P2pError::Secret(e.to_string()))?;
        let local_peer_id = keypair.public().to_peer_id();
        if peer_ids.get(our_index.as_usize()) != Some(&local_peer_id) {
            return Err(P2pError::IdentityMismatch(our_index));
        }

        let mut allowed = allow_block_list::Behaviour::<AllowedPeers>::default();
        for (index, peer_id) in peer_ids.iter().enumerate() {
            if index != our_index.as_usize() {
                allowed.allow_peer(*peer_id);
            }
        }
        let streams = libp2p_stream::Behaviour::new();
        let mut control = streams.new_control();
        let incoming = control.accept(PROTOCOL).map_err(|e| P2pError::Setup(e.to_string()))?;
        let behaviour = Behaviour {
            limits: connection_limits::Behaviour::new(
                ConnectionLimits::default().with_max_pending_incoming(Some(PENDING_INCOMING_MAX)),
            ),
            allowed,
            streams,
        };
        let needs_dns = addresses.iter().flatten().any(|a| matches!(a.iter().next(), Some(Protocol::Dns(_))));
        let mut swarm = build_swarm(keypair, behaviour, needs_dns)?;
        swarm
            .listen_on(Multiaddr::from(listen.ip()).with(Protocol::Tcp(listen.port())))
            .map_err(|e| P2pError::Listen { address: listen, reason: e.to_string() })?;

        let shared = Arc::new(Shared {
            our_index,
            incarnation: rand::random(),
            peers: (0..n).map(|i| PeerState::new(&config, our_index, NodeIndex(i as u32))).collect(),
            peer_ids,
            index_of,
            addresses,
            config,
        });
        let (shutdown_tx, shutdown) = watch::channel(());
        let (events_tx, events) = mpsc::channel(EVENTS_CAPACITY);
        let (dial_tx, dial_rx) = mpsc::unbounded_channel();

        spawn_until_shutdown(&shutdown, run_swarm(swarm, dial_rx, Arc::clone(&shared), events_tx.clone()));
        spawn_until_shutdown(&shutdown, accept_streams(incoming, Arc::clone(&shared), events_tx, shutdown.clone()));
        for index in 0..n {
            let peer = NodeIndex(index as u32);
            if peer != our_index {
                let outbound = run_outbound(peer, Arc::clone(&shared), control.clone(), dial_tx.clone());
                spawn_until_shutdown(&shutdown, outbound);
            }
        }
        info!(%our_index, %local_peer_id, %listen, "peer transport started");

        Ok(P2pTransport { our_index, local_peer_id, shared, events, _shutdown: shutdown_tx })
    }

    /// Our libp2p identity, derived from our Ed25519 key.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }
}

impl Transport for P2pTransport {
    fn send(&self, to: NodeIndex, frame: Arc<[u8]>) {
        if to == self.our_index {
            return;
        }
        let Some(peer) = self.shared.peers.get(to.as_usize()) else {
            return;
        };
        if frame.len() > self.shared.config.frame_len_max || u32::try_from(frame.len()).is_err() {
            warn!(peer = %to, len = frame.len(), "not sending a frame longer than the limit");
            peer.frames_dropped_out.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let dropped = lock(&peer.outbox).push(
            frame,
            self.shared.config.peer_queue_max.max(1),
            self.shared.config.peer_outbox_bytes_max,
        );
        if dropped > 0 {
            peer.frames_dropped_out.fetch_add(dropped, Ordering::Relaxed);
        }
        peer.ready.notify_one();
    }

    async fn next_event(&mut self) -> Option<TransportEvent> {
        self.events.recv().await
    }

    fn counters(&self) -> Vec<PeerCounters> {
        self.shared
            .peers
            .iter()
            .map(|peer| PeerCounters {
                connected: peer.connected.load(Ordering::Relaxed),
                frames_sent: peer.frames_sent.load(Ordering::Relaxed),
                frames_received: peer.frames_received.load(Ordering::Relaxed),
                frames_dropped_out: peer.frames_dropped_out.load(Ordering::Relaxed),
                frames_dropped_in: peer.frames_dropped_in.load(Ordering::Relaxed),
                frames_resent: peer.frames_resent.load(Ordering::Relaxed),
                queued: lock(&peer.outbox).frames.len() as u64,
            })
            .collect()
    }
}

/// The multiaddress of `HOST:PORT`: `/ip4/…/tcp/…`, `/ip6/…/tcp/…` (the address in brackets) or
/// `/dns/…/tcp/…`; `None` if it is none of these.
pub fn parse_address(address: &str) -> Option<Multiaddr> {
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Some(Multiaddr::from(socket.ip()).with(Protocol::Tcp(socket.port())));
    }
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    // An IP address that did not parse with its port is malformed, not a host name.
    if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
        return None;
    }
    let is_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    is_name.then(|| Multiaddr::empty().with(Protocol::Dns(host.to_owned().into())).with(Protocol::Tcp(port)))
}

/// The libp2p identity of an Ed25519 public key.
fn peer_id_of(identity: &[u8; 32]) -> Result<PeerId, String> {
    let key = ed25519::PublicKey::try_from_bytes(identity).map_err(|e| e.to_string())?;
    Ok(PublicKey::from(key).to_peer_id())
}

/// The swarm's behaviour: limits, then the allow list, then the frame streams. A connection one of
/// them denies never reaches the next.
#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    allowed: allow_block_list::Behaviour<AllowedPeers>,
    streams: libp2p_stream::Behaviour,
}

/// The swarm over TCP, Noise and yamux; with DNS resolution if some address needs it.
fn build_swarm(keypair: Keypair, behaviour: Behaviour, needs_dns: bool) -> Result<Swarm<Behaviour>, P2pError> {
    let tcp = || {
        SwarmBuilder::with_existing_identity(keypair.clone())
            .with_tokio()
            .with_tcp(libp2p::tcp::Config::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)
            .map_err(|e| P2pError::Setup(e.to_string()))
    };
    let swarm_config = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT);
    if needs_dns {
        // The resolver reads the system's configuration; without one, DNS names cannot be dialled,
        // which is better reported than made fatal for the peers given by address.
        match tcp()?.with_dns() {
            Ok(builder) => {
                let Ok(builder) = builder.with_behaviour(|_| behaviour);
                return Ok(builder.with_swarm_config(swarm_config).build());
            }
            Err(e) => warn!(error = %e, "no DNS resolver: peers given by name cannot be reached"),
        }
    }
    let Ok(builder) = tcp()?.with_behaviour(|_| behaviour);
    Ok(builder.with_swarm_config(swarm_config).build())
}

/// What the tasks share.
struct Shared {
    our_index: NodeIndex,
    /// Drawn when the transport starts and sent on every stream we open, so a peer can tell our
    /// sequence numbers started again.
    incarnation: u64,
    peers: Vec<PeerState>,
    peer_ids: Vec<PeerId>,
    index_of: HashMap<PeerId, NodeIndex>,
    /// Where to dial each peer; `None` for ourselves.
    addresses: Vec<Option<Multiaddr>>,
    config: TransportConfig,
}

/// One peer's outbox, what we expect from it, counters and inbound rate limit.
struct PeerState {
    outbox: Mutex<Outbox>,
    /// Wakes the outbound task when a frame is queued or it must go back and resend.
    ready: Notify,
    inbound: Mutex<Inbound>,
    /// The fault switch on our frames to this peer.
    loss: Mutex<Loss>,
    connected: AtomicBool,
    frames_sent: AtomicU64,
    frames_resent: AtomicU64,
    frames_received: AtomicU64,
    frames_dropped_out: AtomicU64,
    frames_dropped_in: AtomicU64,
    /// Kept across streams, so opening a new stream does not refill the bucket.
    rate: Mutex<RateLimit>,
}

impl PeerState {
    fn new(config: &TransportConfig, from: NodeIndex, to: NodeIndex) -> Self {
        PeerState {
            outbox: Mutex::new(Outbox::new()),
            ready: Notify::new(),
            inbound: Mutex::new(Inbound::default()),
            loss: Mutex::new(Loss::new(config.fault_drop_frames_percent, from, to)),
            connected: AtomicBool::new(false),
            frames_sent: AtomicU64::new(0),
            frames_resent: AtomicU64::new(0),
            frames_received: AtomicU64::new(0),
            frames_dropped_out: AtomicU64::new(0),
            frames_dropped_in: AtomicU64::new(0),
            rate: Mutex::new(RateLimit::new(config.peer_bytes_per_second, config.peer_burst_bytes)),
        }
    }
}

/// The frames for one peer that it has not acknowledged, kept across streams and reconnects, and
/// where the current stream is in them.
struct Outbox {
    /// The sequence number of `frames[0]`; every frame before it was acknowledged or given up.
    first_seq: u64,
    frames: VecDeque<Arc<[u8]>>,
    /// The bytes of `frames`.
    bytes: usize,
    /// The next frame to write on the current stream.
    cursor: u64,
    /// One past the highest sequence number ever written: acknowledgements count only up to it.
    written_end: u64,
    /// The peer's highest acknowledgement: the sequence number it expects next.
    acked: u64,
    /// When the oldest written, unacknowledged frame was written, acknowledged past or resent.
    progress_at: Instant,
    retransmit_timeout: Duration,
    /// The acknowledgement we last went back on, so that repeats of it (one per frame after the
    /// gap) go back once.
    rewound_for: Option<u64>,
}

impl Outbox {
    fn new() -> Self {
        Outbox {
            first_seq: 0,
            frames: VecDeque::new(),
            bytes: 0,
            cursor: 0,
            written_end: 0,
            acked: 0,
            progress_at: Instant::now(),
            retransmit_timeout: RETRANSMIT_TIMEOUT_MIN,
            rewound_for: None,
        }
    }

    /// Queue `frame`; past `frames_max` frames or `bytes_max` bytes the oldest are given up (the
    /// newest always stays). Returns how many were given up.
    fn push(&mut self, frame: Arc<[u8]>, frames_max: usize, bytes_max: usize) -> u64 {
        self.bytes += frame.len();
        self.frames.push_back(frame);
        let mut dropped = 0;
        while self.frames.len() > 1 && (self.frames.len() > frames_max || self.bytes > bytes_max) {
            if let Some(oldest) = self.frames.pop_front() {
                self.bytes -= oldest.len();
                self.first_seq += 1;
                dropped += 1;
            }
        }
        dropped
    }

    /// Whether frames were written that the peer has not acknowledged.
    fn outstanding(&self) -> bool {
        self.cursor > self.acked.max(self.first_seq)
    }

    /// A new stream, on which the peer said it expects `ack` next: write from there (or from the
    /// oldest frame held, if it expects one we gave up).
    fn start_stream(&mut self, ack: u64, now: Instant) {
        self.cursor = self.first_seq;
        self.rewound_for = None;
        self.retransmit_timeout = RETRANSMIT_TIMEOUT_MIN;
        self.progress_at = now;
        self.on_ack(ack, false, now);
        self.cursor = self.cursor.max(self.acked);
    }

    /// The next frame to write.
    fn next_to_write(&mut self, now: Instant) -> Option<Outgoing> {
        self.cursor = self.cursor.max(self.first_seq);
        let offset = usize::try_from(self.cursor - self.first_seq).ok()?;
        let frame = Arc::clone(self.frames.get(offset)?);
        if !self.outstanding() {
            self.progress_at = now;
        }
        let seq = self.cursor;
        self.cursor += 1;
        let resent = seq < self.written_end;
        self.written_end = self.written_end.max(self.cursor);
        Some(Outgoing { seq, first_held: self.first_seq, frame, resent })
    }

    /// The peer expects `ack` next. Forget what it has; if it saw a frame after a `gap`, the one it
    /// expects was lost: go back to it (once per gap). Returns whether the writer must go back.
    fn on_ack(&mut self, ack: u64, gap: bool, now: Instant) -> bool {
        // A peer cannot have what we never wrote: a larger number is a lie or a stale stream.
        let ack = ack.min(self.written_end);
        if ack > self.acked {
            self.acked = ack;
            while self.first_seq < ack {
                let Some(frame) = self.frames.pop_front() else { break };
                self.bytes -= frame.len();
                self.first_seq += 1;
            }
            self.cursor = self.cursor.max(ack);
            self.progress_at = now;
            self.retransmit_timeout = RETRANSMIT_TIMEOUT_MIN;
            self.rewound_for = None;
        }
        if gap && ack == self.acked && self.outstanding() && self.rewound_for != Some(ack) {
            self.rewind(now);
            self.rewound_for = Some(ack);
            return true;
        }
        false
    }

    /// When to write the unacknowledged frames again, if any are out.
    fn retransmit_at(&self) -> Option<Instant> {
        self.outstanding().then(|| self.progress_at + self.retransmit_timeout)
    }

    /// No acknowledgement came in time: write again from the first unacknowledged frame, and wait
    /// twice as long next time.
    fn on_retransmit_timeout(&mut self, now: Instant) {
        if self.retransmit_at().is_some_and(|at| now >= at) {
            self.rewind(now);
            self.retransmit_timeout = (self.retransmit_timeout * 2).min(RETRANSMIT_TIMEOUT_MAX);
        }
    }

    fn rewind(&mut self, now: Instant) {
        self.cursor = self.acked.max(self.first_seq);
        self.progress_at = now;
    }
}

/// A frame to write, as [`Outbox::next_to_write`] gives it.
struct Outgoing {
    seq: u64,
    /// The oldest frame the outbox holds: the receiver waits for none before it.
    first_held: u64,
    frame: Arc<[u8]>,
    /// Whether it was written before (on this stream or an earlier one).
    resent: bool,
}

/// What we expect from one peer.
#[derive(Default)]
struct Inbound {
    /// The peer's incarnation whose sequence numbers `expected` counts; `None` before its first
    /// stream.
    incarnation: Option<u64>,
    /// The next sequence number to hand up.
    expected: u64,
}

/// What a reader makes of a frame.
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// The next one: hand it up.
    Next,
    /// Already handed up (a resend).
    Duplicate,
    /// After a gap: one before it was lost; dropped, the sender resends from the gap.
    AfterGap,
}

impl Inbound {
    /// Take the frame `seq` from a sender whose oldest held frame is `first_held`: frames before
    /// that were given up by the sender and are not waited for.
    fn arrive(&mut self, seq: u64, first_held: u64) -> Arrival {
        self.expected = self.expected.max(first_held);
        if seq == self.expected {
            self.expected = self.expected.saturating_add(1);
            Arrival::Next
        } else if seq < self.expected {
            Arrival::Duplicate
        } else {
            Arrival::AfterGap
        }
    }
}

/// A token bucket over bytes, and the drops not yet reported.
struct RateLimit {
    bytes_per_second: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    unreported: u64,
    reported: Option<Instant>,
}

impl RateLimit {
    fn new(bytes_per_second: u64, burst_bytes: u64) -> Self {
        RateLimit {
            bytes_per_second: bytes_per_second as f64,
            burst: burst_bytes as f64,
            tokens: burst_bytes as f64,
            refilled: Instant::now(),
            unreported: 0,
            reported: None,
        }
    }

    /// Whether a frame of `len` bytes fits the budget (and takes it); a frame that does not is
    /// counted for the next report.
    fn admit(&mut self, len: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.bytes_per_second).min(self.burst);
        self.refilled = now;
        let cost = len as f64;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            self.unreported += 1;
            false
        }
    }

    /// The drops to report now, if any and if the last report is old enough.
    fn report(&mut self, now: Instant) -> Option<u64> {
        let due = self.reported.is_none_or(|at| now.saturating_duration_since(at) >= FLOODING_REPORT_INTERVAL);
        if self.unreported == 0 || !due {
            return None;
        }
        self.reported = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// A lock that survives a panicked holder: the data behind it (queues, counters) stays usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Run `task` until it ends or the transport is dropped (its shutdown sender closes).
fn spawn_until_shutdown<F>(shutdown: &watch::Receiver<()>, task: F) -> tokio::task::JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.changed() => {}
            () = task => {}
        }
    })
}

/// An outbound task's request to connect to a peer; answered once connected or failed.
struct DialRequest {
    peer: NodeIndex,
    done: oneshot::Sender<Result<(), String>>,
}

/// Drive the swarm: dial on request, report connections coming and going.
async fn run_swarm(
    mut swarm: Swarm<Behaviour>,
    mut dials: mpsc::UnboundedReceiver<DialRequest>,
    shared: Arc<Shared>,
    events: mpsc::Sender<TransportEvent>,
) {
    let mut pending: HashMap<ConnectionId, oneshot::Sender<Result<(), String>>> = HashMap::new();
    loop {
        tokio::select! {
            request = dials.recv() => {
                let Some(request) = request else { return };
                dial(&mut swarm, &shared, request, &mut pending);
            }
            event = swarm.select_next_some() => {
                if !on_swarm_event(event, &shared, &events, &mut pending).await {
                    return;
                }
            }
        }
    }
}

/// Start dialling a peer for its outbound task, or answer at once if there is nothing to dial.
fn dial(
    swarm: &mut Swarm<Behaviour>,
    shared: &Shared,
    request: DialRequest,
    pending: &mut HashMap<ConnectionId, oneshot::Sender<Result<(), String>>>,
) {
    // Requests whose task gave up waiting are of no use any more.
    pending.retain(|_, done| !done.is_closed());
    let index = request.peer.as_usize();
    let (Some(peer_id), Some(Some(address))) = (shared.peer_ids.get(index), shared.addresses.get(index)) else {
        let _ = request.done.send(Err("no such peer".into()));
        return;
    };
    // A fresh local port: both sides dial each other, and two dials between the same two
    // listening ports would collide in one TCP simultaneous open.
    let opts = DialOpts::peer_id(*peer_id)
        .addresses(vec![address.clone()])
        .condition(PeerCondition::Disconnected)
        .allocate_new_port()
        .build();
    let id = opts.connection_id();
    match swarm.dial(opts) {
        Ok(()) => {
            pending.insert(id, request.done);
        }
        // Already connected (perhaps by the peer's dial): nothing to wait for.
        Err(DialError::DialPeerConditionFalse(_)) => {
            let _ = request.done.send(Ok(()));
        }
        Err(e) => {
            let _ = request.done.send(Err(e.to_string()));
        }
    }
}

/// Handle one swarm event; `false` once the driver is gone.
async fn on_swarm_event(
    event: SwarmEvent<BehaviourEvent>,
    shared: &Shared,
    events: &mpsc::Sender<TransportEvent>,
    pending: &mut HashMap<ConnectionId, oneshot::Sender<Result<(), String>>>,
) -> bool {
    match event {
        SwarmEvent::ConnectionEstablished { peer_id, connection_id, num_established, endpoint, .. } => {
            if let Some(done) = pending.remove(&connection_id) {
                let _ = done.send(Ok(()));
            }
            let Some(&index) = shared.index_of.get(&peer_id) else {
                return true;
            };
            debug!(peer = %index, address = %endpoint.get_remote_address(), "connection established");
            if num_established.get() == 1 {
                if let Some(peer) = shared.peers.get(index.as_usize()) {
                    peer.connected.store(true, Ordering::Relaxed);
                }
                info!(peer = %index, "connected");
                return events.send(TransportEvent::Connected(index)).await.is_ok();
            }
        }
        SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
            let Some(&index) = shared.index_of.get(&peer_id) else {
                return true;
            };
            debug!(peer = %index, cause = ?cause, "connection closed");
            if num_established == 0 {
                if let Some(peer) = shared.peers.get(index.as_usize()) {
                    peer.connected.store(false, Ordering::Relaxed);
                }
                info!(peer = %index, "disconnected");
                return events.send(TransportEvent::Disconnected(index)).await.is_ok();
            }
        }
        SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
            if let Some(done) = pending.remove(&connection_id) {
                let _ = done.send(Err(error.to_string()));
            } else {
                debug!(peer = ?peer_id, %error, "dial failed");
            }
        }
        SwarmEvent::IncomingConnectionError { send_back_addr, error, peer_id, .. } => match error {
            ListenError::Denied { cause } => {
                warn!(address = %send_back_addr, peer = ?peer_id, %cause, "refused a connection");
            }
            error => debug!(address = %send_back_addr, %error, "incoming connection failed"),
        },
        SwarmEvent::NewListenAddr { address, .. } => debug!(%address, "listening"),
        SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
        SwarmEvent::ListenerClosed { reason, addresses, .. } => {
            warn!(?addresses, ?reason, "listener closed");
        }
        _ => {}
    }
    true
}

/// Keep a stream open to `peer` and write its queued frames into it, redialling with backoff.
async fn run_outbound(
    peer: NodeIndex,
    shared: Arc<Shared>,
    mut control: libp2p_stream::Control,
    dials: mpsc::UnboundedSender<DialRequest>,
) {
    let (Some(state), Some(&peer_id)) = (shared.peers.get(peer.as_usize()), shared.peer_ids.get(peer.as_usize()))
    else {
        return;
    };
    let delay_min = shared.config.redial_delay_min.max(REDIAL_DELAY_FLOOR);
    let delay_max = shared.config.redial_delay_max.max(delay_min);
    let mut delay = delay_min;
    loop {
        let (done, connected) = oneshot::channel();
        if dials.send(DialRequest { peer, done }).is_err() {
            return;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, connected).await {
            Ok(Ok(Ok(()))) => match tokio::time::timeout(CONNECT_TIMEOUT, control.open_stream(peer_id, PROTOCOL)).await
            {
                Ok(Ok(stream)) => {
                    if write_frames(peer, state, stream, &shared).await {
                        delay = delay_min;
                    }
                }
                Ok(Err(error)) => debug!(%peer, %error, "could not open a stream"),
                Err(_) => debug!(%peer, "opening a stream timed out"),
            },
            Ok(Ok(Err(error))) => debug!(%peer, %error, "dial failed"),
            // The swarm task is gone: the transport is shutting down.
            Ok(Err(_)) => return,
            Err(_) => debug!(%peer, "dial timed out"),
        }
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2).min(delay_max);
    }
}

/// Write the outbox into `stream` until it breaks, reading the peer's acknowledgements from it;
/// `false` if the peer never took it.
async fn write_frames(peer: NodeIndex, state: &PeerState, stream: Stream, shared: &Shared) -> bool {
    let (mut reader, mut writer) = stream.split();
    let mut ready = [0u8; 1];
    match tokio::time::timeout(CONNECT_TIMEOUT, reader.read_exact(&mut ready)).await {
        Ok(Ok(())) if ready[0] == STREAM_READY => {}
        Ok(Ok(())) => {
            warn!(%peer, byte = ready[0], "peer answered our stream with a wrong byte");
            return false;
        }
        Ok(Err(error)) => {
            debug!(%peer, %error, "peer did not take our stream");
            return false;
        }
        Err(_) => {
            debug!(%peer, "peer did not take our stream in time");
            return false;
        }
    }
    // Our incarnation; the peer answers with the sequence number it expects next from it.
    let opened = async {
        writer.write_all(&shared.incarnation.to_le_bytes()).await?;
        writer.flush().await?;
        read_ack(&mut reader).await.map(|(ack, _)| ack)
    };
    let ack = match tokio::time::timeout(CONNECT_TIMEOUT, opened).await {
        Ok(Ok(ack)) => ack,
        Ok(Err(error)) => {
            debug!(%peer, %error, "peer did not acknowledge our incarnation");
            return false;
        }
        Err(_) => {
            debug!(%peer, "peer did not acknowledge our incarnation in time");
            return false;
        }
    };
    lock(&state.outbox).start_stream(ack, Instant::now());
    debug!(%peer, ack, "outbound stream open");
    tokio::select! {
        () = write_outbox(peer, state, writer) => {}
        () = read_acks(peer, state, reader) => {}
    }
    true
}

/// Write the outbox's frames from its cursor on, and again after a retransmission timeout; returns
/// when the stream breaks. A frame written stays in the outbox until acknowledged.
async fn write_outbox<W: AsyncWrite + Unpin>(peer: NodeIndex, state: &PeerState, writer: W) {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_LEN, writer);
    loop {
        let next = lock(&state.outbox).next_to_write(Instant::now());
        let Some(outgoing) = next else {
            if let Err(error) = writer.flush().await {
                debug!(%peer, %error, "outbound stream broke");
                return;
            }
            let retransmit_at = lock(&state.outbox).retransmit_at();
            match retransmit_at {
                Some(at) => tokio::select! {
                    () = state.ready.notified() => {}
                    () = tokio::time::sleep_until(at.into()) => {
                        lock(&state.outbox).on_retransmit_timeout(Instant::now());
                    }
                },
                None => state.ready.notified().await,
            }
            continue;
        };
        let counter = if outgoing.resent { &state.frames_resent } else { &state.frames_sent };
        counter.fetch_add(1, Ordering::Relaxed);
        if lock(&state.loss).drops() {
            continue;
        }
        if let Err(error) = write_frame(&mut writer, outgoing.seq, outgoing.first_held, &outgoing.frame).await {
            // The frame stays in the outbox: the next stream resends it.
            debug!(%peer, %error, "outbound stream broke");
            return;
        }
    }
}

/// Apply the peer's acknowledgements to the outbox until the stream closes or breaks; wake the
/// writer when it must go back.
async fn read_acks<R: AsyncRead + Unpin>(peer: NodeIndex, state: &PeerState, mut reader: R) {
    loop {
        match read_ack(&mut reader).await {
            Ok((ack, gap)) => {
                if lock(&state.outbox).on_ack(ack, gap, Instant::now()) {
                    state.ready.notify_one();
                }
            }
            Err(error) => {
                debug!(%peer, %error, "outbound stream closed");
                return;
            }
        }
    }
}

/// The fault switch that loses frames on the way out, from an RNG seeded by the link.
struct Loss {
    percent: u8,
    rng: rand_chacha::ChaCha8Rng,
}

impl Loss {
    fn new(percent: u8, from: NodeIndex, to: NodeIndex) -> Self {
        use rand::SeedableRng;
        Loss { percent, rng: rand_chacha::ChaCha8Rng::seed_from_u64(u64::from(from.0) << 32 | u64::from(to.0)) }
    }

    /// Whether to lose the next frame.
    fn drops(&mut self) -> bool {
        use rand::Rng;
        self.percent > 0 && self.rng.gen_range(0..100u8) < self.percent
    }
}

/// One frame on the wire: its sequence number, the first sequence number the sender still holds,
/// its length (`u64`, `u64`, `u32`, little endian), then its bytes.
async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    seq: u64,
    first_held: u64,
    frame: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(|_| std::io::Error::other("frame too long"))?;
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[..8].copy_from_slice(&seq.to_le_bytes());
    header[8..16].copy_from_slice(&first_held.to_le_bytes());
    header[16..].copy_from_slice(&len.to_le_bytes());
    writer.write_all(&header).await?;
    writer.write_all(frame).await
}

/// An acknowledgement: the next sequence number expected (`u64`, little endian) and whether a frame
/// after a gap arrived since the last one (one byte, 0 or 1).
async fn read_ack<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<(u64, bool)> {
    let mut bytes = [0u8; 9];
    reader.read_exact(&mut bytes).await?;
    let ack = u64::from_le_bytes(bytes[..8].try_into().expect("eight bytes of the acknowledgement"));
    Ok((ack, bytes[8] != 0))
}

/// A little-endian `u64`: an incarnation.
async fn read_u64<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    reader.read_exact(&mut bytes).await?;
    Ok(u64::from_le_bytes(bytes))
}

/// Hand every inbound stream to a reader; a peer's new stream replaces its old one (it opens a new
/// one only once it has given the old one up).
async fn accept_streams(
    mut incoming: libp2p_stream::IncomingStreams,
    shared: Arc<Shared>,
    events: mpsc::Sender<TransportEvent>,
    shutdown: watch::Receiver<()>,
) {
    let mut readers = AbortOnDrop((0..shared.peers.len()).map(|_| None).collect());
    while let Some((peer_id, stream)) = incoming.next().await {
        let Some(&from) = shared.index_of.get(&peer_id).filter(|&&i| i != shared.our_index) else {
            // The allow list keeps strangers out before any stream; this is only a safeguard.
            warn!(peer = %peer_id, "dropping a stream from an unknown peer");
            continue;
        };
        let reader = read_frames(from, stream, Arc::clone(&shared), events.clone());
        let handle = spawn_until_shutdown(&shutdown, reader).abort_handle();
        if let Some(old) = readers.0.get_mut(from.as_usize()).and_then(|slot| slot.replace(handle)) {
            old.abort();
        }
    }
}

/// The readers, per peer; aborted when the acceptor stops.
struct AbortOnDrop(Vec<Option<AbortHandle>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for handle in self.0.iter().flatten() {
            handle.abort();
        }
    }
}

/// Read frames from one inbound stream of `from`, hand up each next one within its limits, and
/// acknowledge them on the same stream.
async fn read_frames(from: NodeIndex, stream: Stream, shared: Arc<Shared>, events: mpsc::Sender<TransportEvent>) {
    let Some(state) = shared.peers.get(from.as_usize()) else {
        return;
    };
    let (mut reader, mut writer) = stream.split();
    // Tell the opener we have the stream (it writes nothing before this), then learn its incarnation.
    let taken = async {
        writer.write_all(&[STREAM_READY]).await?;
        writer.flush().await?;
        read_u64(&mut reader).await
    };
    let incarnation = match tokio::time::timeout(CONNECT_TIMEOUT, taken).await {
        Ok(Ok(incarnation)) => incarnation,
        Ok(Err(error)) => {
            debug!(peer = %from, %error, "inbound stream ended before it was taken");
            return;
        }
        Err(_) => {
            debug!(peer = %from, "peer did not send its incarnation in time");
            return;
        }
    };
    {
        let mut inbound = lock(&state.inbound);
        if inbound.incarnation != Some(incarnation) {
            if inbound.incarnation.is_some() {
                info!(peer = %from, "peer restarted: its sequence numbers start again");
            }
            *inbound = Inbound { incarnation: Some(incarnation), expected: 0 };
        }
    }
    let acks = AckSignal { wake: Notify::new(), gap: AtomicBool::new(false) };
    tokio::select! {
        () = hand_up_frames(from, state, &shared, reader, incarnation, &acks, &events) => {}
        () = write_acks(from, state, incarnation, writer, &acks) => {}
    }
}

/// How a reader tells its acknowledgement writer to write.
struct AckSignal {
    wake: Notify,
    /// A frame after a gap arrived: repeat the acknowledgement even if it did not move, so the
    /// sender goes back.
    gap: AtomicBool,
}

/// Read frames of `incarnation` of `from` and hand up each next one; returns when the stream ends
/// or breaks, a frame is too long, the peer restarted or the driver is gone.
async fn hand_up_frames<R: AsyncRead + Unpin>(
    from: NodeIndex,
    state: &PeerState,
    shared: &Shared,
    mut reader: R,
    incarnation: u64,
    acks: &AckSignal,
    events: &mpsc::Sender<TransportEvent>,
) {
    let len_max = shared.config.frame_len_max;
    loop {
        let frame = match read_frame(&mut reader, len_max).await {
            Ok(frame) => frame,
            Err(error) => {
                debug!(peer = %from, %error, "inbound stream ended");
                return;
            }
        };
        let arrival = {
            let mut inbound = lock(&state.inbound);
            if inbound.incarnation != Some(incarnation) {
                // The peer restarted: its newer stream is read by another reader.
                return;
            }
            inbound.arrive(frame.seq, frame.first_held)
        };
        let Some(bytes) = frame.bytes else {
            // Counted as arrived, so the next stream's first acknowledgement makes the sender give
            // it up rather than send it again.
            warn!(peer = %from, "peer sent a frame longer than the limit; closing its stream");
            state.frames_dropped_in.fetch_add(1, Ordering::Relaxed);
            // Dropping the stream resets it; the peer opens a new one.
            return;
        };
        let now = Instant::now();
        let (admitted, report) = {
            let mut rate = lock(&state.rate);
            let admitted = rate.admit(bytes.len(), now);
            (admitted, rate.report(now))
        };
        match arrival {
            Arrival::Next if admitted => {
                if events.send(TransportEvent::Frame { from, bytes }).await.is_err() {
                    return;
                }
                state.frames_received.fetch_add(1, Ordering::Relaxed);
                acks.wake.notify_one();
            }
            // Over the rate: dropped for good, and acknowledged so that it is not sent again.
            Arrival::Next => {
                state.frames_dropped_in.fetch_add(1, Ordering::Relaxed);
                acks.wake.notify_one();
            }
            Arrival::Duplicate => {}
            Arrival::AfterGap => {
                acks.gap.store(true, Ordering::Relaxed);
                acks.wake.notify_one();
            }
        }
        if let Some(dropped) = report {
            warn!(peer = %from, dropped, "peer sends faster than its rate limit; frames dropped");
            if events.send(TransportEvent::Flooding { peer: from, dropped }).await.is_err() {
                return;
            }
        }
    }
}

/// Write the next sequence number expected from `from` whenever it moves (and after a gap), the
/// first time at once; returns when the stream breaks or the peer restarted.
async fn write_acks<W: AsyncWrite + Unpin>(
    from: NodeIndex,
    state: &PeerState,
    incarnation: u64,
    mut writer: W,
    acks: &AckSignal,
) {
    let mut written = None;
    loop {
        let expected = {
            let inbound = lock(&state.inbound);
            if inbound.incarnation != Some(incarnation) {
                return;
            }
            inbound.expected
        };
        let gap = acks.gap.swap(false, Ordering::Relaxed);
        if written != Some(expected) || gap {
            let result = async {
                writer.write_all(&expected.to_le_bytes()).await?;
                writer.write_all(&[u8::from(gap)]).await?;
                writer.flush().await
            };
            if let Err(error) = result.await {
                debug!(peer = %from, %error, "could not acknowledge; inbound stream broke");
                return;
            }
            written = Some(expected);
        }
        acks.wake.notified().await;
    }
}

/// A frame as read: its bytes are `None` if its length is over the limit (then they are not read).
struct WireFrame {
    seq: u64,
    first_held: u64,
    bytes: Option<Vec<u8>>,
}

/// The next frame of `reader`; an error if the stream ends or breaks (a frame cut short is
/// discarded).
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, len_max: usize) -> std::io::Result<WireFrame> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    reader.read_exact(&mut header).await?;
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("eight bytes of the header"));
    let (seq, first_held) = (word(0), word(8));
    let len = u32::from_le_bytes(header[16..].try_into().expect("four bytes of the header")) as usize;
    if len > len_max {
        return Ok(WireFrame { seq, first_held, bytes: None });
    }
    let mut bytes = Vec::with_capacity(len.min(READ_RESERVE_MAX));
    let read = reader.take(len as u64).read_to_end(&mut bytes).await?;
    if read < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(WireFrame { seq, first_held, bytes: Some(bytes) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_multiaddresses() {
        let parse = |a: &str| parse_address(a).map(|m| m.to_string());
        assert_eq!(parse("127.0.0.1:7000").as_deref(), Some("/ip4/127.0.0.1/tcp/7000"));
        assert_eq!(parse("[::1]:7000").as_deref(), Some("/ip6/::1/tcp/7000"));
        assert_eq!(parse("replica-0.example.org:7000").as_deref(), Some("/dns/replica-0.example.org/tcp/7000"));
        assert_eq!(parse("localhost:1").as_deref(), Some("/dns/localhost/tcp/1"));
        for bad in ["", "7000", ":7000", "host:", "host:70000", "::1:7000", "[::1:7000", "a/b:1", "-a:1", "a..b:1"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rate_limit_drops_over_budget_and_reports_once_a_second() {
        let start = Instant::now();
        let mut rate = RateLimit::new(1000, 2000);
        assert!(rate.admit(1500, start));
        assert!(!rate.admit(1000, start));
        assert_eq!(rate.report(start), Some(1));
        assert!(!rate.admit(1000, start));
        assert_eq!(rate.report(start), None, "reported less than a second ago");
        // Half a second refills 500 bytes: 1000 in all.
        assert!(rate.admit(1000, start + Duration::from_millis(500)));
        assert_eq!(rate.report(start + Duration::from_secs(1)), Some(1));
        // The bucket never holds more than the burst.
        assert!(!rate.admit(2001, start + Duration::from_secs(100)));
        assert!(rate.admit(2000, start + Duration::from_secs(100)));
    }

    #[tokio::test]
    async fn frames_carry_their_sequence_numbers_and_are_bounded() {
        let mut wire = Vec::new();
        write_frame(&mut wire, 3, 1, b"hello").await.expect("writes to memory");
        write_frame(&mut wire, 4, 2, &[7u8; 100]).await.expect("writes to memory");
        assert_eq!(&wire[..8], &3u64.to_le_bytes());
        assert_eq!(&wire[16..20], &5u32.to_le_bytes());
        let mut reader = futures::io::Cursor::new(wire.clone());
        let frame = read_frame(&mut reader, 100).await.expect("a whole frame");
        assert_eq!((frame.seq, frame.first_held, frame.bytes.as_deref()), (3, 1, Some(&b"hello"[..])));
        let frame = read_frame(&mut reader, 100).await.expect("a whole frame");
        assert_eq!((frame.seq, frame.first_held, frame.bytes), (4, 2, Some(vec![7u8; 100])));
        assert!(read_frame(&mut reader, 100).await.is_err(), "end of stream");

        let first = FRAME_HEADER_LEN + 5;
        let mut reader = futures::io::Cursor::new(wire[..first + FRAME_HEADER_LEN + 50].to_vec());
        assert!(read_frame(&mut reader, 100).await.is_ok());
        assert!(read_frame(&mut reader, 100).await.is_err(), "a frame cut short is not handed up");

        let mut reader = futures::io::Cursor::new(wire[first..].to_vec());
        let frame = read_frame(&mut reader, 99).await.expect("a header");
        assert_eq!((frame.seq, frame.bytes), (4, None), "too long: its sequence number, not its bytes");
    }

    fn frame(byte: u8) -> Arc<[u8]> {
        Arc::from(&[byte][..])
    }

    /// The sequence numbers `outbox` writes until it has nothing more.
    fn written(outbox: &mut Outbox, now: Instant) -> Vec<u64> {
        std::iter::from_fn(|| outbox.next_to_write(now).map(|o| o.seq)).collect()
    }

    #[test]
    fn the_outbox_keeps_frames_until_acknowledged_and_resends_from_the_first_unacknowledged() {
        let now = Instant::now();
        let mut outbox = Outbox::new();
        for b in 0..5 {
            assert_eq!(outbox.push(frame(b), 100, 1000), 0);
        }
        outbox.start_stream(0, now);
        assert_eq!(written(&mut outbox, now), vec![0, 1, 2, 3, 4]);
        assert!(!outbox.on_ack(2, false, now), "progress");
        assert_eq!((outbox.first_seq, outbox.frames.len()), (2, 3), "acknowledged frames are forgotten");
        // The peer acknowledges 2 again: a frame after a gap arrived. Go back once.
        assert!(!outbox.on_ack(2, false, now), "a repeat without a gap is no loss");
        assert!(outbox.on_ack(2, true, now));
        assert_eq!(written(&mut outbox, now), vec![2, 3, 4]);
        assert!(!outbox.on_ack(2, true, now), "the same gap goes back once");
        // Nothing more comes: the retransmission timeout goes back, and doubles.
        let at = outbox.retransmit_at().expect("frames are out");
        outbox.on_retransmit_timeout(at);
        assert_eq!(written(&mut outbox, at), vec![2, 3, 4]);
        assert_eq!(outbox.retransmit_at(), Some(at + 2 * RETRANSMIT_TIMEOUT_MIN));
        // A new stream starts where the peer says.
        outbox.start_stream(4, at);
        assert_eq!(written(&mut outbox, at), vec![4]);
        assert!(!outbox.on_ack(5, false, at));
        assert_eq!((outbox.frames.len(), outbox.bytes, outbox.retransmit_at()), (0, 0, None));
    }

    #[test]
    fn acknowledgements_of_frames_never_written_count_only_up_to_what_was_written() {
        let now = Instant::now();
        let mut outbox = Outbox::new();
        for b in 0..4 {
            let _ = outbox.push(frame(b), 100, 1000);
        }
        outbox.start_stream(u64::MAX, now);
        assert_eq!(written(&mut outbox, now), vec![0, 1, 2, 3], "nothing was written, so nothing is acknowledged");
        let _ = outbox.push(frame(4), 100, 1000);
        assert!(!outbox.on_ack(u64::MAX, false, now));
        assert_eq!((outbox.first_seq, outbox.frames.len()), (4, 1), "frame 4 was not written yet: kept");
        assert_eq!(written(&mut outbox, now), vec![4]);
    }

    #[test]
    fn a_full_outbox_gives_up_its_oldest_frames_and_the_receiver_stops_waiting_for_them() {
        let now = Instant::now();
        let mut outbox = Outbox::new();
        let dropped: u64 = (0..10).map(|b| outbox.push(frame(b), 4, 1000)).sum();
        assert_eq!((dropped, outbox.first_seq, outbox.frames.len()), (6, 6, 4));
        assert_eq!(outbox.push(Arc::from(vec![0u8; 50]), 100, 10), 4, "over the byte bound: only the newest stays");
        // A receiver that expects frame 0 stops waiting for what the sender gave up.
        let mut inbound = Inbound::default();
        outbox.start_stream(inbound.expected, now);
        let outgoing = outbox.next_to_write(now).expect("the newest frame");
        assert_eq!((outgoing.seq, outgoing.first_held), (10, 10));
        assert_eq!(inbound.arrive(outgoing.seq, outgoing.first_held), Arrival::Next);
        assert_eq!(inbound.expected, 11);
    }

    #[test]
    fn the_receiver_hands_up_frames_in_sequence_once_and_waits_at_a_gap() {
        let mut inbound = Inbound::default();
        assert_eq!(inbound.arrive(0, 0), Arrival::Next);
        assert_eq!(inbound.arrive(2, 0), Arrival::AfterGap);
        assert_eq!(inbound.arrive(0, 0), Arrival::Duplicate);
        assert_eq!(inbound.arrive(1, 0), Arrival::Next);
        assert_eq!(inbound.arrive(2, 0), Arrival::Next);
        // A lying sender's jumps cost it its own frames only, and no memory.
        assert_eq!(inbound.arrive(u64::MAX, 0), Arrival::AfterGap);
        assert_eq!(inbound.arrive(u64::MAX - 1, u64::MAX - 1), Arrival::Next);
        assert_eq!(inbound.arrive(u64::MAX - 1, u64::MAX - 1), Arrival::Duplicate);
    }
}
