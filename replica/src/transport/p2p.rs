//! Frames between replicas over libp2p: TCP, Noise, yamux, one stream protocol of our own.
//!
//! Every replica's libp2p identity is its dealt Ed25519 key, so the Noise handshake authenticates
//! the peer and its `PeerId` tells which replica it is. Connections from any other key are denied
//! as soon as the handshake names them.
//!
//! Per peer:
//! - an outbound task owns a bounded queue; it dials the peer (backing off between attempts), opens
//!   one long-lived stream of [`PROTOCOL`], waits for the peer's one-byte [`STREAM_READY`] on it,
//!   and writes the queued frames into it, each as a `u32` little-endian length and the bytes.
//!   When the stream breaks it opens another, forever;
//! - every stream the peer opens to us is read by a reader task, which first answers
//!   [`STREAM_READY`], then bounds frame lengths and rate-limits the peer with a token bucket
//!   before handing frames up.
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
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/fides/frames/1");

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
            peers: (0..n).map(|_| PeerState::new(&config)).collect(),
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
        let dropped = {
            let mut queue = lock(&peer.queue);
            let mut dropped = 0u64;
            while queue.len() >= self.shared.config.peer_queue_max.max(1) {
                queue.pop_front();
                dropped += 1;
            }
            queue.push_back(frame);
            dropped
        };
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
                queued: lock(&peer.queue).len() as u64,
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
    peers: Vec<PeerState>,
    peer_ids: Vec<PeerId>,
    index_of: HashMap<PeerId, NodeIndex>,
    /// Where to dial each peer; `None` for ourselves.
    addresses: Vec<Option<Multiaddr>>,
    config: TransportConfig,
}

/// One peer's queue, counters and inbound rate limit.
struct PeerState {
    queue: Mutex<VecDeque<Arc<[u8]>>>,
    /// Wakes the outbound task when a frame is queued.
    ready: Notify,
    connected: AtomicBool,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    frames_dropped_out: AtomicU64,
    frames_dropped_in: AtomicU64,
    /// Kept across streams, so opening a new stream does not refill the bucket.
    rate: Mutex<RateLimit>,
}

