//! The libp2p transport between real sockets on 127.0.0.1: all-to-all delivery, strangers kept out,
//! redial after a restart, the frame length limit, the rate limit, peers given by name, and frames
//! resent over a link that loses them.
//!
//! Every test binds only to 127.0.0.1 on ports the system just handed out, and is bounded in time.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use fides_replica::transport::p2p::{P2pTransport, PeerInfo};
use fides_replica::transport::{Transport, TransportConfig, TransportEvent};
use fides_types::NodeIndex;

/// The longest any test may run.
const LIMIT: Duration = Duration::from_secs(30);

/// One replica's key and port.
struct Node {
    secret: [u8; 32],
    public: [u8; 32],
    port: u16,
}

impl Node {
    fn new() -> Node {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        Node { secret: key.to_bytes(), public: key.verifying_key().to_bytes(), port: free_port() }
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

fn peers(nodes: &[Node]) -> Vec<PeerInfo> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, node)| PeerInfo {
            index: NodeIndex(i as u32),
            identity: node.public,
            address: format!("127.0.0.1:{}", node.port),
        })
        .collect()
}

/// Quick redials, so tests do not wait on the production backoff.
fn config() -> TransportConfig {
    TransportConfig {
        redial_delay_min: Duration::from_millis(50),
        redial_delay_max: Duration::from_millis(500),
        ..TransportConfig::default()
    }
}

/// Start replica `index` of `nodes` (whose own entry is `nodes[index]`).
async fn start(nodes: &[Node], index: usize, config: TransportConfig) -> P2pTransport {
    let listen = SocketAddr::from(([127, 0, 0, 1], nodes[index].port));
    P2pTransport::start(NodeIndex(index as u32), nodes[index].secret, peers(nodes), listen, config)
        .await
        .expect("transport starts")
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future).await.unwrap_or_else(|_| panic!("{what}: not within {LIMIT:?}"))
}

/// The next frame, skipping other events.
async fn next_frame(transport: &mut P2pTransport) -> (NodeIndex, Vec<u8>) {
    loop {
        match transport.next_event().await.expect("transport running") {
            TransportEvent::Frame { from, bytes } => return (from, bytes),
            _ => continue,
        }
    }
}

/// Wait until `transport` reports `Connected` for every one of `peers`.
async fn wait_connected(transport: &mut P2pTransport, peers: &[u32]) {
    let mut missing: Vec<NodeIndex> = peers.iter().map(|&p| NodeIndex(p)).collect();
    while !missing.is_empty() {
        if let TransportEvent::Connected(peer) = transport.next_event().await.expect("transport running") {
            missing.retain(|&p| p != peer);
        }
    }
}

/// Wait until `transport` reports `Disconnected(peer)`.
async fn wait_disconnected(transport: &mut P2pTransport, peer: u32) {
    loop {
        if let TransportEvent::Disconnected(p) = transport.next_event().await.expect("transport running") {
            if p == NodeIndex(peer) {
                return;
            }
        }
    }
}

/// The frames that arrive within `window`.
async fn frames_within(transport: &mut P2pTransport, window: Duration) -> Vec<(NodeIndex, Vec<u8>)> {
    let mut frames = Vec::new();
    let _ = tokio::time::timeout(window, async {
        loop {
            frames.push(next_frame(transport).await);
        }
    })
    .await;
    frames
}

