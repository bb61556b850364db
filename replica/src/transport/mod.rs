//! How replicas reach each other: a [`Transport`] carries frames (opaque byte strings) between
//! the replicas of one cluster, authenticated by their dealt identities.
//!
//! The driver in [`crate::node`] is generic over it: [`p2p`] is libp2p over TCP (Noise, yamux),
//! [`memory`] joins the replicas of one process by channels, for tests.
//!
//! Rules every implementation keeps:
//! - a frame handed up says which replica sent it, as the connection authenticated it; frames from
//!   anyone else are never handed up;
//! - frames longer than [`FRAME_LEN_MAX`] are neither sent nor handed up;
//! - per peer, the link is reliable while both processes live: frames are handed up in the order
//!   sent, each once, none lost, across broken connections (the [`p2p`] transport numbers them,
//!   keeps them until acknowledged and resends);
//! - except past a bound: per peer, at most [`TransportConfig::peer_queue_max`] frames and
//!   [`TransportConfig::peer_outbox_bytes_max`] bytes wait unacknowledged; past that the oldest are
//!   given up and counted. This happens only when a peer is down or far behind for long, and the
//!   protocols' own catch-up (checkpoints, fetching the log) covers what it missed, as it covers
//!   what a restarted process never received;
//! - lost connections are re-established with backoff, forever.

pub mod memory;
pub mod p2p;

use std::sync::Arc;
use std::time::Duration;

use fides_types::NodeIndex;

/// The longest frame: a catch-up answer with its batches is the largest message.
pub const FRAME_LEN_MAX: usize = fides_host::event::FRAME_LEN_MAX;

/// Bounds and timings of a transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Frames waiting per peer (unsent or unacknowledged) before the oldest are given up.
    pub peer_queue_max: usize,
    /// Bytes of frames waiting per peer before the oldest are given up (the newest frame always
    /// stays, whatever its length).
    pub peer_outbox_bytes_max: usize,
    /// First delay before redialling a lost peer; doubled up to `redial_delay_max`.
    pub redial_delay_min: Duration,
    /// Longest delay between redials.
    pub redial_delay_max: Duration,
    /// Bytes a peer may send per second on average before its frames are dropped (and it is
    /// recorded as flooding).
    pub peer_bytes_per_second: u64,
    /// Bytes a peer may send in one burst above the average.
    pub peer_burst_bytes: u64,
    /// The longest frame sent or handed up: [`FRAME_LEN_MAX`], lowered only by tests.
    pub frame_len_max: usize,
    /// Fault injection for tests: the percentage of frames lost on the way out, as if by a lossy
    /// network (0 in production).
    pub fault_drop_frames_percent: u8,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            peer_queue_max: 16 * 1024,
            peer_outbox_bytes_max: 128 * 1024 * 1024,
            redial_delay_min: Duration::from_millis(100),
            redial_delay_max: Duration::from_secs(5),
            peer_bytes_per_second: 256 * 1024 * 1024,
            peer_burst_bytes: 512 * 1024 * 1024,
            frame_len_max: FRAME_LEN_MAX,
            fault_drop_frames_percent: 0,
        }
    }
}

/// What a transport tells the driver.
#[derive(Debug)]
pub enum TransportEvent {
    /// A frame from an authenticated replica.
    Frame {
        /// The sender.
        from: NodeIndex,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// A connection to `peer` is up (the driver may greet it).
    Connected(NodeIndex),
    /// The connection to `peer` is down.
    Disconnected(NodeIndex),
    /// `peer` sent more than its rate allows; `dropped` frames of it were not handed up.
    Flooding {
        /// The peer.
        peer: NodeIndex,
        /// Frames dropped since the last report.
        dropped: u64,
    },
}

/// Counters a transport keeps per peer (for metrics and `fides status`).
#[derive(Clone, Debug, Default)]
pub struct PeerCounters {
    /// Whether a connection is up.
    pub connected: bool,
    /// Frames sent (the first time).
    pub frames_sent: u64,
    /// Frames sent again because the peer had not acknowledged them.
    pub frames_resent: u64,
    /// Frames received and handed up.
    pub frames_received: u64,
    /// Frames given up because the outgoing queue was full (or not sent: too long).
    pub frames_dropped_out: u64,
    /// Frames dropped because the peer sent too fast or too long.
    pub frames_dropped_in: u64,
    /// Frames waiting to be sent or acknowledged.
    pub queued: u64,
}

/// Carries frames between the replicas of a cluster.
pub trait Transport: Send + 'static {
    /// Queue `frame` for `to`. Never blocks: a full queue gives up its oldest frame.
    fn send(&self, to: NodeIndex, frame: Arc<[u8]>);

    /// The next event; `None` once the transport has shut down.
    fn next_event(&mut self) -> impl std::future::Future<Output = Option<TransportEvent>> + Send;

    /// Per-peer counters, indexed by replica.
    fn counters(&self) -> Vec<PeerCounters>;
}