impl PeerState {
    fn new(config: &TransportConfig) -> Self {
        PeerState {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            connected: AtomicBool::new(false),
            frames_sent: AtomicU64::new(0),
            frames_received: AtomicU64::new(0),
            frames_dropped_out: AtomicU64::new(0),
            frames_dropped_in: AtomicU64::new(0),
            rate: Mutex::new(RateLimit::new(config.peer_bytes_per_second, config.peer_burst_bytes)),
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

/// Write queued frames into `stream` until it breaks; `false` if the peer never took it.
async fn write_frames(peer: NodeIndex, state: &PeerState, stream: Stream, shared: &Shared) -> bool {
    let queue_max = shared.config.peer_queue_max;
    let mut loss = Loss::new(shared.config.fault_drop_frames_percent, shared.our_index, peer);
    let (mut reader, writer) = stream.split();
    let mut ready = [0u8; 1];
    match tokio::time::timeout(CONNECT_TIMEOUT, reader.read_exact(&mut ready)).await {
        Ok(Ok(())) if ready[0] == STREAM_READY => debug!(%peer, "outbound stream open"),
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
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_LEN, writer);
    let mut probe = [0u8; 1];
    loop {
        let next = lock(&state.queue).pop_front();
        match next {
            Some(frame) => {
                if loss.drops() {
                    state.frames_sent.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if let Err(error) = write_frame(&mut writer, &frame).await {
                    debug!(%peer, %error, "outbound stream broke");
                    // The frame did not get through whole, so the peer discards what it got of
                    // it: send it again on the next stream, unless newer frames filled the queue.
                    let mut queue = lock(&state.queue);
                    if queue.len() < queue_max.max(1) {
                        queue.push_front(frame);
                    } else {
                        state.frames_dropped_out.fetch_add(1, Ordering::Relaxed);
                    }
                    return true;
                }
                state.frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                if let Err(error) = writer.flush().await {
                    debug!(%peer, %error, "outbound stream broke");
                    return true;
                }
                // The peer writes nothing more on this stream: a read that completes means it was closed
                // or reset, and the next frame should go to a new stream rather than be lost.
                tokio::select! {
                    () = state.ready.notified() => {}
                    result = reader.read(&mut probe) => {
                        match result {
                            Ok(0) => debug!(%peer, "outbound stream closed by the peer"),
                            Ok(_) => warn!(%peer, "peer wrote on our outbound stream; reopening it"),
                            Err(error) => debug!(%peer, %error, "outbound stream broke"),
                        }
                        return true;
                    }
                }
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

/// One frame on the wire: its length as a little-endian `u32`, then its bytes.
async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(|_| std::io::Error::other("frame too long"))?;
    writer.write_all(&len.to_le_bytes()).await?;
    writer.write_all(frame).await
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

/// Read frames from one inbound stream of `from` and hand them up, within its limits.
async fn read_frames(from: NodeIndex, mut stream: Stream, shared: Arc<Shared>, events: mpsc::Sender<TransportEvent>) {
    let Some(state) = shared.peers.get(from.as_usize()) else {
        return;
    };
    // Tell the opener we have the stream: it writes no frame before this.
    let taken = async {
        stream.write_all(&[STREAM_READY]).await?;
        stream.flush().await
    };
    if let Err(error) = taken.await {
        debug!(peer = %from, %error, "inbound stream ended before it was taken");
        return;
    }
    let len_max = shared.config.frame_len_max;
    loop {
        let bytes = match read_frame(&mut stream, len_max).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                warn!(peer = %from, "peer sent a frame longer than the limit; closing its stream");
                state.frames_dropped_in.fetch_add(1, Ordering::Relaxed);
                // Dropping the stream resets it; the peer opens a new one.
                return;
            }
            Err(error) => {
                debug!(peer = %from, %error, "inbound stream ended");
                return;
            }
        };
        let now = Instant::now();
        let (admitted, report) = {
            let mut rate = lock(&state.rate);
            let admitted = rate.admit(bytes.len(), now);
            (admitted, rate.report(now))
        };
        if admitted {
            if events.send(TransportEvent::Frame { from, bytes }).await.is_err() {
                return;
            }
            state.frames_received.fetch_add(1, Ordering::Relaxed);
        } else {
            state.frames_dropped_in.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(dropped) = report {
            warn!(peer = %from, dropped, "peer sends faster than its rate limit; frames dropped");
            if events.send(TransportEvent::Flooding { peer: from, dropped }).await.is_err() {
                return;
            }
        }
    }
}

/// The next frame of `reader`: `Ok(None)` if its length is over `len_max`, an error if the stream
/// ends or breaks (a frame cut short is discarded).
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, len_max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    reader.read_exact(&mut header).await?;
    let len = u32::from_le_bytes(header) as usize;
    if len > len_max {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(len.min(READ_RESERVE_MAX));
    let read = reader.take(len as u64).read_to_end(&mut bytes).await?;
    if read < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(bytes))
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
    async fn frames_are_length_prefixed_and_bounded() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").await.expect("writes to memory");
        write_frame(&mut wire, &[7u8; 100]).await.expect("writes to memory");
        assert_eq!(&wire[..4], &5u32.to_le_bytes());
        let mut reader = futures::io::Cursor::new(wire.clone());
        assert_eq!(read_frame(&mut reader, 100).await.ok().flatten().as_deref(), Some(&b"hello"[..]));
        assert_eq!(read_frame(&mut reader, 100).await.ok().flatten(), Some(vec![7u8; 100]));
        assert!(read_frame(&mut reader, 100).await.is_err(), "end of stream");

        let mut reader = futures::io::Cursor::new(wire[..9 + 4 + 50].to_vec());
        assert!(read_frame(&mut reader, 100).await.is_ok());
        assert!(read_frame(&mut reader, 100).await.is_err(), "a frame cut short is not handed up");

        let mut reader = futures::io::Cursor::new(wire[9..].to_vec());
        assert!(matches!(read_frame(&mut reader, 99).await, Ok(None)), "too long");
    }
}
