//! A transport joining the replicas of one process by channels (for tests of the driver).
//!
//! A replica may leave (drop its end) and join again: frames sent to it meanwhile are lost, as
//! they would be on a real network while a process is down.

use std::sync::{Arc, Mutex};

use fides_types::NodeIndex;
use tokio::sync::mpsc;

use super::{PeerCounters, Transport, TransportEvent};

type Inboxes = Arc<Mutex<Vec<Option<mpsc::UnboundedSender<TransportEvent>>>>>;

/// Which frames (from, to, bytes) the network holds back.
pub type HoldFilter = Box<dyn Fn(NodeIndex, NodeIndex, &[u8]) -> bool + Send>;

/// Frames held back, in the order sent, and the filter that holds them (for tests that need one
/// kind of message to wait: see [`MemoryNetwork::hold`]).
#[derive(Default)]
struct Held {
    filter: Option<HoldFilter>,
    frames: Vec<(NodeIndex, NodeIndex, Vec<u8>)>,
}

/// An in-process network of `n` replicas.
#[derive(Clone)]
pub struct MemoryNetwork {
    inboxes: Inboxes,
    held: Arc<Mutex<Held>>,
}

impl MemoryNetwork {
    /// A network with nobody on it yet.
    pub fn new(n: u32) -> MemoryNetwork {
        MemoryNetwork { inboxes: Arc::new(Mutex::new(vec![None; n as usize])), held: Arc::default() }
    }

    /// Hold back every frame `filter` picks (delayed, not lost) until [`MemoryNetwork::release`].
    pub fn hold(&self, filter: HoldFilter) {
        if let Ok(mut held) = self.held.lock() {
            held.filter = Some(filter);
        }
    }

    /// Stop holding frames back, and deliver those held, in the order they were sent.
    pub fn release(&self) {
        let frames = match self.held.lock() {
            Ok(mut held) => {
                held.filter = None;
                std::mem::take(&mut held.frames)
            }
            Err(_) => return,
        };
        let Ok(inboxes) = self.inboxes.lock() else { return };
        for (from, to, bytes) in frames {
            if let Some(Some(inbox)) = inboxes.get(to.0 as usize) {
                let _ = inbox.send(TransportEvent::Frame { from, bytes });
            }
        }
    }

    /// Replica `index`'s end (replacing an earlier one); the others are told it is connected.
    pub fn join(&self, index: NodeIndex) -> MemoryTransport {
        let (sender, incoming) = mpsc::unbounded_channel();
        let n = {
            let Ok(mut inboxes) = self.inboxes.lock() else { panic!("memory network lock poisoned") };
            if let Some(slot) = inboxes.get_mut(index.0 as usize) {
                *slot = Some(sender.clone());
            }
            for (j, other) in inboxes.iter().enumerate() {
                if j != index.0 as usize {
                    if let Some(other) = other {
                        let _ = other.send(TransportEvent::Connected(index));
                        let _ = sender.send(TransportEvent::Connected(NodeIndex(j as u32)));
                    }
                }
            }
            inboxes.len()
        };
        MemoryTransport {
            our_index: index,
            inboxes: Arc::clone(&self.inboxes),
            held: Arc::clone(&self.held),
            incoming,
            counters: Arc::new(Mutex::new(vec![PeerCounters::default(); n])),
        }
    }
}

/// One replica's end of an in-process network.
pub struct MemoryTransport {
    our_index: NodeIndex,
    inboxes: Inboxes,
    held: Arc<Mutex<Held>>,
    incoming: mpsc::UnboundedReceiver<TransportEvent>,
    counters: Arc<Mutex<Vec<PeerCounters>>>,
}

impl Transport for MemoryTransport {
    fn send(&self, to: NodeIndex, frame: Arc<[u8]>) {
        if to == self.our_index {
            return;
        }
        if let Ok(mut held) = self.held.lock() {
            if held.filter.as_ref().is_some_and(|hold| hold(self.our_index, to, &frame)) {
                held.frames.push((self.our_index, to, frame.to_vec()));
                return;
            }
        }
        let sent = match self.inboxes.lock() {
            Ok(inboxes) => match inboxes.get(to.0 as usize) {
                Some(Some(inbox)) => {
                    inbox.send(TransportEvent::Frame { from: self.our_index, bytes: frame.to_vec() }).is_ok()
                }
                _ => false,
            },
            Err(_) => false,
        };
        if let Ok(mut counters) = self.counters.lock() {
            if let Some(c) = counters.get_mut(to.0 as usize) {
                c.connected = sent;
                if sent {
                    c.frames_sent += 1;
                } else {
                    c.frames_dropped_out += 1;
                }
            }
        }
    }

    async fn next_event(&mut self) -> Option<TransportEvent> {
        self.incoming.recv().await
    }

    fn counters(&self) -> Vec<PeerCounters> {
        self.counters.lock().map(|c| c.clone()).unwrap_or_default()
    }
}
