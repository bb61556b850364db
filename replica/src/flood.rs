//! Fault injection for tests (`replica run --fault-flood-s S`): for `S` seconds the replica sends
//! its peers, besides its honest messages, as many maximal frames that decode as its allowance
//! lets through — echoes and proposals with the longest shards for every epoch it runs or keeps
//! messages for, shards longer than any epoch accepts, agreement messages of many rounds,
//! decryption shares, messages for far epochs, catch-up answers nobody asked for and catch-up
//! requests. Roots and rounds change every time, so no two frames are the same.
//!
//! The test that uses it (`tests/flood.rs`) checks that the honest replicas keep ordering and
//! stay within the memory and disk bounds of `docs/replica.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fides_atomic_broadcast::checkpoint::CatchUp;
use fides_atomic_broadcast::epoch::{AtomicBroadcast, Batch, Message, Request};
use fides_atomic_broadcast::rbc::Proof;
use fides_atomic_broadcast::{acs, merkle, rbc};
use fides_crypto::blsttc::{PK_SIZE, SIG_SIZE};
use fides_types::codec::Wire;
use fides_types::{NodeIndex, Quorum, Round};

/// Epochs ahead of the next one that the flood covers (beyond the ones kept, too).
const EPOCHS_AHEAD: u64 = 20;
/// The longest shard sent beyond the bound (the transport's frame bound is far higher).
const OVERSIZED_SHARD_MAX: usize = 1024 * 1024;

/// A flood in progress.
pub struct Flood {
    until: Instant,
    round: u64,
    /// Bytes sent to each peer per call of [`Flood::frames`].
    bytes_per_peer: usize,
}

impl Flood {
    /// A flood of `duration` from now, of `bytes_per_peer` per timer tick.
    pub fn new(duration: Duration, bytes_per_peer: usize) -> Flood {
        Flood { until: Instant::now() + duration, round: 0, bytes_per_peer }
    }

    /// Whether it still runs.
    pub fn is_active(&self, now: Instant) -> bool {
        now < self.until
    }

    /// The frames of one tick, each with the driver's frame `tag` in front, for each peer.
    pub fn frames(
        &mut self,
        abc: &AtomicBroadcast,
        quorum: Quorum,
        our_index: NodeIndex,
        tag: u8,
    ) -> Vec<(NodeIndex, Arc<[u8]>)> {
        self.round += 1;
        let round = self.round;
        let next = abc.next_epoch();
        let shard_len = abc.shard_len_max();
        let depth = merkle::depth(quorum.n() as usize);
        let mut out = Vec::new();
        for peer in quorum.nodes().filter(|p| *p != our_index) {
            // Each message with the length its shard gets once it is sent (shards are filled in
            // only then: most of the list does not fit in one tick's allowance).
            let mut messages: Vec<(Message, usize)> = Vec::new();
            for k in 0..EPOCHS_AHEAD {
                let epoch = next + (k + round) % EPOCHS_AHEAD;
                let root = root(round, epoch, peer.0);
                let value = Proof { root, index: peer.0, shard: Vec::new(), path: vec![root; depth] };
                messages.push((broadcast(epoch, our_index, rbc::Message::Value(value)), shard_len));
                for proposer in quorum.nodes() {
                    let echo = Proof { root, index: our_index.0, shard: Vec::new(), path: vec![root; depth] };
                    messages.push((broadcast(epoch, proposer, rbc::Message::Echo(echo)), shard_len));
                    messages.push((broadcast(epoch, proposer, rbc::Message::Ready(root)), 0));
                    for r in 0..16u32 {
                        let aux = fides_agreement::Message::Aux {
                            round: Round(r),
                            value: (round + u64::from(r)).is_multiple_of(2),
                        };
                        let agreement = acs::Message::Agreement { proposer, message: aux };
                        messages.push((Message::Subset { epoch, message: agreement }, 0));
                    }
                    messages.push((Message::Decryption { epoch, proposer, share: [round as u8; PK_SIZE] }, 0));
                }
                messages.push((Message::CheckpointShare { epoch, share: [round as u8; SIG_SIZE] }, 0));
                let oversized = (4 * shard_len).clamp(shard_len + 1, OVERSIZED_SHARD_MAX.max(shard_len + 1));
                let echo = Proof { root, index: our_index.0, shard: Vec::new(), path: vec![root; depth] };
                messages.push((broadcast(epoch, peer, rbc::Message::Echo(echo)), oversized));
            }
            let far = broadcast(next + 1_000 + round, our_index, rbc::Message::Ready(root(round, 0, 0)));
            messages.push((far, 0));
            let request = Request { client: round, id: round, payload: vec![0; 64 * 1024] };
            let batch = Batch { epoch: next, time: round, requests: vec![request; 8] };
            messages.push((Message::CatchUp(CatchUp { checkpoint: None, batches: vec![batch] }), 0));
            messages.push((Message::CatchUpRequest { next: 0 }, 0));
            // Start somewhere else each tick, so that every kind gets through the allowance.
            let start = (round as usize * 7919) % messages.len().max(1);
            messages.rotate_left(start);
            let mut bytes = 0;
            for (mut message, len) in messages {
                if bytes >= self.bytes_per_peer {
                    break;
                }
                fill_shard(&mut message, len, round as u8);
                let mut frame = vec![tag];
                message.encode(&mut frame);
                bytes += frame.len();
                out.push((peer, Arc::from(frame)));
            }
        }
        out
    }
}

fn broadcast(epoch: u64, proposer: NodeIndex, message: rbc::Message) -> Message {
    Message::Subset { epoch, message: acs::Message::Broadcast { proposer, message } }
}

fn fill_shard(message: &mut Message, len: usize, byte: u8) {
    if let Message::Subset {
        message: acs::Message::Broadcast { message: rbc::Message::Value(proof) | rbc::Message::Echo(proof), .. },
        ..
    } = message
    {
        proof.shard = vec![byte; len];
    }
}

fn root(round: u64, epoch: u64, peer: u32) -> [u8; 32] {
    let mut root = [0u8; 32];
    root[..8].copy_from_slice(&round.to_le_bytes());
    root[8..16].copy_from_slice(&epoch.to_le_bytes());
    root[16..20].copy_from_slice(&peer.to_le_bytes());
    root
}
