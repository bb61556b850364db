//! Prometheus metrics of a replica, served as text over HTTP (`GET /metrics`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fides_atomic_broadcast::epoch::Batch;
use fides_types::NodeIndex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::transport::PeerCounters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabel {
    peer: u32,
    kind: &'static str,
}

/// The metrics of one replica.
pub struct Metrics {
    registry: Registry,
    epoch_next: Gauge,
    queue_len: Gauge,
    submits_waiting: Gauge,
    wal_events: Gauge,
    batches: Counter,
    requests: Counter,
    submit_latency: Histogram,
    commit_latency: Histogram,
    commit_events: Counter,
    faults: Family<FaultLabel, Counter>,
    connected: Family<PeerLabel, Gauge>,
    frames_sent: Family<PeerLabel, Gauge>,
    frames_received: Family<PeerLabel, Gauge>,
    frames_dropped_out: Family<PeerLabel, Gauge>,
    frames_dropped_in: Family<PeerLabel, Gauge>,
    peer_queue: Family<PeerLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fides");
        let epoch_next = Gauge::default();
        registry.register("epoch_next", "The next epoch to deliver", epoch_next.clone());
        let queue_len = Gauge::default();
        registry.register("queue_len", "Requests waiting to be ordered", queue_len.clone());
        let submits_waiting = Gauge::default();
        registry.register("submits_waiting", "Client submissions waiting for their answer", submits_waiting.clone());
        let wal_events = Gauge::default();
        registry.register("wal_events", "Events in the write-ahead log", wal_events.clone());
        let batches = Counter::default();
        registry.register("batches_delivered", "Batches delivered", batches.clone());
        let requests = Counter::default();
        registry.register("requests_delivered", "Requests delivered", requests.clone());
        let submit_latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register("submit_latency_seconds", "From submission to answer", submit_latency.clone());
        let commit_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register("commit_seconds", "Log writes, fsync included", commit_latency.clone());
        let commit_events = Counter::default();
        registry.register("logged_events", "Events written to the log", commit_events.clone());
        let faults = Family::<FaultLabel, Counter>::default();
        registry.register("faults", "Misbehaviour recorded, per peer and kind", faults.clone());
        let connected = Family::<PeerLabel, Gauge>::default();
        registry.register("peer_connected", "1 when a connection to the peer is up", connected.clone());
        let frames_sent = Family::<PeerLabel, Gauge>::default();
        registry.register("peer_frames_sent", "Frames sent to the peer", frames_sent.clone());
        let frames_received = Family::<PeerLabel, Gauge>::default();
        registry.register("peer_frames_received", "Frames received from the peer", frames_received.clone());
        let frames_dropped_out = Family::<PeerLabel, Gauge>::default();
        registry.register(
            "peer_frames_dropped_out",
            "Frames to the peer dropped (queue full)",
            frames_dropped_out.clone(),
        );
        let frames_dropped_in = Family::<PeerLabel, Gauge>::default();
        registry.register(
            "peer_frames_dropped_in",
            "Frames from the peer dropped (too fast or too long)",
            frames_dropped_in.clone(),
        );
        let peer_queue = Family::<PeerLabel, Gauge>::default();
        registry.register("peer_queue", "Frames waiting to be sent to the peer", peer_queue.clone());
        Metrics {
            registry,
            epoch_next,
            queue_len,
            submits_waiting,
            wal_events,
            batches,
            requests,
            submit_latency,
            commit_latency,
            commit_events,
            faults,
            connected,
            frames_sent,
            frames_received,
            frames_dropped_out,
            frames_dropped_in,
            peer_queue,
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub(crate) fn set_state(&self, epoch_next: u64, queue_len: u64, waiting: u64, wal: u64) {
        self.epoch_next.set(epoch_next as i64);
        self.queue_len.set(queue_len as i64);
        self.submits_waiting.set(waiting as i64);
        self.wal_events.set(wal as i64);
    }

    pub(crate) fn set_peers(&self, counters: &[PeerCounters]) {
        for (peer, c) in counters.iter().enumerate() {
            let label = PeerLabel { peer: peer as u32 };
            self.frames_sent.get_or_create(&label).set(c.frames_sent as i64);
            self.frames_received.get_or_create(&label).set(c.frames_received as i64);
            self.frames_dropped_out.get_or_create(&label).set(c.frames_dropped_out as i64);
            self.frames_dropped_in.get_or_create(&label).set(c.frames_dropped_in as i64);
            self.peer_queue.get_or_create(&label).set(c.queued as i64);
        }
    }

    pub(crate) fn set_connected(&self, peer: NodeIndex, up: bool) {
        self.connected.get_or_create(&PeerLabel { peer: peer.0 }).set(i64::from(up));
    }

    pub(crate) fn on_fault(&self, peer: NodeIndex, kind: &'static str) {
        self.faults.get_or_create(&FaultLabel { peer: peer.0, kind }).inc();
    }

    pub(crate) fn on_batch(&self, batch: &Batch) {
        self.batches.inc();
        self.requests.inc_by(batch.requests.len() as u64);
    }

    pub(crate) fn observe_submit(&self, latency: Duration) {
        self.submit_latency.observe(latency.as_secs_f64());
    }

    pub(crate) fn observe_commit(&self, latency: Duration, events: usize) {
        self.commit_latency.observe(latency.as_secs_f64());
        self.commit_events.inc_by(events as u64);
    }
}

/// Serve `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { continue };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut request = Vec::with_capacity(512);
            let mut buffer = [0u8; 1024];
            // Read the request head, bounded in size and time.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return false,
                        Ok(k) => request.extend_from_slice(&buffer[..k]),
                    }
                }
                true
            })
            .await;
            if read != Ok(true) {
                return;
            }
            let (status, body) = if request.starts_with(b"GET /metrics ") || request.starts_with(b"GET / ") {
                ("200 OK", metrics.encode())
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// Bind the metrics listener.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}
