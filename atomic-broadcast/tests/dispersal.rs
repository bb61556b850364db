//! Reliable broadcast against a Byzantine disperser and a Byzantine echoer, run by hand (a FIFO
//! queue, everything delivered):
//!
//! - a proposer that disperses shards which are no codeword: every honest replica delivers
//!   `Invalid`, never two different values;
//! - echoes are counted before their proofs are checked: an echo whose shard is bad (right root,
//!   path of the right length) spoils the first decoding, is then found by its proof and recorded
//!   as a fault, and the value is delivered from the good shards.

use std::collections::VecDeque;

use fides_atomic_broadcast::merkle::Tree;
use fides_atomic_broadcast::rbc::{Config, Delivery, Message, Proof, ReliableBroadcast};
use fides_types::{Fault, FaultKind, NodeIndex, Quorum, Target};

type Queue = VecDeque<(NodeIndex, NodeIndex, Message)>;

/// Each honest replica's deliveries and the faults it recorded.
type Seen = Vec<(Vec<Delivery>, Vec<Fault>)>;

/// Deliver everything in `queue` in order, except to `byzantine`.
fn run(quorum: Quorum, nodes: &mut [ReliableBroadcast], mut queue: Queue, byzantine: NodeIndex) -> Seen {
    let mut seen: Seen = vec![(Vec::new(), Vec::new()); quorum.n() as usize];
    while let Some((from, to, message)) = queue.pop_front() {
        if to == byzantine {
            continue;
        }
        let step = nodes[to.as_usize()].handle(from, message);
        seen[to.as_usize()].0.extend(step.outputs);
        seen[to.as_usize()].1.extend(step.faults);
        for outgoing in step.messages {
            match outgoing.target {
                Target::All => queue.extend(quorum.nodes().map(|r| (to, r, outgoing.message.clone()))),
                Target::Node(r) => queue.push_back((to, r, outgoing.message)),
            }
        }
    }
    seen
}

fn sizes() -> Vec<Quorum> {
    [(4u32, 1u32), (7, 2), (10, 3)].iter().map(|(n, t)| Quorum::new(*n, *t).expect("valid sizes")).collect()
}

#[test]
fn shards_that_are_no_codeword_are_delivered_as_invalid_by_everyone() {
    for quorum in sizes() {
        let n = quorum.n();
        let proposer = NodeIndex(0);
        // n random shards of equal length: no Reed–Solomon codeword.
        let shards: Vec<Vec<u8>> = (0..n).map(|i| vec![(i * 37 + 11) as u8; 16]).collect();
        let tree = Tree::new(&shards);
        let mut nodes: Vec<ReliableBroadcast> =
            quorum.nodes().map(|i| ReliableBroadcast::new(quorum, i, proposer, Config::default())).collect();
        let mut queue = Queue::new();
        for (i, shard) in shards.iter().enumerate() {
            let proof = Proof { root: tree.root(), index: i as u32, shard: shard.clone(), path: tree.path(i) };
            queue.push_back((proposer, NodeIndex(i as u32), Message::Value(proof)));
        }
        // The proposer is Byzantine: it sends nothing more.
        for (i, (delivered, faults)) in run(quorum, &mut nodes, queue, proposer).iter().enumerate().skip(1) {
            assert_eq!(delivered, &vec![Delivery::Invalid], "n={n} replica {i}");
            assert!(faults.is_empty(), "n={n} replica {i}: {faults:?}");
        }
    }
}

#[test]
fn a_bad_echoed_shard_is_found_by_its_proof_and_the_value_still_delivered() {
    for quorum in sizes() {
        let n = quorum.n();
        let proposer = NodeIndex(n - 1);
        let byzantine = NodeIndex(0);
        let value: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut nodes: Vec<ReliableBroadcast> =
            quorum.nodes().map(|i| ReliableBroadcast::new(quorum, i, proposer, Config::default())).collect();
        let step = nodes[proposer.as_usize()].propose(&value).expect("the proposer proposes");
        let mut queue = Queue::new();
        for outgoing in step.messages {
            let Target::Node(to) = outgoing.target else { panic!("VALUE goes to one replica") };
            if to == byzantine {
                // The Byzantine replica echoes its shard with one byte flipped, to everyone, first.
                let Message::Value(mut proof) = outgoing.message else { panic!("a VALUE") };
                proof.shard[0] ^= 0x55;
                for r in quorum.nodes() {
                    queue.push_front((byzantine, r, Message::Echo(proof.clone())));
                }
            } else {
                queue.push_back((proposer, to, outgoing.message));
            }
        }
        for (i, (delivered, faults)) in run(quorum, &mut nodes, queue, byzantine).iter().enumerate().skip(1) {
            assert_eq!(delivered, &vec![Delivery::Value(value.clone())], "n={n} replica {i}");
            // Every honest replica decoded with the bad shard first (it has the lowest index).
            let expected = Fault { node: byzantine, kind: FaultKind::InvalidProof };
            assert_eq!(faults, &vec![expected], "n={n} replica {i}");
        }
    }
}