/// A frame saying who sent it to whom, with its sequence number and some padding of varying length.
fn numbered_frame(from: u32, to: u32, seq: u32) -> Arc<[u8]> {
    let padding = if seq == 7 { 1 << 20 } else { (seq as usize % 5) * 300 };
    let mut frame = Vec::with_capacity(12 + padding);
    frame.extend_from_slice(&from.to_le_bytes());
    frame.extend_from_slice(&to.to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.resize(12 + padding, seq as u8);
    frame.into()
}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_exchange_frames_all_to_all_exactly_once_in_order() {
    init_logs();
    const N: u32 = 4;
    const FRAMES: u32 = 200;
    let nodes: Vec<Node> = (0..N).map(|_| Node::new()).collect();
    let mut transports = Vec::new();
    for i in 0..N as usize {
        transports.push(within("start", start(&nodes, i, config())).await);
    }
    // Sent at once: most of these wait in the queues until the connections are up.
    for (i, transport) in transports.iter().enumerate() {
        for seq in 0..FRAMES {
            for to in (0..N).filter(|&to| to != i as u32) {
                transport.send(NodeIndex(to), numbered_frame(i as u32, to, seq));
            }
        }
    }
    let receivers = transports.into_iter().enumerate().map(|(i, mut transport)| {
        tokio::spawn(async move {
            let mut frames = Vec::new();
            while frames.len() < ((N - 1) * FRAMES) as usize {
                frames.push(next_frame(&mut transport).await);
            }
            // Anything more would be a duplicate.
            frames.extend(frames_within(&mut transport, Duration::from_millis(500)).await);
            (i as u32, frames, transport)
        })
    });
    let results = within("all frames", futures::future::join_all(receivers)).await;
    let mut transports = Vec::new();
    for result in results {
        let (i, frames, transport) = result.expect("receiver task");
        assert_eq!(frames.len(), ((N - 1) * FRAMES) as usize, "replica {i}: every frame exactly once");
        let mut next_seq: BTreeMap<NodeIndex, u32> = BTreeMap::new();
        for (from, bytes) in frames {
            assert_eq!(word(&bytes, 0), from.0, "replica {i}: the sender is the authenticated one");
            assert_eq!(word(&bytes, 4), i, "replica {i}: addressed to it");
            let expected = next_seq.entry(from).or_insert(0);
            assert_eq!(word(&bytes, 8), *expected, "replica {i}: frames of {from} in order");
            assert_eq!(bytes, &numbered_frame(from.0, i, *expected)[..], "replica {i}: frame intact");
            *expected += 1;
        }
        let counters = transport.counters();
        assert_eq!(counters.len(), N as usize);
        for (peer, c) in counters.iter().enumerate() {
            if peer as u32 != i {
                assert!(c.connected, "replica {i}: connected to {peer}");
                assert_eq!(c.frames_received, u64::from(FRAMES), "replica {i}: received from {peer}");
                assert_eq!(c.frames_sent, u64::from(FRAMES), "replica {i}: sent to {peer}");
                assert_eq!((c.frames_dropped_in, c.frames_dropped_out, c.queued), (0, 0, 0));
            }
        }
        transports.push(transport);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_identity_cannot_deliver_frames() {
    init_logs();
    let nodes: Vec<Node> = (0..4).map(|_| Node::new()).collect();
    let mut transports = Vec::new();
    for i in 0..4 {
        transports.push(within("start", start(&nodes, i, config())).await);
    }
    // A stranger that claims to be replica 3, with a key of its own and its own port.
    let mut impostor_view: Vec<Node> = Vec::new();
    for node in &nodes[..3] {
        impostor_view.push(Node { secret: node.secret, public: node.public, port: node.port });
    }
    impostor_view.push(Node::new());
    let impostor = within("start the impostor", start(&impostor_view, 3, config())).await;
    assert_ne!(impostor.local_peer_id(), transports[3].local_peer_id());

    let test = async {
        // The impostor keeps trying while replica 3 sends for real.
        for round in 0..30u8 {
            for to in 0..3 {
                impostor.send(NodeIndex(to), Arc::from(&b"foreign"[..]));
                transports[3].send(NodeIndex(to), Arc::from(&[b'r', round][..]));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        transports[0].send(NodeIndex(3), Arc::from(&b"to three"[..]));
        assert_eq!(next_frame(&mut transports[3]).await, (NodeIndex(0), b"to three".to_vec()));
        for transport in &mut transports[..3] {
            let mut rounds = Vec::new();
            for (from, bytes) in frames_within(transport, Duration::from_secs(1)).await {
                assert_eq!(from, NodeIndex(3));
                assert_eq!(bytes[0], b'r', "only replica 3's own frames arrive, never the stranger's");
                rounds.push(bytes[1]);
            }
            assert_eq!(rounds, (0..30).collect::<Vec<u8>>(), "replica 3 gets through, in order");
        }
    };
    within("exchange", test).await;
    for transport in &transports[..3] {
        assert_eq!(transport.counters()[3].frames_received, 30);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_is_redialled() {
    init_logs();
    let nodes: Vec<Node> = (0..3).map(|_| Node::new()).collect();
    let mut transports = Vec::new();
    for i in 0..3 {
        transports.push(within("start", start(&nodes, i, config())).await);
    }
    let test = async {
        for (i, transport) in transports.iter_mut().enumerate() {
            let others: Vec<u32> = (0..3).filter(|&p| p != i as u32).collect();
            wait_connected(transport, &others).await;
        }
        transports[0].send(NodeIndex(2), Arc::from(&b"before"[..]));
        assert_eq!(next_frame(&mut transports[2]).await, (NodeIndex(0), b"before".to_vec()));

        drop(transports.pop());
        wait_disconnected(&mut transports[0], 2).await;
        wait_disconnected(&mut transports[1], 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        transports.push(start(&nodes, 2, config()).await);
        for (i, transport) in transports.iter_mut().enumerate() {
            let others: Vec<u32> = if i == 2 { vec![0, 1] } else { vec![2] };
            wait_connected(transport, &others).await;
        }
        for i in 0..2 {
            transports[i].send(NodeIndex(2), Arc::from(&[b'a', i as u8][..]));
            transports[2].send(NodeIndex(i as u32), Arc::from(&[b'b', i as u8][..]));
        }
        // Replica 0's "before" may come again: if replica 2 stopped before acknowledging it, it is
        // sent to its new process.
        let mut at_restarted = Vec::new();
        while at_restarted.len() < 2 {
            let frame = next_frame(&mut transports[2]).await;
            if frame != (NodeIndex(0), b"before".to_vec()) {
                at_restarted.push(frame);
            }
        }
        at_restarted.sort();
        assert_eq!(at_restarted, vec![(NodeIndex(0), vec![b'a', 0]), (NodeIndex(1), vec![b'a', 1])]);
        for (i, transport) in transports[..2].iter_mut().enumerate() {
            assert_eq!(next_frame(transport).await, (NodeIndex(2), vec![b'b', i as u8]));
        }
    };
    within("restart", test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_length_limit_are_not_delivered() {
    init_logs();
    const LEN_MAX: usize = 1000;
    let nodes: Vec<Node> = (0..2).map(|_| Node::new()).collect();
    let mut sender = within("start", start(&nodes, 0, config())).await;
    let mut receiver = within("start", start(&nodes, 1, TransportConfig { frame_len_max: LEN_MAX, ..config() })).await;
    let test = async {
        wait_connected(&mut sender, &[1]).await;
        sender.send(NodeIndex(1), Arc::from(&b"short"[..]));
        sender.send(NodeIndex(1), vec![b'x'; LEN_MAX + 1].into());
        assert_eq!(next_frame(&mut receiver).await, (NodeIndex(0), b"short".to_vec()));
        // The receiver resets the stream that carried the long frame; the sender opens another.
        let mut attempt = 0u32;
        loop {
            sender.send(NodeIndex(1), Arc::from(attempt.to_le_bytes().as_slice()));
            let frames = frames_within(&mut receiver, Duration::from_millis(100)).await;
            assert!(frames.iter().all(|(_, bytes)| bytes.len() == 4), "the long frame never arrives");
            if !frames.is_empty() {
                break;
            }
            attempt += 1;
        }
        // Nor does the receiver send frames over its own limit.
        receiver.send(NodeIndex(0), vec![b'y'; LEN_MAX + 1].into());
        receiver.send(NodeIndex(0), Arc::from(&b"fits"[..]));
        assert_eq!(next_frame(&mut sender).await, (NodeIndex(1), b"fits".to_vec()));
    };
    within("length limit", test).await;
    assert!(receiver.counters()[0].frames_dropped_in >= 1);
    assert_eq!(receiver.counters()[0].frames_dropped_out, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_dropped_and_reported() {
    init_logs();
    const FRAMES: usize = 100;
    let nodes: Vec<Node> = (0..2).map(|_| Node::new()).collect();
    let flooder = within("start", start(&nodes, 0, config())).await;
    let tight = TransportConfig { peer_bytes_per_second: 1000, peer_burst_bytes: 2000, ..config() };
    let mut receiver = within("start", start(&nodes, 1, tight)).await;
    for _ in 0..FRAMES {
        flooder.send(NodeIndex(1), vec![0u8; 500].into());
    }
    let test = async {
        let mut frames = 0;
        loop {
            match receiver.next_event().await.expect("transport running") {
                TransportEvent::Frame { from, .. } => {
                    assert_eq!(from, NodeIndex(0));
                    frames += 1;
                }
                TransportEvent::Flooding { peer, dropped } => {
                    assert_eq!(peer, NodeIndex(0));
                    assert!(dropped > 0);
                    return frames;
                }
                _ => {}
            }
        }
    };
    let frames = within("flooding report", test).await;
    // The burst lets about four frames through at once; the rest of the flood is dropped.
    assert!(frames < 10, "{frames} frames got through");
    let counters = receiver.counters();
    assert!(counters[0].frames_dropped_in > 0);
    assert!(counters[0].frames_received < 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_given_by_name_are_reached() {
    init_logs();
    let nodes: Vec<Node> = (0..2).map(|_| Node::new()).collect();
    let by_name: Vec<PeerInfo> = peers(&nodes)
        .into_iter()
        .map(|peer| PeerInfo { address: peer.address.replace("127.0.0.1", "localhost"), ..peer })
        .collect();
    let mut transports = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let listen = SocketAddr::from(([127, 0, 0, 1], node.port));
        let started = P2pTransport::start(NodeIndex(i as u32), node.secret, by_name.clone(), listen, config());
        transports.push(within("start", started).await.expect("transport starts"));
    }
    let test = async {
        transports[0].send(NodeIndex(1), Arc::from(&b"to one"[..]));
        transports[1].send(NodeIndex(0), Arc::from(&b"to zero"[..]));
        assert_eq!(next_frame(&mut transports[1]).await, (NodeIndex(0), b"to one".to_vec()));
        assert_eq!(next_frame(&mut transports[0]).await, (NodeIndex(1), b"to zero".to_vec()));
    };
    within("exchange by name", test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_lost_below_the_link_are_resent_and_arrive_exactly_once_in_order() {
    init_logs();
    const FRAMES: u32 = 300;
    let nodes: Vec<Node> = (0..2).map(|_| Node::new()).collect();
    let lossy = TransportConfig { fault_drop_frames_percent: 20, ..config() };
    let mut transports = Vec::new();
    for i in 0..2 {
        transports.push(within("start", start(&nodes, i, lossy.clone())).await);
    }
    let test = async {
        for seq in 0..FRAMES {
            transports[0].send(NodeIndex(1), numbered_frame(0, 1, seq));
            transports[1].send(NodeIndex(0), numbered_frame(1, 0, seq));
            // Some in bursts, some alone, so that some losses are the last frame of a burst.
            if seq % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for (i, transport) in transports.iter_mut().enumerate() {
            let from = 1 - i as u32;
            for seq in 0..FRAMES {
                let (sender, bytes) = next_frame(transport).await;
                assert_eq!(sender, NodeIndex(from));
                assert_eq!(bytes, &numbered_frame(from, i as u32, seq)[..], "replica {i}: frame {seq} next, intact");
            }
        }
        for transport in &mut transports {
            assert!(frames_within(transport, Duration::from_millis(500)).await.is_empty(), "no duplicates");
        }
    };
    within("lossy exchange", test).await;
    for (i, transport) in transports.iter().enumerate() {
        let c = &transport.counters()[1 - i];
        assert_eq!((c.frames_sent, c.frames_received, c.frames_dropped_out, c.queued), (300, 300, 0, 0));
        assert!(c.frames_resent > 0, "replica {i}: lost frames were sent again");
    }
}
